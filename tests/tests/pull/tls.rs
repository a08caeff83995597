//! Pulls over HTTPS from the registry, its certificate signed by a throwaway CA for 127.0.0.1.

use std::path::Path;

use super::*;

const IMAGE: &str = "127.0.0.1:5000/library/busybox:1";
const SOURCE: &str = "peapod.test/busybox:latest";

/// Every blob in the store has the digest it is stored under, as `sha256sum` (not peapod)
/// computes it; returns how many there are.
fn assert_blobs_verified(node: &Node) -> Result<usize> {
    let dir = node.state_dir().join("images/blobs/sha256");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let out = std::process::Command::new("sha256sum")
            .arg(&path)
            .output()?;
        let sum = String::from_utf8(out.stdout)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        ensure!(
            sum.split_whitespace().next() == Some(name),
            "blob {name} has sha256 {sum}"
        );
        count += 1;
    }
    Ok(count)
}

fn ensure_mentions(message: &str, needles: &[&str]) -> Result<()> {
    for needle in needles {
        ensure!(message.contains(needle), "no {needle:?} in: {message}");
    }
    Ok(())
}

#[tokio::test]
async fn https_with_the_configured_ca() -> Result<()> {
    let ca = TestCa::new()?;
    let node = node_with(&trusting(REGISTRY, &ca, "")).await?;
    let (images, node, _registry) = pushed(node, https(&ca), SOURCE, IMAGE).await?;
    let id = node.pull_image(IMAGE, None).await?;
    ensure!(id == images.var("BUSYBOX_CONFIG"), "image ref {id}");
    let status = node.image_status(IMAGE).await?.context("not found")?;
    ensure!(status.repo_tags == [IMAGE], "{status:?}");
    let digest = format!(
        "127.0.0.1:5000/library/busybox@{}",
        images.var("BUSYBOX_MANIFEST")
    );
    ensure!(status.repo_digests == [digest], "{status:?}");
    let blobs = assert_blobs_verified(&node)?;
    ensure!(
        blobs >= 2,
        "{blobs} blobs: at least the config and the layer"
    );
    let layers = std::fs::read_dir(node.state_dir().join("images/layers"))?.count();
    ensure!(layers == 1, "{layers} layer dirs");
    Ok(())
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_the_error_says_how_to_trust_it() -> Result<()> {
    let ca = TestCa::new()?;
    let (_images, node, _registry) =
        pushed(common::node().await?, https(&ca), SOURCE, IMAGE).await?;
    let err = node
        .pull_image(IMAGE, None)
        .await
        .expect_err("a certificate from an unknown CA");
    ensure!(err.code() == Code::FailedPrecondition, "{err:?}");
    ensure_mentions(
        err.message(),
        &[
            "TLS with 127.0.0.1:5000 failed",
            "not trusted",
            "`ca = ",
            "`insecure = true`",
            "[registries.\"127.0.0.1:5000\"]",
        ],
    )?;
    // Plain HTTP was not tried: the error is that of the last endpoint tried, and no URL in
    // it is http://.
    ensure!(
        err.message().contains("https://127.0.0.1:5000/v2/") && !err.message().contains("http://"),
        "{}",
        err.message()
    );
    ensure!(node.list_images().await?.is_empty());
    assert_store_empty(&node)
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_even_from_a_trusted_ca() -> Result<()> {
    let ca = TestCa::new()?;
    let tls = RegistryTls {
        ca: &ca,
        require_client_cert: false,
        wrong_name: true,
    };
    let node = node_with(&trusting(REGISTRY, &ca, "")).await?;
    let (_images, node, _registry) = pushed(node, Some(tls), SOURCE, IMAGE).await?;
    let err = node
        .pull_image(IMAGE, None)
        .await
        .expect_err("a certificate for elsewhere.test");
    ensure!(err.code() == Code::FailedPrecondition, "{err:?}");
    ensure_mentions(
        err.message(),
        &[
            "TLS with 127.0.0.1:5000 failed",
            "not valid for this host name",
            "must name 127.0.0.1 (",
        ],
    )?;
    assert_store_empty(&node)
}

#[tokio::test]
async fn insecure_pulls_without_the_ca() -> Result<()> {
    let ca = TestCa::new()?;
    let (images, node, _registry) =
        pushed(node_with(INSECURE).await?, https(&ca), SOURCE, IMAGE).await?;
    ensure!(node.pull_image(IMAGE, None).await? == images.var("BUSYBOX_CONFIG"));
    ensure!(node.image_status(IMAGE).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn an_https_mirror_trusted_through_the_ca_of_the_name_asked_for() -> Result<()> {
    let ca = TestCa::new()?;
    let config = trusting(
        "example.test",
        &ca,
        "mirrors = [\"https://127.0.0.1:5000\"]",
    );
    let (images, node, _registry) =
        pushed(node_with(&config).await?, https(&ca), SOURCE, IMAGE).await?;
    let asked = "example.test/library/busybox:1";
    ensure!(node.pull_image(asked, None).await? == images.var("BUSYBOX_CONFIG"));
    let status = node.image_status(asked).await?.context("not found")?;
    ensure!(status.repo_tags == [asked], "{status:?}");
    ensure!(
        node.image_status(IMAGE).await?.is_none(),
        "stored under the mirror's name"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_when_the_registry_wants_one() -> Result<()> {
    let ca = TestCa::new()?;
    let tls = RegistryTls {
        ca: &ca,
        require_client_cert: true,
        wrong_name: false,
    };
    let node = node_with(&trusting(REGISTRY, &ca, "")).await?;
    let (images, mut node, _registry) = pushed(node, Some(tls), SOURCE, IMAGE).await?;
    let err = node
        .pull_image(IMAGE, None)
        .await
        .expect_err("no client certificate");
    // Over TLS 1.3 and HTTP/2 the registry's refusal reaches the client as a closed
    // connection, not as a TLS alert: the error cannot say more than that.
    ensure_mentions(err.message(), &["https://127.0.0.1:5000/v2/"])?;
    ensure!(node.list_images().await?.is_empty());
    assert_store_empty(&node)?;

    let (cert, key) = ca.client();
    append_config(
        &node.dir().join("config.toml"),
        &format!(
            "client_cert = {:?}\nclient_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )?;
    node.restart_daemon().await?;
    ensure!(node.pull_image(IMAGE, None).await? == images.var("BUSYBOX_CONFIG"));
    Ok(())
}

/// Appends `lines` to the node's config file (into its last table).
fn append_config(path: &Path, lines: &str) -> Result<()> {
    let mut text = std::fs::read_to_string(path)?;
    text.push_str(lines);
    Ok(std::fs::write(path, text)?)
}

/// A node without the ca-certificates package (no system roots: `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` name nothing) starts; a registry with its own `ca` is pulled from; only a
/// pull that needs the system's roots fails, and says why.
#[tokio::test]
async fn a_node_without_ca_certificates_starts_and_fails_only_pulls_that_need_them() -> Result<()> {
    let ca = TestCa::new()?;
    let mut node = common::builder()
        .config(&trusting(REGISTRY, &ca, ""))
        .without_daemon()
        .start()
        .await?;
    node.set_daemon_env("SSL_CERT_FILE", Some("/nonexistent/ca-certificates.crt"));
    node.set_daemon_env("SSL_CERT_DIR", Some("/nonexistent/certs"));
    node.start_daemon().await?;
    let (images, node, _registry) = pushed(node, https(&ca), SOURCE, IMAGE).await?;
    ensure!(node.pull_image(IMAGE, None).await? == images.var("BUSYBOX_CONFIG"));
    // The same registry under a name with no `ca` of its own.
    let err = node
        .pull_image("localhost:5000/library/busybox:1", None)
        .await
        .expect_err("no CA certificates to verify with");
    ensure!(err.code() == Code::FailedPrecondition, "{err:?}");
    ensure_mentions(
        err.message(),
        &[
            "TLS with localhost:5000 failed",
            "No CA certificates were loaded from the system",
            "ca-certificates",
            "[registries.\"localhost:5000\"]",
        ],
    )?;
    ensure!(node.list_images().await?.len() == 1);
    Ok(())
}
