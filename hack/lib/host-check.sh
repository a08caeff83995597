# shellcheck shell=bash
# host_traces: prints every trace of peapod on the host (outside any throwaway node), one per
# line as "KIND: WHAT"; prints nothing on a clean host. Everything peapod and its tests make
# must live inside a throwaway node.
host_traces() {
    {
        ip netns list 2>/dev/null | grep peapod | sed 's/^/netns: /'
        ip -o link show 2>/dev/null | grep -E '^[0-9]+: (peapod0|pp[0-9a-f]{8})[@:]' |
            cut -d: -f2 | sed 's/^ */link: /'
        grep peapod /proc/mounts | sed 's/^/mount: /'
        ps -eo pid=,comm=,args= | awk '$2 ~ /^peapod(-pause|-probe|-bench)?$/' | sed 's/^ */process: /'
        nft list tables 2>/dev/null | grep peapod | sed 's/^/nftables: /'
        find /sys/fs/cgroup -mindepth 1 -maxdepth 3 -type d \
            \( -name 'peapod-test-*' -o -name 'peapod-bench-*' \) 2>/dev/null | sed 's/^/cgroup: /'
        find /tmp -maxdepth 1 \( -name 'peapod-test-*' -o -name 'peapod-node-*' \) 2>/dev/null |
            sed 's/^/temp dir: /'
    } || true
}
