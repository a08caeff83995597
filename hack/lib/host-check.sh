# shellcheck shell=bash
# host_traces: prints every trace of peapod on the host (outside any throwaway node) and
# returns 1 if there is one. Everything peapod and its tests make must live inside a node.
host_traces() {
    local found=0 out
    report() {
        echo "host trace: $1:" >&2
        # shellcheck disable=SC2001
        echo "$2" | sed 's/^/    /' >&2
        found=1
    }
    out=$(ip netns list 2>/dev/null | grep peapod || true)
    [ -z "$out" ] || report "network namespaces" "$out"
    out=$(ip -o link show 2>/dev/null | grep -E '^[0-9]+: (peapod0|pp[0-9a-f]{8})[@:]' || true)
    [ -z "$out" ] || report "links" "$out"
    out=$(grep peapod /proc/mounts || true)
    [ -z "$out" ] || report "mounts" "$out"
    out=$(ps -eo pid=,comm=,args= | awk '$2 ~ /^peapod(-pause|-probe|-bench)?$/' || true)
    [ -z "$out" ] || report "processes" "$out"
    out=$(nft list tables 2>/dev/null | grep peapod || true)
    [ -z "$out" ] || report "nftables tables" "$out"
    out=$(find /sys/fs/cgroup -mindepth 1 -maxdepth 3 -type d \
        \( -name 'peapod-test-*' -o -name 'peapod-bench-*' \) 2>/dev/null || true)
    [ -z "$out" ] || report "cgroups" "$out"
    out=$(find /tmp -maxdepth 1 \( -name 'peapod-test-*' -o -name 'peapod-node-*' \) 2>/dev/null || true)
    [ -z "$out" ] || report "temp dirs" "$out"
    return $found
}
