/* askbuild fixture: reads the DPA XML configuration like dpa_app and hands the PDL to fmc. */
#include <stdio.h>
#include <unistd.h>
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

int main(int argc, char **argv)
{
	const char *cfg = "/etc/cdx_cfg.xml", *pcd = "/etc/cdx_pcd.xml";
	const char *sp = "/etc/cdx_sp.xml", *pdl = "/etc/fmc/config/hxs_pdl_v3.xml";
	char buf[256];
	int opt, rc = 0;

	while ((opt = getopt(argc, argv, "c:p:s:d:v")) != -1) {
		switch (opt) {
		case 'c': cfg = optarg; break;
		case 'p': pcd = optarg; break;
		case 's': sp = optarg; break;
		case 'd': pdl = optarg; break;
		case 'v':
			printf("dpa_app fixture (%s, cdx ABI %d) features:%s%s\n", FM_FIXTURE_PART,
			       CDX_FIXTURE_ABI, F_AB, F_LS);
			return 0;
		default:
			fprintf(stderr, "usage: dpa_app [-c cfg] [-p pcd] [-s sp] [-d pdl] [-v]\n");
			return 2;
		}
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
