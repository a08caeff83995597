//! hostPort mappings: a port of the node forwarded to a port of one pod.
//!
//! In nftables they are elements of two maps of the table `inet peapod`, one for mappings
//! bound to one host address (`hostports`: address . protocol . port → pod address . port) and
//! one for mappings on every address of the node (`hostports_any`: protocol . port → pod
//! address . port); the DNAT rules look the destination up in them, so a packet costs one
//! lookup whatever the number of pods. Each element is known to the rest of peapod by an id,
//! [`HostPortElement`]'s text form, kept in [`crate::Attachment::rules`].

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Map of mappings bound to one host address.
pub const MAP: &str = "hostports";
/// Map of mappings on every address of the node.
pub const MAP_ANY: &str = "hostports_any";

/// The transport protocols a mapping can forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ();

    fn from_str(s: &str) -> Result<Protocol, ()> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(()),
        }
    }
}

/// One mapping as a pod asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub protocol: Protocol,
    /// `None`: every address of the node.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl HostPort {
    /// Whether both would catch the same packets: same protocol and host port, and the same
    /// host address or either on every address.
    pub fn overlaps(&self, other: &HostPort) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(ip) => write!(f, "{}/{ip}:{}", self.protocol, self.host_port),
            None => write!(f, "{}/*:{}", self.protocol, self.host_port),
        }
    }
}

/// One mapping made for one pod: a map element, and its id in [`crate::Attachment::rules`]
/// (`hostport tcp 192.0.2.1:8080 10.88.0.5:80`, `*` for every host address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPortElement {
    pub port: HostPort,
    pub pod_ip: Ipv4Addr,
}

const ID_PREFIX: &str = "hostport ";

impl HostPortElement {
    pub fn map(&self) -> &'static str {
        if self.port.host_ip.is_some() {
            MAP
        } else {
            MAP_ANY
        }
    }

    /// The element's key in nft syntax.
    pub fn key(&self) -> String {
        let p = &self.port;
        match p.host_ip {
            Some(ip) => format!("{ip} . {} . {}", p.protocol, p.host_port),
            None => format!("{} . {}", p.protocol, p.host_port),
        }
    }

    /// The element's value in nft syntax: where the packets go.
    pub fn data(&self) -> String {
        format!("{} . {}", self.pod_ip, self.port.container_port)
    }

    /// Whether a rule id names a map element rather than a rule.
    pub fn is_id(id: &str) -> bool {
        id.starts_with(ID_PREFIX)
    }
}

impl fmt::Display for HostPortElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.port;
        let host = p
            .host_ip
            .map_or_else(|| "*".to_owned(), |ip| ip.to_string());
        write!(
            f,
            "{ID_PREFIX}{} {host}:{} {}:{}",
            p.protocol, p.host_port, self.pod_ip, p.container_port
        )
    }
}

impl FromStr for HostPortElement {
    type Err = ();

    /// Strict: only what [`fmt::Display`] writes, so that a record cannot smuggle anything
    /// into an nft script.
    fn from_str(s: &str) -> Result<HostPortElement, ()> {
        let rest = s.strip_prefix(ID_PREFIX).ok_or(())?;
        let mut words = rest.split(' ');
        let (Some(protocol), Some(host), Some(pod), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(());
        };
        let (host_ip, host_port) = host.rsplit_once(':').ok_or(())?;
        let (pod_ip, container_port) = pod.rsplit_once(':').ok_or(())?;
        let host_ip = match host_ip {
            "*" => None,
            ip => Some(ip.parse().map_err(|_| ())?),
        };
        let element = HostPortElement {
            port: HostPort {
                protocol: protocol.parse()?,
                host_ip,
                host_port: port(host_port)?,
                container_port: port(container_port)?,
            },
            pod_ip: pod_ip.parse().map_err(|_| ())?,
        };
        // Round trip: no leading zeros or other second spellings.
        if element.to_string() != s {
            return Err(());
        }
        Ok(element)
    }
}

/// Deletes the conntrack entries of UDP flows through the mappings among `ids` (rule ids of
/// [`crate::Attachment::rules`]). A UDP client that keeps its source port would otherwise
/// keep being sent to the pod that had the mapping, after it is gone and even when another
/// pod maps the port again, until the entry times out. Errors are logged: the mapping is
/// gone already and the flows would expire.
pub fn forget_udp_flows(ids: &[String]) {
    let udp: Vec<HostPortElement> = ids
        .iter()
        .filter_map(|id| id.parse::<HostPortElement>().ok())
        .filter(|e| e.port.protocol == Protocol::Udp)
        .collect();
    if udp.is_empty() {
        return;
    }
    let through = |flow: &crate::conntrack::Flow, e: &HostPortElement| {
        flow.original.protocol == crate::conntrack::Protocol::UDP
            && flow.original.dst_port == e.port.host_port
            && e.port.host_ip.is_none_or(|ip| flow.original.dst == ip)
            && flow.reply.src == e.pod_ip
            && flow.reply.src_port == e.port.container_port
    };
    let r = crate::conntrack::delete_where(crate::conntrack::Family::V4, |flow| {
        udp.iter().any(|e| through(flow, e))
    });
    match r {
        Ok(n) => tracing::debug!(flows = n, "forgot UDP flows of removed hostPorts"),
        Err(e) => tracing::warn!(
            error = %crate::chain(&e),
            "cannot forget UDP flows of removed hostPorts"
        ),
    }
}

fn port(s: &str) -> Result<u16, ()> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(host_ip: Option<&str>, protocol: Protocol) -> HostPortElement {
        HostPortElement {
            port: HostPort {
                protocol,
                host_ip: host_ip.map(|ip| ip.parse().unwrap()),
                host_port: 8080,
                container_port: 80,
            },
            pod_ip: "10.88.0.5".parse().unwrap(),
        }
    }

    #[test]
    fn ids_round_trip() {
        let bound = element(Some("192.0.2.1"), Protocol::Tcp);
        assert_eq!(
            bound.to_string(),
            "hostport tcp 192.0.2.1:8080 10.88.0.5:80"
        );
        let any = element(None, Protocol::Udp);
        assert_eq!(any.to_string(), "hostport udp *:8080 10.88.0.5:80");
        for e in [bound, any] {
            assert_eq!(e.to_string().parse::<HostPortElement>(), Ok(e));
            assert!(HostPortElement::is_id(&e.to_string()));
        }
        assert!(!HostPortElement::is_id("prerouting:3"));
    }

    #[test]
    fn odd_ids_are_refused() {
        for bad in [
            "hostport tcp 192.0.2.1:8080 10.88.0.5:80 ",
            "hostport sctp *:8080 10.88.0.5:80",
            "hostport tcp *:0 10.88.0.5:80",
            "hostport tcp *:08080 10.88.0.5:80",
            "hostport tcp *:8080 10.88.0.5:65536",
            "hostport tcp ::1:8080 10.88.0.5:80",
            "hostport tcp *:8080 10.88.0.5:80; flush ruleset",
            "hostport tcp *:8080",
            "hostport  tcp *:8080 10.88.0.5:80",
        ] {
            assert!(bad.parse::<HostPortElement>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_and_data_in_nft_syntax() {
        let bound = element(Some("192.0.2.1"), Protocol::Tcp);
        assert_eq!(bound.map(), "hostports");
        assert_eq!(bound.key(), "192.0.2.1 . tcp . 8080");
        assert_eq!(bound.data(), "10.88.0.5 . 80");
        let any = element(None, Protocol::Udp);
        assert_eq!(any.map(), "hostports_any");
        assert_eq!(any.key(), "udp . 8080");
    }

    #[test]
    fn overlaps_are_same_protocol_port_and_address_or_wildcard() {
        let p = |ip: Option<&str>, protocol, host_port| HostPort {
            protocol,
            host_ip: ip.map(|ip| ip.parse().unwrap()),
            host_port,
            container_port: 1,
        };
        let any = p(None, Protocol::Tcp, 80);
        let a = p(Some("192.0.2.1"), Protocol::Tcp, 80);
        let b = p(Some("192.0.2.2"), Protocol::Tcp, 80);
        assert!(any.overlaps(&a) && a.overlaps(&any) && a.overlaps(&a));
        assert!(!a.overlaps(&b));
        assert!(!any.overlaps(&p(None, Protocol::Udp, 80)));
        assert!(!any.overlaps(&p(None, Protocol::Tcp, 81)));
    }
}
