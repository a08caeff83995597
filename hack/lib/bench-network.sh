# shellcheck shell=bash
# `hack/bench --network`: TCP throughput between pods on one node, and between pods on two
# nodes, routed and over VXLAN, measured with peapod-probe's sink and send (one connection per
# run, timed from connected to the sink's count of all the bytes).
#
# The nodes are throwaway nodes (hack/lib/node.sh) like in tests/tests/multinode.rs: a third
# one, "wire", holds the node network's bridge, with a veth from it into each node (uplink0,
# 192.0.2.N/24); node N has the pods 10.9N.0.0/24 and the other node as its peer. The pair is
# made once per overlay. Nothing of it is on the host's network: every address is in those
# namespaces, and killing their PID 1s takes it all away.
#
# Source it after node.sh; then bench_network_args [--mib N] [--rounds N] and
# bench_network BIN CGROUP_PARENT.

BENCH_NET_PORT=5201
BENCH_NET_MIB=1024
BENCH_NET_ROUNDS=5
BENCH_NET_ROWS=()

# bench_net_pair BIN CGROUP_PARENT OVERLAY: the wire and nodes node1 and node2 with their
# daemons serving, `overlay = OVERLAY`.
bench_net_pair() {
    local bin=$1 cgroup_parent=$2 overlay=$3 wire_pid1 i peer
    node_use wire
    node_start "$bin/peapod-pause"
    wire_pid1=$NODE_PID1
    node_exec ip link add br0 type bridge
    node_exec ip link set br0 up
    for i in 1 2; do
        peer=$((3 - i))
        node_use "node$i"
        node_start "$bin/peapod-pause"
        nsenter -t "$wire_pid1" -n -- \
            ip link add "w$i" type veth peer name uplink0 netns "$NODE_PID1"
        nsenter -t "$wire_pid1" -n -- ip link set "w$i" master br0 up
        node_exec ip addr add "192.0.2.$i/24" dev uplink0
        node_exec ip link set uplink0 up
        cat >"$NODE_DIR/config.toml" <<EOF
pod_cidr = "10.9$i.0.0/24"
node_ip = "192.0.2.$i"
overlay = "$overlay"
[[peers]]
name = "node$peer"
node_ip = "192.0.2.$peer"
pod_cidr = "10.9$peer.0.0/24"
EOF
        node_daemon_start "$NODE_DIR/daemon.log" "$bin/peapod" serve \
            --config "$NODE_DIR/config.toml" --socket "$NODE_DIR/peapod.sock" \
            --state-dir "$NODE_DIR/state" --run-dir /run/peapod \
            --pause-path "$bin/peapod-pause" --cgroup-parent "$cgroup_parent/node$i"
        node_wait test -S "$NODE_DIR/peapod.sock"
        node_wait "$bin/peapod" pod ls --socket "$NODE_DIR/peapod.sock"
    done
}

# bench_net_pod BIN NAME: runs pod NAME on the current node; sets POD_ID, POD_IP, POD_MTU.
bench_net_pod() {
    local bin=$1 name=$2
    POD_ID=$(node_exec "$bin/peapod" pod run "$name" --namespace peapod-bench \
        --socket "$NODE_DIR/peapod.sock")
    POD_IP=$(node_exec "$bin/peapod" pod inspect "$POD_ID" --socket "$NODE_DIR/peapod.sock" |
        jq -r .status.network.ip)
    POD_MTU=$(node_exec ip netns exec "peapod-$POD_ID" cat /sys/class/net/eth0/mtu)
}

# bench_net_row BIN WHAT SERVER_NODE SERVER_POD CLIENT_NODE CLIENT_POD ADDR: a sink in
# SERVER_POD's network namespace on SERVER_NODE (SERVER_POD "": the node's own), then
# BENCH_NET_ROUNDS sends to it at ADDR from CLIENT_POD on CLIENT_NODE; adds the row WHAT.
bench_net_row() {
    local bin=$1 what=$2 server_node=$3 server_pod=$4 client_node=$5 client_pod=$6 addr=$7
    local -a server_in=() client_in=()
    local sink out _ rates=()
    [ -z "$server_pod" ] || server_in=(ip netns exec "peapod-$server_pod")
    [ -z "$client_pod" ] || client_in=(ip netns exec "peapod-$client_pod")
    node_use "$server_node"
    out="$NODE_DIR/sink.out"
    node_exec "${server_in[@]}" "$bin/peapod-probe" sink "0.0.0.0:$BENCH_NET_PORT" \
        --count "$BENCH_NET_ROUNDS" >"$out" 2>&1 &
    sink=$!
    for _ in $(seq 200); do
        grep -qx listening "$out" && break
        kill -0 "$sink" 2>/dev/null || node_die "the sink for \"$what\" exited: $(cat "$out")"
        sleep 0.025
    done
    grep -qx listening "$out" || node_die "the sink for \"$what\" did not listen within 5s"
    node_use "$client_node"
    for _ in $(seq "$BENCH_NET_ROUNDS"); do
        rates+=("$(node_exec "${client_in[@]}" "$bin/peapod-probe" send \
            "$addr:$BENCH_NET_PORT" --mib "$BENCH_NET_MIB" | awk '{ print $1 }')")
    done
    wait "$sink" || node_die "the sink for \"$what\" failed: $(cat "$out")"
    # Median, min and max of the runs.
    BENCH_NET_ROWS+=("$(printf '%s\n' "${rates[@]}" | sort -n | awk -v what="$what" \
        '{ r[NR] = $1 } END { printf "%s\t%s MiB/s\t%s MiB/s\t%s MiB/s\n", what,
            r[int((NR + 1) / 2)], r[1], r[NR] }')")
}

# bench_net_table: the rows as an aligned table, in the style of peapod-bench's.
bench_net_table() {
    {
        printf 'measure\tmedian\tmin\tmax\n'
        printf '%s\n' "${BENCH_NET_ROWS[@]}"
    } | awk -F'\t' '
        function dashes(n,   s) { s = ""; while (length(s) < n) s = s "-"; return s }
        { for (i = 1; i <= 4; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
        END {
            fmt = "%-" w[1] "s  %-" w[2] "s  %-" w[3] "s  %s\n"
            printf fmt, cell[1, 1], cell[1, 2], cell[1, 3], cell[1, 4]
            printf fmt, dashes(w[1]), dashes(w[2]), dashes(w[3]), dashes(w[4])
            for (r = 2; r <= NR; r++) printf fmt, cell[r, 1], cell[r, 2], cell[r, 3], cell[r, 4]
        }'
}

# bench_network_args [--mib N] [--rounds N]: takes the options of `hack/bench --network`.
bench_network_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --mib | --rounds)
                [[ ${2:-} =~ ^[1-9][0-9]*$ ]] ||
                    { echo "hack/bench --network: $1 takes a positive number" >&2; exit 2; }
                if [ "$1" = --mib ]; then BENCH_NET_MIB=$2; else BENCH_NET_ROUNDS=$2; fi
                shift 2
                ;;
            *)
                echo "hack/bench --network: unknown argument $1 (want --mib N, --rounds N)" >&2
                exit 2
                ;;
        esac
    done
}

# bench_network BIN CGROUP_PARENT: measures and prints the table.
bench_network() {
    local bin=$1 cgroup_parent=$2 a b c b_ip c_ip
    echo "TCP throughput between peapod pods (release) in throwaway nodes joined by a bridge," \
        "$(nproc) cores; $BENCH_NET_MIB MiB per connection, median of $BENCH_NET_ROUNDS"

    # Routed: the underlay alone, two pods on node1, a pod on each node.
    bench_net_pair "$bin" "$cgroup_parent" routed
    node_use node1
    bench_net_pod "$bin" bench-a
    a=$POD_ID
    bench_net_pod "$bin" bench-b
    b=$POD_ID b_ip=$POD_IP
    node_use node2
    bench_net_pod "$bin" bench-c
    c=$POD_ID c_ip=$POD_IP
    bench_net_row "$bin" "node to node over the wire, no pods" node2 "" node1 "" 192.0.2.2
    bench_net_row "$bin" "pod to pod, same node (pod MTU $POD_MTU)" node1 "$b" node1 "$a" "$b_ip"
    bench_net_row "$bin" "pod to pod, across nodes, routed (pod MTU $POD_MTU)" \
        node2 "$c" node1 "$a" "$c_ip"
    node_cleanup_all "$cgroup_parent"

    # VXLAN: a pod on each node, over peapod.vxlan.
    bench_net_pair "$bin" "$cgroup_parent" vxlan
    node_use node1
    node_exec ip link show peapod.vxlan >/dev/null
    bench_net_pod "$bin" bench-a
    a=$POD_ID
    node_use node2
    bench_net_pod "$bin" bench-c
    c=$POD_ID c_ip=$POD_IP
    bench_net_row "$bin" "pod to pod, across nodes, VXLAN (pod MTU $POD_MTU)" \
        node2 "$c" node1 "$a" "$c_ip"
    node_cleanup_all "$cgroup_parent"

    bench_net_table
}
