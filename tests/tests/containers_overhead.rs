//! The per-pod overhead: pause + the monitor of a one-container pod, in VmRSS (set
//! `PEAPOD_TEST_SMAPS=1` to see the monitor's mappings), and create+start latency.

mod common;

use anyhow::{Context, Result, ensure};
use peapod_tests::containers::{BUSYBOX, container_config};

/// Pause + monitor of a one-container pod, in KiB: the target is 2 MiB for release builds
/// (`hack/bench`); a debug build runs more code pages, so it only gets a looser bound (the
/// monitor is its own binary, `peapod-monitor`, with the monitor's code only: 2.2 MiB in a
/// debug build; it was 10.8 MiB as a subcommand of the whole `peapod`, whose Kubernetes,
/// gRPC and image code it mapped and relocated).
fn budget_kib() -> u64 {
    let release = peapod_tests::bin_dir()
        .components()
        .any(|c| c.as_os_str() == "release");
    if release { 2048 } else { 4096 }
}

async fn rss_kib(node: &peapod_tests::Node, pid: u64) -> Result<u64> {
    let status = node.exec(&["cat", &format!("/proc/{pid}/status")]).await?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS for {pid}: {status}"))
}

#[tokio::test]
async fn pause_and_monitor_stay_small() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("rss");
    let pod = node.run_pod(&cfg).await?;
    let c = container_config("c", BUSYBOX, &["sh", "-c", "echo up; exec sleep 1000"]);
    let c = node.run_container(&pod, &cfg, c).await?;
    node.wait_log(&cfg, "c.log", "up", std::time::Duration::from_secs(10))
        .await?;
    let pause = node.pod_info(&pod).await?.pause_pid()? as u64;
    let info = node.container_info(&c).await?;
    let monitor = info["monitorPid"].as_u64().context("no monitorPid")?;
    let (p, m) = (rss_kib(&node, pause).await?, rss_kib(&node, monitor).await?);
    eprintln!("VmRSS: pause {p} KiB + monitor {m} KiB = {} KiB", p + m);
    let st = node
        .exec(&["cat", &format!("/proc/{monitor}/status")])
        .await?;
    let parts: Vec<&str> = st.lines().filter(|l| l.starts_with("Rss")).collect();
    eprintln!("monitor: {}", parts.join(", ").replace('\t', " "));
    if std::env::var_os("PEAPOD_TEST_SMAPS").is_some() {
        eprintln!(
            "{}",
            node.exec(&["cat", &format!("/proc/{monitor}/smaps")])
                .await?
        );
    }
    let budget = budget_kib();
    ensure!(
        p + m <= budget,
        "pause {p} KiB + monitor {m} KiB > {budget} KiB"
    );

    // Create + start latency, printed for the record (the benchmark owns the targets).
    let mut took = Vec::new();
    for i in 0..10 {
        let cc = container_config(&format!("t{i}"), BUSYBOX, &["sleep", "1000"]);
        let t = std::time::Instant::now();
        node.run_container(&pod, &cfg, cc).await?;
        took.push(t.elapsed());
    }
    took.sort();
    eprintln!(
        "CreateContainer+StartContainer p50 {:?}, max {:?}",
        took[5], took[9]
    );
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}
