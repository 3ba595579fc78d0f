/* askbuild fixture: a tiny "Frame Manager" library. */
#include <stdio.h>
#include <fm_ioctls.h>
#include "fm_ext.h"
#include "part_ext.h"

const char *fm_fixture_open(int port)
{
	static char buf[64];
	snprintf(buf, sizeof buf, "fm%d-port%d/%s/ioctl-%d", 0, port % FM_FIXTURE_MAX_PORTS,
		 FM_FIXTURE_PART, FM_IOC_FIXTURE_VERSION);
	return buf;
}
