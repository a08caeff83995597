//! Three nodes on one node network (a "wire" namespace with a bridge and a veth to each
//! node), routed and over VXLAN: pods on each node reach the pods on the others by IP and see
//! their real addresses (no masquerade); a NodePort Service on one node with backends on the
//! other two answers from every node; a peer removed takes its routes (and VXLAN entries)
//! with it; over VXLAN a 1400-byte packet crosses without fragmentation; a daemon SIGKILL and
//! restart leave the peers and the VXLAN device as they were.

mod common;

use anyhow::{Context, Result, ensure};
use peapod_tests::{LEAVING_THE_NODE, Node, kinds, named_rules, one_branch_traced, same_rules};

const NODES: usize = 3;

fn node_ip(i: usize) -> String {
    format!("192.0.2.{}", i + 1)
}

fn pod_cidr(i: usize) -> String {
    format!("10.9{}.0.0/24", i + 1)
}

struct Cluster {
    /// Holds the node network's bridge; dropped last.
    _wire: Node,
    nodes: Vec<Node>,
}

/// Runs `args` in the network namespace of `node` from this process (nsenter -n only: the
/// mount and pid namespaces stay this process's, so `/proc/<pid>` names the nodes' pids).
async fn in_netns_of(node: &Node, args: &[&str]) -> Result<()> {
    let pid = node.pid1().to_string();
    let out = tokio::process::Command::new("nsenter")
        .args(["-t", &pid, "-n", "--"])
        .args(args)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Cluster {
    async fn start(overlay: &str) -> Result<Cluster> {
        let wire = common::builder().without_daemon().start().await?;
        wire.exec(&["ip", "link", "add", "br0", "type", "bridge"])
            .await?;
        wire.exec(&["ip", "link", "set", "br0", "up"]).await?;
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let config = format!(
                "pod_cidr = \"{}\"\nnode_ip = \"{}\"\noverlay = \"{overlay}\"\nvxlan_vni = 42\n",
                pod_cidr(i),
                node_ip(i)
            );
            let mut node = common::builder()
                .without_daemon()
                .config(&config)
                .start()
                .await?;
            let wire_end = format!("w{i}");
            let node_pid = node.pid1().to_string();
            in_netns_of(
                &wire,
                &[
                    "ip", "link", "add", &wire_end, "type", "veth", "peer", "name", "uplink0",
                    "netns", &node_pid,
                ],
            )
            .await?;
            wire.exec(&["ip", "link", "set", &wire_end, "master", "br0", "up"])
                .await?;
            let addr = format!("{}/24", node_ip(i));
            node.exec(&["ip", "addr", "add", &addr, "dev", "uplink0"])
                .await?;
            node.exec(&["ip", "link", "set", "uplink0", "up"]).await?;
            node.start_daemon().await?;
            nodes.push(node);
        }
        let cluster = Cluster { _wire: wire, nodes };
        for i in 0..NODES {
            for j in (0..NODES).filter(|&j| j != i) {
                cluster
                    .peapod(
                        i,
                        &[
                            "node",
                            "add",
                            &format!("node{j}"),
                            "--node-ip",
                            &node_ip(j),
                            "--pod-cidr",
                            &pod_cidr(j),
                        ],
                    )
                    .await?;
            }
        }
        Ok(cluster)
    }

    async fn peapod(&self, i: usize, args: &[&str]) -> Result<String> {
        self.nodes[i].cli_ok(args[0], &args[1..]).await
    }

    async fn pod(&self, i: usize, name: &str) -> Result<(String, String)> {
        let node = &self.nodes[i];
        let id = node.run_pod(&node.pod_config(name).hostname(name)).await?;
        let ip = node.pod_info(&id).await?.ip;
        ensure!(
            peapod_tests::in_cidr(&ip, &pod_cidr(i)),
            "{name} got {ip}, not in {}",
            pod_cidr(i)
        );
        Ok((id, ip))
    }

    async fn assert_empty(&self) -> Result<()> {
        for n in &self.nodes {
            n.assert_empty().await?;
        }
        Ok(())
    }
}

/// Pods on each node reach the pods on the others; the server sees the client's pod IP.
async fn pods_reach_each_other(c: &Cluster) -> Result<Vec<(String, String)>> {
    let mut pods = Vec::new();
    for i in 0..NODES {
        pods.push(c.pod(i, &format!("p{i}")).await?);
    }
    for (j, (server, server_ip)) in pods.iter().enumerate() {
        let listener = c.nodes[j]
            .probe_in_pod(server, "whoami", "0.0.0.0:80", 2)
            .await?;
        for (i, (client, client_ip)) in pods.iter().enumerate().filter(|(i, _)| *i != j) {
            let seen = c.nodes[i]
                .connect_from_pod(client, &format!("{server_ip}:80"))
                .await?;
            ensure!(
                seen.trim() == client_ip,
                "node{j}'s pod saw {seen:?} for node{i}'s pod {client_ip} (masqueraded?)"
            );
        }
        listener.finish().await?;
    }
    Ok(pods)
}

/// A NodePort Service on node 0 with one backend on each of nodes 1 and 2 answers from the
/// node network (nodes 1 and 2 themselves) and from a pod on node 1.
async fn node_port_across_nodes(c: &Cluster, pods: &[(String, String)]) -> Result<()> {
    let mut listeners = Vec::new();
    for (j, (id, _)) in pods.iter().enumerate().skip(1) {
        listeners.push(c.nodes[j].listen_in_pod(id, "0.0.0.0:8080", 400).await?);
    }
    c.peapod(
        0,
        &[
            "service",
            "add",
            "web",
            "--cluster-ip",
            "10.96.0.10",
            "--port",
            "80:8080@30080",
        ],
    )
    .await?;
    let mut endpoints = vec!["service", "endpoints", "set", "web"];
    for (_, ip) in &pods[1..] {
        endpoints.extend(["--endpoint", ip.as_str()]);
    }
    c.peapod(0, &endpoints).await?;
    // Every node of a cluster programs every Service (as kube-proxy does): node 0 with the
    // NodePort above, nodes 1 and 2 with the cluster IP alone.
    for i in 1..NODES {
        let add = [
            "service",
            "add",
            "web",
            "--cluster-ip",
            "10.96.0.10",
            "--port",
            "80:8080",
        ];
        c.peapod(i, &add).await?;
        c.peapod(i, &endpoints).await?;
    }
    let target = format!("{}:30080", node_ip(0));
    let probe = c.nodes[1].probe_path().display().to_string();
    let mut seen = std::collections::BTreeSet::new();
    for from in 1..NODES {
        let out = c.nodes[from]
            .exec(&[&probe, "tally", &target, "--count", "40"])
            .await?;
        for line in out.lines() {
            seen.insert(line.split_once(' ').context("tally")?.1.to_owned());
        }
    }
    let from_pod = c.nodes[1]
        .exec_in_pod(&pods[1].0, &[&probe, "tally", &target, "--count", "20"])
        .await?;
    for line in from_pod.lines() {
        seen.insert(line.split_once(' ').context("tally")?.1.to_owned());
    }
    ensure!(
        seen.iter().eq(["hello from p1", "hello from p2"]),
        "the NodePort reached {seen:?}"
    );
    // And its cluster IP from a pod on every node, reaching both backends.
    for (i, (pod, _)) in pods.iter().enumerate() {
        let out = c.nodes[i]
            .exec_in_pod(pod, &[&probe, "tally", "10.96.0.10:80", "--count", "30"])
            .await?;
        let answers: std::collections::BTreeSet<&str> = out
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(_, a)| a))
            .collect();
        ensure!(
            answers.iter().eq(&["hello from p1", "hello from p2"]),
            "the cluster IP from node{i}'s pod reached {answers:?}"
        );
    }
    // explain names a branch per backend, each to its node; a traced connection takes one.
    let path = c.nodes[0].explain(&pods[0].0, "10.96.0.10:80", &[]).await?;
    let branches = path["backends"].as_array().context("backends")?;
    ensure!(
        branches.len() == 2 && branches.iter().all(|b| b["outcome"] == "peer"),
        "{}",
        serde_json::to_string_pretty(&path)?
    );
    let traced = c.nodes[0]
        .trace(&pods[0].1, || async {
            c.nodes[0]
                .connect_from_pod(&pods[0].0, "10.96.0.10:80")
                .await
                .map(drop)
        })
        .await?;
    one_branch_traced(&path, &traced)?;
    for i in 0..NODES {
        c.peapod(i, &["service", "rm", "web"]).await?;
    }
    drop(listeners);
    Ok(())
}

/// `explain` from node 0's pod to node 1's: the node's route to the peer (directly or over
/// VXLAN), no masquerade; a traced connection passes exactly the rules it names.
async fn explained_across(c: &Cluster, pods: &[(String, String)], vxlan: bool) -> Result<()> {
    let (client, client_ip) = &pods[0];
    let server_ip = &pods[1].1;
    let path = c.nodes[0].explain(client, server_ip, &[]).await?;
    let text = serde_json::to_string_pretty(&path)?;
    let hops = path["hops"].as_array().context("hops")?;
    let detail = |kind: &str| -> Vec<String> {
        hops.iter()
            .filter(|h| h["kind"] == kind)
            .filter_map(|h| h["detail"].as_str().map(str::to_owned))
            .collect()
    };
    ensure!(path["outcome"] == "peer", "{text}");
    ensure!(
        detail("snat")
            .iter()
            .any(|d| d.starts_with("not masqueraded")),
        "{text}"
    );
    if vxlan {
        ensure!(
            kinds(&path["hops"]) == [&LEAVING_THE_NODE[..], &["vxlan"]].concat()
                && detail("vxlan")
                    .iter()
                    .any(|d| d.contains("behind 192.0.2.2") && d.contains("node node1")),
            "{text}"
        );
    } else {
        ensure!(
            kinds(&path["hops"]) == LEAVING_THE_NODE
                && detail("route").iter().any(|d| d.contains("via 192.0.2.2"))
                && path["verdict"]
                    .as_str()
                    .unwrap_or("")
                    .contains("node node1"),
            "{text}"
        );
    }
    let listener = c.nodes[1]
        .probe_in_pod(&pods[1].0, "whoami", "0.0.0.0:80", 1)
        .await?;
    let traced = c.nodes[0]
        .trace(client_ip, || async {
            c.nodes[0]
                .connect_from_pod(client, &format!("{server_ip}:80"))
                .await
                .map(drop)
        })
        .await?;
    listener.finish().await?;
    same_rules(&named_rules(&path["hops"]), &traced, &path)
}

async fn routes(node: &Node) -> Result<String> {
    node.exec(&["ip", "route", "show"]).await
}

async fn remove_pods(c: &Cluster, pods: &[(String, String)]) -> Result<()> {
    for (i, (id, _)) in pods.iter().enumerate() {
        c.nodes[i].stop_and_remove(id).await?;
    }
    Ok(())
}

#[tokio::test]
async fn routed_pods_reach_other_nodes_without_masquerade() -> Result<()> {
    let c = Cluster::start("routed").await?;
    let r = routes(&c.nodes[0]).await?;
    ensure!(
        r.contains("10.92.0.0/24 via 192.0.2.2") && r.contains("10.93.0.0/24 via 192.0.2.3"),
        "{r}"
    );
    let pods = pods_reach_each_other(&c).await?;
    explained_across(&c, &pods, false).await?;
    node_port_across_nodes(&c, &pods).await?;

    // A peer removed: its route goes, the other stays; its pods are out of reach.
    c.peapod(0, &["node", "rm", "node2"]).await?;
    let r = routes(&c.nodes[0]).await?;
    ensure!(
        !r.contains("10.93.0.0/24") && r.contains("10.92.0.0/24 via 192.0.2.2"),
        "{r}"
    );
    let gone = c.nodes[0]
        .connect_from_pod(&pods[0].0, &format!("{}:80", pods[2].1))
        .await;
    ensure!(gone.is_err(), "a removed peer's pod answered: {gone:?}");
    let ls = c.peapod(0, &["node", "ls"]).await?;
    ensure!(
        ls.contains("node1") && !ls.contains("node2") && ls.contains("routed"),
        "{ls}"
    );
    remove_pods(&c, &pods).await?;
    c.assert_empty().await
}

#[tokio::test]
async fn vxlan_pods_reach_other_nodes_and_survive_a_restart() -> Result<()> {
    let mut c = Cluster::start("vxlan").await?;
    let dev = c.nodes[0]
        .exec(&["ip", "-d", "-j", "link", "show", "peapod.vxlan"])
        .await?;
    let dev: serde_json::Value = serde_json::from_str(&dev)?;
    let info = &dev[0]["linkinfo"]["info_data"];
    ensure!(
        info["id"] == 42 && info["port"] == 4789 && info["local"] == "192.0.2.1",
        "{dev}"
    );
    ensure!(dev[0]["mtu"] == 1450, "VXLAN MTU: {}", dev[0]["mtu"]);
    let fdb = c.nodes[0]
        .exec(&["bridge", "fdb", "show", "dev", "peapod.vxlan"])
        .await?;
    ensure!(
        fdb.contains("dst 192.0.2.2") && fdb.contains("dst 192.0.2.3"),
        "{fdb}"
    );
    let pods = pods_reach_each_other(&c).await?;
    explained_across(&c, &pods, true).await?;
    // The graph has the VXLAN device and a route over it to each peer.
    let graph: serde_json::Value =
        serde_json::from_str(&c.nodes[0].net_ok(&["graph", "--json"]).await?)?;
    ensure!(
        graph["vxlan"]["vni"] == 42
            && graph["peers"].as_array().is_some_and(|p| p.len() == 2
                && p.iter().all(|peer| peer["route"]
                    .as_str()
                    .is_some_and(|r| r.contains("dev peapod.vxlan onlink")))),
        "{graph}"
    );

    // 1400 bytes of IP (1372 of ICMP payload) with DF set cross, and pods' MTU leaves room.
    let to = &pods[1].1;
    let ping = c.nodes[0]
        .exec_in_pod(
            &pods[0].0,
            &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1372", to],
        )
        .await?;
    ensure!(ping.contains("1 received"), "{ping}");
    let too_big = c.nodes[0]
        .exec_in_pod_output(
            &pods[0].0,
            &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1450", to],
        )
        .await?;
    ensure!(
        !too_big.status.success(),
        "a packet above the pod MTU went out unfragmented"
    );
    node_port_across_nodes(&c, &pods).await?;

    // SIGKILL and restart of node 0's daemon: the device, its entries and the peers are the
    // same, and the pods still reach each other.
    let before = (
        c.nodes[0]
            .exec(&["ip", "-d", "link", "show", "peapod.vxlan"])
            .await?,
        c.nodes[0]
            .exec(&["bridge", "fdb", "show", "dev", "peapod.vxlan"])
            .await?,
        routes(&c.nodes[0]).await?,
    );
    c.nodes[0].kill_daemon().await?;
    c.nodes[0].start_daemon().await?;
    let after = (
        c.nodes[0]
            .exec(&["ip", "-d", "link", "show", "peapod.vxlan"])
            .await?,
        c.nodes[0]
            .exec(&["bridge", "fdb", "show", "dev", "peapod.vxlan"])
            .await?,
        routes(&c.nodes[0]).await?,
    );
    ensure!(
        before == after,
        "the restart changed the overlay:\n{before:?}\n{after:?}"
    );
    let listener = c.nodes[1]
        .probe_in_pod(&pods[1].0, "whoami", "0.0.0.0:80", 1)
        .await?;
    let seen = c.nodes[0]
        .connect_from_pod(&pods[0].0, &format!("{}:80", pods[1].1))
        .await?;
    ensure!(
        seen.trim() == pods[0].1,
        "after the restart node1's pod saw {seen:?}"
    );
    listener.finish().await?;

    // A peer removed: its route, neighbour and FDB entry go.
    c.peapod(0, &["node", "rm", "node2"]).await?;
    let fdb = c.nodes[0]
        .exec(&["bridge", "fdb", "show", "dev", "peapod.vxlan"])
        .await?;
    let neigh = c.nodes[0]
        .exec(&["ip", "neigh", "show", "dev", "peapod.vxlan"])
        .await?;
    let r = routes(&c.nodes[0]).await?;
    ensure!(
        !fdb.contains("192.0.2.3") && fdb.contains("192.0.2.2"),
        "{fdb}"
    );
    ensure!(
        !neigh.contains("10.93.0.0") && neigh.contains("10.92.0.0"),
        "{neigh}"
    );
    ensure!(
        !r.contains("10.93.0.0/24") && r.contains("10.92.0.0/24"),
        "{r}"
    );
    remove_pods(&c, &pods).await?;
    let nodes = std::mem::take(&mut c.nodes);
    for n in &nodes {
        n.assert_empty().await?;
    }
    Ok(())
}
