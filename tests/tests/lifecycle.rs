//! Pod lifecycle over CRI: stop and remove leave nothing, unknown ids, list filters, and the
//! runtime-level RPCs.

mod common;

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{
    CheckpointContainerRequest, ListPodSandboxRequest, PodSandboxFilter, PodSandboxState,
    PodSandboxStateValue, PodSandboxStatusRequest, RemovePodSandboxRequest, StatusRequest,
    StopPodSandboxRequest, VersionRequest,
};
use peapod_tests::{Node, host_veth};
use tonic::Code;

async fn state_of(node: &Node, id: &str) -> Result<i32> {
    let status = node.pod_status(id).await?.status.context("no status")?;
    Ok(status.state)
}

#[tokio::test]
async fn stop_then_remove_leaves_nothing_and_repeats_are_ok() -> Result<()> {
    let node = common::node().await?;
    let config = node
        .pod_config("lifecycle")
        .label("tier", "web")
        .annotation("example.com/note", "kept as is");
    let id = node.run_pod(&config).await?;
    let info = node.pod_info(&id).await?;
    let status = node.pod_status(&id).await?.status.context("no status")?;
    ensure!(
        status.state == PodSandboxState::SandboxReady as i32,
        "new pod is {status:?}"
    );
    ensure!(status.created_at > 0, "created_at is {}", status.created_at);
    ensure!(
        status.metadata == Some(config.metadata()),
        "metadata: {:?}",
        status.metadata
    );
    ensure!(
        status.labels == config.labels,
        "labels: {:?}",
        status.labels
    );
    ensure!(
        status.annotations == config.annotations,
        "annotations: {:?}",
        status.annotations
    );
    ensure!(
        node.leases()?.get(&info.ip) == Some(&id),
        "no lease of {} for {id}",
        info.ip
    );
    ensure!(
        node.pauses().await?.iter().any(|p| Some(p.pid) == info.pid),
        "no pause process"
    );

    // Stop: the pause is gone and the network detached; the pod is still listed, NOTREADY.
    node.stop_pod(&id).await?;
    ensure!(
        state_of(&node, &id).await? == PodSandboxState::SandboxNotready as i32,
        "a stopped pod is not NOTREADY"
    );
    let pauses = node.pauses().await?;
    ensure!(
        pauses.iter().all(|p| Some(p.pid) != info.pid),
        "the pause survived Stop: {pauses:?}"
    );
    ensure!(
        !node.leases()?.contains_key(&info.ip),
        "the lease survived Stop"
    );
    // Stop cuts the host veth off the bridge at once and deletes it soon after.
    let ports = node.bridge_ports().await?;
    ensure!(
        !ports.contains(&host_veth(&id)),
        "the veth is still on the bridge after Stop: {ports:?}"
    );
    node.wait_veth_gone(&host_veth(&id)).await?;
    node.stop_pod(&id).await.context("a second Stop")?;

    // Remove: nothing of the pod is left (nftables may keep the per-subnet masquerade, nothing
    // of the pod), and it is unknown from now on.
    node.remove_pod(&id).await?;
    node.assert_gone(std::slice::from_ref(&info)).await?;
    ensure!(
        node.pod_ids().await?.is_empty(),
        "a removed pod is still listed"
    );
    let mut client = node.client().await?;
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await;
    common::expect_code(status, Code::NotFound, "PodSandboxStatus of a removed pod")?;
    node.remove_pod(&id).await.context("a second Remove")?;
    node.stop_pod(&id).await.context("Stop after Remove")?;

    node.assert_empty().await
}

#[tokio::test]
async fn remove_without_stop_cleans_up() -> Result<()> {
    let node = common::node().await?;
    let id = node.run_pod(&node.pod_config("direct-remove")).await?;
    let info = node.pod_info(&id).await?;
    node.remove_pod(&id).await?;
    node.assert_gone(&[info]).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn unknown_ids() -> Result<()> {
    let node = common::node().await?;
    let unknown = "0".repeat(64);
    let mut client = node.client().await?;
    let id = || unknown.clone();
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id(),
        })
        .await
        .context("StopPodSandbox of an unknown id must be OK")?;
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id(),
        })
        .await
        .context("RemovePodSandbox of an unknown id must be OK")?;
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id(),
            verbose: true,
        })
        .await;
    common::expect_code(status, Code::NotFound, "PodSandboxStatus of an unknown id")?;
    node.assert_empty().await
}

async fn listed(node: &Node, filter: PodSandboxFilter) -> Result<BTreeSet<String>> {
    let request = ListPodSandboxRequest {
        filter: Some(filter.clone()),
    };
    let response = node
        .client()
        .await?
        .list_pod_sandbox(request)
        .await
        .with_context(|| format!("ListPodSandbox {filter:?}"))?;
    Ok(response
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect())
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn labels(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn list_filters_by_id_prefix_state_and_labels() -> Result<()> {
    let node = common::node().await?;
    let a = node
        .run_pod(&node.pod_config("a").label("tier", "web"))
        .await?;
    let b = node
        .run_pod(&node.pod_config("b").label("tier", "db"))
        .await?;
    let c = node
        .run_pod(
            &node
                .pod_config("c")
                .label("tier", "web")
                .label("env", "prod"),
        )
        .await?;
    node.stop_pod(&b).await?;

    let all = listed(&node, PodSandboxFilter::default()).await?;
    ensure!(all == set(&[&a, &b, &c]), "unfiltered list: {all:?}");
    let items = node.list_pods().await?;
    for item in &items {
        ensure!(
            item.created_at > 0,
            "{} has created_at {}",
            item.id,
            item.created_at
        );
        let name = item
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or("");
        ensure!(
            ["a", "b", "c"].contains(&name),
            "{} is named {name:?}",
            item.id
        );
    }

    let by_id = |id: &str| PodSandboxFilter {
        id: id.to_owned(),
        ..Default::default()
    };
    ensure!(
        listed(&node, by_id(&a)).await? == set(&[&a]),
        "filter by id"
    );
    let prefix = (6..64)
        .map(|n| &a[..n])
        .find(|p| !b.starts_with(p) && !c.starts_with(p))
        .context("no unique prefix")?;
    let got = listed(&node, by_id(prefix)).await?;
    ensure!(
        got == set(&[&a]),
        "filter by unique prefix {prefix:?}: {got:?}"
    );
    ensure!(
        listed(&node, by_id(&"f".repeat(64))).await?.is_empty(),
        "unknown id listed"
    );

    let by_state = |state: PodSandboxState| PodSandboxFilter {
        state: Some(PodSandboxStateValue {
            state: state as i32,
        }),
        ..Default::default()
    };
    let ready = listed(&node, by_state(PodSandboxState::SandboxReady)).await?;
    ensure!(ready == set(&[&a, &c]), "READY pods: {ready:?}");
    let not_ready = listed(&node, by_state(PodSandboxState::SandboxNotready)).await?;
    ensure!(not_ready == set(&[&b]), "NOTREADY pods: {not_ready:?}");

    let by_labels = |pairs: &[(&str, &str)]| PodSandboxFilter {
        label_selector: labels(pairs),
        ..Default::default()
    };
    let web = listed(&node, by_labels(&[("tier", "web")])).await?;
    ensure!(web == set(&[&a, &c]), "tier=web: {web:?}");
    let prod = listed(&node, by_labels(&[("tier", "web"), ("env", "prod")])).await?;
    ensure!(prod == set(&[&c]), "tier=web,env=prod: {prod:?}");
    let none = listed(&node, by_labels(&[("tier", "cache")])).await?;
    ensure!(none.is_empty(), "tier=cache: {none:?}");

    let combined = PodSandboxFilter {
        id: a.clone(),
        ..by_state(PodSandboxState::SandboxNotready)
    };
    let got = listed(&node, combined).await?;
    ensure!(got.is_empty(), "id=a AND NOTREADY must be empty: {got:?}");

    for id in [&a, &b, &c] {
        node.stop_and_remove(id).await?;
    }
    node.assert_empty().await
}

#[tokio::test]
async fn version_status_and_unimplemented() -> Result<()> {
    let node = common::node().await?;
    let mut client = node.client().await?;
    let version = client
        .version(VersionRequest {
            version: "v1".to_owned(),
        })
        .await?
        .into_inner();
    ensure!(
        version.runtime_name == "peapod",
        "runtime_name {:?}",
        version.runtime_name
    );
    ensure!(
        version.runtime_api_version == "v1",
        "api version {:?}",
        version.runtime_api_version
    );
    ensure!(!version.runtime_version.is_empty(), "empty runtime_version");

    let status = client
        .status(StatusRequest { verbose: false })
        .await?
        .into_inner()
        .status
        .context("Status has no status")?;
    for wanted in ["RuntimeReady", "NetworkReady"] {
        let condition = status
            .conditions
            .iter()
            .find(|c| c.r#type == wanted)
            .with_context(|| format!("no {wanted} condition: {:?}", status.conditions))?;
        ensure!(condition.status, "{wanted} is false: {condition:?}");
    }

    let checkpoint = client
        .checkpoint_container(CheckpointContainerRequest {
            container_id: "0".repeat(64),
            location: "/tmp/nowhere.tar".to_owned(),
            timeout: 10,
        })
        .await;
    common::expect_code(checkpoint, Code::Unimplemented, "CheckpointContainer")
}

/// One owner: a second daemon on the same state dir refuses to start (and says why) instead
/// of sharing, and the first one keeps serving.
#[tokio::test]
async fn a_second_daemon_on_the_same_state_dir_is_refused() -> Result<()> {
    let node = common::node().await?;
    let id = node.run_pod(&node.pod_config("first")).await?;
    // `peapod serve` on `state` and `socket` beside the node's daemon: (exited ok, stderr).
    let second = |state: std::path::PathBuf, socket: std::path::PathBuf| {
        let node = &node;
        async move {
            let bins = peapod_tests::bin_dir();
            let (peapod, pause) = (bins.join("peapod"), bins.join("peapod-pause"));
            let out = node
                .exec_output(&[
                    peapod.to_str().context("bin path")?,
                    "serve",
                    "--state-dir",
                    state.to_str().context("state path")?,
                    "--socket",
                    socket.to_str().context("socket path")?,
                    "--pause-path",
                    pause.to_str().context("pause path")?,
                ])
                .await?;
            anyhow::Ok((
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    };
    let state = node.state_dir();
    let other_socket = node.dir().join("second.sock");
    let (ok, stderr) = second(state.clone(), other_socket.clone()).await?;
    ensure!(
        !ok && stderr.contains("another peapod is running"),
        "a second daemon on {} was not refused: {stderr}",
        state.display()
    );
    ensure!(!other_socket.exists(), "the refused daemon bound a socket");

    // Another state dir, the same socket: refused too, and the socket stays the first's.
    let (ok, stderr) = second(node.dir().join("second-state"), node.socket()).await?;
    ensure!(
        !ok && stderr.contains("another peapod is serving on socket"),
        "a second daemon on socket {} was not refused: {stderr}",
        node.socket().display()
    );
    ensure!(
        node.pod_status(&id).await.is_ok(),
        "the first daemon no longer answers on its socket"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state)?.permissions());
    ensure!(mode & 0o777 == 0o700, "state dir mode {mode:o}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(node.socket())?.permissions());
    ensure!(mode & 0o777 == 0o660, "socket mode {mode:o}");
    node.stop_and_remove(&id).await?;
    node.assert_empty().await
}

/// A pause killed from outside: the pod turns NotReady (never hangs), and Stop and Remove
/// still clean everything.
#[tokio::test]
async fn a_pause_killed_from_outside_makes_the_pod_not_ready() -> Result<()> {
    let node = common::node().await?;
    let id = node.run_pod(&node.pod_config("victim")).await?;
    let info = node.pod_info(&id).await?;
    node.exec(&["kill", "-KILL", &info.pause_pid()?.to_string()])
        .await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while state_of(&node, &id).await? != PodSandboxState::SandboxNotready as i32 {
        ensure!(
            std::time::Instant::now() < deadline,
            "the pod is still Ready 10s after its pause was killed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    node.stop_and_remove(&id).await?;
    node.assert_gone(&[info]).await?;
    node.assert_empty().await
}

/// A full state dir (a small tmpfs): RunPodSandbox fails with ResourceExhausted and a clear
/// message, leaves nothing half-made, and the running pod is untouched; the same for a
/// read-only one; once there is room again pods run, and every pod can be removed.
#[tokio::test]
async fn a_full_state_dir_fails_cleanly_and_spares_running_pods() -> Result<()> {
    // The state dir, as the daemon in the node sees it: a 512 KiB tmpfs.
    let (node, state) = common::node_on_small_state_dir("512k").await?;
    let ls = |dir: &'static str| {
        let (node, state) = (&node, &state);
        async move {
            let out = node.exec(&["ls", "-A", &format!("{state}/{dir}")]).await?;
            Ok::<Vec<String>, anyhow::Error>(out.lines().map(str::to_owned).collect())
        }
    };
    let keep = node.run_pod(&node.pod_config("keep")).await?;
    let keep_info = node.pod_info(&keep).await?;
    common::fill_state_dir(&node, &state, true).await?;
    let (pauses, pins, ports) = (
        node.pauses().await?.len(),
        node.pins().await?,
        node.bridge_ports().await?,
    );
    let (dirs, leases) = (ls("sandboxes").await?, ls("ipam/peapod").await?);
    // After a refused pod: nothing made, and the running pod untouched.
    let unchanged = || async {
        ensure!(node.pauses().await?.len() == pauses, "a pause was left");
        ensure!(node.pins().await? == pins, "a pin was left");
        node.assert_empty_of_extra_ports(&ports).await?;
        ensure!(ls("sandboxes").await? == dirs, "a sandbox dir was left");
        ensure!(ls("ipam/peapod").await? == leases, "a lease was left");
        ensure!(
            state_of(&node, &keep).await? == PodSandboxState::SandboxReady as i32,
            "the running pod was touched"
        );
        Ok::<(), anyhow::Error>(())
    };

    let mut client = node.client().await?;
    let result = client
        .run_pod_sandbox(node.pod_config("too-much").request())
        .await;
    match &result {
        Err(s) if s.code() == Code::ResourceExhausted && s.message().contains("No space") => {}
        other => anyhow::bail!("a pod on a full disk: expected ResourceExhausted, got {other:?}"),
    }
    unchanged().await?;

    common::fill_state_dir(&node, &state, false).await?;

    // A read-only state dir: refused with a clear error, nothing made, the pod untouched.
    common::state_dir_read_only(&node, &state, true).await?;
    let result = client
        .run_pod_sandbox(node.pod_config("read-only").request())
        .await;
    common::state_dir_read_only(&node, &state, false).await?;
    match &result {
        Err(s) if s.message().contains("Read-only file system") => {}
        other => anyhow::bail!("a pod on a read-only state dir: got {other:?}"),
    }
    unchanged().await?;

    let next = node.run_pod(&node.pod_config("room-again")).await?;
    for id in [&keep, &next] {
        node.stop_and_remove(id).await?;
    }
    ensure!(ls("sandboxes").await?.is_empty(), "sandbox dirs left");
    let leases = ls("ipam/peapod").await?;
    ensure!(
        leases.iter().all(|l| l.starts_with("last_reserved")),
        "leases left: {leases:?}"
    );
    node.assert_gone(&[keep_info]).await?;
    node.assert_empty().await
}
