//! Packet filtering and address translation for the pods: the nftables table `inet peapod`.
//!
//! Node-wide rules: one masquerade rule per pod subnet for traffic leaving it, forward accepts
//! for the bridge, and the DNAT of hostPorts through two maps ([`crate::hostport`]). What a
//! pod adds are elements of those maps, never rules or chains; [`Firewall::add_pod`] returns
//! their ids, kept in [`crate::Attachment::rules`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use ipnet::IpNet;

use crate::hostport::{HostPort, HostPortElement, MAP, MAP_ANY};
use crate::service::{self, ServicePortRules};
use crate::sysctl;

/// The nftables table peapod owns, whole.
pub const TABLE: &str = "peapod";

/// What the firewall needs to know about one pod.
#[derive(Clone, Debug)]
pub struct PodRules<'a> {
    pub owner: &'a str,
    pub ip: IpAddr,
    pub host_ifname: &'a str,
    /// The hostPort mappings to forward to the pod.
    pub host_ports: &'a [HostPort],
}

/// A way to filter and translate pod traffic.
pub trait Firewall: Send + Sync {
    /// Builds the node-wide rules for `bridge` and every pod subnet in `subnets`, replacing
    /// what was there, in one transaction.
    fn ensure_node(&self, bridge: &str, subnets: &[IpNet]) -> Result<(), FirewallError>;

    /// Adds the rules of one pod; returns their ids, to be handed back to [`Self::remove_pod`].
    fn add_pod(&self, pod: &PodRules<'_>) -> Result<Vec<String>, FirewallError>;

    /// Removes rules made by [`Self::add_pod`]; those already gone are no error.
    fn remove_pod(&self, rules: &[String]) -> Result<(), FirewallError>;

    /// Ids of every per-pod rule there is, for garbage collection.
    fn pod_rules(&self) -> Result<Vec<String>, FirewallError>;

    /// Makes again those of `rules` (from [`Self::add_pod`]) that are missing, e.g. after
    /// the table was deleted under a running pod; those there are left alone.
    fn restore_pod(&self, rules: &[String]) -> Result<(), FirewallError>;

    /// Makes the Services in the kernel exactly `all`, in one transaction; what is there and
    /// right stays as it is (established connections keep flowing).
    fn sync_services(&self, all: &[ServicePortRules]) -> Result<(), FirewallError>;

    /// Takes the service ports in `old` (as last applied) to `new`, in one transaction:
    /// ports only in `old` go, ports only in `new` come.
    fn change_services(
        &self,
        old: &[ServicePortRules],
        new: &[ServicePortRules],
    ) -> Result<(), FirewallError>;

    /// The pod CIDRs of the cluster, within which pod traffic is not masqueraded.
    fn set_cluster_cidrs(&self, cidrs: &[ipnet::Ipv4Net]) -> Result<(), FirewallError>;
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run {}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("nft failed ({status}): {}", stderr.trim_end())]
    Nft { status: ExitStatus, stderr: String },
    #[error("invalid firewall rule id {id:?}")]
    InvalidRuleId { id: String },
    #[error("cannot read the output of nft")]
    Output(#[source] serde_json::Error),
    #[error("hostPort mappings to pod IP {ip}: only IPv4 pods have them")]
    Ipv6HostPorts { ip: IpAddr },
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error("Services need peapod's nftables firewall, and this node has none")]
    NoServices,
}

/// No filtering and no translation: for nodes where something else owns the firewall.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFirewall;

impl Firewall for NoFirewall {
    fn ensure_node(&self, _bridge: &str, _subnets: &[IpNet]) -> Result<(), FirewallError> {
        Ok(())
    }

    fn add_pod(&self, _pod: &PodRules<'_>) -> Result<Vec<String>, FirewallError> {
        Ok(Vec::new())
    }

    fn remove_pod(&self, _rules: &[String]) -> Result<(), FirewallError> {
        Ok(())
    }

    fn pod_rules(&self) -> Result<Vec<String>, FirewallError> {
        Ok(Vec::new())
    }

    fn restore_pod(&self, _rules: &[String]) -> Result<(), FirewallError> {
        Ok(())
    }

    fn sync_services(&self, all: &[ServicePortRules]) -> Result<(), FirewallError> {
        if all.is_empty() {
            return Ok(());
        }
        Err(FirewallError::NoServices)
    }

    fn change_services(
        &self,
        _old: &[ServicePortRules],
        _new: &[ServicePortRules],
    ) -> Result<(), FirewallError> {
        Err(FirewallError::NoServices)
    }

    fn set_cluster_cidrs(&self, _cidrs: &[ipnet::Ipv4Net]) -> Result<(), FirewallError> {
        Ok(())
    }
}

/// Drives the `nft` binary with scripts on its standard input (`nft -f -`); each script is
/// one transaction. Rule ids have the form `<chain>:<handle>`.
#[derive(Clone, Debug)]
pub struct Nftables {
    binary: PathBuf,
}

impl Default for Nftables {
    fn default() -> Self {
        Nftables::new()
    }
}

impl Nftables {
    /// Uses `nft` from `PATH`.
    pub fn new() -> Nftables {
        Nftables::with_binary("nft")
    }

    pub fn with_binary(binary: impl Into<PathBuf>) -> Nftables {
        Nftables {
            binary: binary.into(),
        }
    }

    /// Runs `script` as one nft transaction, in the network namespace of the calling thread.
    pub fn run(&self, script: &str) -> Result<(), FirewallError> {
        self.nft(&["-f", "-"], script).map(drop)
    }

    /// `nft list <what…>` as nft prints it, e.g. `["chain", "inet", "peapod", "prerouting"]`.
    pub fn list(&self, what: &[&str]) -> Result<String, FirewallError> {
        let mut args = vec!["list"];
        args.extend_from_slice(what);
        let out = self.nft(&args, "")?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Whether the set or map `set` of peapod's table holds `key` (`nft get element`; for an
    /// interval set, whether an interval contains it). A missing set holds nothing.
    pub fn has_element(&self, set: &str, key: &str) -> Result<bool, FirewallError> {
        let key = format!("{{ {key} }}");
        match self.nft(&["get", "element", "inet", TABLE, set, &key], "") {
            Ok(_) => Ok(true),
            Err(FirewallError::Nft { stderr, .. }) if stderr.contains("No such file") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs nft with `args` and `input` on its standard input; returns its standard output.
    fn nft(&self, args: &[&str], input: &str) -> Result<Vec<u8>, FirewallError> {
        let spawn_error = |source| FirewallError::Spawn {
            binary: self.binary.clone(),
            source,
        };
        let mut child = Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A write error means nft exited early; its status and stderr tell why.
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        let output = child.wait_with_output().map_err(spawn_error)?;
        if !output.status.success() {
            return Err(FirewallError::Nft {
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(output.stdout)
    }
}

impl Firewall for Nftables {
    fn ensure_node(&self, bridge: &str, subnets: &[IpNet]) -> Result<(), FirewallError> {
        self.run(&node_script(bridge, subnets))?;
        // After the rules, so that the drop of forged loopback traffic is in place first:
        // DNAT of 127.0.0.1 to a pod needs loopback sources routable on the bridge.
        sysctl::write(&format!("net/ipv4/conf/{bridge}/route_localnet"), "1")?;
        Ok(())
    }

    fn add_pod(&self, pod: &PodRules<'_>) -> Result<Vec<String>, FirewallError> {
        if pod.host_ports.is_empty() {
            return Ok(Vec::new());
        }
        let IpAddr::V4(pod_ip) = pod.ip else {
            return Err(FirewallError::Ipv6HostPorts { ip: pod.ip });
        };
        let elements: Vec<HostPortElement> = pod
            .host_ports
            .iter()
            .map(|&port| HostPortElement { port, pod_ip })
            .collect();
        self.run(&add_script(&elements))?;
        Ok(elements.iter().map(ToString::to_string).collect())
    }

    fn remove_pod(&self, rules: &[String]) -> Result<(), FirewallError> {
        if rules.is_empty() {
            return Ok(());
        }
        self.run(&remove_script(rules)?)
    }

    fn pod_rules(&self) -> Result<Vec<String>, FirewallError> {
        let json = self.nft(&["-j", "list", "maps", "inet"], "")?;
        parse_elements(&json).map_err(FirewallError::Output)
    }

    fn restore_pod(&self, rules: &[String]) -> Result<(), FirewallError> {
        let elements = rules
            .iter()
            .filter(|id| HostPortElement::is_id(id))
            .map(|id| {
                id.parse()
                    .map_err(|()| FirewallError::InvalidRuleId { id: id.clone() })
            })
            .collect::<Result<Vec<HostPortElement>, _>>()?;
        if elements.is_empty() {
            return Ok(());
        }
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {TABLE}");
        declare_maps(&mut s);
        // Adding an element that is there with the same value is a no-op.
        s.push_str(&add_script(&elements));
        self.run(&s)
    }

    fn sync_services(&self, all: &[ServicePortRules]) -> Result<(), FirewallError> {
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {TABLE}");
        service::declare(&mut s);
        // Declared first, so that the listings below find the table.
        self.run(&s)?;
        let chains = self.nft(&["-j", "list", "chains", "inet"], "")?;
        let sets = self.nft(&["-j", "list", "sets", "inet"], "")?;
        let present = service::parse_present(&chains, &sets).map_err(FirewallError::Output)?;
        let mut s = String::new();
        service::sync(&mut s, &present, all);
        self.run(&s)
    }

    fn change_services<'a>(
        &self,
        old: &'a [ServicePortRules],
        new: &'a [ServicePortRules],
    ) -> Result<(), FirewallError> {
        // Only backends changed: their chains' rules, without nft's cache (see nftnl).
        if let Some(chains) = service::rules_only(old, new) {
            match crate::nftnl::replace_rules(TABLE, &chains) {
                Ok(()) => return Ok(()),
                // nft's script makes every part, whatever the kernel has.
                Err(e) => tracing::warn!(
                    error = %crate::chain(&e),
                    "the backends' netlink change failed; applying it with nft"
                ),
            }
        }
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {TABLE}");
        service::declare(&mut s);
        let by_id = |list: &'a [ServicePortRules]| -> BTreeMap<&'a str, &'a ServicePortRules> {
            list.iter().map(|p| (p.id.as_str(), p)).collect()
        };
        let (old, new) = (by_id(old), by_id(new));
        let ids: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
        for id in ids {
            service::change(&mut s, old.get(id).copied(), new.get(id).copied());
        }
        self.run(&s)
    }

    fn set_cluster_cidrs(&self, cidrs: &[ipnet::Ipv4Net]) -> Result<(), FirewallError> {
        self.run(&crate::peers::cidrs_script(cidrs))
    }
}

/// The node-wide part of the table, rebuilt atomically without touching the hostPort maps:
/// the table and maps are added if missing (a no-op if there), the chains flushed and filled
/// again, all in one transaction. A daemon restart or a new pod CIDR keeps every mapping.
pub fn node_script(bridge: &str, subnets: &[IpNet]) -> String {
    let mut subnets: Vec<IpNet> = subnets.iter().map(IpNet::trunc).collect();
    subnets.sort();
    subnets.dedup();
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {TABLE}");
    declare_maps(&mut s);
    service::declare(&mut s);
    crate::peers::declare(&mut s);
    let chain = |s: &mut String, name: &str, hook: &str| {
        let _ = writeln!(
            s,
            "add chain inet {TABLE} {name} {{ {hook}; policy accept; }}\nflush chain inet {TABLE} {name}"
        );
    };
    let rule = |s: &mut String, chain: &str, rule: &str| {
        let _ = writeln!(s, "add rule inet {TABLE} {chain} {rule}");
    };
    let dnat = [
        format!("fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @{MAP}"),
        format!("fib daddr type local dnat ip to meta l4proto . th dport map @{MAP_ANY}"),
    ];
    // hostPorts: from outside the node (prerouting) and from the node itself (output).
    chain(
        &mut s,
        "prerouting",
        "type nat hook prerouting priority dstnat",
    );
    // -100 is dstnat; nft 1.0.6 knows that name for prerouting only.
    chain(&mut s, "output", "type nat hook output priority -100");
    let (svc_nat, svc_reject) = service::lookup_rules();
    for r in dnat.iter().chain(&svc_nat) {
        rule(&mut s, "prerouting", r);
        rule(&mut s, "output", r);
    }
    // Service ports without backends: refused at once rather than dropped (reject is a
    // filter verdict, so these chains are filter chains on the same hooks).
    chain(
        &mut s,
        "prerouting_filter",
        "type filter hook prerouting priority filter",
    );
    chain(
        &mut s,
        "output_filter",
        "type filter hook output priority filter",
    );
    for r in &svc_reject {
        rule(&mut s, "prerouting_filter", r);
        rule(&mut s, "output_filter", r);
    }
    chain(
        &mut s,
        "postrouting",
        "type nat hook postrouting priority srcnat",
    );
    for subnet in &subnets {
        let family = match subnet {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        };
        // Not within the cluster's pod CIDRs (other nodes' pods see this pod's address).
        let cluster = if family == "ip" {
            format!(" ip daddr != @{}", crate::peers::CLUSTER_CIDRS)
        } else {
            String::new()
        };
        rule(
            &mut s,
            "postrouting",
            &format!("{family} saddr {subnet} {family} daddr != {subnet}{cluster} masquerade"),
        );
        // A pod reaching a hostPort of a pod of its subnet (itself included): the answer
        // must come back through the node to be translated back, so the node is the source.
        // Matched by addresses, not interfaces: with br_netfilter loaded the hooks may see
        // the bridge ports instead of the bridge.
        rule(
            &mut s,
            "postrouting",
            &format!("{family} saddr {subnet} {family} daddr {subnet} ct status dnat masquerade"),
        );
    }
    // Connections from outside the cluster's pods (another node, a client on the node
    // network) translated to a pod of another node (a NodePort or hostPort whose backend is
    // elsewhere): the answer must come back through this node to be translated back.
    rule(
        &mut s,
        "postrouting",
        &format!(
            "ct status dnat oifname != \"{bridge}\" fib saddr type != local ip saddr != @{} masquerade",
            crate::peers::CLUSTER_CIDRS
        ),
    );
    // hostPorts reached at 127.0.0.1: the pod cannot answer a loopback source.
    rule(
        &mut s,
        "postrouting",
        &format!("oifname \"{bridge}\" ip saddr 127.0.0.0/8 masquerade"),
    );
    chain(
        &mut s,
        "forward",
        "type filter hook forward priority filter",
    );
    rule(&mut s, "forward", &format!("iifname \"{bridge}\" accept"));
    rule(
        &mut s,
        "forward",
        &format!("oifname \"{bridge}\" ct state established,related accept"),
    );
    // route_localnet on the bridge lets answers to 127.0.0.1 in; nothing else addressed to
    // loopback may come from the pods (a pod must not reach the node's local services).
    chain(&mut s, "input", "type filter hook input priority filter");
    rule(
        &mut s,
        "input",
        &format!(
            "iifname \"{bridge}\" ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop"
        ),
    );
    s
}

/// The hostPort maps, added if missing (adding an existing map is a no-op).
fn declare_maps(s: &mut String) {
    let _ = writeln!(
        s,
        "add map inet {TABLE} {MAP} {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}"
    );
    let _ = writeln!(
        s,
        "add map inet {TABLE} {MAP_ANY} {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}"
    );
}

/// The elements of one pod, in one transaction: all or none. An element whose key is taken
/// (by another pod, or left by a crash) fails the whole script.
fn add_script(elements: &[HostPortElement]) -> String {
    let mut s = String::new();
    for e in elements {
        let _ = writeln!(
            s,
            "add element inet {TABLE} {} {{ {} : {} }}",
            e.map(),
            e.key(),
            e.data()
        );
    }
    s
}

/// Deletes rules by id: `<chain>:<handle>` for rules, [`HostPortElement`] ids for map
/// elements. An element is added before it is deleted (a no-op if it is there with the same
/// value), so that removing one already gone succeeds, as a retried stop needs.
fn remove_script(rules: &[String]) -> Result<String, FirewallError> {
    let mut s = String::new();
    let mut maps_declared = false;
    for id in rules {
        let invalid = || FirewallError::InvalidRuleId { id: id.clone() };
        if HostPortElement::is_id(id) {
            let e: HostPortElement = id.parse().map_err(|()| invalid())?;
            if !maps_declared {
                let _ = writeln!(s, "add table inet {TABLE}");
                declare_maps(&mut s);
                maps_declared = true;
            }
            let (map, key) = (e.map(), e.key());
            let _ = writeln!(
                s,
                "add element inet {TABLE} {map} {{ {key} : {} }}\ndelete element inet {TABLE} {map} {{ {key} }}",
                e.data()
            );
            continue;
        }
        let (chain, handle) = id.split_once(':').ok_or_else(invalid)?;
        let handle: u64 = handle.parse().map_err(|_| invalid())?;
        if chain.is_empty() || !chain.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid());
        }
        let _ = writeln!(s, "delete rule inet {TABLE} {chain} handle {handle}");
    }
    Ok(s)
}

/// The hostPort elements in `nft -j list maps` output, as ids. Elements of another shape
/// than peapod makes are not ours to name and are skipped.
fn parse_elements(json: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    let doc: serde_json::Value = serde_json::from_slice(json)?;
    let mut ids = Vec::new();
    let items = doc["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for map in items.iter().filter_map(|item| item.get("map")) {
        if map["family"] != "inet" || map["table"] != TABLE {
            continue;
        }
        let bound = match map["name"].as_str() {
            Some(MAP) => true,
            Some(MAP_ANY) => false,
            _ => continue,
        };
        let elems = map["elem"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for elem in elems {
            if let Some(e) = element_of(elem, bound) {
                ids.push(e.to_string());
            }
        }
    }
    Ok(ids)
}

/// `[{"concat": [ip?, proto, port]}, {"concat": [pod ip, port]}]` → an element.
fn element_of(elem: &serde_json::Value, bound: bool) -> Option<HostPortElement> {
    let key = elem.get(0)?.get("concat")?.as_array()?;
    let data = elem.get(1)?.get("concat")?.as_array()?;
    let (host_ip, rest) = if bound {
        (Some(key.first()?.as_str()?.parse().ok()?), &key[1..])
    } else {
        (None, &key[..])
    };
    let [protocol, host_port] = rest else {
        return None;
    };
    let [pod_ip, container_port] = data.as_slice() else {
        return None;
    };
    let port = |v: &serde_json::Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
    Some(HostPortElement {
        port: HostPort {
            protocol: protocol.as_str()?.parse().ok()?,
            host_ip,
            host_port: port(host_port)?,
            container_port: port(container_port)?,
        },
        pod_ip: pod_ip.as_str()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_masquerade_rule_per_subnet() {
        let subnets: Vec<IpNet> = ["10.88.0.0/16", "10.89.0.0/24", "10.88.0.0/16"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let script = node_script("peapod0", &subnets);
        assert_eq!(script.matches(" daddr != 10.").count(), 2);
        assert!(script.contains(
            "ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 ip daddr != @cluster_cidrs masquerade"
        ));
        assert!(script.contains(
            "ip saddr 10.89.0.0/24 ip daddr != 10.89.0.0/24 ip daddr != @cluster_cidrs masquerade"
        ));
        assert!(
            script
                .contains("ip saddr 10.89.0.0/24 ip daddr 10.89.0.0/24 ct status dnat masquerade")
        );
        assert!(script.contains("iifname \"peapod0\" accept"));
        assert!(script.contains("oifname \"peapod0\" ct state established,related accept"));
    }

    #[test]
    fn the_node_script_keeps_the_maps_and_refills_the_chains() {
        let script = node_script("peapod0", &[]);
        assert!(!script.contains("delete"), "{script}");
        assert!(!script.contains("flush map"), "{script}");
        assert!(script.starts_with("add table inet peapod\nadd map inet peapod hostports {"));
        for chain in ["prerouting", "output", "postrouting", "forward", "input"] {
            assert!(
                script.contains(&format!("flush chain inet peapod {chain}\n")),
                "{chain}"
            );
        }
        for hook in ["prerouting", "output"] {
            assert!(script.contains(&format!(
                "add rule inet peapod {hook} fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @hostports\n"
            )));
            assert!(script.contains(&format!(
                "add rule inet peapod {hook} fib daddr type local dnat ip to meta l4proto . th dport map @hostports_any\n"
            )));
        }
        for hook in ["prerouting", "output"] {
            assert!(script.contains(&format!(
                "add rule inet peapod {hook} ip daddr . meta l4proto . th dport vmap @svc_ip4\n"
            )));
            assert!(script.contains(&format!(
                "add rule inet peapod {hook}_filter ip daddr . meta l4proto . th dport @svc_noep4 goto svc_reject\n"
            )));
        }
        assert!(!script.contains("flush map inet peapod svc_"), "{script}");
        assert!(script.contains("oifname \"peapod0\" ip saddr 127.0.0.0/8 masquerade"));
        assert!(script.contains(
            "iifname \"peapod0\" ip daddr 127.0.0.0/8 ct state != { established, related } drop"
        ));
    }

    fn elements() -> Vec<HostPortElement> {
        [
            "hostport tcp 192.0.2.1:8080 10.88.0.5:80",
            "hostport udp *:53 10.88.0.5:5353",
        ]
        .iter()
        .map(|id| id.parse().unwrap())
        .collect()
    }

    #[test]
    fn a_pod_adds_map_elements_in_one_script() {
        assert_eq!(
            add_script(&elements()),
            "add element inet peapod hostports { 192.0.2.1 . tcp . 8080 : 10.88.0.5 . 80 }\n\
             add element inet peapod hostports_any { udp . 53 : 10.88.0.5 . 5353 }\n"
        );
    }

    #[test]
    fn element_removal_succeeds_when_already_gone() {
        let ids: Vec<String> = elements().iter().map(ToString::to_string).collect();
        let script = remove_script(&ids).unwrap();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "add table inet peapod");
        assert!(lines[1].starts_with("add map inet peapod hostports {"));
        assert!(lines[2].starts_with("add map inet peapod hostports_any {"));
        assert_eq!(
            &lines[3..],
            [
                "add element inet peapod hostports { 192.0.2.1 . tcp . 8080 : 10.88.0.5 . 80 }",
                "delete element inet peapod hostports { 192.0.2.1 . tcp . 8080 }",
                "add element inet peapod hostports_any { udp . 53 : 10.88.0.5 . 5353 }",
                "delete element inet peapod hostports_any { udp . 53 }",
            ]
        );
        assert!(remove_script(&["hostport tcp *:1 10.0.0.1:1 }".into()]).is_err());
    }

    #[test]
    fn listed_elements_become_ids() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"map": {"family": "inet", "name": "hostports", "table": "peapod",
              "elem": [[{"concat": ["192.0.2.1", "tcp", 8080]}, {"concat": ["10.88.0.5", 80]}]]}},
            {"map": {"family": "inet", "name": "hostports_any", "table": "peapod",
              "elem": [[{"concat": ["udp", 53]}, {"concat": ["10.88.0.5", 5353]}],
                       [{"concat": ["sctp", 9]}, {"concat": ["10.88.0.5", 9]}]]}},
            {"map": {"family": "inet", "name": "hostports_any", "table": "other",
              "elem": [[{"concat": ["tcp", 1]}, {"concat": ["10.0.0.1", 1]}]]}},
            {"map": {"family": "inet", "name": "hostports", "table": "peapod"}}]}"#;
        let ids = parse_elements(json).unwrap();
        let expected: Vec<String> = elements().iter().map(ToString::to_string).collect();
        assert_eq!(ids, expected);
        assert!(parse_elements(b"not json").is_err());
    }

    #[test]
    fn ipv6_subnets_use_ip6_matches() {
        let script = node_script("br", &["fd00::/64".parse().unwrap()]);
        assert!(script.contains("ip6 saddr fd00::/64 ip6 daddr != fd00::/64 masquerade"));
    }

    #[test]
    fn no_subnets_still_makes_the_table() {
        let script = node_script("br", &[]);
        assert!(!script.contains("saddr 10."));
        assert!(script.contains("add chain inet peapod postrouting"));
    }

    #[test]
    fn rule_ids_become_deletes() {
        let script = remove_script(&["hostports:12".into(), "prerouting:7".into()]).unwrap();
        assert_eq!(
            script,
            "delete rule inet peapod hostports handle 12\n\
             delete rule inet peapod prerouting handle 7\n"
        );
        for bad in ["x", "chain:", ":3", "a b:3", "c:-1"] {
            assert!(remove_script(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn nft_errors_carry_stderr() {
        let fw = Nftables::with_binary("/bin/sh");
        // `sh -f -` reads the script from stdin: make it fail with a message.
        let err = fw
            .run("echo 'Error: no such table' >&2; exit 1")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "nft failed (exit status: 1): Error: no such table"
        );
        let missing = Nftables::with_binary("/nonexistent/nft")
            .run("")
            .unwrap_err();
        assert!(matches!(missing, FirewallError::Spawn { .. }));
    }
}
