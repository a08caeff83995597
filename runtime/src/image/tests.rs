//! The store end to end on archives built here: import, lookups, removal, and failures that
//! must leave nothing behind. Needs root (layer ownership): run as root, e.g. `hack/test.sh`.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;

use super::*;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the image store tests need root (layer ownership)"
    );
}

pub(super) fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An OCI archive of images given as (ref name, layers as file lists); `break_it`: "blob"
/// appends a byte to the last layer blob after naming it, "diff" lies in the config's diff
/// ids, "layer-size", "config-size" and "manifest-size" lie in a descriptor's size.
#[derive(Default)]
struct Archive {
    blobs: Vec<(Digest, Vec<u8>)>,
    entries: Vec<serde_json::Value>,
}

impl Archive {
    fn blob(&mut self, bytes: Vec<u8>) -> (Digest, usize) {
        let d = Digest::of(&bytes);
        let n = bytes.len();
        self.blobs.push((d.clone(), bytes));
        (d, n)
    }

    fn image(mut self, name: &str, layers: &[&[(&str, &str)]], user: &str, break_it: &str) -> Self {
        let mut descs = Vec::new();
        let mut diffs = Vec::new();
        for files in layers {
            let raw = tar_of(files);
            diffs.push(if break_it == "diff" {
                Digest::of(b"lie")
            } else {
                Digest::of(&raw)
            });
            let (d, mut n) = self.blob(gzip(&raw));
            if break_it == "layer-size" {
                n += 1;
            }
            if break_it == "blob" {
                self.blobs.last_mut().unwrap().1.push(0);
            }
            descs.push(
                json!({"mediaType": format!("{}+gzip", spec::OCI_LAYER), "digest": d, "size": n}),
            );
        }
        let config = json!({"architecture": spec::node_arch(), "os": "linux",
            "config": {"User": user, "Env": ["A=1"], "Cmd": ["sh"], "StopSignal": "SIGINT"},
            "rootfs": {"type": "layers", "diff_ids": diffs}});
        let (c, mut cn) = self.blob(serde_json::to_vec(&config).unwrap());
        if break_it == "config-size" {
            cn = i64::MAX as usize;
        }
        let manifest = json!({"schemaVersion": 2, "mediaType": spec::OCI_MANIFEST,
            "config": {"mediaType": spec::OCI_CONFIG, "digest": c, "size": cn}, "layers": descs});
        let (m, mut mn) = self.blob(serde_json::to_vec(&manifest).unwrap());
        if break_it == "manifest-size" {
            mn -= 1;
        }
        self.entries.push(
            json!({"mediaType": spec::OCI_MANIFEST, "digest": m, "size": mn,
            "annotations": {spec::ANNOTATION_REF_NAME: name}}),
        );
        self
    }

    fn write(&self, path: &Path) {
        let mut b = tar::Builder::new(Vec::new());
        let index =
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": self.entries})).unwrap();
        let mut files = vec![
            (
                "oci-layout".to_owned(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_owned(), index),
        ];
        for (d, bytes) in &self.blobs {
            files.push((format!("blobs/sha256/{}", d.hex()), bytes.clone()));
        }
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        std::fs::write(path, b.into_inner().unwrap()).unwrap();
    }
}

const BASE: &[(&str, &str)] = &[("bin/sh", "#!"), ("etc/passwd", "root:x:0:0::/:/bin/sh\n")];
const APP: &[(&str, &str)] = &[("app/run", "run")];

fn store_with(archive: Archive) -> (tempfile::TempDir, ImageStore) {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), RegistryConfig::default()).unwrap();
    let file = dir.path().join("images.tar");
    archive.write(&file);
    store.import(&file).unwrap();
    (dir, store)
}

fn names_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn imported_images_resolve_by_every_name() {
    let archive = Archive::default()
        .image("peapod.test/a:1", &[BASE], "1000:1000", "")
        .image("peapod.test/b:1", &[BASE, APP], "app", "");
    let (_dir, store) = store_with(archive);
    let list = store.list().unwrap();
    assert_eq!(list.len(), 2);
    let b = store.resolve("peapod.test/b:1").unwrap();
    assert_eq!(b.config.user, "app");
    assert_eq!(b.config.env, ["A=1"]);
    assert_eq!(b.config.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(b.layers.len(), 2);
    assert!(b.layers[0].join("bin/sh").is_file() && b.layers[1].join("app/run").is_file());
    let a = store.resolve("peapod.test/a:1").unwrap();
    assert_eq!(a.layers[0], b.layers[0], "the base layer is shared");
    let hex = &b.id["sha256:".len()..];
    for q in [b.id.as_str(), hex, &hex[..12], &b.repo_digests[0]] {
        assert_eq!(store.resolve(q).unwrap().id, b.id, "{q}");
    }
    assert!(matches!(
        store.resolve("peapod.test/c:1"),
        Err(ImageError::NotFound { .. })
    ));
    let (_, info) = store.inspect("peapod.test/b:1").unwrap();
    assert_eq!(info["imageSpec"]["config"]["User"], "app");
    assert_eq!(info["chainIDs"].as_array().unwrap().len(), 2);
}

#[test]
fn removal_untags_then_deletes_and_spares_what_is_in_use() {
    let archive = Archive::default()
        .image("peapod.test/a:1", &[BASE], "", "")
        .image("peapod.test/a:2", &[BASE], "", "")
        .image("peapod.test/b:1", &[BASE, APP], "", "");
    let (dir, store) = store_with(archive);
    let a = store.resolve("peapod.test/a:1").unwrap();
    assert_eq!(a.repo_tags.len(), 2, "same config: one image, two tags");
    store.remove("peapod.test/a:1", &|_| true).unwrap();
    let a = store.resolve("peapod.test/a:2").unwrap();
    assert_eq!(a.repo_tags, ["peapod.test/a:2"]);
    assert!(matches!(
        store.resolve("peapod.test/a:1"),
        Err(ImageError::NotFound { .. })
    ));
    match store.remove("peapod.test/a:2", &|id| id == a.id) {
        Err(ImageError::InUse { image, .. }) => assert_eq!(image, "peapod.test/a:2"),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(store.resolve("peapod.test/a:2").unwrap().repo_tags.len(), 1);
    store.remove("peapod.test/a:2", &|_| false).unwrap();
    assert!(store.resolve(&a.id).is_err());
    assert!(a.layers[0].is_dir(), "b still uses the base layer");
    let b = store.resolve("peapod.test/b:1").unwrap();
    store.remove(&b.id, &|_| false).unwrap();
    assert!(store.list().unwrap().is_empty());
    let images = dir.path().join("images");
    assert_eq!(names_in(&images.join("blobs/sha256")), 0);
    assert_eq!(names_in(&images.join("layers")), 0);
    assert!(matches!(
        store.remove("peapod.test/b:1", &|_| false),
        Err(ImageError::NotFound { .. })
    ));
}

/// A failed import stores nothing: no image, no blob, no layer, no scratch file.
fn assert_import_fails(archive: Archive, check: impl Fn(&ImageError) -> bool) {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), RegistryConfig::default()).unwrap();
    let file = dir.path().join("bad.tar");
    archive.write(&file);
    let e = store.import(&file).unwrap_err();
    assert!(check(&e), "unexpected error: {}", e.chain());
    assert!(store.list().unwrap().is_empty());
    let images = dir.path().join("images");
    assert_eq!(names_in(&images.join("blobs/sha256")), 0, "blobs left");
    assert_eq!(names_in(&images.join("layers")), 0, "layers left");
    assert_eq!(names_in(store.scratch.dir()), 0, "scratch files left");
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    let archive = Archive::default()
        .image("peapod.test/a:1", &[BASE], "", "")
        .image("peapod.test/b:1", &[APP], "", "blob");
    assert_import_fails(archive, |e| matches!(e, ImageError::DigestMismatch { .. }));
}

#[test]
fn a_layer_whose_diff_id_lies_is_refused() {
    let archive = Archive::default().image("peapod.test/a:1", &[BASE, APP], "", "diff");
    assert_import_fails(archive, |e| matches!(e, ImageError::DiffIdMismatch { .. }));
}

#[test]
fn descriptors_that_lie_about_sizes_are_refused() {
    for (lie, what, expected) in [
        ("layer-size", "layer", None),
        ("config-size", "config", Some(i64::MAX as u64)),
        ("manifest-size", "manifest", None),
    ] {
        let archive = Archive::default()
            .image("peapod.test/a:1", &[BASE], "", "")
            .image("peapod.test/b:1", &[BASE, APP], "", lie);
        assert_import_fails(archive, |e| match e {
            ImageError::SizeMismatch {
                what: w,
                expected: exp,
                actual,
                ..
            } => *w == what && exp.abs_diff(*actual) >= 1 && expected.is_none_or(|x| x == *exp),
            _ => false,
        });
    }
}
