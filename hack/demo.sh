#!/usr/bin/env bash
# peapod's main job on a fresh machine: a node runs peapod, which gives each pod its own
# network namespace, an IP on the node bridge and a route out; pods reach each other by IP.
#
# Everything happens in a throwaway node (hack/lib/node.sh): its own network, mount and pid
# namespaces, so the host's network is never touched. peapod runs there on its defaults
# (socket /run/peapod/peapod.sock in the node's private /run). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "hack/demo.sh: run as root (it makes namespaces, links and mounts)" >&2
    exit 1
fi

# shellcheck source=hack/lib/node.sh
. hack/lib/node.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "setup and release build"
hack/setup.sh
cargo build --release --workspace --bins
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="${target_dir:-$PWD/target}/release"

made_state_dir=""
# Pods made without a cgroup_parent go under peapod's default parent cgroup, "peapod"; if the
# demo is the first to make it, the demo removes it again.
cgroup_parent=""
if ! compgen -G '/sys/fs/cgroup/*/peapod' >/dev/null && [ ! -d /sys/fs/cgroup/peapod ]; then
    cgroup_parent=/peapod
fi
cleanup() {
    local status=$?
    if [ -n "$NODE_DIR" ] && [ "$status" != 0 ] && [ -f "$NODE_DIR/daemon.log" ]; then
        echo "--- last lines of the daemon log ---" >&2
        tail -n 30 "$NODE_DIR/daemon.log" >&2
    fi
    node_cleanup "$cgroup_parent"
    if [ -n "$made_state_dir" ]; then
        rmdir /var/lib/peapod 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "a throwaway node (own network, mount and pid namespaces)"
node_start "$bin/peapod-pause"
echo "node PID 1 is host pid $NODE_PID1 ($bin/peapod-pause)"
# peapod's default state dir, /var/lib/peapod, gets a tmpfs private to the node.
if [ ! -d /var/lib/peapod ]; then
    mkdir -p /var/lib/peapod
    made_state_dir=1
fi
node_exec mount -t tmpfs -o mode=0700 tmpfs /var/lib/peapod

step "peapod serve, on its defaults"
node_daemon_start "$NODE_DIR/daemon.log" "$bin/peapod" serve
node_wait "$bin/peapod" pod ls
echo "peapod is serving CRI on /run/peapod/peapod.sock (inside the node)"

pod() { node_exec "$bin/peapod" pod "$@"; }
field() { pod inspect "$1" | jq -r "$2"; }

step "two pods"
a=$(pod run pod-a)
b=$(pod run pod-b)
ip_a=$(field "$a" .status.network.ip)
ip_b=$(field "$b" .status.network.ip)
pid_b=$(field "$b" .info.info.pid)
echo "pod-a  $a  $ip_a"
echo "pod-b  $b  $ip_b"

step "pod-a connects to pod-b by its IP"
# The listener runs in pod B's network and UTS namespaces, so it greets with B's hostname.
node_exec nsenter -t "$pid_b" -n -u -- "$bin/peapod-probe" listen "$ip_b:8080" >"$NODE_DIR/listener.out" &
listener=$!
for _ in $(seq 100); do
    grep -q listening "$NODE_DIR/listener.out" && break
    sleep 0.05
done
echo "\$ ip netns exec peapod-${a:0:12}... peapod-probe connect $ip_b:8080"
node_exec ip netns exec "peapod-$a" "$bin/peapod-probe" connect "$ip_b:8080"
wait "$listener"

step "the node: network namespaces, the bridge and its veths, the pods"
echo "\$ ip netns"
node_exec ip netns
echo "# each pin is the network namespace its pause process holds:"
for id in "$a" "$b"; do
    pid=$(field "$id" .info.info.pid)
    pin_ns=$(node_exec stat -L -c %i "/run/netns/peapod-$id")
    pause_ns=$(node_exec readlink "/proc/$pid/ns/net")
    echo "  peapod-${id:0:12}...  inode $pin_ns   pause pid $pid ($(node_exec cat "/proc/$pid/comm")) in $pause_ns"
done
echo "\$ ip -br addr show peapod0"
node_exec ip -br addr show peapod0
echo "\$ bridge link"
node_exec bridge link
echo "\$ ip -br link"
node_exec ip -br link
echo "\$ peapod pod ls"
pod ls

step "stop and remove the pods"
for id in "$a" "$b"; do
    pod stop "$id" >/dev/null
    pod rm "$id" >/dev/null
done
pod ls
echo "netns left in the node: $(node_exec ip netns | wc -l)"

step "tear the node down"
node_cleanup "$cgroup_parent"
echo "done: the host shows nothing of the demo"
