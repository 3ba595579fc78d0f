/* askbuild fixture: a header under integrations/ like fmlib's. */
#ifndef FIXTURE_PART_EXT_H
#define FIXTURE_PART_EXT_H
#define FM_FIXTURE_PART "LS1046A"
#endif
