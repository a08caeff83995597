//! `peapod enter [--tty] <container dir> <pid> <start time> <command…>`: the exec helper. A fresh
//! single-threaded process (setns into a mount namespace refuses threaded callers) that joins
//! the running container's cgroup and namespaces, forks (a PID namespace takes effect for
//! children), and the child becomes the command under the container's security context. The
//! helper waits and exits with the command's status; if the daemon kills the helper (timeout),
//! the command gets SIGKILL too (parent-death signal).
// fork() needs unsafe; each block says why it holds.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;
use std::process::ExitCode;

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;

use super::{LAUNCH_FILE, init, process};
use crate::container::launch::LaunchSpec;
use crate::sandbox::process::ProcRef;
use crate::store;

/// Exit code of the helper when it could not run the command at all.
pub const CANNOT_ENTER: u8 = 126;

fn fail(msg: &str) -> ExitCode {
    eprintln!("peapod enter: {msg}");
    ExitCode::from(CANNOT_ENTER)
}

pub fn main(dir: &Path, target: ProcRef, argv: &[String], tty: bool) -> ExitCode {
    super::close_inherited_fds();
    let spec: LaunchSpec = match store::read_json(&dir.join(LAUNCH_FILE)) {
        Ok(s) => s,
        Err(e) => return fail(&init::chain(&e)),
    };
    if argv.is_empty() {
        return fail("no command");
    }
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    // Open every namespace first: after joining the mount namespace, /proc is the container's.
    let mut fds = Vec::new();
    for (name, kind) in kinds {
        match File::open(format!("/proc/{}/ns/{name}", target.pid)) {
            Ok(f) => fds.push((name, f, kind)),
            Err(e) => return fail(&format!("cannot open the {name} namespace: {e}")),
        }
    }
    if !target.is_alive() {
        return fail("the container is not running");
    }
    if let Err(e) = init::join_cgroups(&spec) {
        return fail(&init::chain(&e));
    }
    for (name, f, kind) in fds {
        if let Err(e) = nix::sched::setns(f, kind) {
            return fail(&format!("cannot join the {name} namespace: {e}"));
        }
    }
    // SAFETY: this process is single-threaded (no runtime is started for `peapod enter`).
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail(&format!("cannot fork: {e}")),
        Ok(ForkResult::Child) => {
            if tty && let Err(e) = init::controlling_terminal() {
                eprintln!("peapod enter: cannot take the terminal: {e}");
                // SAFETY: as below.
                unsafe { libc::_exit(CANNOT_ENTER as i32) }
            }
            let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
            let e = process::become_command(&spec, argv, &spec.env, cwd, true);
            eprintln!("peapod enter: {}", init::chain(&e));
            let code = match e {
                process::ExecError::NotFound(_)
                | process::ExecError::Exec(_, nix::errno::Errno::ENOENT) => 127,
                _ => CANNOT_ENTER as i32,
            };
            // SAFETY: _exit ends the forked child without running atexit handlers.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return ExitCode::from(code as u8),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return ExitCode::from(128u8.wrapping_add(sig as u8));
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return fail(&format!("cannot wait for the command: {e}")),
            }
        },
    }
}
