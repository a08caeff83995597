//! Containers over CRI, and the busybox test image.
//!
//! The test images are `hack/make-test-images.sh`'s (see `images`): [`Node::import_busybox`]
//! imports `peapod.test/busybox:latest` ([`BUSYBOX`]) and `:variant` ([`VARIANT`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cri_api::v1::{
    Container, ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus,
    ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ExecSyncResponse, ImageSpec,
    KeyValue, LinuxContainerConfig, LinuxContainerSecurityContext, ListContainersRequest,
    RemoveContainerRequest, StartContainerRequest, StopContainerRequest,
};

use crate::cri::PodConfig;
use crate::inspect::SETTLE;
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
    /// Whether the container sees a cgroup v2 hierarchy (its own cgroup, through its cgroup
    /// namespace) at `/sys/fs/cgroup`, rather than v1's one directory per hierarchy.
    pub async fn sees_cgroup_v2(&self, id: &str) -> Result<bool> {
        let r = self
            .exec_sync(id, &["test", "-e", "/sys/fs/cgroup/cgroup.controllers"], 10)
            .await?;
        Ok(r.exit_code == 0)
    }

    /// The whitespace-separated words of files of the container's own cgroup, as it sees
    /// them under `/sys/fs/cgroup`: `v1` (e.g. `memory/memory.limit_in_bytes`) where the node
    /// runs cgroup v1, `v2` (e.g. `memory.max`) where it runs v2.
    pub async fn own_cgroup(&self, id: &str, v1: &[&str], v2: &[&str]) -> Result<Vec<String>> {
        let files = if self.sees_cgroup_v2(id).await? {
            v2
        } else {
            v1
        };
        let mut cmd = vec!["cat"];
        let paths: Vec<String> = files
            .iter()
            .map(|f| format!("/sys/fs/cgroup/{f}"))
            .collect();
        cmd.extend(paths.iter().map(String::as_str));
        let out = self.exec_ok(id, &cmd).await?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }

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
        value: value.as_bytes().to_vec(),
    }
}

/// Where the daemon under test keeps monitor sockets and pod `/dev/shm`s (inside the node).
const RUN_DIR: &str = "/run/peapod";

/// A process of the node with its command line.
#[derive(Clone, Debug)]
struct ProcArgs {
    pid: u32,
    ppid: u32,
    comm: String,
    args: String,
}

impl Node {
    async fn process_args(&self) -> Result<Vec<ProcArgs>> {
        parse_ps(&self.exec(&["sh", "-c", PS]).await?)
    }

    /// The node's container monitors (`peapod monitor <container dir>`): (container id,
    /// monitor pid as seen inside the node), sorted.
    pub async fn monitors(&self) -> Result<Vec<(String, u32)>> {
        Ok(monitors_in(&self.process_args().await?))
    }

    /// Container cgroups (dirs below a pod's cgroup, in any hierarchy) of the node's pods:
    /// (pod, container id).
    pub fn container_cgroups(&self) -> Vec<(String, String)> {
        let mut out = BTreeSet::new();
        for pod_dir in crate::cgroup_dirs(self.cgroup_parent())
            .iter()
            .flat_map(|parent| std::fs::read_dir(parent).into_iter().flatten().flatten())
            .filter(|e| e.path().is_dir())
        {
            let pod = pod_dir.file_name().to_string_lossy().into_owned();
            for ctr in std::fs::read_dir(pod_dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                // Container cgroups are named by their ids; `pause` (v2) and `monitors`
                // are the pod's own.
                let name = ctr.file_name().to_string_lossy().into_owned();
                if ctr.path().is_dir() && crate::is_sandbox_id(&name) {
                    out.insert((pod.clone(), name));
                }
            }
        }
        out.into_iter().collect()
    }

    /// Processes that are neither the node's own (its PID 1, the daemon, pauses, `ps`) nor a
    /// monitor or below one: a container's process that lost its monitor, say.
    pub async fn stray_processes(&self) -> Result<Vec<String>> {
        Ok(strays_in(&self.process_args().await?))
    }

    /// Container ids that have a dir under `<state>/containers`.
    pub fn container_dirs(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.state_dir().join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    }

    /// Monitor control sockets (`<run dir>/mon/<id>.sock`) in the node.
    pub async fn monitor_sockets(&self) -> Result<Vec<String>> {
        let script = format!("ls -1 {RUN_DIR}/mon 2>/dev/null || true");
        let out = self.exec(&["sh", "-c", &script]).await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Mounts of pod `/dev/shm`s (`<run dir>/shm/<pod>`) in the node.
    pub async fn shm_mounts(&self) -> Result<Vec<String>> {
        let prefix = format!(" {RUN_DIR}/shm/");
        Ok(self
            .mounts()
            .await?
            .into_iter()
            .filter(|m| m.contains(&prefix))
            .collect())
    }

    /// ListContainers, unfiltered.
    pub async fn list_containers(&self) -> Result<Vec<Container>> {
        let response = self
            .client()
            .await?
            .list_containers(ListContainersRequest::default())
            .await
            .context("ListContainers")?;
        Ok(response.into_inner().containers)
    }

    /// Fails, naming what it found, if anything of a container is left beyond the containers
    /// ListContainers knows and the pods in `pods`: a container dir, a monitor, a monitor
    /// socket, a process without a monitor, a `/dev/shm` mount of another pod. Monitors of
    /// containers that just ended get [`SETTLE`] to go.
    pub async fn assert_no_container_leftovers(&self, pods: &[String]) -> Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            match self.container_leftovers(pods).await? {
                None => return Ok(()),
                Some(msg) if Instant::now() >= deadline => bail!(msg),
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Like [`Node::assert_no_container_leftovers`], at once, without waiting.
    pub async fn check_no_container_leftovers(&self, pods: &[String]) -> Result<()> {
        match self.container_leftovers(pods).await? {
            None => Ok(()),
            Some(msg) => bail!(msg),
        }
    }

    async fn container_leftovers(&self, pods: &[String]) -> Result<Option<String>> {
        let ctrs = self.list_containers().await?;
        let known: BTreeSet<&str> = ctrs.iter().map(|c| c.id.as_str()).collect();
        let running: BTreeSet<&str> = ctrs
            .iter()
            .filter(|c| c.state == ContainerState::ContainerRunning as i32)
            .map(|c| c.id.as_str())
            .collect();
        let mut found = Vec::new();
        for c in &ctrs {
            if !pods.contains(&c.pod_sandbox_id) {
                found.push(format!("container {} of pod {}", c.id, c.pod_sandbox_id));
            }
        }
        for dir in self.container_dirs() {
            if !known.contains(dir.as_str()) {
                found.push(format!("container dir {dir}"));
            }
        }
        // One exec for processes, monitor sockets and mounts, in three sections.
        let script = format!(
            "{PS}; echo {MARK}; ls -1 {RUN_DIR}/mon 2>/dev/null; echo {MARK}; cat /proc/self/mounts"
        );
        let out = self.exec(&["sh", "-c", &script]).await?;
        let mut sections = vec![String::new()];
        for line in out.lines() {
            if line == MARK {
                sections.push(String::new());
            } else if let Some(last) = sections.last_mut() {
                last.push_str(line);
                last.push('\n');
            }
        }
        ensure!(sections.len() == 3, "unexpected output: {out}");
        let procs = parse_ps(&sections[0])?;
        let sockets = &sections[1];
        let mounts = &sections[2];
        let monitors = monitors_in(&procs);
        for (id, pid) in &monitors {
            if !running.contains(id.as_str()) {
                found.push(format!(
                    "monitor {pid} of container {id}, which is not Running"
                ));
            }
            if monitors.iter().filter(|(other, _)| other == id).count() > 1 {
                found.push(format!(
                    "monitor {pid} of container {id}, which has several"
                ));
            }
        }
        for (pod, id) in self.container_cgroups() {
            if !known.contains(id.as_str()) {
                found.push(format!("cgroup of no container: {pod}/{id}"));
            } else if !running.contains(id.as_str())
                && self.container_info(&id).await?["cgroupPath"].is_null()
            {
                // RemoveContainer would not know of it.
                found.push(format!(
                    "cgroup {pod}/{id} that its container has no record of"
                ));
            }
        }
        for sock in sockets.lines() {
            // A running container's monitor has two: control (`.sock`) and attach (`.attach`).
            let id = sock
                .strip_suffix(".sock")
                .or_else(|| sock.strip_suffix(".attach"))
                .unwrap_or(sock);
            if !running.contains(id) {
                found.push(format!("monitor socket {sock}"));
            }
        }
        for p in strays_in(&procs) {
            found.push(format!("process without a monitor: {p}"));
        }
        let shm = format!(" {RUN_DIR}/shm/");
        for m in mounts.lines().filter(|m| m.contains(&shm)) {
            if !pods.iter().any(|p| m.contains(p.as_str())) {
                found.push(format!("/dev/shm mount of no pod: {m}"));
            }
        }
        Ok((!found.is_empty()).then(|| {
            format!(
                "containers left traces in the node:\n  {}",
                found.join("\n  ")
            )
        }))
    }

    /// Running containers are alive: each one's process exists in its pod's network
    /// namespace, and its monitor (the one on record, and only that one) runs.
    pub async fn assert_containers_alive(&self, ids: &[String]) -> Result<()> {
        let monitors = self.monitors().await?;
        let mut pairs = Vec::new();
        for id in ids {
            let info = self.container_info(id).await?;
            let pid = info["pid"]
                .as_u64()
                .with_context(|| format!("Running container {id} has no pid: {info}"))?;
            let monitor = info["monitorPid"]
                .as_u64()
                .with_context(|| format!("Running container {id} has no monitor: {info}"))?;
            let pod = info["sandboxID"].as_str().context("no sandboxID")?;
            let pause = self.pod_info(pod).await?.pause_pid()?;
            let running: Vec<u32> = monitors
                .iter()
                .filter(|(c, _)| c == id)
                .map(|(_, pid)| *pid)
                .collect();
            ensure!(
                running == [monitor as u32],
                "Running container {id} has monitor {monitor} on record and {running:?} running"
            );
            pairs.push((id, pid, u64::from(pause)));
        }
        // One exec for all: the netns of each container process and of its pod's pause.
        let script: String = pairs
            .iter()
            .map(|(_, pid, pause)| {
                format!(
                    "echo $(readlink /proc/{pid}/ns/net || echo none) \
                     $(readlink /proc/{pause}/ns/net || echo none);"
                )
            })
            .collect();
        let out = self.exec(&["sh", "-c", &script]).await?;
        for ((id, pid, pause), line) in pairs.iter().zip(out.lines()) {
            let (mine, pods) = line.split_once(' ').unwrap_or((line, ""));
            ensure!(
                mine != "none",
                "Running container {id} has no process {pid}"
            );
            ensure!(
                mine == pods,
                "container {id} (pid {pid}) is in {mine}, its pod (pause {pause}) in {pods}"
            );
        }
        ensure!(
            out.lines().count() == pairs.len(),
            "unexpected netns listing: {out}"
        );
        Ok(())
    }
}

/// Separates the sections of one exec's output.
const MARK: &str = "==peapod-tests==";

/// `ps` with what [`parse_ps`] reads.
const PS: &str = "ps -e -o pid=,ppid=,comm=,args=";

fn parse_ps(out: &str) -> Result<Vec<ProcArgs>> {
    crate::inspect::ps_rows(out, |pid, ppid, comm, args| ProcArgs {
        pid,
        ppid,
        comm,
        args,
    })
}

/// (container id, monitor pid) of the monitors among `procs`, sorted.
fn monitors_in(procs: &[ProcArgs]) -> Vec<(String, u32)> {
    let mut all: Vec<(String, u32)> = procs
        .iter()
        .filter_map(|p| monitor_of(&p.args).map(|id| (id, p.pid)))
        .collect();
    all.sort();
    all
}

/// The processes among `procs` that are neither the node's own (its PID 1, the daemon,
/// pauses, `ps` and the shell that ran it) nor a monitor or below one.
fn strays_in(procs: &[ProcArgs]) -> Vec<String> {
    let parent: BTreeMap<u32, u32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
    let monitors: BTreeSet<u32> = procs
        .iter()
        .filter(|p| monitor_of(&p.args).is_some())
        .map(|p| p.pid)
        .collect();
    let ps: BTreeSet<u32> = procs
        .iter()
        .filter(|p| p.comm == "ps")
        .flat_map(|p| [p.pid, p.ppid])
        .collect();
    let under_monitor = |mut pid: u32| {
        while let Some(&ppid) = parent.get(&pid) {
            if monitors.contains(&pid) {
                return true;
            }
            pid = ppid;
        }
        false
    };
    procs
        .iter()
        .filter(|p| {
            let own = p.pid == 1
                || p.comm == "peapod-pause"
                || ps.contains(&p.pid)
                || (p.comm == "peapod" && p.args.contains(" serve "));
            !own && !under_monitor(p.pid)
        })
        .map(|p| format!("{} (ppid {}) {}", p.pid, p.ppid, p.args))
        .collect()
}

/// The container id of a monitor's command line (`… peapod-monitor monitor <dir>/<id>`, or
/// `… peapod monitor …` for one `peapod` ran).
fn monitor_of(args: &str) -> Option<String> {
    let mut words = args.split_whitespace();
    let exe = words.next()?;
    let ours = exe.ends_with("/peapod-monitor") || exe.ends_with("/peapod");
    (ours && words.next() == Some("monitor"))
        .then(|| words.next())
        .flatten()
        .and_then(|dir| dir.rsplit('/').next())
        .map(str::to_owned)
}

/// A container whose command writes a line (`ran`) into a node dir of its own (mounted at
/// `/trace`) when it runs, then sleeps: to tell whether, and when, its command ran.
pub struct Traced {
    pub config: ContainerConfig,
    dir: std::path::PathBuf,
}

impl Traced {
    pub fn new(node: &Node, name: &str) -> Result<Traced> {
        let dir = node.dir().join(format!("trace-{name}"));
        std::fs::create_dir_all(&dir)?;
        let mut config = container_config(
            name,
            BUSYBOX,
            &["sh", "-c", "echo ran >> /trace/runs; exec sleep 1000"],
        );
        config.mounts = vec![cri_api::v1::Mount {
            container_path: "/trace".into(),
            host_path: dir.display().to_string(),
            ..Default::default()
        }];
        Ok(Traced { config, dir })
    }

    /// What the command wrote so far: empty until it ran, `ran\n` once it ran once.
    pub fn runs(&self) -> String {
        std::fs::read_to_string(self.dir.join("runs")).unwrap_or_default()
    }

    /// Waits (bounded) for the command to have run, and checks it ran once.
    pub async fn ran_once(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.runs().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ensure!(self.runs() == "ran\n", "runs {:?}", self.runs());
        Ok(())
    }
}
