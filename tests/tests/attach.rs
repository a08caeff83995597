//! Attach: to a container's stdio held by its monitor, over WebSocket and SPDY; several
//! attachers at once; an attach after a daemon SIGKILL and restart; stdin_once; a TTY with
//! resizes; the CRI log keeps every line meanwhile.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use cri_api::v1::{AttachRequest, ContainerConfig};
use peapod_tests::containers::{BUSYBOX as IMAGE, container_config};
use peapod_tests::stream::{SpdySession, WsSession, attach_url};
use tokio::io::AsyncReadExt;

const WAIT: Duration = Duration::from_secs(30);

fn interactive(name: &str, cmd: &[&str], stdin_once: bool, tty: bool) -> ContainerConfig {
    let mut c = container_config(name, IMAGE, cmd);
    c.stdin = true;
    c.stdin_once = stdin_once;
    c.tty = tty;
    c
}

#[tokio::test]
async fn attachers_share_the_containers_stdio_across_a_daemon_restart() -> Result<()> {
    let mut node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("attach");
    let pod = node.run_pod(&cfg).await?;
    let ctr = node
        .run_container(&pod, &cfg, interactive("echo", &["cat"], false, false))
        .await?;
    let mut client = node.client().await?;
    // One attacher writes over WebSocket; a second reads over SPDY.
    let url = attach_url(&mut client, &ctr, true, false).await?;
    let mut writer = WsSession::open(&node, &url, &["v5.channel.k8s.io"]).await?;
    let url = attach_url(&mut client, &ctr, false, false).await?;
    let reader = SpdySession::open(&node, &url, &["v4.channel.k8s.io"]).await?;
    let _error = reader.stream(&[("streamtype", "error")]).await?;
    let mut stdout = reader.stream(&[("streamtype", "stdout")]).await?;
    let _stderr = reader.stream(&[("streamtype", "stderr")]).await?;
    // Both are connected once the first line makes it back to the writer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.send(0, b"hello\n").await?;
    writer.stdout_until("hello\n", WAIT).await?;
    let mut seen = vec![0u8; 6];
    tokio::time::timeout(WAIT, stdout.read_exact(&mut seen)).await??;
    ensure!(seen == b"hello\n", "{seen:?}");
    drop(reader);
    // The writer leaves; stdin stays open (no stdin_once): cat still runs.
    writer.close_stdin().await?;
    drop(writer);
    node.kill_daemon().await?;
    node.start_daemon().await?;
    let mut client = node.client().await?;
    let url = attach_url(&mut client, &ctr, true, false).await?;
    let mut again = WsSession::open(&node, &url, &["v4.channel.k8s.io"]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    again.send(0, b"after the restart\n").await?;
    again.stdout_until("after the restart\n", WAIT).await?;
    drop(again);
    let log = node
        .wait_log(&cfg, "echo.log", "stdout F after the restart", WAIT)
        .await?;
    ensure!(log.contains(" stdout F hello\n"), "{log}");
    ensure!(
        node.container_status(&ctr).await?.state
            == cri_api::v1::ContainerState::ContainerRunning as i32,
        "cat ended"
    );
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn stdin_once_and_a_tty() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("attach-once");
    let pod = node.run_pod(&cfg).await?;
    let once = node
        .run_container(
            &pod,
            &cfg,
            interactive("once", &["sh", "-c", "cat; echo stdin closed"], true, false),
        )
        .await?;
    let mut client = node.client().await?;
    let url = attach_url(&mut client, &once, true, false).await?;
    let mut s = WsSession::open(&node, &url, &["v5.channel.k8s.io"]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.send(0, b"line\n").await?;
    s.close_stdin().await?;
    let out = s.collect(WAIT).await?;
    ensure!(out.stdout() == "line\nstdin closed\n", "{out:?}");
    let status = node.wait_exited(&once, WAIT).await?;
    ensure!(status.exit_code == 0, "{status:?}");

    let tty = node
        .run_container(
            &pod,
            &cfg,
            interactive(
                "tty",
                &["sh", "-c", "read x; tty; stty size; sleep 600"],
                false,
                true,
            ),
        )
        .await?;
    let url = attach_url(&mut client, &tty, true, true).await?;
    let mut s = WsSession::open(&node, &url, &["v5.channel.k8s.io"]).await?;
    s.resize(77, 22).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send(0, b"go\r").await?;
    let seen = s.stdout_until("22 77", WAIT).await?;
    drop(s);
    // The terminal is the container's own, the first of its devpts instance.
    ensure!(
        seen.contains("/dev/pts/0\r\n"),
        "tty in the container: {seen:?}"
    );
    node.wait_log(&cfg, "tty.log", "22 77", WAIT).await?;

    // Requests that do not fit the container.
    let bad = |container: &str, stdin: bool, tty: bool| {
        let mut c = client.clone();
        let req = AttachRequest {
            container_id: container.to_owned(),
            stdin,
            tty,
            stdout: true,
            stderr: !tty,
        };
        async move { c.attach(req).await }
    };
    common::expect_code(
        bad(&tty, true, false).await,
        tonic::Code::InvalidArgument,
        "tty",
    )?;
    common::expect_code(
        bad(&once, false, false).await,
        tonic::Code::FailedPrecondition,
        "exited",
    )?;
    common::expect_code(
        bad(&"e".repeat(64), false, false).await,
        tonic::Code::NotFound,
        "unknown",
    )?;
    let plain = node
        .run_container(
            &pod,
            &cfg,
            container_config("plain", IMAGE, &["sleep", "600"]),
        )
        .await?;
    common::expect_code(
        bad(&plain, true, false).await,
        tonic::Code::InvalidArgument,
        "no stdin",
    )?;
    // Output only: fine for any container.
    ensure!(bad(&plain, false, false).await.is_ok());
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}
