/* askbuild fixture: a "conntrack monitor" daemon shaped like cmm's command line. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <libcli.h>
#include <pcap.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include "libfci.h"
#include "auto_bridge.h"
#include "cmm.h"

#define CMM_FIXTURE_VERSION "1.0"

static void usage(void)
{
	printf("usage: cmm [-h] [-v] [-f rules-file] [-n max-connections]\n");
}

int main(int argc, char **argv)
{
	const char *rules = "/etc/config/fastforward";
	long max_conn = 131072;
	struct cmm_rule_hdr last = {0, 0};
	struct cli_def *cli;
	int opt, n;

	while ((opt = getopt(argc, argv, "hvf:n:")) != -1) {
		switch (opt) {
		case 'h':
			usage();
			return 0;
		case 'v':
			printf("cmm fixture %s (%s, %s, %s)\n", CMM_FIXTURE_VERSION,
			       fci_fixture_version(), nfct_fixture_version(), ABM_FIXTURE_NAME);
			printf("%s\n", pcap_lib_version());
			printf("fast path: %s\n", nfct_ask_fp_extensions());
			return 0;
		case 'f':
			rules = optarg;
			break;
		case 'n':
			max_conn = strtol(optarg, NULL, 10);
			break;
		default:
			usage();
			return 2;
		}
	}
	cli = cli_init();
	cli_set_banner(cli, "cmm fixture");
	n = cmm_load_rules(rules, &last);
	if (n < 0) {
		fprintf(stderr, "cmm: cannot read %s\n", rules);
		cli_done(cli);
		return 1;
	}
	printf("cmm fixture: %d rules from %s, max %ld connections, fci client %d, nlmsg %zu\n",
	       n, rules, max_conn, fci_fixture_open(0), mnl_nlmsg_size(0));
	cli_done(cli);
	return 0;
}
