#!/bin/sh
# select-dpa-config.sh: choose this node's DPA configuration, then run /bin/init_dpa.sh.
#
# The profile is MONOK8S_HW_PROFILE (a hardware profile such as gateway-dk) when set, otherwise
# NODE_NAME (set it from the downward API: spec.nodeName).  Its directory
#   ${DPA_CONFIG_ROOT:-/etc/monok8s/dpa-configs}/<profile>/
# may hold cdx_cfg.xml, cdx_pcd.xml, cdx_sp.xml and hxs_pdl_v3.xml; each file present is
# exported as CDX_CFG_FILE, CDX_PCD_FILE, CDX_SP_FILE or CDX_PDL_FILE (files absent keep
# init_dpa.sh's defaults).  The image ships a `default` profile and one per board; mount a
# ConfigMap or hostPath over the root for per-node files.  A missing directory is an error.
# Arguments are passed on to init_dpa.sh; so is DPA_DRY_RUN=1 (init_dpa.sh's dry run: print the
# module and dpa_app commands instead of running them).
set -u

die() { echo "select-dpa-config: error: $*" >&2; exit 1; }

root=${DPA_CONFIG_ROOT:-/etc/monok8s/dpa-configs}
if [ -n "${MONOK8S_HW_PROFILE:-}" ]; then
    profile=$MONOK8S_HW_PROFILE
    from=MONOK8S_HW_PROFILE
elif [ -n "${NODE_NAME:-}" ]; then
    profile=$NODE_NAME
    from=NODE_NAME
else
    die "set MONOK8S_HW_PROFILE (hardware profile) or NODE_NAME to choose a directory under $root"
fi
case "$profile" in
    */* | . | .. | -*) die "$from=$profile is not a valid profile name" ;;
esac
dir=$root/$profile
if [ ! -d "$dir" ]; then
    available=$(ls "$root" 2>/dev/null | tr '\n' ' ')
    die "no DPA configuration for $from=$profile: $dir does not exist (available: ${available:-none})"
fi
echo "select-dpa-config: profile $profile (from $from): $dir"
found=0
for pair in CDX_CFG_FILE:cdx_cfg.xml CDX_PCD_FILE:cdx_pcd.xml CDX_PDL_FILE:hxs_pdl_v3.xml CDX_SP_FILE:cdx_sp.xml; do
    var=${pair%%:*}
    file=${pair#*:}
    if [ -f "$dir/$file" ]; then
        export "$var=$dir/$file"
        echo "select-dpa-config: $var=$dir/$file"
        found=1
    else
        echo "select-dpa-config: $dir has no $file: $var keeps its default"
    fi
done
[ "$found" = 1 ] || die "$dir holds none of cdx_cfg.xml, cdx_pcd.xml, cdx_sp.xml, hxs_pdl_v3.xml"
exec /bin/init_dpa.sh "$@"
