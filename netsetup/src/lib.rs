//! peapod's node networking: the bridge, a veth pair per pod, IPAM over the pod CIDR, routes,
//! sysctls and the nftables table. It knows nothing of CRI or protobuf.
//!
//! Every function here is blocking and may be called from any thread: anything that must run
//! inside another network namespace does so on a dedicated OS thread that ends afterwards
//! (see [`netns::run_in`]), never on the caller's thread. Node-side work ("the node") happens
//! in the network namespace of the calling process.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};

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
    /// Per-pod firewall rules (none yet; hostPorts later), removed first on detach.
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
    /// The subnet to allocate from (the node's pod CIDR).
    pub subnet: IpNet,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no free address left in {subnet}")]
    PoolExhausted { subnet: IpNet },
    #[error("{0}")]
    Unimplemented(&'static str),
}

impl NetError {
    pub fn is_exhausted(&self) -> bool {
        matches!(self, NetError::PoolExhausted { .. })
    }
}

/// Everything a detach could not undo; it carries on past each failure.
#[derive(Debug, thiserror::Error)]
#[error("detach left {} error(s): {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct DetachError(pub Vec<NetError>);

pub struct Network {
    cfg: NodeNetConfig,
}

impl Network {
    /// The real thing: bridge + veth link driver, host-local IPAM in `ipam_dir`, nftables.
    pub fn new(cfg: NodeNetConfig) -> Network {
        Network { cfg }
    }

    pub fn config(&self) -> &NodeNetConfig {
        &self.cfg
    }

    /// Node side, idempotent: bridge exists and is up with the gateway address of every subnet,
    /// `net.ipv4.ip_forward=1`, table `inet peapod` with one masquerade rule per subnet and
    /// forward accept for the bridge.
    pub fn ensure_node(&self, _subnets: &[IpNet]) -> Result<(), NetError> {
        Err(NetError::Unimplemented("ensure_node"))
    }

    /// Lease an IP, create the veth pair, move the pod end into `req.netns` as `eth0`, address,
    /// `lo` up, default route via the gateway. On failure everything made is undone.
    pub fn attach(&self, _req: &AttachRequest<'_>) -> Result<Attachment, NetError> {
        Err(NetError::Unimplemented("attach"))
    }

    /// Undo an attachment: rules, then links, then the lease. Already-gone is success.
    pub fn detach(&self, _owner: &str, _att: &Attachment) -> Result<(), DetachError> {
        Err(DetachError(vec![NetError::Unimplemented("detach")]))
    }

    /// Undo what an interrupted attach may have made, knowing only its owner and host link
    /// name: deletes the host link if present and releases every lease naming `owner`.
    pub fn cleanup_partial(&self, _owner: &str, _host_ifname: &str) -> Result<(), DetachError> {
        Err(DetachError(vec![NetError::Unimplemented(
            "cleanup_partial",
        )]))
    }

    /// All leases on disk.
    pub fn leases(&self) -> Result<Vec<Lease>, NetError> {
        Err(NetError::Unimplemented("leases"))
    }
}

/// Host-side veth name for a sandbox: `pp` + the first 8 hex digits of its id.
pub fn host_ifname(sandbox_id: &str) -> String {
    format!("pp{}", &sandbox_id[..8.min(sandbox_id.len())])
}

/// MTU of the link carrying the default route in the caller's netns, if there is one.
pub fn default_route_mtu() -> Option<u32> {
    None
}

/// First IPv4 address of the link carrying the default route in the caller's netns.
pub fn node_ip() -> Option<IpAddr> {
    None
}

pub mod netns {
    use std::path::Path;

    /// Run `f` on a fresh OS thread that has joined the network namespace at `netns` (and,
    /// when given, other namespaces via further setns calls inside `f`); the thread ends after.
    pub fn run_in<T: Send + 'static>(
        _netns: &Path,
        _f: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<T> {
        Err(std::io::Error::other("unimplemented"))
    }
}
