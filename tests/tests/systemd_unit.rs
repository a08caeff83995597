//! peapod under systemd with the unit the project ships (`deploy/systemd/peapod.service`):
//! `systemctl stop` and `systemctl restart` of the unit (its `KillMode=control-group` kills
//! everything in the unit's cgroup) lose no container, no log line and no exit code, and a
//! daemon killed by the OOM killer's signal is restarted by systemd. It needs systemd as
//! PID 1, which only the VM node has: `vm_node.rs` runs it there (`--ignored`); on the host it
//! is listed as ignored.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cri_api::v1::{
    ContainerState, ContainerStatusRequest, CreateContainerRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest,
};
use peapod_tests::containers::{BUSYBOX, container_config};
use peapod_tests::{Client, PodConfig, TestImages};

const UNIT: &str = "peapod.service";
const SOCKET: &str = "/run/peapod/peapod.sock";
const LOGS: &str = "/var/log/peapod-unit-test";

fn shipped_unit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/peapod.service")
}

fn systemctl(args: &[&str]) -> Result<String> {
    let out = Command::new("systemctl").args(args).output()?;
    ensure!(
        out.status.success(),
        "systemctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The unit's main pid, once it answers on its socket.
async fn wait_ready() -> Result<(u32, Client)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pid: u32 = systemctl(&["show", "-P", "MainPID", UNIT])?
            .trim()
            .parse()?;
        if pid != 0
            && let Ok(mut c) = peapod_tests::connect(Path::new(SOCKET)).await
            && c.version(cri_api::v1::VersionRequest::default())
                .await
                .is_ok()
        {
            return Ok((pid, c));
        }
        ensure!(Instant::now() < deadline, "{UNIT} did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The shipped unit, installed as it is with a drop-in that points it at the binaries under
/// test; started.
async fn install_and_start() -> Result<(u32, Client)> {
    let bins = peapod_tests::bin_dir();
    std::fs::copy(shipped_unit(), Path::new("/run/systemd/system").join(UNIT))?;
    let dropin = Path::new("/run/systemd/system/peapod.service.d");
    std::fs::create_dir_all(dropin)?;
    std::fs::write(
        dropin.join("binaries.conf"),
        format!(
            "[Service]\nExecStart=\nExecStart={} serve\n",
            bins.join("peapod").display()
        ),
    )?;
    systemctl(&["daemon-reload"])?;
    systemctl(&["start", UNIT])?;
    wait_ready().await
}

fn ticks(log: &str) -> usize {
    log.matches(" stdout F tick ").count()
}

async fn state(c: &mut Client, id: &str) -> Result<(i32, i32)> {
    let s = c
        .container_status(ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no status")?;
    Ok((s.state, s.exit_code))
}

#[tokio::test]
#[ignore = "needs systemd as PID 1: runs inside the VM node (vm_node.rs)"]
async fn stopping_and_restarting_the_unit_loses_no_container() -> Result<()> {
    peapod_tests::require_root();
    let comm = std::fs::read_to_string("/proc/1/comm")?;
    if comm.trim() != "systemd" {
        bail!("PID 1 is {comm:?}, not systemd: run this test in the VM node");
    }
    let unit = std::fs::read_to_string(shipped_unit())?;
    ensure!(unit.contains("KillMode=control-group"), "{unit}");
    let (first, mut c) = install_and_start().await?;
    // No driver in the config: systemd as PID 1, answering on the bus, is detected.
    let config = c
        .runtime_config(cri_api::v1::RuntimeConfigRequest::default())
        .await?
        .into_inner();
    ensure!(
        config.linux.map(|l| l.cgroup_driver) == Some(cri_api::v1::CgroupDriver::Systemd as i32),
        "the unit's daemon did not pick the systemd driver"
    );

    let images = TestImages::build()?;
    let out = Command::new(peapod_tests::bin_dir().join("peapod"))
        .args(["image", "import"])
        .arg(images.path("busybox.oci.tar"))
        .output()?;
    ensure!(out.status.success(), "import: {out:?}");
    std::fs::create_dir_all(LOGS)?;
    let mut pod_cfg = PodConfig::new("unit");
    pod_cfg.log_directory = LOGS.to_owned();
    let pod = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_cfg.build()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let script = "trap 'echo bye; exit 3' TERM; i=0; \
                  while :; do echo tick $i; i=$((i+1)); sleep 0.2; done";
    let ctr = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("ticker", BUSYBOX, &["sh", "-c", script])),
            sandbox_config: Some(pod_cfg.build()),
        })
        .await?
        .into_inner()
        .container_id;
    c.start_container(StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await?;
    let log_file = Path::new(LOGS).join("ticker.log");
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks(&log()) < 2 {
        ensure!(Instant::now() < deadline, "no ticks: {}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stopped: the unit's cgroup is emptied, the container goes on logging.
    systemctl(&["stop", UNIT])?;
    let left = systemctl(&["show", "-P", "ControlGroup", UNIT])?;
    let before = ticks(&log());
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        ticks(&log()) > before,
        "the container stopped logging with the unit (cgroup {left:?}): {}",
        log()
    );
    systemctl(&["start", UNIT])?;
    let (second, mut c) = wait_ready().await?;
    ensure!(second != first, "the same daemon after a stop and start");
    let running = ContainerState::ContainerRunning as i32;
    ensure!(
        state(&mut c, &ctr).await?.0 == running,
        "not running after a stop"
    );

    // Restarted, and SIGKILLed (Restart=always brings it back): the same.
    systemctl(&["restart", UNIT])?;
    let (_, mut c) = wait_ready().await?;
    ensure!(
        state(&mut c, &ctr).await?.0 == running,
        "not running after a restart"
    );
    systemctl(&["kill", "--signal=SIGKILL", UNIT])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, mut c) = wait_ready().await?;
    ensure!(
        state(&mut c, &ctr).await?.0 == running,
        "not running after a kill"
    );

    // The exit code and the last words still arrive.
    c.stop_container(StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 10,
    })
    .await?;
    let (st, code) = state(&mut c, &ctr).await?;
    ensure!(
        st == ContainerState::ContainerExited as i32 && code == 3,
        "state {st}, exit code {code}"
    );
    ensure!(log().contains(" stdout F bye"), "{}", log());

    peapod_tests::stop_and_remove_pod(&mut c, &pod).await?;
    systemctl(&["stop", UNIT])?;
    Ok(())
}
