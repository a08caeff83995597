//! The systemd cgroup driver, against a real systemd: a pod is the scope
//! `peapod-<id>.scope` in the slice the kubelet names, with `Delegate=yes`; each container is
//! a scope beside it whose properties are its limits, enforced, updated, and kept through a
//! `daemon-reload`; an OOM kill is reported though systemd removes the scope's cgroup; a
//! crash between the scope and the answer and scopes no record claims leave nothing after a
//! restart; the kubelet's slice outlives the pod. The daemon runs in the node's own namespaces (scopes take PIDs as systemd sees
//! them), which only the VM node offers: `vm_node.rs` runs this test there (`--ignored`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cri_api::v1::{
    ContainerConfig, ContainerState, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, LinuxContainerResources, ListPodSandboxRequest, RemoveContainerRequest,
    RunPodSandboxRequest, RuntimeConfigRequest, StartContainerRequest,
    UpdateContainerResourcesRequest,
};
use peapod_tests::containers::{BUSYBOX, container_config};
use peapod_tests::{Client, PodConfig, TestImages};

const MIB: i64 = 1 << 20;

/// A daemon with the systemd driver, in a state dir of its own; SIGKILLed when dropped.
struct Daemon {
    dir: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn new(dir: &Path) -> Result<Daemon> {
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "socket = {:?}\nstate_dir = {:?}\nrun_dir = {:?}\nbridge = \"ppsd0\"\n\
                 pod_cidr = \"10.231.0.0/24\"\ncgroup_driver = \"systemd\"\n",
                dir.join("peapod.sock"),
                dir.join("state"),
                dir.join("run"),
            ),
        )?;
        Ok(Daemon {
            dir: dir.to_owned(),
            child: None,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("peapod.sock")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Starts it (with the fault point `fault`, if any) and waits until it answers.
    async fn start(&mut self, fault: Option<&str>) -> Result<Client> {
        self.kill();
        let mut cmd = Command::new(peapod_tests::bin_dir().join("peapod"));
        cmd.arg("serve")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("daemon.log"))?);
        if let Some(f) = fault {
            cmd.env("PEAPOD_FAULT", f);
        }
        self.child = Some(cmd.spawn()?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = peapod_tests::connect(&self.socket()).await
                && c.version(cri_api::v1::VersionRequest::default())
                    .await
                    .is_ok()
            {
                return Ok(c);
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the daemon exited ({status}): {}", self.log());
            }
            ensure!(Instant::now() < deadline, "no answer: {}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output()?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn show(unit: &str, property: &str) -> Result<String> {
    run("systemctl", &["show", "-P", property, unit])
}

/// Waits until `unit` is in `state` (`active`, or `gone`: not loaded any more).
async fn wait_unit(unit: &str, state: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = match show(unit, "LoadState")?.as_str() {
            "not-found" => "gone".to_owned(),
            _ => show(unit, "ActiveState")?,
        };
        if now == state {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{unit} is {now}, not {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cgroup_file(cgroup: &str, file: &str) -> Result<String> {
    let path = Path::new("/sys/fs/cgroup")
        .join(cgroup.trim_start_matches('/'))
        .join(file);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("{}", path.display()))?
        .trim()
        .to_owned())
}

/// Creates and starts a container in `pod`; its id.
async fn run_container(
    c: &mut Client,
    pod: &str,
    pod_cfg: &PodConfig,
    cfg: ContainerConfig,
) -> Result<String> {
    let id = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.build()),
        })
        .await?
        .into_inner()
        .container_id;
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(id)
}

/// As the kubelet makes a pod's slice: a transient slice unit with the pod's memory limit.
fn kubelet_slice(name: &str, memory_max: i64) -> Result<()> {
    run(
        "busctl",
        &[
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            name,
            "replace",
            "1",
            "MemoryMax",
            "t",
            &memory_max.to_string(),
            "0",
        ],
    )?;
    Ok(())
}

/// A scope around a `sleep`, as a crashed daemon could have left one, described as a pod's
/// or a container's (`kind`) made by the daemon of `state_dir`.
fn stray_scope(slice: &str, kind: &str, state_dir: &Path) -> Result<(String, Child)> {
    let id = peapod_tests::random_hex(32);
    let unit = format!("peapod-{id}.scope");
    let child = Command::new("systemd-run")
        .args(["--scope", "--quiet", "--collect"])
        .arg(format!("--unit={unit}"))
        .arg(format!("--slice={slice}"))
        .arg(format!(
            "--description=peapod {kind} {id} (peapod {})",
            state_dir.display()
        ))
        .args(["sleep", "600"])
        .spawn()?;
    Ok((unit, child))
}

/// Units `peapod-*.scope` whose description names `state_dir`.
fn scopes_of(state_dir: &Path) -> Result<Vec<String>> {
    let out = run(
        "systemctl",
        &[
            "list-units",
            "--all",
            "--no-legend",
            "--plain",
            "--full",
            "peapod-*.scope",
        ],
    )?;
    let marker = format!("(peapod {})", state_dir.display());
    Ok(out
        .lines()
        .filter(|l| l.ends_with(&marker))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

#[tokio::test]
#[ignore = "needs systemd as PID 1: runs inside the VM node (vm_node.rs)"]
async fn pods_are_delegated_scopes_in_the_kubelets_slices() -> Result<()> {
    peapod_tests::require_root();
    let comm = std::fs::read_to_string("/proc/1/comm")?;
    if comm.trim() != "systemd" {
        bail!("PID 1 is {comm:?}, not systemd: run this test in the VM node");
    }
    let tmp = tempfile::tempdir()?;
    let mut daemon = Daemon::new(tmp.path())?;
    let images = TestImages::build()?;
    run(
        peapod_tests::bin_dir()
            .join("peapod")
            .to_str()
            .context("path")?,
        &[
            "image",
            "--state-dir",
            daemon.state_dir().to_str().context("path")?,
            "import",
            images.path("busybox.oci.tar").to_str().context("path")?,
        ],
    )?;
    let mut c = daemon.start(None).await?;
    let config = c
        .runtime_config(RuntimeConfigRequest::default())
        .await?
        .into_inner();
    ensure!(
        config.linux.map(|l| l.cgroup_driver) == Some(cri_api::v1::CgroupDriver::Systemd as i32),
        "RuntimeConfig does not name the systemd driver"
    );

    // The kubelet's slice, with its pod-level limit, made before the pod.
    let uid = peapod_tests::random_hex(8);
    let slice = format!("kubepods-burstable-pod{uid}.slice");
    kubelet_slice(&slice, 512 * MIB)?;
    wait_unit(&slice, "active").await?;
    let slice_cgroup =
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice");

    let pod_cfg = PodConfig::new("scoped").cgroup_parent(&slice);
    let pod = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_cfg.build()),
            runtime_handler: String::new(),
        })
        .await
        .with_context(|| daemon.log())?
        .into_inner()
        .pod_sandbox_id;
    let scope = format!("peapod-{pod}.scope");
    let scope_cgroup = format!("{slice_cgroup}/{scope}");
    ensure!(
        show(&scope, "Slice")? == slice,
        "{}",
        show(&scope, "Slice")?
    );
    ensure!(show(&scope, "Delegate")? == "yes");
    ensure!(show(&scope, "TasksMax")? == "infinity");
    ensure!(show(&scope, "ActiveState")? == "active");
    ensure!(show(&scope, "ControlGroup")? == scope_cgroup);
    ensure!(
        cgroup_file(&scope_cgroup, "cgroup.procs")?.is_empty()
            && !cgroup_file(&format!("{scope_cgroup}/pause"), "cgroup.procs")?.is_empty(),
        "the pause is not in its leaf of the scope"
    );

    // A container with limits: a scope of its own beside the pod's, whose properties are
    // its limits; enforced, updated, and kept through a daemon-reload.
    let mut ctr_cfg = container_config("limited", BUSYBOX, &["sleep", "600"]);
    ctr_cfg.linux.get_or_insert_with(Default::default).resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 64 * MIB,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpu_shares: 512,
        unified: [("pids.max".to_owned(), "20".to_owned())].into(),
        ..Default::default()
    });
    let ctr = run_container(&mut c, &pod, &pod_cfg, ctr_cfg)
        .await
        .with_context(|| daemon.log())?;
    let ctr_scope = format!("peapod-{ctr}.scope");
    let ctr_cgroup = format!("{slice_cgroup}/{ctr_scope}");
    ensure!(
        show(&ctr_scope, "ActiveState")? == "active",
        "{}",
        daemon.log()
    );
    ensure!(show(&ctr_scope, "Slice")? == slice);
    ensure!(show(&ctr_scope, "ControlGroup")? == ctr_cgroup);
    ensure!(show(&ctr_scope, "MemoryMax")? == (64 * MIB).to_string());
    ensure!(show(&ctr_scope, "CPUQuotaPerSecUSec")? == "500ms");
    ensure!(show(&ctr_scope, "CPUWeight")? == "20");
    ensure!(show(&ctr_scope, "TasksMax")? == "20");
    ensure!(show(&ctr_scope, "Description")?.starts_with(&format!("peapod container {ctr} ")));
    ensure!(cgroup_file(&ctr_cgroup, "memory.max")? == (64 * MIB).to_string());
    ensure!(cgroup_file(&ctr_cgroup, "cpu.max")? == "50000 100000");
    ensure!(cgroup_file(&ctr_cgroup, "cpu.weight")? == "20");
    ensure!(cgroup_file(&ctr_cgroup, "pids.max")? == "20");
    ensure!(!cgroup_file(&ctr_cgroup, "cgroup.procs")?.is_empty());
    let forks = c
        .exec_sync(ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: [
                "sh",
                "-c",
                "i=0; while [ $i -lt 40 ]; do sleep 60 </dev/null >/dev/null 2>&1 & \
                 i=$((i+1)); done; echo forked $i",
            ]
            .map(String::from)
            .to_vec(),
            timeout: 20,
        })
        .await?
        .into_inner();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&forks.stdout),
        String::from_utf8_lossy(&forks.stderr)
    );
    ensure!(
        said.contains("can't fork") && !said.contains("forked 40"),
        "40 forks under pids.max 20: exit {}: {said}",
        forks.exit_code
    );
    let throttled = |stat: String| -> u64 {
        stat.lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = throttled(cgroup_file(&ctr_cgroup, "cpu.stat")?);
    let busy = c
        .exec_sync(ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: [
                "sh",
                "-c",
                "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; echo done",
            ]
            .map(String::from)
            .to_vec(),
            timeout: 120,
        })
        .await?
        .into_inner();
    let after = throttled(cgroup_file(&ctr_cgroup, "cpu.stat")?);
    ensure!(
        String::from_utf8_lossy(&busy.stdout).trim() == "done",
        "the busy loop: {busy:?}"
    );
    ensure!(
        after > before,
        "a busy loop under cpu.max: nr_throttled {before} → {after}"
    );
    c.update_container_resources(UpdateContainerResourcesRequest {
        container_id: ctr.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 128 * MIB,
            ..Default::default()
        }),
        windows: None,
        annotations: Default::default(),
    })
    .await?;
    ensure!(show(&ctr_scope, "MemoryMax")? == (128 * MIB).to_string());
    ensure!(cgroup_file(&ctr_cgroup, "memory.max")? == (128 * MIB).to_string());
    run("systemctl", &["daemon-reload"])?;
    ensure!(
        cgroup_file(&ctr_cgroup, "memory.max")? == (128 * MIB).to_string()
            && cgroup_file(&ctr_cgroup, "cpu.max")? == "50000 100000"
            && cgroup_file(&ctr_cgroup, "pids.max")? == "20",
        "a daemon-reload changed the limits: memory.max {}, cpu.max {}, pids.max {}",
        cgroup_file(&ctr_cgroup, "memory.max")?,
        cgroup_file(&ctr_cgroup, "cpu.max")?,
        cgroup_file(&ctr_cgroup, "pids.max")?
    );

    // An OOM kill is reported as one, though the scope and its cgroup go with the process.
    let mut hog = container_config(
        "hog",
        BUSYBOX,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    hog.linux.get_or_insert_with(Default::default).resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 16 * MIB,
        ..Default::default()
    });
    let hog = run_container(&mut c, &pod, &pod_cfg, hog).await?;
    wait_unit(&format!("peapod-{hog}.scope"), "gone").await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = c
            .container_status(ContainerStatusRequest {
                container_id: hog.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no status")?;
        if s.state == ContainerState::ContainerExited as i32 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        status.reason == "OOMKilled" && status.exit_code == 137,
        "{status:?}"
    );
    c.remove_container(RemoveContainerRequest {
        container_id: hog.clone(),
    })
    .await?;

    // A crash right after systemd made a pod's scope, and a scope no record claims: a
    // restart leaves neither, and keeps the running pod. Another daemon's scope stays.
    daemon.kill();
    let mut c = daemon.start(Some("run:scope")).await?;
    let crashed = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(PodConfig::new("crashed").cgroup_parent(&slice).build()),
            runtime_handler: String::new(),
        })
        .await;
    ensure!(crashed.is_err(), "the fault point was not reached");
    let left = scopes_of(&daemon.state_dir())?;
    ensure!(
        left.len() == 3 && left.contains(&scope) && left.contains(&ctr_scope),
        "expected the crashed pod's scope beside {scope} and {ctr_scope}: {left:?}"
    );
    let (stray, mut stray_child) = stray_scope(&slice, "pod sandbox", &daemon.state_dir())?;
    let (stray_ctr, mut stray_ctr_child) = stray_scope(&slice, "container", &daemon.state_dir())?;
    let (foreign, mut foreign_child) = stray_scope(&slice, "container", Path::new("/elsewhere"))?;
    wait_unit(&stray, "active").await?;
    wait_unit(&stray_ctr, "active").await?;
    wait_unit(&foreign, "active").await?;
    let mut c = daemon.start(None).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut expected = vec![scope.clone(), ctr_scope.clone()];
    expected.sort();
    while scopes_of(&daemon.state_dir())? != expected {
        ensure!(
            Instant::now() < deadline,
            "after the restart: {:?}\n{}",
            scopes_of(&daemon.state_dir())?,
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_unit(&stray, "gone").await?;
    wait_unit(&stray_ctr, "gone").await?;
    ensure!(
        stray_child.wait()?.code() != Some(0) && stray_ctr_child.wait()?.code() != Some(0),
        "a stray sleep ran on"
    );
    ensure!(
        show(&foreign, "ActiveState")? == "active",
        "another daemon's scope went"
    );
    let _ = run("systemctl", &["stop", &foreign]);
    let _ = foreign_child.wait();
    let pods = c
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    ensure!(
        pods.len() == 1 && pods[0].id == pod,
        "pods after the restart: {pods:?}"
    );
    ensure!(!cgroup_file(&ctr_cgroup, "cgroup.procs")?.is_empty());

    // Removal: the scopes and their cgroups go, the kubelet's slice and its limit stay.
    c.remove_container(RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await?;
    wait_unit(&ctr_scope, "gone").await?;
    peapod_tests::stop_and_remove_pod(&mut c, &pod).await?;
    wait_unit(&scope, "gone").await?;
    ensure!(
        !Path::new("/sys/fs/cgroup")
            .join(scope_cgroup.trim_start_matches('/'))
            .exists(),
        "the scope's cgroup is left"
    );
    ensure!(
        !Path::new("/sys/fs/cgroup")
            .join(ctr_cgroup.trim_start_matches('/'))
            .exists(),
        "the container scope's cgroup is left"
    );
    ensure!(show(&slice, "ActiveState")? == "active");
    ensure!(cgroup_file(&slice_cgroup, "memory.max")? == (512 * MIB).to_string());
    ensure!(scopes_of(&daemon.state_dir())?.is_empty());
    daemon.kill();
    let _ = run("systemctl", &["stop", &slice]);
    Ok(())
}

/// containerd in the node's own namespaces with peapod's shim, in a dir of its own; killed
/// when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    async fn start() -> Result<Containerd> {
        let dir = tempfile::Builder::new().prefix("peapod-ctrd-").tempdir()?;
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin)?;
        std::os::unix::fs::symlink(
            peapod_tests::bin_dir().join("containerd-shim-peapod-v2"),
            bin.join("containerd-shim-peapod-v2"),
        )?;
        let config = dir.path().join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {:?}\n",
                dir.path().join("root"),
                dir.path().join("state"),
                dir.path().join("containerd.sock"),
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let c = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.ctr(&["version"]).is_err() {
            ensure!(
                Instant::now() < deadline,
                "containerd did not answer:\n{}",
                c.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(c)
    }

    fn ctr(&self, args: &[&str]) -> Result<String> {
        let socket = self.dir.path().join("containerd.sock");
        let mut all = vec!["--address", socket.to_str().context("path")?, "-n", "test"];
        all.extend_from_slice(args);
        run("ctr", &all)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// containerd's task Update with a new memory limit, sent to the task's shim as containerd
    /// sends it (Debian's `ctr` 1.6 has no `task update`).
    fn update_task(&self, id: &str, memory: i64) -> Result<()> {
        use containerd_shim::protos::protobuf::well_known_types::any::Any;
        use containerd_shim::protos::{Client, TaskClient, api, ttrpc};
        let address = self
            .dir
            .path()
            .join("state/io.containerd.runtime.v2.task/test")
            .join(id)
            .join("address");
        let address =
            std::fs::read_to_string(&address).with_context(|| format!("{}", address.display()))?;
        let shim = TaskClient::new(Client::connect(address.trim())?);
        let mut resources = Any::new();
        resources.type_url =
            "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        resources.value =
            serde_json::to_vec(&serde_json::json!({ "memory": { "limit": memory } }))?;
        let mut req = api::UpdateTaskRequest::new();
        req.id = id.to_owned();
        req.resources = Some(resources).into();
        shim.update(ttrpc::context::with_timeout(10_000_000_000), &req)?;
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// containerd 1.6 gives a task under a `.slice` parent the cgroups path `slice:prefix:name`;
/// with systemd on the node the shim makes it the scope `prefix-name.scope` in that slice,
/// with the task's limits as the scope's properties (kept through a `daemon-reload`, changed
/// by an Update), gone with it.
#[tokio::test]
#[ignore = "needs systemd as PID 1: runs inside the VM node (vm_node.rs)"]
async fn containerd_tasks_are_scopes_in_their_slices() -> Result<()> {
    peapod_tests::require_root();
    let comm = std::fs::read_to_string("/proc/1/comm")?;
    if comm.trim() != "systemd" {
        bail!("PID 1 is {comm:?}, not systemd: run this test in the VM node");
    }
    let images = TestImages::build()?;
    let c = Containerd::start().await?;
    let archive = images.path("busybox.oci.tar");
    c.ctr(&[
        "image",
        "import",
        "--base-name",
        "peapod.test/busybox",
        archive.to_str().context("path")?,
    ])?;
    let top = format!("peapodtest{}", peapod_tests::random_hex(4));
    let slice = format!("{top}.slice");
    let id = format!("task{}", peapod_tests::random_hex(4));
    let scope = format!("cri-containerd-{id}.scope");
    let limit = (64 * MIB).to_string();
    let ran = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.peapod.v2",
        "--cgroup",
        &format!("{slice}:cri-containerd:{id}"),
        "--memory-limit",
        &limit,
        BUSYBOX,
        &id,
        "sleep",
        "600",
    ]);
    let checked = async {
        ran?;
        let cgroup = format!("/{slice}/{scope}");
        ensure!(show(&scope, "ActiveState")? == "active", "{}", c.log());
        ensure!(show(&scope, "Slice")? == slice);
        ensure!(show(&scope, "ControlGroup")? == cgroup);
        ensure!(show(&scope, "MemoryMax")? == limit);
        ensure!(show(&scope, "TasksMax")? == "infinity");
        ensure!(cgroup_file(&cgroup, "memory.max")? == limit);
        ensure!(!cgroup_file(&cgroup, "cgroup.procs")?.is_empty());
        run("systemctl", &["daemon-reload"])?;
        ensure!(cgroup_file(&cgroup, "memory.max")? == limit);
        let more = (128 * MIB).to_string();
        c.update_task(&id, 128 * MIB)?;
        ensure!(show(&scope, "MemoryMax")? == more);
        ensure!(cgroup_file(&cgroup, "memory.max")? == more);
        c.ctr(&["task", "kill", "-s", "KILL", &id])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.ctr(&["task", "rm", &id]).is_err() {
            ensure!(Instant::now() < deadline, "the task did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.ctr(&["container", "rm", &id])?;
        wait_unit(&scope, "gone").await?;
        ensure!(
            !Path::new("/sys/fs/cgroup")
                .join(&slice)
                .join(&scope)
                .exists(),
            "the task's cgroup is left"
        );
        Ok(())
    }
    .await;
    if checked.is_err() {
        let _ = c.ctr(&["task", "rm", "-f", &id]);
        let _ = c.ctr(&["container", "rm", &id]);
    }
    drop(c);
    let _ = run("systemctl", &["stop", &slice]);
    checked
}
