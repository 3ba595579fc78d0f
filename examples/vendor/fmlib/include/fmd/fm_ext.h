/* askbuild fixture: stands in for fmlib's public header. */
#ifndef FIXTURE_FM_EXT_H
#define FIXTURE_FM_EXT_H
#include "fm_port_ext.h"
#ifdef __cplusplus
extern "C" {
#endif
const char *fm_fixture_open(int port);
#ifdef __cplusplus
}
#endif
#endif
