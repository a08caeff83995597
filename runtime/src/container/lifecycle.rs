//! Start, stop and remove (blocking; called from `spawn_blocking` or the pod hooks).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::error::ContainerError;
use super::events::EventKind;
use super::model::{ContainerRecord, ContainerState, ExitRecord, Resources, Running};
use super::{Containers, Result, cgroup, gc, now_nanos};
use crate::fault;
use crate::monitor::{MONITOR_FILE, Reply};
use crate::sandbox::SandboxState;
use crate::sandbox::cgroup::{CgroupRecord, MONITORS_LEAF};
use crate::sandbox::process::{ProcRef, pidfd_signal, wait_exit_blocking};
use crate::store;

/// What a monitor's answer means for a start (a `Reply::NotRecorded` is an error).
enum Answer {
    Running(Running),
    /// The container did not start (the monitor recorded why in `exit.json`).
    Failed(String),
}

/// How long a container may take to exit after SIGKILL, and its monitor to finish after.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a monitor left starting by a crashed daemon may take to report or end.
const MONITOR_WAIT: Duration = Duration::from_secs(10);

impl Containers {
    /// StartContainer: cgroup and limits, then the monitor, which starts the process. The
    /// cgroup is recorded (by CreateContainer) before it is made, so that a crash in between
    /// leaves nothing that RemoveContainer does not know of. That the container runs is
    /// recorded by its monitor alone (`monitor.json`, read back by `refresh`), before it
    /// answers.
    pub fn start(&self, id: &str) -> Result<()> {
        let (id, entry) = self.lookup(id)?;
        let _op = entry.op.lock().expect("lock");
        let mut rec = entry.rec.lock().expect("lock").clone();
        self.settle(&mut rec);
        if !rec.state.can_start() {
            *entry.rec.lock().expect("lock") = rec.clone();
            return Err(ContainerError::WrongState {
                id,
                state: rec.state,
                op: "start",
            });
        }
        let lock = self.lock_for_start(&id)?;
        let pod = self.sandboxes.status(&rec.sandbox_id)?;
        if pod.state != SandboxState::Ready {
            return Err(ContainerError::SandboxNotReady { id: pod.id });
        }
        let pod_cg = pod
            .cgroup
            .as_ref()
            .ok_or_else(|| ContainerError::SandboxNotReady { id: pod.id.clone() })?;
        let cgroups = self.sandboxes.cgroups();
        let pod_rel = pod_cg.rel.to_string_lossy();
        let cg = cgroups.container_record(pod_cg, &id);
        if rec.cgroup.as_ref() != Some(&cg) {
            // Recorded by CreateContainer; not in records from before it was.
            rec.cgroup = Some(cg.clone());
            self.persist(&rec)?;
            *entry.rec.lock().expect("lock") = rec.clone();
        }
        let dirs = cgroups.paths(&cg.rel);
        let spawned = (|| {
            cgroups.make(&cg)?;
            fault::point("start:cgroup");
            cgroup::apply(&dirs, &rec.spec.resources, cgroups.version() == 2)?;
            fault::point("start:limits");
            // Made by the pod's first start; later starts only check it is there.
            let monitors = cgroups.record_for(&pod_rel, MONITORS_LEAF);
            if !cgroups.paths(&monitors.rel).iter().all(|d| d.is_dir()) {
                cgroups.create(&pod_rel, MONITORS_LEAF)?;
            }
            self.spawn_monitor(&id, lock, &cgroups.join_files(&monitors.rel))
        })();
        let reply = match spawned {
            Ok(reply) => reply,
            Err(e) => {
                // Nothing runs: the container stays Created, and the cgroup goes (its path
                // stays recorded).
                gc::kill_all_in(&dirs);
                if let Err(e) = cgroups.remove(&cg) {
                    warn!(container = %id, error = %e.chain(), "cannot remove the cgroup of a failed start");
                }
                *entry.rec.lock().expect("lock") = rec;
                return Err(e);
            }
        };
        match reply {
            Answer::Running(r) => {
                fault::point("start:monitor");
                self.adopt_cgroup(&id, &cg, r.init.pid, &rec.spec.resources);
                rec.running = Some(r);
                rec.state = ContainerState::Running;
                rec.started_at = r.started_at;
                // Not written to container.json: the monitor's `monitor.json` is the record
                // that it runs, and `refresh` reads a Created record with one as Running.
                let sandbox_id = rec.sandbox_id.clone();
                *entry.rec.lock().expect("lock") = rec;
                info!(container = %id, pid = r.init.pid, monitor = r.monitor.pid, "container started");
                // Before the watch, so that a quick exit's event comes after this one.
                self.publish(&id, &sandbox_id, EventKind::Started);
                self.watch_monitor(&id, r);
                Ok(())
            }
            Answer::Failed(message) => {
                rec.state = ContainerState::Exited;
                self.refresh(&mut rec);
                let mut written = Ok(());
                if rec.exit.is_none() {
                    let exit = ExitRecord {
                        exit_code: 128,
                        signal: None,
                        finished_at: now_nanos(),
                        oom_killed: false,
                        start_error: Some(message.clone()),
                        lost: None,
                    };
                    written =
                        store::write_json(&self.dir(&id).join(crate::monitor::EXIT_FILE), &exit);
                    rec.exit = Some(exit);
                }
                // In memory first (with its cgroup, for Remove), whatever the disk says.
                *entry.rec.lock().expect("lock") = rec.clone();
                self.note_end(&entry, &rec);
                written?;
                self.persist(&rec)?;
                Err(ContainerError::Start { id, message })
            }
        }
    }

    /// With the systemd driver, makes the running container's cgroup `cg` its scope, with
    /// its limits as the scope's properties, then writes the limits again (systemd writes
    /// its own values, rounded, into a cgroup it takes over). A failure leaves the container
    /// running in its cgroup, limited, as with cgroupfs: it is logged, not fatal, and the
    /// scope's removal later finds no unit, which is no error.
    fn adopt_cgroup(&self, id: &str, cg: &CgroupRecord, pid: i32, r: &Resources) {
        if let Err(e) = cgroup::adopt_scope(self.sandboxes.cgroups(), cg, pid, id, r) {
            warn!(container = %id, error = %e.chain(), "the container runs without a systemd scope");
        }
        fault::point("start:scope");
    }

    /// The monitor lock: the container's dir, opened and locked (flock) by us; `None` when a
    /// monitor holds it. The daemon hands it, locked, to the monitor it spawns, and every
    /// monitor process keeps it until it exits: so a lock that is held while no start is in
    /// flight (only after a crash) means a monitor of an earlier daemon is still alive or
    /// still starting. (A lock file of its own would cost a file creation on every start.)
    fn monitor_lock(&self, id: &str) -> Result<Option<std::fs::File>> {
        let path = self.dir(id);
        let f = std::fs::File::open(&path).map_err(ContainerError::io("open", path.clone()))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(ContainerError::io("lock", path)(e)),
        }
    }

    /// The monitor lock for a start. Held by someone else, it is a monitor still starting
    /// from before a crash (`unsettled`), or else, for a moment, a copy of an earlier open of
    /// ours (a probe, a start that failed) in a child another thread forked and that has not
    /// exec'd yet: that one goes by itself.
    fn lock_for_start(&self, id: &str) -> Result<std::fs::File> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            if let Some(lock) = self.monitor_lock(id)? {
                return Ok(lock);
            }
            if self.unsettled.lock().expect("lock").contains(id) || Instant::now() >= deadline {
                return Err(ContainerError::MonitorStarting { id: id.to_owned() });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Brings a Created record up to date when a monitor started by an earlier daemon (which
    /// crashed while it started) still holds the container's lock: waits for that monitor to
    /// report (`monitor.json`, then the container runs) or to end, then refreshes. Only
    /// containers found Created at start-up can have one (`unsettled`).
    pub(super) fn settle(&self, rec: &mut ContainerRecord) {
        self.refresh(rec);
        if rec.state != ContainerState::Created {
            self.unsettled.lock().expect("lock").remove(&rec.id);
            return;
        }
        if !self.unsettled.lock().expect("lock").contains(&rec.id) {
            return;
        }
        let deadline = Instant::now() + MONITOR_WAIT;
        while Instant::now() < deadline {
            match self.monitor_lock(&rec.id) {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if self.dir(&rec.id).join(MONITOR_FILE).exists() => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        self.refresh(rec);
        if rec.state == ContainerState::Created && matches!(self.monitor_lock(&rec.id), Ok(None)) {
            warn!(container = %rec.id, "a monitor from before a crash is still starting");
        } else {
            self.unsettled.lock().expect("lock").remove(&rec.id);
        }
    }

    /// Runs `peapod monitor <dir> <join>...` with the locked monitor lock as its stdin: it
    /// joins its cgroup (writes 0 into each `join` file), its first process exits at once
    /// (the monitor is no child of ours); the monitor says on the pipe whether the container
    /// runs, then closes it.
    fn spawn_monitor(&self, id: &str, lock: std::fs::File, join: &[PathBuf]) -> Result<Answer> {
        let dir = self.dir(id);
        // Its stderr is ours until it answers (what goes wrong in a start shows in the
        // daemon's log); then it moves to its own `monitor.log`.
        let mut child = Command::new(self.exe.program())
            .arg0(self.exe.path())
            .arg("monitor")
            .arg(&dir)
            .args(join)
            .stdin(lock)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| ContainerError::Spawn {
                id: id.to_owned(),
                source,
            })?;
        fault::point("start:monitor-spawned");
        let mut out = String::new();
        let read = child.stdout.take().expect("piped").read_to_string(&mut out);
        let _ = child.wait();
        read.map_err(|source| ContainerError::Spawn {
            id: id.to_owned(),
            source,
        })?;
        let reply = serde_json::from_str(out.trim()).map_err(|e| ContainerError::Spawn {
            id: id.to_owned(),
            source: std::io::Error::other(format!(
                "unexpected answer from the monitor {out:?}: {e}"
            )),
        })?;
        match reply {
            Reply::Running(r) => Ok(Answer::Running(r)),
            Reply::Failed { message } => Ok(Answer::Failed(message)),
            // For us the start did not happen: the error of the write.
            Reply::NotRecorded {
                path,
                errno,
                message,
            } => {
                let source = match errno {
                    Some(errno) => std::io::Error::from_raw_os_error(errno),
                    None => std::io::Error::other(message),
                };
                Err(crate::store::StoreError::Write { path, source }.into())
            }
        }
    }

    /// StopContainer: the stop signal (sent again if a handler appears after it was lost, see
    /// `stop_signal`), SIGKILL after `timeout` seconds; an unknown id is OK.
    pub fn stop(&self, id: &str, timeout: i64) -> Result<()> {
        let id = match self.resolve(id) {
            Err(ContainerError::NotFound { .. }) => return Ok(()),
            other => other?,
        };
        let Some(entry) = self.entry(&id) else {
            return Ok(());
        };
        let _op = entry.op.lock().expect("lock");
        let mut rec = entry.rec.lock().expect("lock").clone();
        self.settle(&mut rec);
        if let (ContainerState::Running, Some(r)) = (rec.state, rec.running) {
            let grace = Duration::from_secs(timeout.max(0) as u64);
            self.kill(&id, r.init, rec.stop_signal, grace)?;
            fault::point("cstop:killed");
            self.kill_leftovers(&rec);
            fault::point("cstop:leftovers");
            if let Some(fd) = r.monitor.pidfd().ok().flatten() {
                let _ = wait_exit_blocking(&fd, KILL_WAIT);
            }
            fault::point("cstop:monitor-gone");
            self.refresh(&mut rec);
            info!(container = %id, exit = ?rec.exit.as_ref().map(|e| e.exit_code), "container stopped");
        }
        *entry.rec.lock().expect("lock") = rec.clone();
        // Also when it had exited by itself and its watcher has not said so yet: a removal's
        // CONTAINER_DELETED must not come before it.
        self.note_end(&entry, &rec);
        Ok(())
    }

    /// Start-up: finishes a stop that a crash cut off between the container's end and the
    /// sweep of its cgroup. What its process left behind (in a pod-wide PID namespace) is
    /// killed; it would live on, and hold the log pipes open so that the monitor waits for
    /// it and the container looks Running without a process.
    pub(super) fn sweep_if_ended(&self, rec: &mut ContainerRecord) {
        let monitor = match (rec.state, rec.running) {
            (ContainerState::Running, Some(r)) if !r.init.is_alive() => Some(r.monitor),
            (ContainerState::Exited, _) => None,
            _ => return,
        };
        self.kill_leftovers(rec);
        if let Some(fd) = monitor.and_then(|m| m.pidfd().ok().flatten()) {
            let _ = wait_exit_blocking(&fd, KILL_WAIT);
        }
        self.refresh(rec);
    }

    /// SIGKILL to whatever is left in the container's cgroup once its process is gone: in a
    /// shared PID namespace its children outlive it, and so may an ExecSync command. They
    /// would hold the log pipes open and keep the cgroup busy.
    fn kill_leftovers(&self, rec: &super::model::ContainerRecord) {
        let Some(cg) = &rec.cgroup else { return };
        gc::kill_all_in(&self.sandboxes.cgroups().paths(&cg.rel));
    }

    fn kill(&self, id: &str, p: ProcRef, sig: i32, grace: Duration) -> Result<()> {
        let err = |source| ContainerError::Kill {
            id: id.to_owned(),
            pid: p.pid,
            source,
        };
        let Some(fd) = p.pidfd().map_err(err)? else {
            return Ok(());
        };
        // Whatever becomes of the stop signal (a record from before signals were checked may
        // hold one that does not exist), the stop ends with SIGKILL.
        if !grace.is_zero() {
            match super::stop_signal::deliver(&fd, p.pid, sig, grace) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => warn!(container = %id, signal = sig, error = %e,
                    "the stop signal failed; SIGKILL now"),
            }
        }
        pidfd_signal(&fd, libc::SIGKILL).map_err(err)?;
        if !wait_exit_blocking(&fd, KILL_WAIT).map_err(err)? {
            return Err(ContainerError::Stuck { id: id.to_owned() });
        }
        Ok(())
    }

    /// RemoveContainer: kill if running, then cgroup, socket, dir and record; an unknown id
    /// is OK.
    pub fn remove(&self, id: &str) -> Result<()> {
        let id = match self.resolve(id) {
            Err(ContainerError::NotFound { .. }) => return Ok(()),
            other => other?,
        };
        let Some(entry) = self.entry(&id) else {
            return Ok(());
        };
        self.stop(&id, 0)?;
        fault::point("cremove:stopped");
        let _op = entry.op.lock().expect("lock");
        let mut rec = entry.rec.lock().expect("lock").clone();
        let mut errors = Vec::new();
        // Whatever outlived its monitor or an exec: the cgroup must be empty to go. Also
        // when it has exited: a crash may have come between its end and the stop's sweep.
        self.kill_leftovers(&rec);
        if let Some(cg) = &rec.cgroup {
            match self.sandboxes.cgroups().remove(cg) {
                Ok(()) => rec.cgroup = None,
                Err(e) => errors.push(ContainerError::Sandbox(e)),
            }
            fault::point("cremove:cgroup");
        }
        let control = self.socket(&id);
        for sock in [crate::monitor::attach::socket_path(&control), control] {
            if let Err(e) = std::fs::remove_file(&sock)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                errors.push(ContainerError::io("remove", sock)(e));
            }
        }
        fault::point("cremove:socket");
        if !errors.is_empty() {
            let _ = self.persist(&rec);
            *entry.rec.lock().expect("lock") = rec;
            return Err(ContainerError::Teardown { id, errors });
        }
        if let Err(e) = self.remove_dir(&id) {
            warn!(container = %id, error = %e, "cannot remove the container dir");
            return Err(e.into());
        }
        self.ctrs.write().expect("lock").remove(&id);
        self.unsettled.lock().expect("lock").remove(&id);
        let key = (
            rec.sandbox_id.clone(),
            rec.spec.name.clone(),
            rec.spec.attempt,
        );
        self.names.lock().expect("lock").remove(&key);
        info!(container = %id, "container removed");
        self.publish(&id, &rec.sandbox_id, EventKind::Deleted);
        Ok(())
    }

    /// Deletes the container dir with the record last, so that a crash part-way leaves
    /// either the record (and the removal is redone) or a dir without one (removed at
    /// start-up).
    fn remove_dir(&self, id: &str) -> std::result::Result<(), store::StoreError> {
        let dir = self.dir(id);
        let record = dir.join("container.json");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p == record {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                store::remove_dir_all(&p)?;
            } else if let Err(source) = std::fs::remove_file(&p)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(store::StoreError::Remove { path: p, source });
            }
        }
        fault::point("cremove:files");
        if let Err(source) = std::fs::remove_file(&record)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(store::StoreError::Remove {
                path: record,
                source,
            });
        }
        store::remove_dir_all(&dir)
    }
}
