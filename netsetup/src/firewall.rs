//! Packet filtering and address translation for the pods: the nftables table `inet peapod`.
//!
//! Node-wide rules only so far: one masquerade rule per pod subnet for traffic leaving it, and
//! forward accepts for the bridge. Per-pod rules (hostPorts) come later through
//! [`Firewall::add_pod`], whose ids are kept in [`crate::Attachment::rules`].

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use ipnet::IpNet;

/// The nftables table peapod owns, whole.
pub const TABLE: &str = "peapod";

/// What the firewall needs to know about one pod.
#[derive(Clone, Debug)]
pub struct PodRules<'a> {
    pub owner: &'a str,
    pub ip: IpAddr,
    pub host_ifname: &'a str,
}

/// A way to filter and translate pod traffic.
pub trait Firewall: Send + Sync {
    /// Builds the node-wide rules for `bridge` and every pod subnet in `subnets`, replacing
    /// what was there, in one transaction.
    fn ensure_node(&self, bridge: &str, subnets: &[IpNet]) -> Result<(), FirewallError>;

    /// Adds the rules of one pod; returns their ids, to be handed back to [`Self::remove_pod`].
    fn add_pod(&self, pod: &PodRules<'_>) -> Result<Vec<String>, FirewallError>;

    /// Removes rules made by [`Self::add_pod`].
    fn remove_pod(&self, rules: &[String]) -> Result<(), FirewallError>;
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
        let spawn_error = |source| FirewallError::Spawn {
            binary: self.binary.clone(),
            source,
        };
        let mut child = Command::new(&self.binary)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A write error means nft exited early; its status and stderr tell why.
        let _ = stdin.write_all(script.as_bytes());
        drop(stdin);
        let output = child.wait_with_output().map_err(spawn_error)?;
        if !output.status.success() {
            return Err(FirewallError::Nft {
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(())
    }
}

impl Firewall for Nftables {
    fn ensure_node(&self, bridge: &str, subnets: &[IpNet]) -> Result<(), FirewallError> {
        self.run(&node_script(bridge, subnets))
    }

    fn add_pod(&self, _pod: &PodRules<'_>) -> Result<Vec<String>, FirewallError> {
        Ok(Vec::new())
    }

    fn remove_pod(&self, rules: &[String]) -> Result<(), FirewallError> {
        if rules.is_empty() {
            return Ok(());
        }
        self.run(&remove_script(rules)?)
    }
}

/// The whole table, rebuilt atomically: `add` + `delete` makes the delete succeed whether or
/// not the table existed, and the new table replaces it in the same transaction.
pub fn node_script(bridge: &str, subnets: &[IpNet]) -> String {
    let mut subnets: Vec<IpNet> = subnets.iter().map(IpNet::trunc).collect();
    subnets.sort();
    subnets.dedup();
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {TABLE}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    let _ = writeln!(s, "  chain postrouting {{");
    let _ = writeln!(
        s,
        "    type nat hook postrouting priority srcnat; policy accept;"
    );
    for subnet in &subnets {
        let family = match subnet {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        };
        let _ = writeln!(
            s,
            "    {family} saddr {subnet} {family} daddr != {subnet} masquerade"
        );
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain forward {{");
    let _ = writeln!(
        s,
        "    type filter hook forward priority filter; policy accept;"
    );
    let _ = writeln!(s, "    iifname \"{bridge}\" accept");
    let _ = writeln!(
        s,
        "    oifname \"{bridge}\" ct state established,related accept"
    );
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

fn remove_script(rules: &[String]) -> Result<String, FirewallError> {
    let mut s = String::new();
    for id in rules {
        let invalid = || FirewallError::InvalidRuleId { id: id.clone() };
        let (chain, handle) = id.split_once(':').ok_or_else(invalid)?;
        let handle: u64 = handle.parse().map_err(|_| invalid())?;
        if chain.is_empty() || !chain.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid());
        }
        let _ = writeln!(s, "delete rule inet {TABLE} {chain} handle {handle}");
    }
    Ok(s)
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
        assert!(script.starts_with("add table inet peapod\ndelete table inet peapod\n"));
        assert_eq!(script.matches("masquerade").count(), 2);
        assert!(script.contains("ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade"));
        assert!(script.contains("ip saddr 10.89.0.0/24 ip daddr != 10.89.0.0/24 masquerade"));
        assert!(script.contains("iifname \"peapod0\" accept"));
        assert!(script.contains("oifname \"peapod0\" ct state established,related accept"));
    }

    #[test]
    fn ipv6_subnets_use_ip6_matches() {
        let script = node_script("br", &["fd00::/64".parse().unwrap()]);
        assert!(script.contains("ip6 saddr fd00::/64 ip6 daddr != fd00::/64 masquerade"));
    }

    #[test]
    fn no_subnets_still_makes_the_table() {
        let script = node_script("br", &[]);
        assert!(!script.contains("masquerade"));
        assert!(script.contains("chain postrouting"));
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
