//! The Service rows (peapod.net.v1, peapod only): TCP connection setup from a client pod to a
//! Service's cluster IP with 1, 1,000 and 10,000 Services loaded (the same client, so the
//! curve shows whether the per-packet cost grows with the count), against the backend's pod
//! IP directly; the time to load 10,000 Services × 2 endpoints in one ApplyServices; and one
//! Service's SetEndpoints with 10,000 loaded.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};
use peapod_proto::net::v1 as pb;
use peapod_proto::net::v1::services_client::ServicesClient;
use peapod_tests::Client;
use tonic::transport::Channel;

use super::Pods;
use super::containers::Containers;
use super::report::{Row, Samples, Target, Value};

/// `n` Services `s<i>` at 10.100.x.y:80 → port 8080 of `backends`.
fn many(n: u32, backends: &[String]) -> Vec<pb::Service> {
    (0..n)
        .map(|i| pb::Service {
            namespace: "peapod-bench".into(),
            name: format!("s{i}"),
            cluster_ip: cluster_ip(i).ip().to_string(),
            ports: vec![pb::ServicePort {
                port: 80,
                target_port: 8080,
                ..Default::default()
            }],
            endpoints: backends
                .iter()
                .map(|ip| pb::Endpoint {
                    ip: ip.clone(),
                    ready: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect()
}

fn cluster_ip(i: u32) -> SocketAddr {
    SocketAddr::from(([10, 100, (i / 250) as u8, (i % 250 + 1) as u8], 80))
}

/// `rounds` TCP connection setups to each of `targets`, from inside pod `pod`'s network
/// namespace (on a thread of its own that entered it: never a tokio thread).
async fn connect_times(pod: &str, targets: Vec<SocketAddr>, rounds: usize) -> Result<Vec<Samples>> {
    let path = format!("/run/netns/peapod-{pod}");
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> Result<Vec<Samples>> {
            let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            setns(&ns, CloneFlags::CLONE_NEWNET).context("setns into the client pod")?;
            let mut out = Vec::new();
            for t in targets {
                let mut s = Samples::default();
                for _ in 0..rounds {
                    let start = Instant::now();
                    let c = TcpStream::connect_timeout(&t, Duration::from_secs(2))
                        .with_context(|| format!("connect {t}"))?;
                    s.push(start.elapsed());
                    drop(c);
                }
                out.push(s);
            }
            Ok(out)
        })
        .join()
        .expect("no panic")
    })
    .await
    .expect("no panic")
}

pub async fn measure(
    ctrs: &Containers,
    pods: &Pods,
    client: &mut Client,
    channel: Channel,
    rounds: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let mut svc = ServicesClient::new(channel);
    match svc.list_services(pb::ListServicesRequest::default()).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            println!("service rows skipped: the runtime has no peapod.net.v1 Services");
            return Ok(());
        }
        Err(s) => bail!("ListServices: {s}"),
    }
    let mut made = Vec::new();
    let mut client_pod = None;
    let result = async {
        let mut backends = Vec::new();
        for _ in 0..2 {
            let m = ctrs
                .run_pod_with(pods, client, &["httpd", "-f", "-p", "8080", "-h", "/"])
                .await?;
            backends.push(pod_ip(client, &m.pod).await?);
            made.push(m);
        }
        let (pod, _) = pods.run(client).await?;
        let pod = client_pod.insert(pod);
        let direct: SocketAddr = format!("{}:8080", backends[0]).parse()?;
        wait_listening(pod, direct).await?;
        rows_for(&mut svc, pod, &backends, direct, rounds, rows).await
    }
    .await;
    let _ = svc
        .apply_services(pb::ApplyServicesRequest {
            services: vec![],
            prune: true,
        })
        .await;
    for m in made {
        let _ = ctrs.remove(client, &m.id).await;
        let _ = pods.stop(client, &m.pod).await;
        let _ = pods.remove(client, &m.pod).await;
    }
    if let Some(pod) = client_pod {
        let _ = pods.stop(client, &pod).await;
        let _ = pods.remove(client, &pod).await;
    }
    result
}

async fn pod_ip(client: &mut Client, pod: &str) -> Result<String> {
    let status = client
        .pod_sandbox_status(cri_api::v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        })
        .await?
        .into_inner();
    status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .context("no pod IP")
}

/// httpd starts after the container does: wait until it takes connections.
async fn wait_listening(client_pod: &str, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect_times(client_pod, vec![addr], 1).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("the backend never listened");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn rows_for(
    svc: &mut ServicesClient<Channel>,
    client_pod: &str,
    backends: &[String],
    direct: SocketAddr,
    rounds: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let mut latency = |what: String, s: Samples, target| {
        rows.push(Row {
            what,
            value: Value::Latency(s),
            target,
        })
    };
    let [d] = <[Samples; 1]>::try_from(connect_times(client_pod, vec![direct], rounds).await?)
        .ok()
        .context("one")?;
    latency(
        "connection setup to a pod IP (no Service)".into(),
        d,
        Target::None,
    );
    let mut apply_10k = Samples::default();
    for n in [1u32, 1_000, 10_000] {
        let start = Instant::now();
        svc.apply_services(pb::ApplyServicesRequest {
            services: many(n, backends),
            prune: true,
        })
        .await?;
        if n == 10_000 {
            apply_10k.push(start.elapsed());
        }
        let mut targets = vec![cluster_ip(n - 1)];
        if n > 1 {
            targets.insert(0, cluster_ip(0));
        }
        let samples = connect_times(client_pod, targets, rounds).await?;
        let mut names = Vec::new();
        if n > 1 {
            names.push("the first".to_owned());
        }
        names.push(if n == 1 {
            "it".into()
        } else {
            format!("the {n}th")
        });
        for (s, name) in samples.into_iter().zip(names) {
            latency(
                format!("Service connection setup, {n} Services loaded, to {name}"),
                s,
                Target::None,
            );
        }
    }
    latency(
        "apply 10,000 Services x 2 endpoints (one transaction)".into(),
        apply_10k,
        Target::None,
    );
    let mut update = Samples::default();
    for i in 0..20 {
        let start = Instant::now();
        svc.set_endpoints(pb::SetEndpointsRequest {
            namespace: "peapod-bench".into(),
            name: "s5000".into(),
            endpoints: vec![pb::Endpoint {
                ip: backends[i % 2].clone(),
                ready: true,
                ..Default::default()
            }],
        })
        .await?;
        update.push(start.elapsed());
    }
    latency(
        "one Service's endpoints changed, 10,000 loaded".into(),
        update,
        Target::P50Under(Duration::from_millis(50)),
    );
    // A Service that comes and goes: its chain and map elements too (nft's path).
    let (mut added, mut removed) = (Samples::default(), Samples::default());
    let extra = many(10_001, backends).pop().context("one more Service")?;
    for _ in 0..10 {
        let start = Instant::now();
        svc.add_service(pb::AddServiceRequest {
            service: Some(extra.clone()),
            replace: false,
        })
        .await?;
        added.push(start.elapsed());
        let start = Instant::now();
        svc.remove_service(pb::RemoveServiceRequest {
            namespace: extra.namespace.clone(),
            name: extra.name.clone(),
        })
        .await?;
        removed.push(start.elapsed());
    }
    latency(
        "one Service added, 10,000 loaded".into(),
        added,
        Target::P50Under(Duration::from_millis(50)),
    );
    latency(
        "one Service removed, 10,000 loaded".into(),
        removed,
        Target::P50Under(Duration::from_millis(50)),
    );
    Ok(())
}
