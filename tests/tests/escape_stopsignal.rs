//! An image's StopSignal cannot keep a container running (issue 21, item 10): with StopSignal
//! 99999 or -9 the first kill() of StopContainer failed EINVAL, the stop failed and never sent
//! SIGKILL. An invalid StopSignal is replaced by SIGTERM at CreateContainer, and a stop ends
//! with SIGKILL after the grace period whatever the first signal did.
//!
//! Canary: the container's process, which must be gone within the grace period plus a margin.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use peapod_tests::TestImages;
use peapod_tests::containers::container_config;
use serde_json::{Value, json};

const GRACE: i64 = 2;
const MARGIN: Duration = Duration::from_secs(3);

/// Stores `data` as a blob of the layout; returns its descriptor digest and size.
fn put_blob(layout: &Path, data: &[u8]) -> Result<(String, usize)> {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, data)?;
    let out = std::process::Command::new("sha256sum").arg(&tmp).output()?;
    let sum = String::from_utf8(out.stdout)?;
    let hex = sum
        .split_whitespace()
        .next()
        .context("sha256sum")?
        .to_owned();
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex))?;
    Ok((format!("sha256:{hex}"), data.len()))
}

fn blob(layout: &Path, digest: &str) -> Result<Value> {
    let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
    Ok(serde_json::from_slice(&std::fs::read(
        layout.join("blobs/sha256").join(hex),
    )?)?)
}

/// An OCI archive with peapod.test/stop:<tag> for each (tag, StopSignal): the busybox image
/// with that StopSignal in its config.
fn stop_signal_images(images: &TestImages, signals: &[(&str, &str)]) -> Result<std::path::PathBuf> {
    let layout = images.path("layout");
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    let manifest = blob(&layout, images.var("BUSYBOX_MANIFEST"))?;
    let config = blob(&layout, images.var("BUSYBOX_CONFIG"))?;
    let mut added = Vec::new();
    for (tag, signal) in signals {
        let mut c = config.clone();
        c["config"]["StopSignal"] = json!(signal);
        let (digest, size) = put_blob(&layout, &serde_json::to_vec(&c)?)?;
        let mut m = manifest.clone();
        m["config"]["digest"] = json!(digest);
        m["config"]["size"] = json!(size);
        let (digest, size) = put_blob(&layout, &serde_json::to_vec(&m)?)?;
        added.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": format!("peapod.test/stop:{tag}")},
        }));
    }
    index["manifests"] = json!(added);
    std::fs::write(&index_path, serde_json::to_vec(&index)?)?;
    let archive = images.dir().join("stop.oci.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()?;
    ensure!(status.success(), "tar the layout");
    Ok(archive)
}

#[tokio::test]
async fn an_invalid_stop_signal_still_stops_the_container() -> Result<()> {
    let signals = [("big", "99999"), ("negative", "-9"), ("garbage", "SIGFOO")];
    let images = TestImages::build()?;
    let archive = stop_signal_images(&images, &signals)?;
    let node = common::node().await?;
    node.import_image(&archive).await?;
    let cfg = node.pod_config("stop");
    let pod = node.run_pod(&cfg).await?;
    for (tag, signal) in signals {
        let image = format!("peapod.test/stop:{tag}");
        let c = container_config(tag, &image, &["sleep", "1000"]);
        let id = node.run_container(&pod, &cfg, c).await?;
        let pid = node.container_pid(&id).await?;
        let t0 = Instant::now();
        let stopped = node.stop_container(&id, GRACE).await;
        let took = t0.elapsed();
        let proc = format!("/proc/{pid}");
        let alive = node
            .exec_output(&["test", "-e", &proc])
            .await?
            .status
            .success();
        let status = node.container_status(&id).await?;
        ensure!(
            stopped.is_ok() && status.state == cri_api::v1::ContainerState::ContainerExited as i32,
            "StopSignal {signal}: StopContainer gave {stopped:?}, the container is {status:?}"
        );
        ensure!(
            took < Duration::from_secs(GRACE as u64) + MARGIN,
            "StopSignal {signal}: the stop took {took:?}"
        );
        ensure!(!alive, "StopSignal {signal}: pid {pid} still lives");
    }
    Ok(())
}
