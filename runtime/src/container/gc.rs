//! Reconcile for containers: what carries a container's or a pod's name in the kernel and on
//! disk but belongs to no record. The daemon collects it at start-up, before the pods'
//! garbage (a stray container keeps its pod's cgroup busy); `peapod gc` does the same offline.
//!
//! How each kind is known to be ours:
//! - a monitor: a process whose command line is exactly `<exe> monitor <state>/containers/<id>`
//!   (only peapod runs that), found alive by pid + start time and signalled through a pidfd;
//!   its children (the container's process, reparented to it) are taken the same way;
//! - a container cgroup: a leaf named by a container id below a pod cgroup. Below a recorded
//!   pod's cgroup it is ours, and its processes are killed; below a stray pod cgroup (one the
//!   pods' reconcile will collect) it is only removed when empty: under a shared parent such a
//!   cgroup could be another runtime's, and our own containers there went with their monitors;
//! - a monitor socket `<run>/mon/<id>.sock`, a pod's `/dev/shm` `<run>/shm/<pod id>`, a mount
//!   or a dir below `<state>/containers/<id>`: named by an id;
//! - a half-written file: a store temp file (`.<name>.tmp`) in a container dir that nothing is
//!   writing (the daemon is not serving yet; the monitor, which writes `monitor.json` and
//!   `exit.json`, is gone).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::ContainerError;
use crate::config::Config;
use crate::monitor::{EXIT_FILE, MONITOR_FILE};
use crate::sandbox::cgroup::{CgroupRecord, Cgroups};
use crate::sandbox::is_sandbox_id as is_id;
use crate::sandbox::process::{ProcRef, pidfd_signal, reap, wait_exit_blocking};
use crate::store;

/// How long a killed monitor may take to go.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// One thing to collect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Garbage {
    Monitor {
        container: String,
        monitor: ProcRef,
    },
    /// `kill`: its processes are ours to kill (it is below a recorded pod).
    Cgroup {
        rec: CgroupRecord,
        kill: bool,
    },
    Mount(PathBuf),
    Socket(PathBuf),
    Shm(PathBuf),
    Dir(PathBuf),
    TempFile(PathBuf),
}

impl fmt::Display for Garbage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Garbage::Monitor { container, monitor } => write!(
                f,
                "monitor process {} of container {container} (and its container's processes)",
                monitor.pid
            ),
            Garbage::Cgroup { rec, .. } => write!(f, "container cgroup {}", rec.rel.display()),
            Garbage::Mount(p) => write!(f, "mount {}", p.display()),
            Garbage::Socket(p) => write!(f, "monitor socket {}", p.display()),
            Garbage::Shm(p) => write!(f, "pod shm {}", p.display()),
            Garbage::Dir(p) => write!(
                f,
                "container dir {} (no record of it or of its pod)",
                p.display()
            ),
            Garbage::TempFile(p) => write!(f, "half-written file {}", p.display()),
        }
    }
}

/// What the records say exists.
pub struct Known<'a> {
    /// Containers with a valid record whose pod has one too.
    pub containers: &'a HashSet<String>,
    /// Pods with a record.
    pub pods: &'a HashSet<String>,
    /// The cgroups of recorded pods: container cgroups live below them.
    pub pod_cgroups: &'a [CgroupRecord],
    /// Pod cgroups without a record, which the pods' reconcile collects after this.
    pub stray_pod_cgroups: &'a [CgroupRecord],
}

fn containers_dir(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("containers")
}

/// Every live `peapod monitor` serving a dir in `containers`, with the container id.
fn monitors(containers: &Path) -> Vec<(String, ProcRef)> {
    let ours = std::fs::canonicalize(containers).unwrap_or_else(|_| containers.to_owned());
    crate::store::dir_names(Path::new("/proc"))
        .into_iter()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            // argv[0], "monitor", the dir, the cgroup files it joined (see `spawn_monitor`),
            // and the empty string after the final NUL.
            let [_, b"monitor", dir, rest @ ..] = args.as_slice() else {
                return None;
            };
            let joined = rest.strip_suffix(&[b"".as_slice()]).unwrap_or(rest);
            joined.iter().all(|f| is_join_file(f)).then_some(())?;
            let dir = Path::new(std::str::from_utf8(dir).ok()?);
            let id = dir.file_name()?.to_str()?.to_owned();
            let parent = dir.parent()?;
            let same =
                parent == containers || std::fs::canonicalize(parent).is_ok_and(|p| p == ours);
            (same && is_id(&id)).then_some(())?;
            let p = ProcRef::of(pid).ok()?;
            p.is_alive().then_some((id, p))
        })
        .collect()
}

/// A cgroup file a monitor writes itself into: `tasks` or `cgroup.procs` under
/// `/sys/fs/cgroup`.
fn is_join_file(f: &[u8]) -> bool {
    f.starts_with(b"/sys/fs/cgroup/")
        && (f.ends_with(b"/tasks") || f.ends_with(b"/cgroup.procs"))
        && !f.windows(3).any(|w| w == b"/..")
}

/// Mount points below `dir` (from our mount namespace's mountinfo), deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// Everything of containers' that no record in `known` owns. Monitors come first (they hold
/// cgroups and sockets), mounts before the dirs they are in.
pub fn find(cfg: &Config, cgroups: &Cgroups, known: &Known<'_>) -> Vec<Garbage> {
    let is_known = |id: &str| known.containers.contains(id);
    let dir = containers_dir(cfg);
    let mut found = Vec::new();
    let live = monitors(&dir);
    for (container, monitor) in &live {
        if !is_known(container) {
            found.push(Garbage::Monitor {
                container: container.clone(),
                monitor: *monitor,
            });
        }
    }
    let mut cgs: Vec<(CgroupRecord, bool)> = Vec::new();
    let pods = known.pod_cgroups.iter().map(|p| (p, true));
    for (pod, kill) in pods.chain(known.stray_pod_cgroups.iter().map(|p| (p, false))) {
        for path in cgroups.paths(&pod.rel) {
            for name in crate::store::dir_names(&path) {
                let rec = CgroupRecord {
                    rel: pod.rel.join(&name),
                };
                if is_id(&name)
                    && !is_known(&name)
                    && path.join(&name).is_dir()
                    && !cgs.iter().any(|(r, _)| *r == rec)
                {
                    cgs.push((rec, kill));
                }
            }
        }
    }
    // The systemd driver: containers' scopes are beside their pods', in the pods' slices.
    for rec in cgroups.orphan_container_scopes(&is_known) {
        if !cgs.iter().any(|(r, _)| *r == rec) {
            cgs.push((rec, true));
        }
    }
    found.extend(
        cgs.into_iter()
            .map(|(rec, kill)| Garbage::Cgroup { rec, kill }),
    );
    for name in crate::store::dir_names(&cfg.run_dir.join("mon")) {
        if let Some(id) = name
            .strip_suffix(".sock")
            .or_else(|| name.strip_suffix(".attach"))
            && is_id(id)
            && !is_known(id)
        {
            found.push(Garbage::Socket(cfg.run_dir.join("mon").join(&name)));
        }
    }
    for pod in crate::store::dir_names(&cfg.run_dir.join("shm")) {
        if is_id(&pod) && !known.pods.contains(&pod) {
            found.push(Garbage::Shm(cfg.run_dir.join("shm").join(&pod)));
        }
    }
    let served: HashSet<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
    for id in crate::store::dir_names(&dir)
        .into_iter()
        .filter(|n| is_id(n))
    {
        let path = dir.join(&id);
        if !is_known(&id) {
            found.extend(mounts_below(&path).into_iter().map(Garbage::Mount));
            found.push(Garbage::Dir(path));
            continue;
        }
        for name in crate::store::dir_names(&path) {
            let Some(target) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
                continue;
            };
            // The monitor's own files, while it may still be writing them.
            if served.contains(id.as_str()) && (target == MONITOR_FILE || target == EXIT_FILE) {
                continue;
            }
            found.push(Garbage::TempFile(path.join(&name)));
        }
    }
    found
}

/// Kills every process in the cgroup dirs (`cgroup.kill` on v2): only a container's processes
/// live there.
pub fn kill_all_in(dirs: &[PathBuf]) {
    for dir in dirs {
        if let Err(e) = crate::sandbox::cgroup::kill_all(dir) {
            tracing::warn!(cgroup = %dir.display(), error = %e.chain(), "cannot kill what is left in a cgroup");
        }
    }
}

/// The live children of `pid`, each as it is now.
fn children_of(pid: i32) -> Vec<ProcRef> {
    crate::store::dir_names(Path::new("/proc"))
        .into_iter()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:"))
                    .is_some_and(|p| p.trim() == pid.to_string())
            })
        })
        .filter_map(|child| ProcRef::of(child).ok())
        .collect()
}

/// SIGKILL to the monitor first (so that it writes nothing more), then to the processes it
/// parented (the container's), each through a pidfd checked against its start time.
fn kill_monitor(monitor: &ProcRef) -> std::io::Result<()> {
    let Some(fd) = monitor.pidfd()? else {
        return Ok(());
    };
    let children = children_of(monitor.pid);
    pidfd_signal(&fd, libc::SIGKILL)?;
    if !wait_exit_blocking(&fd, KILL_WAIT)? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("monitor {} did not exit after SIGKILL", monitor.pid),
        ));
    }
    reap(monitor.pid);
    for child in children {
        if let Some(fd) = child.pidfd()? {
            pidfd_signal(&fd, libc::SIGKILL)?;
        }
    }
    Ok(())
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError {
    ContainerError::io(what, path.to_owned())
}

/// Removes one piece of garbage; already gone is success.
pub fn collect(cgroups: &Cgroups, g: &Garbage) -> Result<(), ContainerError> {
    let not_found = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    match g {
        Garbage::Monitor { container, monitor } => {
            kill_monitor(monitor).map_err(|source| ContainerError::Kill {
                id: container.clone(),
                pid: monitor.pid,
                source,
            })
        }
        Garbage::Cgroup { rec, kill } => {
            if *kill {
                let dirs = cgroups.paths(&rec.rel);
                kill_all_in(&dirs);
            }
            Ok(cgroups.remove(rec)?)
        }
        Garbage::Mount(p) => match nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(io("unmount", p)(e.into())),
        },
        Garbage::Socket(p) | Garbage::TempFile(p) => match std::fs::remove_file(p) {
            Err(e) if !not_found(&e) => Err(io("remove", p)(e)),
            _ => Ok(()),
        },
        Garbage::Shm(p) => {
            match nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(io("unmount", p)(e.into())),
            }
            match std::fs::remove_dir(p) {
                Err(e) if !not_found(&e) => Err(io("remove", p)(e)),
                _ => Ok(()),
            }
        }
        Garbage::Dir(p) => {
            // Never delete through a mount (a bind mount could be the node's own files).
            if let Some(m) = mounts_below(p).first() {
                return Err(io("remove", p)(std::io::Error::other(format!(
                    "{} is still mounted below it",
                    m.display()
                ))));
            }
            Ok(store::remove_dir_all(p)?)
        }
    }
}

/// The container records on disk, for `peapod gc`: ids whose record is valid and whose pod
/// is in `pods`.
pub fn recorded(cfg: &Config, pods: &HashSet<String>) -> HashSet<String> {
    let dir = containers_dir(cfg);
    crate::store::dir_names(&dir)
        .into_iter()
        .filter(|id| is_id(id))
        .filter(|id| {
            store::read_json_opt::<super::ContainerRecord>(&dir.join(id).join("container.json"))
                .ok()
                .flatten()
                .is_some_and(|r| r.id == *id && pods.contains(&r.sandbox_id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::is_join_file;

    #[test]
    fn only_cgroup_membership_files_follow_a_monitors_dir() {
        assert!(is_join_file(
            b"/sys/fs/cgroup/pids/peapod/p1/monitors/tasks"
        ));
        assert!(is_join_file(
            b"/sys/fs/cgroup/peapod/p1/monitors/cgroup.procs"
        ));
        assert!(!is_join_file(b"/tmp/tasks"));
        assert!(!is_join_file(b"/sys/fs/cgroup/x/memory.max"));
        assert!(!is_join_file(b"/sys/fs/cgroup/../../tmp/tasks"));
    }
}
