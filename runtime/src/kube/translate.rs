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
/// `kubernetes.io/service-name` label). Where two Services claim one address and port or
/// node port, the older one (then the first by namespace and name) keeps it and the other is
/// skipped.
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
            Ok(Some((mut s, named))) => {
                let slices = by_service.get(&s.key()).map(Vec::as_slice).unwrap_or(&[]);
                s.endpoints = endpoints(&s, &named, slices, &mut out.skipped);
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
    for (_, s) in candidates {
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

/// One Service without its endpoints, with the names of its ports whose target port is named
/// (they resolve per EndpointSlice). `None`: not one to program. Problems with a part that can
/// be left out (an external IP) are pushed to `notes`.
fn service(
    ns: &str,
    name: &str,
    k: &KService,
    notes: &mut Vec<String>,
) -> Result<Option<(Service, BTreeSet<String>)>, String> {
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
    let mut named = BTreeSet::new();
    let (mut keys, mut node_ports) = (BTreeSet::new(), BTreeSet::new());
    for p in spec.ports.iter().flatten() {
        let (port, is_named) = service_port(p)?;
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
        if is_named {
            named.insert(port.name.clone());
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
    Ok(Some((s, named)))
}

/// A Service port, and whether its target port is a name. A named target port's
/// `target_port` is the port itself: endpoints only get it with their slice's number.
fn service_port(p: &ServicePort) -> Result<(Port, bool), String> {
    let name = p.name.clone().unwrap_or_default();
    let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => return Err(format!("port {name:?}: unknown protocol {other:?}")),
    };
    let port = port16(p.port).ok_or_else(|| format!("port {name:?}: {} is not a port", p.port))?;
    let (target_port, named) = match &p.target_port {
        None | Some(IntOrString::Int(0)) => (port, false),
        Some(IntOrString::Int(t)) => (
            port16(*t).ok_or_else(|| format!("port {name:?}: target port {t} is not a port"))?,
            false,
        ),
        Some(IntOrString::String(s)) => match s.parse::<u16>() {
            Ok(t) if t > 0 => (t, false),
            _ => (port, true),
        },
    };
    let node_port = match p.node_port {
        None | Some(0) => None,
        Some(n) => {
            Some(port16(n).ok_or_else(|| format!("port {name:?}: node port {n} is not a port"))?)
        }
    };
    let port = Port {
        name,
        protocol,
        port,
        target_port,
        node_port,
    };
    Ok((port, named))
}

/// The endpoints of `s` from its IPv4 `slices`, one per address (where two slices have the
/// same one, the readier wins), by address. An endpoint's port for a service port is its
/// slice's port of that name; a slice without a port of a named target port leaves its
/// endpoints out (there is no number to send them).
fn endpoints(
    s: &Service,
    named: &BTreeSet<String>,
    slices: &[&EndpointSlice],
    skipped: &mut Vec<Skipped>,
) -> Vec<Endpoint> {
    let mut by_ip: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    for slice in slices.iter().filter(|sl| sl.address_type == "IPv4") {
        let object = format!(
            "endpointslice {}/{}",
            s.namespace,
            slice.metadata.name.as_deref().unwrap_or("")
        );
        let numbers: BTreeMap<&str, u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.as_deref().unwrap_or(""), port16(p.port?)?)))
            .collect();
        let missing: Vec<&str> = named
            .iter()
            .map(String::as_str)
            .filter(|n| !numbers.contains_key(n))
            .collect();
        if !missing.is_empty() {
            if !slice.endpoints.is_empty() {
                skipped.push(Skipped {
                    object,
                    reason: format!(
                        "no port named {} for the named target port: its endpoints are left out",
                        missing.join(", ")
                    ),
                });
            }
            continue;
        }
        let ports: BTreeMap<String, u16> = s
            .ports
            .iter()
            .filter_map(|p| {
                let n = *numbers.get(p.name.as_str())?;
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
            };
            let rank = |e: &Endpoint| (e.ready, e.serving);
            if by_ip.get(&ip).is_none_or(|old| rank(old) < rank(&ep)) {
                by_ip.insert(ip, ep);
            }
        }
    }
    by_ip.into_values().collect()
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
