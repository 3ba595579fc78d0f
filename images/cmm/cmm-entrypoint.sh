#!/bin/sh
# Entrypoint of localhost/monok8s/cmm (main container of the monok8s cmm DaemonSet).
#
# Runs   cmm -f $CMM_CONFIG -n $CMM_MAX_CONNECTIONS [ARGS...]
# (defaults /etc/config/fastforward and 131072) and keeps the container alive exactly as long as
# cmm runs: SIGTERM and SIGINT are passed on to cmm, and the container ends when cmm ends.
#
# cmm may stay in the foreground (logs on stdout/stderr) or daemonize and log with syslog(3)
# (the vendor's behaviour without local patches).  Both work: a busybox syslogd started before
# cmm listens on /dev/log and writes every message to stdout, and when cmm's first process exits
# with status 0 the daemon it left behind is found (CMM_PIDFILE, else a process named like
# CMM_BIN) and supervised until it is gone.
#
# Arguments that start with "-" are appended to cmm's command line; any other command replaces
# cmm (e.g. `sh`, `/bin/init_dpa.sh`).
#
# Environment:
#   CMM_MAX_CONNECTIONS  max conntrack connections passed as -n (default 131072)
#   CMM_CONFIG           rules file passed as -f (default /etc/config/fastforward)
#   CMM_BIN              the cmm binary (default /usr/bin/cmm)
#   CMM_SYSLOG_RELAY     1 (default): relay /dev/log to stdout; 0: do not
#   CMM_PIDFILE          where a daemonized cmm writes its pid (optional)
#   CMM_DAEMON_WAIT      seconds to look for a daemonized cmm after its parent exits (default 3)
set -u

log() { echo "cmm-entrypoint: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ $# -gt 0 ]; then
    case "$1" in
        -*) ;;
        *) exec "$@" ;;
    esac
fi

CMM_BIN=${CMM_BIN:-/usr/bin/cmm}
CMM_CONFIG=${CMM_CONFIG:-/etc/config/fastforward}
MAX=${CMM_MAX_CONNECTIONS:-131072}
WAIT_DAEMON=${CMM_DAEMON_WAIT:-3}

case "$MAX" in
    '' | *[!0-9]*) die "CMM_MAX_CONNECTIONS must be a positive integer, got '$MAX'" ;;
esac
case "$WAIT_DAEMON" in
    '' | *[!0-9]*) die "CMM_DAEMON_WAIT must be a whole number of seconds, got '$WAIT_DAEMON'" ;;
esac
[ -x "$CMM_BIN" ] || die "$CMM_BIN is missing or not executable (CMM_BIN)"
[ -r "$CMM_CONFIG" ] || die "the rules file $CMM_CONFIG does not exist (CMM_CONFIG)"

relay_pid=""
target=""
got_signal=""

start_relay() {
    [ "${CMM_SYSLOG_RELAY:-1}" = 1 ] || return 0
    if [ -e /dev/log ]; then
        log "/dev/log exists already: not starting the syslog relay"
        return 0
    fi
    syslogd -n -O - &
    relay_pid=$!
    i=0
    while [ ! -S /dev/log ] && [ $i -lt 100 ]; do
        kill -0 "$relay_pid" 2>/dev/null || { log "warning: syslog relay did not start"; relay_pid=""; return 0; }
        sleep 0.1
        i=$((i + 1))
    done
    [ -S /dev/log ] || log "warning: /dev/log did not appear; cmm's syslog output is lost"
}

stop_relay() {
    if [ -n "$relay_pid" ]; then
        sleep 0.3          # let the last messages through
        kill "$relay_pid" 2>/dev/null
        wait "$relay_pid" 2>/dev/null
        relay_pid=""
    fi
}

on_signal() {
    got_signal=$1
    if [ -n "$target" ]; then
        log "passing SIG$1 on to cmm (pid $target)"
        kill -s "$1" "$target" 2>/dev/null
    fi
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal HUP' HUP

# alive PID: the process exists and is not a zombie
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    state=$(sed -e 's/^.*) //' -e 's/ .*//' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

find_daemon() {
    if [ -n "${CMM_PIDFILE:-}" ] && [ -r "$CMM_PIDFILE" ]; then
        read -r p < "$CMM_PIDFILE" 2>/dev/null
        case "${p:-}" in
            '' | *[!0-9]*) ;;
            *) if alive "$p"; then echo "$p"; return 0; fi ;;
        esac
    fi
    name=$(basename "$CMM_BIN" | cut -c1-15)
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ "$p" = "$$" ] && continue
        [ "$p" = "$relay_pid" ] && continue
        comm=$(cat "$d/comm" 2>/dev/null) || continue
        if [ "$comm" = "$name" ] && alive "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

start_relay
log "starting: $CMM_BIN -f $CMM_CONFIG -n $MAX${*:+ $*}"
"$CMM_BIN" -f "$CMM_CONFIG" -n "$MAX" "$@" &
cmm_pid=$!
target=$cmm_pid
[ -n "$got_signal" ] && kill -s "$got_signal" "$cmm_pid" 2>/dev/null

while :; do
    wait "$cmm_pid"
    rc=$?
    # wait returns early when a trapped signal arrives: go on waiting while cmm runs
    kill -0 "$cmm_pid" 2>/dev/null || break
done

if [ "$rc" -ne 0 ] || [ -n "$got_signal" ]; then
    log "cmm exited with status $rc"
    stop_relay
    exit "$rc"
fi

# Status 0: cmm either finished or daemonized.  Look for the daemon.
dpid=""
i=0
while [ $i -le $((WAIT_DAEMON * 5)) ]; do
    dpid=$(find_daemon) && break
    dpid=""
    sleep 0.2
    i=$((i + 1))
done
if [ -z "$dpid" ]; then
    log "cmm exited with status 0"
    stop_relay
    exit 0
fi

log "cmm daemonized (pid $dpid): supervising it"
target=$dpid
[ -n "$got_signal" ] && kill -s "$got_signal" "$dpid" 2>/dev/null
while alive "$dpid"; do
    sleep 0.5 &
    wait $! 2>/dev/null
done
stop_relay
if [ -n "$got_signal" ]; then
    log "cmm (pid $dpid) stopped after SIG$got_signal"
    exit 0
fi
log "cmm (pid $dpid) is gone: the container ends with it"
exit 1
