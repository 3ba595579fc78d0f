// SPDX-License-Identifier: GPL-2.0
/* askbuild example: an out-of-tree module exporting a symbol, like cdx.  Like the vendor's cdx
 * it starts the DPA configuration loader (/usr/bin/dpa_app) from the kernel when it loads. */
#include <linux/module.h>
#include <linux/init.h>
#include <linux/umh.h>
#include "cdx_ioctl.h"

int cdx_fixture_abi(void)
{
	return CDX_FIXTURE_ABI;
}
EXPORT_SYMBOL(cdx_fixture_abi);

static int start_dpa_app(void)
{
	static char *argv[] = { "/usr/bin/dpa_app", NULL };
	static char *envp[] = { "HOME=/", "PATH=/sbin:/bin:/usr/sbin:/usr/bin", NULL };

	pr_info("cdx fixture: starting %s\n", argv[0]);
	return call_usermodehelper(argv[0], argv, envp, UMH_WAIT_PROC);
}

static int __init cdx_init(void)
{
	int rc;

	pr_info("cdx fixture loaded (platform %s)\n", CDX_PLATFORM_NAME);
	rc = start_dpa_app();
	if (rc)
		pr_err("cdx fixture: dpa_app failed (%d)\n", rc);
	return 0;
}

static void __exit cdx_exit(void)
{
}

module_init(cdx_init);
module_exit(cdx_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("askbuild fixture cdx");
