//! The node's Services: virtual IPs whose connections the kernel rewrites to endpoints
//! (peapod.net.v1). Each Service is one JSON record under `<state_dir>/services/`; a change
//! is checked, applied to the kernel in one nftables transaction, then recorded, so that a
//! crash in between leaves the record as it was and the start-up sync puts the kernel back
//! in line with it.

pub mod api;
pub mod cmd;
pub mod convert;
pub mod model;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use netsetup::conntrack;
use netsetup::service::{L4, ServicePortRules};
use tokio::sync::Mutex;

use crate::network::NodeNetwork;
use crate::store::{self, StoreError};
use model::{Claim, Endpoint, Key, Service};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("service {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("service {namespace}/{name} already exists")]
    Exists { namespace: String, name: String },
    #[error("{claim} belongs to service {namespace}/{name}")]
    Claimed {
        claim: Claim,
        namespace: String,
        name: String,
    },
    #[error("cannot program the service rules")]
    Net(#[source] netsetup::NetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The Services of the node, held by the daemon.
pub struct ServiceTable {
    net: Arc<NodeNetwork>,
    dir: PathBuf,
    /// Held across a change's kernel transaction and record write: changes are serial, as
    /// the one nftables table they edit is.
    services: Mutex<BTreeMap<Key, Service>>,
}

impl ServiceTable {
    /// Loads the records; the kernel is left alone until [`Self::sync`].
    pub fn open(state_dir: &std::path::Path, net: Arc<NodeNetwork>) -> Result<Self, ServiceError> {
        let dir = state_dir.join("services");
        store::create_dir_all(&dir)?;
        let mut services = BTreeMap::new();
        for name in store::dir_names(&dir) {
            if !name.ends_with(".json") {
                continue;
            }
            let s: Service = store::read_json(&dir.join(&name))?;
            services.insert(s.key(), s);
        }
        Ok(ServiceTable {
            net,
            dir,
            services: Mutex::new(services),
        })
    }

    /// Makes the kernel's Services exactly the recorded ones (at start-up): what is right
    /// stays, what no record names goes.
    pub async fn sync(&self) -> Result<usize, ServiceError> {
        let services = self.services.lock().await;
        let rules: Vec<ServicePortRules> = services.values().flat_map(Service::rules).collect();
        let net = self.net.clone();
        tokio::task::spawn_blocking(move || net.net.sync_services(&rules))
            .await
            .expect("no panic")
            .map_err(ServiceError::Net)?;
        Ok(services.len())
    }

    pub async fn get(&self, namespace: &str, name: &str) -> Result<Service, ServiceError> {
        let services = self.services.lock().await;
        services
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| not_found(namespace, name))
    }

    /// Every Service (of `namespace`, if given), by namespace then name.
    pub async fn list(&self, namespace: Option<&str>) -> Vec<Service> {
        let services = self.services.lock().await;
        services
            .values()
            .filter(|s| namespace.is_none_or(|n| s.namespace == n))
            .cloned()
            .collect()
    }

    /// Creates `new`, or with `replace` replaces the Service of its name (keeping its
    /// endpoints, which SetEndpoints sets).
    pub async fn add(&self, mut new: Service, replace: bool) -> Result<Service, ServiceError> {
        let mut services = self.services.lock().await;
        let old = services.get(&new.key()).cloned();
        match &old {
            Some(_) if !replace => {
                return Err(ServiceError::Exists {
                    namespace: new.namespace,
                    name: new.name,
                });
            }
            Some(old) => new.endpoints = old.endpoints.clone(),
            None => new.endpoints.clear(),
        }
        check_claims(&services, &new)?;
        self.apply(old.as_ref(), Some(&new)).await?;
        store::write_json(&self.record(&new), &new)?;
        services.insert(new.key(), new.clone());
        Ok(new)
    }

    pub async fn set_endpoints(
        &self,
        namespace: &str,
        name: &str,
        endpoints: impl FnOnce(&Service) -> Result<Vec<Endpoint>, ServiceError>,
    ) -> Result<Service, ServiceError> {
        let mut services = self.services.lock().await;
        let key = (namespace.to_owned(), name.to_owned());
        let old = services
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(namespace, name))?;
        let new = Service {
            endpoints: endpoints(&old)?,
            ..old.clone()
        };
        self.apply(Some(&old), Some(&new)).await?;
        store::write_json(&self.record(&new), &new)?;
        services.insert(key, new.clone());
        Ok(new)
    }

    pub async fn remove(&self, namespace: &str, name: &str) -> Result<(), ServiceError> {
        let mut services = self.services.lock().await;
        let key = (namespace.to_owned(), name.to_owned());
        let old = services
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(namespace, name))?;
        self.apply(Some(&old), None).await?;
        let path = self.record(&old);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::Remove { path, source: e }.into());
            }
            _ => {}
        }
        services.remove(&key);
        Ok(())
    }

    fn record(&self, s: &Service) -> PathBuf {
        self.dir.join(format!("{}.json", s.id()))
    }

    /// One kernel transaction from `old` to `new`, then the UDP flows to backends that are
    /// gone are forgotten, so that their clients' next datagrams pick a live backend.
    async fn apply(
        &self,
        old: Option<&Service>,
        new: Option<&Service>,
    ) -> Result<(), ServiceError> {
        let old_rules = old.map(Service::rules).unwrap_or_default();
        let new_rules = new.map(Service::rules).unwrap_or_default();
        let net = self.net.clone();
        tokio::task::spawn_blocking(move || {
            net.net.change_services(&old_rules, &new_rules)?;
            flush_gone_udp(&old_rules, &new_rules);
            Ok(())
        })
        .await
        .expect("no panic")
        .map_err(ServiceError::Net)
    }
}

fn not_found(namespace: &str, name: &str) -> ServiceError {
    ServiceError::NotFound {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// Refuses `new` if another Service has one of its addresses and ports or node ports.
fn check_claims(services: &BTreeMap<Key, Service>, new: &Service) -> Result<(), ServiceError> {
    let mine = new.claims();
    for other in services.values().filter(|s| s.key() != new.key()) {
        if let Some(c) = other.claims().into_iter().find(|c| mine.contains(c)) {
            return Err(ServiceError::Claimed {
                claim: c,
                namespace: other.namespace.clone(),
                name: other.name.clone(),
            });
        }
    }
    Ok(())
}

/// Deletes the conntrack entries of UDP flows DNATed to backends that `new` no longer has
/// (for the service port's addresses and its node port). Errors are logged: the rules are
/// right already, and the flows would time out by themselves.
fn flush_gone_udp(old: &[ServicePortRules], new: &[ServicePortRules]) {
    for o in old.iter().filter(|o| o.protocol == L4::Udp) {
        let kept: &[SocketAddr] = new
            .iter()
            .find(|n| n.id == o.id)
            .map(|n| n.backends.as_slice())
            .unwrap_or_default();
        for backend in o.backends.iter().filter(|b| !kept.contains(b)) {
            let r = conntrack::delete_where(conntrack::Family::of(backend.ip()), |f| {
                f.original.protocol == conntrack::Protocol::UDP
                    && f.reply.src == backend.ip()
                    && f.reply.src_port == backend.port()
                    && ((o.addresses.contains(&f.original.dst) && f.original.dst_port == o.port)
                        || Some(f.original.dst_port) == o.node_port)
            });
            match r {
                Ok(n) => tracing::debug!(%backend, flows = n, "forgot UDP flows to a gone backend"),
                Err(e) => {
                    tracing::warn!(%backend, error = %crate::errors::chain(&e), "cannot forget UDP flows to a gone backend")
                }
            }
        }
    }
}
