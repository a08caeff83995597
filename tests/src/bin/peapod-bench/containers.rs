//! The container rows: `--containers` pods, one after the other, each RunPodSandbox +
//! CreateContainer + StartContainer of one `sleep 3600` container of `--image`; then the
//! per-pod RSS overhead (pause + the container's monitor) while they all run; then
//! StopContainer + RemoveContainer per container and the pods go.
//!
//! The image must be on the runtime already: without it (ImageStatus answers no image) the
//! rows are skipped with a note. Container logs go to a temp dir removed at the end.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cri_api::v1::image_service_client::ImageServiceClient;
use cri_api::v1::{
    ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec, ImageStatusRequest,
    RemoveContainerRequest, StartContainerRequest, StopContainerRequest,
};
use peapod_tests::Client;
use peapod_tests::containers::container_config;
use tonic::transport::Channel;

use super::report::{Row, Samples, Target, Value};
use super::{Pods, ms, pause_pid, rss_bytes};

/// Remembers every container made and not yet removed, and where their logs go.
pub struct Containers {
    image: String,
    logs: tempfile::TempDir,
    live: Mutex<Vec<String>>,
}

/// A pod with its one container, just started.
pub struct Made {
    pub pod: String,
    pub id: String,
    log_dir: PathBuf,
    /// CreateContainer + StartContainer.
    create_start: Duration,
    /// RunPodSandbox + CreateContainer + StartContainer.
    end_to_end: Duration,
}

/// Whether the runtime has `image` (ImageStatus returns one).
pub async fn image_present(channel: Channel, image: &str) -> Result<bool> {
    let request = ImageStatusRequest {
        image: Some(ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        verbose: false,
    };
    let response = ImageServiceClient::new(channel)
        .image_status(request)
        .await
        .with_context(|| format!("ImageStatus {image}"))?;
    Ok(response.into_inner().image.is_some())
}

/// The monitor pid from a container's verbose status (`info["info"].monitorPid`): peapod
/// reports it; other runtimes do not, and the RSS row says n/a.
async fn monitor_pid(client: &mut Client, id: &str) -> Option<u32> {
    let request = ContainerStatusRequest {
        container_id: id.to_owned(),
        verbose: true,
    };
    let info = client
        .container_status(request)
        .await
        .ok()?
        .into_inner()
        .info;
    let json: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    json.get("monitorPid")?.as_u64()?.try_into().ok()
}

/// Total VmRSS of the processes whose argv[0] passes `wanted` (`peapod` is what monitors
/// call themselves).
fn rss_where(wanted: impl Fn(&str) -> bool) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
                wanted(&String::from_utf8_lossy(argv0))
            })
        })
        .filter_map(rss_bytes)
        .sum()
}

/// Pause + monitor VmRSS of one pod, if both pids are known.
async fn pod_overhead(client: &mut Client, pod: &str, container: &str) -> Option<u64> {
    let pause = rss_bytes(pause_pid(client, pod).await?)?;
    let monitor = rss_bytes(monitor_pid(client, container).await?)?;
    Some(pause + monitor)
}

impl Containers {
    pub fn new(image: &str) -> Result<Containers> {
        let logs = tempfile::Builder::new()
            .prefix("peapod-bench-logs-")
            .tempdir()
            .context("make a temp dir for the container logs")?;
        Ok(Containers {
            image: image.to_owned(),
            logs,
            live: Mutex::new(Vec::new()),
        })
    }

    /// RunPodSandbox, then CreateContainer + StartContainer of `sleep 3600`.
    async fn run_pod_with_container(&self, pods: &Pods, client: &mut Client) -> Result<Made> {
        self.run_pod_with(pods, client, &["sleep", "3600"]).await
    }

    /// RunPodSandbox, then CreateContainer + StartContainer of `cmd`.
    pub async fn run_pod_with(
        &self,
        pods: &Pods,
        client: &mut Client,
        cmd: &[&str],
    ) -> Result<Made> {
        let mut config = pods.config();
        config.log_directory = self.log_dir(&config.name).display().to_string();
        let start = Instant::now();
        let (pod, _) = pods.run_config(client, &config).await?;
        let created = Instant::now();
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("bench", &self.image, cmd)),
            sandbox_config: Some(config.build()),
        };
        let id = client
            .create_container(request)
            .await
            .with_context(|| format!("CreateContainer in {pod}"))?
            .into_inner()
            .container_id;
        self.live.lock().expect("poisoned").push(id.clone());
        client
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {id}"))?;
        let end = Instant::now();
        Ok(Made {
            log_dir: self.log_dir(&config.name),
            pod,
            id,
            create_start: end - created,
            end_to_end: end - start,
        })
    }

    /// StopContainer (no grace: `sleep` would not mind) + RemoveContainer.
    pub async fn remove(&self, client: &mut Client, id: &str) -> Result<Duration> {
        let start = Instant::now();
        client
            .stop_container(StopContainerRequest {
                container_id: id.to_owned(),
                timeout: 0,
            })
            .await
            .with_context(|| format!("StopContainer {id}"))?;
        client
            .remove_container(RemoveContainerRequest {
                container_id: id.to_owned(),
            })
            .await
            .with_context(|| format!("RemoveContainer {id}"))?;
        self.live.lock().expect("poisoned").retain(|c| c != id);
        Ok(start.elapsed())
    }

    /// One soak cycle, the kubelet's two ways: RunPodSandbox + CreateContainer +
    /// StartContainer, on every fourth cycle an ExecSync, then either StopContainer +
    /// RemoveContainer before the pod goes (`explicit`), or StopPodSandbox +
    /// RemovePodSandbox alone, which must take the container with them. The pod's log dir
    /// goes too, as the kubelet's log manager would remove it.
    pub async fn soak_cycle(&self, pods: &Pods, client: &mut Client, n: usize) -> Result<()> {
        let Made {
            pod, id, log_dir, ..
        } = self.run_pod_with_container(pods, client).await?;
        if n.is_multiple_of(4) {
            let reply = client
                .exec_sync(ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["cat".into(), "/etc/hostname".into()],
                    timeout: 10,
                })
                .await
                .with_context(|| format!("ExecSync in {id}"))?
                .into_inner();
            anyhow::ensure!(
                reply.exit_code == 0 && !reply.stdout.is_empty(),
                "ExecSync in {id}: exit {} stdout {:?} stderr {:?}",
                reply.exit_code,
                String::from_utf8_lossy(&reply.stdout),
                String::from_utf8_lossy(&reply.stderr)
            );
        }
        if n.is_multiple_of(2) {
            self.remove(client, &id).await?;
        }
        pods.stop(client, &pod).await?;
        pods.remove(client, &pod).await?;
        self.live.lock().expect("poisoned").retain(|c| c != &id);
        let _ = std::fs::remove_dir_all(log_dir);
        Ok(())
    }

    fn log_dir(&self, pod_name: &str) -> PathBuf {
        self.logs.path().join(pod_name)
    }

    /// Stops and removes every container still alive (before their pods go); tries them all.
    pub async fn remove_all(&self, client: &mut Client) -> Result<()> {
        let ids: Vec<String> = self.live.lock().expect("poisoned").clone();
        let mut first = None;
        for id in ids {
            if let Err(e) = self.remove(client, &id).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Measures and appends the container rows; removes what it made.
    pub async fn measure(
        &self,
        n: usize,
        pods: &Pods,
        client: &mut Client,
        rows: &mut Vec<Row>,
    ) -> Result<()> {
        let (mut create_start, mut end_to_end) = (Samples::default(), Samples::default());
        let mut made = Vec::new();
        for _ in 0..n {
            let m = self.run_pod_with_container(pods, client).await?;
            create_start.push(m.create_start);
            end_to_end.push(m.end_to_end);
            made.push((m.pod, m.id));
        }
        let mut sums = Vec::new();
        for (pod, id) in &made {
            sums.push(pod_overhead(client, pod, id).await);
        }
        // The median pod; n/a if any pod lacks a pid.
        let overhead = sums.into_iter().collect::<Option<Vec<u64>>>();
        let overhead = overhead.and_then(|mut v| {
            v.sort_unstable();
            v.get(v.len().saturating_sub(1) / 2).copied()
        });
        // Under containerd: what its shims (and, for peapod's shim, the monitors it runs)
        // hold for all the pods, while they all run: in their steady state, 2 s after the
        // last start (peapod's shim unmaps the file pages a request touched 1 s after it).
        let is_shim = |argv0: &str| {
            Path::new(argv0)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"))
        };
        if rss_where(is_shim) > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let shims = rss_where(is_shim);
        let per_pod = |bytes: u64| Some(bytes / n.max(1) as u64);
        let shim_rows = if shims > 0 {
            let monitors = rss_where(|argv0| argv0 == "peapod");
            let mut pauses = 0;
            for (pod, _) in &made {
                pauses += match pause_pid(client, pod).await {
                    Some(pid) => rss_bytes(pid).unwrap_or(0),
                    None => 0,
                };
            }
            Some((per_pod(shims), per_pod(shims + monitors + pauses)))
        } else {
            None
        };
        let mut teardown = Samples::default();
        for (pod, id) in &made {
            teardown.push(self.remove(client, id).await?);
            pods.stop(client, pod).await?;
            pods.remove(client, pod).await?;
        }
        rows.push(Row {
            what: format!("CreateContainer + StartContainer, {n} pods"),
            value: Value::Latency(create_start),
            target: Target::P50Under(ms(20)),
        });
        rows.push(Row {
            what: "pod end to end: RunPodSandbox + Create + Start".into(),
            value: Value::Latency(end_to_end),
            target: Target::P50Under(ms(35)),
        });
        rows.push(Row {
            what: "StopContainer + RemoveContainer".into(),
            value: Value::Latency(teardown),
            target: Target::None,
        });
        rows.push(Row {
            what: format!("per-pod RSS, pause + monitor (median of {n})"),
            value: Value::Bytes(overhead),
            target: Target::BytesUnder(2 << 20),
        });
        if let Some((shim, all)) = shim_rows {
            rows.push(Row {
                what: format!("containerd shims' RSS per pod ({n} pods)"),
                value: Value::Bytes(shim),
                target: Target::BytesUnder(3 << 20),
            });
            rows.push(Row {
                what: format!("per-pod RSS, shims + monitors + pause ({n} pods)"),
                value: Value::Bytes(all),
                target: Target::None,
            });
        }
        Ok(())
    }
}
