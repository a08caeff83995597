//! The container's init, forked from the (single-threaded) monitor. It joins the pod's
//! cgroup and namespaces, makes its own mount (and PID) namespace, and forks the container's
//! process, which builds the rootfs and execs the command. Joining a PID namespace takes
//! effect for children only, hence the fork; the init then exits and the monitor, a child
//! subreaper, inherits the container's process.
//!
//! Both report on the status pipe (close-on-exec): the init writes `pid <n>`, the container's
//! process `error <message>` if it fails before exec. EOF with a pid and no error: it runs.
//! With its rootfs built, the container's process waits for one byte on the `go` pipe before
//! it becomes the command: the monitor sends it once it has recorded the container, and
//! closes the pipe without it if it cannot, so that nothing runs unrecorded.
// fork() needs unsafe; each block says why it holds.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::ForkResult;

use super::process;
use super::rootfs;
use crate::container::launch::{LaunchSpec, PidNs};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot join cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot join namespace {path}")]
    Setns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the container's namespaces")]
    Unshare(#[source] nix::errno::Errno),
    #[error("cannot set sysctl {key}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the hostname")]
    Hostname(#[source] nix::errno::Errno),
    #[error("cannot make the container's terminal")]
    Terminal(#[source] std::io::Error),
    #[error("cannot set up stdio")]
    Stdio(#[source] nix::errno::Errno),
    #[error("cannot fork the container's process")]
    Fork(#[source] nix::errno::Errno),
    #[error("cannot build the rootfs")]
    Rootfs(#[from] rootfs::MountError),
    #[error(transparent)]
    Exec(#[from] process::ExecError),
    #[error("the monitor could not record the container")]
    NotRecorded,
}

/// The pipes the init's process gets as stdio, and the status pipe.
pub struct InitIo {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub status: File,
    /// The read end of the `go` pipe (close-on-exec).
    pub go: File,
    /// With a TTY: where the container's process sends the master of the terminal it makes
    /// (see [`terminal`]).
    pub console: Option<OwnedFd>,
}

fn report(mut status: &File, msg: &str) {
    let _ = status.write_all(msg.as_bytes());
}

pub use crate::errors::chain;

/// Runs in the monitor's fork child; never returns.
pub fn run(spec: &LaunchSpec, io: InitIo) -> ! {
    let code = match start(spec, &io) {
        Ok(()) => 0,
        Err(e) => {
            report(&io.status, &format!("error {}", chain(&e)));
            1
        }
    };
    // SAFETY: _exit ends this forked child without running the parent's atexit handlers or
    // flushing buffers it shares with the monitor.
    unsafe { libc::_exit(code) }
}

fn join(path: &Path, kind: CloneFlags) -> Result<(), InitError> {
    let err = |source| InitError::Setns {
        path: path.to_owned(),
        source,
    };
    let f = File::open(path).map_err(err)?;
    nix::sched::setns(f, kind).map_err(|e| err(e.into()))
}

/// Joins a cgroup in every hierarchy by writing 0 (the writer) into it. On v1 that goes to
/// `tasks`, which moves just the writing thread, the whole of this single-threaded process:
/// the kernel then skips the global threadgroup lock that a `cgroup.procs` write takes, whose
/// first taking waits for an RCU grace period (10-15 ms here, on every start). v2 has only
/// `cgroup.procs`.
pub fn join_cgroups(spec: &LaunchSpec) -> Result<(), InitError> {
    for c in &spec.cgroups {
        let tasks = c.path.join("tasks");
        let procs = if tasks.exists() {
            tasks
        } else {
            c.path.join("cgroup.procs")
        };
        std::fs::write(&procs, "0").map_err(|source| InitError::Cgroup {
            path: procs.clone(),
            source,
        })?;
    }
    Ok(())
}

fn start(spec: &LaunchSpec, io: &InitIo) -> Result<(), InitError> {
    nix::unistd::dup2_stdin(&io.stdin).map_err(InitError::Stdio)?;
    nix::unistd::dup2_stdout(&io.stdout).map_err(InitError::Stdio)?;
    nix::unistd::dup2_stderr(&io.stderr).map_err(InitError::Stdio)?;
    join_cgroups(spec)?;
    if let Some(adj) = spec.oom_score_adj {
        // Best effort: lowering it needs CAP_SYS_RESOURCE, which root may lack.
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    let ns = &spec.namespaces;
    for (pin, kind) in [
        (&ns.ipc, CloneFlags::CLONE_NEWIPC),
        (&ns.uts, CloneFlags::CLONE_NEWUTS),
        (&ns.net, CloneFlags::CLONE_NEWNET),
    ] {
        if let Some(p) = pin {
            join(p, kind)?;
        }
    }
    let mut flags = CloneFlags::CLONE_NEWNS;
    match &ns.pid {
        PidNs::Join(p) => join(p, CloneFlags::CLONE_NEWPID)?,
        PidNs::Own => flags |= CloneFlags::CLONE_NEWPID,
        PidNs::Node => {}
    }
    for (new, kind) in [
        (ns.new.net, CloneFlags::CLONE_NEWNET),
        (ns.new.ipc, CloneFlags::CLONE_NEWIPC),
        (ns.new.uts, CloneFlags::CLONE_NEWUTS),
        (ns.new.cgroup, CloneFlags::CLONE_NEWCGROUP),
    ] {
        if new {
            flags |= kind;
        }
    }
    nix::sched::unshare(flags).map_err(InitError::Unshare)?;
    if let Some(name) = &spec.hostname {
        nix::unistd::sethostname(name).map_err(InitError::Hostname)?;
    }
    // /proc/sys/{net,kernel} answer for the writer's namespaces, which are the container's
    // now (its PID namespace, if new, is its child's: no sysctl is per PID namespace).
    for (key, value) in &spec.sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|source| InitError::Sysctl {
            key: key.clone(),
            source,
        })?;
    }
    // SAFETY: this process has a single thread (a fork child of the single-threaded
    // monitor), so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(InitError::Fork)? {
        ForkResult::Parent { child } => {
            report(&io.status, &format!("pid {}\n", child.as_raw()));
            Ok(())
        }
        ForkResult::Child => {
            let e = container_process(spec, &io.go, io.console.as_ref());
            report(&io.status, &format!("error {}", chain(&e)));
            // SAFETY: as in `run`.
            unsafe { libc::_exit(127) }
        }
    }
}

/// The container's process: rootfs, the monitor's go, then the command. Returns only on
/// failure.
fn container_process(spec: &LaunchSpec, mut go: &File, console: Option<&OwnedFd>) -> InitError {
    // Our own status and go fds must not leak into the container: they are close-on-exec.
    if let Err(e) = rootfs::setup(spec) {
        return e.into();
    }
    if let Some(console) = console
        && let Err(e) = terminal(spec, console)
    {
        return InitError::Terminal(e);
    }
    let mut byte = [0u8; 1];
    if !matches!(std::io::Read::read(&mut go, &mut byte), Ok(1)) {
        return InitError::NotRecorded;
    }
    if spec.stdio.tty
        && let Err(e) = controlling_terminal()
    {
        return InitError::Stdio(e);
    }
    super::cloexec_above_stderr();
    process::become_command(spec, &spec.argv, &spec.env, &spec.cwd, false).into()
}

/// The container's terminal, made in its own devpts instance (its rootfs is in place: `/` is
/// the container's), so that its processes find it as `/dev/pts/0`, owned by the container's
/// user: the slave becomes stdin, stdout and stderr, the master goes to the monitor on
/// `console` (SCM_RIGHTS) and is closed here.
fn terminal(spec: &LaunchSpec, console: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    let (master, slave) = crate::streaming::pty::open_pair(Path::new("/"))?;
    nix::unistd::fchown(
        &slave,
        Some(nix::unistd::Uid::from_raw(spec.user.uid)),
        Some(nix::unistd::Gid::from_raw(spec.user.gid)),
    )?;
    let fds = [master.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"t")];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    nix::sys::socket::sendmsg::<()>(
        console.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )?;
    drop(master);
    nix::unistd::dup2_stdin(slave.as_fd())?;
    nix::unistd::dup2_stdout(slave.as_fd())?;
    nix::unistd::dup2_stderr(slave.as_fd())?;
    Ok(())
}

/// With a TTY the command leads its own session, the terminal on its stdin as its
/// controlling terminal (job control, ^C, SIGWINCH).
pub fn controlling_terminal() -> nix::Result<()> {
    nix::unistd::setsid()?;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal the terminal from another
    // session) and reads no memory of ours.
    let r = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    nix::errno::Errno::result(r).map(drop)
}
