//! peapod-bench: measures a CRI runtime's pod-sandbox and container paths over its unix socket.
//!
//! It talks plain CRI, so any runtime can be measured with the same client
//! (`--endpoint unix:///run/containerd/containerd.sock`). Phases, in order:
//! 1. ListPodSandbox and PodSandboxStatus latency with (nearly) no pods;
//! 2. `--pods` sequential RunPodSandbox, then StopPodSandbox + RemovePodSandbox per pod;
//!    the daemon's RSS is read while they all exist (with `--daemon-pid`);
//! 3. create+stop+remove cycles from `--clients` concurrent clients: cycles/s;
//! 4. ListPodSandbox and PodSandboxStatus latency with `--list-pods` pods;
//! 5. containers (see `containers`): `--containers` pods of one `--image` container each,
//!    create+start and end-to-end latency, per-pod RSS; skipped if the image is absent.
//!
//! Every pod and container it made is removed at the end, also after an error.

mod containers;
mod report;
mod services;
mod soak;
mod streaming;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use cri_api::v1::{
    ListPodSandboxRequest, PodSandboxStatusRequest, RemovePodSandboxRequest, StopPodSandboxRequest,
};
use peapod_tests::cri::{channel, endpoint_path};
use peapod_tests::{Client, PodConfig, random_hex};
use report::{Row, Samples, Target, Value};
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(
    name = "peapod-bench",
    about = "Benchmark a CRI runtime's pod sandbox and container paths"
)]
struct Args {
    /// CRI endpoint of the runtime under test.
    #[arg(long, default_value = "unix:///run/peapod/peapod.sock")]
    endpoint: String,
    /// Pods run, stopped and removed one after the other for the latency rows (>= 100).
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Concurrent clients for the throughput row.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Create+stop+remove cycles in the throughput row, shared by all clients.
    #[arg(long, default_value_t = 400)]
    cycles: usize,
    /// Pods present for the second List/Status rows.
    #[arg(long, default_value_t = 250)]
    list_pods: usize,
    /// Calls measured per List/Status row.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// cgroup_parent put in every request (empty: the runtime's default).
    #[arg(long, default_value = "")]
    cgroup_parent: String,
    /// Pid of the runtime daemon (in this pid namespace), to report its RSS.
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// The pause binary, to report its size.
    #[arg(long)]
    pause_binary: Option<PathBuf>,
    /// Soak instead of the table: churn pods, each with a container of `--image` if the
    /// runtime has it, with `--clients` clients for this many seconds, then check the daemon
    /// (needs `--daemon-pid`) and the node are back at their baseline.
    #[arg(long)]
    soak_secs: Option<u64>,
    /// Image of the container rows; they are skipped if the runtime does not have it.
    #[arg(long, default_value = "peapod.test/busybox:latest")]
    image: String,
    /// Pods of one container each for the container rows (>= 50).
    #[arg(long, default_value_t = 50)]
    containers: usize,
    /// Exec round trips and port-forward connections measured in the streaming rows
    /// (0: no streaming rows).
    #[arg(long, default_value_t = 100)]
    stream_rounds: usize,
    /// Connections measured per Service row (0: no Service rows; they need peapod.net.v1).
    #[arg(long, default_value_t = 200)]
    service_rounds: usize,
}

/// Makes pods with unique names and remembers every one not yet removed.
struct Pods {
    run: String,
    cgroup_parent: String,
    next: AtomicUsize,
    live: Mutex<Vec<String>>,
}

impl Pods {
    fn config(&self) -> PodConfig {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("bench-{}-{n}", self.run);
        PodConfig::new(&name)
            .namespace("peapod-bench")
            .uid(&format!("{}-{n}", self.run))
            .hostname(&format!("bench-{n}"))
            .cgroup_parent(&self.cgroup_parent)
    }

    async fn run(&self, client: &mut Client) -> Result<(String, Duration)> {
        self.run_config(client, &self.config()).await
    }

    /// RunPodSandbox of `config` (from [`Pods::config`]).
    async fn run_config(
        &self,
        client: &mut Client,
        config: &PodConfig,
    ) -> Result<(String, Duration)> {
        let start = Instant::now();
        let response = client.run_pod_sandbox(config.request()).await;
        let took = start.elapsed();
        let id = response
            .with_context(|| format!("RunPodSandbox {}", config.name))?
            .into_inner()
            .pod_sandbox_id;
        self.live.lock().expect("poisoned").push(id.clone());
        Ok((id, took))
    }

    async fn stop(&self, client: &mut Client, id: &str) -> Result<Duration> {
        let start = Instant::now();
        client
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            })
            .await
            .with_context(|| format!("StopPodSandbox {id}"))?;
        Ok(start.elapsed())
    }

    async fn remove(&self, client: &mut Client, id: &str) -> Result<Duration> {
        let start = Instant::now();
        client
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            })
            .await
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        self.live.lock().expect("poisoned").retain(|p| p != id);
        Ok(start.elapsed())
    }

    /// Stops and removes every pod still alive, `clients` at a time.
    async fn remove_all(self: &Arc<Self>, client: &Client, clients: usize) -> Result<()> {
        let ids: Vec<String> = self.live.lock().expect("poisoned").clone();
        let queue = Arc::new(Mutex::new(ids));
        let mut tasks = JoinSet::new();
        for _ in 0..clients.max(1) {
            let (pods, queue, mut client) = (Arc::clone(self), Arc::clone(&queue), client.clone());
            tasks.spawn(async move {
                loop {
                    let Some(id) = queue.lock().expect("poisoned").pop() else {
                        return anyhow::Ok(());
                    };
                    pods.stop(&mut client, &id).await?;
                    pods.remove(&mut client, &id).await?;
                }
            });
        }
        for result in tasks.join_all().await {
            result?;
        }
        Ok(())
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// The pause pid from a pod's verbose status (`info["info"].pid`), if the runtime reports one.
async fn pause_pid(client: &mut Client, id: &str) -> Option<u32> {
    let request = PodSandboxStatusRequest {
        pod_sandbox_id: id.to_owned(),
        verbose: true,
    };
    let info = client
        .pod_sandbox_status(request)
        .await
        .ok()?
        .into_inner()
        .info;
    let json: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    json.get("pid")?.as_u64()?.try_into().ok()
}

async fn list_and_status(
    client: &mut Client,
    samples: usize,
    id: Option<&str>,
) -> Result<(Samples, Samples)> {
    let (mut list, mut status) = (Samples::default(), Samples::default());
    for _ in 0..samples {
        let start = Instant::now();
        client
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .context("ListPodSandbox")?;
        list.push(start.elapsed());
        if let Some(id) = id {
            let start = Instant::now();
            client
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id.to_owned(),
                    verbose: false,
                })
                .await
                .context("PodSandboxStatus")?;
            status.push(start.elapsed());
        }
    }
    Ok((list, status))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn measure(
    args: &Args,
    pods: &Arc<Pods>,
    client: &mut Client,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let daemon_rss = || args.daemon_pid.and_then(rss_bytes);
    let row = |what: String, value, target| Row {
        what,
        value,
        target,
    };
    let existing = client
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items
        .len();
    rows.push(row(
        "daemon RSS, idle".into(),
        Value::Bytes(daemon_rss()),
        Target::None,
    ));

    // 1. List and Status with (nearly) nothing there: Status needs one pod.
    let (list, _) = list_and_status(client, args.samples, None).await?;
    rows.push(row(
        format!("ListPodSandbox, {existing} pods"),
        Value::Latency(list),
        Target::None,
    ));
    let (probe, _) = pods.run(client).await?;
    let (_, status) = list_and_status(client, args.samples, Some(&probe)).await?;
    rows.push(row(
        "PodSandboxStatus, 1 pod".into(),
        Value::Latency(status),
        Target::None,
    ));
    pods.stop(client, &probe).await?;
    pods.remove(client, &probe).await?;

    // 2. Sequential run, then stop + remove per pod.
    let mut run = Samples::default();
    let mut stop = Samples::default();
    let mut remove = Samples::default();
    let mut both = Samples::default();
    let mut ids = Vec::new();
    for _ in 0..args.pods {
        let (id, took) = pods.run(client).await?;
        run.push(took);
        ids.push(id);
    }
    let with_pods = daemon_rss();
    let pause_rss = match ids.first() {
        Some(id) => pause_pid(client, id).await.and_then(rss_bytes),
        None => None,
    };
    for id in &ids {
        let s = pods.stop(client, id).await?;
        let r = pods.remove(client, id).await?;
        stop.push(s);
        remove.push(r);
        both.push(s + r);
    }
    let n = args.pods;
    rows.push(row(
        format!("RunPodSandbox, {n} sequential"),
        Value::Latency(run),
        Target::P50Under(ms(10)),
    ));
    rows.push(row(
        format!("StopPodSandbox, {n} sequential"),
        Value::Latency(stop),
        Target::None,
    ));
    rows.push(row(
        format!("RemovePodSandbox, {n} sequential"),
        Value::Latency(remove),
        Target::None,
    ));
    rows.push(row(
        "Stop + Remove, per pod".into(),
        Value::Latency(both),
        Target::P50Under(ms(10)),
    ));
    rows.push(row(
        format!("daemon RSS, {n} pods"),
        Value::Bytes(with_pods),
        Target::BytesUnder(20 << 20),
    ));
    rows.push(row(
        "pause RSS".into(),
        Value::Bytes(pause_rss),
        Target::BytesUnder(128 << 10),
    ));

    // 3. Throughput: create+stop+remove cycles from concurrent clients.
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..args.clients.max(1) {
        let (pods, done, mut client) = (Arc::clone(pods), Arc::clone(&done), client.clone());
        let cycles = args.cycles;
        tasks.spawn(async move {
            while done.fetch_add(1, Ordering::Relaxed) < cycles {
                let (id, _) = pods.run(&mut client).await?;
                pods.stop(&mut client, &id).await?;
                pods.remove(&mut client, &id).await?;
            }
            anyhow::Ok(())
        });
    }
    for result in tasks.join_all().await {
        result?;
    }
    let rate = args.cycles as f64 / start.elapsed().as_secs_f64();
    rows.push(row(
        format!("create+remove cycles, {} clients", args.clients),
        Value::Rate(rate),
        Target::RateOver(100.0),
    ));

    // 4. List and Status with many pods, made concurrently.
    let made = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..args.clients.max(1) {
        let (pods, made, mut client) = (Arc::clone(pods), Arc::clone(&made), client.clone());
        let want = args.list_pods;
        tasks.spawn(async move {
            while made.fetch_add(1, Ordering::Relaxed) < want {
                pods.run(&mut client).await?;
            }
            anyhow::Ok(())
        });
    }
    for result in tasks.join_all().await {
        result?;
    }
    let some = pods.live.lock().expect("poisoned").first().cloned();
    let (list, status) = list_and_status(client, args.samples, some.as_deref()).await?;
    let m = args.list_pods;
    rows.push(row(
        format!("ListPodSandbox, {m} pods"),
        Value::Latency(list),
        Target::P50Under(ms(5)),
    ));
    rows.push(row(
        format!("PodSandboxStatus, {m} pods"),
        Value::Latency(status),
        Target::None,
    ));
    pods.remove_all(client, args.clients).await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let socket = endpoint_path(&args.endpoint)?;
    let channel = channel(&socket).await?;
    let mut client = Client::new(channel.clone());
    let pods = Arc::new(Pods {
        run: random_hex(3),
        cgroup_parent: args.cgroup_parent.clone(),
        next: AtomicUsize::new(0),
        live: Mutex::new(Vec::new()),
    });
    if let Some(secs) = args.soak_secs {
        let pid = args.daemon_pid.context("--soak-secs needs --daemon-pid")?;
        let containers = if containers::image_present(channel.clone(), &args.image).await? {
            Some(Arc::new(containers::Containers::new(&args.image)?))
        } else {
            println!(
                "soak: pods only: the runtime has no image {} (import or pull it, or pass --image)",
                args.image
            );
            None
        };
        let s = soak::Soak {
            pods: &pods,
            containers: containers.clone(),
            client: &client,
            clients: args.clients,
            daemon_pid: pid,
            cgroup_dir: PathBuf::from("/sys/fs/cgroup/memory")
                .join(args.cgroup_parent.trim_start_matches('/')),
        };
        let result = soak::soak(&s, secs).await;
        if result.is_err() {
            if let Some(c) = &containers {
                let _ = c.remove_all(&mut client).await;
            }
            let _ = pods.remove_all(&client, args.clients).await;
        }
        return result;
    }
    let mut rows = Vec::new();
    if let Some(path) = &args.pause_binary {
        let size = std::fs::metadata(path).map(|m| m.len()).ok();
        rows.push(Row {
            what: "pause binary size".into(),
            value: Value::Bytes(size),
            target: Target::BytesUnder(32 << 10),
        });
    }
    let started = Instant::now();
    let ctrs = containers::Containers::new(&args.image)?;
    let mut note = None;
    let mut result = measure(&args, &pods, &mut client, &mut rows).await;
    if result.is_ok() {
        result = match containers::image_present(channel.clone(), &args.image).await {
            Ok(true) => {
                let r = ctrs
                    .measure(args.containers, &pods, &mut client, &mut rows)
                    .await;
                let r = match r {
                    Ok(()) if args.stream_rounds > 0 => {
                        streaming::measure(&ctrs, &pods, &mut client, args.stream_rounds, &mut rows)
                            .await
                    }
                    r => r,
                };
                match r {
                    Ok(()) if args.service_rounds > 0 => {
                        services::measure(
                            &ctrs,
                            &pods,
                            &mut client,
                            channel.clone(),
                            args.service_rounds,
                            &mut rows,
                        )
                        .await
                    }
                    r => r,
                }
            }
            Ok(false) => {
                note = Some(format!(
                    "container rows skipped: the runtime has no image {} (import or pull it, \
                     or pass --image)",
                    args.image
                ));
                Ok(())
            }
            Err(e) => Err(e),
        };
    }
    if result.is_err() {
        let left = pods.live.lock().expect("poisoned").len();
        eprintln!("peapod-bench: failed; removing the containers and {left} pods it left");
        if let Err(err) = ctrs.remove_all(&mut client).await {
            eprintln!("peapod-bench: removing containers failed too: {err:#}");
        }
        if let Err(err) = pods.remove_all(&client, args.clients).await {
            eprintln!("peapod-bench: cleanup failed too: {err:#}");
        }
    }
    print!("{}", report::table(&rows));
    if let Some(note) = note {
        println!("{note}");
    }
    println!(
        "({} in {:.1}s)",
        args.endpoint,
        started.elapsed().as_secs_f64()
    );
    result
}
