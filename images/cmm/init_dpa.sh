#!/bin/sh
# init_dpa.sh: prepare DPA/CDX on the node (init container of the monok8s cmm DaemonSet).
#
# 1. Loads the kernel modules in the vendor's order, each only when it is not loaded yet:
#      cdx auto_bridge nf_conntrack nf_conntrack_netlink xt_conntrack fci
#    ASK's own modules (cdx, auto_bridge, fci) are insmod'ed from ASK_MODULE_DIR (default
#    /lib/modules/<kernel release the image was built for>/extra) when the .ko file is there,
#    otherwise modprobe'd; the netfilter modules are modprobe'd (MODPROBE_ROOT, if set, is passed
#    as `modprobe -d`, e.g. /host when the node's /lib/modules is mounted at /host/lib/modules).
# 2. Runs dpa_app with the XML files named by
#      CDX_CFG_FILE (default /etc/cdx_cfg.xml)     CDX_PCD_FILE (default /etc/cdx_pcd.xml)
#      CDX_PDL_FILE (default /etc/fmc/config/hxs_pdl_v3.xml)
#      CDX_SP_FILE  (default /etc/cdx_sp.xml)
#    It prints the paths it uses and stops with an error when one is missing.  The variables are
#    exported to dpa_app, and a file other than the default is also linked at the default path,
#    so dpa_app finds it whether or not it reads the variables (needs a writable /etc).
#
# Dry run of the whole container (no FMan, no module loading; `inv manifests.rehearse` sets it,
# the generated manifests never do): DPA_DRY_RUN=1 does everything above but prints the module
# commands and the dpa_app command line instead of running them, then exits 0.
# For tests and dry runs: INIT_DPA_SKIP_MODULES=1 skips step 1; INIT_DPA_DRY_RUN=1 prints the
# module commands instead of running them; INIT_DPA_PROC_MODULES names the list of loaded
# modules (default /proc/modules, plus /sys/module); DPA_APP is the program run in step 2
# (default /usr/bin/dpa_app).  Arguments are passed on to dpa_app.
set -u

log() { echo "init_dpa: $*"; }
die() { echo "init_dpa: error: $*" >&2; exit 1; }

RELEASE_FILE=/usr/share/monok8s/kernel-release
if [ -z "${ASK_MODULE_DIR:-}" ]; then
    if [ -r "$RELEASE_FILE" ]; then
        ASK_MODULE_DIR=/lib/modules/$(cat "$RELEASE_FILE")/extra
    else
        ASK_MODULE_DIR=/lib/modules/$(uname -r)/extra
    fi
fi
PROC_MODULES=${INIT_DPA_PROC_MODULES:-/proc/modules}
if [ "${DPA_DRY_RUN:-0}" = 1 ]; then
    INIT_DPA_DRY_RUN=1
    log "dry run (DPA_DRY_RUN=1): printing the module and dpa_app commands instead of running them"
fi
DPA_APP=${DPA_APP:-/usr/bin/dpa_app}

is_loaded() {
    grep -q "^$1 " "$PROC_MODULES" 2>/dev/null && return 0
    [ -z "${INIT_DPA_PROC_MODULES:-}" ] && [ -d "/sys/module/$1" ] && return 0
    return 1
}

run_or_print() {
    if [ "${INIT_DPA_DRY_RUN:-0}" = 1 ]; then
        log "would run: $*"
        return 0
    fi
    log "running: $*"
    "$@"
}

load_module() {
    m=$1
    if is_loaded "$m"; then
        log "module $m: already loaded"
        return 0
    fi
    case "$m" in
        cdx | auto_bridge | fci)
            if [ -f "$ASK_MODULE_DIR/$m.ko" ]; then
                run_or_print insmod "$ASK_MODULE_DIR/$m.ko" ||
                    die "could not load module $m from $ASK_MODULE_DIR/$m.ko (is the container privileged, and was the image built for this kernel, $(uname -r)?)"
                return 0
            fi
            ;;
    esac
    if [ -n "${MODPROBE_ROOT:-}" ]; then
        run_or_print modprobe -d "$MODPROBE_ROOT" "$m" ||
            die "could not load module $m with modprobe -d $MODPROBE_ROOT (are the node's modules mounted there?)"
    else
        run_or_print modprobe "$m" ||
            die "could not load module $m with modprobe (is the container privileged, with the node's /lib/modules mounted?)"
    fi
}

if [ "${INIT_DPA_SKIP_MODULES:-0}" = 1 ]; then
    log "skipping module loading (INIT_DPA_SKIP_MODULES=1)"
else
    if [ -r "$RELEASE_FILE" ] && [ "$(uname -r)" != "$(cat "$RELEASE_FILE")" ]; then
        log "warning: running kernel $(uname -r), image built for $(cat "$RELEASE_FILE")"
    fi
    for m in cdx auto_bridge nf_conntrack nf_conntrack_netlink xt_conntrack fci; do
        load_module "$m"
    done
fi

# bind VAR DEFAULT: check the file named by $VAR (or DEFAULT) and make it visible at DEFAULT
bind() {
    var=$1
    default=$2
    eval "value=\${$var:-}"
    [ -n "$value" ] || value=$default
    log "$var=$value"
    [ -e "$value" ] || die "$var: $value does not exist (set $var to an existing file, or mount one there)"
    [ -f "$value" ] && [ -r "$value" ] || die "$var: $value is not a readable file"
    export "$var=$value"
    if [ "$value" != "$default" ]; then
        real_value=$(readlink -f "$value")
        real_default=$(readlink -f "$default" 2>/dev/null || true)
        if [ "$real_value" != "$real_default" ]; then
            mkdir -p "$(dirname "$default")" 2>/dev/null
            ln -sf "$real_value" "$default" ||
                die "$var: cannot link $default -> $real_value (read-only root file system?); mount the file at $default instead"
            log "linked $default -> $real_value"
        fi
    fi
}

bind CDX_CFG_FILE /etc/cdx_cfg.xml
bind CDX_PCD_FILE /etc/cdx_pcd.xml
bind CDX_PDL_FILE /etc/fmc/config/hxs_pdl_v3.xml
bind CDX_SP_FILE /etc/cdx_sp.xml

[ -x "$DPA_APP" ] || die "$DPA_APP is missing or not executable (DPA_APP)"
if [ "${DPA_DRY_RUN:-0}" = 1 ]; then
    log "would run: $DPA_APP${*:+ $*} (CDX_CFG_FILE=$CDX_CFG_FILE CDX_PCD_FILE=$CDX_PCD_FILE CDX_PDL_FILE=$CDX_PDL_FILE CDX_SP_FILE=$CDX_SP_FILE)"
    log "dry run complete"
    exit 0
fi
log "running: $DPA_APP${*:+ $*}"
exec "$DPA_APP" "$@"
