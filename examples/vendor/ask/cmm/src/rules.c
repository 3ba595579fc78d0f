/* askbuild fixture: reads the fast-forward rules file (one rule per non-comment line). */
#include <stdio.h>
#include <string.h>
#include "cmm.h"

static void set_value(uint32_t *v, uint32_t n)
{
	*v = n;
}

int cmm_load_rules(const char *path, struct cmm_rule_hdr *last)
{
	char line[256];
	int n = 0;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof line, f)) {
		if (line[0] == '#' || line[0] == '\n')
			continue;
		n++;
		/* Taking the address of a packed member: GCC 12 warns
		 * (address-of-packed-member), which -Werror turns into an error unless the
		 * build passes -Wno-error=address-of-packed-member, as the vendor's does. */
		set_value(&last->value, (uint32_t)strlen(line));
	}
	fclose(f);
	return n;
}
