//! Crash injection: the daemon is SIGKILLed at a random moment while clients create, stop and
//! remove pods, then restarted, over and over. After every restart each pod is whole (Ready,
//! with its pin, its veth on the bridge and a lease naming it) or NotReady (and removable), no
//! IP is leased twice, no lease, pin or veth belongs to no pod; and after removing everything
//! nothing is left in the kernel or on disk.
//!
//! `PEAPOD_CRASH_ITERATIONS` sets the number of crashes (default 200); the random seed is
//! printed, and `PEAPOD_CRASH_SEED` replays one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_cri::v1::{
    PodSandboxState, PodSandboxStatusRequest, RemovePodSandboxRequest, StopPodSandboxRequest,
};
use peapod_tests::{Node, PodConfig, cri, host_veth};

/// xorshift64*: enough randomness for timing and choices, replayable from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One client's churn: run a pod, sometimes stop it first, remove it; again. Errors are
/// expected (the daemon dies under it) and ignored; the invariants are checked afterwards.
async fn churn(socket: PathBuf, configs: Vec<PodConfig>, seed: u64) {
    let mut rng = Rng(seed | 1);
    for config in configs.iter().cycle() {
        let Ok(mut c) = cri::connect(&socket).await else {
            return;
        };
        let Ok(r) = c.run_pod_sandbox(config.request()).await else {
            return;
        };
        let id = r.into_inner().pod_sandbox_id;
        if rng.below(2) == 0 {
            let stop = StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            if c.stop_pod_sandbox(stop).await.is_err() {
                return;
            }
        }
        if rng.below(4) == 0 {
            continue; // leave some pods behind, Ready or stopped
        }
        let rm = RemovePodSandboxRequest { pod_sandbox_id: id };
        if c.remove_pod_sandbox(rm).await.is_err() {
            return;
        }
    }
}

/// Every pod whole or NotReady, nothing owned by no pod, no IP twice.
async fn check_invariants(node: &Node, iteration: u64) -> Result<()> {
    let pods = node.list_pods().await?;
    let leases = node.leases()?;
    let pins: BTreeSet<String> = node.pins().await?.into_iter().collect();
    let ports: BTreeSet<String> = node.bridge_ports().await?.into_iter().collect();
    let mut client = node.client().await?;
    let mut ips: BTreeMap<String, String> = BTreeMap::new();
    let ids: BTreeSet<&String> = pods.iter().map(|p| &p.id).collect();
    for pod in &pods {
        let status = client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no status")?;
        if status.state != PodSandboxState::SandboxReady as i32 {
            continue;
        }
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ensure!(
            !ip.is_empty(),
            "#{iteration}: Ready pod {} has no IP",
            pod.id
        );
        if let Some(other) = ips.insert(ip.clone(), pod.id.clone()) {
            bail!("#{iteration}: {ip} belongs to both {other} and {}", pod.id);
        }
        ensure!(
            leases.get(&ip) == Some(&pod.id),
            "#{iteration}: Ready pod {} has {ip} but the lease says {:?}",
            pod.id,
            leases.get(&ip)
        );
        ensure!(
            pins.contains(&format!("peapod-{}", pod.id)),
            "#{iteration}: Ready pod {} has no netns pin",
            pod.id
        );
        ensure!(
            ports.contains(&host_veth(&pod.id)),
            "#{iteration}: Ready pod {} has no veth on the bridge",
            pod.id
        );
    }
    for (ip, owner) in &leases {
        ensure!(
            ids.contains(owner),
            "#{iteration}: lease {ip} names {owner}, which is no pod"
        );
    }
    for pin in &pins {
        let id = pin.trim_start_matches("peapod-");
        ensure!(
            ids.contains(&id.to_owned()),
            "#{iteration}: pin {pin} belongs to no pod"
        );
    }
    let owned_veths: BTreeSet<String> = ids.iter().map(|id| host_veth(id)).collect();
    for port in &ports {
        ensure!(
            owned_veths.contains(port),
            "#{iteration}: bridge port {port} belongs to no pod"
        );
    }
    Ok(())
}

/// Every Ready pod answers TCP on its IP, from the node.
async fn check_reachable(node: &Node, iteration: u64) -> Result<()> {
    let mut client = node.client().await?;
    for pod in node.list_pods().await? {
        if pod.state != PodSandboxState::SandboxReady as i32 {
            continue;
        }
        let status = client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await?
            .into_inner();
        let ip = status.status.and_then(|s| s.network).map(|n| n.ip);
        let addr = format!("{}:7000", ip.context("no network status")?);
        let listener = node.listen_in_pod(&pod.id, &addr, 1).await?;
        let probe = node.probe_path().to_str().context("probe path")?.to_owned();
        node.exec(&[&probe, "connect", &addr])
            .await
            .with_context(|| format!("#{iteration}: Ready pod {} unreachable at {addr}", pod.id))?;
        listener.finish().await?;
    }
    Ok(())
}

#[tokio::test]
async fn sigkill_at_random_moments_loses_and_leaks_nothing() -> Result<()> {
    let iterations: u64 = std::env::var("PEAPOD_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("PEAPOD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("crash injection: {iterations} iterations, PEAPOD_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let mut node = common::node().await?;
    const CLIENTS: u64 = 4;
    let mut survivors_seen = 0;
    for i in 0..iterations {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            // Fresh names each iteration, so that a leftover pod never blocks a name.
            let configs = (0..3)
                .map(|k| node.pod_config(&format!("crash-{i}-{c}-{k}")))
                .collect();
            tasks.push(tokio::spawn(churn(node.socket(), configs, rng.next())));
        }
        tokio::time::sleep(Duration::from_micros(rng.below(40_000))).await;
        node.kill_daemon().await?;
        for t in tasks {
            let _ = t.await;
        }
        node.start_daemon().await?;
        check_invariants(&node, i)
            .await
            .with_context(|| format!("after crash #{i} (PEAPOD_CRASH_SEED={seed})"))?;
        // Keep the node from filling up: remove what is left now and then, checking that
        // every pod, whole or not, can be removed.
        let pods = node.list_pods().await?;
        survivors_seen += pods.len();
        if pods.len() > 20 || i + 1 == iterations {
            check_reachable(&node, i).await?;
            for p in &pods {
                node.remove_pod(&p.id)
                    .await
                    .with_context(|| format!("#{i}: removing {}", p.id))?;
            }
            node.assert_empty()
                .await
                .with_context(|| format!("after crash #{i} and removing every pod"))?;
        }
    }
    println!("crash injection: {iterations} crashes, {survivors_seen} pod-survivals checked");
    Ok(())
}
