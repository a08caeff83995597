//! The blocking steps of a sandbox's life, in the order DESIGN.md fixes. Each works on the
//! record, records what it made as it goes, and persists at the points that let a crash be
//! rolled back. Called from `spawn_blocking`, never on an async worker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sched::CloneFlags;
use tracing::warn;

use super::cgroup::Cgroups;
use super::error::SandboxError;
use super::files::{self, PodFiles};
use super::model::{NsMode, SandboxRecord, SandboxState};
use super::pins;
use super::process::{self, PauseSpec, ProcRef};
use super::validate;
use crate::config::Config;
use crate::fault;
use crate::network::NodeNetwork;
use crate::store;

/// Time a pause gets between SIGTERM and SIGKILL.
pub const PAUSE_GRACE: Duration = Duration::from_secs(2);

pub const NETNS_DIR: &str = "/run/netns";

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

pub struct Ops {
    pub cfg: Config,
    pub net: Arc<NodeNetwork>,
    pub cgroups: Cgroups,
}

impl Ops {
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("sandboxes").join(id)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.sandbox_dir(id).join("sandbox.json")
    }

    /// Where the ipc/uts/pid pins of a sandbox live.
    pub fn ns_dir(&self, id: &str) -> PathBuf {
        self.cfg.run_dir.join("ns").join(id)
    }

    pub fn netns_pin(id: &str) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(format!("peapod-{id}"))
    }

    pub fn persist(&self, rec: &SandboxRecord) -> Result<(), SandboxError> {
        Ok(store::write_json(&self.record_path(&rec.id), rec)?)
    }

    /// Step 3: the record exists on disk as `Creating` before the kernel is touched.
    pub fn create_record(&self, rec: &SandboxRecord) -> Result<(), SandboxError> {
        store::create_dir_all(&self.sandbox_dir(&rec.id))?;
        fault::point("run:dir");
        if let Err(e) = self.persist(rec) {
            let _ = self.remove_sandbox_dir(&rec.id);
            return Err(e);
        }
        fault::point("run:record");
        Ok(())
    }

    /// Steps 4–7. On error the record says what was made; the caller rolls back.
    pub fn build(&self, rec: &mut SandboxRecord) -> Result<(), SandboxError> {
        let id = rec.id.clone();
        let spec = rec.spec.clone();
        let own_net = !spec.host_network();

        // 4. pause in its cgroup and namespaces.
        let cg = self.cgroups.create_sandbox(&spec.cgroup_parent, &id)?;
        rec.cgroup = Some(cg);
        fault::point("run:cgroup");
        let mut flags = CloneFlags::empty();
        if own_net {
            flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
        }
        if spec.namespaces.ipc == NsMode::Pod {
            flags |= CloneFlags::CLONE_NEWIPC;
        }
        if spec.namespaces.pid == NsMode::Pod {
            flags |= CloneFlags::CLONE_NEWPID;
        }
        let hostname = own_net.then_some(spec.hostname.as_str());
        let cgroup_tasks = self
            .cgroups
            .pause_tasks_files(rec.cgroup.as_ref().expect("set above"));
        let pause = process::spawn_pause(&PauseSpec {
            path: &self.cfg.pause_path,
            sandbox_id: &id,
            flags,
            hostname,
            cgroup_tasks: &cgroup_tasks,
        })
        .map_err(|source| SandboxError::Spawn {
            path: self.cfg.pause_path.clone(),
            source,
        })?;
        rec.pause = Some(pause);
        fault::point("run:pause");
        if cgroup_tasks.is_empty() {
            self.cgroups
                .place(rec.cgroup.as_ref().expect("set above"), pause.pid)?;
        }
        // Persisted with the network (step 6), not before: after a crash in between,
        // `complete_interrupted` finds the pause by its environment, and the pins, named by
        // the pod's id, go with the garbage of an interrupted pod.
        fault::point("run:pause-placed");

        // 5. pins: from here the namespaces outlive the pause.
        self.pin_all(rec, pause, flags)?;
        fault::point("run:pins");

        // 6. network.
        if own_net {
            let att = self
                .net
                .net
                .attach(&netsetup::AttachRequest {
                    owner: &id,
                    netns: rec.pins.net.as_deref().expect("pinned above"),
                    host_ifname: &netsetup::host_ifname(&id),
                    pod_ifname: netsetup::POD_IFNAME,
                    subnet: self.net.cidr(),
                    host_ports: &validate::host_ports(&spec)?,
                })
                .map_err(|e| {
                    if e.is_exhausted() {
                        SandboxError::PoolExhausted(e)
                    } else {
                        SandboxError::Network(e)
                    }
                })?;
            rec.network = Some(att);
            fault::point("run:attach");
        } else {
            rec.node_ip = netsetup::node_ip();
        }
        self.persist(rec)?;
        fault::point("run:network-recorded");

        // 7. sysctls and the files for containers.
        self.apply_sysctls(rec)?;
        fault::point("run:sysctls");
        files::write_all(
            &self.sandbox_dir(&id),
            &PodFiles {
                ip: rec.ip(),
                hostname: &spec.hostname,
                dns: spec.dns.as_ref(),
                host_network: !own_net,
            },
        )?;
        Ok(())
    }

    fn pin_all(
        &self,
        rec: &mut SandboxRecord,
        pause: ProcRef,
        flags: CloneFlags,
    ) -> Result<(), SandboxError> {
        let pin = |kind: &str, at: PathBuf| -> Result<PathBuf, SandboxError> {
            pins::pin(pause.pid, kind, &at).map_err(|source| SandboxError::Pin {
                path: at.clone(),
                source,
            })?;
            Ok(at)
        };
        let ns_dir = self.ns_dir(&rec.id);
        if flags.intersects(
            CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID,
        ) {
            std::fs::create_dir_all(&ns_dir).map_err(|source| SandboxError::Pin {
                path: ns_dir.clone(),
                source,
            })?;
        }
        if flags.contains(CloneFlags::CLONE_NEWNET) {
            rec.pins.net = Some(pin("net", Self::netns_pin(&rec.id))?);
        }
        if flags.contains(CloneFlags::CLONE_NEWIPC) {
            rec.pins.ipc = Some(pin("ipc", ns_dir.join("ipc"))?);
        }
        if flags.contains(CloneFlags::CLONE_NEWUTS) {
            rec.pins.uts = Some(pin("uts", ns_dir.join("uts"))?);
        }
        if flags.contains(CloneFlags::CLONE_NEWPID) {
            rec.pins.pid = Some(pin("pid", ns_dir.join("pid"))?);
        }
        Ok(())
    }

    /// Writes the pod's sysctls from a thread that joined the pod's net and IPC namespaces.
    fn apply_sysctls(&self, rec: &SandboxRecord) -> Result<(), SandboxError> {
        if rec.spec.sysctls.is_empty() {
            return Ok(());
        }
        let mut namespaces = Vec::new();
        if let Some(p) = &rec.pins.net {
            namespaces.push((p.as_path(), CloneFlags::CLONE_NEWNET));
        }
        if let Some(p) = &rec.pins.ipc {
            namespaces.push((p.as_path(), CloneFlags::CLONE_NEWIPC));
        }
        let sysctls = &rec.spec.sysctls;
        netsetup::netns::run_in_namespaces(&namespaces, || {
            sysctls.iter().try_for_each(|(name, value)| {
                netsetup::sysctl::write(name, value).map_err(|e| SandboxError::Sysctl {
                    name: name.clone(),
                    source: e,
                })
            })
        })
        .map_err(|source| SandboxError::JoinNamespaces { source })?
    }

    /// A `Creating` record found at start-up may lack what a crash kept from being persisted:
    /// the pause's pid (found by its environment) and the cgroup (its path is derived).
    pub fn complete_interrupted(&self, rec: &mut SandboxRecord) {
        if rec.pause.is_none() {
            rec.pause = process::find_by_sandbox(&rec.id).into_iter().next();
        }
        if rec.cgroup.is_none() {
            match self
                .cgroups
                .sandbox_record(&rec.spec.cgroup_parent, &rec.id)
            {
                Ok(cg) => rec.cgroup = Some(cg),
                // A parent the driver in use cannot take: nothing was made from it.
                Err(e) => {
                    warn!(sandbox = %rec.id, error = %e.chain(), "no cgroup for an interrupted pod")
                }
            }
        }
    }

    /// Stop: the pause, then the network (rules → links → lease), from the record, and the
    /// record persisted. Idempotent.
    pub fn stop(&self, rec: &mut SandboxRecord) -> Result<(), SandboxError> {
        if !rec.state.needs_stop() && rec.pause.is_none() && rec.network.is_none() {
            return Ok(());
        }
        let errors = self.stop_steps(rec);
        let persisted = self.persist(rec);
        if !errors.is_empty() {
            return Err(SandboxError::Teardown {
                id: rec.id.clone(),
                errors,
            });
        }
        persisted
    }

    /// The steps of a stop, carrying on past failures; returns them all. Persists nothing.
    fn stop_steps(&self, rec: &mut SandboxRecord) -> Vec<SandboxError> {
        let mut errors = Vec::new();
        if let Some(p) = rec.pause {
            match process::terminate_blocking(&p, PAUSE_GRACE) {
                Ok(()) => rec.pause = None,
                Err(source) => errors.push(SandboxError::Kill { pid: p.pid, source }),
            }
            fault::point("stop:pause");
        }
        if let Some(att) = rec.network.clone() {
            match self.net.net.detach(&rec.id, &att) {
                Ok(()) => rec.network = None,
                Err(e) => errors.push(SandboxError::Detach(e)),
            }
            fault::point("stop:detach");
        } else if rec.state == SandboxState::Creating && !rec.spec.host_network() {
            // An interrupted attach leaves at most a lease and a host link named after us.
            if let Err(e) = self
                .net
                .net
                .cleanup_partial(&rec.id, &netsetup::host_ifname(&rec.id))
            {
                errors.push(SandboxError::Detach(e));
            }
        }
        if rec.state != SandboxState::Creating {
            rec.state = SandboxState::NotReady;
        }
        errors
    }

    /// Remove: stop if needed, then pins, cgroup, files and the record itself.
    pub fn remove(&self, rec: &mut SandboxRecord) -> Result<(), SandboxError> {
        // Also for a NotReady pod: one whose pause died still holds its network. Nothing is
        // persisted until the end: on a full disk a pod can still be removed.
        let mut errors = self.stop_steps(rec);
        fault::point("remove:stopped");
        // Pins named after the id are removed even if the record never got to list them.
        let mut pin_paths: Vec<PathBuf> = rec.pins.all().cloned().collect();
        let derived = [
            Self::netns_pin(&rec.id),
            self.ns_dir(&rec.id).join("ipc"),
            self.ns_dir(&rec.id).join("uts"),
            self.ns_dir(&rec.id).join("pid"),
        ];
        for p in derived {
            if !pin_paths.contains(&p) {
                pin_paths.push(p);
            }
        }
        for p in &pin_paths {
            if let Err(source) = pins::unpin(p) {
                errors.push(SandboxError::Unpin {
                    path: p.clone(),
                    source,
                });
            }
        }
        fault::point("remove:unpinned");
        if let Err(e) = std::fs::remove_dir(self.ns_dir(&rec.id))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(SandboxError::Unpin {
                path: self.ns_dir(&rec.id),
                source: e,
            });
        }
        if let Some(cg) = &rec.cgroup {
            match self.cgroups.remove(cg) {
                Ok(()) => rec.cgroup = None,
                Err(e) => errors.push(e),
            }
            fault::point("remove:cgroup");
        }
        if !errors.is_empty() {
            let _ = self.persist(rec);
            return Err(SandboxError::Teardown {
                id: rec.id.clone(),
                errors,
            });
        }
        self.remove_sandbox_dir(&rec.id)
    }

    /// Deletes the sandbox dir with the record last, so that a crash part-way leaves either
    /// the record (and the removal is redone) or a dir without one (collected at start-up).
    pub fn remove_sandbox_dir(&self, id: &str) -> Result<(), SandboxError> {
        let dir = self.sandbox_dir(id);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name() != "sandbox.json" {
                    let p = e.path();
                    let r = if p.is_dir() {
                        store::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                            .or_else(ignore_missing)
                            .map_err(|source| store::StoreError::Remove {
                                path: p.clone(),
                                source,
                            })
                    };
                    r?;
                }
            }
        }
        fault::point("remove:files");
        let record = self.record_path(id);
        std::fs::remove_file(&record)
            .or_else(ignore_missing)
            .map_err(|source| store::StoreError::Remove {
                path: record,
                source,
            })?;
        store::remove_dir_all(&dir)?;
        Ok(())
    }
}
