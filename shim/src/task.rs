//! The shim's task service: containerd's Task API over the containers of one pod (or one
//! `ctr run`), each run by a `peapod monitor` as the daemon runs CRI containers.
//!
//! A task is created by converting its bundle ([`super::oci`]) into a launch spec in its own
//! directory ([`task_dir`]); StartTask spawns its monitor; a thread per running task waits
//! on the monitor's pidfd and, when it ends, reads the exit it recorded, wakes the waiters
//! and publishes `TaskExit`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::ttrpc::{self, Code, context::Context};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use peapod::image::Digest;

use super::console::Console;
use super::exec::{self, ExecProc};
use super::oci::{self, RootMount};
use peapod::container::cgroup;
use peapod::container::launch::{CgroupDir, Fifos};
use peapod::container::model::Resources;
use peapod::container::model::{ExitRecord, Running};
use peapod::monitor::sealed::Binary;
use peapod::monitor::{EXIT_FILE, LAUNCH_FILE, MONITOR_FILE, Reply};
use peapod::sandbox::cgroup::{CgroupRecord, Cgroups, Hierarchy, systemd};
use peapod::sandbox::process::{self, ProcRef};
use peapod::store;

/// Where the shim keeps its tasks' directories (sockets live there: short paths).
pub const TASK_ROOT: &str = "/run/peapod-shim";

/// A task's directory: launch spec, the monitor's records and sockets, upper and work dirs
/// when containerd gives none. Named by a hash of namespace and id, short enough for the
/// monitor's socket paths.
pub fn task_dir(namespace: &str, id: &str) -> PathBuf {
    let digest = Digest::of(format!("{namespace}\0{id}").as_bytes());
    Path::new(TASK_ROOT).join(&digest.hex()[..24])
}

/// What the task dir says of a task, for the shim and for `delete` after a shim died.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TaskFile {
    pub id: String,
    pub bundle: PathBuf,
    /// Relative cgroup path, made by the shim.
    pub cgroup: Option<PathBuf>,
}

pub const TASK_FILE: &str = "task.json";

#[derive(Clone, Debug)]
enum Phase {
    Created,
    Running(Running),
    Stopped { pid: u32, code: u32, at: i64 },
}

struct Task {
    id: String,
    bundle: String,
    dir: PathBuf,
    io: (String, String, String),
    cgroup: Option<PathBuf>,
    /// Its limits as they now are (for its systemd scope, made at start).
    resources: Mutex<Resources>,
    phase: Mutex<Phase>,
    changed: Condvar,
    execs: Mutex<HashMap<String, Arc<ExecProc>>>,
    /// With a terminal: its master, and the slave until the monitor has opened it.
    console: Option<Console>,
    slave: Mutex<Option<OwnedFd>>,
}

impl Task {
    fn exec(&self, exec_id: &str) -> TtrpcResult<Arc<ExecProc>> {
        self.execs
            .lock()
            .expect("lock")
            .get(exec_id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }

    fn phase(&self) -> Phase {
        self.phase.lock().expect("lock").clone()
    }

    fn pid(&self) -> u32 {
        match self.phase() {
            Phase::Created => 0,
            Phase::Running(r) => r.init.pid as u32,
            Phase::Stopped { pid, .. } => pid,
        }
    }
}

pub struct Service {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    cgroups: Arc<Cgroups>,
    /// `peapod-monitor` (its sealed copy, see [`peapod::monitor::sealed`]).
    exe: Binary,
    idle: Arc<crate::idle::Idle>,
}

pub(crate) fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ttrpc::Error {
    status(Code::INTERNAL, format!("{what}: {e}"))
}

pub(crate) use peapod::monitor::log::now_nanos;

pub fn timestamp(nanos: i64) -> Timestamp {
    let mut t = Timestamp::new();
    t.seconds = nanos.div_euclid(1_000_000_000);
    t.nanos = nanos.rem_euclid(1_000_000_000) as i32;
    t
}

/// The cgroup hierarchies of this node, and a place for the record of parents made.
/// Where systemd runs the node (PID 1, answering on the bus), a task whose cgroups path has
/// systemd's form is a scope unit of its own, as with runc's systemd driver; the path's form
/// and the node decide, since containerd 1.6 passes a non-runc shim no `SystemdCgroup`.
pub fn cgroups() -> std::io::Result<Cgroups> {
    fs::create_dir_all(TASK_ROOT)?;
    let cgroups = Cgroups::new(Hierarchy::detect(), Path::new(TASK_ROOT), "")
        .map_err(std::io::Error::other)?;
    Ok(match systemd::available() {
        true => cgroups.with_systemd_scopes(),
        false => cgroups,
    })
}

/// `path` run from a sealed in-memory copy, so that no task reaches the node's file through
/// `/proc/<pid>/exe`; the file itself, with a warning, where no copy can be made.
fn sealed_binary(path: PathBuf) -> Binary {
    Binary::sealed(path.clone()).unwrap_or_else(|e| {
        containerd_shim::warn!(
            "tasks can reach the monitor binary through /proc/<pid>/exe: {}",
            peapod::errors::chain(&e)
        );
        Binary::unsealed(path)
    })
}

impl Service {
    pub fn new(
        namespace: String,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        cgroups: Cgroups,
    ) -> Service {
        Service {
            namespace,
            publisher: Arc::new(publisher),
            exit,
            tasks: Mutex::new(HashMap::new()),
            cgroups: Arc::new(cgroups),
            exe: sealed_binary(super::peapod_binary()),
            idle: crate::idle::Idle::start(),
        }
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, event);
    }

    /// The task `id`; every request but Create starts here, so this is where the shim
    /// learns it is busy.
    fn task(&self, id: &str) -> TtrpcResult<Arc<Task>> {
        self.idle.poke();
        self.tasks
            .lock()
            .expect("lock")
            .get(id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("task {id} not found")))
    }

    fn create_task(&self, req: &api::CreateTaskRequest) -> TtrpcResult<Arc<Task>> {
        self.idle.poke();
        if req.id.is_empty() || req.bundle.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "id and bundle are required"));
        }
        if !req.checkpoint.is_empty() {
            return Err(status(Code::UNIMPLEMENTED, "restoring a checkpoint"));
        }
        if self.tasks.lock().expect("lock").contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("task {} exists", req.id),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("config.json: {e}")))?;
        let oci_error = |e: oci::OciError| match e {
            oci::OciError::Unsupported { .. } => status(Code::UNIMPLEMENTED, e),
            oci::OciError::Invalid { .. } => status(Code::INVALID_ARGUMENT, e),
        };
        let rel = oci::cgroup_path(&spec).map_err(oci_error)?;
        let resources = oci::resources(&spec);
        cgroup::validate(&resources).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let dir = task_dir(&self.namespace, &req.id);
        let rootfs: Vec<RootMount> = req
            .rootfs
            .iter()
            .map(|m| RootMount {
                typ: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let cgroup_dirs: Vec<CgroupDir> = rel
            .as_ref()
            .map(|rel| {
                self.cgroups
                    .dirs(rel)
                    .into_iter()
                    .map(|(path, name)| CgroupDir { path, name })
                    .collect()
            })
            .unwrap_or_default();
        let (console, slave) = if req.terminal {
            let (c, s) = Console::open_node().map_err(|e| internal("open a terminal", e))?;
            (Some(c), Some(s))
        } else {
            (None, None)
        };
        let fifos = match &slave {
            Some(slave) => {
                let path = Some(Console::slave_path(slave));
                Fifos {
                    stdin: path.clone(),
                    stdout: path.clone(),
                    stderr: path,
                }
            }
            None => {
                let fifo = |p: &str| (!p.is_empty()).then(|| PathBuf::from(p));
                Fifos {
                    stdin: fifo(&req.stdin),
                    stdout: fifo(&req.stdout),
                    stderr: fifo(&req.stderr),
                }
            }
        };
        let launch = oci::launch_spec(
            &spec,
            &oci::Task {
                id: &req.id,
                bundle: &bundle,
                dir: &dir,
                rootfs: &rootfs,
                fifos,
                control_socket: dir.join("control.sock"),
                cgroups: cgroup_dirs.clone(),
                terminal: req.terminal,
            },
        )
        .map_err(oci_error)?;
        // Nothing is made before the request is known to be runnable; from here on what is
        // made is undone on failure.
        let made = || -> Result<(), ttrpc::Error> {
            fs::create_dir_all(&dir).map_err(|e| internal("create the task dir", e))?;
            if let Some(rel) = &rel {
                let (parent, leaf) = split(rel);
                self.cgroups
                    .create(&parent, &leaf)
                    .map_err(|e| internal("create the cgroup", e))?;
                let paths: Vec<PathBuf> = cgroup_dirs.iter().map(|c| c.path.clone()).collect();
                cgroup::apply(&paths, &resources, self.cgroups.version() == 2)
                    .map_err(|e| status(Code::FAILED_PRECONDITION, e))?;
            }
            let file = TaskFile {
                id: req.id.clone(),
                bundle: bundle.clone(),
                cgroup: rel.clone(),
            };
            store::write_json(&dir.join(TASK_FILE), &file)
                .map_err(|e| internal("write the task record", e))?;
            store::write_json(&dir.join(LAUNCH_FILE), &launch)
                .map_err(|e| internal("write the launch spec", e))
        };
        if let Err(e) = made() {
            remove_task_files(&self.cgroups, &dir, rel.as_deref());
            return Err(e);
        }
        Ok(Arc::new(Task {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            dir,
            io: (req.stdin.clone(), req.stdout.clone(), req.stderr.clone()),
            cgroup: rel,
            resources: Mutex::new(resources),
            phase: Mutex::new(Phase::Created),
            changed: Condvar::new(),
            execs: Mutex::new(HashMap::new()),
            console,
            slave: Mutex::new(slave),
        }))
    }

    /// Where the task's cgroup is a scope (systemd's form, systemd on the node): makes the
    /// running task's cgroup that scope unit, with its limits as the properties, and writes
    /// the limits again. A failure is logged: the task runs on, limited, in its cgroup.
    fn adopt_cgroup(&self, task: &Task, pid: i32) {
        let Some(rel) = &task.cgroup else { return };
        let rec = CgroupRecord { rel: rel.clone() };
        let limits = task.resources.lock().expect("lock").clone();
        let what = format!("containerd task {} (peapod shim)", task.id);
        if let Err(e) = cgroup::adopt_scope(&self.cgroups, &rec, pid, &what, &limits) {
            let e = peapod::errors::chain(&e);
            containerd_shim::warn!("task {} runs without a systemd scope: {e}", task.id);
        }
    }

    /// Runs `peapod monitor` for the task, its dir locked as its stdin (as the daemon does).
    fn spawn_monitor(&self, task: &Task) -> TtrpcResult<Running> {
        let lock = File::open(&task.dir).map_err(|e| internal("open the task dir", e))?;
        lock.try_lock()
            .map_err(|e| status(Code::FAILED_PRECONDITION, format!("task dir locked: {e}")))?;
        let mut child = Command::new(self.exe.program())
            .arg0("peapod")
            .arg("monitor")
            .arg(&task.dir)
            .stdin(lock)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| internal("spawn the monitor", e))?;
        let mut out = String::new();
        let read = child.stdout.take().expect("piped").read_to_string(&mut out);
        // The shim's reaper may have reaped it already.
        let _ = child.wait();
        read.map_err(|e| internal("read the monitor's answer", e))?;
        match serde_json::from_str::<Reply>(out.trim()) {
            Ok(Reply::Running(r)) => Ok(r),
            Ok(Reply::Failed { message }) => Err(status(Code::FAILED_PRECONDITION, message)),
            Ok(Reply::NotRecorded { message, .. }) => Err(internal("record the start", message)),
            Err(e) => Err(internal(&format!("the monitor answered {out:?}"), e)),
        }
    }

    /// Waits for the monitor on its own thread; at its end the task is stopped.
    fn watch(&self, task: Arc<Task>, running: Running) {
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        let spawned = std::thread::Builder::new()
            .name("task-exit".into())
            .spawn(move || {
                if let Ok(Some(fd)) = running.monitor.pidfd() {
                    while !matches!(
                        process::wait_exit_blocking(&fd, Duration::from_secs(3600)),
                        Ok(true) | Err(_)
                    ) {}
                }
                let exit: Option<ExitRecord> = store::read_json_opt(&task.dir.join(EXIT_FILE))
                    .ok()
                    .flatten();
                if exit.as_ref().is_some_and(|e| e.oom_killed) {
                    let mut event = TaskOOM::new();
                    event.container_id = task.id.clone();
                    publish(&publisher, &namespace, "/tasks/oom", Box::new(event));
                }
                let (code, at) = match exit {
                    Some(e) => (e.exit_code as u32, e.finished_at),
                    // The monitor died without a word: as a kill.
                    None => (137, now_nanos()),
                };
                let pid = running.init.pid as u32;
                *task.phase.lock().expect("lock") = Phase::Stopped { pid, code, at };
                task.changed.notify_all();
                let mut event = TaskExit::new();
                event.container_id = task.id.clone();
                event.id = task.id.clone();
                event.pid = pid;
                event.exit_status = code;
                event.exited_at = Some(timestamp(at)).into();
                publish(&publisher, &namespace, "/tasks/exit", Box::new(event));
            });
        if let Err(e) = spawned {
            containerd_shim::error!("cannot watch task: {e}");
        }
    }

    fn start_exec(&self, task: &Arc<Task>, exec_id: &str) -> TtrpcResult<api::StartResponse> {
        let Phase::Running(r) = task.phase() else {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("task {} is not running", task.id),
            ));
        };
        let e = task.exec(exec_id)?;
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        let (container_id, id) = (task.id.clone(), exec_id.to_owned());
        let pid = e.start(&self.exe, r.init, move |pid, code, at| {
            let mut event = TaskExit::new();
            event.container_id = container_id;
            event.id = id;
            event.pid = pid;
            event.exit_status = code;
            event.exited_at = Some(timestamp(at)).into();
            publish(&publisher, &namespace, "/tasks/exit", Box::new(event));
        })?;
        let mut event = TaskExecStarted::new();
        event.container_id = task.id.clone();
        event.exec_id = exec_id.to_owned();
        event.pid = pid;
        self.publish("/tasks/exec-started", Box::new(event));
        let mut resp = api::StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn signal(&self, task: &Task, signal: u32, all: bool) -> TtrpcResult<()> {
        let Phase::Running(r) = task.phase() else {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        };
        let sig = i32::try_from(signal).map_err(|_| status(Code::INVALID_ARGUMENT, "signal"))?;
        let send = |p: &ProcRef| -> std::io::Result<()> {
            match p.pidfd()? {
                Some(fd) => process::pidfd_signal(&fd, sig),
                None => Ok(()),
            }
        };
        send(&r.init).map_err(|e| internal("signal the task", e))?;
        if all {
            for pid in self.pids_of(task) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::try_from(sig).ok(),
                );
            }
        }
        Ok(())
    }

    /// The task's processes: its cgroup's, or its init alone.
    fn pids_of(&self, task: &Task) -> Vec<u32> {
        if let Some(rel) = &task.cgroup
            && let Some(dir) = self.cgroups.paths(rel).into_iter().next()
        {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            return procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
        }
        match task.phase() {
            Phase::Running(r) if r.init.is_alive() => vec![r.init.pid as u32],
            _ => Vec::new(),
        }
    }
}

/// `a/b/c` as parent `a/b` and leaf `c`, as [`Cgroups::create`] takes them.
fn split(rel: &Path) -> (String, String) {
    let parent = rel
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let leaf = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (parent, leaf)
}

/// Removes a task's dir and cgroup; what is already gone is fine.
pub fn remove_task_files(cgroups: &Cgroups, dir: &Path, rel: Option<&Path>) {
    if let Some(rel) = rel {
        let (parent, leaf) = split(rel);
        if let Err(e) = cgroups.remove(&cgroups.record_for(&parent, &leaf)) {
            containerd_shim::warn!("cannot remove cgroup {}: {e}", rel.display());
        }
    }
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        containerd_shim::warn!("cannot remove {}: {e}", dir.display());
    }
}

/// Kills whatever of a task is left (its monitor's record names its processes; its cgroup
/// holds the rest) and removes its files: for DeleteTask of a task never waited for, and
/// for `delete` after its shim died. Returns the init's pid and exit status.
pub fn reap_leftovers(cgroups: &Cgroups, dir: &Path) -> (u32, u32, i64) {
    let file: TaskFile = store::read_json_opt(&dir.join(TASK_FILE))
        .ok()
        .flatten()
        .unwrap_or_default();
    let running: Option<Running> = store::read_json_opt(&dir.join(MONITOR_FILE)).ok().flatten();
    if let Some(r) = &running {
        for p in [&r.init, &r.monitor] {
            if let Ok(Some(fd)) = p.pidfd() {
                let _ = process::pidfd_signal(&fd, libc::SIGKILL);
                let _ = process::wait_exit_blocking(&fd, Duration::from_secs(10));
            }
        }
    }
    if let Some(rel) = &file.cgroup {
        for dir in cgroups.paths(rel) {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // The killed must leave the cgroup before it can go.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline
            && cgroups.paths(rel).iter().any(|d| {
                fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
            })
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let exit: Option<ExitRecord> = store::read_json_opt(&dir.join(EXIT_FILE)).ok().flatten();
    let (code, at) = exit.map_or((137, now_nanos()), |e| (e.exit_code as u32, e.finished_at));
    let pid = running.map_or(0, |r| r.init.pid as u32);
    remove_task_files(cgroups, dir, file.cgroup.as_deref());
    (pid, code, at)
}

fn exec_state(task: &Task, e: &ExecProc) -> api::StateResponse {
    let mut resp = api::StateResponse::new();
    resp.id = task.id.clone();
    resp.exec_id = e.id.clone();
    resp.bundle = task.bundle.clone();
    resp.stdin = e.io.0.clone();
    resp.stdout = e.io.1.clone();
    resp.stderr = e.io.2.clone();
    resp.status = match e.phase() {
        exec::Phase::Created => api::Status::CREATED,
        exec::Phase::Running { pid } => {
            resp.pid = pid;
            api::Status::RUNNING
        }
        exec::Phase::Stopped { pid, code, at } => {
            resp.pid = pid;
            resp.exit_status = code;
            resp.exited_at = Some(timestamp(at)).into();
            api::Status::STOPPED
        }
    }
    .into();
    resp
}

fn delete_exec(task: &Task, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
    let e = task.exec(exec_id)?;
    let (pid, code, at) = match e.phase() {
        exec::Phase::Running { .. } => {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("exec {} is running", e.id),
            ));
        }
        exec::Phase::Created => (0, 0, now_nanos()),
        exec::Phase::Stopped { pid, code, at } => (pid, code, at),
    };
    task.execs.lock().expect("lock").remove(exec_id);
    e.remove();
    let mut resp = api::DeleteResponse::new();
    resp.pid = pid;
    resp.exit_status = code;
    resp.exited_at = Some(timestamp(at)).into();
    Ok(resp)
}

fn publish(publisher: &RemotePublisher, namespace: &str, topic: &str, event: Box<dyn MessageDyn>) {
    if let Err(e) = publisher.publish(Context::default(), topic, namespace, event) {
        containerd_shim::warn!("cannot publish {topic}: {e}");
    }
}

use std::os::unix::process::CommandExt;

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let task = self.create_task(&req)?;
        self.tasks
            .lock()
            .expect("lock")
            .insert(task.id.clone(), task.clone());
        let mut io = TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        let mut event = TaskCreate::new();
        event.container_id = req.id.clone();
        event.bundle = req.bundle.clone();
        event.rootfs = req.rootfs.clone();
        event.io = Some(io).into();
        self.publish("/tasks/create", Box::new(event));
        Ok(api::CreateTaskResponse::new())
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            return self.start_exec(&task, &req.exec_id);
        }
        {
            let phase = task.phase.lock().expect("lock");
            if !matches!(*phase, Phase::Created) {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("task {} was started", req.id),
                ));
            }
        }
        let running = match self.spawn_monitor(&task) {
            Ok(r) => r,
            Err(e) => {
                // Failed to start: stopped, as runc's shim has it (the exit says why).
                let exit: Option<ExitRecord> = store::read_json_opt(&task.dir.join(EXIT_FILE))
                    .ok()
                    .flatten();
                let code = exit.map_or(128, |x| x.exit_code as u32);
                *task.phase.lock().expect("lock") = Phase::Stopped {
                    pid: 0,
                    code,
                    at: now_nanos(),
                };
                task.changed.notify_all();
                return Err(e);
            }
        };
        if let Some(console) = &task.console {
            let (stdin, stdout) = (&task.io.0, &task.io.1);
            if let Err(e) = console.pump(stdin, stdout) {
                containerd_shim::warn!("cannot copy the terminal of {}: {e}", task.id);
            }
        }
        // The monitor holds the terminal now; the task's end is its last slave's.
        task.slave.lock().expect("lock").take();
        let pid = running.init.pid as u32;
        self.adopt_cgroup(&task, running.init.pid);
        *task.phase.lock().expect("lock") = Phase::Running(running);
        task.changed.notify_all();
        self.watch(task.clone(), running);
        let mut event = TaskStart::new();
        event.container_id = req.id.clone();
        event.pid = pid;
        self.publish("/tasks/start", Box::new(event));
        let mut resp = api::StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let e = task.exec(&req.exec_id)?;
            return Ok(exec_state(&task, &e));
        }
        let mut resp = api::StateResponse::new();
        resp.id = task.id.clone();
        resp.bundle = task.bundle.clone();
        resp.pid = task.pid();
        resp.stdin = task.io.0.clone();
        resp.stdout = task.io.1.clone();
        resp.stderr = task.io.2.clone();
        resp.status = match task.phase() {
            Phase::Created => api::Status::CREATED,
            Phase::Running(_) => api::Status::RUNNING,
            Phase::Stopped { code, at, .. } => {
                resp.exit_status = code;
                resp.exited_at = Some(timestamp(at)).into();
                api::Status::STOPPED
            }
        }
        .into();
        Ok(resp)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let (code, at) = task.exec(&req.exec_id)?.wait();
            let mut resp = api::WaitResponse::new();
            resp.exit_status = code;
            resp.exited_at = Some(timestamp(at)).into();
            return Ok(resp);
        }
        let mut phase = task.phase.lock().expect("lock");
        loop {
            if let Phase::Stopped { code, at, .. } = *phase {
                let mut resp = api::WaitResponse::new();
                resp.exit_status = code;
                resp.exited_at = Some(timestamp(at)).into();
                return Ok(resp);
            }
            phase = task.changed.wait(phase).expect("lock");
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let sig =
                i32::try_from(req.signal).map_err(|_| status(Code::INVALID_ARGUMENT, "signal"))?;
            task.exec(&req.exec_id)?.kill(sig)?;
            return Ok(api::Empty::new());
        }
        self.signal(&task, req.signal, req.all)?;
        Ok(api::Empty::new())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let task = self.task(&req.id)?;
        let mut resp = api::PidsResponse::new();
        for pid in self.pids_of(&task) {
            let mut info = containerd_shim::protos::types::task::ProcessInfo::new();
            info.pid = pid;
            resp.processes.push(info);
        }
        Ok(resp)
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            return delete_exec(&task, &req.exec_id);
        }
        let (pid, code, at) = match task.phase() {
            Phase::Running(_) => {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is running: kill it first", req.id),
                ));
            }
            Phase::Created => (0, 0, now_nanos()),
            Phase::Stopped { pid, code, at } => (pid, code, at),
        };
        // Whatever the container left in its cgroup goes with it.
        reap_leftovers(&self.cgroups, &task.dir);
        self.tasks.lock().expect("lock").remove(&req.id);
        let mut event = TaskDelete::new();
        event.container_id = req.id.clone();
        event.id = req.id.clone();
        event.pid = pid;
        event.exit_status = code;
        event.exited_at = Some(timestamp(at)).into();
        self.publish("/tasks/delete", Box::new(event));
        let mut resp = api::DeleteResponse::new();
        resp.pid = pid;
        resp.exit_status = code;
        resp.exited_at = Some(timestamp(at)).into();
        Ok(resp)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        if !matches!(task.phase(), Phase::Running(_)) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("task {} is not running", req.id),
            ));
        }
        if task.execs.lock().expect("lock").contains_key(&req.exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        let e = Arc::new(ExecProc::create(&task.dir, &req)?);
        task.execs
            .lock()
            .expect("lock")
            .insert(req.exec_id.clone(), e);
        let mut event = TaskExecAdded::new();
        event.container_id = req.id.clone();
        event.exec_id = req.exec_id.clone();
        self.publish("/tasks/exec-added", Box::new(event));
        Ok(api::Empty::new())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let task = self.task(&req.id)?;
        let rel = task
            .cgroup
            .as_ref()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the task has no cgroup"))?;
        let any = super::stats::metrics(&self.cgroups.paths(rel), self.cgroups.version() == 2)
            .map_err(|e| internal("read the task's cgroup", e))?;
        let mut resp = api::StatsResponse::new();
        resp.stats = Some(any).into();
        Ok(resp)
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        let rel = task
            .cgroup
            .as_ref()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the task has no cgroup"))?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "no resources"))?;
        let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        let limits = oci::limits(&res);
        cgroup::validate(&limits).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let v2 = self.cgroups.version() == 2;
        let dirs = self.cgroups.paths(rel);
        cgroup::apply(&dirs, &limits, v2).map_err(|e| status(Code::FAILED_PRECONDITION, e))?;
        let rec = CgroupRecord { rel: rel.clone() };
        // The scope's properties follow; systemd rewrites the files from them, rounded.
        if cgroup::set_scope_limits(&self.cgroups, &rec, &limits)
            .map_err(|e| internal("set the limits of the task's scope", e))?
        {
            cgroup::apply(&dirs, &limits, v2).map_err(|e| status(Code::FAILED_PRECONDITION, e))?;
        }
        *task.resources.lock().expect("lock") = limits;
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let task = self.task(&req.id)?;
        let (cols, rows) = (
            u16::try_from(req.width).unwrap_or(u16::MAX),
            u16::try_from(req.height).unwrap_or(u16::MAX),
        );
        let resized = if req.exec_id.is_empty() {
            let console = task
                .console
                .as_ref()
                .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the task has no terminal"))?;
            console.resize(cols, rows)
        } else {
            task.exec(&req.exec_id)?.resize(cols, rows)?
        };
        resized.map_err(|e| internal("resize the terminal", e))?;
        Ok(api::Empty::new())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task = self.task(&req.id)?;
        let mut resp = api::ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = task.pid();
        resp.version = "2".into();
        Ok(resp)
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // The container holds its stdin FIFO itself: it sees EOF when the client closes it.
        self.task(&req.id)?;
        Ok(api::Empty::new())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.tasks.lock().expect("lock").is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
