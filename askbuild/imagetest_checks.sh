#!/bin/sh
# askbuild image.test: contract checks run inside localhost/monok8s/cmm (busybox sh).
# Prints "CHECK ok NAME" / "CHECK FAIL NAME: DETAIL", then "CHECK done".  Expectations come in as
# environment values (EXPECT_FILES: "path sha256" lines); askbuild.imagetest passes this file's
# text as `sh -c` and never interpolates anything into it.
ok() { echo "CHECK ok $1"; }
bad() { echo "CHECK FAIL $1: $2"; }
has() { case "$1" in *"$2"*) return 0 ;; esac; return 1; }
flat() { echo "$1" | tr '\n' ' '; }
# check LABEL CMD...: "CHECK ok LABEL" when the shell command CMD succeeds, else
# "CHECK FAIL LABEL: WHY".  WHY is $why when set (e.g. `why="missing" check ...`), else the exit
# status and output of the command under test ($rc, $out).
check() {
    label=$1
    shift
    if eval "$*"; then ok "$label"; else bad "$label" "${why:-exit $rc: $(flat "$out")}"; fi
    why=""
}
why=""
rc=""
out=""
nl="
"
rel=$(cat /usr/share/monok8s/kernel-release 2>/dev/null)
if [ -n "$rel" ]; then ok "kernel release recorded ($rel)"
else bad "kernel release recorded" "/usr/share/monok8s/kernel-release missing"; fi
for f in /usr/bin/cmm /usr/bin/dpa_app /usr/bin/fmc /bin/init_dpa.sh \
         /usr/share/monok8s/select-dpa-config.sh /usr/share/monok8s/cmm-entrypoint.sh; do
    why="missing or not executable" check "executable $f" '[ -f "$f" ] && [ -x "$f" ]'
done
for f in /etc/config/fastforward /etc/config/fastforward.vendor.orig /etc/cdx_cfg.xml \
         /etc/cdx_pcd.xml /etc/cdx_sp.xml /etc/fmc/config/hxs_pdl_v3.xml \
         /lib/modules/$rel/extra/cdx.ko /lib/modules/$rel/extra/fci.ko \
         /lib/modules/$rel/extra/auto_bridge.ko; do
    why="missing" check "file $f" '[ -f "$f" ]'
done
echo "$EXPECT_FILES" | while read -r path sum; do
    [ -n "$path" ] || continue
    got=$(sha256sum "$path" 2>/dev/null | cut -d' ' -f1)
    why="got ${got:-nothing}, vendor file has $sum" check "sha256 $path" '[ "$got" = "$sum" ]'
done
for b in /usr/bin/cmm /usr/bin/dpa_app /usr/bin/fmc; do
    out=$(/lib/ld-linux-aarch64.so.1 --list "$b" 2>&1); rc=$?
    why=$(flat "$out") check "libraries of $b load" '[ $rc -eq 0 ] && ! has "$out" "not found"'
done
out=$(timeout 30 /usr/bin/cmm -h 2>&1); rc=$?
why="exit $rc: $(echo "$out" | head -3 | tr '\n' ' ')" \
    check "cmm -h starts" '[ $rc -eq 0 ] || echo "$out" | grep -qi usage'

# init_dpa.sh: module order, "when not loaded", defaults
printf 'cdx 16384 0 - Live 0x0\nnf_conntrack 1 0 - Live 0x0\n' > /tmp/modules
out=$(INIT_DPA_DRY_RUN=1 INIT_DPA_PROC_MODULES=/tmp/modules DPA_APP=/usr/bin/env /bin/init_dpa.sh 2>&1); rc=$?
order=$(echo "$out" | sed -n -e 's/^init_dpa: module \([a-z_]*\): already loaded$/\1/p' \
    -e 's/^init_dpa: would run: insmod .*\/\([a-z_]*\)\.ko$/\1/p' \
    -e 's/^init_dpa: would run: modprobe \([a-z_]*\)$/\1/p' | tr '\n' ' ')
why="got: $order" check "init_dpa module order" \
    '[ "$order" = "cdx auto_bridge nf_conntrack nf_conntrack_netlink xt_conntrack fci " ]'
why=$(flat "$out") check "init_dpa loads only modules not loaded yet" \
    'has "$out" "module cdx: already loaded" && has "$out" "insmod /lib/modules/$rel/extra/auto_bridge.ko" && has "$out" "module nf_conntrack: already loaded"'
check "init_dpa default paths printed and exported" \
    '[ $rc -eq 0 ] && has "$out" "CDX_CFG_FILE=/etc/cdx_cfg.xml" && has "$out" "CDX_PCD_FILE=/etc/cdx_pcd.xml" && has "$out" "CDX_PDL_FILE=/etc/fmc/config/hxs_pdl_v3.xml" && has "$out" "CDX_SP_FILE=/etc/cdx_sp.xml"'
# a variable naming another file: exported, printed, and bound at the default path
printf '<!-- custom pcd -->\n' > /tmp/custom_pcd.xml
out=$(INIT_DPA_SKIP_MODULES=1 CDX_PCD_FILE=/tmp/custom_pcd.xml DPA_APP=/usr/bin/env /bin/init_dpa.sh 2>&1); rc=$?
check "init_dpa CDX_PCD_FILE honoured and bound at /etc/cdx_pcd.xml" \
    '[ $rc -eq 0 ] && has "$out" "init_dpa: CDX_PCD_FILE=/tmp/custom_pcd.xml" && has "$out" "$nl""CDX_PCD_FILE=/tmp/custom_pcd.xml" && [ "$(head -1 /etc/cdx_pcd.xml)" = "<!-- custom pcd -->" ]'
out=$(INIT_DPA_SKIP_MODULES=1 CDX_SP_FILE=/nonexistent/sp.xml DPA_APP=/usr/bin/env /bin/init_dpa.sh 2>&1); rc=$?
check "init_dpa missing file is a clear error" \
    '[ $rc -ne 0 ] && has "$out" "CDX_SP_FILE: /nonexistent/sp.xml does not exist"'
out=$(INIT_DPA_PROC_MODULES=/dev/null DPA_APP=/usr/bin/env /bin/init_dpa.sh 2>&1); rc=$?
check "init_dpa refused module load is a clear error" \
    '[ $rc -ne 0 ] && has "$out" "could not load module cdx" && ! has "$out" "CDX_CFG_FILE="'

# select-dpa-config.sh
out=$(MONOK8S_HW_PROFILE=default INIT_DPA_SKIP_MODULES=1 DPA_APP=/usr/bin/env /usr/share/monok8s/select-dpa-config.sh 2>&1); rc=$?
check "select-dpa-config hardware profile" \
    '[ $rc -eq 0 ] && has "$out" "$nl""CDX_CFG_FILE=/etc/monok8s/dpa-configs/default/cdx_cfg.xml" && has "$out" "$nl""CDX_PDL_FILE=/etc/monok8s/dpa-configs/default/hxs_pdl_v3.xml"'
mkdir -p /tmp/cfgs/node-a && printf '<!-- node-a cfg -->\n' > /tmp/cfgs/node-a/cdx_cfg.xml
out=$(NODE_NAME=node-a DPA_CONFIG_ROOT=/tmp/cfgs INIT_DPA_SKIP_MODULES=1 DPA_APP=/usr/bin/env /usr/share/monok8s/select-dpa-config.sh 2>&1); rc=$?
check "select-dpa-config NODE_NAME, partial directory" \
    '[ $rc -eq 0 ] && has "$out" "$nl""CDX_CFG_FILE=/tmp/cfgs/node-a/cdx_cfg.xml" && has "$out" "$nl""CDX_SP_FILE=/etc/cdx_sp.xml"'
out=$(MONOK8S_HW_PROFILE=no-such-board /usr/share/monok8s/select-dpa-config.sh 2>&1); rc=$?
check "select-dpa-config missing directory is a clear error" \
    '[ $rc -ne 0 ] && has "$out" "/etc/monok8s/dpa-configs/no-such-board does not exist"'
out=$(env -u NODE_NAME -u MONOK8S_HW_PROFILE /usr/share/monok8s/select-dpa-config.sh 2>&1); rc=$?
check "select-dpa-config without a profile is a clear error" \
    '[ $rc -ne 0 ] && has "$out" "set MONOK8S_HW_PROFILE"'

# the entrypoint's command line, with a stub in place of cmm
printf '#!/bin/sh\necho "stub cmm args: $*"\n' > /tmp/stub-cmm && chmod 755 /tmp/stub-cmm
# (the stub ends at once with status 0 and leaves no daemon: the entrypoint must fail, exit 1)
out=$(CMM_BIN=/tmp/stub-cmm CMM_DAEMON_WAIT=0 CMM_SYSLOG_RELAY=0 /usr/share/monok8s/cmm-entrypoint.sh 2>&1); rc=$?
check "entrypoint runs cmm -f /etc/config/fastforward -n 131072" \
    'has "$out" "stub cmm args: -f /etc/config/fastforward -n 131072"'
check "entrypoint fails when cmm ends before serving" \
    '[ $rc -eq 1 ] && has "$out" "cmm stopped before serving"'
out=$(CMM_BIN=/tmp/stub-cmm CMM_DAEMON_WAIT=0 CMM_SYSLOG_RELAY=0 CMM_MAX_CONNECTIONS=4096 /usr/share/monok8s/cmm-entrypoint.sh 2>&1); rc=$?
check "entrypoint honours CMM_MAX_CONNECTIONS" \
    'has "$out" "stub cmm args: -f /etc/config/fastforward -n 4096"'
out=$(CMM_BIN=/tmp/stub-cmm CMM_SYSLOG_RELAY=0 CMM_MAX_CONNECTIONS='1; reboot' /usr/share/monok8s/cmm-entrypoint.sh 2>&1); rc=$?
check "entrypoint rejects a bad CMM_MAX_CONNECTIONS" \
    '[ $rc -ne 0 ] && has "$out" "CMM_MAX_CONNECTIONS must be a positive integer"'
echo "CHECK done"
