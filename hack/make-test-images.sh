#!/usr/bin/env bash
# Builds small OCI test images from Debian's busybox-static, with tar, gzip, zstd, sha256sum
# and jq only (no image tool, no Docker daemon). Output, in OUT_DIR:
#
#   layout/                OCI image layout holding every image below, by ref name
#   busybox.oci.tar        OCI archive of peapod.test/busybox:latest
#   busybox.docker.tar     docker-archive (`docker save` format) of the same image
#   variant.oci.tar        OCI archive of peapod.test/busybox:variant
#   variant.docker.tar     docker-archive of the same image
#   digests.env            shell variables: manifest and config digests of each image
#
# peapod.test/busybox:latest   one gzip layer: /bin/busybox and applet symlinks (sh, ls, cat,
#                              echo, sleep, id, httpd, wget, env, pwd, true, false, kill, mount,
#                              hostname, ip, nc, …), /etc/passwd and /etc/group with root,
#                              app (1000:1000) and nobody, /etc/motd, /tmp (1777), /home/app
#                              (owned by app), /var/www/index.html. Cmd ["sh"].
# peapod.test/busybox:variant  the same plus a zstd layer (gzip if zstd is missing): /etc/variant,
#                              /home/app/hello (owned by app), /etc/motd whited out, /var/www
#                              made opaque with a new index.html. User 1000, Env FOO=bar,
#                              Entrypoint ["/bin/sh","-c"], Cmd ["echo variant"],
#                              WorkingDir /home/app, StopSignal SIGUSR1.
# peapod.test/busybox:multi    an image index: this machine's architecture → the :latest
#                              image; one other (arm64, or amd64 on arm64) → a tiny image.
#
# With PAUSE=path (a static binary, e.g. peapod-pause) it also writes pause.oci.tar, the
# image peapod.test/pause:latest: that binary as /pause, its entrypoint (a pod sandbox image
# for containerd's CRI). It is not in the layout's index.
#
# Usage: hack/make-test-images.sh OUT_DIR   (BUSYBOX=path overrides /bin/busybox)
# Run as root to give /home/app its owner (otherwise everything is owned by root).
# The output is reproducible: the same busybox gives the same digests.
set -euo pipefail

out=${1:?usage: hack/make-test-images.sh OUT_DIR}
busybox=${BUSYBOX:-/bin/busybox}
for tool in tar gzip sha256sum jq; do
    command -v "$tool" >/dev/null || { echo "make-test-images: $tool is missing" >&2; exit 1; }
done
[ -x "$busybox" ] || {
    echo "make-test-images: $busybox not found (apt-get install busybox-static)" >&2
    exit 1
}

case "$(uname -m)" in
    x86_64) arch=amd64 other=arm64 ;;
    aarch64) arch=arm64 other=amd64 ;;
    *) arch=$(uname -m) other=amd64 ;;
esac

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/peapod-images.XXXXXX")
trap 'rm -rf "$work"' EXIT

layout=$out/layout
rm -rf "$layout"
mkdir -p "$layout/blobs/sha256"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# put FILE: stores FILE as a blob of the layout; prints its hex digest.
put() {
    local h
    h=$(sha "$1")
    cp "$1" "$layout/blobs/sha256/$h"
    echo "$h"
}

# layer DIR NAME COMPRESSOR: tars DIR reproducibly into $work/NAME.tar and its compressed
# blob; sets layer_diff (hex of the tar) and layer_blob (hex of the blob), layer_size, layer_type.
layer() {
    local dir=$1 name=$2 comp=$3
    tar --sort=name --mtime=@0 --numeric-owner --format=posix \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$dir" -cf "$work/$name.tar" .
    layer_diff=$(sha "$work/$name.tar")
    case $comp in
        gzip) gzip -n -9 -c "$work/$name.tar" >"$work/$name.blob"
              layer_type=application/vnd.oci.image.layer.v1.tar+gzip ;;
        zstd) zstd -q -19 -c "$work/$name.tar" >"$work/$name.blob"
              layer_type=application/vnd.oci.image.layer.v1.tar+zstd ;;
    esac
    layer_blob=$(put "$work/$name.blob")
    layer_size=$(size "$work/$name.blob")
}

# image NAME CONFIG_JSON LAYERS_JSON: writes config and manifest blobs; sets manifest_hex,
# manifest_size, config_hex. LAYERS_JSON is an array of descriptors.
image() {
    local name=$1 config=$2 layers=$3
    echo "$config" >"$work/$name.config.json"
    config_hex=$(put "$work/$name.config.json")
    jq -cn --arg c "sha256:$config_hex" --argjson cs "$(size "$work/$name.config.json")" \
        --argjson layers "$layers" '{
            schemaVersion: 2,
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
            layers: $layers
        }' >"$work/$name.manifest.json"
    manifest_hex=$(put "$work/$name.manifest.json")
    manifest_size=$(size "$work/$name.manifest.json")
}

descriptor() { # TYPE HEX SIZE
    jq -cn --arg t "$1" --arg d "sha256:$2" --argjson s "$3" '{mediaType: $t, digest: $d, size: $s}'
}

config() { # ARCH DIFF_IDS_JSON CONFIG_JSON
    jq -cn --arg arch "$1" --argjson diffs "$2" --argjson config "$3" '{
        created: "1970-01-01T00:00:00Z",
        architecture: $arch, os: "linux", config: $config,
        rootfs: {type: "layers", diff_ids: $diffs},
        history: [{created: "1970-01-01T00:00:00Z", created_by: "hack/make-test-images.sh"}]
    }'
}

path_env='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

# --- base layer --------------------------------------------------------------------------
root=$work/base
mkdir -p "$root"/{bin,etc,root,tmp,home/app,proc,sys,dev,var/www}
cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
applets=$("$busybox" --list)
for a in sh ash ls cat echo sleep id httpd wget env pwd true false kill mount umount hostname \
         ip nc ps grep sed awk head tail mkdir rm touch chmod chown test printf sh uname \
         whoami dd tr wc cut sort seq stat readlink nslookup ping timeout date; do
    if grep -qx "$a" <<<"$applets" && [ ! -e "$root/bin/$a" ]; then
        ln -s busybox "$root/bin/$a"
    fi
done
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
app:x:1000:
extra:x:50000:app
nobody:x:65534:
EOF
echo "peapod test image" >"$root/etc/motd"
echo "<h1>peapod</h1>" >"$root/var/www/index.html"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
if [ "$(id -u)" = 0 ]; then chown 1000:1000 "$root/home/app"; fi
layer "$root" base gzip
base_diff=$layer_diff
base_layer=$(descriptor "$layer_type" "$layer_blob" "$layer_size")

image base "$(config "$arch" "[\"sha256:$base_diff\"]" \
    "$(jq -cn --arg p "$path_env" '{Env: [$p], Cmd: ["sh"], WorkingDir: "/"}')")" "[$base_layer]"
base_manifest=$manifest_hex base_manifest_size=$manifest_size base_config=$config_hex

# --- variant: a second layer and another run config --------------------------------------
root=$work/variant
mkdir -p "$root"/{etc,home/app,var/www}
echo "variant" >"$root/etc/variant"
echo "hello from app" >"$root/home/app/hello"
: >"$root/etc/.wh.motd"
: >"$root/var/www/.wh..wh..opq"
echo "<h1>variant</h1>" >"$root/var/www/index.html"
if [ "$(id -u)" = 0 ]; then chown -R 1000:1000 "$root/home/app"; fi
if command -v zstd >/dev/null; then comp=zstd; else comp=gzip; fi
layer "$root" variant "$comp"
variant_layer=$(descriptor "$layer_type" "$layer_blob" "$layer_size")
image variant "$(config "$arch" "[\"sha256:$base_diff\", \"sha256:$layer_diff\"]" \
    "$(jq -cn --arg p "$path_env" '{User: "1000", Env: [$p, "FOO=bar"],
        Entrypoint: ["/bin/sh", "-c"], Cmd: ["echo variant"], WorkingDir: "/home/app",
        StopSignal: "SIGUSR1"}')")" "[$base_layer, $variant_layer]"
variant_manifest=$manifest_hex variant_manifest_size=$manifest_size variant_config=$config_hex

# --- multi: an index of this architecture and one other ----------------------------------
root=$work/other
mkdir -p "$root/etc"
echo "$other" >"$root/etc/arch"
layer "$root" other gzip
image other "$(config "$other" "[\"sha256:$layer_diff\"]" '{"Cmd": ["cat", "/etc/arch"]}')" \
    "[$(descriptor "$layer_type" "$layer_blob" "$layer_size")]"
other_manifest=$manifest_hex
jq -cn --arg a "$arch" --arg o "$other" \
    --arg m1 "sha256:$base_manifest" --argjson s1 "$base_manifest_size" \
    --arg m2 "sha256:$other_manifest" --argjson s2 "$manifest_size" '{
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.index.v1+json",
        manifests: [
            {mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m2, size: $s2,
             platform: {architecture: $o, os: "linux"}},
            {mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m1, size: $s1,
             platform: {architecture: $a, os: "linux"}}
        ]
    }' >"$work/multi.index.json"
multi_index=$(put "$work/multi.index.json")
multi_index_size=$(size "$work/multi.index.json")

# --- the layout's index.json -------------------------------------------------------------
entry() { # MEDIA_TYPE HEX SIZE REF_NAME
    jq -cn --arg t "$1" --arg d "sha256:$2" --argjson s "$3" --arg n "$4" \
        '{mediaType: $t, digest: $d, size: $s,
          annotations: {"org.opencontainers.image.ref.name": $n}}'
}
m=application/vnd.oci.image.manifest.v1+json
base_entry=$(entry $m "$base_manifest" "$base_manifest_size" peapod.test/busybox:latest)
variant_entry=$(entry $m "$variant_manifest" "$variant_manifest_size" peapod.test/busybox:variant)
multi_entry=$(entry application/vnd.oci.image.index.v1+json "$multi_index" "$multi_index_size" \
    peapod.test/busybox:multi)
jq -n --argjson a "$base_entry" --argjson b "$variant_entry" --argjson c "$multi_entry" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [$a, $b, $c]}' >"$layout/index.json"

# --- archives ----------------------------------------------------------------------------
# oci_archive NAME ENTRY_JSON MANIFEST_HEX: an OCI archive holding one image of the layout.
oci_archive() {
    local name=$1 entry=$2 manifest=$3 dir=$work/oci-$1 h
    mkdir -p "$dir/blobs/sha256"
    cp "$layout/oci-layout" "$dir/"
    jq -n --argjson e "$entry" '{schemaVersion: 2, manifests: [$e]}' >"$dir/index.json"
    for h in "$manifest" $(jq -r '.config.digest, .layers[].digest' \
            "$layout/blobs/sha256/$manifest" | cut -d: -f2); do
        cp "$layout/blobs/sha256/$h" "$dir/blobs/sha256/"
    done
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -C "$dir" -cf "$out/$name.oci.tar" oci-layout index.json blobs
}

# docker_archive NAME TAG MANIFEST_HEX LAYER_TARS...: `docker save` format, layers as tars.
docker_archive() {
    local name=$1 tag=$2 manifest=$3 dir=$work/docker-$1 config layers=() t h
    shift 3
    mkdir -p "$dir"
    config=$(jq -r .config.digest "$layout/blobs/sha256/$manifest" | cut -d: -f2)
    cp "$layout/blobs/sha256/$config" "$dir/$config.json"
    for t in "$@"; do
        h=$(sha "$t")
        mkdir -p "$dir/$h"
        cp "$t" "$dir/$h/layer.tar"
        echo 1.0 >"$dir/$h/VERSION"
        layers+=("$h/layer.tar")
    done
    jq -n --arg c "$config.json" --arg t "$tag" '$ARGS.positional as $l |
        [{Config: $c, RepoTags: [$t], Layers: $l}]' --args "${layers[@]}" >"$dir/manifest.json"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -C "$dir" -cf "$out/$name.docker.tar" .
}

oci_archive busybox "$base_entry" "$base_manifest"
oci_archive variant "$variant_entry" "$variant_manifest"
docker_archive busybox peapod.test/busybox:latest "$base_manifest" "$work/base.tar"
docker_archive variant peapod.test/busybox:variant "$variant_manifest" \
    "$work/base.tar" "$work/variant.tar"

if [ -n "${PAUSE:-}" ]; then
    root=$work/pause
    mkdir -p "$root"
    cp "$PAUSE" "$root/pause"
    chmod 0755 "$root/pause"
    layer "$root" pause gzip
    image pause "$(config "$arch" "[\"sha256:$layer_diff\"]" '{"Entrypoint": ["/pause"]}')" \
        "[$(descriptor "$layer_type" "$layer_blob" "$layer_size")]"
    oci_archive pause "$(entry $m "$manifest_hex" "$manifest_size" peapod.test/pause:latest)" \
        "$manifest_hex"
fi

cat >"$out/digests.env" <<EOF
ARCH=$arch
OTHER_ARCH=$other
BUSYBOX_MANIFEST=sha256:$base_manifest
BUSYBOX_CONFIG=sha256:$base_config
VARIANT_MANIFEST=sha256:$variant_manifest
VARIANT_CONFIG=sha256:$variant_config
MULTI_INDEX=sha256:$multi_index
EOF
echo "make-test-images: images in $out (busybox $base_config, variant $variant_config)"
