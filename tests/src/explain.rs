//! `peapod net explain` and `graph` of a node, and the rules of peapod's table that a real
//! packet passes, from `nft monitor trace`.

use std::time::Duration;

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};

use crate::node::Node;

/// The table the tests add to mark packets for tracing; not peapod's.
const TRACE_TABLE: &str = "peapod_test_trace";

/// A rule of peapod's table a traced packet matched: its chain and its text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Traced {
    pub chain: String,
    pub rule: String,
}

impl Node {
    /// `peapod net <args…>` ([`Node::cli`]).
    pub async fn net_cli(&self, args: &[&str]) -> Result<std::process::Output> {
        self.cli("net", args).await
    }

    /// `peapod net <args…>`, which must succeed ([`Node::cli_ok`]).
    pub async fn net_ok(&self, args: &[&str]) -> Result<String> {
        self.cli_ok("net", args).await
    }

    /// `peapod net explain --json FROM TO [extra…]`, parsed.
    pub async fn explain(&self, from: &str, to: &str, extra: &[&str]) -> Result<serde_json::Value> {
        let mut args = vec!["explain", "--json", from, to];
        args.extend_from_slice(extra);
        let out = self.net_ok(&args).await?;
        serde_json::from_str(&out).with_context(|| format!("explain output: {out}"))
    }

    /// Traces the packets from `saddr` while `traffic` runs: the rules of `inet peapod`
    /// they matched, in order, as `nft monitor trace` printed them.
    pub async fn trace<F, Fut>(&self, saddr: &str, traffic: F) -> Result<Vec<Traced>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let script = format!(
            "add table inet {TRACE_TABLE}\n\
             add chain inet {TRACE_TABLE} pre {{ type filter hook prerouting priority -400; }}\n\
             add chain inet {TRACE_TABLE} out {{ type filter hook output priority -400; }}\n\
             add rule inet {TRACE_TABLE} pre ip saddr {saddr} meta nftrace set 1\n\
             add rule inet {TRACE_TABLE} out ip saddr {saddr} meta nftrace set 1\n"
        );
        let file = self.dir().join("trace.nft");
        std::fs::write(&file, script)?;
        self.exec(&["nft", "-f", file.to_str().context("path")?])
            .await?;
        let mut monitor =
            self.spawn(&["sh", "-c", "echo started; exec timeout 4 nft monitor trace"])?;
        monitor.wait_for_line("started").await?;
        // nft subscribes to trace events right after it starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ran = traffic().await;
        let out = monitor.finish_whatever().await;
        self.exec(&["nft", "delete", "table", "inet", TRACE_TABLE])
            .await?;
        ran?;
        Ok(parse_trace(&out?))
    }
}

/// The `inet peapod <chain> rule <text> (verdict …)` lines of `nft monitor trace` output.
pub fn parse_trace(out: &str) -> Vec<Traced> {
    out.lines()
        .filter_map(|line| {
            let rest = line.split_once(" inet peapod ")?.1;
            let (chain, rest) = rest.split_once(' ')?;
            let rule = rest.strip_prefix("rule ")?;
            let rule = match rule.rfind(" (verdict ") {
                Some(i) => &rule[..i],
                None => rule,
            };
            Some(Traced {
                chain: chain.to_owned(),
                rule: rule.trim().to_owned(),
            })
        })
        .collect()
}

/// The rules a path (or one backend's branch) of `explain --json` names: (chain, rule).
pub fn named_rules(hops: &serde_json::Value) -> Vec<Traced> {
    hops.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|h| {
            let r = h.get("rule")?;
            Some(Traced {
                chain: r["chain"].as_str()?.to_owned(),
                rule: r["rule"].as_str()?.to_owned(),
            })
        })
        .collect()
}

/// The rules a traced packet matched are exactly the rules explain names (each rule is
/// matched by every packet of the flow that passes its chain, hence the sets).
pub fn same_rules(named: &[Traced], traced: &[Traced], path: &serde_json::Value) -> Result<()> {
    let named: BTreeSet<&Traced> = named.iter().collect();
    let traced: BTreeSet<&Traced> = traced.iter().collect();
    ensure!(
        named == traced,
        "explain names {named:#?}\nthe trace passed {traced:#?}\npath {}",
        serde_json::to_string_pretty(path).unwrap_or_default()
    );
    Ok(())
}

/// The trace passed the trunk's rules and those of exactly one backend's branch (the one
/// picked); returns that backend.
pub fn one_branch_traced(path: &serde_json::Value, traced: &[Traced]) -> Result<String> {
    let trunk = named_rules(&path["hops"]);
    let branches = path["backends"].as_array().context("backends")?;
    let taken: Vec<&serde_json::Value> = branches
        .iter()
        .filter(|b| {
            let mut rules = trunk.clone();
            rules.extend(named_rules(&b["hops"]));
            same_rules(&rules, traced, path).is_ok()
        })
        .collect();
    ensure!(
        taken.len() == 1,
        "one backend's rules should be those of the trace, not {}: trace {traced:#?}\npath {}",
        taken.len(),
        serde_json::to_string_pretty(path).unwrap_or_default()
    );
    Ok(taken[0]["backend"].as_str().unwrap_or_default().to_owned())
}

/// The `kind` of each hop.
/// The kinds of the hops of a packet from a pod that leaves the node: the pod's route and
/// neighbour, its veth, the node's route, the forward accept, the masquerade, the next hop.
pub const LEAVING_THE_NODE: [&str; 7] = [
    "route",
    "neighbour",
    "veth",
    "route",
    "filter",
    "snat",
    "neighbour",
];

pub fn kinds(hops: &serde_json::Value) -> Vec<String> {
    hops.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["kind"].as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_give_chain_and_rule() {
        let out = "trace id a8de8270 inet peapod prerouting packet: iif \"pp1\" ip saddr 10.88.0.3\n\
                   trace id a8de8270 inet peapod prerouting rule ip daddr . meta l4proto . th dport vmap @svc_ip4 (verdict goto svc_x)\n\
                   trace id a8de8270 inet peapod svc_x rule meta l4proto tcp dnat ip to 10.88.0.5:8080 (verdict accept)\n\
                   trace id a8de8270 inet peapod_test_trace pre rule ip saddr 10.88.0.3 meta nftrace set 1 (verdict continue)\n\
                   trace id a8de8270 inet peapod postrouting policy accept\n";
        assert_eq!(
            parse_trace(out),
            [
                Traced {
                    chain: "prerouting".into(),
                    rule: "ip daddr . meta l4proto . th dport vmap @svc_ip4".into()
                },
                Traced {
                    chain: "svc_x".into(),
                    rule: "meta l4proto tcp dnat ip to 10.88.0.5:8080".into()
                },
            ]
        );
    }
}
