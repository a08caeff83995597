//! The VM test node (hack/vm, tests/src/vm.rs): ONE Debian VM with systemd and the full
//! cgroup v2 hierarchy, booted under TCG, runs the smoke check and then, inside, the
//! integration tests that must hold on a modern node. Building the image the first time takes
//! a minute or two (then it is cached); a boot about 40 s here. Never skipped: a missing
//! qemu, debootstrap or test executable fails the test.
mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use peapod_tests::vm::Vm;

/// The integration test files (tests/tests/<name>.rs) that run inside the VM, each as one
/// step with these libtest arguments. Cargo builds them with this one (`cargo test` builds
/// every test target before running any); running this file alone needs them built before.
///
/// Tests that read cgroup files read those of the node's version (`Node::own_cgroup`), so
/// the same test holds v1 on the host and v2 here. Under TCG a test that runs a pod takes
/// 20-60 s.
const IN_VM: &[(&str, &[&str])] = &[
    (
        "cgroup_v2",
        &[
            "--exact",
            "a_crashed_daemon_recovers_v2_pods_and_collects_orphaned_cgroups",
        ],
    ),
    (
        "escape_devices",
        &["--exact", "on_cgroup_v2_a_device_program_does_the_same"],
    ),
    ("escape_seccomp", &[]),
    (
        "containers_security",
        &[
            "--exact",
            "localhost_seccomp_profiles_and_a_shared_pid_namespace",
            "the_container_gets_what_it_asked_for",
        ],
    ),
    // Limits in the v2 files, enforced, updated; an OOM kill reported as such.
    (
        "containers_stats",
        &[
            "--exact",
            "limits_are_enforced",
            "update_container_resources_changes_the_cgroup_and_the_status",
            "container_stats_show_cpu_memory_and_the_writable_layer",
        ],
    ),
    ("containers", &["--exact", "logs_exit_codes_stop_and_exec"]),
    // The shim under Debian's containerd: limits, updates, stats and OOM events on v2, and
    // containerd 1.6's systemd-form cgroups paths.
    (
        "containerd_cri",
        &[
            "--exact",
            "stats_updates_and_oom_kills_come_through_containerd",
            "a_slice_parent_and_unified_limits_through_containerd",
        ],
    ),
    // Only here: it needs systemd as PID 1 (ignored on the host).
    (
        "systemd_unit",
        &[
            "--ignored",
            "--exact",
            "stopping_and_restarting_the_unit_loses_no_container",
        ],
    ),
    // The systemd cgroup driver: pods and containers as scopes, a crash, orphans, the
    // kubelet's slices; containerd's tasks as scopes.
    (
        "systemd_driver",
        &[
            "--ignored",
            "--exact",
            "pods_are_delegated_scopes_in_the_kubelets_slices",
            "containerd_tasks_are_scopes_in_their_slices",
        ],
    ),
];

/// Prints `key=value` lines of what makes the node a modern one.
const SMOKE: &str = r#"
echo "controllers=$(cat /sys/fs/cgroup/cgroup.controllers)"
echo "fstype=$(stat -f -c %T /sys/fs/cgroup)"
echo "pid1=$(cat /proc/1/comm)"
echo "failed=$(systemctl list-units --state=failed --no-legend --plain | cut -d' ' -f1 | xargs)"
echo "kernel=$(uname -r)"
"#;

#[test]
fn a_vm_node_runs_the_cgroup_v2_tests_under_systemd() -> Result<()> {
    peapod_tests::require_root();
    let started = Instant::now();
    let mut vm = Vm::new()
        .with_peapod()?
        .file(common::PROBE)
        .file(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/systemd/peapod.service")
                .canonicalize()?,
        )
        .env("RUST_BACKTRACE", "1")
        .timeout(Duration::from_secs(900))
        .step(&["sh", "-c", SMOKE]);
    for (name, args) in IN_VM {
        vm = vm.integration_test(name, args)?;
    }
    let run = vm.run()?;
    println!("vm node: {}", run.timings());
    println!("vm node: total {:.1}s", started.elapsed().as_secs_f64());

    let smoke = &run.steps[0];
    ensure!(smoke.code == 0, "smoke check failed:\n{}", smoke.describe());
    let value = |key: &str| {
        smoke
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or("")
            .to_owned()
    };
    let controllers = value("controllers");
    for controller in ["cpu", "memory", "pids", "io", "cpuset", "hugetlb"] {
        ensure!(
            controllers.split_whitespace().any(|c| c == controller),
            "the VM's root cgroup lacks {controller}: {controllers:?}\n{}",
            smoke.describe()
        );
    }
    ensure!(value("fstype") == "cgroup2fs", "{}", smoke.describe());
    ensure!(value("pid1") == "systemd", "{}", smoke.describe());
    // The system is still `starting` (the step runs in a unit of the boot), but no unit of
    // the node may have failed.
    ensure!(
        value("failed").is_empty(),
        "units failed in the VM:\n{}",
        smoke.describe()
    );

    // Every test's outcome, not just the first failure's: one boot, one report.
    let mut failed = Vec::new();
    for ((name, _), step) in IN_VM.iter().zip(&run.steps[1..]) {
        // A filter that matched nothing passes too: each step must have run a test.
        let passed = step
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("test result: ok. "))
            .and_then(|l| l.split(' ').next()?.parse::<u32>().ok())
            .unwrap_or(0);
        if step.code == 0 && passed > 0 {
            println!("vm node: {name} in the VM:\n{}", step.stdout);
        } else {
            println!("vm node: {name} FAILED in the VM:\n{}", step.describe());
            failed.push(*name);
        }
    }
    ensure!(
        failed.is_empty(),
        "in the VM node, these failed (their output is above): {failed:?}"
    );
    Ok(())
}
