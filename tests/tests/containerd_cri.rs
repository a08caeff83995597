//! containerd's CRI with peapod underneath: `peapod` (the shim) as its default runtime and
//! `peapod-cni` as its pod network, driven by the tests' own CRI client on containerd's
//! socket, in a throwaway node.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_api::v1::{
    ContainerState, ContainerStatsRequest, Int64Value, LinuxContainerResources, Mount,
    PodSandboxStatusRequest, Protocol, SecurityProfile, UpdateContainerResourcesRequest,
};
use peapod_tests::containerd::{BUSYBOX, CRI_SUBNET, Containerd};
use peapod_tests::containers::{container_config, security};
use peapod_tests::in_cidr;

/// The pod's IP as containerd's CRI reports it (from peapod-cni's result).
async fn pod_ip(c: &Containerd, id: &str) -> Result<String> {
    let status = c
        .node()
        .client()
        .await?
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        })
        .await?
        .into_inner();
    let ip = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    ensure!(in_cidr(&ip, CRI_SUBNET), "pod {id} has IP {ip:?}");
    Ok(ip)
}

/// Nothing of the pods is left: no shim, monitor or container process, no pod link, no
/// lease, no task dir, no cgroup below the pods' parent.
async fn nothing_left(c: &Containerd) -> Result<()> {
    let node = c.node();
    // Nothing left: no shim, monitor or container process, no pod link, no lease, no
    // task dir, no cgroup. A shim exits on its own after containerd's Shutdown, which a
    // loaded machine may take a moment to carry out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = node
            .exec_output(&[
                "pgrep",
                "-a",
                "-f",
                "containerd-shim-peapod|peapod(-monitor)? monitor|httpd|^/pause$",
            ])
            .await?;
        if !found.status.success() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "left running: {}",
            String::from_utf8_lossy(&found.stdout)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let links = node.exec(&["ip", "-o", "link", "show"]).await?;
    ensure!(
        !links
            .lines()
            .any(|l| l.split(": ").nth(1).is_some_and(|n| n.starts_with("pp"))),
        "pod links left: {links}"
    );
    let leases = std::fs::read_dir(node.dir().join("cni-data/pods/ipam"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0);
    ensure!(leases == 0, "{leases} leases left");
    let tasks = node
        .exec(&["ls", "-A", "/run/peapod-shim"])
        .await
        .unwrap_or_default();
    ensure!(
        tasks.lines().all(|l| l == "cgroup-parents.json"),
        "task dirs left: {tasks}"
    );
    ensure!(
        c.cgroups_left()
            .iter()
            .all(|d| d.ends_with(node.cgroup_parent().trim_start_matches('/'))),
        "cgroups left: {:?}",
        c.cgroups_left()
    );
    Ok(())
}

#[tokio::test]
async fn the_classic_pod_runs_through_containerd() -> Result<()> {
    let c = Containerd::start_cri().await?;
    let node = c.node();
    let web = node.pod_config("web");
    let a = node.run_pod(&web).await?;
    let ip = pod_ip(&c, &a).await?;

    // A web server and a client in one pod: they share localhost.
    let server = container_config(
        "server",
        BUSYBOX,
        &["httpd", "-f", "-p", "80", "-h", "/var/www"],
    );
    let server = node.run_container(&a, &web, server).await?;
    let script = "until wget -qO- http://localhost/; do sleep 0.1; done; ip -4 -o addr show eth0";
    let client = container_config("client", BUSYBOX, &["sh", "-c", script]);
    let client = node.run_container(&a, &web, client).await?;
    let status = node.wait_exited(&client, Duration::from_secs(20)).await?;
    ensure!(status.exit_code == 0, "client: {status:?}");
    let log = node.container_log(&web, "client.log");
    ensure!(
        log.contains(" stdout F <h1>peapod</h1>"),
        "client log:\n{log}"
    );
    // ... and the pod's one IP, on the eth0 peapod-cni made.
    ensure!(log.contains(&format!("inet {ip}/24")), "client log:\n{log}");

    // ExecSync through containerd: in the server's namespaces, with its exit code.
    let eth0 = node
        .exec_ok(&server, &["ip", "-4", "-o", "addr", "show", "eth0"])
        .await?;
    ensure!(
        eth0.contains(&format!("inet {ip}/24")),
        "server eth0: {eth0}"
    );
    let failed = node
        .exec_sync(&server, &["sh", "-c", "echo oops >&2; exit 5"], 10)
        .await?;
    ensure!(failed.exit_code == 5, "exec exit code {}", failed.exit_code);
    ensure!(
        String::from_utf8_lossy(&failed.stderr).contains("oops"),
        "{failed:?}"
    );

    // A second pod reaches the server at that IP, through peapod-cni's bridge.
    let other = node.pod_config("other");
    let b = node.run_pod(&other).await?;
    let ip_b = pod_ip(&c, &b).await?;
    ensure!(ip_b != ip, "both pods got {ip}");
    let url = format!("http://{ip}/");
    let fetch = container_config("fetch", BUSYBOX, &["wget", "-qO-", &url]);
    let fetch = node.run_container(&b, &other, fetch).await?;
    let status = node.wait_exited(&fetch, Duration::from_secs(20)).await?;
    ensure!(status.exit_code == 0, "fetch from pod B: {status:?}");
    let log = node.container_log(&other, "fetch.log");
    ensure!(log.contains("<h1>peapod</h1>"), "fetch log:\n{log}");

    // Exit codes come back through the shim.
    let fail = container_config("fail", BUSYBOX, &["sh", "-c", "exit 3"]);
    let fail = node.run_container(&b, &other, fail).await?;
    let status = node.wait_exited(&fail, Duration::from_secs(20)).await?;
    ensure!(status.exit_code == 3, "exit 3: {status:?}");

    node.stop_container(&server, 5).await?;
    for id in [&a, &b] {
        node.stop_and_remove(id).await?;
    }
    nothing_left(&c).await
}

#[tokio::test]
async fn host_ports_as_containerd_sends_them_reach_the_pod_and_go_with_it() -> Result<()> {
    // containerd 1.6 hands peapod-cni the mapping with Go's field names (`HostPort`).
    let c = Containerd::start_cri().await?;
    let node = c.node();
    let cfg = node.pod_config("ports").port(Protocol::Tcp, "", 12000, 80);
    let pod = node.run_pod(&cfg).await?;
    pod_ip(&c, &pod).await?;
    let server = container_config(
        "server",
        BUSYBOX,
        &["httpd", "-f", "-p", "80", "-h", "/var/www"],
    );
    node.run_container(&pod, &cfg, server).await?;
    // From the node, at the bridge's address, through the hostPort.
    let url = "http://10.99.0.1:12000/";
    let mut page = String::new();
    for _ in 0..50 {
        let out = node.exec_output(&["wget", "-qO-", "-T", "2", url]).await?;
        page = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(page.contains("<h1>peapod</h1>"), "{url} said {page:?}");

    // containerd's teardown (a DEL with the same runtimeConfig) removes it all.
    node.stop_and_remove(&pod).await?;
    let map = node
        .exec(&["nft", "list", "map", "inet", "peapod", "hostports_any"])
        .await?;
    ensure!(
        !map.contains("12000"),
        "the mapping outlived the pod: {map}"
    );
    nothing_left(&c).await
}

#[tokio::test]
async fn containers_outlive_a_containerd_restart_and_a_killed_shim_is_an_exit() -> Result<()> {
    let mut c = Containerd::start_cri().await?;
    let cfg = c.node().pod_config("keep");
    let pod = c.node().run_pod(&cfg).await?;
    let sleeper = container_config("sleeper", BUSYBOX, &["sleep", "1000"]);
    let sleeper = c.node().run_container(&pod, &cfg, sleeper).await?;

    c.kill_daemon().await?;
    c.start_daemon().await?;
    let node = c.node();
    let s = node.container_status(&sleeper).await?;
    ensure!(
        s.state == ContainerState::ContainerRunning as i32,
        "after the restart: {s:?}"
    );
    node.exec_ok(&sleeper, &["true"]).await?;

    // The pod's shim killed: containerd cleans up after it and sees the container exit.
    node.exec(&["pkill", "-KILL", "-f", "containerd-shim-peapod"])
        .await?;
    let s = node.wait_exited(&sleeper, Duration::from_secs(20)).await?;
    ensure!(s.exit_code != 0, "a killed container exited 0: {s:?}");
    node.stop_and_remove(&pod).await?;
    nothing_left(&c).await
}

#[tokio::test]
async fn stats_updates_and_oom_kills_come_through_containerd() -> Result<()> {
    let c = Containerd::start_cri().await?;
    let node = c.node();
    let cfg = node.pod_config("res");
    let pod = node.run_pod(&cfg).await?;
    // Busy for a moment, with 8 MiB of its own memory, then idle.
    let script = "dd if=/dev/zero bs=1M count=8 | tail -c 8M >/dev/null & \
                  i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000";
    let worker = container_config("worker", BUSYBOX, &["sh", "-c", script]);
    let worker = node.run_container(&pod, &cfg, worker).await?;
    let mut client = node.client().await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = client
            .container_stats(ContainerStatsRequest {
                container_id: worker.clone(),
            })
            .await?
            .into_inner()
            .stats
            .unwrap_or_default();
        let cpu = stats.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds);
        let mem = stats.memory.as_ref().and_then(|m| m.working_set_bytes);
        if cpu.is_some_and(|v| v.value > 0) && mem.is_some_and(|v| v.value > 0) {
            break stats;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no usage in {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        stats.attributes.as_ref().is_some_and(|a| a.id == worker),
        "{stats:?}"
    );

    // UpdateContainerResources reaches the task's cgroup.
    client
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: worker.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 256 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let limit = node
        .own_cgroup(&worker, &["memory/memory.limit_in_bytes"], &["memory.max"])
        .await?;
    ensure!(
        limit == [(256u64 << 20).to_string()],
        "memory limit {limit:?}"
    );

    // An OOM kill is reported as such (the shim's TaskOOM event).
    let mut hog = container_config(
        "hog",
        BUSYBOX,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    hog.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 16 << 20,
        ..Default::default()
    });
    let hog = node.run_container(&pod, &cfg, hog).await?;
    let s = node.wait_exited(&hog, Duration::from_secs(20)).await?;
    ensure!(s.reason == "OOMKilled" && s.exit_code == 137, "{s:?}");

    node.stop_and_remove(&pod).await?;
    nothing_left(&c).await
}

#[tokio::test]
async fn the_security_context_holds_through_containerd() -> Result<()> {
    let c = Containerd::start_cri().await?;
    let node = c.node();
    let host_dir = node.dir().join("shared");
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(host_dir.join("file"), "from the node\n")?;
    let cfg = node.pod_config("secure");
    let pod = node.run_pod(&cfg).await?;
    let mut ctr = container_config("main", BUSYBOX, &["sleep", "1000"]);
    ctr.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: host_dir.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let sc = security(&mut ctr);
    sc.run_as_user = Some(Int64Value { value: 1000 });
    sc.no_new_privs = true;
    sc.readonly_rootfs = true;
    sc.seccomp = Some(SecurityProfile {
        profile_type: 0, // RuntimeDefault: containerd's profile, compiled by peapod
        localhost_ref: String::new(),
    });
    let main = node.run_container(&pod, &cfg, ctr).await?;
    let id = node.exec_ok(&main, &["id", "-u"]).await?;
    ensure!(id.trim() == "1000", "id -u: {id}");
    let status = node.exec_ok(&main, &["cat", "/proc/self/status"]).await?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(field("NoNewPrivs:") == "1", "{status}");
    ensure!(field("Seccomp:") == "2", "{status}");
    ensure!(field("CapEff:") == "0000000000000000", "{status}");
    let touch = node.exec_sync(&main, &["touch", "/newfile"], 10).await?;
    ensure!(touch.exit_code != 0, "the rootfs is writable");
    let data = node.exec_ok(&main, &["cat", "/data/file"]).await?;
    ensure!(data == "from the node\n", "{data:?}");
    let write = node
        .exec_sync(&main, &["sh", "-c", "echo x > /data/file"], 10)
        .await?;
    ensure!(write.exit_code != 0, "the read-only mount is writable");
    node.stop_and_remove(&pod).await?;
    nothing_left(&c).await
}

/// Removes a cgroup tree the test named outside the node's parent, also when the test fails
/// (dropped after the node, whose processes are gone by then).
struct CgroupTree(String);

impl Drop for CgroupTree {
    fn drop(&mut self) {
        let left = peapod_tests::remove_cgroup(&self.0);
        assert!(left.is_empty(), "cgroups left: {left:?}");
    }
}

/// containerd 1.6 names a pod's cgroups in systemd's form (`slice:cri-containerd:id`) as
/// soon as its parent is a `.slice`, whatever `SystemdCgroup` says. The shim runs them: on
/// this node without systemd at the cgroupfs paths systemd would give them, with the CRI's
/// `unified` limits in force; and the slices it had to make go with the pod.
#[tokio::test]
async fn a_slice_parent_and_unified_limits_through_containerd() -> Result<()> {
    let top = format!("peapodtest{}", peapod_tests::random_hex(4));
    let _tree = CgroupTree(format!("{top}.slice"));
    let c = Containerd::start_cri().await?;
    let node = c.node();
    let slice = format!("{top}-pod1.slice");
    let cfg = node.pod_config("sliced").cgroup_parent(&slice);
    let pod = node.run_pod(&cfg).await?;
    let mut limited = container_config("limited", BUSYBOX, &["sleep", "1000"]);
    limited.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        unified: [("pids.max".to_owned(), "64".to_owned())].into(),
        ..Default::default()
    });
    let ctr = node.run_container(&pod, &cfg, limited).await?;
    let scope = format!("{top}.slice/{slice}/cri-containerd-{ctr}.scope");
    let pids = peapod_tests::cgroup_hierarchy_of("pids")
        .context("no pids controller")?
        .join(&scope);
    let max = std::fs::read_to_string(pids.join("pids.max"))
        .with_context(|| format!("the task's cgroup {}", pids.display()))?;
    ensure!(max.trim() == "64", "pids.max is {max:?}");
    let procs = std::fs::read_to_string(pids.join("cgroup.procs"))?;
    ensure!(!procs.trim().is_empty(), "no process in {}", pids.display());
    node.stop_and_remove(&pod).await?;
    let left = peapod_tests::cgroup_dirs(&format!("{top}.slice"));
    ensure!(left.is_empty(), "the pod's slices are left: {left:?}");
    nothing_left(&c).await
}
