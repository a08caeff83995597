//! The last steps before the container's command runs, shared by the container's init and by
//! ExecSync: capabilities, user and groups, no_new_privs, seccomp, working dir, signals, exec.
// Installing a seccomp filter without forcing no_new_privs and resetting signal dispositions
// need raw syscalls; each unsafe block says why it holds.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::path::Path;

use caps::CapSet;
use nix::unistd::{Gid, Uid};

use crate::container::launch::LaunchSpec;
use crate::container::security::parse_cap;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot set capabilities")]
    Caps(#[source] caps::errors::CapsError),
    #[error("cannot set user {uid}:{gid} and groups {groups:?}")]
    Creds {
        uid: u32,
        gid: u32,
        groups: Vec<u32>,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] nix::errno::Errno),
    #[error("cannot set the parent-death signal")]
    DeathSignal(#[source] nix::errno::Errno),
    #[error("cannot install the seccomp filter")]
    Seccomp(#[source] io::Error),
    #[error("cannot chdir to the working dir {0}")]
    Cwd(String, #[source] nix::errno::Errno),
    #[error("the working dir {0} is outside the container's root")]
    CwdOutside(String),
    #[error("argument or environment contains a NUL byte")]
    Nul,
    #[error("executable {0:?} not found in $PATH")]
    NotFound(String),
    #[error("cannot exec {0:?}")]
    Exec(String, #[source] nix::errno::Errno),
}

/// Installs one BPF program. Unlike `seccompiler::apply_filter` this does not force
/// no_new_privs: with CAP_SYS_ADMIN the kernel accepts a filter without it.
pub fn install_filter(prog: &seccompiler::BpfProgram) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, which lives across the call; seccompiler's
    // `sock_filter` has the kernel's layout (u16, u8, u8, u32, repr C), the same as libc's;
    // the kernel copies the program and keeps no pointer to it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn install_all(filters: &[seccompiler::BpfProgram]) -> Result<(), ExecError> {
    filters
        .iter()
        .try_for_each(install_filter)
        .map_err(ExecError::Seccomp)
}

/// Default dispositions and an empty signal mask, as a fresh process expects: the monitor
/// blocks signals and Rust ignores SIGPIPE, and exec keeps both.
pub fn reset_signals() {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
    for s in Signal::iterator() {
        if matches!(s, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: setting the default disposition installs no handler code; no other thread
        // exists in this process (a fork child of a single-threaded process).
        let _ = unsafe { signal(s, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, ExecError> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| ExecError::Nul))
        .collect()
}

/// The process becomes `argv` as the spec's user, with the spec's capabilities and seccomp.
/// Returns only on failure.
/// With `die_with_parent` it gets SIGKILL when its parent dies (set after the credentials
/// change, which clears it).
pub fn become_command(
    spec: &LaunchSpec,
    argv: &[String],
    env: &[String],
    cwd: &str,
    die_with_parent: bool,
) -> ExecError {
    let prepared = apply(spec, cwd).and_then(|()| {
        if die_with_parent {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(ExecError::DeathSignal)?;
        }
        Ok(())
    });
    // With its credentials set, the process is the container's to see (a window the
    // tests widen to look at what `/proc/<pid>/exe` gives).
    crate::fault::stall("process:exec");
    match prepared.and_then(|()| exec(argv, env)) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn apply(spec: &LaunchSpec, cwd: &str) -> Result<(), ExecError> {
    let filters = match &spec.seccomp {
        Some(profile) => crate::container::seccomp::compile(profile)
            .map_err(|e| ExecError::Seccomp(io::Error::other(e)))?,
        None => Vec::new(),
    };
    let keep: Vec<caps::Capability> = spec.caps.iter().filter_map(|c| parse_cap(c).ok()).collect();
    for c in caps::all() {
        if !keep.contains(&c) {
            caps::drop(None, CapSet::Bounding, c).map_err(ExecError::Caps)?;
        }
    }
    caps::clear(None, CapSet::Inheritable).map_err(ExecError::Caps)?;
    caps::clear(None, CapSet::Ambient).map_err(ExecError::Caps)?;
    if !spec.no_new_privs {
        // Without no_new_privs the filter must go in while we still hold CAP_SYS_ADMIN.
        install_all(&filters)?;
    }
    let u = &spec.user;
    let creds = || -> nix::Result<()> {
        let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups)?;
        nix::unistd::setresgid(
            Gid::from_raw(u.gid),
            Gid::from_raw(u.gid),
            Gid::from_raw(u.gid),
        )?;
        nix::unistd::setresuid(
            Uid::from_raw(u.uid),
            Uid::from_raw(u.uid),
            Uid::from_raw(u.uid),
        )
    };
    creds().map_err(|source| ExecError::Creds {
        uid: u.uid,
        gid: u.gid,
        groups: u.groups.clone(),
        source,
    })?;
    if u.uid == 0 {
        // Root keeps exactly the container's set (the kernel gives it the bounding set at
        // exec; this makes the set exact before exec too).
        let set: caps::CapsHashSet = keep.iter().copied().collect();
        caps::set(None, CapSet::Effective, &set).map_err(ExecError::Caps)?;
        caps::set(None, CapSet::Permitted, &set).map_err(ExecError::Caps)?;
    }
    nix::unistd::chdir(Path::new(cwd)).map_err(|e| ExecError::Cwd(cwd.to_owned(), e))?;
    check_cwd(cwd)?;
    if spec.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(ExecError::NoNewPrivs)?;
        install_all(&filters)?;
    }
    Ok(())
}

/// The working dir just entered must lie below the process's root (the container's): a path
/// through a magic link (`/proc/self/fd/<n>` of a directory fd of the node, the pattern of
/// runc's CVE-2024-21626, or another process's `/proc/<pid>/root`) can land elsewhere, and
/// then the kernel's getcwd answers "(unreachable)…" (glibc turns that into ENOENT) or fails.
fn check_cwd(cwd: &str) -> Result<(), ExecError> {
    use std::os::unix::ffi::OsStrExt;
    match nix::unistd::getcwd() {
        Ok(dir) if dir.as_os_str().as_bytes().starts_with(b"/") => Ok(()),
        _ => Err(ExecError::CwdOutside(cwd.to_owned())),
    }
}

fn exec(argv: &[String], env: &[String]) -> Result<std::convert::Infallible, ExecError> {
    let args = cstrings(argv)?;
    let envs = cstrings(env)?;
    let prog = &argv[0];
    reset_signals();
    if prog.contains('/') {
        let e = nix::unistd::execve(&args[0], &args, &envs).unwrap_err();
        return Err(ExecError::Exec(prog.clone(), e));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut denied = None;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let full = CString::new(format!("{dir}/{prog}")).map_err(|_| ExecError::Nul)?;
        match nix::unistd::execve(&full, &args, &envs).unwrap_err() {
            nix::errno::Errno::EACCES => denied = Some(nix::errno::Errno::EACCES),
            nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => {}
            e => return Err(ExecError::Exec(prog.clone(), e)),
        }
    }
    Err(match denied {
        Some(e) => ExecError::Exec(prog.clone(), e),
        None => ExecError::NotFound(prog.clone()),
    })
}
