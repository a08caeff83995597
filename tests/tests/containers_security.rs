//! What a container gets, checked from inside: env, args, working dir, user and groups,
//! read-only rootfs, capabilities, no_new_privs, seccomp, masked paths, mounts, cgroup limits.

mod common;

use anyhow::{Result, ensure};
use cri_api::v1::{
    Capability, HugepageLimit, Int64Value, LinuxContainerResources, Mount, MountPropagation,
    SecurityProfile, StatusRequest, SupplementalGroupsPolicy,
};
use peapod_tests::containers::{BUSYBOX, VARIANT, container_config, env, security};

/// CapEff of /proc/self/status as a bit mask.
fn cap_eff(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX)
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or("")
}

/// SupplementalGroupsPolicy, the API's example: runAsUser 1000, runAsGroup 3000,
/// supplementalGroups 4000, and the image's `/etc/group` lists the user in `extra` (50000).
/// Merge adds that group, Strict does not; `ContainerStatus.user` says what the process has
/// (`id -G` inside), and Status advertises the feature.
#[tokio::test]
async fn supplemental_groups_merge_or_strict_and_the_status_says_which() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("groups");
    let pod = node.run_pod(&cfg).await?;
    let features = node
        .client()
        .await?
        .status(StatusRequest { verbose: false })
        .await?
        .into_inner()
        .features;
    ensure!(
        features.is_some_and(|f| f.supplemental_groups_policy),
        "Status does not advertise SupplementalGroupsPolicy"
    );
    for (name, policy, want) in [
        (
            "merge",
            SupplementalGroupsPolicy::Merge,
            vec![3000, 4000, 50000],
        ),
        ("strict", SupplementalGroupsPolicy::Strict, vec![3000, 4000]),
    ] {
        let mut c = container_config(name, BUSYBOX, &["sleep", "1000"]);
        let sc = security(&mut c);
        sc.run_as_user = Some(Int64Value { value: 1000 });
        sc.run_as_group = Some(Int64Value { value: 3000 });
        sc.supplemental_groups = vec![4000];
        sc.supplemental_groups_policy = policy as i32;
        let id = node.run_container(&pod, &cfg, c).await?;
        let inside = node.exec_ok(&id, &["id", "-G"]).await?;
        let mut inside: Vec<i64> = inside
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        inside.sort_unstable();
        inside.dedup();
        ensure!(
            inside == want,
            "{name}: id -G says {inside:?}, not {want:?}"
        );
        let user = node
            .container_status(&id)
            .await?
            .user
            .and_then(|u| u.linux)
            .ok_or_else(|| anyhow::anyhow!("{name}: no user in the status"))?;
        let mut groups = user.supplemental_groups.clone();
        groups.sort_unstable();
        ensure!(
            (user.uid, user.gid, groups) == (1000, 3000, want.clone()),
            "{name}: the status says {user:?}, id -G {inside:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_container_gets_what_it_asked_for() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("sec");
    let pod = node.run_pod(&cfg).await?;
    let host_dir = node.dir().join("shared");
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(host_dir.join("file"), "from the node\n")?;

    // The variant's entrypoint (`/bin/sh -c`) + request args, env merged (the request wins),
    // the request's working dir.
    let mut c = container_config("main", VARIANT, &[]);
    c.args = vec!["echo \"$FOO $BAR $PWD\"; exec sleep 1000".into()];
    c.envs = vec![env("FOO", "request"), env("BAR", "x")];
    c.working_dir = "/var/www".into();
    c.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: host_dir.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let sc = security(&mut c);
    sc.run_as_username = "app".into();
    sc.supplemental_groups = vec![4242];
    sc.no_new_privs = true;
    sc.readonly_rootfs = true;
    sc.seccomp = Some(SecurityProfile {
        profile_type: 0, // RuntimeDefault
        localhost_ref: String::new(),
    });
    c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 48 << 20,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpu_shares: 512,
        unified: [("pids.max".to_owned(), "64".to_owned())].into(),
        // As the kubelet sends it for every page size the kernel has; written where a v1
        // hugetlb hierarchy is mounted, and where none is (this machine) no reason to fail.
        hugepage_limits: vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 0,
        }],
        ..Default::default()
    });
    let main = node.run_container(&pod, &cfg, c).await?;
    let log = node
        .wait_log(
            &cfg,
            "main.log",
            "stdout F",
            std::time::Duration::from_secs(10),
        )
        .await?;
    ensure!(log.contains("stdout F request x /var/www"), "{log}");

    let id = node.exec_ok(&main, &["id"]).await?;
    ensure!(
        // The primary group first (as containerd has it), the image's `extra` that lists
        // `app` (SupplementalGroupsPolicy Merge, the default), the request's 4242.
        id.contains("uid=1000(app) gid=1000(app) groups=1000(app),4242,50000(extra)"),
        "{id}"
    );
    let status = node.exec_ok(&main, &["cat", "/proc/self/status"]).await?;
    ensure!(
        cap_eff(&status) == 0,
        "a non-root user has no effective caps: {status}"
    );
    ensure!(field(&status, "NoNewPrivs:") == "1", "{status}");
    ensure!(field(&status, "Seccomp:") == "2", "{status}");
    let touch = node.exec_sync(&main, &["touch", "/newfile"], 10).await?;
    ensure!(touch.exit_code != 0, "the rootfs is read-only");
    let data = node.exec_ok(&main, &["cat", "/data/file"]).await?;
    ensure!(data == "from the node\n", "{data}");
    let w = node
        .exec_sync(&main, &["sh", "-c", "echo x > /data/new"], 10)
        .await?;
    ensure!(w.exit_code != 0, "the mount is read-only");
    // /proc/timer_list exists on every kernel we run on; masked, it is /dev/null.
    let masked = node
        .exec_ok(
            &main,
            &[
                "sh",
                "-c",
                "wc -c < /proc/timer_list; ls /proc/acpi | wc -l",
            ],
        )
        .await?;
    ensure!(
        masked.split_whitespace().collect::<Vec<_>>() == ["0", "0"],
        "masked: {masked}"
    );
    let sysrq = node.exec_ok(&main, &["cat", "/proc/mounts"]).await?;
    ensure!(
        sysrq
            .lines()
            .any(|l| l.starts_with("proc /proc/sys proc ro,")),
        "/proc/sys is read-only:\n{sysrq}"
    );
    let etc = node.exec_ok(&main, &["cat", "/etc/hostname"]).await?;
    let variant = node.exec_ok(&main, &["cat", "/etc/variant"]).await;
    ensure!(
        variant.is_ok(),
        "the variant's upper layer is in the rootfs: {variant:?}"
    );
    ensure!(etc == "sec\n", "{etc}");
    // Its limits, in the files of the node's cgroup version.
    let v2 = node.sees_cgroup_v2(&main).await?;
    let mem = node
        .own_cgroup(&main, &["memory/memory.limit_in_bytes"], &["memory.max"])
        .await?;
    ensure!(mem == [(48u64 << 20).to_string()], "{mem:?}");
    // Its process sits in <pod cgroup>/<container id> in every v1 hierarchy (the node's
    // cgroup2 line, `0::`, holds no controller peapod uses there), or in the v2 hierarchy.
    let cgroup = node.container_info(&main).await?["cgroupPath"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pid = node.container_pid(&main).await?;
    let proc_cgroup = node.exec(&["cat", &format!("/proc/{pid}/cgroup")]).await?;
    let lines: Vec<&str> = proc_cgroup
        .lines()
        .filter(|l| v2 == l.starts_with("0::"))
        .collect();
    ensure!(
        !cgroup.is_empty()
            && !lines.is_empty()
            && lines.iter().all(|l| l
                .trim_end_matches('/')
                .ends_with(cgroup.trim_start_matches('/'))),
        "the container's process is not in {cgroup} in every hierarchy:\n{proc_cgroup}"
    );
    // cpu shares 512 is v2's weight 20 (runc's conversion).
    let cpu = node
        .own_cgroup(
            &main,
            &["cpu/cpu.cfs_quota_us", "cpu/cpu.shares"],
            &["cpu.max", "cpu.weight"],
        )
        .await?;
    let want: &[&str] = if v2 {
        &["50000", "100000", "20"]
    } else {
        &["50000", "512"]
    };
    ensure!(cpu == want, "{cpu:?}");
    let pids = node
        .own_cgroup(&main, &["pids/pids.max"], &["pids.max"])
        .await?;
    ensure!(pids == ["64"], "{pids:?}");
    let ps = node.exec_ok(&main, &["ps", "-o", "pid,comm"]).await?;
    ensure!(
        ps.lines().any(|l| l.trim() == "1 sleep"),
        "own PID namespace:\n{ps}"
    );

    // Root with the default capabilities, one dropped and one added.
    let mut r = container_config("root", VARIANT, &["sleep", "1000"]);
    security(&mut r).capabilities = Some(Capability {
        add_capabilities: vec!["NET_ADMIN".into()],
        drop_capabilities: vec!["CHOWN".into()],
        ..Default::default()
    });
    security(&mut r).run_as_user = Some(Int64Value { value: 0 });
    let root = node.run_container(&pod, &cfg, r).await?;
    let status = node.exec_ok(&root, &["cat", "/proc/self/status"]).await?;
    let eff = cap_eff(&status);
    const CHOWN: u64 = 1 << 0;
    const KILL: u64 = 1 << 5;
    const NET_ADMIN: u64 = 1 << 12;
    const SYS_ADMIN: u64 = 1 << 21;
    ensure!(
        eff & CHOWN == 0 && eff & KILL != 0 && eff & NET_ADMIN != 0,
        "{eff:x}"
    );
    ensure!(
        eff & SYS_ADMIN == 0 && field(&status, "NoNewPrivs:") == "0",
        "{status}"
    );
    ensure!(
        field(&status, "Seccomp:") == "0",
        "unconfined by default: {status}"
    );

    // Privileged: every capability the runtime itself has (its bounding set, which on this
    // machine lacks CAP_SYS_RESOURCE), and it starts.
    let mut p = container_config("privileged", BUSYBOX, &["sleep", "1000"]);
    security(&mut p).privileged = true;
    let privileged = node.run_container(&pod, &cfg, p).await?;
    let status = node
        .exec_ok(&privileged, &["cat", "/proc/self/status"])
        .await?;
    let node_status = node.exec(&["cat", "/proc/1/status"]).await?;
    let bounding = node_status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    ensure!(
        cap_eff(&status) == bounding,
        "privileged CapEff {:x}, the node's bounding set {bounding:x}",
        cap_eff(&status)
    );
    ensure!(node.exec_ok(&root, &["touch", "/newfile"]).await.is_ok());

    // The image's user, working dir and stop signal (SIGUSR1, which this one traps).
    let script =
        "trap 'echo got USR1; exit 0' USR1; echo $(id -u) $PWD; while true; do sleep 0.1; done";
    let img = node
        .run_container(
            &pod,
            &cfg,
            container_config("img", VARIANT, &["sh", "-c", script]),
        )
        .await?;
    let log = node
        .wait_log(
            &cfg,
            "img.log",
            "stdout F",
            std::time::Duration::from_secs(10),
        )
        .await?;
    ensure!(log.contains("stdout F 1000 /home/app"), "{log}");
    let started = std::time::Instant::now();
    node.stop_container(&img, 30).await?;
    let s = node.container_status(&img).await?;
    ensure!(
        s.exit_code == 0 && started.elapsed().as_secs() < 10,
        "stopped by SIGUSR1: {s:?}"
    );
    ensure!(
        node.container_log(&cfg, "img.log")
            .contains("stdout F got USR1")
    );

    // A missing host path is a clear error.
    let mut bad = container_config("bad", BUSYBOX, &["true"]);
    bad.mounts = vec![Mount {
        container_path: "/x".into(),
        host_path: "/no/such/dir".into(),
        ..Default::default()
    }];
    let err = format!(
        "{:#}",
        node.create_container(&pod, &cfg, bad).await.unwrap_err()
    );
    ensure!(
        err.contains("/no/such/dir") && err.contains("invalid argument"),
        "{err}"
    );

    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn localhost_seccomp_profiles_and_a_shared_pid_namespace() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node
        .pod_config("shared")
        .pid(cri_api::v1::NamespaceMode::Pod);
    let pod = node.run_pod(&cfg).await?;

    let profile = node.dir().join("deny-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )?;
    let mut c = container_config("a", BUSYBOX, &["sleep", "1000"]);
    let sc = security(&mut c);
    sc.seccomp = Some(SecurityProfile {
        profile_type: 2, // Localhost
        localhost_ref: profile.display().to_string(),
    });
    sc.namespace_options = Some(cri_api::v1::NamespaceOption {
        pid: cri_api::v1::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let a = node.run_container(&pod, &cfg, c).await?;
    let r = node.exec_sync(&a, &["mkdir", "/tmp/x"], 10).await?;
    let err = String::from_utf8_lossy(&r.stderr);
    ensure!(
        r.exit_code != 0 && err.contains("ermission denied"),
        "{r:?}"
    );
    ensure!(node.exec_ok(&a, &["touch", "/tmp/y"]).await.is_ok());

    // The pod's PID namespace: the pause is PID 1, and the container sees it.
    let ps = node.exec_ok(&a, &["ps", "-o", "pid,comm"]).await?;
    ensure!(ps.lines().any(|l| l.trim() == "1 peapod-pause"), "{ps}");

    // In a shared PID namespace a container's children outlive it: stopping it kills them
    // too (they are in its cgroup; on v2 with `cgroup.kill`, which nothing forking escapes:
    // here a loop that keeps forking), and it can be removed.
    let mut bg = container_config(
        "bg",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "(while :; do sleep 1234 & sleep 0.01; done) & sleep 999",
        ],
    );
    security(&mut bg).namespace_options = Some(cri_api::v1::NamespaceOption {
        pid: cri_api::v1::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let bg = node.run_container(&pod, &cfg, bg).await?;
    let mut seen = String::new();
    for _ in 0..100 {
        seen = node.exec_ok(&a, &["ps", "-o", "args"]).await?;
        if seen.contains("sleep 1234") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    ensure!(seen.contains("sleep 1234"), "{seen}");
    node.stop_container(&bg, 0).await?;
    node.remove_container(&bg).await?;
    for _ in 0..2 {
        let ps = node.exec_ok(&a, &["ps", "-o", "args"]).await?;
        ensure!(
            !ps.contains("sleep 1234") && !ps.contains("sleep 999") && !ps.contains("while"),
            "{ps}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let mut missing = container_config("b", BUSYBOX, &["true"]);
    security(&mut missing).seccomp = Some(SecurityProfile {
        profile_type: 2,
        localhost_ref: "/no/such/profile.json".into(),
    });
    let e = format!(
        "{:#}",
        node.create_container(&pod, &cfg, missing)
            .await
            .unwrap_err()
    );
    ensure!(
        e.contains("/no/such/profile.json") && e.contains("invalid argument"),
        "{e}"
    );

    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

/// The node's mount table, as seen from inside the node.
async fn node_mounts(node: &peapod_tests::Node) -> Result<String> {
    node.exec(&["cat", "/proc/self/mountinfo"]).await
}

/// Whether `mountinfo` has a mount at `path`.
fn mounted(mountinfo: &str, path: &str) -> bool {
    mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

#[tokio::test]
async fn bidirectional_mounts_reach_the_node_and_host_to_container_ones_do_not() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("prop");
    let pod = node.run_pod(&cfg).await?;
    let dir = |name: &str| -> Result<String> {
        let d = node.dir().join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d.display().to_string())
    };
    let (bidi, h2c, private) = (dir("bidi")?, dir("h2c")?, dir("private")?);
    // Both sources are shared mounts of the node, so only the propagation mode tells them apart.
    for d in [&bidi, &h2c] {
        node.exec(&["mount", "--bind", d, d]).await?;
        node.exec(&["mount", "--make-shared", d]).await?;
    }

    let mut c = container_config("mounter", BUSYBOX, &["sleep", "1000"]);
    c.mounts = vec![
        Mount {
            container_path: "/shared".into(),
            host_path: bidi.clone(),
            propagation: MountPropagation::PropagationBidirectional as i32,
            ..Default::default()
        },
        Mount {
            container_path: "/h2c".into(),
            host_path: h2c.clone(),
            propagation: MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        },
    ];
    // mount(2) needs CAP_SYS_ADMIN (not `privileged`: this node's bounding set may lack
    // capabilities a privileged container asks for).
    let sc = security(&mut c);
    sc.capabilities = Some(Capability {
        add_capabilities: vec!["SYS_ADMIN".into()],
        ..Default::default()
    });
    sc.seccomp = Some(SecurityProfile {
        profile_type: 1, // Unconfined
        localhost_ref: String::new(),
    });
    let id = node.run_container(&pod, &cfg, c).await?;

    // Container → node: only through the Bidirectional mount.
    let mount_in = "mkdir -p /shared/sub /h2c/sub && mount -t tmpfs tmpfs /shared/sub \
                    && mount -t tmpfs tmpfs /h2c/sub";
    node.exec_ok(&id, &["sh", "-c", mount_in]).await?;
    let seen = node_mounts(&node).await?;
    let (bidi_sub, h2c_sub) = (format!("{bidi}/sub"), format!("{h2c}/sub"));
    ensure!(
        mounted(&seen, &bidi_sub),
        "no {bidi_sub} on the node:\n{seen}"
    );
    ensure!(
        !mounted(&seen, &h2c_sub),
        "{h2c_sub} leaked to the node:\n{seen}"
    );

    // Node → container: through both.
    for d in [&bidi, &h2c] {
        let at = format!("{d}/fromnode");
        std::fs::create_dir_all(&at)?;
        node.exec(&["mount", "-t", "tmpfs", "tmpfs", &at]).await?;
    }
    let inside = node.exec_ok(&id, &["cat", "/proc/self/mountinfo"]).await?;
    for p in [
        "/shared/fromnode",
        "/h2c/fromnode",
        "/shared/sub",
        "/h2c/sub",
    ] {
        ensure!(mounted(&inside, p), "no {p} in the container:\n{inside}");
    }

    // A Bidirectional mount of a source that is not a shared mount is refused.
    let mut bad = container_config("bad", BUSYBOX, &["true"]);
    bad.mounts = vec![Mount {
        container_path: "/x".into(),
        host_path: private.clone(),
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let err = format!(
        "{:#}",
        node.create_container(&pod, &cfg, bad).await.unwrap_err()
    );
    ensure!(
        err.contains("not a shared mount") && err.contains("invalid argument"),
        "{err}"
    );

    node.stop_and_remove(&pod).await?;
    for m in [
        bidi_sub,
        format!("{bidi}/fromnode"),
        format!("{h2c}/fromnode"),
        bidi,
        h2c,
    ] {
        node.exec(&["umount", &m]).await?;
    }
    ensure!(!node_mounts(&node).await?.contains("/bidi"));
    node.assert_empty().await
}

/// `recursive_read_only` (Kubernetes' recursiveReadOnly): the mounts below a read-only bind are
/// read-only too, where a plain read-only bind leaves them writable. Refused without
/// `readonly` or with a propagation other than private; advertised in Status.
#[tokio::test]
async fn recursive_read_only_mounts_reach_the_mounts_below() -> Result<()> {
    let node = common::node().await?;
    let status = node
        .client()
        .await?
        .status(cri_api::v1::StatusRequest { verbose: false })
        .await?
        .into_inner();
    let features = status.runtime_handlers.first().and_then(|h| h.features);
    ensure!(
        features.is_some_and(|f| f.recursive_read_only_mounts),
        "not advertised: {:?}",
        status.runtime_handlers
    );
    node.import_busybox().await?;
    let cfg = node.pod_config("rro");
    let pod = node.run_pod(&cfg).await?;
    let data = node.dir().join("rro-data");
    std::fs::create_dir_all(data.join("sub"))?;
    let data = data.display().to_string();
    let sub = format!("{data}/sub");
    node.exec(&["mount", "-t", "tmpfs", "tmpfs", &sub]).await?;

    let mount = |recursive: bool, readonly: bool, propagation: MountPropagation| Mount {
        container_path: "/data".into(),
        host_path: data.clone(),
        readonly,
        recursive_read_only: recursive,
        propagation: propagation as i32,
        ..Default::default()
    };
    let with = |name: &str, m: Mount| {
        let mut c = container_config(name, BUSYBOX, &["sleep", "1000"]);
        c.mounts = vec![m];
        c
    };
    let private = MountPropagation::PropagationPrivate;
    let plain = with("plain", mount(false, true, private));
    let plain = node.run_container(&pod, &cfg, plain).await?;
    let rro = with("rro", mount(true, true, private));
    let rro = node.run_container(&pod, &cfg, rro).await?;
    let touch = |id: String, file: &'static str| {
        let node = &node;
        async move { node.exec_sync(&id, &["touch", file], 10).await }
    };
    // Both tops are read-only; below, only the recursive one is.
    for id in [&plain, &rro] {
        let r = touch(id.clone(), "/data/top").await?;
        ensure!(r.exit_code != 0, "/data is writable in {id}");
    }
    let r = touch(plain.clone(), "/data/sub/plain").await?;
    ensure!(r.exit_code == 0, "a plain read-only bind: {r:?}");
    let r = touch(rro.clone(), "/data/sub/rro").await?;
    ensure!(
        r.exit_code != 0 && String::from_utf8_lossy(&r.stderr).contains("Read-only"),
        "the mount below a recursive read-only bind is writable: {r:?}"
    );
    let status = node.container_status(&rro).await?;
    ensure!(
        status.mounts.iter().any(|m| m.recursive_read_only),
        "{:?}",
        status.mounts
    );

    for (m, why) in [
        (mount(true, false, private), "needs readonly"),
        (
            mount(true, true, MountPropagation::PropagationHostToContainer),
            "PROPAGATION_PRIVATE",
        ),
    ] {
        let err = node
            .create_container(&pod, &cfg, with("bad", m))
            .await
            .expect_err("refused");
        let err = format!("{err:#}");
        ensure!(
            err.contains(why) && err.contains("invalid argument"),
            "{err}"
        );
    }

    node.stop_and_remove(&pod).await?;
    node.exec(&["umount", &sub]).await?;
    node.assert_empty().await
}
