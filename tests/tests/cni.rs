//! `peapod-cni` on its own, against the CNI spec's contract: run as a runtime runs it, inside
//! a throwaway node (no daemon), with network namespaces made by `ip netns add` in the node.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use peapod_tests::{CniOutput, Node, in_cidr};
use serde_json::{Value, json};

const SUBNET: &str = "10.99.0.0/24";
const BRIDGE: &str = "cni-test0";
/// The CNI error codes the tests expect (spec's, then peapod's).
const INCOMPATIBLE_VERSION: u64 = 1;
const UNKNOWN_CONTAINER: u64 = 3;
const INVALID_ENV: u64 = 4;
const DECODE: u64 = 6;
const INVALID_CONFIG: u64 = 7;
const NOT_AVAILABLE: u64 = 50;
const ALREADY_ATTACHED: u64 = 100;
const CHECK_FAILED: u64 = 101;
const PORT_TAKEN: u64 = 102;
const POOL_EXHAUSTED: u64 = 103;

/// A node and a network configuration for the plugin, its data dir in the node's temp dir.
struct Cni {
    node: Node,
    subnet: &'static str,
}

impl Cni {
    async fn start(subnet: &'static str) -> Result<Cni> {
        let node = Node::builder().without_daemon().start().await?;
        Ok(Cni { node, subnet })
    }

    fn data_dir(&self) -> PathBuf {
        self.node.dir().join("cni")
    }

    /// The configuration, with `extra` merged in at the top level.
    fn conf(&self, extra: Value) -> Vec<u8> {
        let mut conf = json!({
            "cniVersion": "1.1.0",
            "name": "pods",
            "type": "peapod",
            "bridge": BRIDGE,
            "subnet": self.subnet,
            "dataDir": self.data_dir(),
        });
        if let Value::Object(extra) = extra {
            conf.as_object_mut().unwrap().extend(extra);
        }
        serde_json::to_vec(&conf).unwrap()
    }

    async fn netns(&self, name: &str) -> Result<String> {
        self.node.exec(&["ip", "netns", "add", name]).await?;
        Ok(format!("/run/netns/{name}"))
    }

    async fn run(
        &self,
        command: &str,
        container: &str,
        netns: Option<&str>,
        conf: &[u8],
    ) -> Result<CniOutput> {
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        if let Some(netns) = netns {
            env.push(("CNI_NETNS", netns));
        }
        self.node.cni(&env, conf).await
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn ok(
        &self,
        command: &str,
        container: &str,
        netns: Option<&str>,
        conf: &[u8],
    ) -> Result<Value> {
        let out = self.run(command, container, netns, conf).await?;
        ensure!(
            out.status.success(),
            "{command} {container} failed ({}): {} {}",
            out.status,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    async fn status(&self) -> Result<CniOutput> {
        let conf = self.conf(json!({}));
        self.node.cni(&[("CNI_COMMAND", "STATUS")], &conf).await
    }

    async fn add(&self, container: &str, netns: &str) -> Result<Value> {
        self.ok("ADD", container, Some(netns), &self.conf(json!({})))
            .await
    }

    /// Leases on disk, as `(ip, owner)`.
    fn leases(&self) -> Result<Vec<(String, String)>> {
        let dir = self.data_dir().join("pods/ipam");
        let mut leases = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(leases);
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_ok() {
                let owner = std::fs::read_to_string(entry.path())?;
                leases.push((name, owner.trim_end().to_owned()));
            }
        }
        leases.sort();
        Ok(leases)
    }

    fn records(&self) -> Result<usize> {
        let dir = self.data_dir().join("pods/attachments");
        Ok(match std::fs::read_dir(dir) {
            Ok(entries) => entries.count(),
            Err(_) => 0,
        })
    }

    /// Names of the links in the node's own netns.
    async fn links(&self) -> Result<Vec<String>> {
        let out = self.node.exec(&["ip", "-o", "link", "show"]).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect())
    }

    async fn in_netns(&self, netns: &str, args: &[&str]) -> Result<String> {
        let name = netns.trim_start_matches("/run/netns/");
        let mut all = vec!["ip", "netns", "exec", name];
        all.extend_from_slice(args);
        self.node.exec(&all).await
    }
}

/// The address ADD gave, without its prefix length.
fn address(result: &Value) -> Result<String> {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no ips[0].address in {result}"))?;
    Ok(cidr.split('/').next().unwrap().to_owned())
}

fn host_end(result: &Value) -> Result<String> {
    Ok(result["interfaces"][1]["name"]
        .as_str()
        .with_context(|| format!("no interfaces[1].name in {result}"))?
        .to_owned())
}

fn expect_error(out: &CniOutput, code: u64, what: &str) -> Result<()> {
    ensure!(
        out.code() == Some(code),
        "{what}: expected CNI error {code}, got {} {} {}",
        out.status,
        out.stdout,
        out.stderr
    );
    ensure!(
        out.stdout["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no msg in {}",
        out.stdout
    );
    ensure!(
        out.stdout["cniVersion"].is_string(),
        "{what}: no cniVersion in {}",
        out.stdout
    );
    Ok(())
}

#[tokio::test]
async fn add_makes_a_working_interface_and_del_removes_it() -> Result<()> {
    let cni = Cni::start(SUBNET).await?;
    let (ns1, ns2) = (cni.netns("c1").await?, cni.netns("c2").await?);
    let r1 = cni.add("c1", &ns1).await?;
    let r2 = cni.add("c2", &ns2).await?;

    // The result as the spec has it: bridge, host end, pod end in the sandbox; the address on
    // the pod end; the default route via the gateway.
    ensure!(r1["cniVersion"] == "1.1.0", "{r1}");
    let interfaces = r1["interfaces"].as_array().context("no interfaces")?;
    ensure!(interfaces.len() == 3, "{r1}");
    ensure!(interfaces[0]["name"] == BRIDGE, "{r1}");
    ensure!(interfaces[2]["name"] == "eth0", "{r1}");
    ensure!(interfaces[2]["sandbox"] == ns1.as_str(), "{r1}");
    ensure!(
        interfaces
            .iter()
            .all(|i| i["mac"].as_str().is_some_and(|m| m.len() == 17)),
        "{r1}"
    );
    ensure!(r1["ips"][0]["gateway"] == "10.99.0.1", "{r1}");
    ensure!(r1["ips"][0]["interface"] == 2, "{r1}");
    ensure!(r1["routes"][0]["dst"] == "0.0.0.0/0", "{r1}");
    let (ip1, ip2) = (address(&r1)?, address(&r2)?);
    ensure!(ip1 != ip2, "both got {ip1}");
    for ip in [&ip1, &ip2] {
        ensure!(in_cidr(ip, SUBNET) && ip != "10.99.0.1", "{ip}");
    }

    // The kernel has what the result says.
    let addr = cni
        .in_netns(&ns1, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .await?;
    ensure!(addr.contains(&format!("inet {ip1}/24")), "{addr}");
    let route = cni
        .in_netns(&ns1, &["ip", "route", "show", "default"])
        .await?;
    ensure!(route.contains("via 10.99.0.1 dev eth0"), "{route}");
    let ports = cni
        .node
        .exec(&["ip", "-o", "link", "show", "master", BRIDGE])
        .await?;
    for result in [&r1, &r2] {
        let host = host_end(result)?;
        ensure!(
            ports.contains(&format!(" {host}@")),
            "{host} not on {BRIDGE}: {ports}"
        );
    }
    let mut expected = vec![
        (ip1.clone(), "c1/eth0".to_owned()),
        (ip2.clone(), "c2/eth0".to_owned()),
    ];
    expected.sort();
    ensure!(cni.leases()? == expected, "{:?}", cni.leases()?);

    // The two containers reach each other through the bridge.
    let probe = cni.node.probe_path().display().to_string();
    let listen = format!("{ip2}:8080");
    let mut server = cni.node.spawn(&[
        "ip", "netns", "exec", "c2", &probe, "listen", &listen, "--count", "1",
    ])?;
    server.wait_for_line("listening").await?;
    let said = cni
        .in_netns(&ns1, &[&probe, "connect", &listen, "--timeout-ms", "3000"])
        .await?;
    ensure!(!said.trim().is_empty(), "nothing came back from {listen}");
    server.finish().await?;

    // DEL twice is fine; DEL without a netns (the sandbox is gone) too.
    let conf = cni.conf(json!({}));
    for _ in 0..2 {
        let out = cni.ok("DEL", "c1", Some(&ns1), &conf).await?;
        ensure!(out.is_null(), "DEL printed {out}");
    }
    cni.ok("DEL", "c2", None, &conf).await?;
    let links = cni.links().await?;
    for result in [&r1, &r2] {
        let host = host_end(result)?;
        ensure!(!links.contains(&host), "{host} is still there: {links:?}");
    }
    let eth0 = cni
        .node
        .exec_output(&["ip", "netns", "exec", "c1", "ip", "link", "show", "eth0"])
        .await?;
    ensure!(!eth0.status.success(), "eth0 is still in c1");
    ensure!(cni.leases()?.is_empty(), "leases left: {:?}", cni.leases()?);
    ensure!(cni.records()? == 0, "records left");
    Ok(())
}

#[tokio::test]
async fn add_again_is_idempotent_and_another_netns_is_refused() -> Result<()> {
    let cni = Cni::start(SUBNET).await?;
    let (ns1, ns2) = (cni.netns("c1").await?, cni.netns("c2").await?);
    let first = cni.add("c1", &ns1).await?;
    let again = cni.add("c1", &ns1).await?;
    ensure!(
        first == again,
        "a repeated ADD answered {again}, not {first}"
    );
    ensure!(cni.leases()?.len() == 1, "{:?}", cni.leases()?);

    let out = cni
        .run("ADD", "c1", Some(&ns2), &cni.conf(json!({})))
        .await?;
    expect_error(&out, ALREADY_ATTACHED, "ADD of c1 into another netns")?;
    let eth0 = cni
        .node
        .exec_output(&["ip", "netns", "exec", "c2", "ip", "link", "show", "eth0"])
        .await?;
    ensure!(!eth0.status.success(), "the refused ADD made eth0 in c2");
    ensure!(cni.leases()?.len() == 1, "{:?}", cni.leases()?);

    cni.ok("DEL", "c1", Some(&ns1), &cni.conf(json!({})))
        .await?;
    ensure!(cni.leases()?.is_empty(), "{:?}", cni.leases()?);
    Ok(())
}

#[tokio::test]
async fn check_reports_a_link_deleted_by_hand() -> Result<()> {
    let cni = Cni::start(SUBNET).await?;
    let ns = cni.netns("c1").await?;
    let result = cni.add("c1", &ns).await?;
    let with_prev = cni.conf(json!({ "prevResult": result }));
    let out = cni.ok("CHECK", "c1", Some(&ns), &with_prev).await?;
    ensure!(out.is_null(), "CHECK printed {out}");
    // Keys in any case, as a Go plugin would take them.
    let go_prev = cni.conf(json!({
        "PrevResult": { "IPs": [{ "Address": result["ips"][0]["address"] }] },
    }));
    cni.ok("CHECK", "c1", Some(&ns), &go_prev).await?;

    // CHECK needs the prevResult, and an attachment ADD made.
    let no_prev = cni
        .run("CHECK", "c1", Some(&ns), &cni.conf(json!({})))
        .await?;
    expect_error(&no_prev, INVALID_CONFIG, "CHECK without prevResult")?;
    let unknown = cni.run("CHECK", "c9", Some(&ns), &with_prev).await?;
    expect_error(&unknown, UNKNOWN_CONTAINER, "CHECK of an unknown container")?;

    let host = host_end(&result)?;
    cni.node.exec(&["ip", "link", "del", &host]).await?;
    let broken = cni.run("CHECK", "c1", Some(&ns), &with_prev).await?;
    expect_error(
        &broken,
        CHECK_FAILED,
        "CHECK after the host end was deleted",
    )?;
    ensure!(
        broken.stdout["msg"].as_str().unwrap().contains(&host),
        "{}",
        broken.stdout
    );

    // DEL still cleans up what is left.
    cni.ok("DEL", "c1", Some(&ns), &cni.conf(json!({}))).await?;
    ensure!(cni.leases()?.is_empty(), "{:?}", cni.leases()?);
    Ok(())
}

#[tokio::test]
async fn gc_keeps_only_valid_attachments_and_collects_leftovers() -> Result<()> {
    let cni = Cni::start(SUBNET).await?;
    let mut results = Vec::new();
    for c in ["c1", "c2", "c3"] {
        let ns = cni.netns(c).await?;
        results.push((ns.clone(), cni.add(c, &ns).await?));
    }
    // What an ADD killed half-way leaves: a lease with no record, a port on the bridge.
    std::fs::write(cni.data_dir().join("pods/ipam/10.99.0.200"), "ghost/eth0\n")?;
    cni.node
        .exec(&[
            "ip",
            "link",
            "add",
            "ppdeadbeef",
            "type",
            "veth",
            "peer",
            "name",
            "ppdeadbee0",
        ])
        .await?;
    cni.node
        .exec(&["ip", "link", "set", "ppdeadbeef", "master", BRIDGE])
        .await?;

    let no_list = cni.run("GC", "c1", None, &cni.conf(json!({}))).await?;
    expect_error(&no_list, INVALID_CONFIG, "GC without a list to keep")?;
    ensure!(cni.leases()?.len() == 4, "GC without a list removed leases");

    let keep = cni.conf(json!({
        "cni.dev/valid-attachments": [{ "containerID": "c1", "ifname": "eth0" }],
    }));
    let out = cni
        .node
        .cni(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
            &keep,
        )
        .await?;
    ensure!(
        out.status.success(),
        "GC failed: {} {}",
        out.stdout,
        out.stderr
    );

    let ip1 = address(&results[0].1)?;
    ensure!(
        cni.leases()? == vec![(ip1, "c1/eth0".to_owned())],
        "{:?}",
        cni.leases()?
    );
    ensure!(cni.records()? == 1, "records: {}", cni.records()?);
    let links = cni.links().await?;
    ensure!(links.contains(&host_end(&results[0].1)?), "{links:?}");
    for gone in [
        host_end(&results[1].1)?,
        host_end(&results[2].1)?,
        "ppdeadbeef".into(),
    ] {
        ensure!(!links.contains(&gone), "{gone} survived GC: {links:?}");
    }
    // The kept one still checks out.
    let (ns1, r1) = &results[0];
    cni.ok(
        "CHECK",
        "c1",
        Some(ns1),
        &cni.conf(json!({ "prevResult": r1 })),
    )
    .await?;
    cni.ok("DEL", "c1", Some(ns1), &cni.conf(json!({}))).await?;
    Ok(())
}

/// What a hostile run is, the environment it changes (an empty value unsets), its stdin and
/// the error code it must get.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u64);

#[tokio::test]
async fn hostile_input_gets_a_cni_error_and_makes_nothing() -> Result<()> {
    let cni = Cni::start(SUBNET).await?;
    let ns = cni.netns("c1").await?;
    let good = cni.conf(json!({}));
    let text = |v: Value| serde_json::to_vec(&v).unwrap();
    let base: Value = serde_json::from_slice(&good)?;
    let with = |key: &str, value: Value| {
        let mut conf = base.clone();
        conf[key] = value;
        text(conf)
    };
    let huge = {
        let mut conf = good.clone();
        conf.pop();
        conf.extend_from_slice(br#","padding":""#);
        conf.extend(std::iter::repeat_n(b'x', 2 << 20));
        conf.extend_from_slice(br#""}"#);
        conf
    };
    let cases: Vec<Case> = vec![
        ("2 MiB of configuration", vec![], huge, DECODE),
        (
            "malformed JSON",
            vec![],
            b"{\"cniVersion\": \"1.1.0\",".to_vec(),
            DECODE,
        ),
        ("not an object", vec![], b"[1, 2]".to_vec(), DECODE),
        (
            "a bad CIDR",
            vec![],
            with("subnet", json!("10.99.0.0/33")),
            INVALID_CONFIG,
        ),
        (
            "no subnet",
            vec![],
            with("subnet", Value::Null),
            INVALID_CONFIG,
        ),
        (
            "an IPv6 subnet",
            vec![],
            with("subnet", json!("fd00::/64")),
            INVALID_CONFIG,
        ),
        (
            "a bridge name with a slash",
            vec![],
            with("bridge", json!("a/b")),
            INVALID_CONFIG,
        ),
        (
            "a name escaping dataDir",
            vec![],
            with("name", json!("../x")),
            INVALID_CONFIG,
        ),
        (
            "cniVersion 0.3.1",
            vec![],
            with("cniVersion", json!("0.3.1")),
            INCOMPATIBLE_VERSION,
        ),
        (
            "a prevResult on ADD",
            vec![],
            with("prevResult", json!({"ips": []})),
            INVALID_CONFIG,
        ),
        (
            "no CNI_CONTAINERID",
            vec![("CNI_CONTAINERID", "")],
            good.clone(),
            INVALID_ENV,
        ),
        (
            "a bad CNI_IFNAME",
            vec![("CNI_IFNAME", "../eth0")],
            good.clone(),
            INVALID_ENV,
        ),
        (
            "no CNI_NETNS",
            vec![("CNI_NETNS", "")],
            good.clone(),
            INVALID_ENV,
        ),
        (
            "a missing netns",
            vec![("CNI_NETNS", "/run/netns/nope")],
            good.clone(),
            INVALID_ENV,
        ),
        (
            "an unknown command",
            vec![("CNI_COMMAND", "PATCH")],
            good.clone(),
            INVALID_ENV,
        ),
    ];
    for (what, overrides, stdin, code) in cases {
        let mut env = vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ns.as_str()),
        ];
        for (key, value) in overrides {
            env.retain(|(k, _)| *k != key);
            if !value.is_empty() {
                env.push((key, value));
            }
        }
        let out = cni.node.cni(&env, &stdin).await?;
        expect_error(&out, code, what)?;
    }

    // Nothing was made: no bridge, no data dir, no nftables table, nothing in the netns.
    ensure!(
        !cni.links().await?.iter().any(|l| l == BRIDGE),
        "the bridge was made"
    );
    ensure!(!cni.data_dir().exists(), "the data dir was made");
    let table = cni
        .node
        .exec_output(&["nft", "list", "table", "inet", "peapod"])
        .await?;
    ensure!(!table.status.success(), "the nftables table was made");
    let inside = cni.in_netns(&ns, &["ip", "-o", "link", "show"]).await?;
    ensure!(inside.lines().count() == 1, "links in c1: {inside}");
    Ok(())
}

#[tokio::test]
async fn status_reports_a_full_pool_and_version_its_versions() -> Result<()> {
    let cni = Cni::start("10.99.0.0/30").await?;
    let version = cni
        .node
        .cni(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#)
        .await?;
    ensure!(version.status.success(), "{version:?}");
    ensure!(
        version.stdout["cniVersion"] == "1.0.0",
        "{}",
        version.stdout
    );
    ensure!(
        version.stdout["supportedVersions"] == json!(["1.0.0", "1.1.0"]),
        "{}",
        version.stdout
    );

    let ready = cni.status().await?;
    ensure!(ready.status.success(), "STATUS of an empty pool: {ready:?}");

    // A /30 has one address for a pod.
    let (ns1, ns2) = (cni.netns("c1").await?, cni.netns("c2").await?);
    cni.add("c1", &ns1).await?;
    expect_error(&cni.status().await?, NOT_AVAILABLE, "STATUS of a full pool")?;
    let full = cni
        .run("ADD", "c2", Some(&ns2), &cni.conf(json!({})))
        .await?;
    expect_error(&full, POOL_EXHAUSTED, "ADD into a full pool")?;
    let inside = cni.in_netns(&ns2, &["ip", "-o", "link", "show"]).await?;
    ensure!(
        inside.lines().count() == 1,
        "the failed ADD left links in c2: {inside}"
    );
    ensure!(cni.leases()?.len() == 1, "{:?}", cni.leases()?);

    cni.ok("DEL", "c1", Some(&ns1), &cni.conf(json!({})))
        .await?;
    let again = cni.status().await?;
    ensure!(again.status.success(), "STATUS after DEL: {again:?}");
    Ok(())
}

#[tokio::test]
async fn port_mappings_forward_to_the_container_and_go_with_del() -> Result<()> {
    let cni = Cni::start(SUBNET).await?;
    let (ns1, ns2) = (cni.netns("c1").await?, cni.netns("c2").await?);
    let mapped = cni.conf(json!({
        "runtimeConfig": { "portMappings": [
            { "hostPort": 8080, "containerPort": 80, "protocol": "tcp" },
        ]},
    }));
    let result = cni.ok("ADD", "c1", Some(&ns1), &mapped).await?;
    let ip = address(&result)?;
    let map = cni
        .node
        .exec(&["nft", "list", "map", "inet", "peapod", "hostports_any"])
        .await?;
    ensure!(map.contains(&format!("tcp . 8080 : {ip} . 80")), "{map}");

    // From the node, at its bridge address, to the container's port 80.
    reached_through_host_port(&cni, 8080).await?;

    // Another container asking for the same hostPort is refused before anything is made.
    let taken = cni.run("ADD", "c2", Some(&ns2), &mapped).await?;
    expect_error(&taken, PORT_TAKEN, "a second ADD of hostPort 8080")?;
    ensure!(cni.leases()?.len() == 1, "{:?}", cni.leases()?);

    cni.ok("DEL", "c1", Some(&ns1), &mapped).await?;
    let map = cni
        .node
        .exec(&["nft", "list", "map", "inet", "peapod", "hostports_any"])
        .await?;
    ensure!(!map.contains("8080"), "the mapping outlived DEL: {map}");
    Ok(())
}

/// A listener on port 80 in netns `c1` answers a connection from the node to its bridge
/// address at `port`.
async fn reached_through_host_port(cni: &Cni, port: u16) -> Result<()> {
    let probe = cni.node.probe_path().display().to_string();
    let mut server = cni.node.spawn(&[
        "ip",
        "netns",
        "exec",
        "c1",
        &probe,
        "listen",
        "0.0.0.0:80",
        "--count",
        "1",
    ])?;
    server.wait_for_line("listening").await?;
    let said = cni
        .node
        .ask_from_node("connect", &format!("10.99.0.1:{port}"))
        .await?;
    ensure!(
        !said.trim().is_empty(),
        "nothing came back through hostPort {port}"
    );
    server.finish().await?;
    Ok(())
}

#[tokio::test]
async fn go_cased_port_mappings_work_and_an_unusable_runtime_config_does_not_stop_del() -> Result<()>
{
    let cni = Cni::start(SUBNET).await?;
    let ns1 = cni.netns("c1").await?;
    // As containerd 1.6 (go-cni) writes them: Go's field names, an empty HostIP.
    let mapped = cni.conf(json!({
        "runtimeConfig": { "portMappings": [
            { "HostPort": 12000, "ContainerPort": 80, "Protocol": "tcp", "HostIP": "" },
        ]},
    }));
    let result = cni.ok("ADD", "c1", Some(&ns1), &mapped).await?;
    let ip = address(&result)?;
    let host = host_end(&result)?;
    let map = cni
        .node
        .exec(&["nft", "list", "map", "inet", "peapod", "hostports_any"])
        .await?;
    ensure!(map.contains(&format!("tcp . 12000 : {ip} . 80")), "{map}");
    reached_through_host_port(&cni, 12000).await?;

    // DEL with a runtimeConfig no ADD could use still tears everything down, and says so;
    // so does a DEL of what is gone already.
    let unusable = cni.conf(json!({
        "runtimeConfig": { "portMappings": [{ "HostPort": "banana", "ContainerPort": -1 }] },
    }));
    cni.ok("DEL", "c1", Some(&ns1), &unusable).await?;
    cni.ok("DEL", "c1", Some(&ns1), &unusable).await?;
    let map = cni
        .node
        .exec(&["nft", "list", "map", "inet", "peapod", "hostports_any"])
        .await?;
    ensure!(!map.contains("12000"), "the mapping outlived DEL: {map}");
    ensure!(cni.leases()?.is_empty(), "leases left: {:?}", cni.leases()?);
    ensure!(cni.records()? == 0, "records left: {}", cni.records()?);
    ensure!(!cni.links().await?.contains(&host), "{host} outlived DEL");
    // ADD refuses it, and makes nothing.
    let refused = cni.run("ADD", "c1", Some(&ns1), &unusable).await?;
    expect_error(&refused, DECODE, "an ADD with an unusable runtimeConfig")?;
    ensure!(cni.leases()?.is_empty(), "leases left: {:?}", cni.leases()?);
    Ok(())
}
