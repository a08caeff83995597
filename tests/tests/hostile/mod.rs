//! Hostile test images for the escape tests: the busybox test image plus one layer the test
//! describes (symlinks, files), and a config patch. Built as an OCI archive with tar and
//! sha256sum, as hack/make-test-images.sh builds the others.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use peapod_tests::Node;
use peapod_tests::images::TestImages;
use serde_json::{Value, json};

/// One entry of the hostile layer.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Symlink(&'a str, &'a str),
}

fn sha256(p: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(p).output()?;
    ensure!(out.status.success(), "sha256sum {}", p.display());
    let s = String::from_utf8(out.stdout)?;
    Ok(s.split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_owned())
}

fn read_json(p: &Path) -> Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(p)?)?)
}

/// Writes `bytes` as a blob of the layout `dir`; returns its descriptor fields (hex, size).
fn put(dir: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let tmp = dir.join("blob.tmp");
    std::fs::write(&tmp, bytes)?;
    let hex = sha256(&tmp)?;
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&hex))?;
    Ok((hex, bytes.len()))
}

/// `reference` (e.g. `peapod.test/hostile:workdir`): busybox's layer, then `entries`, with
/// `patch` merged into the image config's `config`; imported into `node`.
pub async fn import(
    node: &Node,
    images: &TestImages,
    reference: &str,
    entries: &[Entry<'_>],
    patch: Value,
) -> Result<()> {
    let work = tempfile::tempdir()?;
    let oci = work.path().join("oci");
    std::fs::create_dir_all(oci.join("blobs/sha256"))?;
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let layout = images.path("layout/blobs/sha256");
    let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
    let manifest = read_json(&layout.join(hex(images.var("BUSYBOX_MANIFEST"))))?;
    let mut config = read_json(&layout.join(hex(images.var("BUSYBOX_CONFIG"))))?;
    let base = manifest["layers"][0].clone();
    let base_hex = hex(base["digest"].as_str().context("layer digest")?);
    std::fs::copy(
        layout.join(&base_hex),
        oci.join("blobs/sha256").join(&base_hex),
    )?;

    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree)?;
    for e in entries {
        match e {
            Entry::Dir(p) => std::fs::create_dir_all(tree.join(p))?,
            Entry::File(p, text) => std::fs::write(tree.join(p), text)?,
            Entry::Symlink(p, target) => std::os::unix::fs::symlink(target, tree.join(p))?,
        }
    }
    let tar = work.path().join("layer.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    ensure!(st.success(), "tar of the hostile layer");
    let (layer_hex, layer_size) = put(&oci, &std::fs::read(&tar)?)?;

    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .context("diff_ids")?
        .push(json!(format!("sha256:{layer_hex}")));
    for (k, v) in patch.as_object().context("patch")? {
        config["config"][k] = v.clone();
    }
    let (config_hex, config_size) = put(&oci, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_hex}"), "size": config_size},
        "layers": [base, {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                          "digest": format!("sha256:{layer_hex}"), "size": layer_size}],
    });
    let (m_hex, m_size) = put(&oci, &serde_json::to_vec(&manifest)?)?;
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{m_hex}"), "size": m_size,
        "annotations": {"org.opencontainers.image.ref.name": reference}}]});
    std::fs::write(oci.join("index.json"), serde_json::to_vec(&index)?)?;
    let archive = work.path().join("image.oci.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"])
        .status()?;
    ensure!(st.success(), "tar of the archive");
    node.import_image(&archive).await?;
    Ok(())
}

/// Symlinks `first`, `/c1`, …, `/c39` (40 hops: the old resolver's limit) each to the next,
/// and `/c40` to `target` (a node path).
pub fn chain<'a>(first: &'a str, names: &'a [String], target: &'a str) -> Vec<Entry<'a>> {
    let mut v = vec![Entry::Symlink(first, &names[1])];
    for i in 1..40 {
        v.push(Entry::Symlink(&names[i][1..], &names[i + 1]));
    }
    v.push(Entry::Symlink(&names[40][1..], target));
    v
}

/// The names `/c0` … `/c40` for [`chain`] (`/c0` is unused: `first` stands for it).
pub fn chain_names() -> Vec<String> {
    (0..=40).map(|i| format!("/c{i}")).collect()
}

/// Every file under `dir`, as paths relative to it (for "nothing was made here").
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}
