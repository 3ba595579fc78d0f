#!/bin/sh
# askbuild image.test: contract checks run inside localhost/monok8s/cmm (busybox sh).
# Prints "CHECK ok NAME" / "CHECK FAIL NAME: DETAIL", then "CHECK done".  Expectations come in as
# environment values (EXPECT_FILES: "path sha256" lines); askbuild.imagetest passes this file's
# text as `sh -c` and never interpolates anything into it.
ok() { echo "CHECK ok $1"; }
bad() { echo "CHECK FAIL $1: $2"; }
has() { case "$1" in *"$2"*) return 0 ;; esac; return 1; }
rel=$(cat /usr/share/monok8s/kernel-release 2>/dev/null)
[ -n "$rel" ] && ok "kernel release recorded ($rel)" || bad "kernel release recorded" "/usr/share/monok8s/kernel-release missing"
for f in /usr/bin/cmm /usr/bin/dpa_app /usr/bin/fmc /bin/init_dpa.sh \
         /usr/share/monok8s/select-dpa-config.sh /usr/share/monok8s/cmm-entrypoint.sh; do
    [ -f "$f" ] && [ -x "$f" ] && ok "executable $f" || bad "executable $f" "missing or not executable"
done
for f in /etc/config/fastforward /etc/config/fastforward.vendor.orig /etc/cdx_cfg.xml \
         /etc/cdx_pcd.xml /etc/cdx_sp.xml /etc/fmc/config/hxs_pdl_v3.xml \
         /lib/modules/$rel/extra/cdx.ko /lib/modules/$rel/extra/fci.ko \
         /lib/modules/$rel/extra/auto_bridge.ko; do
    [ -f "$f" ] && ok "file $f" || bad "file $f" "missing"
done
echo "$EXPECT_FILES" | while read -r path sum; do
    [ -n "$path" ] || continue
    got=$(sha256sum "$path" 2>/dev/null | cut -d' ' -f1)
    [ "$got" = "$sum" ] && ok "sha256 $path" || bad "sha256 $path" "got ${got:-nothing}, vendor file has $sum"
done
for b in /usr/bin/cmm /usr/bin/dpa_app /usr/bin/fmc; do
    out=$(/lib/ld-linux-aarch64.so.1 --list "$b" 2>&1); rc=$?
    if [ $rc -eq 0 ] && ! has "$out" "not found"; then ok "libraries of $b load"; else bad "libraries of $b load" "$(echo "$out" | tr '\n' ' ')"; fi
done
out=$(timeout 30 /usr/bin/cmm -h 2>&1); rc=$?
if [ $rc -eq 0 ] || echo "$out" | grep -qi usage; then ok "cmm -h starts"; else bad "cmm -h starts" "exit $rc: $(echo "$out" | head -3 | tr '\n' ' ')"; fi

# init_dpa.sh: module order, "when not loaded", defaults
printf 'cdx 16384 0 - Live 0x0\nnf_conntrack 1 0 - Live 0x0\n' > /tmp/modules
out=$(INIT_DPA_DRY_RUN=1 INIT_DPA_PROC_MODULES=/tmp/modules DPA_APP=/usr/bin/env /bin/init_dpa.sh 2>&1); rc=$?
order=$(echo "$out" | sed -n -e 's/^init_dpa: module \([a-z_]*\): already loaded$/\1/p' \
    -e 's/^init_dpa: would run: insmod .*\/\([a-z_]*\)\.ko$/\1/p' \
    -e 's/^init_dpa: would run: modprobe \([a-z_]*\)$/\1/p' | tr '\n' ' ')
[ "$order" = "cdx auto_bridge nf_conntrack nf_conntrack_netlink xt_conntrack fci " ] && ok "init_dpa module order" || bad "init_dpa module order" "got: $order"
has "$out" "module cdx: already loaded" && has "$out" "insmod /lib/modules/$rel/extra/auto_bridge.ko" && has "$out" "module nf_conntrack: already loaded" && ok "init_dpa loads only modules not loaded yet" || bad "init_dpa loads only modules not loaded yet" "$(echo "$out" | tr '\n' ' ')"
[ $rc -eq 0 ] && has "$out" "CDX_CFG_FILE=/etc/cdx_cfg.xml" && has "$out" "CDX_PCD_FILE=/etc/cdx_pcd.xml" && has "$out" "CDX_PDL_FILE=/etc/fmc/config/hxs_pdl_v3.xml" && has "$out" "CDX_SP_FILE=/etc/cdx_sp.xml" && ok "init_dpa default paths printed and exported" || bad "init_dpa default paths printed and exported" "exit $rc: $(echo "$out" | tr '\n' ' ')"
# a variable naming another file: exported, printed, and bound at the default path
printf '<!-- custom pcd -->\n' > /tmp/custom_pcd.xml
out=$(INIT_DPA_SKIP_MODULES=1 CDX_PCD_FILE=/tmp/custom_pcd.xml DPA_APP=/usr/bin/env /bin/init_dpa.sh 2>&1); rc=$?
if [ $rc -eq 0 ] && has "$out" "init_dpa: CDX_PCD_FILE=/tmp/custom_pcd.xml" && has "$out" "
CDX_PCD_FILE=/tmp/custom_pcd.xml" && [ "$(head -1 /etc/cdx_pcd.xml)" = "<!-- custom pcd -->" ]; then
    ok "init_dpa CDX_PCD_FILE honoured and bound at /etc/cdx_pcd.xml"
else bad "init_dpa CDX_PCD_FILE honoured and bound at /etc/cdx_pcd.xml" "exit $rc: $(echo "$out" | tr '\n' ' ')"; fi
out=$(INIT_DPA_SKIP_MODULES=1 CDX_SP_FILE=/nonexistent/sp.xml DPA_APP=/usr/bin/env /bin/init_dpa.sh 2>&1); rc=$?
[ $rc -ne 0 ] && has "$out" "CDX_SP_FILE: /nonexistent/sp.xml does not exist" && ok "init_dpa missing file is a clear error" || bad "init_dpa missing file is a clear error" "exit $rc: $(echo "$out" | tr '\n' ' ')"
out=$(INIT_DPA_PROC_MODULES=/dev/null DPA_APP=/usr/bin/env /bin/init_dpa.sh 2>&1); rc=$?
[ $rc -ne 0 ] && has "$out" "could not load module cdx" && ! has "$out" "CDX_CFG_FILE=" && ok "init_dpa refused module load is a clear error" || bad "init_dpa refused module load is a clear error" "exit $rc: $(echo "$out" | tr '\n' ' ')"

# select-dpa-config.sh
out=$(MONOK8S_HW_PROFILE=default INIT_DPA_SKIP_MODULES=1 DPA_APP=/usr/bin/env /usr/share/monok8s/select-dpa-config.sh 2>&1); rc=$?
[ $rc -eq 0 ] && has "$out" "
CDX_CFG_FILE=/etc/monok8s/dpa-configs/default/cdx_cfg.xml" && has "$out" "
CDX_PDL_FILE=/etc/monok8s/dpa-configs/default/hxs_pdl_v3.xml" && ok "select-dpa-config hardware profile" || bad "select-dpa-config hardware profile" "exit $rc: $(echo "$out" | tr '\n' ' ')"
mkdir -p /tmp/cfgs/node-a && printf '<!-- node-a cfg -->\n' > /tmp/cfgs/node-a/cdx_cfg.xml
out=$(NODE_NAME=node-a DPA_CONFIG_ROOT=/tmp/cfgs INIT_DPA_SKIP_MODULES=1 DPA_APP=/usr/bin/env /usr/share/monok8s/select-dpa-config.sh 2>&1); rc=$?
[ $rc -eq 0 ] && has "$out" "
CDX_CFG_FILE=/tmp/cfgs/node-a/cdx_cfg.xml" && has "$out" "
CDX_SP_FILE=/etc/cdx_sp.xml" && ok "select-dpa-config NODE_NAME, partial directory" || bad "select-dpa-config NODE_NAME, partial directory" "exit $rc: $(echo "$out" | tr '\n' ' ')"
out=$(MONOK8S_HW_PROFILE=no-such-board /usr/share/monok8s/select-dpa-config.sh 2>&1); rc=$?
[ $rc -ne 0 ] && has "$out" "/etc/monok8s/dpa-configs/no-such-board does not exist" && ok "select-dpa-config missing directory is a clear error" || bad "select-dpa-config missing directory is a clear error" "exit $rc: $(echo "$out" | tr '\n' ' ')"
out=$(env -u NODE_NAME -u MONOK8S_HW_PROFILE /usr/share/monok8s/select-dpa-config.sh 2>&1); rc=$?
[ $rc -ne 0 ] && has "$out" "set MONOK8S_HW_PROFILE" && ok "select-dpa-config without a profile is a clear error" || bad "select-dpa-config without a profile is a clear error" "exit $rc: $(echo "$out" | tr '\n' ' ')"

# the entrypoint's command line, with a stub in place of cmm
printf '#!/bin/sh\necho "stub cmm args: $*"\n' > /tmp/stub-cmm && chmod 755 /tmp/stub-cmm
# (the stub ends at once with status 0 and leaves no daemon: the entrypoint must fail, exit 1)
out=$(CMM_BIN=/tmp/stub-cmm CMM_DAEMON_WAIT=0 CMM_SYSLOG_RELAY=0 /usr/share/monok8s/cmm-entrypoint.sh 2>&1); rc=$?
has "$out" "stub cmm args: -f /etc/config/fastforward -n 131072" && ok "entrypoint runs cmm -f /etc/config/fastforward -n 131072" || bad "entrypoint runs cmm -f /etc/config/fastforward -n 131072" "exit $rc: $(echo "$out" | tr '\n' ' ')"
[ $rc -eq 1 ] && has "$out" "cmm stopped before serving" && ok "entrypoint fails when cmm ends before serving" || bad "entrypoint fails when cmm ends before serving" "exit $rc: $(echo "$out" | tr '\n' ' ')"
out=$(CMM_BIN=/tmp/stub-cmm CMM_DAEMON_WAIT=0 CMM_SYSLOG_RELAY=0 CMM_MAX_CONNECTIONS=4096 /usr/share/monok8s/cmm-entrypoint.sh 2>&1); rc=$?
has "$out" "stub cmm args: -f /etc/config/fastforward -n 4096" && ok "entrypoint honours CMM_MAX_CONNECTIONS" || bad "entrypoint honours CMM_MAX_CONNECTIONS" "exit $rc: $(echo "$out" | tr '\n' ' ')"
out=$(CMM_BIN=/tmp/stub-cmm CMM_SYSLOG_RELAY=0 CMM_MAX_CONNECTIONS='1; reboot' /usr/share/monok8s/cmm-entrypoint.sh 2>&1); rc=$?
[ $rc -ne 0 ] && has "$out" "CMM_MAX_CONNECTIONS must be a positive integer" && ok "entrypoint rejects a bad CMM_MAX_CONNECTIONS" || bad "entrypoint rejects a bad CMM_MAX_CONNECTIONS" "exit $rc: $(echo "$out" | tr '\n' ' ')"
echo "CHECK done"
