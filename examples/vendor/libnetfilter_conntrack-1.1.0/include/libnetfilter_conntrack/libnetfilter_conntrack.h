/* askbuild fixture: stands in for libnetfilter_conntrack's public header. */
#ifndef FIXTURE_LIBNETFILTER_CONNTRACK_H
#define FIXTURE_LIBNETFILTER_CONNTRACK_H
const char *nfct_fixture_version(void);
#endif
