#!/usr/bin/env bash
# peapod's main job on a fresh machine: the classic pod. A web server and a busybox client run
# in one pod and share its IP and localhost; a container in a second pod reaches the server at
# that IP. peapod gives each pod its network namespace (held by a tiny pause), an IP on the
# node bridge and a route out.
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
ctr() { node_exec "$bin/peapod" ctr "$@"; }
field() { pod inspect "$1" | jq -r "$2"; }

step "an image: busybox, built from Debian's busybox-static (no registry needed)"
hack/make-test-images.sh "$NODE_DIR/images" >/dev/null
node_exec "$bin/peapod" image import "$NODE_DIR/images/busybox.oci.tar"
image=peapod.test/busybox:latest

step "pod-a: a web server and a client in one pod; pod-b: another pod"
a=$(pod run pod-a)
b=$(pod run pod-b)
ip_a=$(field "$a" .status.network.ip)
ip_b=$(field "$b" .status.network.ip)
echo "pod-a  $a  $ip_a"
echo "pod-b  $b  $ip_b"
web=$(ctr run "$a" web "$image" -- httpd -f -p 80 -h /var/www)
client=$(ctr run "$a" client "$image" -- sleep 3600)
visitor=$(ctr run "$b" visitor "$image" -- sleep 3600)
ctr ls

step "the two containers of pod-a share one IP: the pod's"
for c in "$web" "$client"; do
    echo "\$ peapod ctr exec ${c:0:12} -- ip -4 -o addr show eth0"
    ctr exec "$c" -- ip -4 -o addr show eth0 | awk '{print "  " $2, $4}'
done

step "the client reaches the web server over localhost"
echo "\$ peapod ctr exec ${client:0:12} -- wget -qO- http://localhost/"
for _ in $(seq 50); do
    ctr exec "$client" -- wget -qO- http://localhost/ 2>/dev/null && break
    sleep 0.1
done

step "a container of pod-b reaches pod-a at its IP"
echo "\$ peapod ctr exec ${visitor:0:12} -- wget -qO- http://$ip_a/"
ctr exec "$visitor" -- wget -qO- "http://$ip_a/"

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

step "stop and remove the pods (their containers go with them)"
for id in "$a" "$b"; do
    pod stop "$id" >/dev/null
    pod rm "$id" >/dev/null
done
ctr ls
pod ls
echo "netns left in the node: $(node_exec ip netns | wc -l)"

step "tear the node down"
node_cleanup "$cgroup_parent"
echo "done: the host shows nothing of the demo"
