//! Issue 21, items 3 and 4: a hostile image's symlinks must not make the runtime create or
//! read anything on the node. The images are built here (tests/tests/hostile); the canary is
//! a node directory the symlinks point at, which must stay empty.

mod common;
mod hostile;

use anyhow::{Result, ensure};
use hostile::{chain, chain_names, tree};
use peapod_tests::containers::container_config;
use peapod_tests::images::TestImages;
use serde_json::json;

/// Runs a container of `image` in a new pod; returns the error of CreateContainer or
/// StartContainer, if any.
async fn try_run(node: &peapod_tests::Node, pod: &str, image: &str) -> Result<Option<String>> {
    let cfg = node.pod_config(pod);
    let pod_id = node.run_pod(&cfg).await?;
    let c = container_config("main", image, &["sleep", "1000"]);
    Ok(node
        .run_container(&pod_id, &cfg, c)
        .await
        .err()
        .map(|e| format!("{e:#}")))
}

/// Runs a container of an image whose `dir` is a chain of symlinks ending at a canary dir of
/// the node (with `patch` on its config); fails if anything appeared in the canary, else gives
/// the error that refused the container (empty if it started).
async fn chain_attack(name: &str, dir: &str, patch: serde_json::Value) -> Result<String> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let images = TestImages::build()?;
    let canary = node.dir().join("canary");
    std::fs::create_dir_all(&canary)?;
    let target = canary.display().to_string();
    let names = chain_names();
    let image = format!("peapod.test/hostile:{name}");
    let entries = chain(dir, &names, &target);
    hostile::import(&node, &images, &image, &entries, patch).await?;

    let err = try_run(&node, dir, &image).await?;
    let made = tree(&canary);
    ensure!(
        made.is_empty(),
        "the init made {made:?} in the node's {target}"
    );
    Ok(err.unwrap_or_default())
}

#[tokio::test]
async fn a_workdir_through_a_symlink_chain_creates_nothing_on_the_node() -> Result<()> {
    let patch = json!({"WorkingDir": "/w/pwned-by-workdir/sub"});
    let err = chain_attack("workdir", "w", patch).await?;
    ensure!(
        err.contains("Too many levels of symbolic links"),
        "the container started, or failed for another reason: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn an_etc_symlink_chain_creates_nothing_on_the_node() -> Result<()> {
    let err = chain_attack("etc-chain", "etc", json!({})).await?;
    ensure!(
        err.contains("Too many levels of symbolic links") && err.contains("/etc/"),
        "the container started, or failed for another reason: {err}"
    );
    Ok(())
}

/// The node's canary passwd and group, with a user only the node has.
fn node_etc(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("passwd"),
        "root:x:0:0::/:/bin/sh\nhostonlyuser:x:4242:4343::/:/bin/sh\n",
    )?;
    std::fs::write(
        dir.join("group"),
        "root:x:0:\nhostonly:x:4343:hostonlyuser\n",
    )?;
    Ok(())
}

#[tokio::test]
async fn an_etc_symlink_does_not_give_the_nodes_users() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let images = TestImages::build()?;
    let canary = node.dir().join("node-etc");
    node_etc(&canary)?;
    let target = canary.display().to_string();
    let image = "peapod.test/hostile:etc-user";
    let entries = [hostile::Entry::Symlink("etc", &target)];
    let patch = json!({"User": "hostonlyuser"});
    hostile::import(&node, &images, image, &entries, patch).await?;

    let cfg = node.pod_config("etc-user");
    let pod = node.run_pod(&cfg).await?;
    // The image's User, then run_as_username: neither is found on the node.
    let by_image = container_config("img", image, &["sleep", "1000"]);
    let mut by_request = container_config("req", image, &["sleep", "1000"]);
    peapod_tests::containers::security(&mut by_request).run_as_username = "hostonlyuser".into();
    for c in [by_image, by_request] {
        let name = c
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let r = node.create_container(&pod, &cfg, c).await;
        let err = match r {
            Ok(id) => {
                let s = node.container_status(&id).await?;
                anyhow::bail!("{name}: created, as {:?}", s.user)
            }
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains("hostonlyuser") && err.contains("not found in the image's /etc/passwd"),
            "{name}: {err}"
        );
    }
    Ok(())
}
