//! Pod lifecycle: the async face (locks, idempotent retries, watchers) over the blocking
//! steps in `ops`. One lock per sandbox, never one around all state.

pub mod cgroup;
pub mod error;
pub mod files;
pub mod gc;
mod hooks;
mod hostports;
pub mod model;
mod ops;
pub mod pins;
pub mod process;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use tracing::{info, warn};

pub use error::SandboxError;
pub use hooks::{BoxError, PodContainers};
pub use model::{PodMetadata, PodSpec, SandboxRecord, SandboxState};
pub use ops::NETNS_DIR;
use ops::Ops;

use crate::config::Config;
use crate::errors::Lookup;
use crate::network::NodeNetwork;
use cgroup::Cgroups;
use hostports::HostPorts;

type Result<T> = std::result::Result<T, SandboxError>;

struct Entry {
    /// Serialises operations on this sandbox.
    op: tokio::sync::Mutex<()>,
    /// The current record; read without waiting for a running operation.
    rec: Mutex<SandboxRecord>,
}

/// Per-metadata slot: holds the id once a RunPodSandbox for that metadata succeeded, and
/// makes a concurrent retry wait for the first attempt instead of making a second pod.
type Slot = Arc<tokio::sync::Mutex<Option<String>>>;

pub struct Sandboxes {
    ops: Arc<Ops>,
    pods: RwLock<HashMap<String, Arc<Entry>>>,
    by_meta: Mutex<HashMap<PodMetadata, Slot>>,
    host_ports: HostPorts,
    containers: OnceLock<Weak<dyn PodContainers>>,
}

/// A filter for `list`; every set field must match.
#[derive(Debug, Default)]
pub struct Filter {
    pub id: Option<String>,
    pub state: Option<SandboxState>,
    pub labels: BTreeMap<String, String>,
}

/// Sandbox ids are 64 lowercase hex digits.
pub fn is_sandbox_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(1)
}

fn new_id() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("kernel randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sandboxes {
    pub fn new(cfg: Config, net: Arc<NodeNetwork>, cgroups: Cgroups) -> Arc<Sandboxes> {
        Arc::new(Sandboxes {
            ops: Arc::new(Ops { cfg, net, cgroups }),
            pods: RwLock::new(HashMap::new()),
            by_meta: Mutex::new(HashMap::new()),
            host_ports: HostPorts::default(),
            containers: OnceLock::new(),
        })
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.ops.cgroups
    }

    pub fn sandbox_dir(&self, id: &str) -> std::path::PathBuf {
        self.ops.sandbox_dir(id)
    }

    pub fn cgroup_version(&self) -> u8 {
        self.ops.cgroups.version()
    }

    pub fn netns_pin(id: &str) -> std::path::PathBuf {
        Ops::netns_pin(id)
    }

    fn insert(self: &Arc<Self>, rec: SandboxRecord) {
        let id = rec.id.clone();
        let meta = rec.spec.metadata.clone();
        let pause = (rec.state == SandboxState::Ready)
            .then_some(rec.pause)
            .flatten();
        let entry = Arc::new(Entry {
            op: tokio::sync::Mutex::new(()),
            rec: Mutex::new(rec),
        });
        self.pods.write().expect("lock").insert(id.clone(), entry);
        self.by_meta
            .lock()
            .expect("lock")
            .insert(meta, Arc::new(tokio::sync::Mutex::new(Some(id.clone()))));
        if let Some(p) = pause {
            self.watch_pause(id, p);
        }
    }

    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.pods.read().expect("lock").get(id).cloned()
    }

    /// Exact id or a unique prefix of one.
    pub fn resolve(&self, id_or_prefix: &str) -> Result<String> {
        let pods = self.pods.read().expect("lock");
        crate::errors::resolve_prefix(&pods, id_or_prefix).map_err(|e| match e {
            Lookup::Empty => SandboxError::invalid("pod_sandbox_id", "must not be empty"),
            Lookup::Ambiguous => SandboxError::Ambiguous {
                prefix: id_or_prefix.to_owned(),
            },
            Lookup::NotFound => SandboxError::NotFound {
                id: id_or_prefix.to_owned(),
            },
        })
    }

    /// A fresh id whose host-veth prefix (8 hex) no other pod uses.
    fn fresh_id(&self) -> String {
        let pods = self.pods.read().expect("lock");
        loop {
            let id = new_id();
            if !pods.keys().any(|k| k[..8] == id[..8]) {
                return id;
            }
        }
    }

    pub async fn run(self: &Arc<Self>, spec: PodSpec) -> Result<String> {
        validate::validate(&spec)?;
        self.ops.cgroups.check_parent(&spec.cgroup_parent)?;
        // A NODE-network pod's ports are the node's already: nothing to forward.
        let host_ports = if spec.host_network() {
            Vec::new()
        } else {
            validate::host_ports(&spec)?
        };
        if !host_ports.is_empty() && !self.ops.net.cidr().addr().is_ipv4() {
            return Err(SandboxError::Unsupported {
                what: "hostPort mappings to IPv6 pods".into(),
            });
        }
        if !spec.host_network() {
            let net = self.ops.net.clone();
            let ready = tokio::task::spawn_blocking(move || net.ready())
                .await
                .expect("no panic");
            ready.map_err(|reason| SandboxError::NetworkNotReady { reason })?;
        }
        let slot = self
            .by_meta
            .lock()
            .expect("lock")
            .entry(spec.metadata.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock_owned().await;
        if let Some(id) = slot.as_ref()
            && let Some(entry) = self.entry(id)
        {
            let state = entry.rec.lock().expect("lock").state;
            if state == SandboxState::Ready {
                info!(sandbox = %id, "RunPodSandbox retried: returning the existing sandbox");
                return Ok(id.clone());
            }
            let m = &spec.metadata;
            return Err(SandboxError::AlreadyExists {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                attempt: m.attempt,
                id: id.clone(),
                state: format!("{state:?}"),
            });
        }
        let id = self.fresh_id();
        self.host_ports.reserve(&id, &host_ports)?;
        let ops = self.ops.clone();
        let rec = SandboxRecord::new(id.clone(), spec, now_nanos());
        let rec = tokio::task::spawn_blocking(move || -> Result<SandboxRecord> {
            let mut rec = rec;
            ops.create_record(&rec)?;
            if let Err(e) = ops.build(&mut rec) {
                warn!(sandbox = %rec.id, error = %e.chain(), "RunPodSandbox failed, rolling back");
                if let Err(undo) = ops.remove(&mut rec) {
                    warn!(sandbox = %rec.id, error = %undo.chain(), "rollback incomplete");
                }
                return Err(e);
            }
            crate::fault::point("run:files");
            rec.state = SandboxState::Ready;
            ops.persist(&rec)?;
            crate::fault::point("run:ready");
            Ok(rec)
        })
        .await
        .expect("no panic")
        .inspect_err(|_| self.host_ports.release(&id))?;
        info!(sandbox = %id, ip = ?rec.ip(), "pod sandbox ready");
        *slot = Some(id.clone());
        drop(slot);
        self.insert(rec);
        Ok(id)
    }

    /// Stop; an unknown id is OK (CRI: idempotent).
    pub async fn stop(self: &Arc<Self>, id: &str) -> Result<()> {
        self.locked_step(id, Ops::stop, false).await
    }

    /// Remove (stopping first if needed); an unknown id is OK.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<()> {
        self.locked_step(id, Ops::remove, true).await
    }

    /// Runs a blocking `step` on the sandbox's record under its operation lock, and forgets
    /// the sandbox afterwards if asked. An unknown id, or one removed while we waited for the
    /// lock, is done already.
    async fn locked_step(
        self: &Arc<Self>,
        id: &str,
        step: fn(&Ops, &mut SandboxRecord) -> Result<()>,
        forget: bool,
    ) -> Result<()> {
        let id = match self.resolve(id) {
            Err(SandboxError::NotFound { .. }) => return Ok(()),
            other => other?,
        };
        let Some(entry) = self.entry(&id) else {
            return Ok(());
        };
        let _op = entry.op.lock().await;
        if self.entry(&id).is_none() {
            return Ok(());
        }
        // The pod's containers go first: stopped for a stop, removed for a removal.
        self.containers_hook(&id, forget).await?;
        let mut rec = entry.rec.lock().expect("lock").clone();
        let ops = self.ops.clone();
        let (rec, r) = tokio::task::spawn_blocking(move || {
            let r = step(&ops, &mut rec);
            (rec, r)
        })
        .await
        .expect("no panic");
        if rec.network.is_none() {
            self.host_ports.release(&rec.id);
        }
        if r.is_ok() && forget {
            self.forget(&rec);
        }
        *entry.rec.lock().expect("lock") = rec;
        r
    }

    fn forget(&self, rec: &SandboxRecord) {
        self.pods.write().expect("lock").remove(&rec.id);
        let mut by_meta = self.by_meta.lock().expect("lock");
        if let Some(slot) = by_meta.get(&rec.spec.metadata)
            && slot
                .try_lock()
                .is_ok_and(|s| s.as_deref() == Some(rec.id.as_str()))
        {
            by_meta.remove(&rec.spec.metadata);
        }
        info!(sandbox = %rec.id, "pod sandbox removed");
    }

    pub fn status(&self, id: &str) -> Result<SandboxRecord> {
        let id = self.resolve(id)?;
        let entry = self.entry(&id).ok_or(SandboxError::NotFound { id })?;
        let rec = entry.rec.lock().expect("lock").clone();
        Ok(rec)
    }

    pub fn list(&self, filter: &Filter) -> Vec<SandboxRecord> {
        let pods = self.pods.read().expect("lock");
        let mut out: Vec<SandboxRecord> = pods
            .iter()
            .filter(|(id, _)| {
                filter
                    .id
                    .as_ref()
                    .is_none_or(|f| id.starts_with(f.as_str()))
            })
            .filter_map(|(_, e)| {
                let rec = e.rec.lock().expect("lock");
                let ok = rec.state != SandboxState::Creating
                    && filter.state.is_none_or(|s| s == rec.state)
                    && filter
                        .labels
                        .iter()
                        .all(|(k, v)| rec.spec.labels.get(k) == Some(v));
                ok.then(|| rec.clone())
            })
            .collect();
        out.sort_by_key(|r| r.created_at);
        out
    }

    /// Marks the pod NotReady when its pause exits by any hand but ours.
    fn watch_pause(self: &Arc<Self>, id: String, pause: process::ProcRef) {
        let fd = match pause.pidfd() {
            Ok(Some(fd)) => fd,
            Ok(None) => {
                let me = self.clone();
                tokio::spawn(async move { me.pause_died(&id, pause).await });
                return;
            }
            Err(e) => {
                warn!(sandbox = %id, error = %e, "cannot watch pause");
                return;
            }
        };
        let me = self.clone();
        tokio::spawn(async move {
            match process::async_pidfd(fd) {
                Ok(fd) => process::wait_exit(&fd).await,
                Err(e) => {
                    warn!(sandbox = %id, error = %e, "cannot watch pause");
                    return;
                }
            }
            process::reap(pause.pid);
            me.pause_died(&id, pause).await;
        });
    }

    async fn pause_died(&self, id: &str, pause: process::ProcRef) {
        let Some(entry) = self.entry(id) else { return };
        let _op = entry.op.lock().await;
        let mut rec = entry.rec.lock().expect("lock");
        if rec.pause != Some(pause) || rec.state != SandboxState::Ready {
            return; // stopped by us
        }
        warn!(sandbox = %id, pid = pause.pid, "pause exited: pod is NotReady");
        rec.state = SandboxState::NotReady;
        rec.pause = None;
        if let Err(e) = self.ops.persist(&rec) {
            warn!(sandbox = %id, error = %e, "cannot persist NotReady");
        }
    }

    /// Start-up: load every record, roll back the `Creating` ones, notice dead pauses. Then
    /// the containers recover, and [`Sandboxes::collect_garbage`] runs.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        let ops = self.ops.clone();
        let records = tokio::task::spawn_blocking(move || ops.load_records())
            .await
            .expect("no panic")?;
        for mut rec in records {
            if let Some(att) = &rec.network
                && let Ok(net) = ipnet::IpNet::new(att.ip, att.prefix_len)
            {
                self.ops.net.add_subnet(net.trunc());
            }
            match rec.state {
                SandboxState::Creating => {
                    let ops = self.ops.clone();
                    tokio::task::spawn_blocking(move || ops.roll_back(&mut rec))
                        .await
                        .expect("no panic");
                }
                SandboxState::Ready if !rec.pause.is_some_and(|p| p.is_alive()) => {
                    warn!(sandbox = %rec.id, "pause is gone: pod is NotReady");
                    rec.state = SandboxState::NotReady;
                    rec.pause = None;
                    self.ops.persist(&rec)?;
                    self.host_ports.restore(&rec);
                    self.insert(rec);
                }
                _ => {
                    self.host_ports.restore(&rec);
                    self.insert(rec);
                }
            }
        }
        Ok(())
    }

    /// Start-up, after the containers' reconcile (a stray container keeps a stray pod's
    /// cgroup busy): collects whatever carries our names but belongs to no record.
    pub async fn collect_garbage(&self) {
        let records = self.list(&Filter::default());
        let ops = self.ops.clone();
        tokio::task::spawn_blocking(move || {
            for g in ops.find_garbage(&records) {
                match ops.collect(&g) {
                    Ok(()) => info!("collected {g}"),
                    Err(e) => warn!(error = %e.chain(), "cannot collect {g}"),
                }
            }
            // And the other way: what a pod's record lists but the kernel lost (a deleted
            // table) is made again.
            for rec in &records {
                if let Some(att) = &rec.network
                    && let Err(e) = ops.net.net.restore_rules(&att.rules)
                {
                    warn!(sandbox = %rec.id, error = %crate::errors::chain(&e),
                        "cannot restore the pod's firewall rules");
                }
            }
        })
        .await
        .expect("no panic");
    }

    /// Waits for background link deletions, before the daemon exits.
    pub fn settle(&self) {
        self.ops.net.net.settle();
    }
}
