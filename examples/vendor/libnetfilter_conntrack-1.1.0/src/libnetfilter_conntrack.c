/* askbuild fixture: a tiny library with libnetfilter_conntrack's build interface. */
#include <stdio.h>
#include <libnfnetlink/libnfnetlink.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>

const char *nfct_fixture_version(void)
{
	static char buf[96];
	snprintf(buf, sizeof buf, "conntrack-fixture-1.1.0(%s)", nfnl_fixture_version());
	return buf;
}
