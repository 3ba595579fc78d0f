/* askbuild fixture: stands in for libnfnetlink's public header. */
#ifndef FIXTURE_LIBNFNETLINK_H
#define FIXTURE_LIBNFNETLINK_H
const char *nfnl_fixture_version(void);
#endif
