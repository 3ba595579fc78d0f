/* askbuild example: a "conntrack monitor" daemon shaped like cmm's command line.
 *
 * Like the vendor's cmm it loads its rules, then daemonizes (daemon(0, 1): stdio kept) and logs
 * with syslog(3) until SIGTERM or SIGINT.  -t only checks the rules file and exits. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <syslog.h>
#include <unistd.h>
#include <libcli.h>
#include <pcap.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include "libfci.h"
#include "auto_bridge.h"
#include "cmm.h"

#define CMM_FIXTURE_VERSION "1.0"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	stop = sig;
}

static void cmm_log(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsyslog(LOG_INFO, fmt, ap);
	va_end(ap);
}

static void usage(void)
{
	printf("usage: cmm [-h] [-v] [-t] [-f rules-file] [-n max-connections]\n");
}

int main(int argc, char **argv)
{
	const char *rules = "/etc/config/fastforward";
	long max_conn = 131072;
	struct cmm_rule_hdr last = {0, 0};
	struct cli_def *cli;
	sigset_t wait_for, others;
	int opt, n, check_only = 0;

	while ((opt = getopt(argc, argv, "hvtf:n:")) != -1) {
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
		case 't':
			check_only = 1;
			break;
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
	fflush(stdout);
	if (check_only) {
		cli_done(cli);
		return 0;
	}
	if (daemon(0, 1) == -1) {
		perror("cmm: daemon");
		cli_done(cli);
		return 1;
	}
	openlog("cmm", LOG_PID, LOG_DAEMON);
	sigemptyset(&wait_for);
	sigaddset(&wait_for, SIGTERM);
	sigaddset(&wait_for, SIGINT);
	sigprocmask(SIG_BLOCK, &wait_for, &others);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	cmm_log("cmm: serving as a daemon (pid %d), %d rules", (int)getpid(), n);
	while (!stop)
		sigsuspend(&others);
	cmm_log("cmm: stopping on signal %d", (int)stop);
	cli_done(cli);
	return 0;
}
