//! Static neighbour (ARP/NDP) entries, and the FDB entries of a VXLAN device that say which
//! remote VTEP a MAC address is behind.

use std::io;
use std::net::IpAddr;

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{REPLACE, family};
use crate::netlink::{EntryOp, Netlink, NetlinkError};

impl Netlink {
    /// Adds a permanent neighbour entry `ip` → `mac` on the link with index `ifindex`,
    /// replacing an entry for the same address.
    pub fn replace_neighbour(
        &mut self,
        ifindex: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let mut msg = neighbour_message(family(ip), ifindex);
        msg.attributes = vec![
            NeighbourAttribute::Destination(ip.into()),
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        ];
        self.execute(RouteNetlinkMessage::NewNeighbour(msg), REPLACE)
            .map_err(|source| neighbour_error(EntryOp::Replace, ifindex, ip, source))
    }

    /// Deletes the neighbour entry for `ip` on the link with index `ifindex`; `Ok(false)`:
    /// there was none.
    pub fn delete_neighbour(&mut self, ifindex: u32, ip: IpAddr) -> Result<bool, NetlinkError> {
        let mut msg = neighbour_message(family(ip), ifindex);
        msg.attributes = vec![NeighbourAttribute::Destination(ip.into())];
        self.delete(RouteNetlinkMessage::DelNeighbour(msg), libc::ENOENT)
            .map_err(|e| neighbour_error(EntryOp::Delete, ifindex, ip, e))
    }

    /// The permanent neighbour entries (IPv4 and IPv6) of the link with index `ifindex`.
    pub fn neighbours(&mut self, ifindex: u32) -> Result<Vec<(IpAddr, [u8; 6])>, NetlinkError> {
        let query = neighbour_message(AddressFamily::Unspec, 0);
        let entries = self.neighbour_dump(query, ifindex, "neighbours")?;
        Ok(entries
            .iter()
            .filter(|m| m.header.state == NeighbourState::Permanent)
            .filter_map(|m| Some((neighbour_ip(m)?, neighbour_mac(m)?)))
            .collect())
    }

    /// Points the VXLAN FDB entry for `mac` on the device with index `ifindex` at the remote
    /// VTEP `dst`, replacing the entry's destination if there is one: one VTEP per MAC.
    pub fn replace_fdb(
        &mut self,
        ifindex: u32,
        mac: [u8; 6],
        dst: IpAddr,
    ) -> Result<(), NetlinkError> {
        let msg = fdb_message(ifindex, mac, dst);
        self.execute(RouteNetlinkMessage::NewNeighbour(msg), REPLACE)
            .map_err(|source| fdb_error(EntryOp::Replace, ifindex, mac, dst, source))
    }

    /// Deletes the FDB entry `mac` → `dst` of the device with index `ifindex`; `Ok(false)`:
    /// there was none.
    pub fn delete_fdb(
        &mut self,
        ifindex: u32,
        mac: [u8; 6],
        dst: IpAddr,
    ) -> Result<bool, NetlinkError> {
        let msg = fdb_message(ifindex, mac, dst);
        self.delete(RouteNetlinkMessage::DelNeighbour(msg), libc::ENOENT)
            .map_err(|e| fdb_error(EntryOp::Delete, ifindex, mac, dst, e))
    }

    /// The FDB entries with a remote destination of the device with index `ifindex`, one per
    /// (MAC, destination) pair.
    pub fn fdb(&mut self, ifindex: u32) -> Result<Vec<([u8; 6], IpAddr)>, NetlinkError> {
        let query = neighbour_message(AddressFamily::Bridge, 0);
        let entries = self.neighbour_dump(query, ifindex, "fdb entries")?;
        Ok(entries
            .iter()
            .filter_map(|m| Some((neighbour_mac(m)?, neighbour_ip(m)?)))
            .collect())
    }

    /// Every IPv4 neighbour entry of the link with index `ifindex`, whatever its state
    /// (`reachable`, `stale`, `permanent`…): what `ip neigh show dev` prints.
    pub fn arp_entries(
        &mut self,
        ifindex: u32,
    ) -> Result<Vec<(IpAddr, [u8; 6], String)>, NetlinkError> {
        let query = neighbour_message(AddressFamily::Inet, 0);
        let entries = self.neighbour_dump(query, ifindex, "neighbours")?;
        Ok(entries
            .iter()
            .filter_map(|m| {
                let state = format!("{:?}", m.header.state).to_lowercase();
                Some((neighbour_ip(m)?, neighbour_mac(m)?, state))
            })
            .collect())
    }

    /// The bridge's forwarding entry for `mac`: the index of the port it was learnt on (or
    /// set for), if any.
    pub fn bridge_port_of(
        &mut self,
        bridge: u32,
        mac: [u8; 6],
    ) -> Result<Option<u32>, NetlinkError> {
        let query = neighbour_message(AddressFamily::Bridge, 0);
        let answers = self
            .dump(RouteNetlinkMessage::GetNeighbour(query))
            .map_err(|source| NetlinkError::Dump {
                what: "fdb entries",
                source,
            })?;
        Ok(answers.into_iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewNeighbour(m)
                if neighbour_mac(&m) == Some(mac)
                    && m.attributes.iter().any(
                        |a| matches!(a, NeighbourAttribute::Controller(b) if *b == bridge),
                    ) =>
            {
                Some(m.header.ifindex)
            }
            _ => None,
        }))
    }

    /// Dumps neighbour-table messages and keeps those of `ifindex` (the kernel filters dumps
    /// by link only in strict mode, which this socket does not ask for).
    fn neighbour_dump(
        &mut self,
        query: NeighbourMessage,
        ifindex: u32,
        what: &'static str,
    ) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        let answers = self
            .dump(RouteNetlinkMessage::GetNeighbour(query))
            .map_err(|source| NetlinkError::Dump { what, source })?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewNeighbour(m) if m.header.ifindex == ifindex => Some(m),
                _ => None,
            })
            .collect())
    }
}

fn neighbour_message(family: AddressFamily, ifindex: u32) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg
}

/// An `AF_BRIDGE` neighbour message for the device's own FDB (`NTF_SELF`), not a bridge's.
fn fdb_message(ifindex: u32, mac: [u8; 6], dst: IpAddr) -> NeighbourMessage {
    let mut msg = neighbour_message(AddressFamily::Bridge, ifindex);
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        NeighbourAttribute::Destination(dst.into()),
    ];
    msg
}

fn neighbour_ip(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        // In AF_BRIDGE messages the crate cannot tell the address family; the length can.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(&b[..]).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(&b[..]).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

fn neighbour_mac(msg: &NeighbourMessage) -> Option<[u8; 6]> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

fn format_mac(mac: [u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

fn neighbour_error(op: EntryOp, ifindex: u32, ip: IpAddr, source: io::Error) -> NetlinkError {
    NetlinkError::Neighbour {
        op,
        ifindex,
        ip,
        source,
    }
}

fn fdb_error(
    op: EntryOp,
    ifindex: u32,
    mac: [u8; 6],
    dst: IpAddr,
    source: io::Error,
) -> NetlinkError {
    NetlinkError::Fdb {
        op,
        ifindex,
        mac: format_mac(mac),
        dst,
        source,
    }
}
