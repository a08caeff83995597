#!/usr/bin/env bash
# The whole test suite: unit tests of every crate and the privileged integration tests, which
# run the real binaries in throwaway namespaces. Needs root. Afterwards the host must show
# nothing new of peapod: no netns, link, mount, process, nftables table, cgroup or temp dir.
# `hack/test.sh --vm` runs only the VM node's tests (tests/tests/vm_node.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

only_vm=false
case "${1:-}" in
"") ;;
--vm) only_vm=true ;;
*)
    echo "usage: hack/test.sh [--vm]" >&2
    exit 2
    ;;
esac

if [ "$(id -u)" != 0 ]; then
    echo "hack/test.sh: the suite needs root (namespaces, netlink, mounts, cgroups)." >&2
    echo "hack/test.sh: run it as root; privileged tests never skip." >&2
    exit 1
fi

# shellcheck source=hack/lib/host-check.sh
. hack/lib/host-check.sh

hack/setup.sh

before=$(host_traces)
# The cgroup v2 tests run on the host's cgroup2 hierarchy (the only one the kernel has), and
# peapod enables a cgroup's controllers for its children from the root down, as runc does.
# What the root did not hand down before the suite, it does not hand down after it.
v2_root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
v2_before=""
if [ -n "$v2_root" ]; then
    v2_before=$(cat "$v2_root/cgroup.subtree_control")
fi
restore_v2_root() {
    [ -n "$v2_root" ] || return 0
    local c
    for c in $(cat "$v2_root/cgroup.subtree_control"); do
        case " $v2_before " in
        *" $c "*) ;;
        *) echo "-$c" >"$v2_root/cgroup.subtree_control" ||
            echo "hack/test.sh: warning: cannot disable $c again in $v2_root" >&2 ;;
        esac
    done
}
if [ -n "$before" ]; then
    echo "hack/test.sh: warning: before the tests, the host already shows:" >&2
    printf '    %s\n' "${before//$'\n'/$'\n    '}" >&2
fi

# The daemon under test has its fault points compiled in (inert unless PEAPOD_FAULT names
# one): tests/tests/faults.rs crashes it at each. Test and build use the same features, so
# cargo test does not rebuild the binaries without them.
features=(--features peapod/fault-injection)
cargo build --workspace --bins "${features[@]}"
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
export PEAPOD_BIN_DIR="${target_dir:-$PWD/target}/debug"
echo "hack/test.sh: PEAPOD_BIN_DIR=$PEAPOD_BIN_DIR"

status=0
if $only_vm; then
    # The VM test copies test executables into the VM: build them all with the same flags.
    cargo test --workspace "${features[@]}" --no-run
    cargo test --workspace "${features[@]}" --test vm_node -- --nocapture || status=$?
else
    cargo test --workspace "${features[@]}" --no-fail-fast || status=$?
fi
restore_v2_root

# Only what appeared during the run counts (a shared dev machine may have its own leftovers).
left=$(comm -13 <(echo "$before" | sort) <(host_traces | sort) | sed '/^$/d')
if [ -z "$left" ]; then
    echo "hack/test.sh: the host shows nothing of the suite (no netns, link, mount, process," \
        "nftables table, cgroup or temp dir of peapod)"
else
    echo "hack/test.sh: FAILED: the suite left traces on the host:" >&2
    printf '    %s\n' "${left//$'\n'/$'\n    '}" >&2
    status=1
fi
exit "$status"
