//! The image store over CRI: imports of OCI and docker archives, ListImages, ImageStatus,
//! RemoveImage and ImageFsInfo, against the real daemon in a throwaway node.

mod common;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{ImageFilter, ImageFsInfoRequest, ImageStatusRequest, ListImagesRequest};
use peapod_tests::TestImages;
use peapod_tests::images::spec;

#[tokio::test]
async fn imported_archives_are_listed_and_described() -> Result<()> {
    let images = TestImages::build()?;
    let node = common::node().await?;
    node.import_image(&images.path("busybox.oci.tar")).await?;
    node.import_image(&images.path("variant.docker.tar"))
        .await?;

    let list = node.list_images().await?;
    ensure!(list.len() == 2, "two images expected: {list:?}");
    let ls = node.image_cmd(&["ls"]).await?;
    for tag in ["latest", "variant"] {
        let listed = ls.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 4 && f[0] == "peapod.test/busybox" && f[1] == tag
        });
        ensure!(listed, "`peapod image ls` lacks {tag}:\n{ls}");
    }
    let busybox = node
        .image_status("peapod.test/busybox")
        .await?
        .context("busybox not found")?;
    ensure!(
        busybox.id == images.var("BUSYBOX_CONFIG"),
        "id is {}",
        busybox.id
    );
    ensure!(
        busybox.repo_tags == ["peapod.test/busybox:latest"],
        "{busybox:?}"
    );
    ensure!(
        busybox.repo_digests
            == [format!(
                "peapod.test/busybox@{}",
                images.var("BUSYBOX_MANIFEST")
            )],
        "{busybox:?}"
    );
    ensure!(busybox.size > 500_000, "size {}", busybox.size);
    ensure!(
        busybox.uid.is_none() && busybox.username.is_empty(),
        "{busybox:?}"
    );

    let variant = node
        .image_status("peapod.test/busybox:variant")
        .await?
        .context("variant not found")?;
    ensure!(
        variant.id == images.var("VARIANT_CONFIG"),
        "id is {}",
        variant.id
    );
    ensure!(
        variant.uid.as_ref().map(|u| u.value) == Some(1000),
        "{variant:?}"
    );
    ensure!(
        variant.repo_digests.is_empty(),
        "a docker archive has no repo digest"
    );

    // By id, by short id, filtered list, verbose info.
    let short = &variant.id["sha256:".len()..][..12];
    ensure!(node.image_status(short).await?.is_some(), "by short id");
    let mut client = node.image_client().await?;
    let filtered = client
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: Some(spec(&variant.id)),
            }),
        })
        .await?
        .into_inner()
        .images;
    ensure!(
        filtered.len() == 1 && filtered[0].id == variant.id,
        "{filtered:?}"
    );
    let verbose = client
        .image_status(ImageStatusRequest {
            image: Some(spec("peapod.test/busybox:variant")),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"])?;
    ensure!(
        info["imageSpec"]["config"]["StopSignal"] == "SIGUSR1",
        "verbose info: {info}"
    );
    ensure!(node.image_status("peapod.test/nothing:1").await?.is_none());

    let fs = client
        .image_fs_info(ImageFsInfoRequest {})
        .await?
        .into_inner();
    let usage = &fs.image_filesystems[0];
    ensure!(usage.used_bytes.as_ref().context("no used bytes")?.value > 1_000_000);
    ensure!(usage.inodes_used.as_ref().context("no inodes")?.value > 50);
    ensure!(
        usage.fs_id.as_ref().context("no fs id")?.mountpoint
            == node.state_dir().join("images").display().to_string()
    );
    Ok(())
}

#[tokio::test]
async fn remove_image_takes_one_name_then_the_image() -> Result<()> {
    let images = TestImages::build()?;
    let node = common::node().await?;
    // The layout holds :latest, :variant and :multi (an index whose entry for this node is
    // the :latest image): one image with two tags, and the variant.
    let layout_tar = images.dir().join("layout.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(images.path("layout"))
        .arg("-cf")
        .arg(&layout_tar)
        .arg(".")
        .status()?;
    ensure!(status.success(), "tar the layout");
    node.import_image(&layout_tar).await?;
    let busybox = node
        .image_status("peapod.test/busybox:multi")
        .await?
        .context("multi")?;
    ensure!(
        busybox.id == images.var("BUSYBOX_CONFIG"),
        "multi is {}",
        busybox.id
    );
    ensure!(busybox.repo_tags.len() == 2, "{busybox:?}");

    node.remove_image("peapod.test/busybox:multi").await?;
    ensure!(
        node.image_status("peapod.test/busybox:multi")
            .await?
            .is_none()
    );
    let left = node
        .image_status("peapod.test/busybox:latest")
        .await?
        .context("latest")?;
    ensure!(left.repo_tags == ["peapod.test/busybox:latest"], "{left:?}");

    node.remove_image("peapod.test/busybox:latest").await?;
    ensure!(
        node.image_status(&busybox.id).await?.is_none(),
        "the last tag took the image"
    );
    node.remove_image("peapod.test/busybox:latest")
        .await
        .context("removing an absent image is OK")?;
    node.remove_image(images.var("VARIANT_CONFIG")).await?;
    ensure!(node.list_images().await?.is_empty());
    let blobs = std::fs::read_dir(node.state_dir().join("images/blobs/sha256"))?.count();
    let layers = std::fs::read_dir(node.state_dir().join("images/layers"))?.count();
    ensure!(
        blobs == 0 && layers == 0,
        "{blobs} blobs and {layers} layers left"
    );
    Ok(())
}
