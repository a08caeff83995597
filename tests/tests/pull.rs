//! PullImage from a real registry (Debian's docker-registry) on the loopback of a throwaway
//! node: by tag, by digest, through an index, through a mirror, with basic auth; refused over
//! plain HTTP unless configured; a corrupted blob refused. Over HTTPS with a throwaway CA:
//! trusted through `ca`, refused (and explained) without it, unverified when `insecure`,
//! through an `https://` mirror, with a client certificate. A failed pull stores nothing.

mod common;

use anyhow::{Context, Result, ensure};
use cri_api::v1::AuthConfig;
use peapod_tests::{Node, Registry, RegistryTls, TestCa, TestImages};
use tonic::Code;

const INSECURE: &str = "[registries.\"127.0.0.1:5000\"]\ninsecure = true";
const REGISTRY: &str = "127.0.0.1:5000";

async fn node_with(config: &str) -> Result<Node> {
    common::builder().config(config).start().await
}

/// The test images, `node`, a registry on 127.0.0.1:5000 in it (HTTPS when `tls` is given,
/// else plain HTTP), and the test image `source` (a tag of the test layout) pushed there as
/// `dest`.
async fn pushed(
    node: Node,
    tls: Option<RegistryTls<'_>>,
    source: &str,
    dest: &str,
) -> Result<(TestImages, Node, Registry)> {
    let images = TestImages::build()?;
    let layout = images.path("layout");
    let registry = match tls {
        None => node.start_registry(REGISTRY, None).await?,
        Some(tls) => node.start_tls_registry(REGISTRY, tls).await?,
    };
    match tls {
        Some(tls) if tls.require_client_cert => {
            node.push_image_with_cert(&layout, source, dest, tls.ca)
                .await?
        }
        _ => node.push_image(&layout, source, dest, None).await?,
    }
    Ok((images, node, registry))
}

/// `[registries."host"]` trusting `ca`'s CA, plus `extra` lines.
fn trusting(host: &str, ca: &TestCa, extra: &str) -> String {
    format!(
        "[registries.{host:?}]\nca = {:?}\n{extra}",
        ca.ca().display().to_string()
    )
}

fn https(ca: &TestCa) -> Option<RegistryTls<'_>> {
    Some(RegistryTls {
        ca,
        require_client_cert: false,
        wrong_name: false,
    })
}

/// Nothing of a failed pull is left: no image, blob or layer.
fn assert_store_empty(node: &Node) -> Result<()> {
    for dir in ["images/blobs/sha256", "images/layers"] {
        let left: Vec<_> = std::fs::read_dir(node.state_dir().join(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        ensure!(left.is_empty(), "{dir} holds {left:?}");
    }
    Ok(())
}

#[tokio::test]
async fn pull_by_tag_and_by_digest() -> Result<()> {
    let (images, node, _registry) = pushed(
        node_with(INSECURE).await?,
        None,
        "peapod.test/busybox:latest",
        "127.0.0.1:5000/library/busybox:1",
    )
    .await?;
    let layout = images.path("layout");
    node.push_image(
        &layout,
        "peapod.test/busybox:variant",
        "127.0.0.1:5000/tools/variant:2",
        None,
    )
    .await?;

    let id = node
        .pull_image("127.0.0.1:5000/library/busybox:1", None)
        .await?;
    ensure!(id == images.var("BUSYBOX_CONFIG"), "image ref {id}");
    let status = node
        .image_status("127.0.0.1:5000/library/busybox:1")
        .await?
        .context("pulled image not found")?;
    ensure!(status.id == id);
    ensure!(
        status.repo_tags == ["127.0.0.1:5000/library/busybox:1"],
        "{status:?}"
    );
    let digest = format!(
        "127.0.0.1:5000/library/busybox@{}",
        images.var("BUSYBOX_MANIFEST")
    );
    ensure!(status.repo_digests == [digest.clone()], "{status:?}");
    ensure!(status.size > 500_000, "size {}", status.size);
    ensure!(
        node.image_status(&digest).await?.is_some(),
        "by repo digest"
    );
    let listed = node.list_images().await?;
    ensure!(listed.len() == 1 && listed[0].id == id, "{listed:?}");

    // By digest: no tag, the digest as its name; a zstd layer on top of the shared one.
    let by_digest = format!(
        "127.0.0.1:5000/tools/variant@{}",
        images.var("VARIANT_MANIFEST")
    );
    let id = node.pull_image(&by_digest, None).await?;
    ensure!(id == images.var("VARIANT_CONFIG"), "image ref {id}");
    let status = node
        .image_status(&by_digest)
        .await?
        .context("variant not found")?;
    ensure!(
        status.repo_tags.is_empty() && status.repo_digests == [by_digest],
        "{status:?}"
    );
    ensure!(
        status.uid.map(|u| u.value) == Some(1000),
        "uid from the image config"
    );
    ensure!(node.list_images().await?.len() == 2);

    // Pulling again changes nothing; an unknown tag is NotFound and names the registry.
    node.pull_image("127.0.0.1:5000/library/busybox:1", None)
        .await?;
    ensure!(node.list_images().await?.len() == 2);
    let err = node
        .pull_image("127.0.0.1:5000/library/busybox:nope", None)
        .await
        .expect_err("an unknown tag");
    ensure!(err.code() == Code::NotFound, "{err:?}");
    ensure!(
        err.message().contains(REGISTRY) && err.message().contains("busybox:nope"),
        "{err:?}"
    );
    let err = node
        .pull_image("Not A Reference", None)
        .await
        .expect_err("invalid");
    ensure!(err.code() == Code::InvalidArgument, "{err:?}");
    Ok(())
}

#[tokio::test]
async fn an_index_resolves_to_this_architecture() -> Result<()> {
    let (images, node, _registry) = pushed(
        node_with(INSECURE).await?,
        None,
        "peapod.test/busybox:multi",
        "127.0.0.1:5000/multi/busybox:1",
    )
    .await?;
    let id = node
        .pull_image("127.0.0.1:5000/multi/busybox:1", None)
        .await?;
    ensure!(
        id == images.var("BUSYBOX_CONFIG"),
        "{} got {id}, not the {} image",
        images.var("OTHER_ARCH"),
        images.var("ARCH")
    );
    let status = node.image_status(&id).await?.context("not found")?;
    let index = format!("127.0.0.1:5000/multi/busybox@{}", images.var("MULTI_INDEX"));
    ensure!(
        status.repo_digests == [index],
        "the repo digest is the index's: {status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn plain_http_is_refused_unless_the_host_is_insecure() -> Result<()> {
    let (_images, node, _registry) = pushed(
        common::node().await?,
        None,
        "peapod.test/busybox:latest",
        "127.0.0.1:5000/library/busybox:1",
    )
    .await?;
    let err = node
        .pull_image("127.0.0.1:5000/library/busybox:1", None)
        .await
        .expect_err("plain HTTP without insecure = true");
    ensure!(err.code() == Code::Unavailable, "{err:?}");
    ensure!(
        err.message().contains("insecure = true"),
        "the error says why: {}",
        err.message()
    );
    ensure!(node.list_images().await?.is_empty());
    assert_store_empty(&node)
}

#[tokio::test]
async fn a_mirror_serves_the_image_under_the_name_asked_for() -> Result<()> {
    let (images, node, _registry) = pushed(
        node_with("[registries.\"example.test\"]\nmirrors = [\"http://127.0.0.1:5000\"]").await?,
        None,
        "peapod.test/busybox:latest",
        "127.0.0.1:5000/library/busybox:1",
    )
    .await?;
    let id = node
        .pull_image("example.test/library/busybox:1", None)
        .await?;
    ensure!(id == images.var("BUSYBOX_CONFIG"));
    let status = node
        .image_status("example.test/library/busybox:1")
        .await?
        .context("not found")?;
    ensure!(
        status.repo_tags == ["example.test/library/busybox:1"],
        "{status:?}"
    );
    ensure!(
        status.repo_digests[0].starts_with("example.test/library/busybox@sha256:"),
        "{status:?}"
    );
    // The same through the CLI, which talks to the daemon.
    node.image_cmd(&["rm", "example.test/library/busybox:1"])
        .await?;
    ensure!(node.list_images().await?.is_empty());
    let out = node
        .image_cmd(&["pull", "example.test/library/busybox:1"])
        .await?;
    ensure!(out.trim() == id, "peapod image pull said {out:?}");
    Ok(())
}

#[tokio::test]
async fn basic_auth_from_the_auth_config() -> Result<()> {
    let images = TestImages::build()?;
    let node = node_with(INSECURE).await?;
    let _registry = node
        .start_registry(REGISTRY, Some(("puller", "s3cret")))
        .await?;
    node.push_image(
        &images.path("layout"),
        "peapod.test/busybox:latest",
        "127.0.0.1:5000/private/busybox:1",
        Some("puller:s3cret"),
    )
    .await?;
    let image = "127.0.0.1:5000/private/busybox:1";
    let err = node
        .pull_image(image, None)
        .await
        .expect_err("no credentials");
    ensure!(err.code() == Code::PermissionDenied, "{err:?}");
    let wrong = AuthConfig {
        username: "puller".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = node
        .pull_image(image, Some(wrong))
        .await
        .expect_err("bad password");
    ensure!(err.code() == Code::PermissionDenied, "{err:?}");
    assert_store_empty(&node)?;
    let right = AuthConfig {
        username: "puller".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    ensure!(node.pull_image(image, Some(right)).await? == images.var("BUSYBOX_CONFIG"));
    node.remove_image(image).await?;
    // The same through `auth` (base64 of user:password), as kubelet's pull secrets send it.
    let encoded = AuthConfig {
        auth: "cHVsbGVyOnMzY3JldA==".into(),
        ..Default::default()
    };
    ensure!(node.pull_image(image, Some(encoded)).await? == images.var("BUSYBOX_CONFIG"));
    Ok(())
}

#[tokio::test]
async fn a_corrupted_blob_is_refused_and_nothing_is_stored() -> Result<()> {
    let (images, node, registry) = pushed(
        node_with(INSECURE).await?,
        None,
        "peapod.test/busybox:latest",
        "127.0.0.1:5000/library/busybox:1",
    )
    .await?;
    // Flip bytes of the layer blob on the registry's disk; the registry serves it as is.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
        images
            .path("layout/blobs/sha256")
            .join(&images.var("BUSYBOX_MANIFEST")[7..]),
    )?)?;
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .context("no layer")?;
    let path = registry.blob_path(layer);
    let mut data = std::fs::read(&path)?;
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&path, data)?;

    let err = node
        .pull_image("127.0.0.1:5000/library/busybox:1", None)
        .await
        .expect_err("a corrupted layer");
    ensure!(err.code() == Code::DataLoss, "{err:?}");
    ensure!(
        err.message().contains(layer),
        "the error names the blob: {}",
        err.message()
    );
    ensure!(node.list_images().await?.is_empty());
    assert_store_empty(&node)
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_both_succeed() -> Result<()> {
    let (images, node, _registry) = pushed(
        node_with(INSECURE).await?,
        None,
        "peapod.test/busybox:variant",
        "127.0.0.1:5000/library/variant:1",
    )
    .await?;
    let image = "127.0.0.1:5000/library/variant:1";
    let (a, b) = tokio::join!(node.pull_image(image, None), node.pull_image(image, None));
    ensure!(a? == images.var("VARIANT_CONFIG") && b? == images.var("VARIANT_CONFIG"));
    ensure!(node.list_images().await?.len() == 1);
    let layers = std::fs::read_dir(node.state_dir().join("images/layers"))?.count();
    ensure!(layers == 2, "{layers} layer dirs");
    Ok(())
}

#[path = "pull/tls.rs"]
mod tls;
