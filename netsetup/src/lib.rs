//! peapod's node networking: the bridge, a veth pair per pod, IPAM over the pod CIDR, routes,
//! sysctls and the nftables table. It knows nothing of CRI or protobuf.
//!
//! Every function here is blocking and may be called from any thread: anything that must run
//! inside another network namespace does so on a dedicated OS thread that ends afterwards
//! (see [`netns::run_in`]), never on the caller's thread. Node-side work ("the node") happens
//! in the network namespace of the calling process.

//!
//! The pieces are strategies behind small traits, so that other modes slot in later:
//! [`driver::LinkDriver`] (bridge + veth now; routed or VXLAN later), [`ipam::Ipam`]
//! (lease files now) and [`firewall::Firewall`] (nftables, or none). Kernel links, addresses
//! and routes go through [`netlink::Netlink`], a small synchronous rtnetlink wrapper.

pub mod conntrack;
pub mod driver;
mod error;
pub mod explain;
pub mod firewall;
pub mod hostport;
pub mod ipam;
pub mod netlink;
pub mod netns;
mod network;
pub mod nftnl;
pub mod peers;
mod reaper;
pub mod service;
pub mod sysctl;
#[cfg(test)]
mod testing;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use error::chain;
pub use error::{DetachError, NetError};
pub use network::{Network, check_ifname};

/// Name of the pod end of the veth pair, inside the pod's netns.
pub const POD_IFNAME: &str = "eth0";

/// Settings of the node network, fixed for the life of a [`Network`].
#[derive(Clone, Debug)]
pub struct NodeNetConfig {
    /// Name of the node bridge, e.g. `peapod0`.
    pub bridge: String,
    /// MTU for the bridge and both veth ends.
    pub mtu: u32,
    /// Directory holding one lease file per IP (e.g. `/var/lib/peapod/ipam/peapod`).
    pub ipam_dir: PathBuf,
}

/// What `attach` made for one pod; persisted by the caller and handed back to `detach`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The pod's address and the prefix length of its subnet.
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub gateway: IpAddr,
    /// Host end of the veth pair, on the bridge (`pp` + 8 hex).
    pub host_ifname: String,
    /// Pod end, inside the pod netns (`eth0`).
    pub pod_ifname: String,
    /// MAC address of the pod end.
    pub mac: String,
    /// Per-pod firewall rules, removed first on detach: the ids of the pod's hostPort map
    /// elements ([`hostport::HostPortElement`]).
    #[serde(default)]
    pub rules: Vec<String>,
}

/// One IP lease as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub owner: String,
}

pub struct AttachRequest<'a> {
    /// The sandbox id; written into the lease file.
    pub owner: &'a str,
    /// Path of the pod's netns pin, e.g. `/run/netns/peapod-<id>`.
    pub netns: &'a Path,
    /// Name for the host end of the veth, from [`host_ifname`].
    pub host_ifname: &'a str,
    /// Name of the pod end inside `netns`: [`POD_IFNAME`] for peapod's pods; a CNI runtime
    /// names its own.
    pub pod_ifname: &'a str,
    /// The subnet to allocate from (the node's pod CIDR).
    pub subnet: IpNet,
    /// hostPort mappings to forward to the pod.
    pub host_ports: &'a [hostport::HostPort],
}

/// Host-side veth name for a sandbox: `pp` + the first 8 hex digits of its id.
pub fn host_ifname(sandbox_id: &str) -> String {
    let hex: String = sandbox_id.chars().take(8).collect();
    format!("pp{hex}")
}

/// True for names [`host_ifname`] makes: `pp` + 8 lowercase hex digits.
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == 10
        && name.starts_with("pp")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// MTU of the link carrying the default route in the caller's netns, if there is one.
pub fn default_route_mtu() -> Option<u32> {
    let (_, link) = default_route_link()?;
    link.mtu
}

/// First IPv4 address of the link carrying the default route in the caller's netns.
pub fn node_ip() -> Option<IpAddr> {
    let (mut nl, link) = default_route_link()?;
    let addresses = nl
        .addresses(link.index)
        .inspect_err(|error| tracing::debug!(error = %chain(error), "cannot list addresses"))
        .ok()?;
    addresses.iter().map(IpNet::addr).find(IpAddr::is_ipv4)
}

fn default_route_link() -> Option<(netlink::Netlink, netlink::Link)> {
    let lookup = || -> Result<Option<(netlink::Netlink, netlink::Link)>, netlink::NetlinkError> {
        let mut nl = netlink::Netlink::open()?;
        let Some(index) = nl.default_route_link()? else {
            return Ok(None);
        };
        let link = nl.links()?.into_iter().find(|l| l.index == index);
        Ok(link.map(|link| (nl, link)))
    };
    lookup()
        .inspect_err(
            |error| tracing::debug!(error = %chain(error), "cannot find the default route"),
        )
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_pp_and_eight_characters_of_the_id() {
        assert_eq!(host_ifname("0123456789abcdef"), "pp01234567");
        assert_eq!(host_ifname("abc"), "ppabc");
        assert!(host_ifname(&"f".repeat(64)).len() <= 15);
    }

    #[test]
    fn host_ifnames_are_recognised() {
        assert!(is_host_ifname(&host_ifname(&"0a".repeat(32))));
        for not_ours in [
            "peapod0",
            "pp0123456",
            "pp0123456789",
            "ppABCDEF01",
            "eth0",
            "ppzzzzzzzz",
        ] {
            assert!(!is_host_ifname(not_ours), "{not_ours}");
        }
    }

    #[test]
    fn attachment_round_trips_and_rules_default_to_none() {
        let json = r#"{"ip":"10.88.0.2","prefix_len":16,"gateway":"10.88.0.1",
            "host_ifname":"pp01234567","pod_ifname":"eth0","mac":"aa:bb:cc:dd:ee:ff"}"#;
        let att: Attachment = serde_json::from_str(json).unwrap();
        assert!(att.rules.is_empty());
        let again: Attachment =
            serde_json::from_str(&serde_json::to_string(&att).unwrap()).unwrap();
        assert_eq!(att, again);
    }
}
