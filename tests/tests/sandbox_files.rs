//! What a pod's containers will see: hostname, hosts, resolv.conf, sysctls, cgroup.

mod common;

use anyhow::{Context, Result, ensure};

#[tokio::test]
async fn hostname_dns_hosts_sysctls_and_cgroup_follow_the_request() -> Result<()> {
    let node = common::node().await?;
    let config = node
        .pod_config("files")
        .hostname("web-0")
        .dns(
            &["10.96.0.10", "10.96.0.11"],
            &["default.svc.cluster.local", "svc.cluster.local"],
            &["ndots:5", "timeout:2"],
        )
        .sysctl("net.ipv4.ip_unprivileged_port_start", "80")
        .sysctl("kernel.shmmni", "1024");
    let id = node.run_pod(&config).await?;
    let info = node.pod_info(&id).await?;
    let pid = info.pause_pid()?.to_string();

    // Hostname: in the pod's UTS namespace (`ip netns exec` would show the node's).
    let hostname = node
        .exec(&["nsenter", "-t", &pid, "-u", "hostname"])
        .await?;
    ensure!(
        hostname.trim() == "web-0",
        "the pod's hostname is {hostname:?}"
    );

    let dir = node.state_dir().join("sandboxes").join(&id);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("read {}", dir.join(name).display()))
    };
    let file = read("hostname")?;
    ensure!(file.trim() == "web-0", "sandbox hostname file: {file:?}");

    let resolv = read("resolv.conf")?;
    let lines: Vec<&str> = resolv.lines().map(str::trim).collect();
    for expected in [
        "nameserver 10.96.0.10",
        "nameserver 10.96.0.11",
        "search default.svc.cluster.local svc.cluster.local",
    ] {
        ensure!(
            lines.contains(&expected),
            "resolv.conf lacks {expected:?}:\n{resolv}"
        );
    }
    let mut options: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("options "))
        .flat_map(str::split_whitespace)
        .collect();
    options.sort();
    ensure!(
        options == ["ndots:5", "timeout:2"],
        "resolv.conf options:\n{resolv}"
    );
    let servers: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("nameserver"))
        .collect();
    ensure!(
        servers.len() == 2,
        "resolv.conf has other nameservers:\n{resolv}"
    );

    let hosts = read("hosts")?;
    let entries: Vec<Vec<&str>> = hosts
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    ensure!(
        entries
            .iter()
            .any(|e| e.first() == Some(&"127.0.0.1") && e.contains(&"localhost")),
        "hosts has no 127.0.0.1 localhost entry:\n{hosts}"
    );
    ensure!(
        hosts.lines().any(|l| l == format!("{}\tweb-0", info.ip)),
        "hosts has no line \"{}\\tweb-0\":\n{hosts}",
        info.ip
    );

    // Namespaced sysctls apply in the pod's namespaces only.
    let port_start = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    let in_pod = node.exec_in_pod(&id, &["cat", port_start]).await?;
    ensure!(
        in_pod.trim() == "80",
        "{port_start} in the pod is {in_pod:?}"
    );
    let in_node = node.exec(&["cat", port_start]).await?;
    ensure!(
        in_node.trim() != "80",
        "the pod's sysctl leaked into the node netns"
    );
    let shmmni = node
        .exec(&[
            "nsenter",
            "-t",
            &pid,
            "-i",
            "cat",
            "/proc/sys/kernel/shmmni",
        ])
        .await?;
    ensure!(
        shmmni.trim() == "1024",
        "kernel.shmmni in the pod's ipc namespace is {shmmni:?}"
    );
    let node_shmmni = node.exec(&["cat", "/proc/sys/kernel/shmmni"]).await?;
    ensure!(
        node_shmmni.trim() != "1024",
        "the pod's kernel.shmmni leaked into the node"
    );

    // The pause sits in <cgroup_parent>/<id>, in every v1 hierarchy (this node's cgroup2
    // line, `0::`, holds no controller peapod uses here).
    let cgroup = format!("{}/{id}", node.cgroup_parent());
    let proc_cgroup = node.exec(&["cat", &format!("/proc/{pid}/cgroup")]).await?;
    let v1: Vec<&str> = proc_cgroup
        .lines()
        .filter(|l| !l.starts_with("0::"))
        .collect();
    ensure!(
        !v1.is_empty() && v1.iter().all(|l| l.ends_with(&format!(":{cgroup}"))),
        "the pause is not in {cgroup} in every hierarchy:\n{proc_cgroup}"
    );
    ensure!(
        !peapod_tests::cgroup_dirs(&cgroup).is_empty(),
        "no cgroup dir {cgroup} in any hierarchy"
    );
    ensure!(
        info.cgroup_path.contains(&id),
        "cgroupPath is {:?}",
        info.cgroup_path
    );

    node.stop_and_remove(&id).await?;
    ensure!(!dir.exists(), "{} survived RemovePodSandbox", dir.display());
    let left = peapod_tests::cgroup_dirs(&cgroup);
    ensure!(
        left.is_empty(),
        "cgroups survived RemovePodSandbox: {left:?}"
    );
    node.assert_gone(&[info]).await?;
    node.assert_empty().await
}

/// The kubelet's pod cgroup (issue 24, §4): the kubelet makes it before the pod in every v1
/// hierarchy but devices. The pod's removal leaves it wherever the kubelet made it, and takes
/// what peapod had to make in devices.
#[tokio::test]
async fn a_parent_the_kubelet_made_outlives_the_pod() -> Result<()> {
    let node = common::node().await?;
    let hierarchies = peapod_tests::cgroup_v1_hierarchies();
    let (devices, kubelets): (Vec<_>, Vec<_>) =
        hierarchies.iter().partition(|h| h.ends_with("devices"));
    ensure!(
        devices.len() == 1 && !kubelets.is_empty(),
        "a v1 devices hierarchy and others: {hierarchies:?}"
    );
    let top = node.cgroup_parent().trim_start_matches('/').to_owned();
    let parent = format!("{top}/kubepods/burstable/pod-kubelet");
    for h in &kubelets {
        std::fs::create_dir_all(h.join(&parent))?;
    }
    let cfg = node
        .pod_config("kubelet-parent")
        .cgroup_parent(&format!("/{parent}"));
    let pod = node.run_pod(&cfg).await?;
    ensure!(
        devices[0].join(&parent).join(&pod).is_dir(),
        "the pod has no devices cgroup"
    );
    let info = node.pod_info(&pod).await?;
    node.stop_and_remove(&pod).await?;
    for h in &kubelets {
        let dir = h.join(&parent);
        ensure!(
            dir.is_dir(),
            "the kubelet's {} went with the pod",
            dir.display()
        );
        ensure!(
            !dir.join(&pod).exists(),
            "the pod's cgroup in {} is left",
            h.display()
        );
    }
    ensure!(
        !devices[0].join(&top).exists(),
        "what peapod made in devices is left: {}",
        devices[0].join(&top).display()
    );
    // The kubelet removes its own, then nothing of the node is left.
    for h in &kubelets {
        for dir in [
            "kubepods/burstable/pod-kubelet",
            "kubepods/burstable",
            "kubepods",
        ] {
            std::fs::remove_dir(h.join(&top).join(dir))?;
        }
    }
    node.assert_gone(&[info]).await?;
    node.assert_empty().await
}
