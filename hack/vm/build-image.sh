#!/usr/bin/env bash
# Builds the VM test node's image from hack/vm/recipe, or finds it in the cache, and prints
# the directory that holds it: rootfs.img (raw ext4), vmlinuz, initrd.img.
#
# The cache is ${PEAPOD_VM_CACHE:-/var/cache/peapod-vm}/<key>, the key a hash of the recipe,
# this script and guest/: the image is rebuilt only when one of them changes. Builds are
# serialized by a lock, so parallel test runs wait for one build. No loop mounts: debootstrap
# fills a directory and `mkfs.ext4 -d` turns it into the image. The packages come from the
# Debian mirror apt on this machine is configured with (read from its sources at run time).
# Needs root, debootstrap, e2fsprogs (hack/setup.sh installs them). Progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
say() { echo "hack/vm/build-image.sh: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap)"
# shellcheck source=hack/vm/recipe
. "$here/recipe"

key=$( (cat "$here/recipe" "$here/build-image.sh"; find "$here/guest" -type f | LC_ALL=C sort |
    while read -r f; do echo "== ${f#"$here"/}"; cat "$f"; done) | sha256sum | cut -c1-16)
cache=${PEAPOD_VM_CACHE:-/var/cache/peapod-vm}
out=$cache/$key

# The first URI of a deb source for $1 with component main, from apt's deb822 and one-line
# source lists (the mirror this machine already trusts).
apt_mirror() {
    local suite=$1 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") &&
                    (" " comps " ") ~ / main / && uri != "") { print uri; found = 1; exit }
                types = suites = comps = uri = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            tolower($1) == "types:" { $1 = ""; types = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            tolower($1) == "components:" { $1 = ""; comps = $0 }
            tolower($1) == "uris:" { uri = $2 }
            END { if (!found) flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
            awk -v suite="$suite" '$1 == "deb" && $3 == suite { for (i = 4; i <= NF; i++) if ($i == "main") print $2 }'
    done
}

build() {
    local mirror work root size
    mirror=$(apt_mirror "$SUITE" | head -n1)
    [ -n "$mirror" ] || die "apt has no source for $SUITE main in /etc/apt/sources.list*"
    command -v debootstrap >/dev/null || die "debootstrap is missing: run hack/setup.sh"
    command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is missing: run hack/setup.sh"
    work=$(mktemp -d "$cache/.build-$key.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this build's dir
    trap "rm -rf '$work'" EXIT
    root=$work/root
    say "building image $key ($SUITE, $KERNEL) from $mirror"
    local start=$SECONDS
    debootstrap --variant="$VARIANT" \
        --include="$(IFS=,; echo "${PACKAGES[*]},$KERNEL")" \
        "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    say "debootstrap took $((SECONDS - start)) s"

    echo peapod-vm >"$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 peapod-vm\n::1 localhost\n' >"$root/etc/hosts"
    # The root is the image itself (root=/dev/vda rw); no fsck of a disk that is thrown away.
    echo '/dev/vda / ext4 rw,relatime 0 0' >"$root/etc/fstab"
    : >"$root/etc/machine-id"
    install -m 0755 "$here/guest/peapod-vm-run" "$root/usr/local/sbin/peapod-vm-run"
    install -m 0644 "$here/guest/peapod-vm-run.service" "$root/etc/systemd/system/"
    ln -sf /etc/systemd/system/peapod-vm-run.service \
        "$root/etc/systemd/system/multi-user.target.wants/peapod-vm-run.service"
    # By hand (no peapod.run on the kernel command line) the serial console logs root in.
    mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
    printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %%I $TERM\n' \
        >"$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
    # Nothing periodic in a throwaway node.
    local unit
    for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
        man-db.timer dpkg-db-backup.timer systemd-tmpfiles-clean.timer; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
    cp "$root"/boot/initrd.img-* "$work/initrd.img"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/boot/*
    size=$(( $(du -sm "$root" | cut -f1) * 11 / 10 + FREE_MB ))
    mkfs.ext4 -q -F -L peapod-vm-root -d "$root" "$work/rootfs.img" "${size}M" >&2 ||
        die "mkfs.ext4 -d failed"
    rm -rf "$root" "$work/debootstrap.log"
    mv "$work" "$out"
    trap - EXIT
    say "image $key built in $((SECONDS - start)) s: $out"
}

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ ! -f "$out/rootfs.img" ]; then
    rm -rf "$cache"/.build-*
    build
fi
touch "$out"
# Images of other recipes (other branches) go when unused for 14 days.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name '.build-*' -mtime +14 \
    -exec rm -rf {} + 2>/dev/null || true
echo "$out"
