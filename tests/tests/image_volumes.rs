//! Image volumes (the CRI's `Mount.image`, the kubelet's ImageVolume): an image's files in a
//! container, whole or a sub path of it (a directory or a file), read-only and noexec; the
//! image cannot be removed while a container mounts it; a missing image or a sub path that
//! leaves the image is refused and makes nothing.

mod common;

use anyhow::{Result, ensure};
use cri_api::v1::{CreateContainerRequest, ImageSpec, Mount};
use peapod_tests::containers::{BUSYBOX, VARIANT, container_config};
use tonic::Code;

fn image_mount(path: &str, image: &str, sub_path: &str) -> Mount {
    Mount {
        container_path: path.into(),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        readonly: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn an_image_volume_is_the_images_files_read_only_and_noexec() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("imgvol");
    let pod = node.run_pod(&cfg).await?;

    let mut c = container_config("reader", BUSYBOX, &["sleep", "1000"]);
    c.mounts = vec![
        // Two layers: an overlay; one layer: a bind of it.
        image_mount("/vol", VARIANT, ""),
        image_mount("/image-etc", BUSYBOX, "etc"),
        image_mount("/srv/motd", BUSYBOX, "etc/motd"),
    ];
    let id = node.run_container(&pod, &cfg, c).await?;
    let read = |path: &'static str| {
        let node = &node;
        let id = id.clone();
        async move { node.exec_ok(&id, &["cat", path]).await }
    };
    ensure!(read("/vol/var/www/index.html").await?.trim() == "<h1>variant</h1>");
    ensure!(read("/vol/etc/variant").await?.trim() == "variant");
    ensure!(read("/image-etc/motd").await?.trim() == "peapod test image");
    ensure!(read("/srv/motd").await?.trim() == "peapod test image");
    ensure!(
        node.exec_sync(&id, &["ls", "/image-etc/variant"], 10)
            .await?
            .exit_code
            != 0,
        "the sub path of busybox shows a file of variant"
    );

    for path in ["/vol/new", "/vol/etc/variant", "/image-etc/new"] {
        let w = node
            .exec_sync(&id, &["sh", "-c", &format!("echo x > {path}")], 10)
            .await?;
        ensure!(w.exit_code != 0, "{path} is writable");
    }
    let run = node
        .exec_sync(&id, &["sh", "-c", "/vol/bin/busybox true"], 10)
        .await?;
    ensure!(
        run.exit_code != 0 && String::from_utf8_lossy(&run.stderr).contains("denied"),
        "a program of the image volume ran: exit {}, {}",
        run.exit_code,
        String::from_utf8_lossy(&run.stderr)
    );
    let mounts = node.exec_ok(&id, &["cat", "/proc/self/mounts"]).await?;
    let vol = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/vol"))
        .unwrap_or_default();
    for opt in ["ro", "nosuid", "nodev", "noexec"] {
        ensure!(
            vol.split_whitespace()
                .nth(3)
                .is_some_and(|o| o.split(',').any(|x| x == opt)),
            "/vol lacks {opt}: {vol:?}"
        );
    }

    // The status names the image; the image stays while it is mounted.
    let status = node.container_status(&id).await?;
    ensure!(
        status
            .mounts
            .iter()
            .any(|m| m.container_path == "/vol"
                && m.image.as_ref().is_some_and(|i| i.image == VARIANT)),
        "{:?}",
        status.mounts
    );
    ensure!(
        node.remove_image(VARIANT).await.is_err(),
        "an image an image volume mounts was removed"
    );

    // Refused, and nothing made: a missing image, a sub path out of the image.
    let mut client = node.client().await?;
    for (mount, code, what) in [
        (
            image_mount("/x", "peapod.test/nothing:here", ""),
            Code::NotFound,
            "missing image",
        ),
        (
            image_mount("/x", BUSYBOX, "../.."),
            Code::InvalidArgument,
            "sub path with ..",
        ),
        (
            image_mount("/x", BUSYBOX, "/etc"),
            Code::InvalidArgument,
            "absolute sub path",
        ),
    ] {
        let mut c = container_config("refused", BUSYBOX, &["true"]);
        c.mounts = vec![mount];
        let r = client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(c),
                sandbox_config: Some(cfg.build()),
            })
            .await;
        common::expect_code(r.map(|_| ()), code, what)?;
    }
    ensure!(
        node.list_containers().await?.len() == 1,
        "a refused create left a container"
    );

    node.remove_container(&id).await?;
    node.remove_image(VARIANT)
        .await
        .map_err(|e| anyhow::anyhow!("the image is still held: {e}"))?;
    Ok(())
}
