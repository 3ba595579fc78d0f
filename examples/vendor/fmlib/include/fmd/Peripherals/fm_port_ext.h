/* askbuild fixture: a header under Peripherals/ like fmlib's. */
#ifndef FIXTURE_FM_PORT_EXT_H
#define FIXTURE_FM_PORT_EXT_H
#define FM_FIXTURE_MAX_PORTS 10
#endif
