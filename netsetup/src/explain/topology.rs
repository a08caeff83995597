//! The node's network as a graph: pods and their veths on the bridge, the VXLAN device and
//! the peers it (or the underlay) reaches, Services and their backends. Read from the live
//! kernel like [`super::explain`], and drawn as Graphviz `dot` text by [`to_dot`].

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{Context, ExplainError, VERSION, describe_route, longest_match};
use crate::netlink::Netlink;
use crate::peers::VXLAN_DEVICE;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub version: u32,
    pub bridge: Bridge,
    pub vxlan: Option<Vxlan>,
    pub pods: Vec<PodNode>,
    pub peers: Vec<PeerNode>,
    pub services: Vec<ServiceNode>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    pub name: String,
    /// False when the bridge is missing or down.
    pub up: bool,
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vxlan {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNode {
    pub name: String,
    pub id: String,
    pub ip: IpAddr,
    pub host_ifname: String,
    /// The host link is there, up, and a port of the bridge.
    pub attached: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub name: String,
    pub node_ip: IpAddr,
    pub pod_cidr: String,
    /// The node's route to the peer's pod CIDR, as `ip route` prints it; none: missing.
    pub route: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNode {
    /// `namespace/name`.
    pub name: String,
    /// `address:port/protocol` of each virtual address, and `*:nodeport/protocol`.
    pub frontends: Vec<String>,
    pub backends: Vec<SocketAddr>,
}

/// Reads the node's topology.
pub fn topology(ctx: &Context<'_>) -> Result<Topology, ExplainError> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let routes = nl.routes()?;
    let bridge_link = links.iter().find(|l| l.name == ctx.bridge);
    let bridge = Bridge {
        name: ctx.bridge.to_owned(),
        up: bridge_link.is_some_and(|l| l.up),
        addresses: match bridge_link {
            Some(l) => nl
                .addresses(l.index)?
                .iter()
                .map(ToString::to_string)
                .collect(),
            None => Vec::new(),
        },
    };
    let vxlan = nl.vxlan_info(VXLAN_DEVICE)?.map(|i| Vxlan {
        name: VXLAN_DEVICE.to_owned(),
        vni: i.vni,
        port: i.port,
        mtu: i.mtu,
    });
    let pods = ctx
        .pods
        .iter()
        .map(|p| {
            let host = links.iter().find(|l| l.name == p.host_ifname);
            PodNode {
                name: p.name.clone(),
                id: p.id.clone(),
                ip: p.ip,
                host_ifname: p.host_ifname.clone(),
                attached: host.is_some_and(|h| {
                    h.up && bridge_link.is_some_and(|b| h.master == Some(b.index))
                }),
            }
        })
        .collect();
    let peers = ctx
        .peers
        .iter()
        .map(|p| PeerNode {
            name: p.name.clone(),
            node_ip: IpAddr::V4(p.node_ip),
            pod_cidr: p.pod_cidr.to_string(),
            route: longest_match(&routes, p.pod_cidr.network())
                .filter(|r| r.dst == ipnet::IpNet::V4(p.pod_cidr))
                .map(|r| describe_route(r, &links)),
        })
        .collect();
    let mut services: Vec<ServiceNode> = Vec::new();
    for (name, s) in ctx.services {
        let service = match services.iter_mut().find(|n| &n.name == name) {
            Some(n) => n,
            None => {
                services.push(ServiceNode {
                    name: name.clone(),
                    frontends: Vec::new(),
                    backends: Vec::new(),
                });
                services.last_mut().expect("just pushed")
            }
        };
        for a in &s.addresses {
            let f = format!("{}/{}", SocketAddr::new(*a, s.port), s.protocol);
            service.frontends.push(f);
        }
        if let Some(np) = s.node_port {
            service.frontends.push(format!("*:{np}/{}", s.protocol));
        }
        for b in &s.backends {
            if !service.backends.contains(b) {
                service.backends.push(*b);
            }
        }
    }
    Ok(Topology {
        version: VERSION,
        bridge,
        vxlan,
        pods,
        peers,
        services,
    })
}

/// A double-quoted `dot` string.
fn quoted(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The topology as a Graphviz digraph: Services point at their backends' pods, pods at the
/// bridge through their veths, the bridge at the VXLAN device or the node, and that at peers.
pub fn to_dot(t: &Topology) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "digraph peapod {{\n  rankdir=LR;\n  node [fontname=\"sans-serif\" fontsize=10];\n  edge [fontname=\"sans-serif\" fontsize=9];"
    );
    let bridge_label = format!(
        "bridge {}\n{}{}",
        t.bridge.name,
        t.bridge.addresses.join("\n"),
        if t.bridge.up { "" } else { "\n(DOWN)" }
    );
    let _ = writeln!(
        s,
        "  bridge [shape=box style=filled fillcolor={} label={}];",
        if t.bridge.up { "lightgrey" } else { "salmon" },
        quoted(&bridge_label)
    );
    let _ = writeln!(s, "  node_self [shape=box3d label=\"this node\"];");
    let _ = writeln!(s, "  bridge -> node_self [label=\"routed\"];");
    let mut pod_ips = BTreeSet::new();
    for (i, p) in t.pods.iter().enumerate() {
        pod_ips.insert(p.ip);
        let label = format!("pod {}\n{}\n{}", p.name, p.ip, &p.id[..p.id.len().min(12)]);
        let _ = writeln!(
            s,
            "  pod{i} [shape=ellipse style=filled fillcolor={} label={}];",
            if p.attached { "palegreen" } else { "salmon" },
            quoted(&label)
        );
        let _ = writeln!(
            s,
            "  pod{i} -> bridge [label={} dir=both];",
            quoted(&format!("eth0 = {}", p.host_ifname))
        );
    }
    if let Some(v) = &t.vxlan {
        let label = format!("{}\nVNI {} UDP {}\nMTU {}", v.name, v.vni, v.port, v.mtu);
        let _ = writeln!(s, "  vxlan [shape=box label={}];", quoted(&label));
        let _ = writeln!(s, "  node_self -> vxlan;");
    }
    for (i, p) in t.peers.iter().enumerate() {
        let label = format!("node {}\n{}\npods {}", p.name, p.node_ip, p.pod_cidr);
        let _ = writeln!(s, "  peer{i} [shape=box3d label={}];", quoted(&label));
        let from = if t.vxlan.is_some() {
            "vxlan"
        } else {
            "node_self"
        };
        let (edge, style) = match &p.route {
            Some(r) => (r.as_str(), "solid"),
            None => ("NO ROUTE", "dashed"),
        };
        let _ = writeln!(
            s,
            "  {from} -> peer{i} [label={} style={style}];",
            quoted(edge)
        );
    }
    for (i, svc) in t.services.iter().enumerate() {
        let label = format!("Service {}\n{}", svc.name, svc.frontends.join("\n"));
        let _ = writeln!(
            s,
            "  svc{i} [shape=hexagon style=filled fillcolor={} label={}];",
            if svc.backends.is_empty() {
                "salmon"
            } else {
                "lightblue"
            },
            quoted(&label)
        );
        for b in &svc.backends {
            let target = match t.pods.iter().position(|p| p.ip == b.ip()) {
                Some(j) => format!("pod{j}"),
                None => {
                    // A backend elsewhere: a pod of a peer, or an address off the cluster.
                    let id = format!("ep_{}", b.to_string().replace(['.', ':', '[', ']'], "_"));
                    let _ = writeln!(
                        s,
                        "  {id} [shape=ellipse style=dashed label={}];",
                        quoted(&b.ip().to_string())
                    );
                    let owner = t.peers.iter().position(|p| {
                        p.pod_cidr
                            .parse::<ipnet::IpNet>()
                            .is_ok_and(|c| c.contains(&b.ip()))
                    });
                    if let Some(k) = owner {
                        let _ = writeln!(s, "  peer{k} -> {id} [style=dotted];");
                    }
                    id
                }
            };
            let _ = writeln!(
                s,
                "  svc{i} -> {target} [label={} style=bold color=blue];",
                quoted(&format!("DNAT :{}", b.port()))
            );
        }
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Topology {
        Topology {
            version: VERSION,
            bridge: Bridge {
                name: "peapod0".into(),
                up: true,
                addresses: vec!["10.88.0.1/16".into()],
            },
            vxlan: Some(Vxlan {
                name: VXLAN_DEVICE.into(),
                vni: 1,
                port: 4789,
                mtu: 1450,
            }),
            pods: vec![PodNode {
                name: "web \"one\"".into(),
                id: "0123456789abcdef".into(),
                ip: "10.88.0.5".parse().unwrap(),
                host_ifname: "pp01234567".into(),
                attached: true,
            }],
            peers: vec![PeerNode {
                name: "b".into(),
                node_ip: "192.168.50.2".parse().unwrap(),
                pod_cidr: "10.89.0.0/24".into(),
                route: None,
            }],
            services: vec![ServiceNode {
                name: "default/web".into(),
                frontends: vec!["10.96.0.10:80/tcp".into()],
                backends: vec![
                    "10.88.0.5:8080".parse().unwrap(),
                    "10.89.0.7:8080".parse().unwrap(),
                ],
            }],
        }
    }

    #[test]
    fn dot_has_every_part_and_quotes_names() {
        let dot = to_dot(&sample());
        assert!(dot.starts_with("digraph peapod {"), "{dot}");
        assert!(dot.trim_end().ends_with('}'));
        assert!(
            dot.contains(r#"label="pod web \"one\"\n10.88.0.5\n0123456789ab""#),
            "{dot}"
        );
        assert!(dot.contains(r#"pod0 -> bridge [label="eth0 = pp01234567" dir=both];"#));
        assert!(dot.contains("node_self -> vxlan;"));
        assert!(dot.contains(r#"vxlan -> peer0 [label="NO ROUTE" style=dashed];"#));
        // A local backend points at its pod, a remote one at a node hanging off its peer.
        assert!(dot.contains(r#"svc0 -> pod0 [label="DNAT :8080""#));
        assert!(dot.contains("peer0 -> ep_10_89_0_7_8080 [style=dotted];"));
        assert!(dot.contains(r#"svc0 -> ep_10_89_0_7_8080 [label="DNAT :8080""#));
    }

    #[test]
    fn topology_json_round_trips() {
        let t = sample();
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), t);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["bridge", "peers", "pods", "services", "version", "vxlan"]
        );
    }
}
