//! Kubernetes objects to peapod's: a Service with its EndpointSlices becomes a
//! [`Service`] with endpoints, a Node other than this one a [`Peer`]. Pure:
//! the watch (`super`) feeds it what its reflectors hold and applies what comes out.
//!
//! What is left out on purpose comes back without a word: ExternalName and headless Services
//! (no virtual IP to program), Services of another proxy, IPv6 and FQDN EndpointSlices. What
//! is left out because it cannot be taken comes back as a [`Skipped`] with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Node, Service as KService, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netsetup::peers::Peer;

use crate::services::model::{
    Claim, DEFAULT_AFFINITY_TIMEOUT, Endpoint, Key, MAX_AFFINITY_TIMEOUT, Port, Protocol, Service,
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An object, or part of one, left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// `service ns/name`, `endpointslice ns/name` or `node name`.
    pub object: String,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

/// The cluster's Services as peapod's, by namespace and name.
#[derive(Debug, Default)]
pub struct Services {
    pub services: Vec<Service>,
    pub skipped: Vec<Skipped>,
}

/// `services` with the endpoints of their `slices` (matched by namespace and the
/// `kubernetes.io/service-name` label). Where two Services claim one external IP and port or
/// one node port, the older one (then the first by namespace and name) keeps it and the other
/// runs without it; one whose cluster IP and port is taken is skipped.
pub fn services<'a>(
    services: impl IntoIterator<Item = &'a KService>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Services {
    let mut by_service: BTreeMap<Key, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let meta = &slice.metadata;
        let service = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(ns), Some(service)) = (&meta.namespace, service) {
            by_service
                .entry((ns.clone(), service.clone()))
                .or_default()
                .push(slice);
        }
    }
    for v in by_service.values_mut() {
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    let mut out = Services::default();
    let mut candidates = Vec::new();
    for k in services {
        let (Some(ns), Some(name)) = (&k.metadata.namespace, &k.metadata.name) else {
            continue;
        };
        let object = format!("service {ns}/{name}");
        let mut notes = Vec::new();
        match service(ns, name, k, &mut notes) {
            Ok(Some(mut s)) => {
                let slices = by_service.get(&s.key()).map(Vec::as_slice).unwrap_or(&[]);
                s.endpoints = endpoints(&s, slices, &mut out.skipped);
                candidates.push((k.metadata.creation_timestamp.clone(), s));
            }
            Ok(None) => {}
            Err(reason) => notes.push(reason),
        }
        out.skipped.extend(notes.into_iter().map(|reason| Skipped {
            object: object.clone(),
            reason,
        }));
    }
    candidates.sort_by(|(ta, a), (tb, b)| (ta, a.key()).cmp(&(tb, b.key())));
    let mut claimed: BTreeMap<Claim, Key> = BTreeMap::new();
    for (_, mut s) in candidates {
        out.skipped.extend(leave_out_claimed(&mut s, &claimed));
        let claims = s.claims();
        if let Some((c, owner)) = claims
            .iter()
            .find_map(|c| claimed.get(c).map(|owner| (c, owner)))
        {
            out.skipped.push(Skipped {
                object: format!("service {}/{}", s.namespace, s.name),
                reason: format!("{c} belongs to service {}/{}", owner.0, owner.1),
            });
            continue;
        }
        for c in claims {
            claimed.insert(c, s.key());
        }
        out.services.push(s);
    }
    out.services.sort_by_key(Service::key);
    out
}

/// Takes out of `s` the external IPs and node ports an older Service has `claimed`, as
/// kube-proxy leaves out only the conflicting part; what is left out, with the reason.
fn leave_out_claimed(s: &mut Service, claimed: &BTreeMap<Claim, Key>) -> Vec<Skipped> {
    let object = format!("service {}/{}", s.namespace, s.name);
    let owner = |c: &Claim| {
        claimed
            .get(c)
            .map(|o| format!("{c} belongs to service {}/{}", o.0, o.1))
    };
    let mut left_out = Vec::new();
    let ports = s.ports.clone();
    s.external_ips.retain(|ip| {
        let taken = ports
            .iter()
            .find_map(|p| owner(&Claim::Address(*ip, p.protocol, p.port)));
        if let Some(why) = &taken {
            left_out.push(format!("external IP {ip} left out: {why}"));
        }
        taken.is_none()
    });
    for p in &mut s.ports {
        if let Some(why) = p
            .node_port
            .and_then(|n| owner(&Claim::NodePort(p.protocol, n)))
        {
            left_out.push(format!("node port of port {:?} left out: {why}", p.name));
            p.node_port = None;
        }
    }
    left_out
        .into_iter()
        .map(|reason| Skipped {
            object: object.clone(),
            reason,
        })
        .collect()
}

/// One Service without its endpoints. `None`: not one to program. Problems with a part that
/// can be left out (an external IP) are pushed to `notes`.
fn service(
    ns: &str,
    name: &str,
    k: &KService,
    notes: &mut Vec<String>,
) -> Result<Option<Service>, String> {
    let Some(spec) = &k.spec else {
        return Ok(None);
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (_, Some(ip)) => vec![ip.as_str()],
        _ => Vec::new(),
    };
    if ips.first().is_none_or(|ip| ip.is_empty() || *ip == "None") {
        return Ok(None);
    }
    let cluster_ip = ips
        .iter()
        .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .filter(|ip| unicast(*ip))
        .ok_or_else(|| {
            format!(
                "no IPv4 cluster IP in {} (IPv6 Services are not supported)",
                ips.join(",")
            )
        })?;
    let mut ports = Vec::new();
    let (mut keys, mut node_ports) = (BTreeSet::new(), BTreeSet::new());
    for p in spec.ports.iter().flatten() {
        let port = service_port(p)?;
        if !keys.insert((port.protocol, port.port)) {
            return Err(format!(
                "port {}/{} is given twice",
                port.port, port.protocol
            ));
        }
        if let Some(n) = port.node_port
            && !node_ports.insert((port.protocol, n))
        {
            return Err(format!("node port {n}/{} is given twice", port.protocol));
        }
        ports.push(port);
    }
    if ports.is_empty() {
        return Err("no ports".into());
    }
    let mut external_ips = Vec::new();
    for e in spec.external_ips.iter().flatten() {
        match e.parse::<Ipv4Addr>() {
            Ok(ip) if !unicast(ip) => notes.push(format!("external IP {ip} is not unicast")),
            Ok(ip) if ip == cluster_ip || external_ips.contains(&IpAddr::V4(ip)) => {}
            Ok(ip) => external_ips.push(IpAddr::V4(ip)),
            Err(_) => notes.push(format!(
                "external IP {e:?} is not an IPv4 address (IPv6 is not supported)"
            )),
        }
    }
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        match timeout.and_then(|t| u32::try_from(t).ok()) {
            Some(t) if t > 0 => t.min(MAX_AFFINITY_TIMEOUT),
            _ => DEFAULT_AFFINITY_TIMEOUT,
        }
    });
    let s = Service {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        cluster_ip: IpAddr::V4(cluster_ip),
        ports,
        external_ips,
        affinity,
        endpoints: Vec::new(),
    };
    Ok(Some(s))
}

/// A Service port. A named target port's `target_port` is the port itself: endpoints only get
/// it with their slice's number.
fn service_port(p: &ServicePort) -> Result<Port, String> {
    let name = p.name.clone().unwrap_or_default();
    let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => return Err(format!("port {name:?}: unknown protocol {other:?}")),
    };
    let port = port16(p.port).ok_or_else(|| format!("port {name:?}: {} is not a port", p.port))?;
    let target_port = match &p.target_port {
        None | Some(IntOrString::Int(0)) => port,
        Some(IntOrString::Int(t)) => {
            port16(*t).ok_or_else(|| format!("port {name:?}: target port {t} is not a port"))?
        }
        Some(IntOrString::String(s)) => s.parse::<u16>().ok().filter(|t| *t > 0).unwrap_or(port),
    };
    let node_port = match p.node_port {
        None | Some(0) => None,
        Some(n) => {
            Some(port16(n).ok_or_else(|| format!("port {name:?}: node port {n} is not a port"))?)
        }
    };
    Ok(Port {
        name,
        protocol,
        port,
        target_port,
        node_port,
    })
}

/// The endpoints of `s` from its IPv4 `slices`, as kube-proxy builds them: per Service port,
/// an address serves it only through a slice port of the same name and protocol, at that
/// port's number (a slice without one, with `ports: []`, or with another protocol serves
/// that Service port nothing). One endpoint per address and set of ports it serves (where two
/// slices list the same, the readier wins); the same address with other port numbers in
/// another slice is another endpoint.
fn endpoints(s: &Service, slices: &[&EndpointSlice], skipped: &mut Vec<Skipped>) -> Vec<Endpoint> {
    let mut by_key: BTreeMap<(IpAddr, BTreeMap<String, u16>), Endpoint> = BTreeMap::new();
    for slice in slices.iter().filter(|sl| sl.address_type == "IPv4") {
        let object = format!(
            "endpointslice {}/{}",
            s.namespace,
            slice.metadata.name.as_deref().unwrap_or("")
        );
        // Service port name → the number this slice gives it.
        let served: BTreeMap<String, u16> = s
            .ports
            .iter()
            .filter_map(|p| {
                let n = slice.ports.iter().flatten().find_map(|sp| {
                    let same_name = sp.name.as_deref().unwrap_or("") == p.name;
                    let protocol = sp.protocol.as_deref().unwrap_or("TCP");
                    let same_protocol = protocol.eq_ignore_ascii_case(&p.protocol.to_string());
                    (same_name && same_protocol)
                        .then(|| port16(sp.port?))
                        .flatten()
                })?;
                Some((p.name.clone(), n))
            })
            .collect();
        if served.is_empty() {
            continue;
        }
        let ports: BTreeMap<String, u16> = s
            .ports
            .iter()
            .filter_map(|p| {
                let n = *served.get(&p.name)?;
                (n != p.target_port).then(|| (p.name.clone(), n))
            })
            .collect();
        for e in &slice.endpoints {
            let Some(addr) = e.addresses.first() else {
                continue;
            };
            let ip = match addr.parse::<Ipv4Addr>() {
                Ok(ip) if unicast(ip) => IpAddr::V4(ip),
                _ => {
                    skipped.push(Skipped {
                        object: object.clone(),
                        reason: format!("endpoint address {addr:?} is not a unicast IPv4 address"),
                    });
                    continue;
                }
            };
            let c = e.conditions.clone().unwrap_or_default();
            let ep = Endpoint {
                ip,
                ready: c.ready.unwrap_or(true),
                serving: c.serving.unwrap_or(true),
                terminating: c.terminating.unwrap_or(false),
                ports: ports.clone(),
                serves: Some(served.keys().cloned().collect()),
            };
            let rank = |e: &Endpoint| (e.ready, e.serving);
            let key = (ip, served.clone());
            if by_key.get(&key).is_none_or(|old| rank(old) < rank(&ep)) {
                by_key.insert(key, ep);
            }
        }
    }
    by_key.into_values().collect()
}

/// The cluster's other nodes as peers.
#[derive(Debug, Default)]
pub struct Peers {
    /// By name.
    pub peers: Vec<Peer>,
    /// Whether the cluster has a Node of this node's name.
    pub found_self: bool,
    /// This node's own `spec.podCIDR`, as the cluster gives it.
    pub own_pod_cidr: Option<String>,
    pub skipped: Vec<Skipped>,
}

/// Every Node but `node_name` that has an IPv4 pod CIDR and an IPv4 InternalIP, as a peer.
pub fn peers<'a>(nodes: impl IntoIterator<Item = &'a Node>, node_name: &str) -> Peers {
    let mut out = Peers::default();
    for n in nodes {
        let Some(name) = &n.metadata.name else {
            continue;
        };
        let spec = n.spec.as_ref();
        let cidrs: Vec<&str> = match spec.map(|s| (&s.pod_cidrs, &s.pod_cidr)) {
            Some((Some(cidrs), _)) if !cidrs.is_empty() => {
                cidrs.iter().map(String::as_str).collect()
            }
            Some((_, Some(cidr))) => vec![cidr.as_str()],
            _ => Vec::new(),
        };
        if name == node_name {
            out.found_self = true;
            out.own_pod_cidr = cidrs.first().map(|c| (*c).to_owned());
            continue;
        }
        let skip = |reason: String| Skipped {
            object: format!("node {name}"),
            reason,
        };
        let pod_cidr = match pod_cidr(&cidrs) {
            Ok(c) => c,
            Err(reason) => {
                out.skipped.push(skip(reason));
                continue;
            }
        };
        let node_ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
        let Some(node_ip) = node_ip else {
            out.skipped.push(skip("no IPv4 InternalIP address".into()));
            continue;
        };
        out.peers.push(Peer {
            name: name.clone(),
            node_ip,
            pod_cidr,
        });
    }
    out.peers.sort();
    out
}

/// The IPv4 one of a Node's pod CIDRs.
fn pod_cidr(cidrs: &[&str]) -> Result<Ipv4Net, String> {
    if cidrs.is_empty() {
        return Err("no pod CIDR (spec.podCIDR) yet".into());
    }
    for c in cidrs {
        match c.parse::<IpNet>() {
            Ok(IpNet::V4(n)) if n.trunc() == n => return Ok(n),
            Ok(IpNet::V4(n)) => {
                return Err(format!(
                    "pod CIDR {n} has host bits set (the network is {})",
                    n.trunc()
                ));
            }
            Ok(IpNet::V6(_)) => {}
            Err(_) => return Err(format!("pod CIDR {c:?} is not a CIDR")),
        }
    }
    Err(format!(
        "no IPv4 pod CIDR in {} (IPv6 is not supported)",
        cidrs.join(",")
    ))
}

fn port16(v: i32) -> Option<u16> {
    u16::try_from(v).ok().filter(|p| *p > 0)
}

fn unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
}

#[cfg(test)]
mod tests;
