/* askbuild fixture: auto_bridge user interface header (cmm includes it via ABM_DIR). */
#ifndef FIXTURE_AUTO_BRIDGE_H
#define FIXTURE_AUTO_BRIDGE_H
#define ABM_FIXTURE_NAME "auto_bridge"
#endif
