// SPDX-License-Identifier: GPL-2.0
/* askbuild fixture: an out-of-tree module exporting a symbol, like cdx. */
#include <linux/module.h>
#include <linux/init.h>
#include "cdx_ioctl.h"

int cdx_fixture_abi(void)
{
	return CDX_FIXTURE_ABI;
}
EXPORT_SYMBOL(cdx_fixture_abi);

static int __init cdx_init(void)
{
	pr_info("cdx fixture loaded (platform %s)\n", CDX_PLATFORM_NAME);
	return 0;
}

static void __exit cdx_exit(void)
{
}

module_init(cdx_init);
module_exit(cdx_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("askbuild fixture cdx");
