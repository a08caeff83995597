//! The peapod.net.v1 Network service: `Explain` (a pod's packet path, hop by hop) and
//! `Topology` (the node's network as a graph), both read by netsetup from the live kernel
//! and named with what the daemon knows (pods, Services, peers).

pub mod cmd;

use std::net::IpAddr;
use std::sync::Arc;

use netsetup::explain::{self, Context, ExplainError, Pod, Query};
use netsetup::firewall::Nftables;
use netsetup::service::L4;
use peapod_proto::net::v1 as pb;
use tonic::{Request, Response, Status};

use crate::errors::chain;
use crate::nodes::NodeTable;
use crate::sandbox::model::{SandboxRecord, SandboxState};
use crate::sandbox::{Filter, SandboxError, Sandboxes};
use crate::services::ServiceTable;

#[derive(Clone)]
pub struct NetworkApi {
    pub sandboxes: Arc<Sandboxes>,
    pub services: Arc<ServiceTable>,
    pub nodes: Arc<NodeTable>,
    pub bridge: String,
}

/// A ready pod with a network of its own, as netsetup names it.
fn pod_of(rec: &SandboxRecord) -> Option<Pod> {
    let att = rec.network.as_ref()?;
    Some(Pod {
        name: rec.spec.metadata.name.clone(),
        id: rec.id.clone(),
        ip: att.ip,
        prefix_len: att.prefix_len,
        host_ifname: att.host_ifname.clone(),
        pod_ifname: att.pod_ifname.clone(),
        mac: att.mac.clone(),
        netns: rec.pins.net.clone()?,
    })
}

/// The pod `from` names: an id or unique id prefix, a name, or `namespace/name`.
fn find_pod(sandboxes: &Sandboxes, from: &str) -> Result<SandboxRecord, Status> {
    if from.is_empty() {
        return Err(Status::invalid_argument(
            "from: name a pod (id, name or namespace/name)",
        ));
    }
    match sandboxes.status(from) {
        Ok(rec) => return Ok(rec),
        Err(SandboxError::NotFound { .. }) | Err(SandboxError::Invalid { .. }) => {}
        Err(e) => return Err(Status::invalid_argument(chain(&e))),
    }
    let all = sandboxes.list(&Filter::default());
    let named: Vec<&SandboxRecord> = all
        .iter()
        .filter(|r| {
            let m = &r.spec.metadata;
            m.name == from || format!("{}/{}", m.namespace, m.name) == from
        })
        .collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Status::not_found(format!(
            "no pod {from:?} (by id, name or namespace/name)"
        ))),
        many => Err(Status::invalid_argument(format!(
            "{} pods are named {from:?}: give namespace/name or an id",
            many.len()
        ))),
    }
}

fn protocol(v: i32) -> Result<L4, Status> {
    match pb::Protocol::try_from(v) {
        Ok(pb::Protocol::Tcp) => Ok(L4::Tcp),
        Ok(pb::Protocol::Udp) => Ok(L4::Udp),
        Ok(pb::Protocol::Sctp) => Ok(L4::Sctp),
        Err(_) => Err(Status::invalid_argument(format!(
            "protocol: unknown protocol {v}"
        ))),
    }
}

fn status(e: ExplainError) -> Status {
    match e {
        ExplainError::Ipv6 { .. } => Status::invalid_argument(chain(&e)),
        _ => Status::internal(chain(&e)),
    }
}

impl NetworkApi {
    /// Runs `f` on a blocking thread over what the daemon knows of the node (pods,
    /// Services, peers), for netsetup to read the kernel with.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Context<'_>) -> Result<T, ExplainError> + Send + 'static,
    ) -> Result<T, Status> {
        let pods = self.pods();
        let services = self.services.port_rules().await;
        let peers = self.nodes.list().await;
        let bridge = self.bridge.clone();
        tokio::task::spawn_blocking(move || {
            let nft = Nftables::new();
            f(&Context {
                bridge: &bridge,
                pods: &pods,
                services: &services,
                peers: &peers,
                nft: &nft,
            })
        })
        .await
        .expect("no panic")
        .map_err(status)
    }

    /// Every ready pod with a network, for names.
    fn pods(&self) -> Vec<Pod> {
        let filter = Filter {
            state: Some(SandboxState::Ready),
            ..Filter::default()
        };
        self.sandboxes
            .list(&filter)
            .iter()
            .filter_map(pod_of)
            .collect()
    }
}

#[tonic::async_trait]
impl pb::network_server::Network for NetworkApi {
    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let r = request.into_inner();
        let to: IpAddr = r.to.parse().map_err(|_| {
            Status::invalid_argument(format!("to: {:?} is not an IP address", r.to))
        })?;
        let port = match r.port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| {
                Status::invalid_argument(format!("port: {p} is not a port (1-65535)"))
            })?),
        };
        let protocol = protocol(r.protocol)?;
        let rec = find_pod(&self.sandboxes, &r.from)?;
        let name = &rec.spec.metadata.name;
        if rec.spec.host_network() {
            return Err(Status::failed_precondition(format!(
                "pod {name} uses the node's network: its packets take the node's own path"
            )));
        }
        if rec.state != SandboxState::Ready {
            return Err(Status::failed_precondition(format!(
                "pod {name} is not ready ({:?})",
                rec.state
            )));
        }
        let Some(from) = pod_of(&rec) else {
            return Err(Status::failed_precondition(format!(
                "pod {name} has no network attachment"
            )));
        };
        let query = Query {
            from,
            to,
            port,
            protocol,
        };
        let path = self.read(move |ctx| explain::explain(ctx, &query)).await?;
        let path_json = serde_json::to_string(&path).expect("a path serialises");
        Ok(Response::new(pb::ExplainResponse { path_json }))
    }

    async fn topology(
        &self,
        _request: Request<pb::TopologyRequest>,
    ) -> Result<Response<pb::TopologyResponse>, Status> {
        let topology = self.read(explain::topology::topology).await?;
        let topology_json = serde_json::to_string(&topology).expect("a topology serialises");
        Ok(Response::new(pb::TopologyResponse { topology_json }))
    }
}
