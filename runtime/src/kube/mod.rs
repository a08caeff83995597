//! peapod in the place of kube-proxy: with `kubeconfig` set, the daemon watches the cluster's
//! Services, EndpointSlices (discovery.k8s.io/v1) and Nodes, and programs the same data path
//! as its own Services and Nodes APIs.
//!
//! Reflectors keep the three kinds in memory (trimmed of what peapod does not read). A change
//! opens a 100 ms window that gathers more; then the whole desired state is made from them
//! ([`translate`]) and applied: Services with [`ServiceTable::apply_many`] with prune, peers
//! with [`NodeTable::replace_api`]. Kubernetes owns every Service and every peer but those of
//! the config file: whatever else there is goes, and the daemon's APIs refuse to change them
//! (`managed`). Nothing is applied before the first full list of the kinds involved, so a
//! restart does not drop the Services the records hold while the API server is away.
//!
//! Failures are logged and retried with the watcher's backoff (client-go's: 0.8 s doubling to
//! 30 s, with jitter); the CRI never waits on the API server.

pub mod translate;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ::kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::utils::Backoff;
use ::kube::runtime::watcher::DefaultBackoff;
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Api, Client, Resource, ResourceExt};
use futures_util::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::{Node, NodeStatus, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use tracing::{error, info, warn};

use crate::nodes::NodeTable;
use crate::services::ServiceTable;
use crate::services::model::Service;
use translate::Skipped;

/// How long the watch waits after a change for more before it applies them.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Services meant for another proxy carry this label; kube-proxy leaves them alone too.
const OTHER_PROXY: &str = "!service.kubernetes.io/service-proxy-name";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot load kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("cannot make a Kubernetes client from kubeconfig {path}")]
    Client {
        path: PathBuf,
        #[source]
        source: ::kube::Error,
    },
}

/// The watch, as the daemon starts it.
pub struct Watch {
    pub kubeconfig: PathBuf,
    /// This node's Node is no peer.
    pub node_name: String,
    pub services: Arc<ServiceTable>,
    pub nodes: Arc<NodeTable>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Services,
    Slices,
    Nodes,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::Slices => "endpointslices",
            Kind::Nodes => "nodes",
        }
    }
}

/// What a watch stream says: a change of its store (`true`: a full list that replaced it),
/// or an error it will retry after its backoff.
type Signal = (Kind, Result<bool, watcher::Error>);

/// What the loop knows between syncs.
#[derive(Default)]
struct State {
    /// Kinds whose first full list is in.
    listed: Vec<Kind>,
    services_dirty: bool,
    nodes_dirty: bool,
    /// What was last applied, so that a change that changes nothing is not applied.
    applied_services: Option<Vec<Service>>,
    applied_peers: Option<Vec<netsetup::peers::Peer>>,
    /// What was left out last time, so that each reason is logged once, when it appears.
    skipped_services: BTreeSet<Skipped>,
    skipped_nodes: BTreeSet<Skipped>,
    refused_peers: Vec<Skipped>,
    /// Whether the cluster has this node, and its pod CIDR there, as last logged.
    own: Option<(bool, Option<String>)>,
}

impl State {
    fn listed(&self, k: Kind) -> bool {
        self.listed.contains(&k)
    }

    fn take(&mut self, (kind, r): Signal) {
        match r {
            Ok(full) => {
                if full && !self.listed(kind) {
                    info!(kind = kind.name(), "listed from the Kubernetes API server");
                    self.listed.push(kind);
                }
                match kind {
                    Kind::Services | Kind::Slices => self.services_dirty = true,
                    Kind::Nodes => self.nodes_dirty = true,
                }
            }
            Err(e) => {
                warn!(kind = kind.name(), error = %chain(&e), "cannot watch the Kubernetes API server; retrying")
            }
        }
    }
}

/// `e` and its sources, `: `-separated, leaving out a source whose text is in the line already
/// (the Kubernetes client's errors repeat their sources in their own text).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = c.source();
    }
    s
}

/// Logs what is in `now` and was not in `last`, then remembers `now`.
fn report(last: &mut BTreeSet<Skipped>, now: Vec<Skipped>) {
    let now: BTreeSet<Skipped> = now.into_iter().collect();
    for s in now.difference(last) {
        warn!(object = %s.object, reason = %s.reason, "left out of the Kubernetes sync");
    }
    *last = now;
}

async fn connect(path: &Path) -> Result<Client, KubeError> {
    let kubeconfig = |source| KubeError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kc = Kubeconfig::read_from(path).map_err(kubeconfig)?;
    let cfg = ::kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig)?;
    info!(server = %cfg.cluster_url, kubeconfig = %path.display(), "watching the Kubernetes API server");
    Client::try_from(cfg).map_err(|source| KubeError::Client {
        path: path.to_owned(),
        source,
    })
}

/// A reflector over every `K` (matching `labels`) in the cluster, trimmed by `trim`, and the
/// stream that feeds it, which must be polled.
fn reflect<K>(
    client: &Client,
    kind: Kind,
    labels: &str,
    trim: fn(&mut K),
) -> (Store<K>, Pin<Box<dyn Stream<Item = Signal> + Send>>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
{
    let (reader, writer) = reflector::store();
    let mut config = watcher::Config::default();
    if !labels.is_empty() {
        config = config.labels(labels);
    }
    let s = watcher(Api::<K>::all(client.clone()), config)
        .modify(trim)
        .default_backoff()
        .reflect(writer)
        .filter_map(move |r| {
            std::future::ready(match r {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some((kind, Ok(false))),
                Ok(watcher::Event::InitDone) => Some((kind, Ok(true))),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
                Err(e) => Some((kind, Err(e))),
            })
        });
    (reader, s.boxed())
}

fn trim_meta<K: ResourceExt>(o: &mut K) {
    o.managed_fields_mut().clear();
    o.annotations_mut().clear();
}

impl Watch {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(self) {
        let mut backoff = DefaultBackoff::default();
        let client = loop {
            match connect(&self.kubeconfig).await {
                Ok(c) => break c,
                Err(e) => {
                    let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                    error!(error = %chain(&e), retry_in = ?wait, "cannot watch the Kubernetes API server");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        backoff.reset();
        let (services, s1) = reflect(&client, Kind::Services, OTHER_PROXY, |s: &mut KService| {
            trim_meta(s);
            s.status = None;
        });
        let (slices, s2) = reflect(
            &client,
            Kind::Slices,
            &format!(
                "{},!service.kubernetes.io/headless,{OTHER_PROXY}",
                translate::SERVICE_NAME_LABEL
            ),
            trim_meta::<EndpointSlice>,
        );
        let (nodes, s3) = reflect(&client, Kind::Nodes, "", |n: &mut Node| {
            trim_meta(n);
            n.status = n.status.take().map(|s| NodeStatus {
                addresses: s.addresses,
                ..NodeStatus::default()
            });
        });
        let stores = Stores {
            services,
            slices,
            nodes,
        };
        let mut signals = stream::select_all([s1, s2, s3]);
        let mut state = State::default();
        let mut retry_in: Option<Duration> = None;
        loop {
            let first = match retry_in {
                Some(wait) => tokio::time::timeout(wait, signals.next()).await.ok(),
                None => Some(signals.next().await),
            };
            match first {
                Some(None) => {
                    error!("the Kubernetes watch streams ended; no more changes are applied");
                    return;
                }
                Some(Some(signal)) => state.take(signal),
                None => {} // time to retry
            }
            let quiet = tokio::time::Instant::now() + DEBOUNCE;
            while let Ok(Some(signal)) = tokio::time::timeout_at(quiet, signals.next()).await {
                state.take(signal);
            }
            retry_in = match self.sync(&stores, &mut state).await {
                Ok(()) => {
                    backoff.reset();
                    None
                }
                Err(()) => backoff.next(),
            };
        }
    }

    /// Applies what changed; `Err`: something failed (and was logged), to be tried again.
    async fn sync(&self, stores: &Stores, state: &mut State) -> Result<(), ()> {
        let mut r = Ok(());
        if state.services_dirty && state.listed(Kind::Services) && state.listed(Kind::Slices) {
            let (services, slices) = (stores.services.state(), stores.slices.state());
            let t = translate::services(services.iter().map(|s| &**s), slices.iter().map(|s| &**s));
            report(&mut state.skipped_services, t.skipped);
            if state.applied_services.as_ref() == Some(&t.services) {
                state.services_dirty = false;
            } else {
                match self.services.apply_many(t.services.clone(), true).await {
                    Ok(done) => {
                        info!(
                            services = t.services.len(),
                            created = done.created,
                            updated = done.updated,
                            removed = done.removed,
                            "services from Kubernetes applied"
                        );
                        state.applied_services = Some(t.services);
                        state.services_dirty = false;
                    }
                    Err(e) => {
                        error!(error = %chain(&e), "cannot apply the services from Kubernetes");
                        r = Err(());
                    }
                }
            }
        }
        if state.nodes_dirty && state.listed(Kind::Nodes) {
            r = r.and(self.sync_peers(stores, state).await);
        }
        r
    }

    async fn sync_peers(&self, stores: &Stores, state: &mut State) -> Result<(), ()> {
        let nodes = stores.nodes.state();
        let t = translate::peers(nodes.iter().map(|n| &**n), &self.node_name);
        let own = (t.found_self, t.own_pod_cidr.clone());
        if state.own.as_ref() != Some(&own) {
            match &own {
                (true, cidr) => info!(
                    node = %self.node_name,
                    pod_cidr = cidr.as_deref().unwrap_or("none"),
                    "this node in the cluster"
                ),
                (false, _) => warn!(
                    node = %self.node_name,
                    "the cluster has no Node of this name (set node_name)"
                ),
            }
            state.own = Some(own);
        }
        let mut r = Ok(());
        if state.applied_peers.as_ref() != Some(&t.peers) {
            match self.nodes.replace_api(t.peers.clone()).await {
                Ok(refused) => {
                    info!(
                        peers = t.peers.len().saturating_sub(refused.len()),
                        "peers from Kubernetes applied"
                    );
                    state.refused_peers = refused
                        .into_iter()
                        .map(|(name, reason)| Skipped {
                            object: format!("node {name}"),
                            reason,
                        })
                        .collect();
                    state.applied_peers = Some(t.peers);
                    state.nodes_dirty = false;
                }
                Err(e) => {
                    error!(error = %chain(&e), "cannot apply the peers from Kubernetes");
                    r = Err(());
                }
            }
        } else {
            state.nodes_dirty = false;
        }
        let mut skipped = t.skipped;
        skipped.extend(state.refused_peers.iter().cloned());
        report(&mut state.skipped_nodes, skipped);
        r
    }
}

struct Stores {
    services: Store<KService>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error("watch failed: {0}")]
        Repeats(#[source] std::io::Error),
        #[error("cannot load")]
        Plain(#[source] std::io::Error),
    }

    #[test]
    fn a_source_already_in_the_text_is_not_repeated() {
        let io = || std::io::Error::other("connection refused");
        assert_eq!(chain(&E::Repeats(io())), "watch failed: connection refused");
        assert_eq!(chain(&E::Plain(io())), "cannot load: connection refused");
    }

    #[test]
    fn a_reason_is_logged_when_it_appears() {
        let s = |o: &str| Skipped {
            object: o.into(),
            reason: "r".into(),
        };
        let mut last = BTreeSet::new();
        report(&mut last, vec![s("a"), s("b")]);
        report(&mut last, vec![s("b")]);
        assert_eq!(last, [s("b")].into());
    }
}
