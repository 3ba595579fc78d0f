/* askbuild fixture: the FCI client library. */
#include "libfci.h"

const char *fci_fixture_version(void)
{
	return FCI_FIXTURE_VERSION;
}

int fci_fixture_open(int client)
{
	return client + 1;
}
