//! A Service as peapod keeps it: what the API says, checked, and what the kernel gets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use netsetup::service::{L4, ServicePortRules};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// ClientIP affinity's timeout when none is given (Kubernetes' default: 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The longest ClientIP affinity timeout Kubernetes accepts (1 day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn l4(self) -> L4 {
        match self {
            Protocol::Tcp => L4::Tcp,
            Protocol::Udp => L4::Udp,
            Protocol::Sctp => L4::Sctp,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.l4().fmt(f)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Ports by service port name, where they differ from the port's `target_port`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    /// The Service ports (by name) it serves: those its EndpointSlice lists, by name and
    /// protocol, as kube-proxy takes them. `None`: every port (endpoints given through
    /// peapod's own API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serves: Option<BTreeSet<String>>,
}

impl Endpoint {
    /// Whether it takes connections for `port`.
    pub fn serves(&self, port: &Port) -> bool {
        self.serves.as_ref().is_none_or(|s| s.contains(&port.name))
    }

    /// Where this endpoint takes connections for `port`.
    pub fn address(&self, port: &Port) -> SocketAddr {
        let p = self
            .ports
            .get(&port.name)
            .copied()
            .unwrap_or(port.target_port);
        SocketAddr::new(self.ip, p)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: IpAddr,
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<IpAddr>,
    /// ClientIP affinity's timeout in seconds; `None`: no affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<u32>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// How a Service is known: namespace and name.
pub type Key = (String, String);

impl Service {
    pub fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }

    /// A stable name for files and kernel objects: 16 hex of sha256("namespace/name").
    pub fn id(&self) -> String {
        id_of(&self.namespace, &self.name)
    }

    /// The virtual addresses: the cluster IP, then the external IPs.
    pub fn addresses(&self) -> Vec<IpAddr> {
        std::iter::once(self.cluster_ip)
            .chain(self.external_ips.iter().copied())
            .collect()
    }

    /// The endpoints that take new connections for `port`: of those that serve it, the ready
    /// ones, or when none is, the serving ones that are terminating (as kube-proxy decides,
    /// per Service port).
    pub fn active_endpoints(&self, port: &Port) -> Vec<&Endpoint> {
        let serving = || self.endpoints.iter().filter(|e| e.serves(port));
        let ready: Vec<&Endpoint> = serving().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        serving().filter(|e| e.serving && e.terminating).collect()
    }

    /// What the kernel gets: one entry per port.
    pub fn rules(&self) -> Vec<ServicePortRules> {
        let id = self.id();
        self.ports
            .iter()
            .map(|p| {
                let active = self.active_endpoints(p);
                let mut backends: Vec<SocketAddr> = active.iter().map(|e| e.address(p)).collect();
                backends.sort();
                backends.dedup();
                ServicePortRules {
                    id: format!("{id}_{}{}", p.protocol, p.port),
                    addresses: self.addresses(),
                    protocol: p.protocol.l4(),
                    port: p.port,
                    node_port: p.node_port,
                    affinity: self.affinity,
                    backends,
                }
            })
            .collect()
    }

    /// Every (address, protocol, port) key and node port of this Service, to find clashes.
    pub fn claims(&self) -> Vec<Claim> {
        let mut claims = Vec::new();
        for p in &self.ports {
            for a in self.addresses() {
                claims.push(Claim::Address(a, p.protocol, p.port));
            }
            if let Some(np) = p.node_port {
                claims.push(Claim::NodePort(p.protocol, np));
            }
        }
        claims
    }
}

/// Something only one Service may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Claim {
    Address(IpAddr, Protocol, u16),
    NodePort(Protocol, u16),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Address(a, p, port) => write!(f, "{} {p}", SocketAddr::new(*a, *port)),
            Claim::NodePort(p, port) => write!(f, "node port {port}/{p}"),
        }
    }
}

pub fn id_of(namespace: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, ready: bool, terminating: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            ready,
            serving: ready || terminating,
            terminating,
            ports: BTreeMap::new(),
            serves: None,
        }
    }

    fn service() -> Service {
        Service {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ip: "10.96.0.10".parse().unwrap(),
            ports: vec![
                Port {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: 8080,
                    node_port: Some(30080),
                },
                Port {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    target_port: 53,
                    node_port: None,
                },
            ],
            external_ips: vec!["192.0.2.7".parse().unwrap()],
            affinity: None,
            endpoints: vec![ep("10.88.0.5", true, false), ep("10.88.0.6", false, true)],
        }
    }

    #[test]
    fn rules_have_one_entry_per_port_with_the_ready_backends() {
        let mut s = service();
        s.endpoints[0].ports.insert("dns".into(), 5353);
        let rules = s.rules();
        assert_eq!(rules.len(), 2);
        let id = s.id();
        assert_eq!(id.len(), 16);
        assert_eq!(rules[0].id, format!("{id}_tcp80"));
        assert_eq!(rules[0].backends, ["10.88.0.5:8080".parse().unwrap()]);
        assert_eq!(rules[0].node_port, Some(30080));
        assert_eq!(rules[1].backends, ["10.88.0.5:5353".parse().unwrap()]);
        assert_eq!(rules[1].addresses.len(), 2);
    }

    #[test]
    fn terminating_endpoints_serve_when_none_is_ready() {
        let mut s = service();
        s.endpoints[0].ready = false;
        s.endpoints[0].serving = false;
        let http = s.ports[0].clone();
        let active: Vec<String> = s
            .active_endpoints(&http)
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(active, ["10.88.0.6"]);
        s.endpoints[1].serving = false;
        assert!(s.active_endpoints(&http).is_empty());
        assert!(s.rules().iter().all(|r| r.backends.is_empty()));
    }

    #[test]
    fn an_endpoint_serves_only_the_ports_its_slice_lists_and_readiness_is_per_port() {
        let mut s = service();
        // 10.88.0.5 (ready) serves dns only; 10.88.0.6 (terminating) serves http only.
        s.endpoints[0].serves = Some(["dns".to_owned()].into());
        s.endpoints[1].serves = Some(["http".to_owned()].into());
        let rules = s.rules();
        assert_eq!(rules[0].backends, ["10.88.0.6:8080".parse().unwrap()]);
        assert_eq!(rules[1].backends, ["10.88.0.5:53".parse().unwrap()]);
        s.endpoints[1].serves = Some(BTreeSet::new());
        assert!(s.rules()[0].backends.is_empty());
    }

    #[test]
    fn claims_cover_every_address_port_and_node_port() {
        let claims: Vec<String> = service().claims().iter().map(ToString::to_string).collect();
        assert_eq!(
            claims,
            [
                "10.96.0.10:80 tcp",
                "192.0.2.7:80 tcp",
                "node port 30080/tcp",
                "10.96.0.10:53 udp",
                "192.0.2.7:53 udp",
            ]
        );
    }
}
