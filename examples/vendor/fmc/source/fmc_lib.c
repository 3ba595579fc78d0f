/* askbuild fixture: fmc library (CRLF like NXP fmc). */
#include <stdio.h>
#include <libxml/parser.h>
#include "fm_ext.h"
#include "fmc.h"

int fmc_fixture_compile(const char *pdl_path, char *out, int outlen)
{
	xmlDocPtr doc = xmlReadFile(pdl_path, NULL, XML_PARSE_NONET);
	xmlNodePtr root;
	if (!doc)
		return -1;
	root = xmlDocGetRootElement(doc);
	snprintf(out, outlen, "pdl=%s fm=%s", root ? (const char *)root->name : "?",
		 fm_fixture_open(1));
	xmlFreeDoc(doc);
	return 0;
}
