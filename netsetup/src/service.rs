//! Services: virtual addresses rewritten (DNAT) to one of their backends, in the table
//! `inet peapod`.
//!
//! One verdict map per kind of key sends a packet to the chain of its service port in one
//! lookup, whatever the number of Services: `svc_ip4` / `svc_ip6` (virtual address . protocol
//! . port, for cluster and external IPs) and `svc_nodeports` (protocol . port on any local
//! address). The chain `svc_<id>` picks a backend with `numgen random`; with ClientIP affinity
//! each backend has its own chain `svc_<id>_<backend>` and set `aff_<id>_<backend>` (client
//! addresses, with a timeout) checked first. A service port with no backend has its keys in
//! the sets `svc_noep4` / `svc_noep6` / `svc_noep_nodeports` instead, which a filter chain
//! answers with a TCP reset or an ICMP port unreachable. Every change is one `nft -f`
//! transaction: a packet sees the old state or the new, never half of it.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use crate::firewall::TABLE;

pub const MAP_IP4: &str = "svc_ip4";
pub const MAP_IP6: &str = "svc_ip6";
pub const MAP_NODEPORTS: &str = "svc_nodeports";
pub const NOEP_IP4: &str = "svc_noep4";
pub const NOEP_IP6: &str = "svc_noep6";
pub const NOEP_NODEPORTS: &str = "svc_noep_nodeports";
/// The chain answering connections to a service port without backends.
pub const REJECT_CHAIN: &str = "svc_reject";

/// The transport protocols a Service can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4 {
    Tcp,
    Udp,
    Sctp,
}

impl L4 {
    /// Its IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4::Tcp => 6,
            L4::Udp => 17,
            L4::Sctp => 132,
        }
    }
}

impl fmt::Display for L4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
            L4::Sctp => "sctp",
        })
    }
}

/// One port of one Service, as the kernel gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortRules {
    /// Names its chains and sets: lowercase letters, digits and `_`, unique per service port.
    pub id: String,
    /// The virtual addresses: the cluster IP and the external IPs, of one family.
    pub addresses: Vec<IpAddr>,
    pub protocol: L4,
    pub port: u16,
    /// A port on every local address of the node.
    pub node_port: Option<u16>,
    /// ClientIP affinity: how long (seconds) a client sticks to its backend.
    pub affinity: Option<u32>,
    /// Where connections go, of the addresses' family; none: they are rejected.
    pub backends: Vec<SocketAddr>,
}

impl ServicePortRules {
    /// `ip` or `ip6`, from the first address (IPv4 when there is none).
    fn family(&self) -> &'static str {
        match self.addresses.first() {
            Some(IpAddr::V6(_)) => "ip6",
            _ => "ip",
        }
    }

    pub fn chain(&self) -> String {
        format!("svc_{}", self.id)
    }

    /// Map (or set) and key of each address, then of the node port.
    fn keys(&self, noep: bool) -> Vec<(&'static str, String)> {
        let mut keys: Vec<(&'static str, String)> = self
            .addresses
            .iter()
            .map(|a| {
                let map = match (a, noep) {
                    (IpAddr::V4(_), false) => MAP_IP4,
                    (IpAddr::V6(_), false) => MAP_IP6,
                    (IpAddr::V4(_), true) => NOEP_IP4,
                    (IpAddr::V6(_), true) => NOEP_IP6,
                };
                (map, format!("{a} . {} . {}", self.protocol, self.port))
            })
            .collect();
        if let Some(np) = self.node_port {
            let map = if noep { NOEP_NODEPORTS } else { MAP_NODEPORTS };
            keys.push((map, format!("{} . {np}", self.protocol)));
        }
        keys
    }

    /// Per-backend chain and set names (ClientIP affinity only).
    fn backend_names(&self) -> BTreeSet<String> {
        if self.affinity.is_none() {
            return BTreeSet::new();
        }
        self.backends
            .iter()
            .map(|b| format!("{}_{}", self.id, backend_tag(b)))
            .collect()
    }
}

/// A backend as a name part: its address and port in hex.
fn backend_tag(b: &SocketAddr) -> String {
    let mut s = String::new();
    match b.ip() {
        IpAddr::V4(a) => a.octets().iter().for_each(|o| {
            let _ = write!(s, "{o:02x}");
        }),
        IpAddr::V6(a) => a.octets().iter().for_each(|o| {
            let _ = write!(s, "{o:02x}");
        }),
    }
    let _ = write!(s, "_{:04x}", b.port());
    s
}

/// `ip:port` as nft writes a DNAT target (`[v6]:port` for IPv6).
fn target(b: &SocketAddr) -> String {
    match b {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

/// The maps, sets and reject chain of Services, added if missing (a no-op if there).
pub fn declare(s: &mut String) {
    let t = TABLE;
    let _ = writeln!(
        s,
        "add map inet {t} {MAP_IP4} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}\n\
         add map inet {t} {MAP_IP6} {{ type ipv6_addr . inet_proto . inet_service : verdict; }}\n\
         add map inet {t} {MAP_NODEPORTS} {{ type inet_proto . inet_service : verdict; }}\n\
         add set inet {t} {NOEP_IP4} {{ type ipv4_addr . inet_proto . inet_service; }}\n\
         add set inet {t} {NOEP_IP6} {{ type ipv6_addr . inet_proto . inet_service; }}\n\
         add set inet {t} {NOEP_NODEPORTS} {{ type inet_proto . inet_service; }}\n\
         add chain inet {t} {REJECT_CHAIN}\n\
         flush chain inet {t} {REJECT_CHAIN}\n\
         add rule inet {t} {REJECT_CHAIN} meta l4proto tcp reject with tcp reset\n\
         add rule inet {t} {REJECT_CHAIN} reject with icmpx port-unreachable"
    );
}

/// The rules of the node's base chains that look Services up (see [`crate::firewall`]):
/// `(nat rules for prerouting and output, filter rules for prerouting and output)`.
pub fn lookup_rules() -> ([String; 3], [String; 3]) {
    (
        [
            format!("ip daddr . meta l4proto . th dport vmap @{MAP_IP4}"),
            format!("ip6 daddr . meta l4proto . th dport vmap @{MAP_IP6}"),
            format!("fib daddr type local meta l4proto . th dport vmap @{MAP_NODEPORTS}"),
        ],
        [
            format!("ip daddr . meta l4proto . th dport @{NOEP_IP4} goto {REJECT_CHAIN}"),
            format!("ip6 daddr . meta l4proto . th dport @{NOEP_IP6} goto {REJECT_CHAIN}"),
            format!(
                "fib daddr type local meta l4proto . th dport @{NOEP_NODEPORTS} goto {REJECT_CHAIN}"
            ),
        ],
    )
}

/// Adds an element if missing, then deletes it: a delete that succeeds when already gone.
fn delete_element(s: &mut String, map: &str, key: &str, value: Option<&str>) {
    let t = TABLE;
    match value {
        Some(v) => {
            let _ = writeln!(s, "add element inet {t} {map} {{ {key} : {v} }}");
        }
        None => {
            let _ = writeln!(s, "add element inet {t} {map} {{ {key} }}");
        }
    }
    let _ = writeln!(s, "delete element inet {t} {map} {{ {key} }}");
}

/// Removes a chain (and what it jumps to is flushed first by the caller).
fn delete_chain(s: &mut String, chain: &str) {
    let t = TABLE;
    let _ = writeln!(
        s,
        "add chain inet {t} {chain}\nflush chain inet {t} {chain}\ndelete chain inet {t} {chain}"
    );
}

/// Writes what takes the kernel from `old` (what was applied for this service port, if
/// anything) to `new` (nothing: the service port goes). Both have the same id.
pub fn change(s: &mut String, old: Option<&ServicePortRules>, new: Option<&ServicePortRules>) {
    let t = TABLE;
    let Some(any) = new.or(old) else { return };
    let chain = any.chain();
    let new_keys = |noep| -> BTreeSet<(&'static str, String)> {
        new.map(|n| {
            if noep == n.backends.is_empty() {
                n.keys(noep).into_iter().collect()
            } else {
                BTreeSet::new()
            }
        })
        .unwrap_or_default()
    };
    let (keep_map, keep_noep) = (new_keys(false), new_keys(true));
    let verdict = format!("goto {chain}");
    if let Some(old) = old {
        for k in old.keys(false) {
            if !keep_map.contains(&k) {
                delete_element(s, k.0, &k.1, Some(&verdict));
            }
        }
        for k in old.keys(true) {
            if !keep_noep.contains(&k) {
                delete_element(s, k.0, &k.1, None);
            }
        }
    }
    let _ = writeln!(
        s,
        "add chain inet {t} {chain}\nflush chain inet {t} {chain}"
    );
    let old_backends = old.map(ServicePortRules::backend_names).unwrap_or_default();
    let new_backends = new.map(ServicePortRules::backend_names).unwrap_or_default();
    for gone in old_backends.difference(&new_backends) {
        delete_chain(s, &format!("svc_{gone}"));
        let _ = writeln!(
            s,
            "add set inet {t} aff_{gone} {{ type {}_addr; flags dynamic,timeout; }}\ndelete set inet {t} aff_{gone}",
            if any.family() == "ip" { "ipv4" } else { "ipv6" }
        );
    }
    let Some(new) = new else {
        let _ = writeln!(s, "delete chain inet {t} {chain}");
        return;
    };
    fill(s, new);
    for (map, key) in &keep_map {
        let _ = writeln!(s, "add element inet {t} {map} {{ {key} : {verdict} }}");
    }
    for (set, key) in &keep_noep {
        let _ = writeln!(s, "add element inet {t} {set} {{ {key} }}");
    }
}

/// When `old` → `new` changes nothing but the backends of service ports without affinity
/// that have backends before and after (their chains and map elements stay), the rules each
/// of their chains gets, as [`fill`] writes them; else `None`.
pub fn rules_only(
    old: &[ServicePortRules],
    new: &[ServicePortRules],
) -> Option<Vec<crate::nftnl::ChainRules>> {
    if old.len() != new.len() {
        return None;
    }
    let old: std::collections::BTreeMap<&str, &ServicePortRules> =
        old.iter().map(|o| (o.id.as_str(), o)).collect();
    let mut out = Vec::new();
    for n in new {
        let o = *old.get(n.id.as_str())?;
        let plain = |p: &ServicePortRules| p.affinity.is_none() && !p.backends.is_empty();
        if !plain(o) || !plain(n) || o.keys(false) != n.keys(false) {
            return None;
        }
        if o.backends == n.backends {
            continue;
        }
        let rules = n
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| crate::nftnl::DnatRule {
                modulus: pick_modulus(i, n.backends.len()),
                protocol: n.protocol.number(),
                target: *b,
            })
            .collect();
        out.push(crate::nftnl::ChainRules {
            chain: n.chain(),
            rules,
        });
    }
    Some(out)
}

/// The modulus of the `numgen random mod M 0` that takes backend `i` of `n` (see [`fill`]);
/// none for the last, which takes what is left.
fn pick_modulus(i: usize, n: usize) -> Option<u32> {
    (i + 1 < n).then(|| (n - i) as u32)
}

/// The rules of a service port's chain (added and flushed by the caller) and its backend
/// chains and affinity sets.
///
/// Backend `i` of `n` is taken by a rule `numgen random mod (n - i) 0`: reached with
/// probability (n - i) / n and matching with 1 / (n - i), so each backend gets 1 / n. One rule
/// per backend, no anonymous map: the kernel names each anonymous set by scanning all sets of
/// the table, which makes loading 10,000 Services quadratic (20 s instead of under one).
/// Only a connection's first packet passes NAT chains, so the per-packet cost is unchanged.
fn fill(s: &mut String, p: &ServicePortRules) {
    let t = TABLE;
    let chain = p.chain();
    let (fam, proto) = (p.family(), p.protocol);
    let addr_type = if fam == "ip" {
        "ipv4_addr"
    } else {
        "ipv6_addr"
    };
    let n = p.backends.len();
    // `pick(i)`: the match that takes backend i, empty for the last one.
    let pick = |i: usize| {
        pick_modulus(i, n)
            .map(|m| format!("numgen random mod {m} 0 "))
            .unwrap_or_default()
    };
    let Some(timeout) = p.affinity else {
        for (i, b) in p.backends.iter().enumerate() {
            let _ = writeln!(
                s,
                "add rule inet {t} {chain} {}meta l4proto {proto} dnat {fam} to {}",
                pick(i),
                target(b)
            );
        }
        return;
    };
    let mut names = Vec::new();
    for b in &p.backends {
        let name = format!("{}_{}", p.id, backend_tag(b));
        let _ = writeln!(
            s,
            "add set inet {t} aff_{name} {{ type {addr_type}; flags dynamic,timeout; timeout {timeout}s; }}\n\
             add chain inet {t} svc_{name}\n\
             flush chain inet {t} svc_{name}\n\
             add rule inet {t} svc_{name} update @aff_{name} {{ {fam} saddr timeout {timeout}s }} meta l4proto {proto} dnat {fam} to {}\n\
             add rule inet {t} {chain} {fam} saddr @aff_{name} goto svc_{name}",
            target(b)
        );
        names.push(name);
    }
    for (i, name) in names.iter().enumerate() {
        let _ = writeln!(s, "add rule inet {t} {chain} {}goto svc_{name}", pick(i));
    }
}

/// What the kernel has of Services, by name: chains `svc_*` and sets `aff_*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Present {
    pub chains: Vec<String>,
    pub sets: Vec<String>,
}

/// Replaces every Service in the kernel with `all`, in one transaction: the maps are
/// flushed and filled again, chains and affinity sets no longer wanted go, those wanted are
/// refilled (affinity sets keep their clients).
pub fn sync(s: &mut String, present: &Present, all: &[ServicePortRules]) {
    let t = TABLE;
    for m in [
        MAP_IP4,
        MAP_IP6,
        MAP_NODEPORTS,
        NOEP_IP4,
        NOEP_IP6,
        NOEP_NODEPORTS,
    ] {
        let kind = if m.contains("noep") { "set" } else { "map" };
        let _ = writeln!(s, "flush {kind} inet {t} {m}");
    }
    let mut wanted_chains = BTreeSet::new();
    let mut wanted_sets = BTreeSet::new();
    for p in all {
        wanted_chains.insert(p.chain());
        for b in p.backend_names() {
            wanted_chains.insert(format!("svc_{b}"));
            wanted_sets.insert(format!("aff_{b}"));
        }
    }
    for c in &present.chains {
        let _ = writeln!(s, "flush chain inet {t} {c}");
    }
    for c in present
        .chains
        .iter()
        .filter(|c| !wanted_chains.contains(*c))
    {
        let _ = writeln!(s, "delete chain inet {t} {c}");
    }
    for set in present.sets.iter().filter(|n| !wanted_sets.contains(*n)) {
        let _ = writeln!(s, "delete set inet {t} {set}");
    }
    for p in all {
        let chain = p.chain();
        let _ = writeln!(s, "add chain inet {t} {chain}");
        fill(s, p);
        let noep = p.backends.is_empty();
        for (map, key) in p.keys(noep) {
            if noep {
                let _ = writeln!(s, "add element inet {t} {map} {{ {key} }}");
            } else {
                let _ = writeln!(s, "add element inet {t} {map} {{ {key} : goto {chain} }}");
            }
        }
    }
}

/// Service chains and affinity sets in `nft -j list chains` / `nft -j list sets` output.
pub fn parse_present(chains: &[u8], sets: &[u8]) -> Result<Present, serde_json::Error> {
    let mut present = Present::default();
    let names = |json: &[u8], kind: &str, prefix: &str| -> Result<Vec<String>, serde_json::Error> {
        let doc: serde_json::Value = serde_json::from_slice(json)?;
        Ok(doc["nftables"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|item| item.get(kind))
            .filter(|o| o["family"] == "inet" && o["table"] == TABLE)
            .filter_map(|o| o["name"].as_str())
            .filter(|n| n.starts_with(prefix) && *n != REJECT_CHAIN)
            .filter(|n| !n.starts_with("svc_noep"))
            .map(str::to_owned)
            .collect())
    };
    present.chains = names(chains, "chain", "svc_")?;
    present.sets = names(sets, "set", "aff_")?;
    Ok(present)
}

#[cfg(test)]
mod tests;
