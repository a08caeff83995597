//! `peapod monitor <container dir>`: the per-container parent process. No tokio, one thread,
//! std + poll. Started by the daemon, it forks once more and the first process exits, so the
//! monitor is no child of the daemon; it makes its own session, becomes a child subreaper,
//! forks the container's init (see `init`), and tells the daemon on its stdout (one JSON line,
//! then EOF) whether the container runs. Then it holds the container's stdout and stderr,
//! writes them to the CRI log, answers `reopen` on its control socket, and when the container
//! ends drains the pipes and writes `exit.json` atomically. It outlives the daemon.
//!
//! Its stdin is the container's dir, opened and locked by the daemon (flock): the monitor
//! keeps it open, never reads it, and the container's init replaces it with /dev/null. The
//! lock is released only when the last monitor process ends, so a daemon restarted after a
//! crash in the middle of a start knows whether a monitor is still on its way.
// fork() needs unsafe; each block says why it holds.
#![allow(unsafe_code)]

pub mod attach;
pub mod enter;
pub mod fifo;
pub mod init;
pub mod log;
mod oom;
pub mod process;
pub mod rootfs;
pub mod sealed;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::container::launch::LaunchSpec;
use crate::container::model::{ExitRecord, Running};
use crate::sandbox::process::ProcRef;
use crate::store;
use log::{Framer, LogFile, Stream, now_nanos, rfc3339_nano};

/// The binary that runs the per-container processes: `peapod-monitor` beside `exe` (it carries
/// only this module's code, so a monitor that lives as long as its container touches a few
/// pages of it), else `exe` itself, which answers the same subcommands.
pub fn binary_beside(exe: &Path) -> PathBuf {
    exe.canonicalize()
        .ok()
        .and_then(|real| Some(real.parent()?.join(MONITOR_BINARY)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| exe.to_owned())
}

/// The small binary of [`internal`]'s subcommands (`src/bin/peapod-monitor.rs`).
pub const MONITOR_BINARY: &str = "peapod-monitor";

/// The per-container subcommands, dispatched before any argument parsing so that the
/// long-lived monitor stays lean: `monitor <container dir>` and
/// `enter [--tty] <container dir> <pid> <start time> <command…>`. `None`: not one of them.
/// Both `peapod` and `peapod-monitor` answer them.
pub fn internal(args: &[std::ffi::OsString]) -> Option<ExitCode> {
    let sub = args.get(1)?.to_str()?;
    if matches!(sub, "monitor" | "enter") {
        name_after_argv0(args);
    }
    match (sub, args.get(2)) {
        ("monitor", Some(dir)) => {
            let join: Vec<PathBuf> = args[3..].iter().map(PathBuf::from).collect();
            Some(main(Path::new(dir), &join))
        }
        ("enter", Some(_)) => {
            let tty = args[2] == "--tty";
            let at = if tty { 3 } else { 2 };
            let num = |i: usize| args.get(i)?.to_str()?.parse::<u64>().ok();
            let (Some(dir), Some(pid), Some(start_time)) = (args.get(at), num(at + 1), num(at + 2))
            else {
                eprintln!("usage: peapod enter [--tty] DIR PID START_TIME COMMAND...");
                return Some(ExitCode::from(2));
            };
            let target = crate::sandbox::process::ProcRef {
                pid: pid as i32,
                start_time,
            };
            let argv: Vec<String> = args[at + 3..]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            Some(enter::main(Path::new(dir), target, &argv, tty))
        }
        _ => None,
    }
}

/// Run from a sealed copy (see [`sealed`]), the process is named after the fd it was exec'd
/// through: give it argv[0]'s file name again, the name `ps` and `pgrep` know.
fn name_after_argv0(args: &[std::ffi::OsString]) {
    use std::os::unix::ffi::OsStrExt;
    let name = args.first().and_then(|a| Path::new(a).file_name());
    if let Some(Ok(name)) = name.map(|n| std::ffi::CString::new(n.as_bytes())) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// How long the monitor keeps reading the pipes after the container's process exited (other
/// processes may still hold them).
const DRAIN: Duration = Duration::from_secs(2);

/// The monitor's one line to the daemon.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Running(Running),
    Failed {
        message: String,
    },
    /// `monitor.json` could not be written (`errno`, when there is one): the container's
    /// process was killed before it ran the command, and nothing was recorded. For the
    /// daemon the start did not happen.
    NotRecorded {
        path: PathBuf,
        errno: Option<i32>,
        message: String,
    },
}

/// How a monitor's start fails.
enum StartFailure {
    /// The container did not start; recorded in `exit.json` as a start error.
    Failed(io::Error),
    /// Nothing could be recorded; see [`Reply::NotRecorded`].
    NotRecorded(store::StoreError),
}

impl From<io::Error> for StartFailure {
    fn from(e: io::Error) -> StartFailure {
        StartFailure::Failed(e)
    }
}

impl From<nix::errno::Errno> for StartFailure {
    fn from(e: nix::errno::Errno) -> StartFailure {
        StartFailure::Failed(e.into())
    }
}

pub const LAUNCH_FILE: &str = "launch.json";
pub const EXIT_FILE: &str = "exit.json";
pub const MONITOR_FILE: &str = "monitor.json";
/// The monitor's own stderr once it has answered the daemon.
pub const MONITOR_LOG: &str = "monitor.log";

fn reply(r: &Reply) {
    let mut line = serde_json::to_vec(r).expect("serializes");
    line.push(b'\n');
    let _ = io::stdout().write_all(&line);
    let _ = io::stdout().flush();
}

/// Closes every fd above stderr that this process inherited: whatever its parent left open
/// without close-on-exec (any launcher can leak one, a containerd shim's crate does) must not
/// reach a container, where a directory fd is a way out of its root (`/proc/self/fd/<n>` as
/// the working dir: the pattern of runc's CVE-2024-21626). Called first thing by `peapod
/// serve`, `monitor`, `enter` and the containerd shim, where nothing of their own is open
/// above 2 yet: none of them is given fds to keep (`peapod serve` binds its own sockets, no
/// socket activation).
pub fn close_inherited_fds() {
    // SAFETY: close_range only closes fds; nothing of this process owns one above 2 yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        return;
    }
    // Kernels before 5.9: the fds /proc lists, minus the one the listing itself holds (gone
    // once the listing is dropped, so closing it then is a harmless EBADF).
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in open {
        // SAFETY: as above: no fd above 2 belongs to anything of ours.
        unsafe {
            libc::close(fd);
        }
    }
}

/// Marks every fd above stderr close-on-exec: the container's process, right before it
/// becomes the command, keeps nothing a parent left open.
pub fn cloexec_above_stderr() {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
    }
}

/// Entry point of `peapod monitor DIR [JOIN...]`: JOIN are cgroup files (`tasks`,
/// `cgroup.procs`) to write 0 into first, to leave the daemon's cgroup for the pod's.
pub fn main(dir: &Path, join: &[PathBuf]) -> ExitCode {
    close_inherited_fds();
    for file in join {
        if let Err(e) = std::fs::write(file, "0") {
            reply(&Reply::Failed {
                message: format!("cannot join the monitors' cgroup ({}): {e}", file.display()),
            });
            return ExitCode::FAILURE;
        }
    }
    let spec: LaunchSpec = match store::read_json(&dir.join(LAUNCH_FILE)) {
        Ok(s) => s,
        Err(e) => {
            reply(&Reply::Failed {
                message: init::chain(&e),
            });
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: `peapod monitor` is single-threaded (no runtime is started for it), so the
    // child may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { .. }) => return ExitCode::SUCCESS,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            reply(&Reply::Failed {
                message: format!("cannot fork the monitor: {e}"),
            });
            return ExitCode::FAILURE;
        }
    }
    match Monitor::start(dir, &spec) {
        Ok(m) => m.run(dir, &spec),
        Err(StartFailure::Failed(e)) => {
            let message = init::chain(&e);
            let _ = record_exit(dir, None, false, Some(message.clone()));
            reply(&Reply::Failed { message });
            ExitCode::FAILURE
        }
        Err(StartFailure::NotRecorded(e)) => {
            let (path, errno) = match &e {
                store::StoreError::Write { path, source } => (path.clone(), source.raw_os_error()),
                _ => (dir.join(MONITOR_FILE), None),
            };
            reply(&Reply::NotRecorded {
                path,
                errno,
                message: init::chain(&e),
            });
            ExitCode::FAILURE
        }
    }
}

struct Monitor {
    init: Pid,
    sigfd: SignalFd,
    out: Option<File>,
    err: Option<File>,
    listener: UnixListener,
    hub: attach::Hub,
    log: LogFile,
    oom: oom::OomWatch,
}

/// The container's stdio: its ends for the init, ours for the monitor.
struct Stdio {
    init_in: OwnedFd,
    init_out: OwnedFd,
    init_err: OwnedFd,
    out: Option<File>,
    err: Option<File>,
    /// Where attachers' input goes: the stdin pipe, or the pty master.
    stdin: Option<File>,
    pty: Option<File>,
    /// With a TTY: the socket pair on which the master comes (ours, the init's).
    console: Option<(OwnedFd, OwnedFd)>,
}

fn stdio(spec: &LaunchSpec) -> io::Result<Stdio> {
    if let Some(fifos) = &spec.fifos {
        return Ok(Stdio {
            init_in: fifo::open(fifos.stdin.as_deref(), fifo::Dir::Read)?,
            init_out: fifo::open(fifos.stdout.as_deref(), fifo::Dir::Write)?,
            init_err: fifo::open(fifos.stderr.as_deref(), fifo::Dir::Write)?,
            out: None,
            err: None,
            stdin: None,
            pty: None,
            console: None,
        });
    }
    if spec.stdio.tty {
        // One terminal for the three, made by the container's process in its own devpts
        // instance (so that it is its `/dev/pts/0`); it sends us the master on `console`.
        // Until then, its stdio is /dev/null.
        let (ours, theirs) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )?;
        let null = || -> io::Result<OwnedFd> { Ok(File::open("/dev/null")?.into()) };
        return Ok(Stdio {
            init_in: null()?,
            init_out: null()?,
            init_err: null()?,
            out: None,
            err: None,
            stdin: None,
            pty: None,
            console: Some((ours, theirs)),
        });
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (init_in, stdin) = if spec.stdio.stdin {
        let (r, w) = pipe()?;
        (OwnedFd::from(r), Some(File::from(w)))
    } else {
        (File::open("/dev/null")?.into(), None)
    };
    Ok(Stdio {
        init_in,
        init_out: out_w,
        init_err: err_w,
        out: Some(out_r),
        err: Some(err_r),
        stdin,
        pty: None,
        console: None,
    })
}

/// What the init and the container's process say on the status pipe: `pid <n>\n` from the
/// init once it forked the process, `error <message>` from either if it fails; EOF once both
/// are gone or exec'd.
struct Status {
    pipe: File,
    text: String,
}

impl Status {
    fn new(pipe: File) -> Status {
        Status {
            pipe,
            text: String::new(),
        }
    }

    /// Reads until the pid is known, an error is said, or EOF; the pid if it is known with
    /// no error.
    fn pid(&mut self) -> io::Result<Option<i32>> {
        let mut buf = [0u8; 512];
        loop {
            if self.text.contains("error ") {
                self.finish()?;
                return Ok(None);
            }
            let complete = &self.text[..self.text.rfind('\n').map_or(0, |i| i + 1)];
            let pid = complete
                .lines()
                .find_map(|l| l.strip_prefix("pid ")?.parse::<i32>().ok());
            if pid.is_some() {
                return Ok(pid);
            }
            match self.pipe.read(&mut buf)? {
                0 => return Ok(None),
                n => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    }

    /// Reads to EOF.
    fn finish(&mut self) -> io::Result<()> {
        let mut rest = String::new();
        self.pipe.read_to_string(&mut rest)?;
        self.text.push_str(&rest);
        Ok(())
    }

    /// The error said, if any.
    fn error(&self) -> Option<String> {
        let i = self.text.find("error ")?;
        Some(self.text[i + 6..].trim().to_owned())
    }
}

/// One fd sent with SCM_RIGHTS on `sock`; `None` at EOF (every sender gone).
fn receive_fd(sock: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let msg = loop {
        match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            socket::MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r?,
        }
    };
    for c in msg.cmsgs()? {
        if let socket::ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed `fd` in our table for this message; nobody
            // else owns it.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(None)
}

fn pipe() -> io::Result<(File, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((File::from(r), w))
}

impl Monitor {
    fn start(dir: &Path, spec: &LaunchSpec) -> Result<Monitor, StartFailure> {
        nix::unistd::setsid()?;
        nix::sys::prctl::set_child_subreaper(true)?;
        std::env::set_current_dir("/")?;
        // Before the init joins the cgroup: nothing of the container runs unrestricted.
        crate::container::devices::apply(&spec.cgroups, &spec.device_rules())
            .map_err(|e| io::Error::other(crate::errors::chain(&e)))?;
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        mask.thread_block()?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        let log = LogFile::open(spec.log_path.clone(), spec.log_dir.clone())?;
        let sock = &spec.control_socket;
        if let Some(parent) = sock.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(sock);
        let listener = UnixListener::bind(sock)?;
        listener.set_nonblocking(true)?;
        let mut io_ends = stdio(spec)?;
        let gone = |sock: &Path| {
            let _ = std::fs::remove_file(sock);
            let _ = std::fs::remove_file(attach::socket_path(sock));
        };
        let (console, init_console) = io_ends.console.take().unzip();
        let (status_r, status_w) = pipe()?;
        let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let io = init::InitIo {
            stdin: io_ends.init_in,
            stdout: io_ends.init_out,
            stderr: io_ends.init_err,
            status: File::from(status_w),
            go: File::from(go_r),
            console: init_console,
        };
        // SAFETY: single-threaded, as in `main`.
        match unsafe { nix::unistd::fork() }? {
            ForkResult::Child => {
                // The container's process must see EOF on `go` once we are gone.
                drop(go_w);
                init::run(spec, io)
            }
            ForkResult::Parent { .. } => drop(io),
        }
        let mut status = Status::new(status_r);
        // Its pid, while the process builds the rootfs (or an error, or EOF).
        let init = match status.pid()? {
            Some(pid) => pid,
            None => {
                let e = status
                    .error()
                    .unwrap_or_else(|| "the init reported no pid".into());
                reap_all();
                gone(sock);
                return Err(io::Error::other(e).into());
            }
        };
        // A start that fails from here on: the container's process goes before it runs the
        // command (it waits for `go`, which closes with `go_w`).
        let abandon = |go_w: OwnedFd| {
            let _ = nix::sys::signal::kill(Pid::from_raw(init), Signal::SIGKILL);
            drop(go_w);
            reap_all();
            gone(sock);
        };
        // With a TTY, the terminal the process made once its rootfs was there (or, if it
        // failed first, EOF: the error is on the status pipe).
        if let Some(console) = console {
            match receive_fd(&console) {
                Ok(Some(master)) => {
                    let master = File::from(master);
                    io_ends.out = Some(master.try_clone()?);
                    if spec.stdio.stdin {
                        io_ends.stdin = Some(master.try_clone()?);
                    }
                    io_ends.pty = Some(master);
                }
                r => {
                    abandon(go_w);
                    status.finish()?;
                    let e = match r {
                        Err(e) => format!("cannot receive the container's terminal: {e}"),
                        Ok(_) => status
                            .error()
                            .unwrap_or_else(|| "the container's process sent no terminal".into()),
                    };
                    return Err(io::Error::other(e).into());
                }
            }
        }
        let hub = match attach::Hub::new(
            attach::socket_path(sock),
            io_ends.stdin,
            spec.stdio.stdin_once,
            io_ends.pty,
        ) {
            Ok(h) => h,
            Err(e) => {
                abandon(go_w);
                return Err(e.into());
            }
        };
        // The container runs and nothing says so yet: a daemon that crashed after it spawned
        // us must wait for this report (the monitor lock tells it to).
        crate::fault::stall("monitor:report");
        let running = Running {
            monitor: ProcRef::of(std::process::id() as i32)?,
            init: ProcRef::of(init)?,
            started_at: now_nanos(),
        };
        if let Err(e) = store::write_json(&dir.join(MONITOR_FILE), &running) {
            // Unrecorded, the container would run with no one to stop it.
            abandon(go_w);
            return Err(StartFailure::NotRecorded(e));
        }
        // Go: the process may exec the command now (it may have failed already: EPIPE).
        let _ = File::from(go_w).write_all(b"g");
        status.finish()?;
        if let Some(e) = status.error() {
            reap_all();
            gone(sock);
            return Err(io::Error::other(e).into());
        }
        reply(&Reply::Running(running));
        // EOF for the daemon: nothing else holds our stdout.
        nix::unistd::dup2_stdout(File::options().write(true).open("/dev/null")?)?;
        // And our stderr, the daemon's until now, becomes our own log: we outlive the daemon.
        // Made here, after the answer, so that a start does not wait for a file creation.
        let own_log = File::options()
            .create(true)
            .append(true)
            .open(dir.join(MONITOR_LOG))
            .or_else(|_| File::options().write(true).open("/dev/null"))?;
        nix::unistd::dup2_stderr(own_log)?;
        shed_file_pages();
        Ok(Monitor {
            init: Pid::from_raw(init),
            sigfd,
            out: io_ends.out,
            err: io_ends.err,
            listener,
            hub,
            log,
            oom: oom::OomWatch::new(spec),
        })
    }

    fn run(mut self, dir: &Path, spec: &LaunchSpec) -> ExitCode {
        let mut framers = [Framer::new(Stream::Stdout), Framer::new(Stream::Stderr)];
        let mut buf = vec![0u8; 32 * 1024];
        let mut records = Vec::with_capacity(64 * 1024);
        let mut exit: Option<(i32, Option<i32>)> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            if exit.is_some() && (self.out.is_none() && self.err.is_none()) {
                break;
            }
            let timeout = match deadline {
                Some(d) if Instant::now() >= d => break,
                Some(d) => PollTimeout::try_from(d - Instant::now()).unwrap_or(PollTimeout::ZERO),
                None => PollTimeout::NONE,
            };
            let (ready_out, ready_err, ready_sig, ready_ctl, ready_hub, ready_oom) = {
                let mut fds = vec![
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                let pipes = [&self.out, &self.err];
                for p in pipes.iter().copied().flatten() {
                    fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                }
                let hub_at = fds.len();
                for (fd, flags) in self.hub.poll_fds() {
                    fds.push(PollFd::new(fd, flags));
                }
                let oom_at = fds.len();
                if let Some(fd) = self.oom.fd() {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Err(nix::errno::Errno::EINTR) | Ok(0) => continue,
                    Err(_) => break,
                    Ok(_) => {}
                }
                let hit = |i: usize| {
                    fds.get(i)
                        .and_then(|f| f.revents())
                        .is_some_and(|r| !r.is_empty())
                };
                let mut next = 2;
                let mut pipe_hit = [false; 2];
                for (slot, p) in pipes.iter().enumerate() {
                    if p.is_some() {
                        pipe_hit[slot] = hit(next);
                        next += 1;
                    }
                }
                let hub: Vec<PollFlags> = fds[hub_at..oom_at]
                    .iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect();
                let oom = fds.len() > oom_at && hit(oom_at);
                (pipe_hit[0], pipe_hit[1], hit(0), hit(1), hub, oom)
            };
            if ready_oom {
                self.oom.changed(spec);
            }
            let now = rfc3339_nano(now_nanos());
            for (slot, ready) in [(0, ready_out), (1, ready_err)] {
                if !ready {
                    continue;
                }
                let pipe = if slot == 0 {
                    &mut self.out
                } else {
                    &mut self.err
                };
                let Some(f) = pipe else { continue };
                match f.read(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // EIO: a pty whose every slave end is closed.
                    Ok(0) | Err(_) => {
                        framers[slot].finish(&now, &mut records);
                        *pipe = None;
                    }
                    Ok(n) => {
                        framers[slot].feed(&buf[..n], &now, &mut records);
                        let kind = [attach::STDOUT, attach::STDERR][slot];
                        self.hub.broadcast(kind, &buf[..n]);
                    }
                }
            }
            self.hub.handle(&ready_hub);
            self.log.write(&records);
            records.clear();
            if ready_sig {
                while let Ok(Some(_)) = self.sigfd.read_signal() {}
                if let Some(e) = reap(self.init) {
                    exit = Some(e);
                    deadline = Some(Instant::now() + DRAIN);
                }
            }
            if ready_ctl {
                self.control();
            }
        }
        let now = rfc3339_nano(now_nanos());
        for f in &mut framers {
            f.finish(&now, &mut records);
        }
        self.log.write(&records);
        let oom = self.oom.killed(spec);
        let _ = record_exit(dir, exit, oom, None);
        let _ = std::fs::remove_file(&spec.control_socket);
        self.hub.finish(exit.map_or(255, |e| e.0));
        ExitCode::SUCCESS
    }

    /// One request on the control socket: `reopen` → `ok` or `error <why>`.
    fn control(&mut self) {
        let Ok((mut conn, _)) = self.listener.accept() else {
            return;
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut req = [0u8; 64];
        let n = conn.read(&mut req).unwrap_or(0);
        let answer = match std::str::from_utf8(&req[..n]).map(str::trim) {
            Ok("reopen") => match self.log.reopen() {
                Ok(()) => "ok\n".to_owned(),
                Err(e) => format!("error {e}\n"),
            },
            _ => "error unknown request\n".to_owned(),
        };
        let _ = conn.write_all(answer.as_bytes());
    }
}

/// Unmaps the file pages start-up touched (the containerd shim does it too, when idle; see
/// its `idle.rs`). The monitor lives as long as its container, but
/// its steady state (poll, read, frame, write) runs a small part of the binary: after this
/// only the pages the loop uses fault back in. Those pages belong to the page cache (shared
/// with the daemon and every other monitor), so nothing is lost but their mapping here.
/// Only read-only file mappings without a single private (copied) page are dropped: relocated
/// data is a private copy, and dropping it would bring back the file's unrelocated bytes.
pub fn shed_file_pages() {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut current: Option<(usize, usize, bool)> = None;
    let shed = |m: Option<(usize, usize, bool)>| {
        if let Some((start, end, true)) = m {
            // SAFETY: a read-only, file-backed private mapping of ours with no private page
            // (Anonymous: 0): MADV_DONTNEED only drops its page-table entries, and every page
            // touched later faults in again, unchanged, from the page cache.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            shed(current.take());
            let perms = f.next().unwrap_or("");
            let file = f.nth(3).is_some_and(|p| p.starts_with('/'));
            current = Some((start, end, file && !perms.contains('w')));
        } else if first == "Anonymous:"
            && f.next() != Some("0")
            && let Some(m) = current.as_mut()
        {
            m.2 = false;
        }
    }
    shed(current);
}

/// Reaps every exited child; returns the container's (exit code, signal) if it was one.
fn reap(init: Pid) -> Option<(i32, Option<i32>)> {
    let mut out = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => out = Some((code, None)),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == init => {
                out = Some((128 + sig as i32, Some(sig as i32)))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(_) => {}
        }
    }
}

fn reap_all() {
    while waitpid(None, None).is_ok() {}
}

fn record_exit(
    dir: &Path,
    exit: Option<(i32, Option<i32>)>,
    oom_killed: bool,
    start_error: Option<String>,
) -> Result<(), store::StoreError> {
    let (exit_code, signal) = match (exit, &start_error) {
        (Some(e), _) => e,
        (None, Some(_)) => (128, None),
        // The monitor lost track of its container (should not happen).
        (None, None) => (255, None),
    };
    store::write_json(
        &dir.join(EXIT_FILE),
        &ExitRecord {
            exit_code,
            signal,
            finished_at: now_nanos(),
            oom_killed,
            start_error,
            lost: None,
        },
    )
}
