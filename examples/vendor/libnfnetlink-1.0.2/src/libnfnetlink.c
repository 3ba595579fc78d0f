/* askbuild fixture: a tiny library with libnfnetlink's build interface. */
#include <libnfnetlink/libnfnetlink.h>

const char *nfnl_fixture_version(void)
{
	return "nfnetlink-fixture-1.0.2";
}
