//! Services of a node: the `peapod service` CLI, the peapod.net.v1 client, and what the
//! kernel holds for them.

use anyhow::{Context, Result, ensure};
use peapod_proto::net::v1::services_client::ServicesClient;
use tonic::transport::Channel;

use crate::node::Node;
use crate::{bin_dir, cri};

impl Node {
    /// A peapod.net.v1 Services client on the node's socket.
    pub async fn services(&self) -> Result<ServicesClient<Channel>> {
        Ok(ServicesClient::new(cri::channel(&self.socket()).await?))
    }

    /// Runs `peapod <command> --socket <node socket> <args…>` inside the node.
    pub async fn cli(&self, command: &str, args: &[&str]) -> Result<std::process::Output> {
        let bin = bin_dir().join("peapod");
        let socket = self.socket();
        let mut all = vec![bin.to_str().context("path")?, command];
        all.extend_from_slice(&["--socket", socket.to_str().context("path")?]);
        all.extend_from_slice(args);
        self.exec_output(&all).await
    }

    /// [`Node::cli`], which must succeed; its stdout.
    pub async fn cli_ok(&self, command: &str, args: &[&str]) -> Result<String> {
        let out = self.cli(command, args).await?;
        ensure!(
            out.status.success(),
            "peapod {command} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `peapod service <args…>` ([`Node::cli`]).
    pub async fn service_cli(&self, args: &[&str]) -> Result<std::process::Output> {
        self.cli("service", args).await
    }

    /// `peapod service <args…>`, which must succeed ([`Node::cli_ok`]).
    pub async fn service_ok(&self, args: &[&str]) -> Result<String> {
        self.cli_ok("service", args).await
    }

    /// The Service part of the node's nftables table as `nft list` prints it: the `svc_`
    /// maps, sets and chains whole, and of the affinity sets (`aff_`, whose elements are
    /// clients that come and go) their names. Empty when the table is gone.
    pub async fn service_rules(&self) -> Result<String> {
        let Some(table) = self.nft().await? else {
            return Ok(String::new());
        };
        let mut out = String::new();
        let mut keep = false;
        for line in table.lines() {
            // A top-level object opens one tab in: `\tmap name {`, `\tchain name {`.
            if let Some(head) = line.strip_prefix('\t').filter(|l| !l.starts_with('\t')) {
                let name = head.split_whitespace().nth(1).unwrap_or_default();
                if name.starts_with("aff_") {
                    out.push_str(line);
                    out.push('\n');
                    keep = false;
                    continue;
                }
                keep = name.starts_with("svc_");
            }
            if keep {
                out.push_str(line);
                out.push('\n');
            }
        }
        Ok(out)
    }
}
