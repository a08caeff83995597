//! The peapod.net.v1 Nodes gRPC service over [`NodeTable`].

use std::sync::Arc;

use netsetup::peers::{Mode, Peer};
use peapod_proto::net::v1 as pb;
use tonic::{Request, Response, Status};

use super::{NodeError, NodeTable};
use crate::errors::chain;
use crate::services::convert::check_subdomain;

#[derive(Clone)]
pub struct NodesApi {
    pub table: Arc<NodeTable>,
    /// The Kubernetes watch owns the API's peers: AddNode and RemoveNode are refused.
    pub managed: bool,
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        let message = chain(&e);
        match e {
            NodeError::Invalid { .. } => Status::invalid_argument(message),
            NodeError::Conflict { .. } => Status::already_exists(message),
            NodeError::NotFound { .. } => Status::not_found(message),
            NodeError::FromConfig { .. } | NodeError::Managed => {
                Status::failed_precondition(message)
            }
            NodeError::Net(_) | NodeError::Store(_) => Status::internal(message),
        }
    }
}

fn peer_from(n: pb::Node) -> Result<Peer, NodeError> {
    check_subdomain("name", &n.name).map_err(|e| NodeError::Invalid {
        field: "name",
        reason: e.to_string(),
    })?;
    let node_ip = n.node_ip.parse().map_err(|_| NodeError::Invalid {
        field: "node_ip",
        reason: format!("{:?} is not an IPv4 address", n.node_ip),
    })?;
    let pod_cidr: ipnet::Ipv4Net = n.pod_cidr.parse().map_err(|_| NodeError::Invalid {
        field: "pod_cidr",
        reason: format!("{:?} is not an IPv4 CIDR", n.pod_cidr),
    })?;
    if pod_cidr.trunc() != pod_cidr {
        return Err(NodeError::Invalid {
            field: "pod_cidr",
            reason: format!(
                "{pod_cidr} has host bits set (the network is {})",
                pod_cidr.trunc()
            ),
        });
    }
    Ok(Peer {
        name: n.name,
        node_ip,
        pod_cidr,
    })
}

#[tonic::async_trait]
impl pb::nodes_server::Nodes for NodesApi {
    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        if self.managed {
            return Err(NodeError::Managed.into());
        }
        let node = req
            .into_inner()
            .node
            .ok_or_else(|| Status::invalid_argument("node is required"))?;
        let peer = peer_from(node)?;
        tracing::info!(name = %peer.name, node_ip = %peer.node_ip, pod_cidr = %peer.pod_cidr, "AddNode");
        self.table.add(peer).await?;
        Ok(Response::new(pb::AddNodeResponse {}))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        if self.managed {
            return Err(NodeError::Managed.into());
        }
        let name = req.into_inner().name;
        tracing::info!(%name, "RemoveNode");
        self.table.remove(&name).await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn list_nodes(
        &self,
        _req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let mut nodes = vec![pb::Node {
            name: "self".into(),
            node_ip: self
                .table
                .node_ip()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            pod_cidr: self.table.pod_cidr().to_string(),
            from_config: true,
        }];
        for p in self.table.list().await {
            nodes.push(pb::Node {
                from_config: self.table.is_from_config(&p.name),
                name: p.name,
                node_ip: p.node_ip.to_string(),
                pod_cidr: p.pod_cidr.to_string(),
            });
        }
        let mode = match self.table.mode() {
            Mode::Routed => "routed",
            Mode::Vxlan { .. } => "vxlan",
        };
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            mode: mode.into(),
        }))
    }
}
