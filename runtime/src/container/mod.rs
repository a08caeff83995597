//! Container lifecycle: the registry of containers and their records, CreateContainer's
//! validation and launch spec, and the pod hooks. Start, stop and remove are in `lifecycle`,
//! ExecSync and log reopening in `exec`, what reconcile collects in `gc`, GetContainerEvents's
//! hub and the monitor watchers in `events`. One lock per container, never one around all.
//!
//! A container's truth is on disk: `container.json` (the record) plus, once its process has
//! ended, the monitor's `exit.json`. State is refreshed from them lazily (status, list), so a
//! container that exited while the daemon was down reports its exit code after a restart, and
//! one whose monitor died reports MonitorDied (its processes are killed: nothing supervises
//! them any more).

pub mod attach;
pub mod cgroup;
mod create;
pub(crate) use create::signal_number;
pub mod devices;
pub mod error;
pub mod events;
pub mod exec;
pub mod gc;
pub mod launch;
mod lifecycle;
pub mod model;
pub mod pod_stats;
pub mod procmount;
pub mod psi;
pub mod seccomp;
pub mod security;
pub mod stats;
mod stop_signal;
pub mod unit_limits;
mod update;
pub mod user;
pub mod validate;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};

use tracing::warn;

pub use error::ContainerError;
pub use model::{ContainerRecord, ContainerState};

use crate::config::Config;
use crate::image::ImageStore;
use crate::monitor::{EXIT_FILE, MONITOR_FILE};
use crate::sandbox::{SandboxError, Sandboxes};
use crate::store;
use model::{ExitRecord, Running};

type Result<T> = std::result::Result<T, ContainerError>;

struct Entry {
    /// Serialises operations on this container (taken on blocking threads).
    op: Mutex<()>,
    rec: Mutex<ContainerRecord>,
    /// Its end was published (CONTAINER_STOPPED): whoever sees it first, the monitor's
    /// watcher or a stop, says so, once. Held while it is said, so that a stop returns only
    /// once it was (and a removal's CONTAINER_DELETED comes after).
    ended: Mutex<bool>,
}

pub struct Containers {
    cfg: Config,
    sandboxes: Arc<Sandboxes>,
    images: Arc<ImageStore>,
    /// The binary of `peapod monitor` and `peapod enter` (a sealed copy of it, see
    /// [`crate::monitor::sealed`]).
    exe: crate::monitor::sealed::Binary,
    ctrs: RwLock<std::collections::HashMap<String, Arc<Entry>>>,
    /// (sandbox, name, attempt) being created or existing: the AlreadyExists check.
    names: Mutex<HashSet<(String, String, u32)>>,
    /// Pods being stopped or removed: no new containers. A CreateContainer holds it for
    /// reading from its check to its record, so that closing a pod (writing) waits for the
    /// creations in flight, and the stop or removal that follows sees their containers.
    closed: RwLock<HashSet<String>>,
    /// Containers found Created at start-up whose monitor lock was not yet seen free: a
    /// monitor of the daemon that crashed may still be starting them (see `settle`). Only
    /// for these is the lock probed before a start: a probe's open lock can be copied into a
    /// child another thread forks at that moment, and then look held until that child execs.
    unsettled: Mutex<HashSet<String>>,
    /// GetContainerEvents.
    events: events::Hub,
    /// Ourselves, for the tasks that watch monitors.
    me: Weak<Containers>,
}

/// A filter for `list`; every set field must match.
#[derive(Debug, Default)]
pub struct Filter {
    pub id: Option<String>,
    pub sandbox_id: Option<String>,
    pub state: Option<ContainerState>,
    pub labels: BTreeMap<String, String>,
}

/// Under the run dir: where each container's process mounts its rootfs, in its own mount
/// namespace (so one empty directory serves them all).
const ROOTFS_MOUNT_POINT: &str = "rootfs";

fn now_nanos() -> i64 {
    crate::monitor::log::now_nanos()
}

fn new_id() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("kernel randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Containers {
    pub fn new(
        cfg: Config,
        sandboxes: Arc<Sandboxes>,
        images: Arc<ImageStore>,
        exe: crate::monitor::sealed::Binary,
    ) -> Arc<Containers> {
        let c = Arc::new_cyclic(|me| Containers {
            cfg,
            sandboxes: sandboxes.clone(),
            images,
            exe,
            ctrs: RwLock::new(Default::default()),
            names: Mutex::new(HashSet::new()),
            closed: RwLock::new(HashSet::new()),
            unsettled: Mutex::new(HashSet::new()),
            events: events::Hub::new(events::CAPACITY),
            me: me.clone(),
        });
        let weak = Arc::downgrade(&c);
        sandboxes.set_containers(weak);
        c
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("containers").join(id)
    }

    /// The mount points layer: the lowest layer of every container's rootfs, empty
    /// directories `proc`, `sys`, `dev` and `etc`, and empty files `etc/hosts`,
    /// `etc/hostname` and `etc/resolv.conf`, for the mounts the container gets. Where the
    /// image has them they hide these; where it has not, the container's process would
    /// otherwise make each in its writable layer on every start (for `etc/hosts` with a
    /// copy-up of `/etc`), and those file creations cost more than anything else in a start.
    /// Made once, at start-up, in the run dir; never changed once made (overlayfs lower
    /// layers must not change under a mount).
    fn mountpoints_dir(&self) -> PathBuf {
        self.cfg.run_dir.join("mountpoints")
    }

    /// Makes the mount points layer if it is not there (whole or not at all: made aside,
    /// then renamed into place).
    fn ensure_mountpoints(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = self.mountpoints_dir();
        if dir.is_dir() {
            return Ok(());
        }
        let tmp = self.cfg.run_dir.join(".mountpoints.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let mut mkdir = std::fs::DirBuilder::new();
        mkdir.mode(0o755).recursive(true);
        for d in ["proc", "sys", "dev", "etc"] {
            mkdir.create(tmp.join(d))?;
        }
        for f in ["hosts", "hostname", "resolv.conf"] {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(tmp.join("etc").join(f))?;
        }
        std::fs::rename(&tmp, &dir)
    }

    fn socket(&self, id: &str) -> PathBuf {
        self.cfg.run_dir.join("mon").join(format!("{id}.sock"))
    }

    /// The pod's `/dev/shm`, a tmpfs under the run dir shared by its containers.
    fn shm_dir(&self, sandbox_id: &str) -> PathBuf {
        self.cfg.run_dir.join("shm").join(sandbox_id)
    }

    fn persist(&self, rec: &ContainerRecord) -> Result<()> {
        Ok(store::write_json(
            &self.dir(&rec.id).join("container.json"),
            rec,
        )?)
    }

    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.ctrs.read().expect("lock").get(id).cloned()
    }

    /// Exact id or a unique prefix of one.
    pub fn resolve(&self, id_or_prefix: &str) -> Result<String> {
        let ctrs = self.ctrs.read().expect("lock");
        crate::errors::resolve_prefix(&ctrs, id_or_prefix).map_err(|e| match e {
            crate::errors::Lookup::Empty => {
                ContainerError::invalid("container_id", "must not be empty")
            }
            crate::errors::Lookup::Ambiguous => ContainerError::Ambiguous {
                prefix: id_or_prefix.to_owned(),
            },
            crate::errors::Lookup::NotFound => ContainerError::NotFound {
                id: id_or_prefix.to_owned(),
            },
        })
    }

    fn insert(&self, rec: ContainerRecord) {
        let key = (
            rec.sandbox_id.clone(),
            rec.spec.name.clone(),
            rec.spec.attempt,
        );
        self.names.lock().expect("lock").insert(key);
        let id = rec.id.clone();
        let e = Arc::new(Entry {
            op: Mutex::new(()),
            ended: Mutex::new(rec.state == ContainerState::Exited),
            rec: Mutex::new(rec),
        });
        self.ctrs.write().expect("lock").insert(id, e);
    }

    /// Brings a record up to date with the monitor's files: a running container whose monitor
    /// wrote `exit.json` (or died) has exited.
    fn refresh(&self, rec: &mut ContainerRecord) {
        if rec.state == ContainerState::Exited && rec.exit.is_some() {
            return;
        }
        let dir = self.dir(&rec.id);
        let read_exit = || {
            store::read_json_opt::<ExitRecord>(&dir.join(EXIT_FILE))
                .ok()
                .flatten()
        };
        if rec.state == ContainerState::Created && rec.running.is_none() {
            // A start a crash interrupted after the monitor answered.
            if let Ok(Some(r)) = store::read_json_opt::<Running>(&dir.join(MONITOR_FILE)) {
                rec.running = Some(r);
                rec.state = ContainerState::Running;
                rec.started_at = r.started_at;
            }
        }
        if let Some(exit) = read_exit() {
            rec.state = ContainerState::Exited;
            rec.exit = Some(exit);
            return;
        }
        if let Some(r) = rec.running
            && rec.state == ContainerState::Running
            && !r.monitor.is_alive()
        {
            // Nothing supervises the container's processes any more (no log, no exit
            // status): they go, as StopContainer would make them.
            self.kill_unsupervised(rec, r);
            let exit = read_exit().unwrap_or_else(|| ExitRecord {
                exit_code: 255,
                signal: None,
                finished_at: now_nanos(),
                oom_killed: false,
                start_error: None,
                lost: Some(format!(
                    "the container's monitor (pid {}) died before it recorded an exit status",
                    r.monitor.pid
                )),
            });
            let _ = store::write_json(&dir.join(EXIT_FILE), &exit);
            rec.state = ContainerState::Exited;
            rec.exit = Some(exit);
        }
    }

    /// SIGKILL to a container whose monitor is gone: its init (through a pidfd, checked
    /// against its start time) and whatever else is in its cgroup.
    fn kill_unsupervised(&self, rec: &ContainerRecord, r: Running) {
        if let Ok(Some(fd)) = r.init.pidfd() {
            warn!(container = %rec.id, pid = r.init.pid, "its monitor died: killing the container");
            let _ = crate::sandbox::process::pidfd_signal(&fd, libc::SIGKILL);
        }
        if let Some(cg) = &rec.cgroup {
            gc::kill_all_in(&self.sandboxes.cgroups().paths(&cg.rel));
        }
    }

    /// The container `id` (or a unique prefix of one): its full id and entry.
    fn lookup(&self, id: &str) -> Result<(String, Arc<Entry>)> {
        let id = self.resolve(id)?;
        let e = self
            .entry(&id)
            .ok_or_else(|| ContainerError::NotFound { id: id.clone() })?;
        Ok((id, e))
    }

    pub fn status(&self, id: &str) -> Result<ContainerRecord> {
        let (_, e) = self.lookup(id)?;
        let mut rec = e.rec.lock().expect("lock");
        self.refresh(&mut rec);
        Ok(rec.clone())
    }

    pub fn list(&self, f: &Filter) -> Vec<ContainerRecord> {
        let entries: Vec<Arc<Entry>> = self.ctrs.read().expect("lock").values().cloned().collect();
        let mut out: Vec<ContainerRecord> = entries
            .iter()
            .filter_map(|e| {
                let mut rec = e.rec.lock().expect("lock");
                self.refresh(&mut rec);
                let ok = f.id.as_ref().is_none_or(|p| rec.id.starts_with(p.as_str()))
                    && f.sandbox_id
                        .as_ref()
                        .is_none_or(|s| rec.sandbox_id.starts_with(s.as_str()))
                    && f.state.is_none_or(|s| s == rec.state)
                    && f.labels
                        .iter()
                        .all(|(k, v)| rec.spec.labels.get(k) == Some(v));
                ok.then(|| rec.clone())
            })
            .collect();
        out.sort_by_key(|r| r.created_at);
        out
    }

    /// Start-up: load every record (a container whose monitor died while the daemon was down
    /// comes back Exited); containers whose pod is gone are removed; then whatever carries a
    /// container's name but has no record is collected (see [`gc`]).
    pub fn recover(&self) -> Result<()> {
        if let Err(e) = self.ensure_mountpoints() {
            // Containers still start: their process makes its mount points itself.
            warn!(dir = %self.mountpoints_dir().display(), error = %e, "cannot make the mount points layer");
        }
        let dir = self.cfg.state_dir.join("containers");
        store::create_dir_all(&dir)?;
        let read = std::fs::read_dir(&dir).map_err(|source| store::StoreError::Read {
            path: dir.clone(),
            source,
        })?;
        for ent in read.flatten() {
            let path = ent.path().join("container.json");
            match store::read_json_opt::<ContainerRecord>(&path) {
                Ok(Some(mut rec)) => {
                    if rec.state == ContainerState::Created {
                        self.unsettled.lock().expect("lock").insert(rec.id.clone());
                    }
                    self.settle(&mut rec);
                    self.sweep_if_ended(&mut rec);
                    let watch = (rec.state == ContainerState::Running)
                        .then_some(rec.running)
                        .flatten()
                        .map(|r| (rec.id.clone(), r));
                    self.insert(rec);
                    if let Some((id, r)) = watch {
                        self.watch_monitor(&id, r);
                    }
                }
                // Collected below, with its monitor and cgroup if it has any.
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "an unreadable container record: collecting the container")
                }
            }
        }
        let orphans: Vec<String> = self
            .list(&Filter::default())
            .into_iter()
            .filter(|c| {
                matches!(
                    self.sandboxes.status(&c.sandbox_id),
                    Err(SandboxError::NotFound { .. })
                )
            })
            .map(|c| c.id)
            .collect();
        for id in orphans {
            warn!(container = %id, "its pod sandbox is gone: removing the container");
            if let Err(e) = self.remove(&id) {
                warn!(container = %id, error = %e.chain(), "cannot remove an orphaned container");
            }
        }
        self.collect_garbage();
        Ok(())
    }

    fn collect_garbage(&self) {
        let containers: HashSet<String> = self.ctrs.read().expect("lock").keys().cloned().collect();
        let pods = self.sandboxes.list(&crate::sandbox::Filter::default());
        let pod_ids: HashSet<String> = pods.iter().map(|p| p.id.clone()).collect();
        let cgroups = self.sandboxes.cgroups();
        let pod_cgroups: Vec<_> = pods.into_iter().filter_map(|p| p.cgroup).collect();
        let stray = cgroups.orphans(&|id| pod_ids.contains(id));
        let known = gc::Known {
            containers: &containers,
            pods: &pod_ids,
            pod_cgroups: &pod_cgroups,
            stray_pod_cgroups: &stray,
        };
        for g in gc::find(&self.cfg, cgroups, &known) {
            match gc::collect(cgroups, &g) {
                Ok(()) => tracing::info!("collected {g}"),
                Err(e) => warn!(error = %e.chain(), "cannot collect {g}"),
            }
        }
    }

    /// Whether any container (in any state) was made from image `id`.
    pub fn uses_image(&self, id: &str) -> bool {
        self.ctrs.read().expect("lock").values().any(|e| {
            let rec = e.rec.lock().expect("lock");
            rec.image_id == id || rec.volume_images.iter().any(|v| v == id)
        })
    }

    fn of_pod(&self, sandbox_id: &str) -> Vec<String> {
        self.ctrs
            .read()
            .expect("lock")
            .values()
            .filter_map(|e| {
                let r = e.rec.lock().expect("lock");
                (r.sandbox_id == sandbox_id).then(|| r.id.clone())
            })
            .collect()
    }
}

impl Containers {
    /// Refuses new containers in the pod, then applies `op` to each of its containers,
    /// carrying on past failures; returns them all.
    fn close_pod_and(
        &self,
        sandbox_id: &str,
        op: impl Fn(&str) -> Result<()>,
    ) -> Vec<ContainerError> {
        self.closed
            .write()
            .expect("lock")
            .insert(sandbox_id.to_owned());
        self.of_pod(sandbox_id)
            .iter()
            .filter_map(|id| op(id).err())
            .collect()
    }
}

impl crate::sandbox::PodContainers for Containers {
    fn stop_all(&self, sandbox_id: &str) -> std::result::Result<(), crate::sandbox::BoxError> {
        let errors = self.close_pod_and(sandbox_id, |id| self.stop(id, 0));
        collect(sandbox_id, errors)
    }

    fn remove_all(&self, sandbox_id: &str) -> std::result::Result<(), crate::sandbox::BoxError> {
        let mut errors = self.close_pod_and(sandbox_id, |id| self.remove(id));
        if let Err(e) = self.remove_shm(sandbox_id) {
            errors.push(e);
        }
        if errors.is_empty() {
            self.closed.write().expect("lock").remove(sandbox_id);
        }
        collect(sandbox_id, errors)
    }
}

fn collect(
    id: &str,
    errors: Vec<ContainerError>,
) -> std::result::Result<(), crate::sandbox::BoxError> {
    if errors.is_empty() {
        return Ok(());
    }
    Err(Box::new(ContainerError::Teardown {
        id: id.to_owned(),
        errors,
    }))
}
