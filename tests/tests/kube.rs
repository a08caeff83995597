//! `peapod serve --kubeconfig`: the daemon lists and watches Services, EndpointSlices and
//! Nodes of an API server and programs them; changes pushed on the watch arrive; the Services
//! and Nodes APIs refuse changes; a restart with the API server gone keeps the Services.
//!
//! The API server is a fake in this test process, speaking just enough of the list and watch
//! protocol (JSON lists, then a held-open stream of watch events). It listens on the node's
//! own loopback: its socket is made in the node's network namespace on a throwaway thread.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, Response};
use peapod_proto::net::v1 as pb;
use peapod_tests::{Node, cri};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// One kind the fake serves: its objects by namespace/name and its open watches.
struct Kind {
    path: &'static str,
    api_version: &'static str,
    list_kind: &'static str,
    items: BTreeMap<String, Value>,
    watches: Vec<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Default)]
struct Fake {
    version: u64,
    kinds: Vec<Kind>,
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn key(obj: &Value) -> String {
    let m = &obj["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or(""),
        m["name"].as_str().unwrap_or("")
    )
}

impl Fake {
    fn kind(&mut self, path: &str) -> Option<&mut Kind> {
        self.kinds.iter_mut().find(|k| k.path == path)
    }

    /// `event` (ADDED, MODIFIED, DELETED) of `obj` at `path`: the store changes and every
    /// open watch of the kind hears of it.
    fn event(&mut self, path: &str, event: &str, mut obj: Value) {
        self.version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let kind = self.kind(path).expect("a kind the fake serves");
        if event == "DELETED" {
            kind.items.remove(&key(&obj));
        } else {
            kind.items.insert(key(&obj), obj.clone());
        }
        let line = format!("{}\n", json!({ "type": event, "object": obj }));
        kind.watches
            .retain(|w| w.send(Bytes::from(line.clone())).is_ok());
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn answer(fake: &Shared, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let mut f = fake.lock().unwrap();
    f.requests.push(format!("{}?{query}", req.uri().path()));
    let version = f.version.to_string();
    let Some(kind) = f.kind(req.uri().path()) else {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404});
        return Response::builder()
            .status(404)
            .body(Full::new(Bytes::from(status.to_string())).boxed())
            .unwrap();
    };
    let body = if query
        .split('&')
        .any(|q| q == "watch=true" || q == "watch=1")
    {
        let (tx, rx) = mpsc::unbounded_channel();
        kind.watches.push(tx);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let b = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        StreamBody::new(frames).boxed()
    } else {
        let list = json!({
            "apiVersion": kind.api_version,
            "kind": kind.list_kind,
            "metadata": {"resourceVersion": version},
            "items": kind.items.values().collect::<Vec<_>>(),
        });
        Full::new(Bytes::from(list.to_string())).boxed()
    };
    Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

/// A listening socket on 127.0.0.1 of the network namespace of `pid`.
fn listen_in_netns_of(pid: u32) -> Result<StdListener> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).context("open the node's netns")?;
    std::thread::spawn(move || -> Result<StdListener> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let l = StdListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .expect("the netns thread does not panic")
}

/// Serves `fake` on `listener` until the task is aborted, which ends every connection too.
async fn serve(listener: StdListener, fake: Shared) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = listener.accept().await?;
        let fake = fake.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = answer(&fake, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
         http://127.0.0.1:{port}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
         user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    )
}

fn service(name: &str, ip: &str, port: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "default", "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": [port]},
    })
}

fn web_slice(second_ready: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": "web-abc",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.88.0.5"], "conditions": {"ready": true}},
            {"addresses": ["10.88.0.6"],
             "conditions": {"ready": second_ready, "serving": second_ready}},
        ],
    })
}

fn k8s_node(name: &str, cidr: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                 {"type": "Hostname", "address": name}]},
    })
}

/// The cluster at the start: a NodePort Service with a named target port and one ready
/// endpoint of two, a plain one, a headless one; this node and one other.
fn cluster() -> Fake {
    let kind = |path, api_version, list_kind| Kind {
        path,
        api_version,
        list_kind,
        items: BTreeMap::new(),
        watches: Vec::new(),
    };
    let mut f = Fake {
        kinds: vec![
            kind("/api/v1/services", "v1", "ServiceList"),
            kind(
                "/apis/discovery.k8s.io/v1/endpointslices",
                "discovery.k8s.io/v1",
                "EndpointSliceList",
            ),
            kind("/api/v1/nodes", "v1", "NodeList"),
        ],
        ..Fake::default()
    };
    let mut web = service(
        "web",
        "10.96.0.10",
        json!({"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web",
               "nodePort": 30080}),
    );
    web["spec"]["type"] = json!("NodePort");
    for (path, obj) in [
        ("/api/v1/services", web),
        (
            "/api/v1/services",
            service("old", "10.96.0.11", json!({"port": 80, "targetPort": 80})),
        ),
        (
            "/api/v1/services",
            service("db", "None", json!({"port": 5432})),
        ),
        ("/apis/discovery.k8s.io/v1/endpointslices", web_slice(false)),
        (
            "/api/v1/nodes",
            k8s_node("node-a", "10.88.0.0/16", "192.0.2.1"),
        ),
        (
            "/api/v1/nodes",
            k8s_node("node-b", "10.89.0.0/24", "192.0.2.2"),
        ),
    ] {
        f.event(path, "ADDED", obj);
    }
    f
}

async fn list(node: &Node) -> Result<Vec<pb::Service>> {
    let mut c = node.services().await?;
    Ok(c.list_services(pb::ListServicesRequest::default())
        .await?
        .into_inner()
        .services)
}

/// (name, endpoint ip, ready) of every Service.
async fn endpoints(node: &Node) -> Result<Vec<(String, String, bool)>> {
    Ok(list(node)
        .await?
        .into_iter()
        .flat_map(|s| {
            let name = s.name.clone();
            s.endpoints
                .into_iter()
                .map(move |e| (name.clone(), e.ip, e.ready))
        })
        .collect())
}

async fn peers(node: &Node) -> Result<Vec<String>> {
    let mut c = pb::nodes_client::NodesClient::new(cri::channel(&node.socket()).await?);
    let nodes = c.list_nodes(pb::ListNodesRequest::default()).await?;
    Ok(nodes
        .into_inner()
        .nodes
        .into_iter()
        .filter(|n| n.name != "self")
        .map(|n| format!("{} {} {}", n.name, n.node_ip, n.pod_cidr))
        .collect())
}

/// Polls `check` until it answers true, for at most 15 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn services_and_nodes_come_from_the_api_server() -> Result<()> {
    let conf = tempfile::tempdir()?;
    let path = conf.path().join("kubeconfig");
    let mut node = common::builder()
        .setup(&[
            "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
        ])
        .setup(&["ip", "addr", "add", "192.0.2.1/24", "dev", "uplink0"])
        .setup(&["ip", "link", "set", "uplink1", "up"])
        .setup(&["ip", "link", "set", "uplink0", "up"])
        .daemon_args(&["--node-name", "node-a"])
        .config(&format!("kubeconfig = {:?}", path.display().to_string()))
        .without_daemon()
        .start()
        .await?;
    let listener = listen_in_netns_of(node.pid1())?;
    std::fs::write(&path, kubeconfig(listener.local_addr()?.port()))?;
    let fake: Shared = Arc::new(Mutex::new(cluster()));
    let server = tokio::spawn(serve(listener, fake.clone()));
    node.start_daemon().await?;

    // The first sync: web with its one ready endpoint at the named port's number, old,
    // no headless db; node-b is a peer with a route, node-a (this node) is not.
    let want = |second: bool| {
        vec![
            ("web".to_owned(), "10.88.0.5".to_owned(), true),
            ("web".to_owned(), "10.88.0.6".to_owned(), second),
        ]
    };
    eventually("web with its endpoints", async || {
        Ok(endpoints(&node).await? == want(false))
    })
    .await?;
    let names: Vec<String> = list(&node).await?.into_iter().map(|s| s.name).collect();
    ensure!(names == ["old", "web"], "{names:?}");
    let web = list(&node)
        .await?
        .into_iter()
        .find(|s| s.name == "web")
        .unwrap();
    ensure!(
        web.cluster_ip == "10.96.0.10" && web.ports[0].node_port == 30080,
        "{web:?}"
    );
    ensure!(web.endpoints[0].ports.get("http") == Some(&8080), "{web:?}");
    let rules = node.service_rules().await?;
    ensure!(
        rules.contains("10.96.0.10 . tcp . 80") && rules.contains("10.96.0.11 . tcp . 80"),
        "{rules}"
    );
    ensure!(
        rules.contains("10.88.0.5") && !rules.contains("10.88.0.6"),
        "{rules}"
    );
    eventually("node-b as a peer", async || {
        Ok(peers(&node).await? == ["node-b 192.0.2.2 10.89.0.0/24"])
    })
    .await?;
    let routes = node.exec(&["ip", "route", "show"]).await?;
    ensure!(routes.contains("10.89.0.0/24 via 192.0.2.2"), "{routes}");
    let asked = fake.lock().unwrap().requests.clone();
    ensure!(
        asked.iter().any(|r| r.starts_with("/api/v1/services?")
            && r.contains("service.kubernetes.io%2Fservice-proxy-name")),
        "Services of another proxy are not listed: {asked:?}"
    );

    // Kubernetes owns them: the APIs refuse changes.
    let mut c = node.services().await?;
    let refused = c
        .remove_service(pb::RemoveServiceRequest {
            namespace: "default".into(),
            name: "web".into(),
        })
        .await
        .unwrap_err();
    ensure!(
        refused.code() == tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let mut n = pb::nodes_client::NodesClient::new(cri::channel(&node.socket()).await?);
    let refused = n
        .remove_node(pb::RemoveNodeRequest {
            name: "node-b".into(),
        })
        .await
        .unwrap_err();
    ensure!(
        refused.code() == tonic::Code::FailedPrecondition,
        "{refused:?}"
    );

    // Changes on the watch: the second endpoint gets ready, old and node-b go.
    {
        let mut f = fake.lock().unwrap();
        f.event(
            "/apis/discovery.k8s.io/v1/endpointslices",
            "MODIFIED",
            web_slice(true),
        );
        f.event(
            "/api/v1/services",
            "DELETED",
            service("old", "10.96.0.11", json!({"port": 80})),
        );
        f.event(
            "/api/v1/nodes",
            "DELETED",
            k8s_node("node-b", "10.89.0.0/24", "192.0.2.2"),
        );
    }
    eventually("both endpoints ready and old gone", async || {
        Ok(endpoints(&node).await? == want(true) && list(&node).await?.len() == 1)
    })
    .await?;
    eventually("node-b gone", async || Ok(peers(&node).await?.is_empty())).await?;
    let routes = node.exec(&["ip", "route", "show"]).await?;
    ensure!(!routes.contains("10.89.0.0/24"), "{routes}");
    let rules = node.service_rules().await?;
    ensure!(
        rules.contains("10.88.0.6") && !rules.contains("10.96.0.11"),
        "{rules}"
    );

    // The API server goes away; a restarted daemon serves the CRI and keeps the Services.
    server.abort();
    let _ = server.await;
    node.restart_daemon().await?;
    ensure!(
        endpoints(&node).await? == want(true),
        "kept after a restart"
    );
    let rules = node.service_rules().await?;
    ensure!(rules.contains("10.96.0.10 . tcp . 80"), "{rules}");
    Ok(())
}
