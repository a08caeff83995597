//! `peapod pod …`: a small CRI client for operators and the demo (crictl works too).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cri_api::v1 as cri;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub async fn connect(socket: &Path) -> anyhow::Result<RuntimeServiceClient<Channel>> {
    Ok(RuntimeServiceClient::new(channel(socket).await?))
}

/// A gRPC channel to the daemon's unix socket, for any of its services.
pub async fn channel(socket: &Path) -> anyhow::Result<Channel> {
    let path: PathBuf = socket.to_owned();
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    Ok(channel)
}

#[derive(clap::Subcommand)]
pub enum PodCmd {
    /// Create and start a pod sandbox; prints its id.
    Run {
        name: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Pod UID (default: derived from namespace and name).
        #[arg(long)]
        uid: Option<String>,
        /// Hostname (default: the pod name).
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long, default_value_t = 0)]
        attempt: u32,
        /// Share the node's network namespace (no pod IP of its own).
        #[arg(long)]
        host_network: bool,
    },
    /// List pod sandboxes.
    Ls,
    /// Print a pod sandbox's status (verbose) as JSON.
    Inspect { id: String },
    /// Stop a pod sandbox.
    Stop { id: String },
    /// Remove a pod sandbox.
    Rm { id: String },
}

/// `println!` that reports a closed stdout as an error instead of panicking.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*)?
    };
}

pub async fn run(socket: &Path, cmd: PodCmd) -> anyhow::Result<()> {
    let mut c = connect(socket).await?;
    let mut out = std::io::stdout().lock();
    match cmd {
        PodCmd::Run {
            name,
            namespace,
            uid,
            hostname,
            attempt,
            host_network,
        } => {
            let linux = host_network.then(|| cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let config = cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    uid: uid.unwrap_or_else(|| format!("{namespace}-{name}")),
                    name: name.clone(),
                    namespace,
                    attempt,
                }),
                hostname: hostname.unwrap_or(name),
                linux,
                ..Default::default()
            };
            let r = c
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner();
            outln!(out, "{}", r.pod_sandbox_id);
        }
        PodCmd::Ls => {
            let items = c
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await?
                .into_inner()
                .items;
            outln!(
                out,
                "{:<13} {:<20} {:<12} {:<9} IP",
                "ID",
                "NAME",
                "NAMESPACE",
                "STATE"
            );
            for p in items {
                let st = c
                    .pod_sandbox_status(cri::PodSandboxStatusRequest {
                        pod_sandbox_id: p.id.clone(),
                        verbose: false,
                    })
                    .await?
                    .into_inner();
                let ip = st
                    .status
                    .and_then(|s| s.network)
                    .map(|n| n.ip)
                    .unwrap_or_default();
                let m = p.metadata.unwrap_or_default();
                let state = if p.state == cri::PodSandboxState::SandboxReady as i32 {
                    "Ready"
                } else {
                    "NotReady"
                };
                outln!(
                    out,
                    "{:<13} {:<20} {:<12} {:<9} {}",
                    &p.id[..13.min(p.id.len())],
                    m.name,
                    m.namespace,
                    state,
                    ip
                );
            }
        }
        PodCmd::Inspect { id } => {
            let r = c
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: true,
                })
                .await?
                .into_inner();
            let info: HashMap<String, serde_json::Value> = r
                .info
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone())),
                    )
                })
                .collect();
            let doc = serde_json::json!({ "status": r.status, "info": info });
            outln!(out, "{}", serde_json::to_string_pretty(&doc)?);
        }
        PodCmd::Stop { id } => {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            outln!(out, "{id}");
        }
        PodCmd::Rm { id } => {
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            outln!(out, "{id}");
        }
    }
    Ok(())
}
