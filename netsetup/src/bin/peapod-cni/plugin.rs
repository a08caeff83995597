//! The CNI commands over netsetup: the same bridge, veth, IPAM and nftables table as
//! `peapod serve`, with the plugin's own state directory.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use netsetup::driver::BridgeVeth;
use netsetup::firewall::{Firewall, Nftables, NoFirewall};
use netsetup::hostport::HostPortElement;
use netsetup::ipam::HostLocal;
use netsetup::netlink::Netlink;
use netsetup::{AttachRequest, Attachment, IpNet, NetError, Network, NodeNetConfig};
use serde_json::{Value, json};

use crate::conf::{self, ANY_V4, AttachmentId, Command, NetConf, SUPPORTED_VERSIONS};
use crate::error::CniError;
use crate::go_json;
use crate::state::{Record, State};

/// The `CNI_*` variables, empty ones read as unset.
#[derive(Debug, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
        }
    }

    fn attachment(&self) -> Result<AttachmentId, CniError> {
        AttachmentId::from_env(self.container_id.clone(), self.ifname.clone())
    }

    /// `CNI_NETNS`, which must name an existing file.
    fn netns(&self) -> Result<PathBuf, CniError> {
        let path = self.netns.as_deref().ok_or_else(|| CniError::InvalidEnv {
            var: "CNI_NETNS",
            reason: "is not set".into(),
        })?;
        let path = PathBuf::from(path);
        if !path.is_absolute() || !path.exists() {
            return Err(CniError::InvalidEnv {
                var: "CNI_NETNS",
                reason: format!("{} is not an existing namespace file", path.display()),
            });
        }
        Ok(path)
    }
}

/// Runs one command; `Some` is what goes to stdout.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let command = Command::parse(env.command.as_deref())?;
    if command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": conf::version_of(stdin),
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = NetConf::parse(stdin, command)?;
    match command {
        Command::Add => add(&conf, env.attachment()?, env.netns()?).map(Some),
        Command::Del => del(&conf, &env.attachment()?).map(|()| None),
        Command::Check => check(&conf, &env.attachment()?, &env.netns()?).map(|()| None),
        Command::Gc => gc(&conf).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// The network as this configuration describes it, its leases in the state directory.
fn network(conf: &NetConf, state: &State) -> Network {
    let mtu = conf
        .mtu
        .or_else(netsetup::default_route_mtu)
        .unwrap_or(1500);
    let cfg = NodeNetConfig {
        bridge: conf.bridge.clone(),
        mtu,
        ipam_dir: state.ipam_dir(),
    };
    // ipMasq false: something else owns the node's firewall; peapod's table is not made.
    let firewall: Box<dyn Firewall> = if conf.ip_masq {
        Box::new(Nftables::new())
    } else {
        Box::new(NoFirewall)
    };
    Network::with_parts(
        cfg.clone(),
        Box::new(BridgeVeth::new(cfg.bridge, mtu)),
        Box::new(HostLocal::new(cfg.ipam_dir)),
        firewall,
    )
}

fn add(conf: &NetConf, id: AttachmentId, netns: PathBuf) -> Result<Value, CniError> {
    if conf.prev_result.is_some() {
        return Err(CniError::invalid_config(
            "prevResult",
            "peapod makes the pod's interface, so it must be the first plugin of the chain",
        ));
    }
    let state = State::open(&conf.dir)?;
    if let Some(record) = state.load(&id)? {
        // The spec lets a repeated ADD fail; the same one again gets the same answer.
        if same_namespace(&record.netns, &netns) {
            let mut result = record.result;
            result["cniVersion"] = json!(conf.cni_version);
            return Ok(result);
        }
        return Err(CniError::AlreadyAttached {
            container_id: id.container_id,
            ifname: id.ifname,
            existing: record.netns,
            requested: netns,
        });
    }
    check_ports_free(conf, &state)?;
    let net = network(conf, &state);
    net.ensure_node(&[conf.subnet])?;
    let owner = id.owner();
    let host_ifname = id.host_ifname();
    let attachment = net.attach(&AttachRequest {
        owner: &owner,
        netns: &netns,
        host_ifname: &host_ifname,
        pod_ifname: &id.ifname,
        subnet: conf.subnet,
        host_ports: &conf.host_ports,
    })?;
    let finish = || -> Result<Value, CniError> {
        let result = result(conf, &netns, &attachment)?;
        state.store(&Record {
            id: id.clone(),
            netns: netns.clone(),
            attachment: attachment.clone(),
            port_mappings: conf.port_mappings.clone(),
            result: result.clone(),
        })?;
        Ok(result)
    };
    finish().inspect_err(|_| {
        if let Err(error) = net.detach(&owner, &attachment) {
            tracing::warn!(owner, error = %crate::error::chain(&error), "cannot roll back ADD");
        }
        net.settle();
    })
}

/// Two paths name one namespace (nsfs files are equal by device and inode).
fn same_namespace(a: &Path, b: &Path) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => a == b,
    }
}

/// Refuses hostPorts that another attachment of this network maps, before anything is made.
fn check_ports_free(conf: &NetConf, state: &State) -> Result<(), CniError> {
    if conf.host_ports.is_empty() {
        return Ok(());
    }
    for record in state.records()? {
        for mapping in &record.port_mappings {
            let theirs = mapping.to_host_port()?;
            if let Some(ours) = conf.host_ports.iter().find(|p| p.overlaps(&theirs)) {
                let host = ours.host_ip.map_or_else(|| "*".into(), |ip| ip.to_string());
                return Err(CniError::PortTaken {
                    mapping: format!("{}/{host}:{}", ours.protocol, ours.host_port),
                    holder: record.id.container_id.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The spec's result: the bridge, the host end and the pod end; the address on the pod end;
/// the default route.
fn result(conf: &NetConf, netns: &Path, att: &Attachment) -> Result<Value, CniError> {
    let mut nl = Netlink::open().map_err(NetError::from)?;
    let mac = |nl: &mut Netlink, name: &str| -> Result<String, CniError> {
        let link = nl.link(name).map_err(NetError::from)?;
        Ok(link.and_then(|l| l.mac).unwrap_or_default())
    };
    let bridge_mac = mac(&mut nl, &conf.bridge)?;
    let host_mac = mac(&mut nl, &att.host_ifname)?;
    let mut result = json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            { "name": conf.bridge, "mac": bridge_mac },
            { "name": att.host_ifname, "mac": host_mac },
            { "name": att.pod_ifname, "mac": att.mac, "sandbox": netns },
        ],
        "ips": [{
            "address": format!("{}/{}", att.ip, att.prefix_len),
            "gateway": att.gateway,
            "interface": 2,
        }],
        "routes": [{ "dst": format!("{ANY_V4}/0"), "gw": att.gateway }],
    });
    if let Some(dns) = &conf.dns {
        result["dns"] = dns.clone();
    }
    Ok(result)
}

fn del(conf: &NetConf, id: &AttachmentId) -> Result<(), CniError> {
    let state = State::open(&conf.dir)?;
    let net = network(conf, &state);
    let outcome = match state.load(id) {
        Ok(Some(record)) => net
            .detach(&id.owner(), &record.attachment)
            .map_err(CniError::from)
            .and_then(|()| state.remove(id)),
        // No record: an ADD that did not finish, or one DEL'd already. What it may have made
        // is found by its names.
        Ok(None) => cleanup_unrecorded(&net, conf, id),
        Err(CniError::Record { path, source }) => {
            tracing::warn!(path = %path.display(), error = %source,
                "undecodable record: cleaning up by name");
            cleanup_unrecorded(&net, conf, id).and_then(|()| state.remove(id))
        }
        Err(e) => Err(e),
    };
    // The reaper deletes links on its own threads; they must be gone before the process is.
    net.settle();
    outcome
}

/// Removes an attachment known only by its id: hostPort elements to its leased addresses,
/// its host link, its leases.
fn cleanup_unrecorded(net: &Network, conf: &NetConf, id: &AttachmentId) -> Result<(), CniError> {
    let owner = id.owner();
    let ips: Vec<IpAddr> = net
        .leases()?
        .into_iter()
        .filter(|l| l.owner == owner)
        .map(|l| l.ip)
        .collect();
    if conf.ip_masq && !ips.is_empty() {
        let rules: Vec<String> = net
            .pod_rules()?
            .into_iter()
            .filter(|rule| rule_pod_ip(rule).is_some_and(|ip| ips.contains(&ip)))
            .collect();
        net.remove_rules(&rules)?;
    }
    net.cleanup_partial(&owner, &id.host_ifname())?;
    Ok(())
}

/// The pod address a hostPort element forwards to.
fn rule_pod_ip(rule: &str) -> Option<IpAddr> {
    let element: HostPortElement = rule.parse().ok()?;
    Some(IpAddr::V4(element.pod_ip))
}

fn check(conf: &NetConf, id: &AttachmentId, netns: &Path) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::invalid_config("prevResult", "CHECK needs the result ADD returned")
    })?;
    let state = State::open(&conf.dir)?;
    let record = state.load(id)?.ok_or_else(|| CniError::UnknownContainer {
        container_id: id.container_id.clone(),
        ifname: id.ifname.clone(),
    })?;
    let failed = |what: String| CniError::CheckFailed {
        container_id: id.container_id.clone(),
        ifname: id.ifname.clone(),
        what,
    };
    let att = &record.attachment;
    let address = IpNet::new(att.ip, att.prefix_len).expect("recorded prefix length");
    // prevResult comes as the runtime cached it; a Go runtime's keys may be in any case.
    let listed = go_json::get(prev, "ips")
        .and_then(Value::as_array)
        .is_some_and(|ips| {
            ips.iter()
                .any(|ip| go_json::get(ip, "address").is_some_and(|a| *a == address.to_string()))
        });
    if !listed {
        return Err(failed(format!("prevResult does not list {address}")));
    }
    if !same_namespace(&record.netns, netns) {
        return Err(failed(format!(
            "attached in {}, not {}",
            record.netns.display(),
            netns.display()
        )));
    }
    let net = network(conf, &state);
    let owner = id.owner();
    if !net
        .leases()?
        .iter()
        .any(|l| l.ip == att.ip && l.owner == owner)
    {
        return Err(failed(format!("the lease of {} is gone", att.ip)));
    }
    let mut nl = Netlink::open().map_err(NetError::from)?;
    let bridge = nl
        .link(&conf.bridge)
        .map_err(NetError::from)?
        .ok_or_else(|| failed(format!("bridge {} is gone", conf.bridge)))?;
    let host = nl
        .link(&att.host_ifname)
        .map_err(NetError::from)?
        .ok_or_else(|| failed(format!("host end {} is gone", att.host_ifname)))?;
    if host.master != Some(bridge.index) {
        return Err(failed(format!(
            "host end {} is not on bridge {}",
            att.host_ifname, conf.bridge
        )));
    }
    if !host.up {
        return Err(failed(format!("host end {} is down", att.host_ifname)));
    }
    let pod_ifname = att.pod_ifname.clone();
    let inside = netsetup::netns::run_in(netns, move || -> Result<Option<String>, NetError> {
        let mut nl = Netlink::open()?;
        let Some(link) = nl.link(&pod_ifname)? else {
            return Ok(Some(format!("{pod_ifname} is gone from the namespace")));
        };
        if !link.up {
            return Ok(Some(format!("{pod_ifname} is down")));
        }
        if !nl.addresses(link.index)?.contains(&address) {
            return Ok(Some(format!("{pod_ifname} has lost {address}")));
        }
        Ok(None)
    })
    .map_err(|source| NetError::Netns {
        path: netns.to_owned(),
        source,
    })??;
    if let Some(what) = inside {
        return Err(failed(what));
    }
    if !att.rules.is_empty() {
        let present = net.pod_rules()?;
        if let Some(missing) = att.rules.iter().find(|r| !present.contains(r)) {
            return Err(failed(format!("{missing} is gone from nftables")));
        }
    }
    Ok(())
}

/// Removes every attachment of this network that the runtime does not list as valid, and
/// whatever interrupted ADDs left: leases, bridge ports, hostPort elements.
fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::invalid_config(
            "cni.dev/valid-attachments",
            "GC needs the list of attachments to keep",
        )
    })?;
    let state = State::open(&conf.dir)?;
    let net = network(conf, &state);
    let outcome = collect(conf, valid, &state, &net);
    net.settle();
    outcome
}

fn collect(
    conf: &NetConf,
    valid: &BTreeSet<AttachmentId>,
    state: &State,
    net: &Network,
) -> Result<(), CniError> {
    let mut kept = Vec::new();
    let mut first_error = None;
    for record in state.records()? {
        if valid.contains(&record.id) {
            kept.push(record);
            continue;
        }
        let removed = net
            .detach(&record.id.owner(), &record.attachment)
            .map_err(CniError::from)
            .and_then(|()| state.remove(&record.id));
        if let Err(e) = removed {
            tracing::warn!(container = record.id.container_id, error = %crate::error::chain(&e),
                "cannot collect attachment");
            first_error.get_or_insert(e);
            kept.push(record); // still there: its link and rules are not orphans
        }
    }
    // Leases of attachments without a record: ADDs that did not finish.
    let keeps = |id: &AttachmentId| valid.contains(id) || kept.iter().any(|r| &r.id == id);
    let mut live_ips: Vec<IpAddr> = kept.iter().map(|r| r.attachment.ip).collect();
    for lease in net.leases()? {
        match AttachmentId::from_owner(&lease.owner) {
            Some(id) if !keeps(&id) => cleanup_unrecorded(net, conf, &id)?,
            _ => live_ips.push(lease.ip),
        }
    }
    // Ports of this network's bridge that no attachment names.
    let names: BTreeSet<String> = kept
        .iter()
        .map(|r| r.attachment.host_ifname.clone())
        .chain(valid.iter().map(AttachmentId::host_ifname))
        .collect();
    let orphans: BTreeSet<String> = net
        .pod_links()?
        .into_iter()
        .filter(|n| netsetup::is_host_ifname(n) && !names.contains(n))
        .collect();
    if !orphans.is_empty() {
        net.collect_links(&|name| !orphans.contains(name))?;
    }
    // hostPort elements to addresses of this subnet that nothing holds.
    if conf.ip_masq {
        let recorded: BTreeSet<&String> = kept.iter().flat_map(|r| &r.attachment.rules).collect();
        let stale: Vec<String> = net
            .pod_rules()?
            .into_iter()
            .filter(|rule| !recorded.contains(rule))
            .filter(|rule| {
                rule_pod_ip(rule)
                    .is_some_and(|ip| conf.subnet.contains(&ip) && !live_ips.contains(&ip))
            })
            .collect();
        net.remove_rules(&stale)?;
    }
    first_error.map_or(Ok(()), Err)
}

/// Ready when an ADD could get an address (and, with ipMasq, nftables answers).
fn status(conf: &NetConf) -> Result<(), CniError> {
    let leases = HostLocal::new(conf.dir.join("ipam"));
    let used = netsetup::ipam::Ipam::leases(&leases)
        .map_err(NetError::from)?
        .iter()
        .filter(|l| conf.subnet.contains(&l.ip))
        .count() as u64;
    let size = conf::pool_size(conf.subnet);
    if used >= size {
        return Err(CniError::NotReady {
            reason: format!("all {size} addresses of {} are leased", conf.subnet),
        });
    }
    if conf.ip_masq
        && let Err(e) = Nftables::new().pod_rules()
    {
        return Err(CniError::NotReady {
            reason: format!("nftables: {}", crate::error::chain(&e)),
        });
    }
    Ok(())
}
