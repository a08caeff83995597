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
        # The shim tests' containerd and shims (comm is cut at 15 characters: match args).
        ps -eo pid=,args= | grep -E 'containerd-shim-peapod|containerd --config /tmp/peapod-test-' |
            grep -v grep | sed 's/^ */process: /'
        nft list tables 2>/dev/null | grep peapod | sed 's/^/nftables: /'
        # In every cgroup hierarchy, v1 and v2 (the cgroup2 one is /sys/fs/cgroup/unified on a
        # hybrid host, /sys/fs/cgroup on a pure v2 one): the parents of the tests and benches,
        # and peapod's default parent.
        awk '/ - cgroup2? / { print $5 }' /proc/self/mountinfo | while read -r h; do
            find "$h" -mindepth 1 -maxdepth 2 -type d \( -name 'peapod-test-*' \
                -o -name 'peapod-bench-*' -o -path "$h/peapod" \) 2>/dev/null
        done | sed 's/^/cgroup: /'
        find /tmp -maxdepth 1 \( -name 'peapod-test-*' -o -name 'peapod-node-*' \) 2>/dev/null |
            sed 's/^/temp dir: /'
    } || true
}
