//! [`Network`]: the node network as the daemon sees it, built from a link driver, an IPAM and
//! a firewall.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::driver::{BridgeVeth, LinkDriver, PodLinkSpec};
use crate::firewall::{Firewall, Nftables, PodRules};
use crate::ipam::{self, HostLocal, Ipam, Release};
use crate::service::ServicePortRules;
use crate::sysctl;
use crate::{AttachRequest, Attachment, DetachError, Lease, NetError, NodeNetConfig, chain};

pub struct Network {
    cfg: NodeNetConfig,
    driver: Box<dyn LinkDriver>,
    ipam: Box<dyn Ipam>,
    firewall: Box<dyn Firewall>,
}

impl Network {
    /// The real thing: bridge + veth link driver, host-local IPAM in `ipam_dir`, nftables.
    pub fn new(cfg: NodeNetConfig) -> Network {
        let driver = BridgeVeth::new(cfg.bridge.clone(), cfg.mtu);
        let ipam = HostLocal::new(cfg.ipam_dir.clone());
        Network::with_parts(
            cfg,
            Box::new(driver),
            Box::new(ipam),
            Box::new(Nftables::new()),
        )
    }

    /// A network with other strategies, e.g. [`crate::firewall::NoFirewall`] where something
    /// else owns the node's firewall.
    pub fn with_parts(
        cfg: NodeNetConfig,
        driver: Box<dyn LinkDriver>,
        ipam: Box<dyn Ipam>,
        firewall: Box<dyn Firewall>,
    ) -> Network {
        Network {
            cfg,
            driver,
            ipam,
            firewall,
        }
    }

    pub fn config(&self) -> &NodeNetConfig {
        &self.cfg
    }

    /// Node side, idempotent: bridge exists and is up with the gateway address of every subnet,
    /// `net.ipv4.ip_forward=1`, table `inet peapod` with one masquerade rule per subnet and
    /// forward accept for the bridge.
    ///
    /// Subnets add up: the table covers every subnet whose gateway is on the bridge, so calling
    /// this again with only a new pod CIDR keeps the old pods' masquerading.
    pub fn ensure_node(&self, subnets: &[IpNet]) -> Result<(), NetError> {
        check_ifname(&self.cfg.bridge)?;
        let served = self.driver.ensure_node(subnets)?;
        sysctl::write("net.ipv4.ip_forward", "1")?;
        self.firewall.ensure_node(&self.cfg.bridge, &served)?;
        Ok(())
    }

    /// Lease an IP, create the veth pair, move the pod end into `req.netns` as `eth0`, address,
    /// `lo` up, default route via the gateway. On failure everything made is undone.
    pub fn attach(&self, req: &AttachRequest<'_>) -> Result<Attachment, NetError> {
        check_ifname(req.host_ifname)?;
        check_ifname(req.pod_ifname)?;
        let ip = self.ipam.allocate(req.subnet, req.owner)?;
        let gateway = ipam::gateway(req.subnet);
        let prefix_len = req.subnet.prefix_len();
        let spec = PodLinkSpec {
            netns: req.netns,
            host_ifname: req.host_ifname,
            pod_ifname: req.pod_ifname,
            address: IpNet::new(ip, prefix_len).expect("prefix length of a valid subnet"),
            gateway,
        };
        let link = match self.driver.attach(&spec) {
            Ok(link) => link,
            Err(e) => {
                self.release_quietly(ip, req.owner);
                return Err(e);
            }
        };
        let pod = PodRules {
            owner: req.owner,
            ip,
            host_ifname: req.host_ifname,
            host_ports: req.host_ports,
        };
        let rules = match self.firewall.add_pod(&pod) {
            Ok(rules) => rules,
            Err(e) => {
                if let Err(error) = self.driver.detach(req.host_ifname) {
                    tracing::warn!(ifname = req.host_ifname, error = %chain(&error),
                        "cannot roll back the pod link");
                }
                self.release_quietly(ip, req.owner);
                return Err(e.into());
            }
        };
        Ok(Attachment {
            ip,
            prefix_len,
            gateway,
            host_ifname: req.host_ifname.to_owned(),
            pod_ifname: req.pod_ifname.to_owned(),
            mac: link.mac,
            rules,
        })
    }

    /// Undo an attachment: rules, then links, then the lease. Already-gone is success.
    pub fn detach(&self, owner: &str, att: &Attachment) -> Result<(), DetachError> {
        let mut errors = Vec::new();
        match self.firewall.remove_pod(&att.rules) {
            Ok(()) => crate::hostport::forget_udp_flows(&att.rules),
            Err(e) => errors.push(e.into()),
        }
        if let Err(e) = self.driver.detach(&att.host_ifname) {
            errors.push(e);
        }
        match self.ipam.release(att.ip, owner) {
            Ok(Release::HeldByOther { owner: holder }) => {
                tracing::info!(ip = %att.ip, owner, holder, "lease already taken over, kept");
            }
            Ok(Release::Released | Release::NotLeased) => {}
            Err(e) => errors.push(e.into()),
        }
        finish(errors)
    }

    /// Undo what an interrupted attach may have made, knowing only its owner and host link
    /// name: deletes the host link if present and releases every lease naming `owner`.
    pub fn cleanup_partial(&self, owner: &str, host_ifname: &str) -> Result<(), DetachError> {
        let mut errors = Vec::new();
        if let Err(e) = self.driver.detach(host_ifname) {
            errors.push(e);
        }
        if let Err(e) = self.ipam.release_owner(owner) {
            errors.push(e.into());
        }
        finish(errors)
    }

    /// Ids of every per-pod firewall rule in the kernel (hostPort map elements), for the
    /// start-up garbage collection of those no record names.
    pub fn pod_rules(&self) -> Result<Vec<String>, NetError> {
        Ok(self.firewall.pod_rules()?)
    }

    /// Removes per-pod firewall rules by id, e.g. those left by a crash.
    pub fn remove_rules(&self, rules: &[String]) -> Result<(), NetError> {
        self.firewall.remove_pod(rules)?;
        crate::hostport::forget_udp_flows(rules);
        Ok(())
    }

    /// Makes again those of a pod's recorded rules that are missing from the kernel.
    pub fn restore_rules(&self, rules: &[String]) -> Result<(), NetError> {
        Ok(self.firewall.restore_pod(rules)?)
    }

    /// Makes the kernel's Services exactly `all` (start-up, or after the table was lost).
    pub fn sync_services(&self, all: &[ServicePortRules]) -> Result<(), NetError> {
        Ok(self.firewall.sync_services(all)?)
    }

    /// Takes some service ports from `old` (as last applied) to `new`, in one transaction.
    pub fn change_services(
        &self,
        old: &[ServicePortRules],
        new: &[ServicePortRules],
    ) -> Result<(), NetError> {
        Ok(self.firewall.change_services(old, new)?)
    }

    /// Makes the kernel reach exactly `peers` (see [`crate::peers`]): routes, the VXLAN
    /// device and its entries, and the `cluster_cidrs` set.
    pub fn sync_peers(
        &self,
        overlay: &crate::peers::Overlay,
        previous: &[crate::peers::Peer],
        peers: &[crate::peers::Peer],
    ) -> Result<(), NetError> {
        let mut nl = crate::netlink::Netlink::open()?;
        overlay.sync(
            &mut nl,
            previous,
            peers,
            self.cfg.mtu + crate::peers::VXLAN_OVERHEAD,
        )?;
        Ok(self
            .firewall
            .set_cluster_cidrs(&overlay.cluster_cidrs(peers))?)
    }

    /// All leases on disk.
    pub fn leases(&self) -> Result<Vec<Lease>, NetError> {
        Ok(self.ipam.leases()?)
    }

    /// Node-side names of all pod links there are (the ports of the bridge), for the
    /// start-up garbage collection of links that no record names.
    pub fn pod_links(&self) -> Result<Vec<String>, NetError> {
        self.driver.pod_links()
    }

    /// Returns once the links of earlier detaches are deleted, not just cut off.
    pub fn settle(&self) {
        self.driver.settle();
    }

    /// Every link named like a pod's host end ([`crate::host_ifname`]), bridged or not.
    pub fn host_links(&self) -> Result<Vec<String>, NetError> {
        self.driver.host_links()
    }

    /// Deletes pod links (named like [`crate::host_ifname`]) that `keep` does not claim, e.g.
    /// those left by a crash; returns their names.
    pub fn collect_links(&self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>, NetError> {
        self.driver.collect_links(keep)
    }

    fn release_quietly(&self, ip: IpAddr, owner: &str) {
        if let Err(error) = self.ipam.release(ip, owner) {
            tracing::warn!(%ip, owner, error = %chain(&error), "cannot roll back the lease");
        }
    }
}

fn finish(errors: Vec<NetError>) -> Result<(), DetachError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DetachError(errors))
    }
}

/// Linux interface names: 1 to 15 bytes, no `/`, `:`, whitespace, and not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), NetError> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c == '"' || c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(NetError::InvalidIfname {
            ifname: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
