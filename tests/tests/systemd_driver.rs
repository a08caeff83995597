//! The systemd cgroup driver, against a real systemd: a pod is the scope
//! `peapod-<id>.scope` in the slice the kubelet names, with `Delegate=yes`; its containers'
//! limits live below it, are enforced and updated; a crash between the scope and the answer
//! and a scope no record claims leave nothing after a restart; the kubelet's slice outlives
//! the pod. The daemon runs in the node's own namespaces (scopes take PIDs as systemd sees
//! them), which only the VM node offers: `vm_node.rs` runs this test there (`--ignored`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cri_api::v1::{
    CreateContainerRequest, ExecSyncRequest, LinuxContainerResources, ListPodSandboxRequest,
    RemoveContainerRequest, RunPodSandboxRequest, RuntimeConfigRequest, StartContainerRequest,
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

/// A scope around a `sleep`, as a crashed daemon could have left one, described as made by
/// the daemon of `state_dir`.
fn stray_scope(slice: &str, state_dir: &Path) -> Result<(String, Child)> {
    let id = peapod_tests::random_hex(32);
    let unit = format!("peapod-{id}.scope");
    let child = Command::new("systemd-run")
        .args(["--scope", "--quiet", "--collect"])
        .arg(format!("--unit={unit}"))
        .arg(format!("--slice={slice}"))
        .arg(format!(
            "--description=peapod pod sandbox {id} (peapod {})",
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

    // A container with limits: below the scope, enforced, updated.
    let mut ctr_cfg = container_config("limited", BUSYBOX, &["sleep", "600"]);
    ctr_cfg.linux.get_or_insert_with(Default::default).resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 64 * MIB,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        unified: [("pids.max".to_owned(), "20".to_owned())].into(),
        ..Default::default()
    });
    let ctr = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ctr_cfg),
            sandbox_config: Some(pod_cfg.build()),
        })
        .await?
        .into_inner()
        .container_id;
    c.start_container(StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .with_context(|| daemon.log())?;
    let ctr_cgroup = format!("{scope_cgroup}/{ctr}");
    ensure!(cgroup_file(&ctr_cgroup, "memory.max")? == (64 * MIB).to_string());
    ensure!(cgroup_file(&ctr_cgroup, "cpu.max")? == "50000 100000");
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
    ensure!(cgroup_file(&ctr_cgroup, "memory.max")? == (128 * MIB).to_string());

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
        left.len() == 2 && left.contains(&scope),
        "expected the crashed pod's scope beside {scope}: {left:?}"
    );
    let (stray, mut stray_child) = stray_scope(&slice, &daemon.state_dir())?;
    let (foreign, mut foreign_child) = stray_scope(&slice, Path::new("/elsewhere"))?;
    wait_unit(&stray, "active").await?;
    wait_unit(&foreign, "active").await?;
    let mut c = daemon.start(None).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while scopes_of(&daemon.state_dir())? != [scope.clone()] {
        ensure!(
            Instant::now() < deadline,
            "after the restart: {:?}\n{}",
            scopes_of(&daemon.state_dir())?,
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_unit(&stray, "gone").await?;
    ensure!(
        stray_child.wait()?.code() != Some(0),
        "the stray sleep ran on"
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

    // Removal: the scope and its cgroup go, the kubelet's slice and its limit stay.
    c.remove_container(RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await?;
    peapod_tests::stop_and_remove_pod(&mut c, &pod).await?;
    wait_unit(&scope, "gone").await?;
    ensure!(
        !Path::new("/sys/fs/cgroup")
            .join(scope_cgroup.trim_start_matches('/'))
            .exists(),
        "the scope's cgroup is left"
    );
    ensure!(show(&slice, "ActiveState")? == "active");
    ensure!(cgroup_file(&slice_cgroup, "memory.max")? == (512 * MIB).to_string());
    ensure!(scopes_of(&daemon.state_dir())?.is_empty());
    daemon.kill();
    let _ = run("systemctl", &["stop", &slice]);
    Ok(())
}
