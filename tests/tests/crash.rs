//! Crash injection: the daemon is SIGKILLed at a random moment while clients create, stop and
//! remove pods — and, every fourth time, create, start, stop and remove containers in pods
//! made before — then restarted, over and over. After every restart each pod is whole (Ready,
//! with its pin, its veth on the bridge and a lease naming it) or NotReady (and removable), no
//! IP is leased twice, no lease, pin or veth belongs to no pod; every Running container has
//! its process in its pod's netns and its monitor, and nothing of a container (dir, monitor,
//! socket, process, `/dev/shm` mount) is left that no container or pod accounts for; and
//! after removing everything nothing is left in the kernel or on disk.
//!
//! `PEAPOD_CRASH_ITERATIONS` sets the number of crashes (default 200); the random seed is
//! printed, and `PEAPOD_CRASH_SEED` replays one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cri_api::v1::{
    ContainerState, CreateContainerRequest, PodSandboxState, PodSandboxStatusRequest, Protocol,
    RemoveContainerRequest, RemovePodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use peapod_tests::containers::{BUSYBOX, container_config};
use peapod_tests::{Node, PodConfig, cri, host_veth};

/// Container clients, each in its own pod, in the iterations with containers.
const CONTAINER_CLIENTS: u64 = 2;

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

/// One client's container churn in a pod made before: create a container, start it,
/// sometimes stop it, mostly remove it; again. Errors are ignored, as in [`churn`].
async fn container_churn(
    socket: PathBuf,
    pod: String,
    config: PodConfig,
    names: Vec<String>,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    for name in names {
        let Ok(mut c) = cri::connect(&socket).await else {
            return;
        };
        let create = CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(&name, BUSYBOX, &["sleep", "1000"])),
            sandbox_config: Some(config.build()),
        };
        let Ok(r) = c.create_container(create).await else {
            return;
        };
        let container_id = r.into_inner().container_id;
        let start = StartContainerRequest {
            container_id: container_id.clone(),
        };
        if c.start_container(start).await.is_err() {
            return;
        }
        if rng.below(2) == 0 {
            let stop = StopContainerRequest {
                container_id: container_id.clone(),
                timeout: 0,
            };
            if c.stop_container(stop).await.is_err() {
                return;
            }
        }
        if rng.below(4) == 0 {
            continue; // leave some containers behind, running or stopped
        }
        let rm = RemoveContainerRequest { container_id };
        if c.remove_container(rm).await.is_err() {
            return;
        }
    }
}

/// Every Running container alive in its pod; nothing of a container beyond what the
/// containers and pods account for.
async fn check_containers(node: &Node, iteration: u64) -> Result<usize> {
    let pods: Vec<String> = node.list_pods().await?.into_iter().map(|p| p.id).collect();
    node.assert_no_container_leftovers(&pods)
        .await
        .with_context(|| format!("#{iteration}"))?;
    let ctrs = node.list_containers().await?;
    let running: Vec<String> = ctrs
        .iter()
        .filter(|c| c.state == ContainerState::ContainerRunning as i32)
        .map(|c| c.id.clone())
        .collect();
    node.assert_containers_alive(&running)
        .await
        .with_context(|| format!("#{iteration}"))?;
    Ok(ctrs.len())
}

/// Pods for the container clients, made (outside the crash window) where missing or not
/// Ready.
async fn container_pods(
    node: &Node,
    pods: &mut Vec<(String, PodConfig)>,
    iteration: u64,
) -> Result<()> {
    let ready: BTreeSet<String> = node
        .list_pods()
        .await?
        .into_iter()
        .filter(|p| p.state == PodSandboxState::SandboxReady as i32)
        .map(|p| p.id)
        .collect();
    pods.retain(|(id, _)| ready.contains(id));
    let mut k = 0;
    while pods.len() < CONTAINER_CLIENTS as usize {
        k += 1;
        let config = node.pod_config(&format!("ctr-{iteration}-{k}"));
        let id = node.run_pod(&config).await?;
        pods.push((id, config));
    }
    Ok(())
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
    // The hostPort maps hold exactly what the pods' records list (the start-up collected the
    // rest, and made again what a crash in a stop had taken but not yet recorded).
    let mut recorded = BTreeSet::new();
    for pod in &pods {
        let info = node.pod_info(&pod.id).await?;
        for id in info.raw["network"]["rules"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let id = id.as_str().context("a rule id that is no string")?;
            recorded.insert(element_of_rule(id).with_context(|| format!("rule id {id:?}"))?);
        }
    }
    let elements: BTreeSet<String> = node.hostport_elements().await?.into_iter().collect();
    ensure!(
        elements == recorded,
        "#{iteration}: the hostPort maps hold {elements:?}, the records {recorded:?}"
    );
    let owned_veths: BTreeSet<String> = ids.iter().map(|id| host_veth(id)).collect();
    for port in &ports {
        ensure!(
            owned_veths.contains(port),
            "#{iteration}: bridge port {port} belongs to no pod"
        );
    }
    Ok(())
}

/// A recorded rule id (`hostport tcp *:8080 10.88.0.5:80`) as [`Node::hostport_elements`]
/// shows the element (`hostports_any: tcp . 8080 : 10.88.0.5 . 80`).
fn element_of_rule(id: &str) -> Result<String> {
    let words: Vec<&str> = id.split(' ').collect();
    let ["hostport", protocol, host, pod] = words[..] else {
        bail!("not a hostPort element id");
    };
    let (host_ip, host_port) = host.rsplit_once(':').context("no host port")?;
    let (pod_ip, pod_port) = pod.rsplit_once(':').context("no pod port")?;
    Ok(match host_ip {
        "*" => format!("hostports_any: {protocol} . {host_port} : {pod_ip} . {pod_port}"),
        ip => format!("hostports: {ip} . {protocol} . {host_port} : {pod_ip} . {pod_port}"),
    })
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
    node.import_busybox().await?;
    const CLIENTS: u64 = 4;
    let mut survivors_seen = 0;
    let mut containers_seen = 0;
    let mut ctr_pods = Vec::new();
    for i in 0..iterations {
        // Containers every fourth time, in pods made before the crash window opens.
        let with_containers = i % 4 == 1;
        if with_containers {
            container_pods(&node, &mut ctr_pods, i).await?;
        }
        let mut tasks = Vec::new();
        // Fewer pod clients when the window is wider, so that pods do not pile up.
        let pod_clients = if with_containers {
            CLIENTS / 2
        } else {
            CLIENTS
        };
        for c in 0..pod_clients {
            // Fresh names each iteration, so that a leftover pod never blocks a name.
            let configs = (0..3)
                .map(|k| {
                    // A hostPort each, one no other pod of the run asks for.
                    let port = 10_000 + ((i * 16 + c * 4 + k) % 50_000) as i32;
                    node.pod_config(&format!("crash-{i}-{c}-{k}"))
                        .port(Protocol::Tcp, "", port, 80)
                })
                .collect();
            tasks.push(tokio::spawn(churn(node.socket(), configs, rng.next())));
        }
        if with_containers {
            for (c, (pod, config)) in ctr_pods.iter().enumerate() {
                let names = (0..3).map(|k| format!("ctr-{i}-{c}-{k}")).collect();
                let churn = container_churn(
                    node.socket(),
                    pod.clone(),
                    config.clone(),
                    names,
                    rng.next(),
                );
                tasks.push(tokio::spawn(churn));
            }
        }
        let window = if with_containers { 150_000 } else { 40_000 };
        tokio::time::sleep(Duration::from_micros(rng.below(window))).await;
        node.kill_daemon().await?;
        for t in tasks {
            let _ = t.await;
        }
        node.start_daemon().await?;
        check_invariants(&node, i)
            .await
            .with_context(|| format!("after crash #{i} (PEAPOD_CRASH_SEED={seed})"))?;
        let containers = check_containers(&node, i)
            .await
            .with_context(|| format!("after crash #{i} (PEAPOD_CRASH_SEED={seed})"))?;
        containers_seen += containers;
        // Keep the node from filling up: remove what is left now and then, checking that
        // every pod, whole or not, can be removed.
        let pods = node.list_pods().await?;
        survivors_seen += pods.len();
        if pods.len() > 20 || containers > 12 || i + 1 == iterations {
            check_reachable(&node, i).await?;
            for p in &pods {
                node.remove_pod(&p.id)
                    .await
                    .with_context(|| format!("#{i}: removing {}", p.id))?;
            }
            node.assert_empty()
                .await
                .with_context(|| format!("after crash #{i} and removing every pod"))?;
            node.assert_no_container_leftovers(&[])
                .await
                .with_context(|| format!("after crash #{i} and removing every pod"))?;
            ensure!(
                node.shm_mounts().await?.is_empty(),
                "#{i}: pod /dev/shm mounts left after removing every pod"
            );
        }
    }
    println!(
        "crash injection: {iterations} crashes, {survivors_seen} pod-survivals and \
         {containers_seen} container-survivals checked"
    );
    Ok(())
}
