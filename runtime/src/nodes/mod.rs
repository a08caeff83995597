//! The other nodes of the cluster (peapod.net.v1 Nodes): peers from the config file and from
//! the API, each a node IP and a pod CIDR this node routes to (see [`netsetup::peers`]). The
//! API's peers and the set last applied to the kernel are kept in `<state_dir>/peers.json`,
//! so that a restart removes the routes of peers that went while it was down.

pub mod api;
pub mod cmd;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use netsetup::peers::{Mode, Overlay, Peer};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::Config;
use crate::network::NodeNetwork;
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{reason}")]
    Conflict { reason: String },
    #[error("node {name} not found")]
    NotFound { name: String },
    #[error("node {name} comes from the config file; remove it there")]
    FromConfig { name: String },
    #[error("peers come from the Kubernetes API server's Nodes (kubeconfig): change them there")]
    Managed,
    #[error("cannot program the routes to the peers")]
    Net(#[source] netsetup::NetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    /// Peers added through the API.
    api: Vec<Peer>,
    /// Every peer last applied to the kernel.
    applied: Vec<Peer>,
}

pub struct NodeTable {
    net: Arc<NodeNetwork>,
    mode: Mode,
    node_ip: Option<Ipv4Addr>,
    cluster_cidrs: Vec<IpNet>,
    config_peers: Vec<Peer>,
    state_file: PathBuf,
    inner: Mutex<Persisted>,
}

/// Checks peers against each other and this node: names are DNS subdomains (as Kubernetes
/// names Nodes) and unique, node IPs unique and not this node's, pod CIDRs disjoint from each
/// other and from this node's.
pub fn check_peers(
    pod_cidr: &IpNet,
    node_ip: Option<Ipv4Addr>,
    peers: &[Peer],
) -> Result<(), String> {
    for (i, p) in peers.iter().enumerate() {
        crate::services::convert::check_subdomain("name", &p.name).map_err(|e| e.to_string())?;
        if Some(p.node_ip) == node_ip || p.node_ip.is_unspecified() || p.node_ip.is_loopback() {
            return Err(format!(
                "node {}: {} cannot be a peer's node IP",
                p.name, p.node_ip
            ));
        }
        if overlaps(&IpNet::V4(p.pod_cidr), pod_cidr) {
            return Err(format!(
                "node {}: pod CIDR {} overlaps this node's {pod_cidr}",
                p.name, p.pod_cidr
            ));
        }
        if p.pod_cidr.prefix_len() > 30 {
            return Err(format!(
                "node {}: pod CIDR {} is smaller than a /30",
                p.name, p.pod_cidr
            ));
        }
        for q in &peers[..i] {
            if q.name == p.name {
                return Err(format!("node {} is given twice", p.name));
            }
            if q.node_ip == p.node_ip {
                return Err(format!(
                    "nodes {} and {} have the same node IP {}",
                    q.name, p.name, p.node_ip
                ));
            }
            if overlaps(&IpNet::V4(q.pod_cidr), &IpNet::V4(p.pod_cidr)) {
                return Err(format!(
                    "nodes {} and {} have overlapping pod CIDRs {} and {}",
                    q.name, p.name, q.pod_cidr, p.pod_cidr
                ));
            }
        }
    }
    Ok(())
}

/// Of `candidates`, in order, those that can join `admitted` (the peers in force before them,
/// e.g. the config file's): each is checked with [`check_peers`] against this node, `admitted`
/// and the candidates taken before it. The others come back with the reason.
pub fn admit(
    pod_cidr: &IpNet,
    node_ip: Option<Ipv4Addr>,
    admitted: &[Peer],
    candidates: Vec<Peer>,
) -> (Vec<Peer>, Vec<(String, String)>) {
    let mut all = admitted.to_vec();
    let (mut taken, mut refused) = (Vec::new(), Vec::new());
    for p in candidates {
        if admitted.iter().any(|a| a.name == p.name) {
            refused.push((p.name, "the config file names this node".into()));
            continue;
        }
        all.push(p);
        match check_peers(pod_cidr, node_ip, &all) {
            Ok(()) => taken.push(all.last().expect("just pushed").clone()),
            Err(reason) => {
                let p = all.pop().expect("just pushed");
                refused.push((p.name, reason));
            }
        }
    }
    (taken, refused)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl NodeTable {
    pub fn open(cfg: &Config, net: Arc<NodeNetwork>) -> Result<NodeTable, NodeError> {
        let state_file = cfg.state_dir.join("peers.json");
        let persisted: Persisted = store::read_json_opt(&state_file)?.unwrap_or_default();
        Ok(NodeTable {
            net,
            mode: cfg.mode,
            node_ip: cfg.node_ip,
            cluster_cidrs: cfg.cluster_cidrs.clone(),
            config_peers: cfg.peers.clone(),
            state_file,
            inner: Mutex::new(persisted),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn pod_cidr(&self) -> IpNet {
        self.net.cidr()
    }

    pub fn node_ip(&self) -> Option<Ipv4Addr> {
        self.node_ip
    }

    /// The peers in force: the config file's, then the API's not named there.
    fn desired(&self, api: &[Peer]) -> Vec<Peer> {
        let mut all = self.config_peers.clone();
        all.extend(
            api.iter()
                .filter(|p| !self.config_peers.iter().any(|c| c.name == p.name))
                .cloned(),
        );
        all
    }

    pub fn is_from_config(&self, name: &str) -> bool {
        self.config_peers.iter().any(|p| p.name == name)
    }

    /// Every peer in force.
    pub async fn list(&self) -> Vec<Peer> {
        let inner = self.inner.lock().await;
        self.desired(&inner.api)
    }

    /// Makes the kernel reach the peers in force (at start-up, and after the pod CIDR
    /// changed).
    pub async fn sync(&self) -> Result<usize, NodeError> {
        let mut inner = self.inner.lock().await;
        let api = inner.api.clone();
        self.apply(&mut inner, api).await
    }

    pub async fn add(&self, peer: Peer) -> Result<(), NodeError> {
        if self.is_from_config(&peer.name) {
            return Err(NodeError::FromConfig { name: peer.name });
        }
        let mut inner = self.inner.lock().await;
        let mut api: Vec<Peer> = inner
            .api
            .iter()
            .filter(|p| p.name != peer.name)
            .cloned()
            .collect();
        api.push(peer);
        api.sort();
        check_peers(&self.net.cidr(), self.node_ip, &self.desired(&api))
            .map_err(|reason| NodeError::Conflict { reason })?;
        self.apply(&mut inner, api).await.map(drop)
    }

    pub async fn remove(&self, name: &str) -> Result<(), NodeError> {
        if self.is_from_config(name) {
            return Err(NodeError::FromConfig { name: name.into() });
        }
        let mut inner = self.inner.lock().await;
        if !inner.api.iter().any(|p| p.name == name) {
            return Err(NodeError::NotFound { name: name.into() });
        }
        let api: Vec<Peer> = inner
            .api
            .iter()
            .filter(|p| p.name != name)
            .cloned()
            .collect();
        self.apply(&mut inner, api).await.map(drop)
    }

    /// Makes the API's peers exactly those of `candidates` that [`admit`] takes (after the
    /// config file's), in one change of the kernel's routes; answers the refused ones with
    /// the reason. The Kubernetes watch (`crate::kube`) owns the API's peers this way.
    pub async fn replace_api(
        &self,
        candidates: Vec<Peer>,
    ) -> Result<Vec<(String, String)>, NodeError> {
        let mut inner = self.inner.lock().await;
        let (mut api, refused) = admit(
            &self.net.cidr(),
            self.node_ip,
            &self.config_peers,
            candidates,
        );
        api.sort();
        if api != inner.api || self.desired(&api) != inner.applied {
            self.apply(&mut inner, api).await?;
        }
        Ok(refused)
    }

    /// Applies the peers in force with `api`, then records both.
    async fn apply(&self, inner: &mut Persisted, api: Vec<Peer>) -> Result<usize, NodeError> {
        let desired = self.desired(&api);
        let pod_cidr = match self.net.cidr() {
            IpNet::V4(v4) => v4,
            IpNet::V6(_) => Ipv4Net::default(),
        };
        let overlay = Overlay {
            mode: self.mode,
            node_ip: self.node_ip,
            pod_cidr,
            cluster_cidrs: self.cluster_cidrs.clone(),
        };
        let (net, previous, wanted) = (self.net.clone(), inner.applied.clone(), desired.clone());
        tokio::task::spawn_blocking(move || net.net.sync_peers(&overlay, &previous, &wanted))
            .await
            .expect("no panic")
            .map_err(NodeError::Net)?;
        let next = Persisted {
            api,
            applied: desired,
        };
        store::write_json(&self.state_file, &next)?;
        *inner = next;
        Ok(inner.applied.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, ip: &str, cidr: &str) -> Peer {
        Peer {
            name: name.into(),
            node_ip: ip.parse().unwrap(),
            pod_cidr: cidr.parse().unwrap(),
        }
    }

    #[test]
    fn peers_must_be_disjoint_from_each_other_and_this_node() {
        let own: IpNet = "10.91.0.0/24".parse().unwrap();
        let me = Some("192.0.2.1".parse().unwrap());
        let ok = [
            peer("b", "192.0.2.2", "10.92.0.0/24"),
            peer("c", "192.0.2.3", "10.93.0.0/24"),
        ];
        assert_eq!(check_peers(&own, me, &ok), Ok(()));
        let bad: [(&str, Vec<Peer>); 6] = [
            (
                "overlaps this node's",
                vec![peer("b", "192.0.2.2", "10.91.0.0/25")],
            ),
            ("this node's", vec![peer("b", "192.0.2.1", "10.92.0.0/24")]),
            (
                "given twice",
                vec![ok[0].clone(), peer("b", "192.0.2.9", "10.99.0.0/24")],
            ),
            (
                "same node IP",
                vec![ok[0].clone(), peer("c", "192.0.2.2", "10.99.0.0/24")],
            ),
            (
                "overlapping pod CIDRs",
                vec![
                    peer("b", "192.0.2.2", "10.92.0.0/16"),
                    peer("c", "192.0.2.3", "10.92.5.0/24"),
                ],
            ),
            (
                "DNS subdomain",
                vec![peer("B", "192.0.2.2", "10.92.0.0/24")],
            ),
        ];
        for (why, peers) in bad {
            let err = check_peers(&own, me, &peers).unwrap_err();
            assert!(
                err.contains(why) || why == "this node's" && err.contains("cannot be"),
                "{why}: {err}"
            );
        }
    }

    #[test]
    fn admit_takes_the_candidates_that_fit_and_says_why_not_the_others() {
        let own: IpNet = "10.91.0.0/24".parse().unwrap();
        let me = Some("192.0.2.1".parse().unwrap());
        let config = [peer("c", "192.0.2.3", "10.93.0.0/24")];
        let (taken, refused) = admit(
            &own,
            me,
            &config,
            vec![
                peer("b.example", "192.0.2.2", "10.92.0.0/24"),
                peer("c", "192.0.2.30", "10.99.0.0/24"),
                peer("d", "192.0.2.4", "10.93.0.0/25"),
                peer("e", "192.0.2.2", "10.95.0.0/24"),
                peer("f", "192.0.2.6", "10.96.0.0/24"),
            ],
        );
        let names: Vec<&str> = taken.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b.example", "f"]);
        let why: Vec<(&str, &str)> = refused
            .iter()
            .map(|(n, r)| (n.as_str(), r.as_str()))
            .collect();
        assert_eq!(why.len(), 3, "{why:?}");
        assert_eq!(why[0], ("c", "the config file names this node"));
        assert!(
            why[1].0 == "d" && why[1].1.contains("overlapping"),
            "{why:?}"
        );
        assert!(
            why[2].0 == "e" && why[2].1.contains("same node IP"),
            "{why:?}"
        );
    }
}
