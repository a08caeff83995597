//! The crate's top-level errors: each module has its own enum, wrapped here.

use std::error::Error;
use std::io;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::firewall::FirewallError;
use crate::ipam::IpamError;
use crate::netlink::NetlinkError;
use crate::sysctl::SysctlError;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The subnet has no free address (`ResourceExhausted` for a CRI caller).
    #[error("no free address left in {subnet}")]
    PoolExhausted { subnet: IpNet },
    /// The bridge name is taken by a link of another kind.
    #[error("link {name} exists but is a {kind}, not a bridge")]
    NotABridge { name: String, kind: String },
    #[error("invalid interface name {ifname:?}")]
    InvalidIfname { ifname: String },
    #[error("cannot enter network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// VXLAN needs this node's address on the node network (`node_ip`).
    #[error("the VXLAN overlay needs this node's node_ip")]
    NoNodeIp,
    #[error(transparent)]
    Ipam(IpamError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
}

impl NetError {
    pub fn is_exhausted(&self) -> bool {
        matches!(self, NetError::PoolExhausted { .. })
    }
}

impl From<IpamError> for NetError {
    /// An empty pool is lifted to [`NetError::PoolExhausted`], so callers match one variant.
    fn from(e: IpamError) -> NetError {
        match e {
            IpamError::PoolExhausted { subnet } => NetError::PoolExhausted { subnet },
            other => NetError::Ipam(other),
        }
    }
}

/// Everything a detach could not undo; it carries on past each failure. Its message lists
/// every error with its causes, since a `Vec` has no single source to chain to.
#[derive(Debug, thiserror::Error)]
#[error("detach left {} error(s): {}", .0.len(), .0.iter().map(|e| chain(e)).collect::<Vec<_>>().join("; "))]
pub struct DetachError(pub Vec<NetError>);

/// An error and its sources, joined by `: `.
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_lifted_from_ipam() {
        let subnet: IpNet = "10.0.0.0/29".parse().unwrap();
        let e = NetError::from(IpamError::PoolExhausted { subnet });
        assert!(e.is_exhausted());
        assert_eq!(e.to_string(), "no free address left in 10.0.0.0/29");
    }

    #[test]
    fn detach_error_lists_every_cause() {
        let e = DetachError(vec![
            NetError::Netns {
                path: "/run/netns/x".into(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            },
            NetError::InvalidIfname {
                ifname: "a b".into(),
            },
        ]);
        assert_eq!(
            e.to_string(),
            "detach left 2 error(s): cannot enter network namespace /run/netns/x: \
             No such file or directory (os error 2); invalid interface name \"a b\""
        );
    }
}
