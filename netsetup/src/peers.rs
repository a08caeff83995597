//! Pods on other nodes: each peer node has its own pod CIDR, reached either straight over
//! the node network (routed: a route per peer CIDR via the peer's node IP) or through a
//! VXLAN overlay (one device, `peapod.vxlan`; per peer a route via the peer's VTEP address,
//! a permanent neighbour entry for that address and an FDB entry sending its MAC to the
//! peer's node IP). VTEP addresses and MACs are derived from what every node knows of the
//! others (the pod CIDR's network address; [`vtep_mac`] of the node IP), so nodes exchange
//! nothing but their node IP and pod CIDR.
//!
//! Traffic between pod CIDRs of the cluster keeps its pod source addresses: the CIDRs are
//! elements of the set `cluster_cidrs`, which the masquerade rule leaves out.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::firewall::TABLE;
use crate::netlink::{Netlink, Route, VxlanSpec, vtep_mac};

/// The VXLAN device of the overlay.
pub const VXLAN_DEVICE: &str = "peapod.vxlan";
/// VXLAN's header cost: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The set of pod CIDRs that traffic between pods is not masqueraded within.
pub const CLUSTER_CIDRS: &str = "cluster_cidrs";

/// How pods reach the pods of other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Mode {
    /// A route per peer pod CIDR via the peer's node IP: the nodes share a link (or the
    /// network between them routes pod CIDRs).
    Routed,
    /// Encapsulated in VXLAN between node IPs.
    Vxlan { vni: u32, port: u16 },
}

/// Another node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

impl Peer {
    /// The peer's VTEP address: its pod CIDR's network address.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.pod_cidr.network()
    }
}

/// This node's side of the cluster network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlay {
    pub mode: Mode,
    /// This node's address on the node network (the VXLAN local address).
    pub node_ip: Option<Ipv4Addr>,
    /// This node's pod CIDR (its network address is the local VTEP address).
    pub pod_cidr: Ipv4Net,
    /// More CIDRs inside which pod traffic is not masqueraded (e.g. the cluster CIDR).
    pub cluster_cidrs: Vec<IpNet>,
}

impl Overlay {
    /// Makes the kernel hold exactly `peers` (routes, neighbours, FDB entries, the
    /// `cluster_cidrs` set); `previous` are the peers last applied, whose routes go when they
    /// are not in `peers` (in VXLAN mode everything on the device is ours and is collected
    /// whatever `previous` says).
    pub fn sync(
        &self,
        nl: &mut Netlink,
        previous: &[Peer],
        peers: &[Peer],
        underlay_mtu: u32,
    ) -> Result<(), NetError> {
        let wanted: BTreeSet<Ipv4Net> = peers.iter().map(|p| p.pod_cidr).collect();
        for gone in previous.iter().filter(|p| !wanted.contains(&p.pod_cidr)) {
            nl.delete_route(IpNet::V4(gone.pod_cidr))?;
        }
        match self.mode {
            Mode::Routed => {
                if nl.link(VXLAN_DEVICE)?.is_some() {
                    nl.delete_link(VXLAN_DEVICE)?;
                }
                for p in peers {
                    nl.replace_route(&Route {
                        dst: IpNet::V4(p.pod_cidr),
                        gateway: Some(IpAddr::V4(p.node_ip)),
                        oif: None,
                        onlink: false,
                    })?;
                }
            }
            Mode::Vxlan { vni, port } => self.sync_vxlan(nl, vni, port, peers, underlay_mtu)?,
        }
        Ok(())
    }

    fn sync_vxlan(
        &self,
        nl: &mut Netlink,
        vni: u32,
        port: u16,
        peers: &[Peer],
        underlay_mtu: u32,
    ) -> Result<(), NetError> {
        let local = self.node_ip.ok_or(NetError::NoNodeIp)?;
        let spec = VxlanSpec {
            name: VXLAN_DEVICE,
            vni,
            port,
            local,
            underlay: None,
            mtu: underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
            mac: vtep_mac(local),
        };
        let right = nl
            .vxlan_info(VXLAN_DEVICE)?
            .is_some_and(|i| i.matches(&spec));
        if !right {
            if nl.link(VXLAN_DEVICE)?.is_some() {
                nl.delete_link(VXLAN_DEVICE)?;
            }
            nl.create_vxlan(&spec)?;
        }
        let dev = nl.existing_link(VXLAN_DEVICE)?;
        let vtep = IpNet::V4(Ipv4Net::new(self.pod_cidr.network(), 32).expect("a /32"));
        if !nl.addresses(dev.index)?.contains(&vtep) {
            nl.add_address(&dev, vtep)?;
        }
        nl.set_up(&dev)?;
        let want_neigh: BTreeSet<(IpAddr, [u8; 6])> = peers
            .iter()
            .map(|p| (IpAddr::V4(p.vtep_ip()), vtep_mac(p.node_ip)))
            .collect();
        let want_fdb: BTreeSet<([u8; 6], IpAddr)> = peers
            .iter()
            .map(|p| (vtep_mac(p.node_ip), IpAddr::V4(p.node_ip)))
            .collect();
        for (ip, mac) in nl.neighbours(dev.index)? {
            if !want_neigh.contains(&(ip, mac)) {
                nl.delete_neighbour(dev.index, ip)?;
            }
        }
        for (mac, dst) in nl.fdb(dev.index)? {
            if !want_fdb.contains(&(mac, dst)) {
                nl.delete_fdb(dev.index, mac, dst)?;
            }
        }
        let wanted: BTreeSet<IpNet> = peers.iter().map(|p| IpNet::V4(p.pod_cidr)).collect();
        for r in nl.routes()? {
            if r.oif == Some(dev.index) && r.gateway.is_some() && !wanted.contains(&r.dst) {
                nl.delete_route(r.dst)?;
            }
        }
        for p in peers {
            nl.replace_neighbour(dev.index, IpAddr::V4(p.vtep_ip()), vtep_mac(p.node_ip))?;
            nl.replace_fdb(dev.index, vtep_mac(p.node_ip), IpAddr::V4(p.node_ip))?;
            nl.replace_route(&Route {
                dst: IpNet::V4(p.pod_cidr),
                gateway: Some(IpAddr::V4(p.vtep_ip())),
                oif: Some(dev.index),
                onlink: true,
            })?;
        }
        Ok(())
    }

    /// The CIDRs of the `cluster_cidrs` set: this node's, the peers', and the configured
    /// ones; only the outermost of overlapping ones (an interval set refuses overlaps).
    pub fn cluster_cidrs(&self, peers: &[Peer]) -> Vec<Ipv4Net> {
        let mut cidrs: Vec<Ipv4Net> = std::iter::once(self.pod_cidr)
            .chain(peers.iter().map(|p| p.pod_cidr))
            .chain(self.cluster_cidrs.iter().filter_map(|c| match c {
                IpNet::V4(v4) => Some(*v4),
                IpNet::V6(_) => None,
            }))
            .map(|c| c.trunc())
            .collect();
        cidrs.sort();
        cidrs.dedup();
        cidrs
            .iter()
            .filter(|c| !cidrs.iter().any(|o| o != *c && o.contains(*c)))
            .copied()
            .collect()
    }
}

/// Replaces the elements of `cluster_cidrs`, in one transaction.
pub fn cidrs_script(cidrs: &[Ipv4Net]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {TABLE}");
    declare(&mut s);
    let _ = writeln!(s, "flush set inet {TABLE} {CLUSTER_CIDRS}");
    if !cidrs.is_empty() {
        let list: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "add element inet {TABLE} {CLUSTER_CIDRS} {{ {} }}",
            list.join(", ")
        );
    }
    s
}

/// The `cluster_cidrs` set, added if missing.
pub fn declare(s: &mut String) {
    let _ = writeln!(
        s,
        "add set inet {TABLE} {CLUSTER_CIDRS} {{ type ipv4_addr; flags interval; }}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_cidrs_keep_the_outermost_of_overlapping_ones() {
        let o = Overlay {
            mode: Mode::Routed,
            node_ip: None,
            pod_cidr: "10.88.1.0/24".parse().unwrap(),
            cluster_cidrs: vec![
                "10.88.0.0/16".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
        };
        let peers = [Peer {
            name: "b".into(),
            node_ip: "192.0.2.2".parse().unwrap(),
            pod_cidr: "10.99.0.0/24".parse().unwrap(),
        }];
        let s = cidrs_script(&o.cluster_cidrs(&peers));
        assert!(s.contains("flush set inet peapod cluster_cidrs\n"), "{s}");
        assert!(
            s.contains("add element inet peapod cluster_cidrs { 10.88.0.0/16, 10.99.0.0/24 }\n"),
            "{s}"
        );
        assert_eq!(peers[0].vtep_ip(), "10.99.0.0".parse::<Ipv4Addr>().unwrap());
    }
}
