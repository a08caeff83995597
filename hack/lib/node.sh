# shellcheck shell=bash
# A throwaway node for the hack/ scripts, made like the Rust test harness (tests/src/node.rs):
# its own network namespace, a private mount namespace with its own tmpfs /run and sysfs, and
# its own pid namespace whose PID 1 is peapod-pause. Killing PID 1 takes every process, the
# network namespace (bridge, veths, nftables) and the mount namespace (netns pins) with it.
#
# Source it, then: node_start PAUSE; node_exec CMD...; node_daemon_start LOG CMD...;
# node_wait CMD...; node_cleanup [CGROUP_PARENT]. Call node_cleanup from an EXIT trap.
# Several nodes at once: node_use NAME before each node's calls, node_cleanup_all
# [CGROUP_PARENT] from the EXIT trap.

NODE_DIR=""
NODE_HOLDER=""
NODE_PID1=""
NODE_DAEMON_NSENTER=""
NODE_DAEMON_PID=""
NODE_NAME=""
declare -gA NODE_SAVED=()

# shellcheck disable=SC2016 # $0 is expanded by the node's sh, not here
NODE_HOLDER_SCRIPT='set -e
mount -t tmpfs -o mode=0755 tmpfs /run
if mountpoint -q /sys/fs/cgroup; then
    mkdir /run/.cgroup
    mount --rbind /sys/fs/cgroup /run/.cgroup
fi
mount -t sysfs sysfs /sys
if [ -d /run/.cgroup ]; then
    mount --move /run/.cgroup /sys/fs/cgroup
    rmdir /run/.cgroup
fi
ip link set lo up
echo ready
exec "$0" </dev/null >/dev/null'

node_die() {
    echo "node: $*" >&2
    exit 1
}

# node_start PAUSE: starts the node with PAUSE as its PID 1; sets NODE_DIR (made under
# $NODE_BASE, /tmp by default) and NODE_PID1.
node_start() {
    local pause=$1 _
    [ -x "$pause" ] || node_die "$pause is not an executable"
    NODE_DIR=$(mktemp -d "${NODE_BASE:-/tmp}/peapod-node-XXXXXX")
    unshare --net --mount --pid --fork --kill-child --mount-proc --propagation private \
        -- sh -c "$NODE_HOLDER_SCRIPT" "$pause" \
        </dev/null >"$NODE_DIR/holder.out" 2>"$NODE_DIR/node.log" &
    NODE_HOLDER=$!
    for _ in $(seq 200); do
        grep -qx ready "$NODE_DIR/holder.out" 2>/dev/null && break
        kill -0 "$NODE_HOLDER" 2>/dev/null || node_die "the node did not come up: $(cat "$NODE_DIR/node.log")"
        sleep 0.025
    done
    grep -qx ready "$NODE_DIR/holder.out" || node_die "the node did not come up within 5s"
    NODE_PID1=$(tr -d ' \n' <"/proc/$NODE_HOLDER/task/$NODE_HOLDER/children")
    [ -n "$NODE_PID1" ] || node_die "cannot find the node's PID 1"
}

# node_exec CMD...: runs CMD inside the node (its network, mount and pid namespaces).
node_exec() {
    nsenter -t "$NODE_PID1" -n -m -p -- "$@"
}

# node_daemon_start LOG CMD...: starts CMD in the node in the background, output to LOG;
# sets NODE_DAEMON_PID (host pid) and NODE_DAEMON_NSENTER.
node_daemon_start() {
    local log=$1 _
    shift
    nsenter -t "$NODE_PID1" -n -m -p -- "$@" </dev/null >>"$log" 2>&1 &
    NODE_DAEMON_NSENTER=$!
    for _ in $(seq 200); do
        NODE_DAEMON_PID=$(tr -d ' \n' <"/proc/$NODE_DAEMON_NSENTER/task/$NODE_DAEMON_NSENTER/children" 2>/dev/null || true)
        [ -n "$NODE_DAEMON_PID" ] && return 0
        kill -0 "$NODE_DAEMON_NSENTER" 2>/dev/null || node_die "$1 exited at once: $(tail -n 20 "$log")"
        sleep 0.025
    done
    node_die "$1 did not start"
}

# node_daemon_nspid: the daemon's pid as seen inside the node.
node_daemon_nspid() {
    awk '/^NSpid:/ { print $NF }' "/proc/$NODE_DAEMON_PID/status"
}

# node_wait CMD...: retries CMD inside the node for up to 20 s until it succeeds.
node_wait() {
    local _
    for _ in $(seq 400); do
        node_exec "$@" >/dev/null 2>&1 && return 0
        if [ -n "$NODE_DAEMON_NSENTER" ] && ! kill -0 "$NODE_DAEMON_NSENTER" 2>/dev/null; then
            node_die "the daemon exited"
        fi
        sleep 0.05
    done
    node_die "timed out waiting for: $*"
}

# node_cleanup [CGROUP_PARENT]: kills the daemon and the node, waits for them, removes the
# cgroups under CGROUP_PARENT (deepest first) and the node's temp dir. Safe to call twice.
node_cleanup() {
    local cgroup_parent=${1:-} hierarchy dir
    if [ -n "$NODE_DAEMON_NSENTER" ]; then
        kill -KILL "$NODE_DAEMON_PID" 2>/dev/null || true
        wait "$NODE_DAEMON_NSENTER" 2>/dev/null || true
        NODE_DAEMON_NSENTER=""
    fi
    if [ -n "$NODE_HOLDER" ]; then
        kill -KILL "$NODE_PID1" 2>/dev/null || true
        wait "$NODE_HOLDER" 2>/dev/null || true
        NODE_HOLDER=""
    fi
    if [ -n "$cgroup_parent" ]; then
        while read -r hierarchy; do
            dir="$hierarchy/${cgroup_parent#/}"
            # Retry: the kernel may hold on to the cgroup of a process that just died.
            for _ in $(seq 50); do
                [ -d "$dir" ] || break
                find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || sleep 0.1
            done
            if [ -d "$dir" ]; then
                echo "node: could not remove the cgroup $dir" >&2
            fi
        done < <(awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts)
    fi
    if [ -n "$NODE_DIR" ]; then
        rm -rf "$NODE_DIR"
        NODE_DIR=""
    fi
}

# node_use NAME: makes NAME the current node, the one the other functions act on (NAME not
# used before: no node yet, node_start makes it). The variables of the node that was current
# are kept under its name.
node_use() {
    if [ -n "$NODE_NAME" ]; then
        NODE_SAVED[$NODE_NAME]="$NODE_DIR|$NODE_HOLDER|$NODE_PID1|$NODE_DAEMON_NSENTER|$NODE_DAEMON_PID"
    fi
    NODE_NAME=$1
    IFS='|' read -r NODE_DIR NODE_HOLDER NODE_PID1 NODE_DAEMON_NSENTER NODE_DAEMON_PID \
        <<<"${NODE_SAVED[$1]:-||||}"
}

# node_names: the names node_use was given, one a line.
node_names() {
    [ -z "$NODE_NAME" ] || node_use "$NODE_NAME"
    [ ${#NODE_SAVED[@]} = 0 ] || printf '%s\n' "${!NODE_SAVED[@]}"
}

# node_cleanup_all [CGROUP_PARENT]: node_cleanup of every node node_use named (and of the
# current one), then removes the cgroups under CGROUP_PARENT. Safe to call twice.
node_cleanup_all() {
    local name
    for name in $(node_names); do
        node_use "$name"
        node_cleanup
    done
    node_cleanup "${1:-}"
}
