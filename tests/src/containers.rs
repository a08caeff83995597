//! Containers over CRI, and the busybox test image.
//!
//! The test images are `hack/make-test-images.sh`'s (see `images`): [`Node::import_busybox`]
//! imports `peapod.test/busybox:latest` ([`BUSYBOX`]) and `:variant` ([`VARIANT`]).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ExecSyncResponse, ImageSpec, KeyValue,
    LinuxContainerConfig, LinuxContainerSecurityContext, RemoveContainerRequest,
    StartContainerRequest, StopContainerRequest,
};

use crate::cri::PodConfig;
use crate::node::Node;

/// One gzip layer of busybox and applets, `/var/www/index.html` (`<h1>peapod</h1>`), Cmd `sh`.
pub const BUSYBOX: &str = "peapod.test/busybox:latest";
/// User 1000, Env FOO=bar, Entrypoint `/bin/sh -c`, Cmd `echo variant`, WorkingDir
/// /home/app, StopSignal SIGUSR1.
pub const VARIANT: &str = "peapod.test/busybox:variant";

impl Node {
    /// Builds the test images and imports [`BUSYBOX`] and [`VARIANT`] into this node.
    pub async fn import_busybox(&self) -> Result<()> {
        let images = crate::images::TestImages::build()?;
        for archive in ["busybox.oci.tar", "variant.oci.tar"] {
            self.import_image(&images.path(archive)).await?;
        }
        Ok(())
    }

    pub async fn create_container(
        &self,
        pod: &str,
        pod_config: &PodConfig,
        config: ContainerConfig,
    ) -> Result<String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod_config.build()),
        };
        let response = self.client().await?.create_container(request).await;
        Ok(response
            .with_context(|| format!("CreateContainer {name}"))?
            .into_inner()
            .container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let request = StartContainerRequest {
            container_id: id.to_owned(),
        };
        self.client()
            .await?
            .start_container(request)
            .await
            .with_context(|| format!("StartContainer {id}"))?;
        Ok(())
    }

    /// CreateContainer + StartContainer.
    pub async fn run_container(
        &self,
        pod: &str,
        pod_config: &PodConfig,
        config: ContainerConfig,
    ) -> Result<String> {
        let id = self.create_container(pod, pod_config, config).await?;
        self.start_container(&id).await?;
        Ok(id)
    }

    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let request = StopContainerRequest {
            container_id: id.to_owned(),
            timeout,
        };
        self.client()
            .await?
            .stop_container(request)
            .await
            .with_context(|| format!("StopContainer {id}"))?;
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let request = RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        self.client()
            .await?
            .remove_container(request)
            .await
            .with_context(|| format!("RemoveContainer {id}"))?;
        Ok(())
    }

    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let request = ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        };
        let response = self.client().await?.container_status(request).await;
        response
            .with_context(|| format!("ContainerStatus {id}"))?
            .into_inner()
            .status
            .context("ContainerStatus without a status")
    }

    /// The container's pid (inside the node) from its verbose status.
    pub async fn container_pid(&self, id: &str) -> Result<u64> {
        let v = self.container_info(id).await?;
        v["pid"].as_u64().with_context(|| format!("no pid in {v}"))
    }

    /// The verbose info of a container (pid, monitorPid, cgroupPath, …).
    pub async fn container_info(&self, id: &str) -> Result<serde_json::Value> {
        let request = ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: true,
        };
        let response = self.client().await?.container_status(request).await;
        let info = response
            .with_context(|| format!("ContainerStatus {id}"))?
            .into_inner()
            .info;
        Ok(serde_json::from_str(
            info.get("info").context("no verbose info")?,
        )?)
    }

    /// Waits up to `timeout` for the container to exit; returns its status.
    pub async fn wait_exited(&self, id: &str, timeout: Duration) -> Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.container_status(id).await?;
            if s.state == ContainerState::ContainerExited as i32 {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("container {id} still runs after {timeout:?}: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse> {
        let request = ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        let response = self.client().await?.exec_sync(request).await;
        Ok(response
            .with_context(|| format!("ExecSync {cmd:?} in {id}"))?
            .into_inner())
    }

    /// ExecSync that must exit 0; returns stdout.
    pub async fn exec_ok(&self, id: &str, cmd: &[&str]) -> Result<String> {
        let r = self.exec_sync(id, cmd, 10).await?;
        if r.exit_code != 0 {
            bail!(
                "{cmd:?} in {id} exited {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&r.stdout).into_owned())
    }

    /// The CRI log of a container of `pod_config` with log path `log_path`.
    pub fn container_log(&self, pod_config: &PodConfig, log_path: &str) -> String {
        std::fs::read_to_string(Path::new(&pod_config.log_directory).join(log_path))
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for the container's log to contain `text`.
    pub async fn wait_log(
        &self,
        pod_config: &PodConfig,
        log_path: &str,
        text: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.container_log(pod_config, log_path);
            if log.contains(text) {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!("the log {log_path} has no {text:?} after {timeout:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A container config: name, image, command; log path `<name>.log`. Edit the fields for more.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// The config's security context, created if missing.
pub fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

pub fn env(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}
