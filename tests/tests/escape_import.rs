//! Issue 21, item 11: an image archive whose descriptors lie about their blobs' sizes is
//! refused. The archives are the test busybox archive with its manifest rewritten so that only
//! sizes lie (digests re-computed: every blob is the one its digest names). The canary is the
//! store: a refused import leaves no image, no blob, no layer and no scratch file behind, and
//! the image already stored keeps its true size.
//!
//! A docker-archive carries no sizes (peapod takes them from the archive's files), so only the
//! OCI format can lie.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use peapod_tests::{Node, TestImages};
use serde_json::Value;

/// 2^63-1: the largest size a descriptor (an int64 in Go) can claim.
const HUGE: u64 = i64::MAX as u64;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_hex(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(out
        .split_whitespace()
        .next()
        .context("sha256sum")?
        .to_owned())
}

fn read_json(path: &Path) -> Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// The busybox OCI archive with its manifest edited by `manifest` and its index.json entry
/// (digest and size already those of the edited manifest) then edited by `entry`.
fn hostile(
    images: &TestImages,
    name: &str,
    manifest: impl FnOnce(&mut Value),
    entry: impl FnOnce(&mut Value),
) -> Result<PathBuf> {
    let dir = images.dir().join(format!("hostile-{name}"));
    std::fs::create_dir(&dir)?;
    run(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-xf")
        .arg(images.path("busybox.oci.tar")))?;
    let blobs = dir.join("blobs/sha256");
    let mut index = read_json(&dir.join("index.json"))?;
    let old = index["manifests"][0]["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .context("index entry digest")?
        .to_owned();
    let mut m = read_json(&blobs.join(&old))?;
    manifest(&mut m);
    let bytes = serde_json::to_vec(&m)?;
    std::fs::remove_file(blobs.join(&old))?;
    let tmp = dir.join("manifest.tmp");
    std::fs::write(&tmp, &bytes)?;
    let hex = sha256_hex(&tmp)?;
    std::fs::rename(&tmp, blobs.join(&hex))?;
    let e = &mut index["manifests"][0];
    e["digest"] = format!("sha256:{hex}").into();
    e["size"] = bytes.len().into();
    entry(e);
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    let out = images.dir().join(format!("hostile-{name}.oci.tar"));
    run(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&out)
        .args(["oci-layout", "index.json", "blobs"]))?;
    Ok(out)
}

/// Every file under the store's blob, layer and scratch dirs (names only).
fn store_files(node: &Node) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for sub in ["blobs/sha256", "layers", "tmp"] {
        let dir = node.state_dir().join("images").join(sub);
        if !dir.exists() {
            continue;
        }
        for e in std::fs::read_dir(&dir)? {
            out.insert(format!("{sub}/{}", e?.file_name().to_string_lossy()));
        }
    }
    Ok(out)
}

/// The true size of the busybox image: its manifest, config and layer blobs.
fn true_size(images: &TestImages) -> Result<u64> {
    let blob = |d: &str| {
        let hex = d.strip_prefix("sha256:").unwrap_or(d);
        std::fs::metadata(images.path("layout").join("blobs/sha256").join(hex)).map(|m| m.len())
    };
    let manifest_digest = images.var("BUSYBOX_MANIFEST");
    let hex = manifest_digest.trim_start_matches("sha256:");
    let m = read_json(&images.path("layout").join("blobs/sha256").join(hex))?;
    let mut total =
        blob(manifest_digest)? + blob(m["config"]["digest"].as_str().context("config")?)?;
    for l in m["layers"].as_array().context("layers")? {
        total += blob(l["digest"].as_str().context("layer")?)?;
    }
    Ok(total)
}

/// Imports `file`, which must fail with a size error and leave the store as it was.
async fn refused(case: &str, node: &Node, file: &Path) -> Result<()> {
    let before = store_files(node)?;
    let images_before = node.list_images().await?;
    let err = match node.import_image(file).await {
        Ok(out) => anyhow::bail!("{case}: imported: {out}"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains("expected") && err.contains("bytes"),
        "{case}: not a size error: {err}"
    );
    let after = store_files(node)?;
    ensure!(
        after == before,
        "{case}: the store changed: {:?} added, {:?} gone",
        after.difference(&before).collect::<Vec<_>>(),
        before.difference(&after).collect::<Vec<_>>()
    );
    let images_after = node.list_images().await?;
    ensure!(
        images_after == images_before,
        "{case}: listed images changed: {images_after:?}"
    );
    Ok(())
}

#[tokio::test]
async fn descriptors_lying_about_sizes_are_refused() -> Result<()> {
    let images = TestImages::build()?;
    let node = common::node().await?;
    let each_layer = |m: &mut Value, f: &dyn Fn(u64) -> u64| {
        for l in m["layers"].as_array_mut().expect("layers") {
            l["size"] = f(l["size"].as_u64().expect("size")).into();
        }
    };
    let bump = |v: &mut Value, by: i64| *v = (v.as_u64().expect("size") as i64 + by).into();
    let cases = [
        (
            "huge",
            hostile(
                &images,
                "huge",
                |m| {
                    m["config"]["size"] = HUGE.into();
                    each_layer(m, &|_| HUGE);
                },
                |_| {},
            )?,
        ),
        (
            "layer-plus-one",
            hostile(&images, "layer", |m| each_layer(m, &|s| s + 1), |_| {})?,
        ),
        (
            "config-minus-one",
            hostile(
                &images,
                "config",
                |m| bump(&mut m["config"]["size"], -1),
                |_| {},
            )?,
        ),
        (
            "manifest-plus-one",
            hostile(&images, "manifest", |_| {}, |e| bump(&mut e["size"], 1))?,
        ),
    ];

    // Into an empty store: nothing of it stays. (The daemon's own scratch dir is there.)
    let empty = store_files(&node)?;
    ensure!(
        empty.iter().all(|f| f.starts_with("tmp/")),
        "a new store holds {empty:?}"
    );
    for (case, file) in &cases {
        refused(case, &node, file).await?;
    }
    let left = store_files(&node)?;
    ensure!(left == empty, "{:?} left", left.difference(&empty));

    // Next to the honest image (whose blobs the hostile ones share): it keeps its true size.
    node.import_image(&images.path("busybox.oci.tar")).await?;
    let size = true_size(&images)?;
    for (case, file) in &cases {
        refused(case, &node, file).await?;
        let list = node.list_images().await?;
        ensure!(
            list.len() == 1 && list[0].size == size,
            "{case}: want one image of {size} bytes: {list:?}"
        );
        let status = node
            .image_status("peapod.test/busybox")
            .await?
            .context("busybox")?;
        ensure!(
            status.size == size,
            "{case}: ImageStatus size {}",
            status.size
        );
    }
    Ok(())
}
