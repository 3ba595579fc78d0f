// SPDX-License-Identifier: GPL-2.0
/* askbuild fixture: a module using cdx's exported symbol, like fci. */
#include <linux/module.h>
#include <linux/init.h>

extern int cdx_fixture_abi(void);

static int __init fci_init(void)
{
	pr_info("fci fixture loaded (cdx ABI %d)\n", cdx_fixture_abi());
	return 0;
}

static void __exit fci_exit(void)
{
}

module_init(fci_init);
module_exit(fci_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("askbuild fixture fci");
