//! Mounts onto /proc are refused (issue 21, item 9): the node's /proc/sys over the
//! container's (with readonly_paths emptied) would make the node's sysctls writable from a
//! default container, the node's /proc over the container's would show it the node's
//! processes. Only the files runc allows under /proc (those lxcfs emulates) may be mounted.
//!
//! Canary: the node's /proc/sys/kernel/core_pattern, which no container may reach. (The test
//! never writes it: the container that could is refused before it exists.)

mod common;

use anyhow::{Result, ensure};
use cri_api::v1::{CreateContainerRequest, Mount};
use peapod_tests::containers::{BUSYBOX, container_config, security};
use tonic::Code;

#[tokio::test]
async fn mounts_under_proc_are_refused_but_lxcfs_files() -> Result<()> {
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern")?;
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("proc");
    let pod = node.run_pod(&cfg).await?;
    let mut client = node.client().await?;
    let before = (node.list_containers().await?.len(), node.container_dirs());

    for (host, dest) in [
        ("/proc/sys", "/proc/sys"),
        ("/proc", "/proc"),
        ("/proc/sys", "/proc/../proc/sys"),
        ("/proc/sys", "//proc/sys"),
        ("/proc/sys", "/proc/sys/"),
        ("/proc/sys", "/tmp/../proc/./sys"),
        ("/proc/sys/kernel", "/proc/sys/kernel"),
        ("/proc/sysrq-trigger", "/proc/sysrq-trigger"),
        ("/proc/1", "/proc/self"),
    ] {
        let mut c = container_config("bad", BUSYBOX, &["sleep", "1000"]);
        c.mounts = vec![Mount {
            container_path: dest.into(),
            host_path: host.into(),
            ..Default::default()
        }];
        security(&mut c).readonly_paths = vec!["/proc/asound".into()];
        let r = client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(c),
                sandbox_config: Some(cfg.build()),
            })
            .await;
        let what = format!("node {host} onto {dest}");
        common::expect_code(r.map(|_| ()), Code::InvalidArgument, &what)?;
    }
    ensure!(
        (node.list_containers().await?.len(), node.container_dirs()) == before,
        "a refused container left something behind"
    );

    // What lxcfs does: a node file over /proc/cpuinfo (and a file runc allows in /proc/sys).
    let fake = node.dir().join("cpuinfo");
    std::fs::write(&fake, "processor : 0 (from lxcfs)\n")?;
    let mut c = container_config("lxcfs", BUSYBOX, &["sleep", "1000"]);
    c.mounts = vec![Mount {
        container_path: "/proc/cpuinfo".into(),
        host_path: fake.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let id = node.run_container(&pod, &cfg, c).await?;
    let seen = node.exec_ok(&id, &["cat", "/proc/cpuinfo"]).await?;
    ensure!(seen.contains("(from lxcfs)"), "{seen}");

    ensure!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern")? == core_pattern,
        "the node's core_pattern changed"
    );
    Ok(())
}
