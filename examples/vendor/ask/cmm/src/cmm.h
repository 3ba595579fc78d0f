/* askbuild fixture: cmm internals. */
#ifndef FIXTURE_CMM_H
#define FIXTURE_CMM_H
#include <stdint.h>

struct cmm_rule_hdr {
	uint8_t kind;
	uint32_t value;
} __attribute__((packed));

int cmm_load_rules(const char *path, struct cmm_rule_hdr *last);
#endif
