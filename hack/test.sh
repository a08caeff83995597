#!/usr/bin/env bash
# The whole test suite: unit tests of every crate and the privileged integration tests, which
# run the real binaries in throwaway namespaces. Needs root. Afterwards the host must show
# nothing of peapod: no netns, link, mount, process, nftables table, cgroup or temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "hack/test.sh: the suite needs root (namespaces, netlink, mounts, cgroups)." >&2
    echo "hack/test.sh: run it as root; privileged tests never skip." >&2
    exit 1
fi

# shellcheck source=hack/lib/host-check.sh
. hack/lib/host-check.sh

hack/setup.sh

if ! host_traces; then
    echo "hack/test.sh: warning: the host already shows peapod traces (above), before the tests" >&2
fi

cargo build --workspace --bins
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
export PEAPOD_BIN_DIR="${target_dir:-$PWD/target}/debug"
echo "hack/test.sh: PEAPOD_BIN_DIR=$PEAPOD_BIN_DIR"

status=0
cargo test --workspace --no-fail-fast || status=$?

if host_traces; then
    echo "hack/test.sh: the host is clean"
else
    echo "hack/test.sh: FAILED: the suite left traces on the host (above)" >&2
    status=1
fi
exit "$status"
