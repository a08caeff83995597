//! Issue 21, item 6: a container that sees its pod's log directory (a hostPath volume) plants
//! symlinks there; ReopenContainerLog must not follow them. The canaries: a node file the
//! log is linked to, and a node directory a parent of a log is linked to.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use cri_api::v1::{Mount, ReopenContainerLogRequest};
use peapod_tests::containers::{BUSYBOX, container_config};

const TICKER: &str = "while true; do echo tick; sleep 0.1; done";

#[tokio::test]
async fn reopen_container_log_follows_no_symlink_the_container_planted() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let logs = node.dir().join("pod-logs");
    std::fs::create_dir_all(&logs)?;
    let canary_file = node.dir().join("canary.txt");
    std::fs::write(&canary_file, "node file\n")?;
    let canary_dir = node.dir().join("canary-dir");
    std::fs::create_dir_all(&canary_dir)?;

    let mut cfg = node.pod_config("logs");
    cfg.log_directory = logs.display().to_string();
    let pod = node.run_pod(&cfg).await?;
    let volume = Mount {
        container_path: "/logs".into(),
        host_path: logs.display().to_string(),
        ..Default::default()
    };
    let mut a = container_config("a", BUSYBOX, &["sh", "-c", TICKER]);
    a.mounts = vec![volume.clone()];
    let a = node.run_container(&pod, &cfg, a).await?;
    let mut b = container_config("b", BUSYBOX, &["sh", "-c", TICKER]);
    b.log_path = "b/0.log".into();
    b.mounts = vec![volume];
    let b = node.run_container(&pod, &cfg, b).await?;
    node.wait_log(&cfg, "a.log", "tick", Duration::from_secs(5))
        .await?;
    node.wait_log(&cfg, "b/0.log", "tick", Duration::from_secs(5))
        .await?;

    let plant = format!(
        "rm -f /logs/a.log && ln -s {} /logs/a.log && rm -rf /logs/b && ln -s {} /logs/b",
        canary_file.display(),
        canary_dir.display()
    );
    node.exec_ok(&a, &["sh", "-c", &plant]).await?;
    let mut results = Vec::new();
    for id in [&a, &b] {
        let r = node
            .client()
            .await?
            .reopen_container_log(ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await;
        results.push(r.map(drop).map_err(|s| s.message().to_owned()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let text = std::fs::read_to_string(&canary_file)?;
    ensure!(
        text == "node file\n",
        "the monitor wrote to the node's {}: {text:?} ({results:?})",
        canary_file.display()
    );
    let made: Vec<_> = std::fs::read_dir(&canary_dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure!(
        made.is_empty(),
        "the monitor created {made:?} through the symlinked parent ({results:?})"
    );
    // Refused, and the containers still run.
    ensure!(results.iter().all(|r| r.is_err()), "{results:?}");
    node.exec_ok(&a, &["true"]).await?;
    node.exec_ok(&b, &["true"]).await?;
    node.stop_and_remove(&pod).await?;
    Ok(())
}
