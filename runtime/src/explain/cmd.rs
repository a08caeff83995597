//! `peapod net …`: a running daemon's network, explained from the live kernel.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use netsetup::explain::topology::{self, Topology};
use netsetup::explain::{Hop, Path as NetPath};
use pb::network_client::NetworkClient;
use peapod_proto::net::v1 as pb;

#[derive(clap::Subcommand)]
pub enum NetCmd {
    /// The path a packet from a pod takes, hop by hop, from the live kernel state: the pod's
    /// route, veth and bridge port, the nftables rule and map element of a Service and its
    /// backends, the node's route to a pod, a peer node (or VXLAN) or out, and the conntrack
    /// entries that rewrite replies.
    Explain {
        /// The pod: id, unique id prefix, name, or namespace/name.
        from: String,
        /// An IPv4 address (a pod, a Service, a node, anywhere), with `:PORT` for Services.
        to: String,
        /// UDP rather than TCP.
        #[arg(long, conflicts_with = "sctp")]
        udp: bool,
        /// SCTP rather than TCP.
        #[arg(long)]
        sctp: bool,
        /// The path as JSON (stable: fields are only ever added).
        #[arg(long)]
        json: bool,
    },
    /// The node's topology (pods, veths, bridge, VXLAN, peers, Services → endpoints) as an
    /// SVG drawn by Graphviz `dot`.
    Graph {
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The `dot` source instead of SVG.
        #[arg(long, conflicts_with = "json")]
        dot: bool,
        /// The topology as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `ADDRESS` or `ADDRESS:PORT` (IPv6 as `[ADDRESS]:PORT`).
fn parse_to(to: &str) -> anyhow::Result<(String, u32)> {
    if let Ok(sa) = to.parse::<std::net::SocketAddr>() {
        return Ok((sa.ip().to_string(), u32::from(sa.port())));
    }
    if let Ok(ip) = to.parse::<std::net::IpAddr>() {
        return Ok((ip.to_string(), 0));
    }
    bail!("{to:?} is neither ADDRESS nor ADDRESS:PORT")
}

pub async fn run(socket: &Path, cmd: NetCmd) -> anyhow::Result<()> {
    let mut c = NetworkClient::new(crate::client::channel(socket).await?);
    match cmd {
        NetCmd::Explain {
            from,
            to,
            udp,
            sctp,
            json,
        } => {
            let (address, port) = parse_to(&to)?;
            let protocol = if udp {
                pb::Protocol::Udp
            } else if sctp {
                pb::Protocol::Sctp
            } else {
                pb::Protocol::Tcp
            };
            let r = c
                .explain(pb::ExplainRequest {
                    from,
                    to: address,
                    port,
                    protocol: protocol.into(),
                })
                .await?
                .into_inner();
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", r.path_json)?;
            } else {
                let path: NetPath = serde_json::from_str(&r.path_json)
                    .context("the daemon's path is not JSON this CLI reads")?;
                out.write_all(render(&path).as_bytes())?;
            }
        }
        NetCmd::Graph { output, dot, json } => {
            let r = c.topology(pb::TopologyRequest {}).await?.into_inner();
            let bytes = if json {
                let mut j = r.topology_json.into_bytes();
                j.push(b'\n');
                j
            } else {
                let t: Topology = serde_json::from_str(&r.topology_json)
                    .context("the daemon's topology is not JSON this CLI reads")?;
                let source = topology::to_dot(&t);
                if dot {
                    source.into_bytes()
                } else {
                    svg(&source)?
                }
            };
            match output {
                Some(path) => std::fs::write(&path, bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => std::io::stdout().lock().write_all(&bytes)?,
            }
        }
    }
    Ok(())
}

/// Runs `dot -Tsvg` over `source`.
fn svg(source: &str) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "cannot run `dot` (Graphviz; Debian: apt-get install graphviz); --dot prints its input",
        )?;
    let mut stdin = child.stdin.take().expect("piped");
    // On a write error dot has exited; its status says why.
    let _ = stdin.write_all(source.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().context("cannot wait for dot")?;
    if !out.status.success() {
        bail!(
            "dot failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(out.stdout)
}

fn kind(h: &Hop) -> String {
    serde_json::to_value(h.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn render_hops(s: &mut String, hops: &[Hop], n: &mut usize, indent: &str) {
    use std::fmt::Write as _;
    for h in hops {
        *n += 1;
        let _ = writeln!(
            s,
            "{indent}{:>2}  {:<16} {:<10} {}",
            n,
            h.at,
            kind(h),
            h.detail
        );
        if let Some(r) = &h.rule {
            let _ = writeln!(
                s,
                "{indent}    {:<16} {:<10} rule {}: {}",
                "", "", r.chain, r.rule
            );
        }
    }
}

fn outcome(o: netsetup::explain::Outcome) -> String {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The path for a person: one line per hop, the rule under it, a block per backend.
pub fn render(p: &NetPath) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let id = &p.from.id[..p.from.id.len().min(12)];
    let _ = writeln!(
        s,
        "from pod {} ({}, {id}) to {}/{}",
        p.from.pod, p.from.ip, p.to, p.protocol
    );
    let mut n = 0;
    render_hops(&mut s, &p.hops, &mut n, "");
    for b in &p.backends {
        let _ = writeln!(s, "  backend {}:", b.backend);
        render_hops(&mut s, &b.hops, &mut n, "  ");
        let _ = writeln!(s, "      => {}: {}", outcome(b.outcome), b.verdict);
    }
    if p.backends.is_empty() {
        let _ = writeln!(s, "=> {}: {}", outcome(p.outcome), p.verdict);
    }
    if p.reply.is_empty() {
        let _ = writeln!(s, "replies: no flow of this path in conntrack now");
    } else {
        let _ = writeln!(s, "replies (conntrack):");
        for h in &p.reply {
            let _ = writeln!(s, "      {}", h.detail);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_takes_an_address_with_or_without_a_port() {
        assert_eq!(
            parse_to("10.96.0.10:80").unwrap(),
            ("10.96.0.10".into(), 80)
        );
        assert_eq!(parse_to("10.88.0.5").unwrap(), ("10.88.0.5".into(), 0));
        assert_eq!(parse_to("[fd00::1]:53").unwrap(), ("fd00::1".into(), 53));
        assert!(parse_to("10.96.0.10:http").is_err());
        assert!(parse_to("web").is_err());
    }
}
