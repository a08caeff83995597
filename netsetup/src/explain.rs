//! The path a pod's packet takes, hop by hop, read from the live kernel: the pod's route and
//! neighbour entry, its veth and bridge port, the nftables rule and map element that DNAT a
//! Service address, the backends a Service chain picks from, the node's route (to a pod on
//! the bridge, to a peer node directly or over VXLAN, or out of the node with masquerade),
//! and the conntrack entries that rewrite replies.
//!
//! Nothing here is taken from peapod's records alone: each hop is what the kernel holds now,
//! and a hop whose state is missing says so (the path is then [`Outcome::Broken`]). Rules are
//! named by their chain and their text as `nft list` prints it, which is also how
//! `nft monitor trace` prints the rules a packet passes.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::conntrack::{self, Family, Flow};
use crate::firewall::{FirewallError, Nftables, TABLE};
use crate::netlink::Route;
use crate::netlink::{Link, Netlink, NetlinkError, format_mac};
use crate::peers::{CLUSTER_CIDRS, Peer, VXLAN_DEVICE};
use crate::service::{self, L4, ServicePortRules};

/// Version of the JSON form of [`Path`]; fields are only ever added.
pub const VERSION: u32 = 1;

pub mod topology;

/// A pod of this node, as the caller knows it.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub id: String,
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub host_ifname: String,
    pub pod_ifname: String,
    pub mac: String,
    /// The pod's netns pin.
    pub netns: std::path::PathBuf,
}

impl Pod {
    fn subnet(&self) -> IpNet {
        IpNet::new(self.ip, self.prefix_len)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(self.ip))
    }
}

/// What the node is made of, beyond the kernel: names for what the kernel shows.
pub struct Context<'a> {
    pub bridge: &'a str,
    /// Every pod of the node with an address.
    pub pods: &'a [Pod],
    /// Applied service ports with a name for each (`namespace/name:port`).
    pub services: &'a [(String, ServicePortRules)],
    pub peers: &'a [Peer],
    pub nft: &'a Nftables,
}

/// From a pod to an address and, for Services, a port.
#[derive(Clone, Debug)]
pub struct Query {
    pub from: Pod,
    pub to: IpAddr,
    pub port: Option<u16>,
    pub protocol: L4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A routing table entry.
    Route,
    /// A neighbour (ARP) entry.
    Neighbour,
    /// A veth pair and the bridge port of its host end.
    Veth,
    /// The bridge's forwarding database: which port a MAC is behind.
    Bridge,
    /// A NAT rule and the map element it looked up.
    Dnat,
    /// A Service chain and the backends it picks from.
    Backends,
    /// A filter rule letting the packet through.
    Filter,
    /// A filter rule refusing the connection.
    Reject,
    /// Source NAT on the way out (masquerade), or why there is none.
    Snat,
    /// VXLAN encapsulation: the FDB entry naming the peer node.
    Vxlan,
    /// Delivery to a local address of the node.
    Local,
    /// A conntrack entry of an existing flow.
    Conntrack,
}

/// A rule of peapod's table: its chain and its text as `nft list` (and `nft monitor trace`)
/// prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub chain: String,
    pub rule: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// Where the state is: `pod <name>`, `node`, `bridge <name>`, `peapod.vxlan`.
    pub at: String,
    pub kind: Kind,
    /// What the state says, for a person.
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// To a pod of this node.
    Pod,
    /// To another node, which delivers to its pod.
    Peer,
    /// To an address of this node.
    Local,
    /// Out of the node towards the rest of the network.
    Leaves,
    /// Refused at once (a Service without endpoints).
    Rejected,
    /// No route.
    Unreachable,
    /// Some state the path needs is missing from the kernel.
    Broken,
}

/// The way from a Service to one of its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub backend: String,
    pub hops: Vec<Hop>,
    pub outcome: Outcome,
    pub verdict: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub pod: String,
    pub id: String,
    pub ip: IpAddr,
}

/// An explained path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Path {
    pub version: u32,
    pub from: Endpoint,
    /// `ip` or `ip:port`.
    pub to: String,
    pub protocol: String,
    /// Up to the Service chain, or the whole way when there is no Service.
    pub hops: Vec<Hop>,
    /// For a Service, the way to each backend.
    pub backends: Vec<Branch>,
    /// The outcome of the path (for a Service, of its first backend's branch).
    pub outcome: Outcome,
    pub verdict: String,
    /// Existing flows of this path, whose replies conntrack translates back.
    pub reply: Vec<Hop>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("cannot read the pod's network namespace {}", path.display())]
    PodNetns {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("cannot list conntrack entries")]
    Conntrack(#[from] conntrack::ConntrackError),
    #[error("only IPv4 paths are explained so far ({to} is IPv6)")]
    Ipv6 { to: IpAddr },
}

/// The pod's side: its routes, links and neighbours, read inside its netns.
struct PodSide {
    routes: Vec<Route>,
    links: Vec<Link>,
    /// Neighbour entries of the pod's interface: address, MAC, state.
    neighbours: Vec<(IpAddr, [u8; 6], String)>,
}

/// The node's side, read in the caller's netns.
struct NodeSide {
    routes: Vec<Route>,
    links: Vec<Link>,
    /// Every address of every link, with the link's name.
    addresses: Vec<(IpAddr, String)>,
}

/// Explains the path of `q`.
pub fn explain(ctx: &Context<'_>, q: &Query) -> Result<Path, ExplainError> {
    let (IpAddr::V4(to), IpAddr::V4(_)) = (q.to, q.from.ip) else {
        return Err(ExplainError::Ipv6 { to: q.to });
    };
    let pod_side = read_pod(&q.from)?;
    let mut nl = Netlink::open()?;
    let node = read_node(&mut nl)?;
    let mut x = Explainer {
        ctx,
        q,
        nl,
        node,
        hops: Vec::new(),
    };
    let mut path = Path {
        version: VERSION,
        from: Endpoint {
            pod: q.from.name.clone(),
            id: q.from.id.clone(),
            ip: q.from.ip,
        },
        to: match q.port {
            Some(p) => SocketAddr::new(q.to, p).to_string(),
            None => q.to.to_string(),
        },
        protocol: q.protocol.to_string(),
        hops: Vec::new(),
        backends: Vec::new(),
        outcome: Outcome::Broken,
        verdict: String::new(),
        reply: Vec::new(),
    };
    let (outcome, verdict) = x.walk(&pod_side, to, &mut path.backends)?;
    path.hops = std::mem::take(&mut x.hops);
    path.outcome = outcome;
    path.verdict = verdict;
    if let Some(first) = path.backends.first() {
        path.outcome = first.outcome;
        path.verdict = format!("{}: {}", first.backend, first.verdict);
    }
    path.reply = replies(q)?;
    Ok(path)
}

fn read_pod(pod: &Pod) -> Result<PodSide, ExplainError> {
    let ifname = pod.pod_ifname.clone();
    let inside = move || -> Result<PodSide, NetlinkError> {
        let mut nl = Netlink::open()?;
        let links = nl.links()?;
        let neighbours = match links.iter().find(|l| l.name == ifname) {
            Some(l) => nl.arp_entries(l.index)?,
            None => Vec::new(),
        };
        Ok(PodSide {
            routes: nl.routes()?,
            links,
            neighbours,
        })
    };
    let side =
        crate::netns::run_in(&pod.netns, inside).map_err(|source| ExplainError::PodNetns {
            path: pod.netns.clone(),
            source,
        })?;
    Ok(side?)
}

fn read_node(nl: &mut Netlink) -> Result<NodeSide, ExplainError> {
    let links = nl.links()?;
    let mut addresses = Vec::new();
    for l in &links {
        for a in nl.addresses(l.index)? {
            addresses.push((a.addr(), l.name.clone()));
        }
    }
    Ok(NodeSide {
        routes: nl.routes()?,
        links,
        addresses,
    })
}

/// The most specific route to `ip`, the kernel's choice in the main table (metrics and
/// policy rules aside).
pub fn longest_match(routes: &[Route], ip: Ipv4Addr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| match r.dst {
            IpNet::V4(net) => net.contains(&ip),
            IpNet::V6(_) => false,
        })
        .max_by_key(|r| r.dst.prefix_len())
}

/// The rules of a chain in `nft list chain` output, without the hook line and handles.
pub fn chain_rules(listing: &str) -> Vec<String> {
    let mut rules = Vec::new();
    let mut depth = 0;
    for line in listing.lines() {
        let line = match line.rfind(" # handle ") {
            Some(i) => &line[..i],
            None => line,
        }
        .trim();
        if line.ends_with('{') {
            depth += 1;
            continue;
        }
        if line == "}" {
            depth -= 1;
            continue;
        }
        if depth < 2 || line.is_empty() || line.starts_with("type ") {
            continue;
        }
        rules.push(line.to_owned());
    }
    rules
}

/// The address a rule DNATs to (`… dnat ip to 10.88.0.5:8080`).
pub fn dnat_target(rule: &str) -> Option<SocketAddr> {
    let rest = rule.split(" dnat ip to ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The chain a rule jumps or goes to.
pub fn goto_target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "goto" || w == "jump" {
            return words.next();
        }
    }
    None
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn describe_route(r: &Route, links: &[Link]) -> String {
    let mut s = r.dst.to_string();
    if r.dst.prefix_len() == 0 {
        s = "default".into();
    }
    if let Some(gw) = r.gateway {
        let _ = write!(s, " via {gw}");
    }
    if let Some(oif) = r.oif {
        let name = links
            .iter()
            .find(|l| l.index == oif)
            .map_or_else(|| format!("#{oif}"), |l| l.name.clone());
        let _ = write!(s, " dev {name}");
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    s
}

struct Explainer<'a> {
    ctx: &'a Context<'a>,
    q: &'a Query,
    nl: Netlink,
    node: NodeSide,
    hops: Vec<Hop>,
}

impl Explainer<'_> {
    fn hop(&mut self, at: &str, kind: Kind, detail: String, rule: Option<RuleRef>) {
        self.hops.push(Hop {
            at: at.to_owned(),
            kind,
            detail,
            rule,
        });
    }

    fn link_name(&self, index: u32) -> String {
        self.node
            .links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("#{index}"), |l| l.name.clone())
    }

    /// The pod whose host link is the bridge port `name`.
    fn port_owner(&self, name: &str) -> Option<&Pod> {
        self.ctx.pods.iter().find(|p| p.host_ifname == name)
    }

    fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.ctx.pods.iter().find(|p| p.ip == ip)
    }

    fn rules_of(&self, chain: &str) -> Result<Vec<String>, ExplainError> {
        match self.ctx.nft.list(&["chain", "inet", TABLE, chain]) {
            Ok(text) => Ok(chain_rules(&text)),
            Err(FirewallError::Nft { stderr, .. }) if stderr.contains("No such file") => {
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The first rule of `chain` that `pick` accepts.
    fn find_rule(
        &self,
        chain: &str,
        pick: impl Fn(&str) -> bool,
    ) -> Result<Option<RuleRef>, ExplainError> {
        Ok(self
            .rules_of(chain)?
            .into_iter()
            .find(|r| pick(r))
            .map(|rule| RuleRef {
                chain: chain.to_owned(),
                rule,
            }))
    }

    /// From the pod to wherever the packet goes.
    fn walk(
        &mut self,
        pod: &PodSide,
        to: Ipv4Addr,
        branches: &mut Vec<Branch>,
    ) -> Result<(Outcome, String), ExplainError> {
        let from = self.q.from.clone();
        let at = format!("pod {}", from.name);
        let Some(route) = longest_match(&pod.routes, to) else {
            self.hop(
                &at,
                Kind::Route,
                format!("no route to {to} in the pod"),
                None,
            );
            return Ok((
                Outcome::Unreachable,
                format!("the pod has no route to {to}"),
            ));
        };
        self.hop(
            &at,
            Kind::Route,
            format!("{to} matches {}", describe_route(route, &pod.links)),
            None,
        );
        let next = route.gateway.unwrap_or(IpAddr::V4(to));
        match pod.neighbours.iter().find(|n| n.0 == next) {
            Some((_, mac, state)) => self.hop(
                &at,
                Kind::Neighbour,
                format!(
                    "{next} is {} on {} ({state})",
                    format_mac(mac),
                    from.pod_ifname
                ),
                None,
            ),
            None => self.hop(
                &at,
                Kind::Neighbour,
                format!(
                    "no neighbour entry for {next} on {} yet: the pod asks with ARP first",
                    from.pod_ifname
                ),
                None,
            ),
        }
        // The host end of the pod's veth, a port of the bridge.
        let bridge = self.ctx.bridge.to_owned();
        let bridge_link = self.node.links.iter().find(|l| l.name == bridge).cloned();
        let host = self
            .node
            .links
            .iter()
            .find(|l| l.name == from.host_ifname)
            .cloned();
        match (&host, &bridge_link) {
            (Some(h), Some(b)) if h.master == Some(b.index) => self.hop(
                "node",
                Kind::Veth,
                format!(
                    "{} of the pod is the peer of {} ({}), a port of bridge {bridge}",
                    from.pod_ifname,
                    h.name,
                    if h.up { "up" } else { "DOWN" }
                ),
                None,
            ),
            (Some(h), _) => {
                self.hop(
                    "node",
                    Kind::Veth,
                    format!("{} is not a port of bridge {bridge}", h.name),
                    None,
                );
                return Ok((Outcome::Broken, format!("{} is off the bridge", h.name)));
            }
            (None, _) => {
                self.hop(
                    "node",
                    Kind::Veth,
                    format!("the pod's host link {} is missing", from.host_ifname),
                    None,
                );
                return Ok((Outcome::Broken, format!("{} is missing", from.host_ifname)));
            }
        }
        let Some(bridge_link) = bridge_link else {
            unreachable!("matched above")
        };
        if route.gateway.is_none() {
            // On the pod's own subnet: switched by the bridge, not routed by the node.
            return self.bridged(&bridge_link, to, pod);
        }
        if let Some(result) = self.service(to, branches)? {
            return Ok(result);
        }
        self.routed(IpAddr::V4(to), false)
    }

    /// A frame from the pod to another pod of its subnet, switched by the bridge.
    fn bridged(
        &mut self,
        bridge: &Link,
        to: Ipv4Addr,
        pod: &PodSide,
    ) -> Result<(Outcome, String), ExplainError> {
        let at = format!("bridge {}", bridge.name);
        let mac = pod
            .neighbours
            .iter()
            .find(|n| n.0 == IpAddr::V4(to))
            .map(|n| n.1)
            .or_else(|| {
                self.pod_by_ip(IpAddr::V4(to))
                    .and_then(|p| parse_mac(&p.mac))
            });
        let Some(mac) = mac else {
            self.hop(
                &at,
                Kind::Bridge,
                format!("no pod of this node has {to} and the pod has no neighbour entry for it"),
                None,
            );
            return Ok((
                Outcome::Unreachable,
                format!("{to} answers no ARP on the bridge"),
            ));
        };
        let port = self.nl.bridge_port_of(bridge.index, mac)?;
        let netfilter = bridge_netfilter();
        if netfilter {
            self.forward_hop()?;
        }
        let note = if netfilter {
            "; br_netfilter is on, so the node's nftables hooks see the frame too"
        } else {
            "; the node's nftables do not see it (no br_netfilter)"
        };
        match port {
            Some(index) => {
                let name = self.link_name(index);
                let owner = self
                    .port_owner(&name)
                    .map(|p| format!(" (pod {})", p.name))
                    .unwrap_or_default();
                self.hop(
                    &at,
                    Kind::Bridge,
                    format!(
                        "switched at layer 2: the forwarding database has {} on port {name}{owner}{note}",
                        format_mac(&mac)
                    ),
                    None,
                );
                match self.port_owner(&name) {
                    Some(p) => Ok((Outcome::Pod, format!("delivered to pod {} ({to})", p.name))),
                    None => Ok((Outcome::Local, format!("delivered out of port {name}"))),
                }
            }
            None => {
                self.hop(
                    &at,
                    Kind::Bridge,
                    format!(
                        "no forwarding entry for {} yet: the bridge floods the first frame to every port{note}",
                        format_mac(&mac)
                    ),
                    None,
                );
                match self.pod_by_ip(IpAddr::V4(to)) {
                    Some(p) => Ok((Outcome::Pod, format!("delivered to pod {} ({to})", p.name))),
                    None => Ok((
                        Outcome::Unreachable,
                        format!("no port of the bridge has {to}"),
                    )),
                }
            }
        }
    }

    fn is_local(&self, ip: IpAddr) -> Option<String> {
        self.node
            .addresses
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, l)| l.clone())
    }

    /// A Service address (cluster or external IP, or a node port on a local address): the
    /// DNAT of the node's prerouting chain, then a branch per backend.
    fn service(
        &mut self,
        to: Ipv4Addr,
        branches: &mut Vec<Branch>,
    ) -> Result<Option<(Outcome, String)>, ExplainError> {
        let Some(port) = self.q.port else {
            return Ok(None);
        };
        let proto = self.q.protocol;
        let to_ip = IpAddr::V4(to);
        let by_address =
            self.ctx.services.iter().find(|(_, s)| {
                s.protocol == proto && s.port == port && s.addresses.contains(&to_ip)
            });
        let local = self.is_local(to_ip).is_some();
        let by_node_port = || {
            self.ctx
                .services
                .iter()
                .find(|(_, s)| local && s.protocol == proto && s.node_port == Some(port))
        };
        let Some((name, rules)) = by_address.or_else(by_node_port).cloned() else {
            return Ok(None);
        };
        let node_port = !rules.addresses.contains(&to_ip);
        let (map, noep, key) = if node_port {
            (
                service::MAP_NODEPORTS,
                service::NOEP_NODEPORTS,
                format!("{proto} . {port}"),
            )
        } else {
            (
                service::MAP_IP4,
                service::NOEP_IP4,
                format!("{to} . {proto} . {port}"),
            )
        };
        if rules.backends.is_empty() {
            return self.rejected(&name, noep, &key).map(Some);
        }
        let lookup = self.find_rule("prerouting", |r| r.contains(&format!("vmap @{map}")))?;
        let Some(lookup) = lookup else {
            self.hop(
                "node",
                Kind::Dnat,
                format!("the prerouting chain has no lookup of @{map}"),
                None,
            );
            return Ok(Some((Outcome::Broken, "Service lookup missing".into())));
        };
        let chain = rules.chain();
        if !self.ctx.nft.has_element(map, &key)? {
            self.hop(
                "node",
                Kind::Dnat,
                format!("@{map} has no element {key} for Service {name}"),
                Some(lookup),
            );
            return Ok(Some((
                Outcome::Broken,
                format!("Service {name} is missing from @{map}"),
            )));
        }
        self.hop(
            "node",
            Kind::Dnat,
            format!("@{map} has {key} : goto {chain} (Service {name})"),
            Some(lookup),
        );
        // The backends the chain picks from, as the kernel has them.
        let mut picks = Vec::new();
        let service_rules = self.rules_of(&chain)?;
        for r in &service_rules {
            if let Some(b) = dnat_target(r) {
                picks.push((
                    b,
                    RuleRef {
                        chain: chain.clone(),
                        rule: r.clone(),
                    },
                ));
            } else if let Some(sub) = goto_target(r)
                && !r.contains(" saddr @aff_")
            {
                for sr in self.rules_of(sub)? {
                    if let Some(b) = dnat_target(&sr) {
                        picks.push((
                            b,
                            RuleRef {
                                chain: sub.to_owned(),
                                rule: sr,
                            },
                        ));
                    }
                }
            }
        }
        let listed: Vec<String> = picks.iter().map(|(b, _)| b.to_string()).collect();
        let affinity = rules
            .affinity
            .map(|t| format!("; ClientIP affinity: a client in a backend's @aff_ set (for {t} s) goes back to it"))
            .unwrap_or_default();
        self.hop(
            "node",
            Kind::Backends,
            format!(
                "chain {chain} picks one of {} backends at random (numgen): {}{affinity}",
                picks.len(),
                listed.join(", ")
            ),
            None,
        );
        if picks.is_empty() {
            return Ok(Some((
                Outcome::Broken,
                format!("chain {chain} has no backend"),
            )));
        }
        let trunk = std::mem::take(&mut self.hops);
        for (backend, rule) in picks {
            self.hop(
                "node",
                Kind::Dnat,
                format!("destination rewritten to {backend}"),
                Some(rule),
            );
            let (outcome, verdict) = self.routed(backend.ip(), true)?;
            branches.push(Branch {
                backend: backend.to_string(),
                hops: std::mem::take(&mut self.hops),
                outcome,
                verdict,
            });
        }
        self.hops = trunk;
        Ok(Some((Outcome::Pod, String::new())))
    }

    fn rejected(
        &mut self,
        name: &str,
        set: &str,
        key: &str,
    ) -> Result<(Outcome, String), ExplainError> {
        let lookup = self.find_rule("prerouting_filter", |r| r.contains(&format!("@{set}")))?;
        let present = self.ctx.nft.has_element(set, key)?;
        if lookup.is_none() || !present {
            self.hop(
                "node",
                Kind::Reject,
                format!("Service {name} has no endpoint, but @{set} has no element {key} (or no rule looks it up)"),
                lookup,
            );
            return Ok((
                Outcome::Broken,
                format!("Service {name} without endpoints is not refused"),
            ));
        }
        self.hop(
            "node",
            Kind::Reject,
            format!("Service {name} has no ready endpoint: {key} is in @{set}"),
            lookup,
        );
        let answer = if self.q.protocol == L4::Tcp {
            "tcp reset"
        } else {
            "icmpx port-unreachable"
        };
        let reject = self.find_rule(service::REJECT_CHAIN, |r| r.contains(answer))?;
        self.hop(
            "node",
            Kind::Reject,
            format!("answered with {answer}"),
            reject,
        );
        Ok((
            Outcome::Rejected,
            format!("refused at once ({answer}): Service {name} has no endpoints"),
        ))
    }

    /// The node routes `to` (after any DNAT): to the bridge, a peer, itself or out.
    fn routed(&mut self, to: IpAddr, dnat: bool) -> Result<(Outcome, String), ExplainError> {
        let IpAddr::V4(v4) = to else {
            return Err(ExplainError::Ipv6 { to });
        };
        if let Some(link) = self.is_local(to) {
            self.hop(
                "node",
                Kind::Local,
                format!("{to} is an address of the node ({link}): delivered locally"),
                None,
            );
            return Ok((Outcome::Local, format!("delivered to the node ({link})")));
        }
        let Some(route) = longest_match(&self.node.routes, v4).copied() else {
            self.hop("node", Kind::Route, format!("no route to {to}"), None);
            return Ok((
                Outcome::Unreachable,
                format!("the node has no route to {to}"),
            ));
        };
        self.hop(
            "node",
            Kind::Route,
            format!("{to} matches {}", describe_route(&route, &self.node.links)),
            None,
        );
        self.forward_hop()?;
        let oif = route.oif.map(|i| self.link_name(i)).unwrap_or_default();
        if oif == self.ctx.bridge {
            return self.deliver_on_bridge(to, dnat);
        }
        let peer = self
            .ctx
            .peers
            .iter()
            .find(|p| p.pod_cidr.contains(&v4))
            .cloned();
        self.snat(to, peer.is_some())?;
        if oif == VXLAN_DEVICE {
            return self.vxlan(route, peer.as_ref());
        }
        let next = route.gateway.unwrap_or(to);
        if let Some(index) = route.oif {
            let entry = self
                .nl
                .arp_entries(index)?
                .into_iter()
                .find(|n| n.0 == next);
            self.hop(
                "node",
                Kind::Neighbour,
                match entry {
                    Some((_, mac, state)) => {
                        format!("{next} is {} on {oif} ({state})", format_mac(&mac))
                    }
                    None => format!("no neighbour entry for {next} on {oif} yet: ARP first"),
                },
                None,
            );
        }
        match peer {
            Some(p) if route.gateway == Some(IpAddr::V4(p.node_ip)) => Ok((
                Outcome::Peer,
                format!(
                    "routed to node {} ({}), which delivers to its pod",
                    p.name, p.node_ip
                ),
            )),
            Some(p) => {
                self.hop(
                    "node",
                    Kind::Route,
                    format!(
                        "{to} is in node {}'s pod CIDR {}, but the route does not go via {}",
                        p.name, p.pod_cidr, p.node_ip
                    ),
                    None,
                );
                Ok((Outcome::Broken, format!("no route to node {}", p.name)))
            }
            None => Ok((Outcome::Leaves, format!("leaves the node on {oif}"))),
        }
    }

    /// The forward chain's accept of what comes from the bridge (the pods).
    fn forward_hop(&mut self) -> Result<(), ExplainError> {
        let from_bridge = format!("iifname \"{}\" accept", self.ctx.bridge);
        match self.find_rule("forward", |r| r == from_bridge)? {
            Some(rule) => self.hop(
                "node",
                Kind::Filter,
                format!(
                    "forwarded: the forward chain accepts what comes from {}",
                    self.ctx.bridge
                ),
                Some(rule),
            ),
            None => self.hop(
                "node",
                Kind::Filter,
                format!(
                    "the forward chain has no accept for {}: the policy decides",
                    self.ctx.bridge
                ),
                None,
            ),
        }
        Ok(())
    }

    /// To a pod of this node's bridge: the node's ARP entry and the bridge port.
    fn deliver_on_bridge(
        &mut self,
        to: IpAddr,
        dnat: bool,
    ) -> Result<(Outcome, String), ExplainError> {
        let bridge = self.ctx.bridge.to_owned();
        let Some(b) = self.node.links.iter().find(|l| l.name == bridge).cloned() else {
            return Ok((Outcome::Broken, format!("bridge {bridge} is missing")));
        };
        let from = self.q.from.clone();
        let subnet = from.subnet();
        if dnat && subnet.contains(&to) {
            // DNATed to a pod of the client's own subnet: the reply would be switched by the
            // bridge straight to the client, past the node's conntrack, and arrive from the
            // pod's address instead of the Service's. So the node becomes the source.
            let rule = self.find_rule("postrouting", |r| {
                r.contains(&format!("saddr {subnet}"))
                    && r.contains(&format!("daddr {subnet} ct status dnat"))
                    && r.ends_with("masquerade")
            })?;
            let why = if to == from.ip {
                "hairpin: the pod reached itself"
            } else {
                "the backend is on the client's own subnet"
            };
            self.hop(
                "node",
                Kind::Snat,
                format!(
                    "{why}, so the source becomes the bridge's address and the reply comes back through the node's conntrack"
                ),
                rule,
            );
        }
        let entry = self
            .nl
            .arp_entries(b.index)?
            .into_iter()
            .find(|n| n.0 == to);
        let mac = match entry {
            Some((_, mac, state)) => {
                self.hop(
                    "node",
                    Kind::Neighbour,
                    format!("{to} is {} on {bridge} ({state})", format_mac(&mac)),
                    None,
                );
                Some(mac)
            }
            None => {
                self.hop(
                    "node",
                    Kind::Neighbour,
                    format!("no neighbour entry for {to} on {bridge} yet: ARP first"),
                    None,
                );
                self.pod_by_ip(to).and_then(|p| parse_mac(&p.mac))
            }
        };
        let port = match mac {
            Some(mac) => self.nl.bridge_port_of(b.index, mac)?,
            None => None,
        };
        let target = self.pod_by_ip(to).cloned();
        let detail = match (port, &target) {
            (Some(i), _) => {
                let name = self.link_name(i);
                let owner = self
                    .port_owner(&name)
                    .map(|p| format!(" (pod {})", p.name))
                    .unwrap_or_default();
                format!("the forwarding database has it on port {name}{owner}")
            }
            (None, Some(p)) => format!(
                "no forwarding entry yet; pod {}'s port is {}",
                p.name, p.host_ifname
            ),
            (None, None) => "no port of the bridge is known for it".into(),
        };
        self.hop(&format!("bridge {bridge}"), Kind::Bridge, detail, None);
        match target {
            Some(p) => Ok((Outcome::Pod, format!("delivered to pod {} ({to})", p.name))),
            None => Ok((
                Outcome::Unreachable,
                format!("no pod of this node has {to}"),
            )),
        }
    }

    /// Whether the pod's source address is masqueraded on the way out.
    fn snat(&mut self, to: IpAddr, to_peer: bool) -> Result<(), ExplainError> {
        let from = self.q.from.clone();
        let subnet = from.subnet();
        let IpNet::V4(_) = subnet else { return Ok(()) };
        let in_cluster = self.ctx.nft.has_element(CLUSTER_CIDRS, &to.to_string())?;
        if in_cluster {
            self.hop(
                "node",
                Kind::Snat,
                format!(
                    "not masqueraded: {to} is in @{CLUSTER_CIDRS}, so the other side sees {}",
                    from.ip
                ),
                None,
            );
            return Ok(());
        }
        let rule = self.find_rule("postrouting", |r| {
            r.contains(&format!("saddr {subnet}"))
                && r.contains(&format!("daddr != {subnet}"))
                && r.ends_with("masquerade")
        })?;
        let detail = if to_peer {
            format!("masqueraded although {to} is a peer's pod address: @{CLUSTER_CIDRS} lacks it")
        } else {
            format!(
                "masqueraded: the source {} becomes the address of the outgoing link",
                from.ip
            )
        };
        match rule {
            Some(rule) => self.hop("node", Kind::Snat, detail, Some(rule)),
            None => self.hop(
                "node",
                Kind::Snat,
                format!(
                    "no masquerade rule for {subnet}: the source stays {}",
                    from.ip
                ),
                None,
            ),
        }
        Ok(())
    }

    /// Over VXLAN: the peer's VTEP neighbour entry and the FDB entry naming its node.
    fn vxlan(
        &mut self,
        route: Route,
        peer: Option<&Peer>,
    ) -> Result<(Outcome, String), ExplainError> {
        let Some(vx) = self
            .node
            .links
            .iter()
            .find(|l| l.name == VXLAN_DEVICE)
            .cloned()
        else {
            return Ok((Outcome::Broken, format!("{VXLAN_DEVICE} is missing")));
        };
        let Some(gw) = route.gateway else {
            return Ok((
                Outcome::Broken,
                format!("the route over {VXLAN_DEVICE} has no gateway"),
            ));
        };
        let neighbours = self.nl.neighbours(vx.index)?;
        let Some((_, mac)) = neighbours.iter().find(|n| n.0 == gw).copied() else {
            self.hop(
                VXLAN_DEVICE,
                Kind::Neighbour,
                format!("no permanent neighbour entry for the VTEP {gw}"),
                None,
            );
            return Ok((Outcome::Broken, format!("VTEP {gw} has no neighbour entry")));
        };
        self.hop(
            VXLAN_DEVICE,
            Kind::Neighbour,
            format!("VTEP {gw} is {} (permanent)", format_mac(&mac)),
            None,
        );
        let fdb = self.nl.fdb(vx.index)?;
        let Some((_, dst)) = fdb.iter().find(|f| f.0 == mac).copied() else {
            self.hop(
                VXLAN_DEVICE,
                Kind::Vxlan,
                format!("no FDB entry for {}", format_mac(&mac)),
                None,
            );
            return Ok((Outcome::Broken, format!("no FDB entry for VTEP {gw}")));
        };
        let node = peer
            .filter(|p| IpAddr::V4(p.node_ip) == dst)
            .map(|p| format!("node {}", p.name))
            .unwrap_or_else(|| format!("{dst} (no peer of that address)"));
        let info = self.nl.vxlan_info(VXLAN_DEVICE)?;
        let (vni, port) = info.map_or((0, 0), |i| (i.vni, i.port));
        self.hop(
            VXLAN_DEVICE,
            Kind::Vxlan,
            format!(
                "FDB: {} is behind {dst}: encapsulated in UDP to {dst}:{port}, VNI {vni}, for {node}",
                format_mac(&mac)
            ),
            None,
        );
        match peer {
            Some(p) if IpAddr::V4(p.node_ip) == dst => Ok((
                Outcome::Peer,
                format!(
                    "over VXLAN to node {} ({dst}), which delivers to its pod",
                    p.name
                ),
            )),
            _ => Ok((Outcome::Broken, format!("the FDB sends {gw} to {node}"))),
        }
    }
}

/// `/proc/sys/net/bridge/bridge-nf-call-iptables` is 1: bridged IPv4 passes the IP hooks.
fn bridge_netfilter() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1")
}

/// The conntrack entries of flows from the pod to the query's address (and port).
fn replies(q: &Query) -> Result<Vec<Hop>, ExplainError> {
    let flows = conntrack::list(Family::of(q.to))?;
    let proto = match q.protocol {
        L4::Tcp => conntrack::Protocol::TCP,
        L4::Udp => conntrack::Protocol::UDP,
        L4::Sctp => conntrack::Protocol::SCTP,
    };
    let mut hops: Vec<Hop> = flows
        .iter()
        .filter(|f| {
            f.original.src == q.from.ip
                && f.original.dst == q.to
                && f.original.protocol == proto
                && q.port.is_none_or(|p| f.original.dst_port == p)
        })
        .take(8)
        .map(reply_hop)
        .collect();
    hops.sort_by(|a, b| a.detail.cmp(&b.detail));
    Ok(hops)
}

/// One flow, as a person reads its translation.
pub fn reply_hop(f: &Flow) -> Hop {
    let o = &f.original;
    let r = &f.reply;
    let client = SocketAddr::new(o.src, o.src_port);
    let asked = SocketAddr::new(o.dst, o.dst_port);
    let answered = SocketAddr::new(r.src, r.src_port);
    let seen = SocketAddr::new(r.dst, r.dst_port);
    let mut detail = format!("{client} -> {asked}: replies come from {answered} to {seen}");
    if answered != asked {
        let _ = write!(detail, ", rewritten back to come from {asked}");
    }
    if seen != client {
        let _ = write!(detail, " and to go to {client}");
    }
    Hop {
        at: "node".into(),
        kind: Kind::Conntrack,
        detail,
        rule: None,
    }
}

#[cfg(test)]
mod tests;
