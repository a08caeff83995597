//! Services on one node: a cluster IP spreads connections over its endpoints and answers from
//! the virtual address, a pod reaches itself through its Service (hairpin), UDP too; ClientIP
//! affinity sticks; an endpoint removed gets no new connection and its UDP flows are
//! forgotten; a Service without endpoints refuses at once; NodePorts answer on the node's
//! address; bad requests change nothing; 10,000 Services load in one transaction; a daemon
//! SIGKILL and restart keep every Service and collect what no record names.

mod common;

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use peapod_proto::net::v1 as pb;
use peapod_tests::Node;
use tonic::Code;

struct Pod {
    id: String,
    ip: String,
}

async fn pods(node: &Node, names: &[&str]) -> Result<Vec<Pod>> {
    let mut out = Vec::new();
    for name in names {
        let config = node.pod_config(name).hostname(name);
        let id = node.run_pod(&config).await?;
        let ip = node.pod_info(&id).await?.ip;
        out.push(Pod { id, ip });
    }
    Ok(out)
}

/// `probe <verb> <addr> --count <n>` from pod `from`: how often each answer came.
async fn tally(
    node: &Node,
    from: &Pod,
    verb: &str,
    addr: &str,
    n: u32,
) -> Result<BTreeMap<String, u32>> {
    let probe = node.probe_path().display().to_string();
    let count = n.to_string();
    let out = node
        .exec_in_pod(&from.id, &[&probe, verb, addr, "--count", &count])
        .await
        .with_context(|| format!("{verb} {addr}"))?;
    let mut answers = BTreeMap::new();
    for line in out.lines() {
        let (times, answer) = line.split_once(' ').context("a tally line")?;
        answers.insert(
            answer.trim_start_matches("hello from ").to_owned(),
            times.parse()?,
        );
    }
    ensure!(
        answers.values().sum::<u32>() == n,
        "{n} answers expected: {answers:?}"
    );
    Ok(answers)
}

fn endpoint_args(pods: &[&Pod]) -> Vec<String> {
    pods.iter()
        .flat_map(|p| ["--endpoint".to_owned(), p.ip.clone()])
        .collect()
}

async fn set_endpoints(node: &Node, service: &str, pods: &[&Pod]) -> Result<()> {
    let args = endpoint_args(pods);
    let mut all = vec!["endpoints", "set", service];
    all.extend(args.iter().map(String::as_str));
    node.service_ok(&all).await.map(drop)
}

#[tokio::test]
async fn a_cluster_ip_spreads_over_its_endpoints_and_answers_as_itself() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let all = pods(&node, &["web-a", "web-b", "web-c", "client"]).await?;
    let (web, client) = (&all[..3], &all[3]);
    let mut listeners = Vec::new();
    for p in web {
        listeners.push(node.listen_in_pod(&p.id, "0.0.0.0:8080", 1000).await?);
        listeners.push(node.listen_udp_in_pod(&p.id, "0.0.0.0:5353", 1000).await?);
    }
    node.service_ok(&[
        "add",
        "web",
        "--cluster-ip",
        "10.96.0.10",
        "--port",
        "http=80:8080",
        "--port",
        "dns=53:5353/udp",
    ])
    .await?;
    set_endpoints(&node, "web", &web.iter().collect::<Vec<_>>()).await?;
    let ls = node.service_ok(&["ls"]).await?;
    ensure!(
        ls.contains("10.96.0.10") && ls.contains("3/3"),
        "service ls: {ls}"
    );

    // TCP: a connection only completes with answers from the address it was made to, so
    // every answer came back from 10.96.0.10 through conntrack.
    let answers = tally(&node, client, "tally", "10.96.0.10:80", 300).await?;
    ensure!(
        answers.keys().eq(["web-a", "web-b", "web-c"]),
        "300 connections reached {answers:?}"
    );
    // UDP: the probe's socket is connected to the cluster IP, so it takes only answers from
    // there; each datagram is a flow of its own.
    let answers = tally(&node, client, "udp-tally", "10.96.0.10:53", 60).await?;
    ensure!(answers.len() == 3, "60 datagrams reached {answers:?}");

    // The node itself (output hook) reaches the cluster IP too.
    let from_node = node.ask_from_node("connect", "10.96.0.10:80").await?;
    ensure!(
        from_node.starts_with("hello from web-"),
        "from the node: {from_node:?}"
    );

    // Hairpin: web-a alone behind the Service, reached from web-a.
    set_endpoints(&node, "web", &[&web[0]]).await?;
    let answers = tally(&node, &web[0], "tally", "10.96.0.10:80", 5).await?;
    ensure!(
        answers.keys().eq(["web-a"]),
        "web-a through its Service: {answers:?}"
    );
    let answers = tally(&node, &web[0], "udp-tally", "10.96.0.10:53", 5).await?;
    ensure!(
        answers.keys().eq(["web-a"]),
        "web-a through its Service (UDP): {answers:?}"
    );

    node.service_ok(&["rm", "web"]).await?;
    let rules = node.service_rules().await?;
    ensure!(
        !rules.contains("10.96.0.10"),
        "the Service's rules stay: {rules}"
    );
    let refused = node.connect_from_pod(&client.id, "10.96.0.10:80").await;
    ensure!(refused.is_err(), "a removed Service answered: {refused:?}");
    drop(listeners);
    for p in &all {
        node.stop_and_remove(&p.id).await?;
    }
    node.assert_empty().await
}

#[tokio::test]
async fn affinity_sticks_and_a_removed_endpoint_loses_its_flows() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let all = pods(&node, &["api-a", "api-b", "client"]).await?;
    let (api, client) = (&all[..2], &all[2]);
    let mut listeners = Vec::new();
    for p in api {
        listeners.push(node.listen_in_pod(&p.id, "0.0.0.0:80", 1000).await?);
        listeners.push(node.listen_udp_in_pod(&p.id, "0.0.0.0:53", 1000).await?);
    }
    node.service_ok(&[
        "add",
        "sticky",
        "--cluster-ip",
        "10.96.0.20",
        "--port",
        "80",
        "--affinity-timeout",
        "600",
    ])
    .await?;
    set_endpoints(&node, "sticky", &[&api[0], &api[1]]).await?;
    let answers = tally(&node, client, "tally", "10.96.0.20:80", 50).await?;
    ensure!(
        answers.len() == 1,
        "ClientIP affinity spread 50 connections: {answers:?}"
    );

    // UDP without affinity: a client keeps its source port, so its flow (conntrack entry)
    // would keep sending it to the backend it got first. That backend goes: its flow must go
    // too, and the next datagram reach the other.
    node.service_ok(&[
        "add",
        "dns",
        "--cluster-ip",
        "10.96.0.21",
        "--port",
        "53/udp",
    ])
    .await?;
    set_endpoints(&node, "dns", &[&api[0], &api[1]]).await?;
    let probe = node.probe_path().display().to_string();
    let args = [probe.as_str(), "udp-ask-from", "40053", "10.96.0.21:53"];
    let ask = || node.exec_in_pod(&client.id, &args);
    let first = ask().await?;
    let again = ask().await?;
    ensure!(
        first == again,
        "one flow, two backends: {first:?} then {again:?}"
    );
    let (gone, stays) = if first.contains("api-a") {
        (&api[0], &api[1])
    } else {
        (&api[1], &api[0])
    };
    set_endpoints(&node, "dns", &[stays]).await?;
    let after = ask().await?;
    ensure!(
        !after.contains(&format!(
            "hello from {}",
            if gone.ip == api[0].ip {
                "api-a"
            } else {
                "api-b"
            }
        )),
        "the flow still goes to the removed endpoint: {after:?}"
    );

    drop(listeners);
    for p in &all {
        node.stop_and_remove(&p.id).await?;
    }
    node.assert_empty().await
}

#[tokio::test]
async fn no_endpoints_refuse_at_once_and_node_ports_answer() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let all = pods(&node, &["np-a", "client"]).await?;
    let (web, client) = (&all[0], &all[1]);
    node.service_ok(&[
        "add",
        "empty",
        "--cluster-ip",
        "10.96.0.30",
        "--port",
        "80",
        "--port",
        "u=53/udp",
    ])
    .await
    .err()
    .context("two ports, one unnamed, must be refused")?;
    node.service_ok(&[
        "add",
        "empty",
        "--cluster-ip",
        "10.96.0.30",
        "--port",
        "t=80",
        "--port",
        "u=53/udp",
    ])
    .await?;
    // TCP: a reset (connection refused), not a silent drop; UDP: port unreachable.
    let tcp = node.connect_from_pod(&client.id, "10.96.0.30:80").await;
    let tcp = format!(
        "{:#}",
        tcp.err().context("a Service without endpoints answered")?
    );
    ensure!(
        tcp.contains("refused"),
        "TCP to a Service without endpoints: {tcp}"
    );
    let probe = node.probe_path().display().to_string();
    let udp = node
        .exec_in_pod_output(&client.id, &[&probe, "udp-ask", "10.96.0.30:53"])
        .await?;
    let stderr = String::from_utf8_lossy(&udp.stderr);
    ensure!(
        !udp.status.success() && stderr.contains("refused"),
        "UDP: {udp:?}"
    );
    let from_node = format!(
        "{:#}",
        node.ask_from_node("connect", "10.96.0.30:80")
            .await
            .err()
            .context("from the node")?
    );
    ensure!(from_node.contains("refused"), "from the node: {from_node}");

    // A NodePort, reached at the node's address from the node and from a pod.
    let listener = node.listen_in_pod(&web.id, "0.0.0.0:8080", 100).await?;
    node.service_ok(&[
        "add",
        "np",
        "--cluster-ip",
        "10.96.0.31",
        "--port",
        "80:8080@30080",
    ])
    .await?;
    let refused = node.ask_from_node("connect", "192.0.2.1:30080").await;
    ensure!(
        format!("{refused:?}").contains("refused"),
        "a NodePort without endpoints: {refused:?}"
    );
    set_endpoints(&node, "np", &[web]).await?;
    ensure!(
        node.ask_from_node("connect", "192.0.2.1:30080")
            .await?
            .trim()
            == "hello from np-a"
    );
    ensure!(
        node.connect_from_pod(&client.id, "192.0.2.1:30080")
            .await?
            .trim()
            == "hello from np-a"
    );
    ensure!(
        node.connect_from_pod(&client.id, "10.96.0.31:80")
            .await?
            .trim()
            == "hello from np-a"
    );
    drop(listener);
    for p in &all {
        node.stop_and_remove(&p.id).await?;
    }
    node.assert_empty().await
}

fn service(name: &str, ip: &str, port: u32) -> pb::Service {
    pb::Service {
        namespace: "default".into(),
        name: name.into(),
        cluster_ip: ip.into(),
        ports: vec![pb::ServicePort {
            name: String::new(),
            protocol: pb::Protocol::Tcp.into(),
            port,
            target_port: 0,
            node_port: 0,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_requests_get_precise_codes_and_change_nothing() -> Result<()> {
    let node = common::node().await?;
    let mut c = node.services().await?;
    let add = |s: pb::Service, replace: bool| pb::AddServiceRequest {
        service: Some(s),
        replace,
    };
    c.add_service(add(service("one", "10.96.0.40", 80), false))
        .await?;
    let before = node.service_rules().await?;
    let invalid: Vec<(&str, pb::Service)> = vec![
        ("no address", service("x", "", 80)),
        ("a loopback cluster IP", service("x", "127.0.0.1", 80)),
        ("port 0", service("x", "10.96.0.41", 0)),
        ("port 70000", service("x", "10.96.0.41", 70_000)),
        ("an uppercase name", service("X", "10.96.0.41", 80)),
        ("a node port outside the range", {
            let mut s = service("x", "10.96.0.41", 80);
            s.ports[0].node_port = 80;
            s
        }),
        (
            "affinity timeout without affinity",
            pb::Service {
                affinity_timeout_seconds: 10,
                ..service("x", "10.96.0.41", 80)
            },
        ),
        (
            "an external IP of the other family",
            pb::Service {
                external_ips: vec!["fd00::1".into()],
                ..service("x", "10.96.0.41", 80)
            },
        ),
    ];
    for (what, s) in invalid {
        common::expect_code(
            c.add_service(add(s, false)).await,
            Code::InvalidArgument,
            what,
        )?;
    }
    common::expect_code(
        c.add_service(add(service("one", "10.96.0.41", 80), false))
            .await,
        Code::AlreadyExists,
        "the same name",
    )?;
    common::expect_code(
        c.add_service(add(service("two", "10.96.0.40", 80), false))
            .await,
        Code::AlreadyExists,
        "the same address and port",
    )?;
    let not_found = pb::SetEndpointsRequest {
        namespace: "default".into(),
        name: "nope".into(),
        endpoints: vec![],
    };
    common::expect_code(
        c.set_endpoints(not_found).await,
        Code::NotFound,
        "endpoints of no Service",
    )?;
    let bad_endpoint = |ip: &str| pb::SetEndpointsRequest {
        namespace: "default".into(),
        name: "one".into(),
        endpoints: vec![pb::Endpoint {
            ip: ip.into(),
            ready: true,
            ..Default::default()
        }],
    };
    for ip in ["10.88.0.300", "fd00::5", "0.0.0.0"] {
        common::expect_code(
            c.set_endpoints(bad_endpoint(ip)).await,
            Code::InvalidArgument,
            ip,
        )?;
    }
    common::expect_code(
        c.remove_service(pb::RemoveServiceRequest {
            namespace: "default".into(),
            name: "nope".into(),
        })
        .await,
        Code::NotFound,
        "removing no Service",
    )?;
    ensure!(
        node.service_rules().await? == before,
        "a refused request changed the rules"
    );
    let list = c
        .list_services(pb::ListServicesRequest::default())
        .await?
        .into_inner();
    ensure!(list.services.len() == 1, "services: {:?}", list.services);
    // Replacing keeps the endpoints and moves the address.
    c.set_endpoints(bad_endpoint("10.88.0.9")).await?;
    let replaced = c
        .add_service(add(service("one", "10.96.0.42", 8080), true))
        .await?
        .into_inner();
    let s = replaced.service.context("service")?;
    ensure!(
        s.endpoints.len() == 1 && s.cluster_ip == "10.96.0.42",
        "replaced: {s:?}"
    );
    let rules = node.service_rules().await?;
    ensure!(
        rules.contains("10.96.0.42 . tcp . 8080") && !rules.contains("10.96.0.40"),
        "{rules}"
    );
    node.assert_empty().await
}

/// `nft list chain` of a service port's chain and of one of its backend chains.
async fn chains_of(node: &Node, chain: &str, backend_suffix: &str) -> Result<String> {
    let mut out = String::new();
    for c in [chain.to_owned(), format!("{chain}{backend_suffix}")] {
        out += &node
            .exec(&["nft", "list", "chain", "inet", "peapod", &c])
            .await?;
    }
    Ok(out)
}

#[tokio::test]
async fn a_crash_and_restart_keep_services_and_collect_orphans() -> Result<()> {
    let mut node = common::node_with_uplink().await?;
    let all = pods(&node, &["keep-a", "client"]).await?;
    let (web, client) = (&all[0], &all[1]);
    let listener = node.listen_in_pod(&web.id, "0.0.0.0:80", 100).await?;
    let echo = node.probe_in_pod(&web.id, "echo", "0.0.0.0:7", 1).await?;
    node.service_ok(&["add", "long", "--cluster-ip", "10.96.0.53", "--port", "7"])
        .await?;
    set_endpoints(&node, "long", &[web]).await?;
    for (name, ip) in [("keep", "10.96.0.50"), ("other", "10.96.0.51")] {
        node.service_ok(&[
            "add",
            name,
            "--cluster-ip",
            ip,
            "--port",
            "80",
            "--affinity-timeout",
            "300",
        ])
        .await?;
        set_endpoints(&node, name, &[web]).await?;
    }
    ensure!(
        node.connect_from_pod(&client.id, "10.96.0.50:80")
            .await?
            .trim()
            == "hello from keep-a"
    );
    let before = node.service_rules().await?;
    let chain = before
        .split("10.96.0.50 . tcp . 80 : goto ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ',']).next())
        .context("the element of keep")?
        .to_owned();
    // The backend's own chain (affinity) is named by its address and port in hex.
    let ip: std::net::Ipv4Addr = web.ip.parse()?;
    let tag: String = ip.octets().iter().map(|o| format!("{o:02x}")).collect();
    let backend_chain = format!("_{tag}_0050");
    let keep_before = chains_of(&node, &chain, &backend_chain).await?;

    // A connection through a Service, busy across the crash and the restart.
    let done = node.dir().join("hold-done");
    let probe = node.probe_path().display().to_string();
    let netns = format!("peapod-{}", client.id);
    let mut hold = node.spawn(&[
        "ip",
        "netns",
        "exec",
        &netns,
        &probe,
        "hold",
        "10.96.0.53:7",
        "--until",
        done.to_str().context("path")?,
    ])?;
    hold.wait_for_line("connected").await?;

    // SIGKILL, then a chain and an element that no record names appear: what a crash after
    // the kernel transaction and before the record write leaves.
    node.kill_daemon().await?;
    for cmd in [
        "add chain inet peapod svc_0123456789abcdef_tcp80",
        "add element inet peapod svc_ip4 { 10.96.0.52 . tcp . 80 : goto svc_0123456789abcdef_tcp80 }",
    ] {
        let args: Vec<&str> = std::iter::once("nft").chain(cmd.split(' ')).collect();
        node.exec(&args).await?;
    }
    ensure!(
        node.connect_from_pod(&client.id, "10.96.0.50:80")
            .await?
            .trim()
            == "hello from keep-a",
        "without the daemon"
    );
    node.start_daemon().await?;

    let after = node.service_rules().await?;
    ensure!(
        after.contains("10.96.0.51 . tcp . 80"),
        "other is gone: {after}"
    );
    ensure!(
        !after.contains("10.96.0.52") && !after.contains("svc_0123456789abcdef"),
        "the orphan stays: {after}"
    );
    ensure!(
        after.contains(&format!("10.96.0.50 . tcp . 80 : goto {chain}")),
        "{after}"
    );
    ensure!(
        chains_of(&node, &chain, &backend_chain).await? == keep_before,
        "keep's chains changed: {after}"
    );
    ensure!(node.service_ok(&["ls"]).await?.contains("keep"));
    ensure!(
        node.connect_from_pod(&client.id, "10.96.0.50:80")
            .await?
            .trim()
            == "hello from keep-a"
    );
    // The connection made before the crash kept flowing all along.
    std::fs::write(&done, "")?;
    let trips = hold.finish().await?;
    let n: u32 = trips
        .trim()
        .strip_suffix(" round trips")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("hold said {trips:?}"))?;
    ensure!(n >= 2, "only {n} round trips");
    echo.finish().await?;
    let show = node.service_ok(&["show", "keep"]).await?;
    let json: serde_json::Value = serde_json::from_str(&show)?;
    ensure!(
        json["affinity"] == 300 && json["endpoints"][0]["ip"] == web.ip.as_str(),
        "{show}"
    );
    drop(listener);
    for p in &all {
        node.stop_and_remove(&p.id).await?;
    }
    node.assert_empty().await
}

/// `n` Services 10.100.x.y:80 → the two pods' port 8080, named `s<i>`.
fn many(n: u32, backends: &[&Pod]) -> Vec<pb::Service> {
    (0..n)
        .map(|i| {
            let mut s = service(
                &format!("s{i}"),
                &format!("10.100.{}.{}", i / 250, i % 250 + 1),
                80,
            );
            s.ports[0].target_port = 8080;
            s.endpoints = backends
                .iter()
                .map(|p| pb::Endpoint {
                    ip: p.ip.clone(),
                    ready: true,
                    ..Default::default()
                })
                .collect();
            s
        })
        .collect()
}

#[tokio::test]
async fn ten_thousand_services_load_in_one_transaction() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let all = pods(&node, &["big-a", "big-b", "client"]).await?;
    let (web, client) = (&all[..2], &all[2]);
    let mut listeners = Vec::new();
    for p in web {
        listeners.push(node.listen_in_pod(&p.id, "0.0.0.0:8080", 1000).await?);
    }
    let mut c = node.services().await?;
    let started = std::time::Instant::now();
    let r = c
        .apply_services(pb::ApplyServicesRequest {
            services: many(10_000, &[&web[0], &web[1]]),
            prune: false,
        })
        .await?
        .into_inner();
    eprintln!("10,000 services applied in {:?}", started.elapsed());
    ensure!(r.created == 10_000 && r.updated == 0, "{r:?}");
    for addr in ["10.100.0.1:80", "10.100.39.250:80"] {
        let answers = tally(&node, client, "tally", addr, 20).await?;
        ensure!(answers.len() == 2, "{addr}: {answers:?}");
    }
    // One Service changes among 10,000: only its elements move.
    let started = std::time::Instant::now();
    let one = pb::SetEndpointsRequest {
        namespace: "default".into(),
        name: "s9999".into(),
        endpoints: vec![pb::Endpoint {
            ip: web[1].ip.clone(),
            ready: true,
            ..Default::default()
        }],
    };
    c.set_endpoints(one).await?;
    eprintln!("one change at 10,000 in {:?}", started.elapsed());
    let answers = tally(&node, client, "tally", "10.100.39.250:80", 10).await?;
    ensure!(answers.keys().eq(["big-b"]), "{answers:?}");
    // The same again is no change at all; a prune to 10 removes the other 9,990.
    let again = c
        .apply_services(pb::ApplyServicesRequest {
            services: many(10, &[&web[0], &web[1]]),
            prune: true,
        })
        .await?
        .into_inner();
    ensure!(again.unchanged == 10 && again.removed == 9_990, "{again:?}");
    let rules = node.service_rules().await?;
    ensure!(!rules.contains("10.100.39.250"), "a pruned Service stays");
    ensure!(
        rules.matches("chain svc_").count() == 11,
        "10 service chains and the reject chain:\n{rules}"
    );
    drop(listeners);
    for p in &all {
        node.stop_and_remove(&p.id).await?;
    }
    node.assert_empty().await
}
