//! IP address management: which pod holds which address.
//!
//! [`HostLocal`] keeps one file per leased address in a directory, in the manner of the CNI
//! `host-local` plugin: the file is named by the address (`10.88.0.5`), created with
//! `O_CREAT|O_EXCL` (so two allocators, in this process or another, never get the same one)
//! and holds the owner id and a newline.

mod host_local;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::IpNet;

pub use host_local::HostLocal;

use crate::Lease;

/// Hands out addresses of a subnet and takes them back.
pub trait Ipam: Send + Sync {
    /// Leases a free address of `subnet` to `owner`: the lease exists when this returns.
    fn allocate(&self, subnet: IpNet, owner: &str) -> Result<IpAddr, IpamError>;

    /// Releases `ip` if, and only if, `owner` holds it.
    fn release(&self, ip: IpAddr, owner: &str) -> Result<Release, IpamError>;

    /// Releases every lease held by `owner`; returns the addresses freed.
    fn release_owner(&self, owner: &str) -> Result<Vec<IpAddr>, IpamError>;

    /// Every lease, in no particular order.
    fn leases(&self) -> Result<Vec<Lease>, IpamError>;
}

/// What [`Ipam::release`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    Released,
    /// There was no lease for the address.
    NotLeased,
    /// Someone else holds the address now; their lease was left alone.
    HeldByOther {
        owner: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {subnet}")]
    PoolExhausted { subnet: IpNet },
    #[error("ipv6 subnet {subnet} is not supported yet")]
    Ipv6Unsupported { subnet: IpNet },
    #[error("invalid lease owner {owner:?}")]
    InvalidOwner { owner: String },
    #[error("cannot create lease directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list leases in {}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write lease {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read lease {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove lease {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The gateway of a subnet: its first host address (`10.88.0.1` for `10.88.0.0/16`).
pub fn gateway(subnet: IpNet) -> IpAddr {
    match subnet.network() {
        IpAddr::V4(net) => IpAddr::V4(Ipv4Addr::from(u32::from(net).wrapping_add(1))),
        IpAddr::V6(net) => IpAddr::V6(u128::from(net).wrapping_add(1).into()),
    }
}

/// The addresses of an IPv4 subnet a pod may get, as a `u32` range: all but the network,
/// gateway and broadcast addresses. Empty for a /31 or /32.
pub(crate) fn pod_range_v4(subnet: ipnet::Ipv4Net) -> std::ops::RangeInclusive<u32> {
    let first = u32::from(subnet.network()).saturating_add(2);
    let last = u32::from(subnet.broadcast()).saturating_sub(1);
    first..=last
}
