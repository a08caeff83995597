//! `peapod ctr …`: containers through the daemon's CRI socket, for operators and the demo
//! (crictl works too).

use std::io::Write;
use std::path::Path;

use cri_api::v1 as cri;

use crate::client::connect;

#[derive(clap::Subcommand)]
pub enum CtrCmd {
    /// Create and start a container in a pod; prints its id.
    Run {
        /// The pod sandbox id (or a unique prefix).
        pod: String,
        /// Container name, unique in the pod.
        name: String,
        /// Image reference (it must be in the store: `peapod image import` or `pull`).
        image: String,
        /// Command and arguments (default: the image's entrypoint and cmd).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run a command in a running container (ExecSync); exits with its exit code.
    Exec {
        id: String,
        #[arg(long, default_value_t = 10)]
        timeout: i64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List containers.
    Ls,
    /// Print a container's status (verbose) as JSON.
    Inspect { id: String },
    /// Stop a container (SIGTERM, then SIGKILL after `--timeout` seconds).
    Stop {
        id: String,
        #[arg(long, default_value_t = 10)]
        timeout: i64,
    },
    /// Remove a container.
    Rm { id: String },
}

/// Runs `cmd`; returns the exit code for the process.
pub async fn run(socket: &Path, cmd: CtrCmd) -> anyhow::Result<u8> {
    let mut c = connect(socket).await?;
    let mut out = std::io::stdout().lock();
    match cmd {
        CtrCmd::Run {
            pod,
            name,
            image,
            command,
        } => {
            let config = cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata { name, attempt: 0 }),
                image: Some(cri::ImageSpec {
                    image,
                    ..Default::default()
                }),
                command,
                ..Default::default()
            };
            let id = c
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(config),
                    sandbox_config: None,
                })
                .await?
                .into_inner()
                .container_id;
            c.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            writeln!(out, "{id}")?;
        }
        CtrCmd::Exec {
            id,
            timeout,
            command,
        } => {
            let r = c
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id,
                    cmd: command,
                    timeout,
                })
                .await?
                .into_inner();
            out.write_all(&r.stdout)?;
            std::io::stderr().write_all(&r.stderr)?;
            return Ok(u8::try_from(r.exit_code).unwrap_or(1));
        }
        CtrCmd::Ls => {
            let items = c
                .list_containers(cri::ListContainersRequest { filter: None })
                .await?
                .into_inner()
                .containers;
            writeln!(
                out,
                "{:<13} {:<16} {:<13} {:<17} IMAGE",
                "ID", "NAME", "POD", "STATE"
            )?;
            for k in items {
                let state = cri::ContainerState::try_from(k.state)
                    .map(|s| s.as_str_name().trim_start_matches("CONTAINER_").to_owned())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:<13} {:<16} {:<13} {:<17} {}",
                    &k.id[..13.min(k.id.len())],
                    k.metadata.map(|m| m.name).unwrap_or_default(),
                    &k.pod_sandbox_id[..13.min(k.pod_sandbox_id.len())],
                    state,
                    k.image.map(|i| i.image).unwrap_or_default()
                )?;
            }
        }
        CtrCmd::Inspect { id } => {
            let r = c
                .container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: true,
                })
                .await?
                .into_inner();
            let info: serde_json::Map<String, serde_json::Value> = r
                .info
                .iter()
                .map(|(k, v)| {
                    let v = serde_json::from_str(v)
                        .unwrap_or_else(|_| serde_json::Value::String(v.clone()));
                    (k.clone(), v)
                })
                .collect();
            let doc = serde_json::json!({ "status": r.status, "info": info });
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        CtrCmd::Stop { id, timeout } => {
            c.stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout,
            })
            .await?;
            writeln!(out, "{id}")?;
        }
        CtrCmd::Rm { id } => {
            c.remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            writeln!(out, "{id}")?;
        }
    }
    Ok(0)
}
