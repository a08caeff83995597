//! `peapod net explain` and `peapod net graph` against the live kernel of a node, checked
//! against `nft monitor trace` of real packets: for each path (a cluster IP and a node port
//! spread over pods, a pod reaching itself through its Service, a Service without endpoints,
//! a pod of the same bridge, an address outside the node) the rules of peapod's table a
//! traced packet matched are the rules explain names; and bad requests get precise errors.

mod common;

use anyhow::{Context, Result, ensure};
use peapod_proto::net::v1 as pb;
use peapod_tests::{
    LEAVING_THE_NODE, Node, Traced, kinds, named_rules, one_branch_traced, same_rules,
};
use serde_json::Value;
use tonic::Code;

struct Pod {
    id: String,
    ip: String,
}

async fn pod(node: &Node, name: &str) -> Result<Pod> {
    let config = node.pod_config(name).hostname(name);
    let id = node.run_pod(&config).await?;
    let ip = node.pod_info(&id).await?.ip;
    Ok(Pod { id, ip })
}

fn text(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `peapod service add NAME --cluster-ip IP --port PORT`, then its `endpoints`.
async fn service(node: &Node, name: &str, ip: &str, port: &str, endpoints: &[&str]) -> Result<()> {
    node.service_ok(&["add", name, "--cluster-ip", ip, "--port", port])
        .await?;
    let mut set = vec!["endpoints", "set", name];
    for e in endpoints {
        set.extend(["--endpoint", e]);
    }
    node.service_ok(&set).await.map(drop)
}

#[tokio::test]
async fn explain_names_the_rules_a_traced_packet_passes() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let web_a = pod(&node, "web-a").await?;
    let web_b = pod(&node, "web-b").await?;
    let client = pod(&node, "client").await?;
    let mut listeners = Vec::new();
    for p in [&web_a, &web_b] {
        listeners.push(node.listen_in_pod(&p.id, "0.0.0.0:8080", 100).await?);
    }
    service(
        &node,
        "web",
        "10.96.0.10",
        "http=80:8080@30080",
        &[&web_a.ip, &web_b.ip],
    )
    .await?;

    // A cluster IP: the pod's default route, its veth on the bridge, the vmap lookup, the
    // Service chain, then a branch per backend ending at its pod.
    let path = node.explain("client", "10.96.0.10:80", &[]).await?;
    ensure!(path["version"] == 1, "{}", text(&path));
    ensure!(
        kinds(&path["hops"]) == ["route", "neighbour", "veth", "dnat", "backends"],
        "{}",
        text(&path)
    );
    let trunk = named_rules(&path["hops"]);
    ensure!(
        trunk
            == [Traced {
                chain: "prerouting".into(),
                rule: "ip daddr . meta l4proto . th dport vmap @svc_ip4".into()
            }],
        "{trunk:?}"
    );
    let branches = path["backends"].as_array().context("backends")?;
    let mut backends: Vec<(&str, &str)> = branches
        .iter()
        .map(|b| {
            (
                b["backend"].as_str().unwrap_or(""),
                b["verdict"].as_str().unwrap_or(""),
            )
        })
        .collect();
    backends.sort_unstable();
    let a = format!("{}:8080", web_a.ip);
    let b = format!("{}:8080", web_b.ip);
    ensure!(
        backends.len() == 2
            && backends
                .iter()
                .all(|(_, v)| v.starts_with("delivered to pod web-"))
            && backends
                .iter()
                .any(|(addr, v)| *addr == a && v.contains("web-a"))
            && backends
                .iter()
                .any(|(addr, v)| *addr == b && v.contains("web-b")),
        "{}",
        text(&path)
    );
    for br in branches {
        ensure!(br["outcome"] == "pod", "{}", text(br));
        ensure!(
            kinds(&br["hops"]) == ["dnat", "route", "filter", "snat", "neighbour", "bridge"],
            "{}",
            text(br)
        );
    }
    let traced = node
        .trace(&client.ip, || async {
            node.connect_from_pod(&client.id, "10.96.0.10:80")
                .await
                .map(drop)
        })
        .await?;
    let picked = one_branch_traced(&path, &traced)?;
    ensure!(picked == a || picked == b, "{picked}");
    // The connection made: conntrack holds it, with the reply's source to rewrite back.
    let after = node.explain("client", "10.96.0.10:80", &[]).await?;
    let replies: Vec<&str> = after["reply"]
        .as_array()
        .context("reply")?
        .iter()
        .filter_map(|h| h["detail"].as_str())
        .collect();
    ensure!(
        replies
            .iter()
            .any(|d| d.contains("rewritten back to come from 10.96.0.10:80")),
        "{}",
        text(&after)
    );
    // The text form names the same hops.
    let out = node.net_ok(&["explain", "client", "10.96.0.10:80"]).await?;
    println!("{out}");
    ensure!(
        out.contains("vmap @svc_ip4")
            && out.contains("backend ")
            && out.contains("replies (conntrack)"),
        "{out}"
    );

    // The node port on the node's address: the svc_nodeports lookup, same chain.
    let path = node.explain("client", "192.0.2.1:30080", &[]).await?;
    let traced = node
        .trace(&client.ip, || async {
            node.connect_from_pod(&client.id, "192.0.2.1:30080")
                .await
                .map(drop)
        })
        .await?;
    ensure!(
        named_rules(&path["hops"])[0]
            .rule
            .contains("vmap @svc_nodeports"),
        "{}",
        text(&path)
    );
    one_branch_traced(&path, &traced)?;

    // A pod of the same subnet: switched by the bridge. With br_netfilter (as on this
    // kind of machine) bridged IPv4 passes the node's hooks, and so the forward chain's
    // accept; without, nothing of peapod's sees it.
    let path = node.explain("client", &web_a.ip, &[]).await?;
    let bridged = kinds(&path["hops"]);
    ensure!(
        (bridged == ["route", "neighbour", "veth", "bridge"]
            || bridged == ["route", "neighbour", "veth", "filter", "bridge"])
            && path["outcome"] == "pod"
            && path["verdict"].as_str().unwrap_or("").contains("web-a"),
        "{}",
        text(&path)
    );
    let traced = node
        .trace(&client.ip, || async {
            node.connect_from_pod(&client.id, &a).await.map(drop)
        })
        .await?;
    same_rules(&named_rules(&path["hops"]), &traced, &path)?;

    // Out of the node (a TEST-NET address behind the node's uplink, where nothing answers):
    // the default route and the masquerade rule; the traced datagram matched it.
    let path = node.explain("client", "192.0.2.254:9", &["--udp"]).await?;
    ensure!(
        path["outcome"] == "leaves" && kinds(&path["hops"]) == LEAVING_THE_NODE,
        "{}",
        text(&path)
    );
    let masquerade = named_rules(&path["hops"]);
    ensure!(
        masquerade.len() == 2
            && masquerade[0].chain == "forward"
            && masquerade[1].chain == "postrouting"
            && masquerade[1].rule.ends_with("masquerade"),
        "{masquerade:?}"
    );
    let probe = node.probe_path().display().to_string();
    let traced = node
        .trace(&client.ip, || async {
            let args = [
                probe.as_str(),
                "udp-ask",
                "192.0.2.254:9",
                "--timeout-ms",
                "200",
            ];
            // Nothing answers: only the datagram's way out matters.
            node.exec_in_pod_output(&client.id, &args).await.map(drop)
        })
        .await?;
    same_rules(&masquerade, &traced, &path)?;

    // A Service without endpoints: the noep set's rule and the reset.
    node.service_ok(&["add", "empty", "--cluster-ip", "10.96.0.20", "--port", "80"])
        .await?;
    let path = node.explain("client", "10.96.0.20:80", &[]).await?;
    ensure!(path["outcome"] == "rejected", "{}", text(&path));
    let rules = named_rules(&path["hops"]);
    ensure!(
        rules.len() == 2
            && rules[0].chain == "prerouting_filter"
            && rules[0].rule.contains("@svc_noep4")
            && rules[1].chain == "svc_reject"
            && rules[1].rule.contains("tcp reset"),
        "{rules:?}"
    );
    let traced = node
        .trace(&client.ip, || async {
            let refused = node.connect_from_pod(&client.id, "10.96.0.20:80").await;
            ensure!(refused.is_err(), "a Service without endpoints answered");
            Ok(())
        })
        .await?;
    same_rules(&rules, &traced, &path)?;
    drop(listeners);
    Ok(())
}

#[tokio::test]
async fn a_pod_reaching_itself_through_its_service_is_masqueraded_and_explained() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let web = pod(&node, "web").await?;
    let _listener = node.listen_in_pod(&web.id, "0.0.0.0:8080", 10).await?;
    service(&node, "self", "10.96.0.30", "80:8080", &[&web.ip]).await?;
    let path = node.explain("default/web", "10.96.0.30:80", &[]).await?;
    let branch = &path["backends"][0];
    ensure!(
        kinds(&branch["hops"]) == ["dnat", "route", "filter", "snat", "neighbour", "bridge"]
            && branch["hops"][3]["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with("hairpin"),
        "{}",
        text(&path)
    );
    let traced = node
        .trace(&web.ip, || async {
            node.connect_from_pod(&web.id, "10.96.0.30:80")
                .await
                .map(drop)
        })
        .await?;
    one_branch_traced(&path, &traced)?;
    Ok(())
}

#[tokio::test]
async fn bad_explain_requests_get_precise_errors_and_graph_draws_the_node() -> Result<()> {
    let node = common::node_with_uplink().await?;
    let web = pod(&node, "web").await?;
    let _other = pod(&node, "client").await?;
    service(&node, "web", "10.96.0.10", "80:8080", &[&web.ip]).await?;
    let mut c =
        pb::network_client::NetworkClient::new(peapod_tests::cri::channel(&node.socket()).await?);
    let ask = |from: &str, to: &str, port: u32| pb::ExplainRequest {
        from: from.into(),
        to: to.into(),
        port,
        protocol: pb::Protocol::Tcp.into(),
    };
    for (request, code, what) in [
        (
            ask("nosuchpod", "10.96.0.10", 80),
            Code::NotFound,
            "an unknown pod",
        ),
        (ask("", "10.96.0.10", 80), Code::InvalidArgument, "no pod"),
        (
            ask("web", "10.96.0.999", 80),
            Code::InvalidArgument,
            "a bad address",
        ),
        (
            ask("web", "10.96.0.10", 70000),
            Code::InvalidArgument,
            "a bad port",
        ),
        (ask("web", "fd00::1", 80), Code::InvalidArgument, "IPv6"),
    ] {
        common::expect_code(c.explain(request).await, code, what)?;
    }
    let mut bad = ask("web", "10.96.0.10", 80);
    bad.protocol = 9;
    common::expect_code(
        c.explain(bad).await,
        Code::InvalidArgument,
        "a bad protocol",
    )?;
    let out = node
        .net_cli(&["explain", "nosuchpod", "10.96.0.10:80"])
        .await?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no pod"),
        "{out:?}"
    );
    // By id prefix as by name.
    let by_id = node.explain(&web.id[..12], "10.96.0.10:80", &[]).await?;
    ensure!(by_id["from"]["pod"] == "web", "{}", text(&by_id));

    // The graph: JSON with every part, and an SVG from dot naming pods and Services.
    let json: Value = serde_json::from_str(&node.net_ok(&["graph", "--json"]).await?)?;
    let mut keys: Vec<&str> = json
        .as_object()
        .context("an object")?
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    ensure!(
        keys == ["bridge", "peers", "pods", "services", "version", "vxlan"],
        "{keys:?}"
    );
    ensure!(
        json["bridge"]["up"] == true && json["vxlan"].is_null(),
        "{json}"
    );
    let pods: Vec<&str> = json["pods"]
        .as_array()
        .context("pods")?
        .iter()
        .filter(|p| p["attached"] == true)
        .filter_map(|p| p["name"].as_str())
        .collect();
    ensure!(pods.contains(&"web") && pods.contains(&"client"), "{json}");
    ensure!(
        json["services"][0]["frontends"][0] == "10.96.0.10:80/tcp"
            && json["services"][0]["backends"][0] == format!("{}:8080", web.ip),
        "{json}"
    );
    let svg = node.dir().join("graph.svg");
    node.net_ok(&["graph", "-o", svg.to_str().context("path")?])
        .await?;
    let drawn = std::fs::read_to_string(&svg)?;
    ensure!(
        drawn.contains("<svg")
            && drawn.contains("pod web")
            && drawn.contains("Service default/web")
            && drawn.contains("bridge peapod0"),
        "{drawn}"
    );
    let dot = node.net_ok(&["graph", "--dot"]).await?;
    ensure!(dot.starts_with("digraph peapod {"), "{dot}");
    Ok(())
}
