//! Multi-node pod networks: a VXLAN device, routes to other nodes' pod subnets, and the static
//! neighbour and FDB entries that let the VXLAN reach other nodes without learning or multicast.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{EntryOp, LinkOp, Netlink, NetlinkError};

mod neighbour;
#[cfg(test)]
mod tests;

/// Create, or replace what is there: for idempotent setup.
const REPLACE: u16 = NLM_F_CREATE | NLM_F_REPLACE;

/// A VXLAN device to create: `ip link add NAME type vxlan id VNI dstport PORT local LOCAL
/// nolearning [dev UNDERLAY]`, with the given MTU and MAC address.
#[derive(Clone, Copy, Debug)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    /// UDP destination port, host order (4789 is the IANA one).
    pub port: u16,
    /// This node's underlay address, the source of the encapsulated packets.
    pub local: Ipv4Addr,
    /// Index of the underlay link the encapsulated packets leave by.
    pub underlay: Option<u32>,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// A VXLAN device as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanInfo {
    pub index: u32,
    pub vni: u32,
    /// UDP destination port, host order.
    pub port: u16,
    /// `0.0.0.0` when the device has no fixed source address.
    pub local: Ipv4Addr,
    pub underlay: Option<u32>,
    pub learning: bool,
    pub mtu: u32,
    pub mac: [u8; 6],
}

impl VxlanInfo {
    /// Whether the device is what [`Netlink::create_vxlan`] would make of `spec`, so that it
    /// can be kept rather than recreated.
    pub fn matches(&self, spec: &VxlanSpec<'_>) -> bool {
        self.vni == spec.vni
            && self.port == spec.port
            && self.local == spec.local
            && self.underlay == spec.underlay
            && !self.learning
            && self.mtu == spec.mtu
            && self.mac == spec.mac
    }
}

/// A route of the main table: to `dst` via `gateway` (none: directly connected) out of `oif`;
/// `onlink` declares the gateway reachable on `oif` whatever its addresses say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
}

/// The VTEP MAC address of the node whose underlay address is `node_ip`: locally administered,
/// unicast, and derived from the address so that peers need not exchange MACs.
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = node_ip.octets();
    [0x02, 0x70, a, b, c, d]
}

impl Netlink {
    /// Creates a VXLAN device, down, without learning. Fails with EEXIST if the name is taken.
    pub fn create_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<(), NetlinkError> {
        let mut data = vec![
            InfoVxlan::Id(spec.vni),
            // The crate writes the port in network order; it takes it in host order.
            InfoVxlan::Port(spec.port),
            InfoVxlan::Local(spec.local),
            InfoVxlan::Learning(false),
        ];
        if let Some(underlay) = spec.underlay {
            data.push(InfoVxlan::Link(underlay));
        }
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(spec.name.to_owned()),
            LinkAttribute::Mtu(spec.mtu),
            LinkAttribute::Address(spec.mac.to_vec()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(data)),
            ]),
        ];
        self.execute(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|source| link_error(LinkOp::Create, spec.name, source))
    }

    /// The VXLAN device named `name`, or `None` when there is none: no link of that name, or
    /// a link of another kind (which [`Netlink::link`] tells apart).
    pub fn vxlan_info(&mut self, name: &str) -> Result<Option<VxlanInfo>, NetlinkError> {
        let mut query = LinkMessage::default();
        query
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        let msg = match self.get(RouteNetlinkMessage::GetLink(query)) {
            Ok(RouteNetlinkMessage::NewLink(msg)) => Ok(msg),
            Ok(_) => Err(invalid("unexpected answer")),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => Err(e),
        }
        .map_err(|e| link_error(LinkOp::LookUp, name, e))?;
        let (mut kind, mut data, mut mtu, mut mac) = (None, None, None, None);
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => kind = Some(k.clone()),
                            LinkInfo::Data(InfoData::Vxlan(d)) => data = Some(d),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if kind != Some(InfoKind::Vxlan) {
            return Ok(None);
        }
        let (Some(data), Some(mtu), Some(mac)) = (data, mtu, mac) else {
            let source = invalid("vxlan link without data, mtu or mac address");
            return Err(link_error(LinkOp::LookUp, name, source));
        };
        let mut info = VxlanInfo {
            index: msg.header.index,
            vni: 0,
            port: 0,
            local: Ipv4Addr::UNSPECIFIED,
            underlay: None,
            learning: false,
            mtu,
            mac,
        };
        for attr in data {
            match attr {
                InfoVxlan::Id(vni) => info.vni = *vni,
                InfoVxlan::Port(port) => info.port = *port,
                InfoVxlan::Local(ip) => info.local = *ip,
                InfoVxlan::Link(index) if *index != 0 => info.underlay = Some(*index),
                InfoVxlan::Learning(on) => info.learning = *on,
                _ => {}
            }
        }
        Ok(Some(info))
    }

    /// Adds `route` to the main table (protocol static), replacing a route to the same
    /// destination.
    pub fn replace_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header = RouteHeader {
            address_family: family(route.dst.addr()),
            destination_prefix_length: route.dst.prefix_len(),
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Static,
            scope: match route.gateway {
                Some(_) => RouteScope::Universe,
                None => RouteScope::Link,
            },
            kind: RouteType::Unicast,
            flags: match route.onlink {
                true => RouteFlags::Onlink,
                false => RouteFlags::empty(),
            },
            ..RouteHeader::default()
        };
        msg.attributes
            .push(RouteAttribute::Destination(route.dst.addr().into()));
        if let Some(gateway) = route.gateway {
            msg.attributes.push(RouteAttribute::Gateway(gateway.into()));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        self.execute(RouteNetlinkMessage::NewRoute(msg), REPLACE)
            .map_err(|source| route_error(EntryOp::Replace, route.dst, source))
    }

    /// Deletes the main-table route to `dst`; `Ok(false)`: there was none.
    pub fn delete_route(&mut self, dst: IpNet) -> Result<bool, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header = RouteHeader {
            address_family: family(dst.addr()),
            destination_prefix_length: dst.prefix_len(),
            table: RouteHeader::RT_TABLE_MAIN,
            // Matches a route of any scope, protocol and type.
            scope: RouteScope::NoWhere,
            ..RouteHeader::default()
        };
        msg.attributes
            .push(RouteAttribute::Destination(dst.addr().into()));
        self.delete(RouteNetlinkMessage::DelRoute(msg), libc::ESRCH)
            .map_err(|e| route_error(EntryOp::Delete, dst, e))
    }

    /// The IPv4 unicast routes of the main table, whoever made them.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        let answers = self
            .dump(RouteNetlinkMessage::GetRoute(query))
            .map_err(|source| NetlinkError::Dump {
                what: "routes",
                source,
            })?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewRoute(msg) => main_unicast_route(msg),
                _ => None,
            })
            .collect())
    }

    /// Sends a delete request; `Ok(false)` when the kernel answers `absent`: nothing to delete.
    fn delete(&mut self, msg: RouteNetlinkMessage, absent: i32) -> io::Result<bool> {
        match self.execute(msg, 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(absent) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn main_unicast_route(msg: &RouteMessage) -> Option<Route> {
    let mut table = u32::from(msg.header.table);
    let (mut dst, mut gateway, mut oif) = (None, None, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = route_ip(a),
            RouteAttribute::Gateway(a) => gateway = route_ip(a),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let dst = dst.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    Some(Route {
        dst: IpNet::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
    })
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn link_error(op: LinkOp, ifname: &str, source: io::Error) -> NetlinkError {
    NetlinkError::Link {
        op,
        ifname: ifname.to_owned(),
        source,
    }
}

fn route_error(op: EntryOp, dst: IpNet, source: io::Error) -> NetlinkError {
    NetlinkError::Route { op, dst, source }
}
