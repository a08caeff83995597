#!/usr/bin/env bash
# Quick check of peapod-pause (run as root, from anywhere in the repo):
#   - release binary is static and <= 32 KiB
#   - `-v` prints the version; other arguments exit 2 with usage on stderr
#   - as PID 1 of a new pid namespace: VmRSS <= 128 KiB, orphans reparented
#     to it get reaped, and SIGTERM / SIGINT make it exit 0
# Exits non-zero on the first failure; kills whatever it started.
set -euo pipefail

MAX_SIZE=32768   # bytes
MAX_RSS=128      # KiB

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok:   $*"; }

[[ $EUID -eq 0 ]] || fail "must run as root (needs unshare --pid / nsenter)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UNSHARE_PID=""
PAUSE_PID=""
cleanup() {
    local pid
    for pid in $PAUSE_PID $UNSHARE_PID; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    [[ -z $UNSHARE_PID ]] || wait "$UNSHARE_PID" 2>/dev/null || true
}
trap cleanup EXIT

cargo build --release -p peapod-pause
BIN="$(realpath "${CARGO_TARGET_DIR:-target}/release/peapod-pause")"
pkgid="$(cargo pkgid -p peapod-pause)"
VERSION="${pkgid##*[#@]}"

# --- size -------------------------------------------------------------------
size=$(stat -c %s "$BIN")
echo "size: $size bytes ($BIN)"
((size <= MAX_SIZE)) || fail "binary is $size bytes, limit $MAX_SIZE"
file "$BIN" | grep -q 'statically linked' || fail "binary is not static: $(file "$BIN")"
ok "static, $size <= $MAX_SIZE bytes"

# --- arguments --------------------------------------------------------------
out="$("$BIN" -v)" || fail "-v exited $?"
[[ $out == "peapod-pause $VERSION" ]] || fail "-v printed '$out', want 'peapod-pause $VERSION'"
ok "-v prints '$out'"
for args in "-x" "--version" "-v extra" "-vv"; do
    rc=0
    # shellcheck disable=SC2086 # word splitting of $args is intended
    stdout="$("$BIN" $args 2>/tmp/pause-check.err)" || rc=$?
    err="$(cat /tmp/pause-check.err)"
    rm -f /tmp/pause-check.err
    ((rc == 2)) || fail "'$args' exited $rc, want 2"
    [[ -z $stdout && $err == usage:* ]] || fail "'$args': stdout='$stdout' stderr='$err'"
done
ok "bad arguments exit 2 with usage on stderr"

# --- as PID 1 of a pid namespace --------------------------------------------
# Whether pid $1 is blocked in rt_sigtimedwait: by its wait channel, or, where
# the kernel hides that, by its current syscall number (128 on x86_64).
in_sigtimedwait() {
    local wchan nr _
    wchan="$(cat "/proc/$1/wchan" 2>/dev/null || true)"
    [[ $wchan == *sigtimedwait* ]] && return 0
    read -r nr _ <"/proc/$1/syscall" 2>/dev/null || return 1
    [[ $nr == 128 ]]
}

# Starts pause as PID 1 of a new pid namespace; sets UNSHARE_PID and PAUSE_PID
# (host pid) and returns once pause is parked in rt_sigtimedwait, i.e. has its
# signals blocked (a PID 1 with SIG_DFL would drop SIGTERM sent earlier).
start_pause() {
    unshare --pid --fork --mount-proc --kill-child "$BIN" &
    UNSHARE_PID=$!
    PAUSE_PID=""
    local i
    for ((i = 0; i < 100; i++)); do
        if [[ -z $PAUSE_PID ]]; then
            read -r PAUSE_PID _ <"/proc/$UNSHARE_PID/task/$UNSHARE_PID/children" || true
        fi
        if [[ -n $PAUSE_PID && "$(readlink "/proc/$PAUSE_PID/exe" || true)" == "$BIN" ]] &&
            in_sigtimedwait "$PAUSE_PID"; then
            return 0
        fi
        sleep 0.05
    done
    fail "peapod-pause did not start (unshare pid $UNSHARE_PID, pause pid '$PAUSE_PID')"
}

# Sends signal $1 to pause and checks it exits 0 within 5 s.
stop_pause() {
    local sig=$1 i rc=0
    kill "-$sig" "$PAUSE_PID"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$UNSHARE_PID" 2>/dev/null || break
        sleep 0.05
    done
    kill -0 "$UNSHARE_PID" 2>/dev/null && fail "still running 5 s after SIG$sig"
    wait "$UNSHARE_PID" || rc=$?
    UNSHARE_PID=""
    PAUSE_PID=""
    ((rc == 0)) || fail "exit status $rc after SIG$sig, want 0"
    ok "SIG$sig as PID 1: exit status 0"
}

start_pause
nspid=$(awk '/^NSpid:/ { print $NF }' "/proc/$PAUSE_PID/status")
((nspid == 1)) || fail "pause is pid $nspid in its namespace, want 1"
rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$PAUSE_PID/status")
echo "rss:  $rss KiB (VmRSS)"
((rss <= MAX_RSS)) || fail "VmRSS is $rss KiB, limit $MAX_RSS"
ok "PID 1 in its pid namespace, VmRSS $rss <= $MAX_RSS KiB"

# Orphans: nsenter forks sh into the namespace; sh starts sleeps and exits, so
# the sleeps are reparented to the namespace's PID 1, i.e. pause.
nsenter -t "$PAUSE_PID" -p -- sh -c 'for i in 1 2 3 4 5; do sleep 0.5 & done; exit 0'
adopted=$(ps -o pid= --ppid "$PAUSE_PID" | wc -l)
((adopted == 5)) || fail "expected 5 orphans reparented to pause, found $adopted"
sleep 1.5
left="$(ps -o pid=,stat=,comm= --ppid "$PAUSE_PID" || true)"
[[ -z $left ]] || fail "children of pause not reaped:"$'\n'"$left"
ok "5 orphans reparented to pause and reaped"
stop_pause TERM

start_pause
stop_pause INT

echo "PASS"
