//! Exec processes of a running task (`ctr task exec`, the CRI's ExecSync and Exec through
//! containerd): each runs through `peapod enter`, the helper the daemon's ExecSync uses,
//! with a launch spec of its own: the task's, with the exec's process (args, env, cwd, user,
//! capabilities, no_new_privs) put in. Its stdio are the FIFOs containerd hands over.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

use containerd_shim::api;
use containerd_shim::monitor::{Topic, monitor_subscribe, wait_pid};
use containerd_shim::protos::ttrpc::{self, Code};

use peapod::container::launch::LaunchSpec;
use peapod::container::user::User;
use peapod::monitor::LAUNCH_FILE;
use peapod::monitor::fifo::{self, Dir};
use peapod::monitor::sealed::Binary;
use peapod::sandbox::process::ProcRef;
use peapod::store;

use super::console::Console;

type Result<T> = std::result::Result<T, ttrpc::Error>;

use super::task::status;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running { pid: u32 },
    Stopped { pid: u32, code: u32, at: i64 },
}

pub struct ExecProc {
    pub id: String,
    dir: PathBuf,
    pub io: (String, String, String),
    argv: Vec<String>,
    terminal: bool,
    console: Mutex<Option<Console>>,
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl ExecProc {
    /// Checks the request and writes the exec's launch spec in `<task dir>/exec/`.
    pub fn create(task_dir: &Path, req: &api::ExecProcessRequest) -> Result<ExecProc> {
        if req.exec_id.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "exec_id is required"));
        }
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "the exec has no process spec"))?;
        let process: oci_spec::runtime::Process = serde_json::from_slice(&any.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("the exec's process: {e}")))?;
        let argv = process.args().clone().unwrap_or_default();
        if argv.first().is_none_or(String::is_empty) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "the exec's process has no args",
            ));
        }
        let mut spec: LaunchSpec = store::read_json(&task_dir.join(LAUNCH_FILE))
            .map_err(|e| status(Code::INTERNAL, format!("the task's launch spec: {e}")))?;
        spec.argv = argv.clone();
        if let Some(env) = process.env() {
            spec.env = env.clone();
        }
        let cwd = process.cwd().display().to_string();
        if !cwd.is_empty() {
            spec.cwd = cwd;
        }
        let user = process.user();
        spec.user = User {
            uid: user.uid(),
            gid: user.gid(),
            groups: user.additional_gids().clone().unwrap_or_default(),
        };
        if let Some(bounding) = process
            .capabilities()
            .as_ref()
            .and_then(|c| c.bounding().clone())
        {
            let mut caps: Vec<String> = bounding.iter().map(super::oci::capability_name).collect();
            caps.sort();
            spec.caps = caps;
        }
        if let Some(nnp) = process.no_new_privileges() {
            spec.no_new_privs = nnp;
        }
        let name = peapod::image::Digest::of(req.exec_id.as_bytes()).hex()[..16].to_owned();
        let dir = task_dir.join("exec").join(name);
        fs::create_dir_all(&dir)
            .map_err(|e| status(Code::INTERNAL, format!("create {}: {e}", dir.display())))?;
        store::write_json(&dir.join(LAUNCH_FILE), &spec)
            .map_err(|e| status(Code::INTERNAL, format!("write the exec's launch spec: {e}")))?;
        Ok(ExecProc {
            id: req.exec_id.clone(),
            dir,
            io: (req.stdin.clone(), req.stdout.clone(), req.stderr.clone()),
            argv,
            terminal: req.terminal,
            console: Mutex::new(None),
            phase: Mutex::new(Phase::Created),
            changed: Condvar::new(),
        })
    }

    pub fn phase(&self) -> Phase {
        *self.phase.lock().expect("lock")
    }

    /// Runs `peapod enter` for the exec in the task whose process is `init`; `on_exit` runs
    /// on a thread of its own once the exec ended, with its pid, status and time.
    pub fn start(
        self: &Arc<Self>,
        exe: &Binary,
        init: ProcRef,
        on_exit: impl FnOnce(u32, u32, i64) + Send + 'static,
    ) -> Result<u32> {
        if self.phase() != Phase::Created {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("exec {} was started", self.id),
            ));
        }
        let open = |path: &str, dir: Dir| {
            let path = (!path.is_empty()).then(|| Path::new(path));
            fifo::open(path, dir).map(Stdio::from)
        };
        // With a terminal, a pty of the container's own devpts, so the command finds its
        // terminal under its /dev/pts.
        let mut slave = None;
        let stdio = (|| {
            if self.terminal {
                let root = PathBuf::from(format!("/proc/{}/root", init.pid));
                let (console, s) = Console::open(&root)?;
                let io = (
                    Stdio::from(s.try_clone()?),
                    Stdio::from(s.try_clone()?),
                    Stdio::from(s.try_clone()?),
                );
                *self.console.lock().expect("lock") = Some(console);
                slave = Some(s);
                return Ok::<_, std::io::Error>(io);
            }
            Ok((
                open(&self.io.0, Dir::Read)?,
                open(&self.io.1, Dir::Write)?,
                open(&self.io.2, Dir::Write)?,
            ))
        })()
        .map_err(|e| status(Code::INTERNAL, format!("open the exec's stdio: {e}")))?;
        // The shim's reaper waits for its children: the exit comes from it, so listen before
        // the helper can end.
        let exits = monitor_subscribe(Topic::Pid)
            .map_err(|e| status(Code::INTERNAL, format!("watch for the exec's exit: {e}")))?;
        let mut cmd = Command::new(exe.program());
        cmd.arg0("peapod").arg("enter");
        if self.terminal {
            cmd.arg("--tty");
        }
        let child = cmd
            .arg(&self.dir)
            .arg(init.pid.to_string())
            .arg(init.start_time.to_string())
            .args(&self.argv)
            .stdin(stdio.0)
            .stdout(stdio.1)
            .stderr(stdio.2)
            .spawn()
            .map_err(|e| status(Code::INTERNAL, format!("spawn peapod enter: {e}")))?;
        let pid = child.id();
        drop(child);
        if let Some(console) = &*self.console.lock().expect("lock")
            && let Err(e) = console.pump(&self.io.0, &self.io.1)
        {
            containerd_shim::warn!("cannot copy the terminal of exec {}: {e}", self.id);
        }
        // The helper holds the terminal now; the exec's end closes its last slave.
        drop(slave);
        *self.phase.lock().expect("lock") = Phase::Running { pid };
        self.changed.notify_all();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("exec-exit".into())
            .spawn(move || {
                let code = wait_pid(pid as i32, exits) as u32;
                let at = super::task::now_nanos();
                *me.phase.lock().expect("lock") = Phase::Stopped { pid, code, at };
                me.changed.notify_all();
                on_exit(pid, code, at);
            });
        if let Err(e) = spawned {
            containerd_shim::error!("cannot watch exec: {e}");
        }
        Ok(pid)
    }

    /// Blocks until the exec has ended; its status and time.
    pub fn wait(&self) -> (u32, i64) {
        let mut phase = self.phase.lock().expect("lock");
        loop {
            if let Phase::Stopped { code, at, .. } = *phase {
                return (code, at);
            }
            phase = self.changed.wait(phase).expect("lock");
        }
    }

    /// Signals the exec's command (the helper's child), or the helper if it has none yet.
    pub fn kill(&self, signal: i32) -> Result<()> {
        let Phase::Running { pid } = self.phase() else {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        };
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let target = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(pid as i32);
        let sig = nix::sys::signal::Signal::try_from(signal)
            .map_err(|_| status(Code::INVALID_ARGUMENT, format!("signal {signal}")))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(target), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(status(Code::INTERNAL, format!("signal the exec: {e}"))),
        }
    }

    /// Sets the window size of the exec's terminal.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<std::io::Result<()>> {
        match &*self.console.lock().expect("lock") {
            Some(console) => Ok(console.resize(cols, rows)),
            None => Err(status(
                Code::FAILED_PRECONDITION,
                "the exec has no terminal",
            )),
        }
    }

    /// Removes the exec's files.
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
