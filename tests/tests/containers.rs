//! Containers in pods: sharing the pod's IP and localhost, logs, exit codes, stop, OOM,
//! ExecSync.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cri_api::v1::ContainerState;
use peapod_tests::containers::{BUSYBOX as IMAGE, container_config};

#[tokio::test]
async fn two_containers_share_the_pod_and_another_pod_reaches_it() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let web = node.pod_config("web");
    let a = node.run_pod(&web).await?;
    let ip = node.pod_info(&a).await?.ip;
    let server = container_config(
        "server",
        IMAGE,
        &["httpd", "-f", "-p", "80", "-h", "/var/www"],
    );
    let server = node.run_container(&a, &web, server).await?;
    let client = container_config(
        "client",
        IMAGE,
        &[
            "sh",
            "-c",
            "until wget -qO- http://localhost/; do sleep 0.1; done",
        ],
    );
    let client = node.run_container(&a, &web, client).await?;
    let status = node.wait_exited(&client, Duration::from_secs(20)).await?;
    ensure!(status.exit_code == 0, "client: {status:?}");
    let log = node.container_log(&web, "client.log");
    ensure!(
        log.contains(" stdout F <h1>peapod</h1>"),
        "client log:\n{log}"
    );

    for id in [&server, &client] {
        let s = node.container_status(id).await?;
        ensure!(s.log_path.ends_with(".log"), "{s:?}");
    }
    let eth0 = node
        .exec_ok(&server, &["ip", "-4", "-o", "addr", "show", "eth0"])
        .await?;
    ensure!(
        eth0.contains(&format!("inet {ip}/")),
        "server eth0: {eth0} (pod IP {ip})"
    );

    let other_cfg = node.pod_config("other");
    let b = node.run_pod(&other_cfg).await?;
    let url = format!("http://{ip}/");
    let fetch = container_config("fetch", IMAGE, &["wget", "-qO-", &url]);
    let fetch = node.run_container(&b, &other_cfg, fetch).await?;
    let status = node.wait_exited(&fetch, Duration::from_secs(20)).await?;
    ensure!(status.exit_code == 0, "fetch from pod B: {status:?}");
    ensure!(
        node.container_log(&other_cfg, "fetch.log")
            .contains("<h1>peapod</h1>"),
        "{}",
        node.container_log(&other_cfg, "fetch.log")
    );
    for id in [&a, &b] {
        node.stop_and_remove(id).await?;
    }
    node.assert_empty().await
}

#[tokio::test]
async fn logs_exit_codes_stop_and_exec() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("logs");
    let pod = node.run_pod(&cfg).await?;

    let script = "echo out; echo err >&2; printf partial; exit 3";
    let c = node
        .run_container(
            &pod,
            &cfg,
            container_config("c", IMAGE, &["sh", "-c", script]),
        )
        .await?;
    let s = node.wait_exited(&c, Duration::from_secs(10)).await?;
    ensure!(s.exit_code == 3 && s.reason == "Error", "{s:?}");
    ensure!(
        s.finished_at >= s.started_at && s.started_at >= s.created_at,
        "{s:?}"
    );
    let log = node.container_log(&cfg, "c.log");
    let lines: Vec<&str> = log.lines().collect();
    ensure!(lines.len() == 3, "log:\n{log}");
    for l in &lines {
        let time = l.split(' ').next().unwrap_or("");
        ensure!(
            time.len() == 30 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{l}"
        );
    }
    ensure!(lines.iter().any(|l| l.ends_with(" stdout F out")), "{log}");
    ensure!(lines.iter().any(|l| l.ends_with(" stderr F err")), "{log}");
    ensure!(
        lines.iter().any(|l| l.ends_with(" stdout P partial")),
        "{log}"
    );

    let ok = node
        .run_container(&pod, &cfg, container_config("ok", IMAGE, &["true"]))
        .await?;
    let s = node.wait_exited(&ok, Duration::from_secs(10)).await?;
    ensure!(s.exit_code == 0 && s.reason == "Completed", "{s:?}");

    // ExecSync: output, exit code, timeout.
    let sleeper = node
        .run_container(
            &pod,
            &cfg,
            container_config("sleeper", IMAGE, &["sh", "-c", "trap '' TERM; sleep 1000"]),
        )
        .await?;
    let r = node
        .exec_sync(
            &sleeper,
            &["sh", "-c", "echo hi; echo oops >&2; exit 5"],
            10,
        )
        .await?;
    ensure!(
        r.exit_code == 5 && r.stdout == b"hi\n" && r.stderr == b"oops\n",
        "{r:?}"
    );
    let started = Instant::now();
    let timed_out = node.exec_sync(&sleeper, &["sleep", "30"], 1).await;
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout was not honoured"
    );
    let err = format!("{:#}", timed_out.expect_err("a timed-out exec must fail"));
    ensure!(err.contains("timed out"), "{err}");
    let r = node.exec_sync(&sleeper, &["no-such-command"], 10).await?;
    ensure!(r.exit_code == 127, "{r:?}");

    // Stop: the process ignores SIGTERM, so SIGKILL after the timeout.
    let started = Instant::now();
    node.stop_container(&sleeper, 1).await?;
    let took = started.elapsed();
    ensure!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "stop took {took:?}"
    );
    let s = node.container_status(&sleeper).await?;
    ensure!(
        s.state == ContainerState::ContainerExited as i32 && s.exit_code == 137,
        "{s:?}"
    );

    // Memory limit: an OOM kill is reported as such.
    let mut hog = container_config(
        "hog",
        IMAGE,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    hog.linux.as_mut().unwrap().resources = Some(cri_api::v1::LinuxContainerResources {
        memory_limit_in_bytes: 16 << 20,
        ..Default::default()
    });
    let hog = node.run_container(&pod, &cfg, hog).await?;
    let s = node.wait_exited(&hog, Duration::from_secs(20)).await?;
    ensure!(s.reason == "OOMKilled" && s.exit_code == 137, "{s:?}");

    for id in [&c, &ok, &sleeper, &hog] {
        node.remove_container(id).await?;
    }
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}
