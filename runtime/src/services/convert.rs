//! peapod.net.v1 messages to and from the model, checked on the way in: a request that gets
//! past here is one the kernel can take.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use peapod_proto::net::v1 as pb;

use super::ServiceError;
use super::model::{
    DEFAULT_AFFINITY_TIMEOUT, Endpoint, MAX_AFFINITY_TIMEOUT, Port, Protocol, Service,
};

/// Node ports come from this range (Kubernetes' default `--service-node-port-range`).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
pub const MAX_PORTS: usize = 100;
pub const MAX_EXTERNAL_IPS: usize = 16;
pub const MAX_ENDPOINTS: usize = 1000;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A DNS-1123 label, as Kubernetes names namespaces, Services and ports.
pub fn check_label(field: &str, v: &str) -> Result<(), ServiceError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not a DNS label (1-63 of a-z, 0-9, '-', not at either end)"),
        ))
    }
}

/// A DNS-1123 subdomain, as Kubernetes names Nodes: dot-separated DNS labels, at most 253
/// characters.
pub fn check_subdomain(field: &str, v: &str) -> Result<(), ServiceError> {
    if v.len() <= 253 && v.split('.').all(|l| check_label(field, l).is_ok()) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not a DNS subdomain (DNS labels joined by '.', at most 253)"),
        ))
    }
}

/// An address a Service or endpoint may have: unicast, not loopback, not unspecified.
fn parse_ip(field: &str, v: &str) -> Result<IpAddr, ServiceError> {
    let ip: IpAddr = v
        .parse()
        .map_err(|_| invalid(field, format!("{v:?} is not an IP address")))?;
    let bad = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(a) if a.is_broadcast());
    if bad {
        return Err(invalid(field, format!("{ip} is not a unicast address")));
    }
    Ok(ip)
}

fn port16(field: &str, v: u32) -> Result<u16, ServiceError> {
    match u16::try_from(v) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(field, format!("{v} is not a port (1-65535)"))),
    }
}

fn protocol(field: &str, v: i32) -> Result<Protocol, ServiceError> {
    match pb::Protocol::try_from(v) {
        Ok(pb::Protocol::Tcp) => Ok(Protocol::Tcp),
        Ok(pb::Protocol::Udp) => Ok(Protocol::Udp),
        Ok(pb::Protocol::Sctp) => Ok(Protocol::Sctp),
        Err(_) => Err(invalid(field, format!("unknown protocol {v}"))),
    }
}

/// A Service as AddService gets it; its endpoints are not taken from the request.
pub fn service_from(s: pb::Service) -> Result<Service, ServiceError> {
    check_label("namespace", &s.namespace)?;
    check_label("name", &s.name)?;
    let cluster_ip = parse_ip("cluster_ip", &s.cluster_ip)?;
    if s.ports.is_empty() || s.ports.len() > MAX_PORTS {
        return Err(invalid(
            "ports",
            format!("1 to {MAX_PORTS} ports, not {}", s.ports.len()),
        ));
    }
    let mut ports = Vec::new();
    let (mut names, mut keys, mut node_ports) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (i, p) in s.ports.into_iter().enumerate() {
        let f = |x: &str| format!("ports[{i}].{x}");
        if !p.name.is_empty() {
            check_label(&f("name"), &p.name)?;
        }
        let port = Port {
            protocol: protocol(&f("protocol"), p.protocol)?,
            port: port16(&f("port"), p.port)?,
            target_port: match p.target_port {
                0 => port16(&f("port"), p.port)?,
                t => port16(&f("target_port"), t)?,
            },
            node_port: match p.node_port {
                0 => None,
                n => {
                    let n = port16(&f("node_port"), n)?;
                    if !NODE_PORTS.contains(&n) {
                        return Err(invalid(
                            f("node_port"),
                            format!(
                                "{n} is outside the node port range {}-{}",
                                NODE_PORTS.start(),
                                NODE_PORTS.end()
                            ),
                        ));
                    }
                    Some(n)
                }
            },
            name: p.name,
        };
        if !names.insert(port.name.clone()) {
            return Err(invalid(
                f("name"),
                format!("port name {:?} is used twice", port.name),
            ));
        }
        if !keys.insert((port.protocol, port.port)) {
            return Err(invalid(
                f("port"),
                format!("{}/{} is used twice", port.port, port.protocol),
            ));
        }
        if let Some(n) = port.node_port
            && !node_ports.insert((port.protocol, n))
        {
            return Err(invalid(
                f("node_port"),
                format!("{n}/{} is used twice", port.protocol),
            ));
        }
        ports.push(port);
    }
    if ports.len() > 1 && ports.iter().any(|p| p.name.is_empty()) {
        return Err(invalid(
            "ports",
            "every port needs a name when there are several",
        ));
    }
    if s.external_ips.len() > MAX_EXTERNAL_IPS {
        return Err(invalid(
            "external_ips",
            format!("at most {MAX_EXTERNAL_IPS}"),
        ));
    }
    let mut external_ips = Vec::new();
    for (i, e) in s.external_ips.iter().enumerate() {
        let f = format!("external_ips[{i}]");
        let ip = parse_ip(&f, e)?;
        if ip.is_ipv4() != cluster_ip.is_ipv4() {
            return Err(invalid(
                f,
                format!("{ip} is not of the cluster IP's family"),
            ));
        }
        if ip == cluster_ip || external_ips.contains(&ip) {
            return Err(invalid(f, format!("{ip} is given twice")));
        }
        external_ips.push(ip);
    }
    let affinity = match (
        pb::SessionAffinity::try_from(s.session_affinity),
        s.affinity_timeout_seconds,
    ) {
        (Ok(pb::SessionAffinity::None), 0) => None,
        (Ok(pb::SessionAffinity::None), _) => {
            return Err(invalid(
                "affinity_timeout_seconds",
                "only for CLIENT_IP affinity",
            ));
        }
        (Ok(pb::SessionAffinity::ClientIp), 0) => Some(DEFAULT_AFFINITY_TIMEOUT),
        (Ok(pb::SessionAffinity::ClientIp), t) if t <= MAX_AFFINITY_TIMEOUT => Some(t),
        (Ok(pb::SessionAffinity::ClientIp), t) => {
            return Err(invalid(
                "affinity_timeout_seconds",
                format!("{t} is more than {MAX_AFFINITY_TIMEOUT}"),
            ));
        }
        (Err(_), _) => {
            return Err(invalid(
                "session_affinity",
                format!("unknown value {}", s.session_affinity),
            ));
        }
    };
    Ok(Service {
        namespace: s.namespace,
        name: s.name,
        cluster_ip,
        ports,
        external_ips,
        affinity,
        endpoints: Vec::new(),
    })
}

/// Endpoints for `service`, as SetEndpoints gets them.
pub fn endpoints_from(
    service: &Service,
    eps: Vec<pb::Endpoint>,
) -> Result<Vec<Endpoint>, ServiceError> {
    if eps.len() > MAX_ENDPOINTS {
        return Err(invalid(
            "endpoints",
            format!("at most {MAX_ENDPOINTS}, not {}", eps.len()),
        ));
    }
    let names: BTreeSet<&str> = service.ports.iter().map(|p| p.name.as_str()).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, e) in eps.into_iter().enumerate() {
        let f = |x: &str| format!("endpoints[{i}].{x}");
        let ip = parse_ip(&f("ip"), &e.ip)?;
        if ip.is_ipv4() != service.cluster_ip.is_ipv4() {
            return Err(invalid(
                f("ip"),
                format!("{ip} is not of the cluster IP's family"),
            ));
        }
        if !seen.insert(ip) {
            return Err(invalid(f("ip"), format!("{ip} is given twice")));
        }
        let mut ports = BTreeMap::new();
        for (name, p) in e.ports {
            if !names.contains(name.as_str()) {
                return Err(invalid(
                    f("ports"),
                    format!("the Service has no port named {name:?}"),
                ));
            }
            ports.insert(name.clone(), port16(&f(&format!("ports[{name}]")), p)?);
        }
        out.push(Endpoint {
            ip,
            ready: e.ready,
            serving: e.serving || e.ready,
            terminating: e.terminating,
            ports,
            serves: None,
        });
    }
    Ok(out)
}

fn protocol_to(p: Protocol) -> pb::Protocol {
    match p {
        Protocol::Tcp => pb::Protocol::Tcp,
        Protocol::Udp => pb::Protocol::Udp,
        Protocol::Sctp => pb::Protocol::Sctp,
    }
}

pub fn service_to(s: &Service) -> pb::Service {
    pb::Service {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        cluster_ip: s.cluster_ip.to_string(),
        ports: s
            .ports
            .iter()
            .map(|p| pb::ServicePort {
                name: p.name.clone(),
                protocol: protocol_to(p.protocol).into(),
                port: p.port.into(),
                target_port: p.target_port.into(),
                node_port: p.node_port.map(u32::from).unwrap_or(0),
            })
            .collect(),
        external_ips: s.external_ips.iter().map(ToString::to_string).collect(),
        session_affinity: match s.affinity {
            Some(_) => pb::SessionAffinity::ClientIp,
            None => pb::SessionAffinity::None,
        }
        .into(),
        affinity_timeout_seconds: s.affinity.unwrap_or(0),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| pb::Endpoint {
                ip: e.ip.to_string(),
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                ports: e
                    .ports
                    .iter()
                    .map(|(k, v)| (k.clone(), u32::from(*v)))
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
