#!/bin/sh
# Entrypoint of localhost/monok8s/cmm (main container of the monok8s cmm DaemonSet).
#
# Runs   cmm -f $CMM_CONFIG -n $CMM_MAX_CONNECTIONS [ARGS...]
# (defaults /etc/config/fastforward and 131072) and keeps the container alive exactly as long as
# cmm serves: SIGTERM and SIGINT are passed on to cmm, and the container ends when cmm ends.
#
# cmm may stay in the foreground (logs on stdout/stderr) or daemonize and log with syslog(3)
# (the vendor's behaviour without local patches).  Both work: a busybox syslogd started before
# cmm listens on /dev/log and writes every message to stdout, and when cmm's first process exits
# with status 0 the daemon it left behind is found (CMM_PIDFILE, else a process named like
# CMM_BIN) and supervised until it is gone.
#
# Exit status (what Kubernetes sees; every non-zero end prints a line saying why):
#   0   the container was asked to stop (SIGTERM/SIGINT, passed on to cmm) and cmm stopped
#       (cleanly or by that signal)
#   N   cmm exited on its own with status N (N != 0), or with N after being asked to stop
#   1   cmm exited with status 0 but no daemon of it was found within CMM_DAEMON_WAIT seconds
#       (it stopped before serving, e.g. a daemon dying at start-up), or the daemon died on its
#       own, or the entrypoint's own configuration is wrong
#
# Arguments that start with "-" are appended to cmm's command line; any other command replaces
# cmm (e.g. `sh`, `/bin/init_dpa.sh`).  One-shot queries: when the arguments hold -h or -v
# (cmm's help and version), `cmm ARGS` runs in the foreground and the container exits with
# cmm's own status.
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
for arg in "$@"; do
    case "$arg" in
        -h | -v | --help | --version)
            [ -x "$CMM_BIN" ] || die "$CMM_BIN is missing or not executable (CMM_BIN)"
            exec "$CMM_BIN" "$@" ;;
    esac
done
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
stop_sig=""        # TERM or INT: the container was asked to stop

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
    case "$1" in TERM | INT) stop_sig=$1 ;; esac
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

# finish STATUS MESSAGE: the last words of the container
finish() {
    log "$2"
    stop_relay
    exit "$1"
}

# stopped WHAT STATUS: WHAT ended after the container was asked to stop: 0 when it ended cleanly
# or by the signal passed on (status 128+15 / 128+2), else its own status
stopped() {
    case "$2" in
        0 | 143 | 130) finish 0 "$1 stopped after SIG$stop_sig" ;;
        *) finish "$2" "error: $1 exited with status $2 after SIG$stop_sig" ;;
    esac
}

start_relay
log "starting: $CMM_BIN -f $CMM_CONFIG -n $MAX${*:+ $*}"
"$CMM_BIN" -f "$CMM_CONFIG" -n "$MAX" "$@" &
cmm_pid=$!
target=$cmm_pid
[ -n "$stop_sig" ] && kill -s "$stop_sig" "$cmm_pid" 2>/dev/null

while :; do
    wait "$cmm_pid"
    rc=$?
    # wait returns early when a trapped signal arrives: go on waiting while cmm runs
    kill -0 "$cmm_pid" 2>/dev/null || break
done
target=""

[ -n "$stop_sig" ] && stopped cmm "$rc"
[ "$rc" -ne 0 ] && finish "$rc" "error: cmm exited with status $rc on its own, before being asked to stop"

# Status 0: cmm either daemonized or stopped before serving.  Look for the daemon.
dpid=""
i=0
while [ $i -le $((WAIT_DAEMON * 5)) ]; do
    dpid=$(find_daemon) && break
    dpid=""
    [ -n "$stop_sig" ] && break
    sleep 0.2
    i=$((i + 1))
done
if [ -z "$dpid" ]; then
    [ -n "$stop_sig" ] && finish 0 "cmm stopped after SIG$stop_sig (no daemon of it left)"
    finish 1 "error: cmm exited with status 0 and no cmm daemon was found within ${WAIT_DAEMON}s (CMM_PIDFILE${CMM_PIDFILE:+ $CMM_PIDFILE}, or a process named $(basename "$CMM_BIN" | cut -c1-15)): cmm stopped before serving (see its messages above)"
fi

log "cmm daemonized (pid $dpid): supervising it"
target=$dpid
[ -n "$stop_sig" ] && kill -s "$stop_sig" "$dpid" 2>/dev/null
while alive "$dpid"; do
    sleep 0.5 &
    wait $! 2>/dev/null
done
[ -n "$stop_sig" ] && stopped "cmm (pid $dpid)" 0
finish 1 "error: cmm (pid $dpid) is gone: the container ends with it (the daemon died on its own, nobody asked it to stop)"
