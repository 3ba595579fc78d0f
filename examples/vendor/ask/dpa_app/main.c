/* askbuild example: reads the DPA XML configuration like dpa_app and hands the PDL to fmc.
 * Like the vendor's dpa_app it reads fixed default paths (no options but -v). */
#include <stdio.h>
#include <string.h>
#include <libxml/parser.h>
#include "fmc.h"
#include "fm_ext.h"
#include "part_ext.h"
#include "cdx_ioctl.h"

#ifdef AUTO_BRIDGE
#define F_AB " AUTO_BRIDGE"
#else
#define F_AB ""
#endif
#ifdef LS1043
#define F_LS " LS1043"
#else
#define F_LS ""
#endif

static int show(const char *what, const char *path)
{
	xmlDocPtr doc = xmlReadFile(path, NULL, XML_PARSE_NONET);
	xmlNodePtr root, n;
	int children = 0;

	if (!doc) {
		fprintf(stderr, "dpa_app: cannot parse %s %s\n", what, path);
		return 1;
	}
	root = xmlDocGetRootElement(doc);
	for (n = root ? root->children : NULL; n; n = n->next)
		if (n->type == XML_ELEMENT_NODE)
			children++;
	printf("dpa_app fixture: %s %s <%s> %d entries\n", what, path,
	       root ? (const char *)root->name : "?", children);
	xmlFreeDoc(doc);
	return 0;
}

#define DEFAULT_CFG_FILE "/etc/cdx_cfg.xml"
#define DEFAULT_PCD_FILE "/etc/cdx_pcd.xml"
#define DEFAULT_SP_FILE "/etc/cdx_sp.xml"
#define DEFAULT_PDL_FILE "/etc/fmc/config/hxs_pdl_v3.xml"

int main(int argc, char **argv)
{
	const char *cfg = DEFAULT_CFG_FILE, *pcd = DEFAULT_PCD_FILE;
	const char *sp = DEFAULT_SP_FILE, *pdl = DEFAULT_PDL_FILE;
	char buf[256];
	int rc = 0;

	if (argc > 1 && !strcmp(argv[1], "-v")) {
		printf("dpa_app fixture (%s, cdx ABI %d) features:%s%s\n", FM_FIXTURE_PART,
		       CDX_FIXTURE_ABI, F_AB, F_LS);
		return 0;
	}
	rc |= show("cfg", cfg);
	rc |= show("pcd", pcd);
	rc |= show("sp", sp);
	if (fmc_fixture_compile(pdl, buf, sizeof buf) != 0) {
		fprintf(stderr, "dpa_app: fmc cannot read %s\n", pdl);
		return 1;
	}
	printf("dpa_app fixture: fmc %s\n", buf);
	return rc;
}
