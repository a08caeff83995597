#!/usr/bin/env bash
# Boots the VM test node by hand, for a look inside: a root shell on the serial console
# (Ctrl-A X quits qemu). The root is a throwaway copy-on-write overlay of the cached image;
# nothing of the run stays. Same machine as the tests (tests/src/vm.rs), no network.
# Usage: hack/vm/shell.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=$("$here/build-image.sh" | tail -n1)
tmp=$(mktemp -d /tmp/peapod-test-vm-shell.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
qemu-img create -q -f qcow2 -F raw -b "$image/rootfs.img" "$tmp/root.qcow2"
qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 2048 -nographic -no-reboot \
    -nic none -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
    -append "console=ttyS0 root=/dev/vda rw panic=-1" \
    -drive "file=$tmp/root.qcow2,if=virtio,format=qcow2"
