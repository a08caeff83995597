//! The node's Services: virtual IPs whose connections the kernel rewrites to endpoints
//! (peapod.net.v1). Each Service is one JSON record under `<state_dir>/services/`; a change
//! is checked, applied to the kernel in one nftables transaction, then recorded, so that a
//! crash in between leaves the record as it was and the start-up sync puts the kernel back
//! in line with it.

pub mod api;
pub mod cmd;
pub mod convert;
pub mod model;
mod records;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use netsetup::conntrack;
use netsetup::service::{L4, ServicePortRules};
use tokio::sync::Mutex;

use crate::network::NodeNetwork;
use crate::store::StoreError;
use model::{Claim, Endpoint, Key, Service};
use records::Records;

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
    #[error("services come from the Kubernetes API server (kubeconfig): change them there")]
    Managed,
    #[error("cannot program the service rules")]
    Net(#[source] netsetup::NetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The Services of the node, held by the daemon.
pub struct ServiceTable {
    net: Arc<NodeNetwork>,
    /// Held across a change's kernel transaction and record write: changes are serial, as
    /// the one nftables table they edit is.
    inner: Mutex<Inner>,
}

struct Inner {
    records: Records,
    services: BTreeMap<Key, Service>,
    /// Who has each address and port and node port, to refuse a clash in one lookup.
    claims: BTreeMap<Claim, Key>,
}

/// Above this many Services changed at once, [`ServiceTable::apply_many`] writes one snapshot
/// instead of a journal line each.
const BULK: usize = 64;

impl Inner {
    /// Records `s` (a journal line), folding the journal into a snapshot now and then.
    fn record(&mut self, s: &Service) -> Result<(), ServiceError> {
        self.records.set(s)?;
        if self.records.wants_compaction() {
            let Inner {
                records, services, ..
            } = self;
            let mut all = services.clone();
            all.insert(s.key(), s.clone());
            records.snapshot(all.values())?;
        }
        Ok(())
    }

    fn insert(&mut self, s: Service) {
        self.remove(&s.key());
        for c in s.claims() {
            self.claims.insert(c, s.key());
        }
        self.services.insert(s.key(), s);
    }

    fn remove(&mut self, key: &Key) -> Option<Service> {
        let old = self.services.remove(key)?;
        for c in old.claims() {
            self.claims.remove(&c);
        }
        Some(old)
    }

    /// Refuses `new` if a Service other than itself and those in `leaving` has one of its
    /// addresses and ports or node ports.
    fn check_claims(
        &self,
        new: &Service,
        leaving: &dyn Fn(&Key) -> bool,
    ) -> Result<(), ServiceError> {
        for c in new.claims() {
            if let Some(owner) = self.claims.get(&c)
                && *owner != new.key()
                && !leaving(owner)
            {
                return Err(ServiceError::Claimed {
                    claim: c,
                    namespace: owner.0.clone(),
                    name: owner.1.clone(),
                });
            }
        }
        Ok(())
    }
}

/// What [`ServiceTable::apply_many`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
}

impl ServiceTable {
    /// Loads the records; the kernel is left alone until [`Self::sync`].
    pub fn open(state_dir: &std::path::Path, net: Arc<NodeNetwork>) -> Result<Self, ServiceError> {
        let (records, services) = Records::open(&state_dir.join("services"))?;
        let mut inner = Inner {
            records,
            services: BTreeMap::new(),
            claims: BTreeMap::new(),
        };
        for s in services.into_values() {
            inner.insert(s);
        }
        Ok(ServiceTable {
            net,
            inner: Mutex::new(inner),
        })
    }

    /// Makes the kernel's Services exactly the recorded ones (at start-up): what is right
    /// stays, what no record names goes.
    pub async fn sync(&self) -> Result<usize, ServiceError> {
        let inner = self.inner.lock().await;
        let rules: Vec<ServicePortRules> =
            inner.services.values().flat_map(Service::rules).collect();
        let net = self.net.clone();
        tokio::task::spawn_blocking(move || net.net.sync_services(&rules))
            .await
            .expect("no panic")
            .map_err(ServiceError::Net)?;
        Ok(inner.services.len())
    }

    /// Every service port as the kernel should have it, with its Service's
    /// `namespace/name`: what `peapod net explain` and `graph` match live state against.
    pub async fn port_rules(&self) -> Vec<(String, ServicePortRules)> {
        let inner = self.inner.lock().await;
        inner
            .services
            .values()
            .flat_map(|s| {
                let name = format!("{}/{}", s.namespace, s.name);
                s.rules().into_iter().map(move |r| (name.clone(), r))
            })
            .collect()
    }

    pub async fn get(&self, namespace: &str, name: &str) -> Result<Service, ServiceError> {
        let inner = self.inner.lock().await;
        inner
            .services
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| not_found(namespace, name))
    }

    /// Every Service (of `namespace`, if given), by namespace then name.
    pub async fn list(&self, namespace: Option<&str>) -> Vec<Service> {
        let inner = self.inner.lock().await;
        inner
            .services
            .values()
            .filter(|s| namespace.is_none_or(|n| s.namespace == n))
            .cloned()
            .collect()
    }

    /// Creates `new`, or with `replace` replaces the Service of its name (keeping its
    /// endpoints, which SetEndpoints sets).
    pub async fn add(&self, mut new: Service, replace: bool) -> Result<Service, ServiceError> {
        let mut inner = self.inner.lock().await;
        let old = inner.services.get(&new.key()).cloned();
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
        inner.check_claims(&new, &|_| false)?;
        self.apply(old.as_ref(), Some(&new)).await?;
        inner.record(&new)?;
        inner.insert(new.clone());
        Ok(new)
    }

    pub async fn set_endpoints(
        &self,
        namespace: &str,
        name: &str,
        endpoints: impl FnOnce(&Service) -> Result<Vec<Endpoint>, ServiceError>,
    ) -> Result<Service, ServiceError> {
        let mut inner = self.inner.lock().await;
        let key = (namespace.to_owned(), name.to_owned());
        let old = inner
            .services
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(namespace, name))?;
        let new = Service {
            endpoints: endpoints(&old)?,
            ..old.clone()
        };
        self.apply(Some(&old), Some(&new)).await?;
        inner.record(&new)?;
        inner.insert(new.clone());
        Ok(new)
    }

    pub async fn remove(&self, namespace: &str, name: &str) -> Result<(), ServiceError> {
        let mut inner = self.inner.lock().await;
        let key = (namespace.to_owned(), name.to_owned());
        let old = inner
            .services
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(namespace, name))?;
        self.apply(Some(&old), None).await?;
        inner.records.remove(&key)?;
        inner.remove(&key);
        Ok(())
    }

    /// Makes each of `wanted` (with its endpoints) what it says and, with `prune`, removes
    /// every other Service: one kernel transaction for all, then the records.
    pub async fn apply_many(
        &self,
        wanted: Vec<Service>,
        prune: bool,
    ) -> Result<Applied, ServiceError> {
        let mut inner = self.inner.lock().await;
        let mut seen = std::collections::BTreeSet::new();
        for s in &wanted {
            if !seen.insert(s.key()) {
                return Err(ServiceError::Invalid {
                    field: "services".into(),
                    reason: format!("{}/{} is given twice", s.namespace, s.name),
                });
            }
        }
        let leaving = |k: &Key| prune && !seen.contains(k);
        // Claims among the wanted ones, then against those that stay.
        let mut claimed = BTreeMap::new();
        for s in &wanted {
            for c in s.claims() {
                if let Some(other) = claimed.insert(c, s.key()) {
                    return Err(ServiceError::Claimed {
                        claim: c,
                        namespace: other.0,
                        name: other.1,
                    });
                }
            }
            inner.check_claims(s, &|k| leaving(k) || seen.contains(k))?;
        }
        let mut done = Applied::default();
        let (mut old_rules, mut new_rules) = (Vec::new(), Vec::new());
        let mut changed = Vec::new();
        for s in wanted {
            match inner.services.get(&s.key()) {
                Some(old) if *old == s => done.unchanged += 1,
                Some(old) => {
                    done.updated += 1;
                    old_rules.extend(old.rules());
                    new_rules.extend(s.rules());
                    changed.push(s);
                }
                None => {
                    done.created += 1;
                    new_rules.extend(s.rules());
                    changed.push(s);
                }
            }
        }
        let gone: Vec<Service> = inner
            .services
            .values()
            .filter(|s| leaving(&s.key()))
            .cloned()
            .collect();
        for s in &gone {
            old_rules.extend(s.rules());
        }
        done.removed = gone.len();
        self.apply_rules(old_rules, new_rules).await?;
        if changed.len() + gone.len() <= BULK {
            for s in &changed {
                inner.records.set(s)?;
            }
            for s in &gone {
                inner.records.remove(&s.key())?;
            }
        } else {
            // One snapshot of the state to be, written before the table holds it.
            let mut next = inner.services.clone();
            for s in &gone {
                next.remove(&s.key());
            }
            for s in &changed {
                next.insert(s.key(), s.clone());
            }
            inner.records.snapshot(next.values())?;
        }
        for s in changed {
            inner.insert(s);
        }
        for s in gone {
            inner.remove(&s.key());
        }
        Ok(done)
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
        self.apply_rules(old_rules, new_rules).await
    }

    async fn apply_rules(
        &self,
        old_rules: Vec<ServicePortRules>,
        new_rules: Vec<ServicePortRules>,
    ) -> Result<(), ServiceError> {
        if old_rules.is_empty() && new_rules.is_empty() {
            return Ok(());
        }
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

/// Deletes the conntrack entries of UDP flows DNATed to backends that `new` no longer has
/// (for the service port's addresses and its node port), in one listing of the table per
/// family. Errors are logged: the rules are right already, and the flows would time out.
fn flush_gone_udp(old: &[ServicePortRules], new: &[ServicePortRules]) {
    let kept: BTreeMap<&str, &[SocketAddr]> = new
        .iter()
        .map(|n| (n.id.as_str(), n.backends.as_slice()))
        .collect();
    // Backend → the service ports it left.
    let mut gone: BTreeMap<SocketAddr, Vec<&ServicePortRules>> = BTreeMap::new();
    for o in old.iter().filter(|o| o.protocol == L4::Udp) {
        let still = kept.get(o.id.as_str()).copied().unwrap_or_default();
        for b in o.backends.iter().filter(|b| !still.contains(b)) {
            gone.entry(*b).or_default().push(o);
        }
    }
    for family in [conntrack::Family::V4, conntrack::Family::V6] {
        if !gone.keys().any(|b| conntrack::Family::of(b.ip()) == family) {
            continue;
        }
        let r = conntrack::delete_where(family, |f| {
            let backend = SocketAddr::new(f.reply.src, f.reply.src_port);
            f.original.protocol == conntrack::Protocol::UDP
                && gone.get(&backend).is_some_and(|ports| {
                    ports.iter().any(|o| {
                        (o.addresses.contains(&f.original.dst) && f.original.dst_port == o.port)
                            || Some(f.original.dst_port) == o.node_port
                    })
                })
        });
        match r {
            Ok(n) => tracing::debug!(flows = n, "forgot UDP flows to gone backends"),
            Err(e) => tracing::warn!(
                error = %crate::errors::chain(&e),
                "cannot forget UDP flows to gone backends"
            ),
        }
    }
}
