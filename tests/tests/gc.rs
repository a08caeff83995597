//! `peapod gc`: what carries peapod's names but has no record is listed by `--dry-run` and
//! removed by `gc`; pods with records are untouched; a running daemon is not run over.

mod common;

use anyhow::{Context, Result, ensure};
use k8s_cri::v1::PodSandboxState;
use peapod_tests::{Node, host_veth};

async fn gc(node: &Node, extra: &[&str]) -> Result<std::process::Output> {
    let peapod = peapod_tests::bin_dir().join("peapod");
    let state = node.state_dir();
    let mut args = vec![
        peapod.to_str().context("path")?,
        "gc",
        "--state-dir",
        state.to_str().context("path")?,
        "--run-dir",
        "/run/peapod",
    ];
    args.extend_from_slice(extra);
    node.exec_output(&args).await
}

#[tokio::test]
async fn gc_removes_what_no_record_owns_and_nothing_else() -> Result<()> {
    let mut node = common::builder().start().await?;
    let keep = node.run_pod(&node.pod_config("keep")).await?;
    let lost = node.run_pod(&node.pod_config("lost")).await?;
    let lost_info = node.pod_info(&lost).await?;

    let refused = gc(&node, &[]).await?;
    ensure!(
        !refused.status.success(),
        "gc ran while the daemon was running"
    );

    // A crash that lost the record: everything of `lost` is now garbage.
    node.kill_daemon().await?;
    let record = node
        .state_dir()
        .join("sandboxes")
        .join(&lost)
        .join("sandbox.json");
    std::fs::remove_file(&record)?;

    let dry = gc(&node, &["--dry-run"]).await?;
    let said = String::from_utf8_lossy(&dry.stdout).into_owned();
    ensure!(dry.status.success(), "gc --dry-run failed: {dry:?}");
    let pause = lost_info.pause_pid()?.to_string();
    for expected in [
        format!("would remove pause process {pause} of sandbox {lost}"),
        format!("would remove namespace pin /run/netns/peapod-{lost}"),
        format!("would remove host link {}", host_veth(&lost)),
        format!("would remove IP leases [{}]", lost_info.ip),
        format!("would remove sandbox dir {lost}"),
        format!(
            "would remove cgroup {}/{lost}",
            node.cgroup_parent().trim_start_matches('/')
        ),
        format!("would remove namespace pin dir /run/peapod/ns/{lost}"),
    ] {
        ensure!(
            said.contains(&expected),
            "dry run did not say {expected:?}:\n{said}"
        );
    }
    ensure!(
        !said.contains(&keep),
        "dry run would touch the kept pod:\n{said}"
    );
    ensure!(
        node.pins().await?.contains(&format!("peapod-{lost}")),
        "the dry run removed something"
    );

    let run = gc(&node, &[]).await?;
    let said = String::from_utf8_lossy(&run.stdout).into_owned();
    ensure!(run.status.success(), "gc failed: {run:?}");
    ensure!(
        said.contains(&format!("removed pause process {pause}")),
        "{said}"
    );
    let again = gc(&node, &[]).await?;
    ensure!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to collect"),
        "a second gc found more: {again:?}"
    );

    node.start_daemon().await?;
    let status = node.pod_status(&keep).await?.status.context("no status")?;
    ensure!(
        status.state == PodSandboxState::SandboxReady as i32,
        "the kept pod is {status:?}"
    );
    node.assert_gone(&[lost_info]).await?;
    node.stop_and_remove(&keep).await?;
    node.assert_empty().await
}
