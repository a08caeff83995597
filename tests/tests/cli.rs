//! The operator's CLI over the CRI socket: `peapod pod` and `peapod ctr` do what they say, and
//! `peapod ctr exec` exits with the command's exit code.

mod common;

use anyhow::{Context, Result, ensure};
use peapod_tests::Node;
use peapod_tests::containers::BUSYBOX;

/// Runs `peapod <group> --socket <node socket> <args…>` inside the node.
async fn peapod(node: &Node, args: &[&str]) -> Result<std::process::Output> {
    let bin = peapod_tests::bin_dir().join("peapod");
    let socket = node.socket();
    // `--socket` right after `pod`/`ctr`: after `--` it would belong to the command.
    let mut all = vec![bin.to_str().context("path")?, args[0]];
    all.extend_from_slice(&["--socket", socket.to_str().context("path")?]);
    all.extend_from_slice(&args[1..]);
    node.exec_output(&all).await
}

async fn ok(node: &Node, args: &[&str]) -> Result<String> {
    let out = peapod(node, args).await?;
    ensure!(out.status.success(), "peapod {args:?}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test]
async fn pod_and_ctr_commands_drive_the_daemon() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let pod = ok(&node, &["pod", "run", "cli"]).await?;
    ensure!(peapod_tests::is_sandbox_id(&pod), "pod run printed {pod:?}");
    let ip = node.pod_info(&pod).await?.ip;
    ensure!(
        ok(&node, &["pod", "ls"]).await?.contains(&ip),
        "pod ls lacks {ip}"
    );

    let web = ok(
        &node,
        &[
            "ctr", "run", &pod, "web", BUSYBOX, "--", "httpd", "-f", "-p", "80", "-h", "/var/www",
        ],
    )
    .await?;
    let ls = ok(&node, &["ctr", "ls"]).await?;
    ensure!(
        ls.contains(&web[..12]) && ls.contains("RUNNING"),
        "ctr ls:\n{ls}"
    );
    let eth0 = ok(
        &node,
        &[
            "ctr", "exec", &web, "--", "ip", "-4", "-o", "addr", "show", "eth0",
        ],
    )
    .await?;
    ensure!(
        eth0.contains(&format!("{ip}/")),
        "the container's eth0: {eth0}"
    );
    let failed = peapod(&node, &["ctr", "exec", &web, "--", "sh", "-c", "exit 7"]).await?;
    ensure!(
        failed.status.code() == Some(7),
        "ctr exec should exit 7: {failed:?}"
    );
    let inspect = ok(&node, &["ctr", "inspect", &web]).await?;
    let doc: serde_json::Value = serde_json::from_str(&inspect)?;
    ensure!(doc["status"]["id"] == web, "ctr inspect: {inspect}");
    ok(&node, &["ctr", "stop", "--timeout", "1", &web]).await?;
    ok(&node, &["ctr", "rm", &web]).await?;
    ensure!(
        !ok(&node, &["ctr", "ls"]).await?.contains(&web[..12]),
        "removed container listed"
    );
    ok(&node, &["pod", "stop", &pod]).await?;
    ok(&node, &["pod", "rm", &pod]).await?;
    node.assert_empty().await
}
