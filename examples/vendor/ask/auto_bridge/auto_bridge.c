// SPDX-License-Identifier: GPL-2.0
/* askbuild fixture: a standalone module, like auto_bridge. */
#include <linux/module.h>
#include <linux/init.h>
#include "auto_bridge.h"

static int __init abm_init(void)
{
	pr_info("%s fixture loaded\n", ABM_FIXTURE_NAME);
	return 0;
}

static void __exit abm_exit(void)
{
}

module_init(abm_init);
module_exit(abm_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("askbuild fixture auto_bridge");
