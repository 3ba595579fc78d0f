/* askbuild fixture: the FCI client library interface. */
#ifndef FIXTURE_LIBFCI_H
#define FIXTURE_LIBFCI_H
#define FCI_FIXTURE_VERSION "fci-fixture-2.2"
const char *fci_fixture_version(void);
int fci_fixture_open(int client);
#endif
