//! The order and rollback logic of [`Network`], with recording fakes for the link driver and
//! the firewall and a real lease directory: no root needed.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;
use crate::driver::PodLink;
use crate::firewall::FirewallError;
use crate::netlink::{LinkOp, NetlinkError};

type Log = Arc<Mutex<Vec<String>>>;

#[derive(Default)]
struct Fail {
    attach: bool,
    detach: bool,
    add_rules: bool,
    remove_rules: bool,
}

struct FakeDriver {
    log: Log,
    fail: Arc<Fail>,
}

fn kernel_error(op: LinkOp, ifname: &str) -> NetError {
    NetError::Netlink(NetlinkError::Link {
        op,
        ifname: ifname.into(),
        source: io::Error::from_raw_os_error(libc::EPERM),
    })
}

impl LinkDriver for FakeDriver {
    fn ensure_node(&self, subnets: &[IpNet]) -> Result<Vec<IpNet>, NetError> {
        Ok(subnets.to_vec())
    }

    fn attach(&self, spec: &PodLinkSpec<'_>) -> Result<PodLink, NetError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("link {} {}", spec.host_ifname, spec.address));
        if self.fail.attach {
            return Err(kernel_error(LinkOp::Create, spec.host_ifname));
        }
        Ok(PodLink {
            mac: "02:00:00:00:00:01".into(),
        })
    }

    fn detach(&self, host_ifname: &str) -> Result<bool, NetError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("unlink {host_ifname}"));
        if self.fail.detach {
            return Err(kernel_error(LinkOp::Delete, host_ifname));
        }
        Ok(true)
    }

    fn pod_links(&self) -> Result<Vec<String>, NetError> {
        Ok(Vec::new())
    }

    fn collect_links(&self, _keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>, NetError> {
        Ok(Vec::new())
    }

    fn host_links(&self) -> Result<Vec<String>, NetError> {
        Ok(Vec::new())
    }
}

struct FakeFirewall {
    log: Log,
    fail: Arc<Fail>,
}

fn nft_error() -> FirewallError {
    FirewallError::InvalidRuleId { id: "x".into() }
}

impl Firewall for FakeFirewall {
    fn ensure_node(&self, _bridge: &str, _subnets: &[IpNet]) -> Result<(), FirewallError> {
        Ok(())
    }

    fn add_pod(&self, pod: &PodRules<'_>) -> Result<Vec<String>, FirewallError> {
        self.log.lock().unwrap().push(format!("rules {}", pod.ip));
        if self.fail.add_rules {
            return Err(nft_error());
        }
        Ok(vec!["hostports:1".into()])
    }

    fn remove_pod(&self, rules: &[String]) -> Result<(), FirewallError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("unrules {}", rules.join(",")));
        if self.fail.remove_rules {
            return Err(nft_error());
        }
        Ok(())
    }

    fn pod_rules(&self) -> Result<Vec<String>, FirewallError> {
        Ok(Vec::new())
    }

    fn restore_pod(&self, _rules: &[String]) -> Result<(), FirewallError> {
        Ok(())
    }

    fn sync_services(
        &self,
        _all: &[crate::service::ServicePortRules],
    ) -> Result<(), FirewallError> {
        Ok(())
    }

    fn change_services(
        &self,
        _old: &[crate::service::ServicePortRules],
        _new: &[crate::service::ServicePortRules],
    ) -> Result<(), FirewallError> {
        Ok(())
    }

    fn set_cluster_cidrs(&self, _cidrs: &[ipnet::Ipv4Net]) -> Result<(), FirewallError> {
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    network: Network,
    log: Log,
}

fn fixture(fail: Fail) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NodeNetConfig {
        bridge: "br0".into(),
        mtu: 1500,
        ipam_dir: dir.path().join("ipam"),
    };
    let log = Log::default();
    let fail = Arc::new(fail);
    let driver = FakeDriver {
        log: log.clone(),
        fail: fail.clone(),
    };
    let firewall = FakeFirewall {
        log: log.clone(),
        fail,
    };
    let ipam = HostLocal::new(&cfg.ipam_dir);
    let network = Network::with_parts(cfg, Box::new(driver), Box::new(ipam), Box::new(firewall));
    Fixture {
        _dir: dir,
        network,
        log,
    }
}

fn request(owner: &str) -> AttachRequest<'_> {
    AttachRequest {
        owner,
        netns: Path::new("/proc/self/ns/net"),
        host_ifname: "pp0000",
        pod_ifname: crate::POD_IFNAME,
        subnet: "10.0.0.0/24".parse().unwrap(),
        host_ports: &[],
    }
}

#[test]
fn attach_leases_then_links_then_rules() {
    let f = fixture(Fail::default());
    let att = f.network.attach(&request("pod")).unwrap();
    assert_eq!(att.ip.to_string(), "10.0.0.2");
    assert_eq!(att.gateway.to_string(), "10.0.0.1");
    assert_eq!(att.rules, ["hostports:1"]);
    assert_eq!(
        *f.log.lock().unwrap(),
        ["link pp0000 10.0.0.2/24", "rules 10.0.0.2"]
    );
    assert_eq!(f.network.leases().unwrap().len(), 1);
}

#[test]
fn a_failed_link_releases_the_lease() {
    let f = fixture(Fail {
        attach: true,
        ..Fail::default()
    });
    let err = f.network.attach(&request("pod")).unwrap_err();
    assert_eq!(err.to_string(), "cannot create link pp0000");
    assert!(f.network.leases().unwrap().is_empty());
}

#[test]
fn failed_rules_undo_the_link_and_the_lease() {
    let f = fixture(Fail {
        add_rules: true,
        ..Fail::default()
    });
    assert!(f.network.attach(&request("pod")).is_err());
    assert_eq!(
        *f.log.lock().unwrap(),
        ["link pp0000 10.0.0.2/24", "rules 10.0.0.2", "unlink pp0000"]
    );
    assert!(f.network.leases().unwrap().is_empty());
}

#[test]
fn detach_goes_rules_links_lease() {
    let f = fixture(Fail::default());
    let att = f.network.attach(&request("pod")).unwrap();
    f.log.lock().unwrap().clear();
    f.network.detach("pod", &att).unwrap();
    assert_eq!(
        *f.log.lock().unwrap(),
        ["unrules hostports:1", "unlink pp0000"]
    );
    assert!(f.network.leases().unwrap().is_empty());
}

#[test]
fn detach_carries_on_and_collects_every_error() {
    let f = fixture(Fail {
        detach: true,
        remove_rules: true,
        ..Fail::default()
    });
    let att = f.network.attach(&request("pod")).unwrap();
    let err = f.network.detach("pod", &att).unwrap_err();
    assert_eq!(err.0.len(), 2);
    assert!(matches!(err.0[0], NetError::Firewall(_)));
    assert!(matches!(err.0[1], NetError::Netlink(_)));
    assert!(
        err.to_string()
            .contains("cannot delete link pp0000: Operation not permitted")
    );
    // The lease went all the same.
    assert!(f.network.leases().unwrap().is_empty());
}

#[test]
fn exhaustion_is_reported_as_such() {
    let f = fixture(Fail::default());
    let mut req = request("pod");
    req.subnet = "10.0.0.0/31".parse().unwrap();
    assert!(f.network.attach(&req).unwrap_err().is_exhausted());
    assert!(f.log.lock().unwrap().is_empty());
}

#[test]
fn bad_interface_names_are_refused_before_anything_is_made() {
    let f = fixture(Fail::default());
    for bad in ["", "a-name-too-long-for-linux", "a/b", "a b", "..", "x:1"] {
        let mut req = request("pod");
        req.host_ifname = bad;
        let err = f.network.attach(&req).unwrap_err();
        assert!(
            matches!(err, NetError::InvalidIfname { .. }),
            "{bad:?}: {err}"
        );
    }
    assert!(f.network.leases().unwrap().is_empty());
    assert!(f.log.lock().unwrap().is_empty());
}
