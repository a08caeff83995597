#!/usr/bin/env bash
# Installs what peapod needs to build, run and test on Debian 12. Run as root.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "hack/setup.sh: run as root (it installs packages with apt-get)" >&2
    exit 1
fi

packages=(
    build-essential pkg-config # a C toolchain and linker for cargo
    protobuf-compiler          # protoc, for the CRI protobufs (k8s-cri's build script)
    iproute2                   # ip, bridge: the tests and the demo look at links and netns
    nftables                   # nft: peapod's firewall table
    util-linux                 # unshare, nsenter, mount, mountpoint: the throwaway nodes
    procps                     # ps, pgrep
    iputils-ping               # ping -M do: the multi-node tests check the VXLAN MTU
    graphviz                   # dot: `peapod net graph` draws the node's topology as SVG
    jq                         # the demo reads `peapod pod inspect` JSON; make-test-images.sh
    busybox-static             # hack/make-test-images.sh builds the test images from it
    zstd                       # … and compresses one of their layers with it
    docker-registry            # a real OCI registry for the pull tests (127.0.0.1 in a node)
    skopeo                     # pushes the test images into it
    apache2-utils              # htpasswd, for the registry's basic auth
    openssl                    # a throwaway CA and certificates for the HTTPS pull tests
    containerd                 # containerd and ctr: the shim tests run it in a throwaway node
    containernetworking-plugins # loopback, which containerd's CRI runs besides peapod-cni
    ca-certificates
    qemu-system-x86 qemu-utils # the VM test node (hack/vm): qemu under TCG, qemu-img overlays
    debootstrap                # … and its image, built from hack/vm/recipe
)

find_missing() {
    missing=()
    local pkg status
    for pkg in "${packages[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = installed ] || missing+=("$pkg")
    done
}
find_missing
if [ ${#missing[@]} -gt 0 ]; then
    echo "hack/setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # An install may remove a package of the list that conflicts with it (a machine that came
    # with a newer qemu-utils from elsewhere loses it to Debian's qemu-system-x86): once more
    # for whatever went.
    find_missing
    if [ ${#missing[@]} -gt 0 ]; then
        echo "hack/setup.sh: installing again ${missing[*]}"
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
else
    echo "hack/setup.sh: all packages present (${packages[*]})"
fi

if ! command -v cargo >/dev/null 2>&1; then
    cat >&2 <<'MSG'
hack/setup.sh: cargo is not on PATH. peapod needs Rust 1.90 or newer: install it with rustup
(https://rustup.rs), then make sure `cargo` is on PATH for root (e.g. ~/.cargo/bin).
MSG
    exit 1
fi
echo "hack/setup.sh: $(cargo --version)"
