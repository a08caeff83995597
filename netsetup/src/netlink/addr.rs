//! Addresses and routes.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Link, Netlink, NetlinkError};

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

impl Netlink {
    /// The addresses (with their prefix) of the link with index `index`.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let answers = self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .map_err(|source| NetlinkError::Dump {
                what: "addresses",
                source,
            })?;
        let mut out = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewAddress(msg) = answer else {
                continue;
            };
            if msg.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on p2p links.
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address)
                && let Ok(net) = IpNet::new(ip, msg.header.prefix_len)
            {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// Adds `addr` (address and prefix) to `link`. Fails with EEXIST if it is already there.
    pub fn add_address(&mut self, link: &Link, addr: IpNet) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr.addr());
        msg.header.prefix_len = addr.prefix_len();
        msg.header.scope = AddressScope::Universe;
        msg.header.index = link.index;
        msg.attributes = vec![
            AddressAttribute::Local(addr.addr()),
            AddressAttribute::Address(addr.addr()),
        ];
        if let IpNet::V4(v4) = addr
            && v4.prefix_len() < 31
        {
            msg.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
        self.execute(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|source| NetlinkError::AddAddress {
            ifname: link.name.clone(),
            addr,
            source,
        })
    }

    /// Adds the default route of the main table via `gateway` out of `link`.
    pub fn add_default_route(&mut self, link: &Link, gateway: IpAddr) -> Result<(), NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header = main_table_header(family(gateway));
        msg.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::from(gateway)),
            RouteAttribute::Oif(link.index),
        ];
        self.execute(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|source| NetlinkError::AddRoute {
            ifname: link.name.clone(),
            gateway,
            source,
        })
    }

    /// Index of the link carrying the IPv4 default route of the main table, if any.
    pub fn default_route_link(&mut self) -> Result<Option<u32>, NetlinkError> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        let answers = self
            .dump(RouteNetlinkMessage::GetRoute(query))
            .map_err(|source| NetlinkError::Dump {
                what: "routes",
                source,
            })?;
        Ok(answers.iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewRoute(route)
                if route.header.destination_prefix_length == 0
                    && route.header.table == RouteHeader::RT_TABLE_MAIN
                    && route.header.kind == RouteType::Unicast =>
            {
                route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(index) => Some(*index),
                    _ => None,
                })
            }
            _ => None,
        }))
    }
}

fn main_table_header(address_family: AddressFamily) -> RouteHeader {
    RouteHeader {
        address_family,
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    }
}
