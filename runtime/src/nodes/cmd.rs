//! `peapod node …`: the peers of a running daemon.

use std::io::Write;
use std::path::Path;

use pb::nodes_client::NodesClient;
use peapod_proto::net::v1 as pb;

#[derive(clap::Subcommand)]
pub enum NodeCmd {
    /// Add (or replace) a peer node: its pods become reachable from this node's.
    Add {
        name: String,
        /// The peer's IPv4 address on the node network.
        #[arg(long)]
        node_ip: String,
        /// The peer's pod CIDR.
        #[arg(long)]
        pod_cidr: String,
    },
    /// List this node and its peers.
    Ls,
    /// Remove a peer added with `add`.
    Rm { name: String },
}

pub async fn run(socket: &Path, cmd: NodeCmd) -> anyhow::Result<()> {
    let mut c = NodesClient::new(crate::client::channel(socket).await?);
    let mut out = std::io::stdout().lock();
    match cmd {
        NodeCmd::Add {
            name,
            node_ip,
            pod_cidr,
        } => {
            c.add_node(pb::AddNodeRequest {
                node: Some(pb::Node {
                    name: name.clone(),
                    node_ip,
                    pod_cidr,
                    from_config: false,
                }),
            })
            .await?;
            writeln!(out, "{name}")?;
        }
        NodeCmd::Ls => {
            let r = c.list_nodes(pb::ListNodesRequest {}).await?.into_inner();
            writeln!(
                out,
                "{:<24} {:<16} {:<20} SOURCE ({})",
                "NAME", "NODE-IP", "POD-CIDR", r.mode
            )?;
            for n in r.nodes {
                let source = if n.name == "self" {
                    "this node"
                } else if n.from_config {
                    "config"
                } else {
                    "api"
                };
                writeln!(
                    out,
                    "{:<24} {:<16} {:<20} {source}",
                    n.name, n.node_ip, n.pod_cidr
                )?;
            }
        }
        NodeCmd::Rm { name } => {
            c.remove_node(pb::RemoveNodeRequest { name: name.clone() })
                .await?;
            writeln!(out, "{name}")?;
        }
    }
    Ok(())
}
