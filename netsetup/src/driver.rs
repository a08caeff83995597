//! Link drivers: how a pod's network interface reaches the node.
//!
//! [`BridgeVeth`] is the one there is: a Linux bridge on the node carrying the gateway
//! addresses, and a veth pair per pod with the host end on the bridge. A routed or VXLAN mode
//! would be another [`LinkDriver`].

use std::fs::File;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::NetError;
use crate::ipam::gateway;
use crate::netlink::{Link, Netlink, VethPair};
use crate::netns;
use crate::reaper::LinkReaper;

/// The pod link to make.
#[derive(Clone, Debug)]
pub struct PodLinkSpec<'a> {
    /// The pod's network namespace (a pin or `/proc/…/ns/net` path).
    pub netns: &'a Path,
    /// Name of the node side of the link.
    pub host_ifname: &'a str,
    /// Name of the pod side of the link, inside `netns`.
    pub pod_ifname: &'a str,
    /// The pod's address with the prefix length of its subnet.
    pub address: IpNet,
    pub gateway: IpAddr,
}

/// What a driver made for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    /// Hardware address of the pod side.
    pub mac: String,
}

/// A way to connect pods to the node. All node-side work happens in the caller's netns.
pub trait LinkDriver: Send + Sync {
    /// Makes the node side ready to serve `subnets` (idempotent). Returns every pod subnet the
    /// node now serves, including those set up by earlier calls.
    fn ensure_node(&self, subnets: &[IpNet]) -> Result<Vec<IpNet>, NetError>;

    /// Makes and configures the pod's link. On failure it leaves no link behind.
    fn attach(&self, spec: &PodLinkSpec<'_>) -> Result<PodLink, NetError>;

    /// Cuts the pod's link, known by its node-side name, off at once (no more traffic through
    /// it) and removes it, possibly in the background. `Ok(false)`: it was already gone.
    fn detach(&self, host_ifname: &str) -> Result<bool, NetError>;

    /// Returns once links detached earlier are really gone.
    fn settle(&self) {}

    /// Deletes every pod link (by peapod's naming) for which `keep` says no; returns their
    /// names. For start-up garbage collection.
    fn collect_links(&self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>, NetError>;

    /// Node-side names of every pod link there is, for garbage collection.
    fn pod_links(&self) -> Result<Vec<String>, NetError>;

    /// Every link named like a pod's host end, on the bridge or cut off it.
    fn host_links(&self) -> Result<Vec<String>, NetError>;
}

/// A bridge on the node, a veth pair per pod.
#[derive(Clone, Debug)]
pub struct BridgeVeth {
    bridge: String,
    mtu: u32,
    reaper: LinkReaper,
}

impl BridgeVeth {
    pub fn new(bridge: impl Into<String>, mtu: u32) -> BridgeVeth {
        BridgeVeth {
            bridge: bridge.into(),
            mtu,
            reaper: LinkReaper::default(),
        }
    }

    /// The bridge, made if missing, with the configured MTU and up.
    fn ensure_bridge(&self, nl: &mut Netlink) -> Result<Link, NetError> {
        if nl.link(&self.bridge)?.is_none() {
            match nl.create_bridge(&self.bridge, self.mtu) {
                Err(e) if e.errno() == Some(libc::EEXIST) => {} // made concurrently
                other => other?,
            }
        }
        let bridge = nl.existing_link(&self.bridge)?;
        if bridge.kind.as_deref() != Some("bridge") {
            return Err(NetError::NotABridge {
                name: bridge.name,
                kind: bridge.kind.unwrap_or_else(|| "plain device".into()),
            });
        }
        if bridge.mtu != Some(self.mtu) {
            nl.set_mtu(&bridge, self.mtu)?;
        }
        if !bridge.up {
            nl.set_up(&bridge)?;
        }
        Ok(bridge)
    }

    fn make_pod_link(&self, spec: &PodLinkSpec<'_>, nl: &mut Netlink) -> Result<PodLink, NetError> {
        let host = nl.existing_link(spec.host_ifname)?;
        nl.set_hairpin(&host, true)?;
        let pod_ifname = spec.pod_ifname.to_owned();
        let (address, gateway) = (spec.address, spec.gateway);
        let mac = netns::run_in(spec.netns, move || {
            configure_pod_side(&pod_ifname, address, gateway)
        })
        .map_err(|source| NetError::Netns {
            path: spec.netns.to_owned(),
            source,
        })??;
        Ok(PodLink { mac })
    }
}

/// Inside the pod's netns: address the pod link, bring it and `lo` up, default route.
fn configure_pod_side(ifname: &str, address: IpNet, gateway: IpAddr) -> Result<String, NetError> {
    let mut nl = Netlink::open()?;
    let link = nl.existing_link(ifname)?;
    nl.add_address(&link, address)?;
    nl.set_up(&link)?;
    let lo = nl.existing_link("lo")?;
    if !lo.up {
        nl.set_up(&lo)?;
    }
    nl.add_default_route(&link, gateway)?;
    Ok(link.mac.unwrap_or_default())
}

fn open_netns(path: &Path) -> Result<File, NetError> {
    File::open(path).map_err(|source| NetError::Netns {
        path: PathBuf::from(path),
        source,
    })
}

/// Whether a bridge address marks a pod subnet: it is the subnet's gateway (first host).
fn served_subnet(addr: IpNet) -> Option<IpNet> {
    let subnet = addr.trunc();
    let link_local = matches!(addr.addr(), IpAddr::V6(v6) if is_link_local(v6));
    (!link_local && gateway(subnet) == addr.addr()).then_some(subnet)
}

fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

impl LinkDriver for BridgeVeth {
    fn ensure_node(&self, subnets: &[IpNet]) -> Result<Vec<IpNet>, NetError> {
        let mut nl = Netlink::open()?;
        let bridge = self.ensure_bridge(&mut nl)?;
        let existing = nl.addresses(bridge.index)?;
        for subnet in subnets {
            let subnet = subnet.trunc();
            let addr = IpNet::new(gateway(subnet), subnet.prefix_len())
                .expect("prefix length comes from a valid subnet");
            if existing.contains(&addr) {
                continue;
            }
            match nl.add_address(&bridge, addr) {
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                other => other?,
            }
        }
        let mut served: Vec<IpNet> = existing.into_iter().filter_map(served_subnet).collect();
        served.extend(subnets.iter().map(IpNet::trunc));
        served.sort();
        served.dedup();
        Ok(served)
    }

    fn attach(&self, spec: &PodLinkSpec<'_>) -> Result<PodLink, NetError> {
        let pod_netns = open_netns(spec.netns)?;
        let mut nl = Netlink::open()?;
        let bridge = nl.existing_link(&self.bridge)?;
        nl.create_veth_pair(&VethPair {
            host: spec.host_ifname,
            peer: spec.pod_ifname,
            mtu: self.mtu,
            master: Some(bridge.index),
            peer_netns: pod_netns.as_fd(),
        })?;
        drop(pod_netns);
        self.make_pod_link(spec, &mut nl).inspect_err(|_| {
            // Deleting the host end takes the pod end with it.
            if let Err(error) = nl.delete_link(spec.host_ifname) {
                tracing::warn!(ifname = spec.host_ifname, error = %crate::chain(&error),
                    "cannot roll back the veth pair");
            }
        })
    }

    fn detach(&self, host_ifname: &str) -> Result<bool, NetError> {
        let mut nl = Netlink::open()?;
        if !nl.isolate(host_ifname)? {
            return Ok(false);
        }
        self.reaper.queue(nl, host_ifname.to_owned());
        Ok(true)
    }

    fn settle(&self) {
        self.reaper.wait_idle();
    }

    fn collect_links(&self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>, NetError> {
        let mut nl = Netlink::open()?;
        let mut gone = Vec::new();
        for link in nl.links()? {
            if crate::is_host_ifname(&link.name) && !keep(&link.name) {
                nl.delete_link(&link.name)?;
                gone.push(link.name);
            }
        }
        Ok(gone)
    }

    fn host_links(&self) -> Result<Vec<String>, NetError> {
        let mut nl = Netlink::open()?;
        Ok(nl
            .links()?
            .into_iter()
            .map(|l| l.name)
            .filter(|n| crate::is_host_ifname(n))
            .collect())
    }

    fn pod_links(&self) -> Result<Vec<String>, NetError> {
        let mut nl = Netlink::open()?;
        let Some(bridge) = nl.link(&self.bridge)? else {
            return Ok(Vec::new());
        };
        let links = nl.links()?;
        Ok(links
            .into_iter()
            .filter(|l| l.master == Some(bridge.index))
            .map(|l| l.name)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gateway_addresses_mark_subnets() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            served_subnet(net("10.88.0.1/16")),
            Some(net("10.88.0.0/16"))
        );
        assert_eq!(served_subnet(net("10.88.0.7/16")), None);
        assert_eq!(served_subnet(net("fe80::1/64")), None);
        assert_eq!(served_subnet(net("fd00::1/64")), Some(net("fd00::/64")));
    }
}
