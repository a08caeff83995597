//! An OCI bundle (`config.json` and the rootfs mounts containerd passes) as a [`LaunchSpec`],
//! the language peapod's monitor and container init speak: a task of the shim runs through
//! the same launch path as a CRI container of `peapod serve`.
//!
//! What the launch path cannot do is refused with the field that asks for it, never run
//! differently: user and time namespaces, joining a mount or cgroup namespace, mounts other than binds, tmpfs and the standard filesystems (`/proc`, `/dev`, `/dev/pts`,
//! `/dev/shm`, `/dev/mqueue`, `/sys`, `/sys/fs/cgroup`, which the init makes itself).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use peapod::container::launch::{
    Bind, CgroupDir, Fifos, LaunchSpec, Namespaces, NewNamespaces, PidNs, Rootfs, Tmpfs,
};
use peapod::container::model::{Propagation, Resources, StdioMode};
use peapod::container::procmount;
use peapod::container::user::User;
use peapod::sandbox::cgroup::systemd_path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OciError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{what} is not supported by peapod's shim yet")]
    Unsupported { what: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> OciError {
    OciError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn unsupported(what: impl Into<String>) -> OciError {
    OciError::Unsupported { what: what.into() }
}

/// One rootfs mount of a CreateTask request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootMount {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

/// What the shim knows of a task besides its `config.json`.
pub struct Task<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    /// The task's own directory (upper and work dirs when containerd gives no writable
    /// layer).
    pub dir: &'a Path,
    pub rootfs: &'a [RootMount],
    pub fifos: Fifos,
    pub control_socket: PathBuf,
    pub cgroups: Vec<CgroupDir>,
    /// The task's stdio is a terminal (its slave in every FIFO path).
    pub terminal: bool,
}

pub fn launch_spec(spec: &Spec, task: &Task<'_>) -> Result<LaunchSpec, OciError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "is missing"))?;
    if process.terminal().unwrap_or(false) != task.terminal {
        return Err(invalid(
            "process.terminal",
            "differs from the request's terminal",
        ));
    }
    let argv = process.args().clone().unwrap_or_default();
    if argv.first().is_none_or(String::is_empty) {
        return Err(invalid("process.args", "is empty"));
    }
    let user = process.user();
    let caps = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default();
    let mut caps: Vec<String> = caps.iter().map(capability_name).collect();
    caps.sort();
    let linux = spec.linux().as_ref();
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root", "is missing"))?;
    let target = task.bundle.join(root.path());
    let namespaces = namespaces(spec)?;
    let hostname = match (namespaces.new.uts, spec.hostname()) {
        (true, Some(name)) if !name.is_empty() => Some(name.clone()),
        _ => None,
    };
    let (mounts, tmpfs) = mounts(spec)?;
    let seccomp = linux
        .and_then(|l| l.seccomp().as_ref())
        .map(|s| serde_json::to_string(s).expect("a seccomp profile serializes"));
    Ok(LaunchSpec {
        id: task.id.to_owned(),
        argv,
        env: process.env().clone().unwrap_or_default(),
        cwd: process.cwd().display().to_string(),
        user: User {
            uid: user.uid(),
            gid: user.gid(),
            groups: user.additional_gids().clone().unwrap_or_default(),
        },
        namespaces,
        rootfs: rootfs(task, target, root.readonly().unwrap_or(false))?,
        mounts,
        // containerd mounts an image volume as a bind of its own snapshot.
        image_volumes: Vec::new(),
        tmpfs,
        // The init's own tmpfs; a bundle's /dev/shm bind (a pod's) goes over it.
        shm: None,
        masked_paths: linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default(),
        readonly_paths: linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default(),
        caps,
        privileged: false,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        seccomp,
        cgroups: task.cgroups.clone(),
        oom_score_adj: process.oom_score_adj(),
        log_path: None,
        log_dir: None,
        control_socket: task.control_socket.clone(),
        stdio: StdioMode {
            tty: task.terminal,
            ..StdioMode::default()
        },
        fifos: Some(task.fifos.clone()),
        hostname,
        sysctls: sysctls(spec)?,
        devices: devices::nodes(spec)?,
        device_rules: Some(devices::rules(spec)?),
    })
}

/// `linux.sysctl`, sorted; only keys that name a sysctl (no `..`, no `/`).
fn sysctls(spec: &Spec) -> Result<Vec<(String, String)>, OciError> {
    let map = spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default();
    let mut out: Vec<(String, String)> = map.into_iter().collect();
    out.sort();
    for (key, _) in &out {
        let valid = !key.is_empty()
            && key.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !valid {
            return Err(invalid(
                "linux.sysctl",
                format!("{key:?} is not a sysctl name"),
            ));
        }
    }
    Ok(out)
}

/// `CAP_CHOWN` and the like, as the spec spells them.
pub(super) fn capability_name(cap: &oci_spec::runtime::Capability) -> String {
    match serde_json::to_value(cap) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("CAP_{}", format!("{cap:?}").to_ascii_uppercase()),
    }
}

fn namespaces(spec: &Spec) -> Result<Namespaces, OciError> {
    let mut ns = Namespaces {
        net: None,
        ipc: None,
        uts: None,
        pid: PidNs::Node,
        new: NewNamespaces::default(),
    };
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for n in &list {
        let path = n.path().clone().filter(|p| !p.as_os_str().is_empty());
        match (n.typ(), path) {
            (LinuxNamespaceType::Network, Some(p)) => ns.net = Some(p),
            (LinuxNamespaceType::Network, None) => ns.new.net = true,
            (LinuxNamespaceType::Ipc, Some(p)) => ns.ipc = Some(p),
            (LinuxNamespaceType::Ipc, None) => ns.new.ipc = true,
            (LinuxNamespaceType::Uts, Some(p)) => ns.uts = Some(p),
            (LinuxNamespaceType::Uts, None) => ns.new.uts = true,
            (LinuxNamespaceType::Pid, Some(p)) => ns.pid = PidNs::Join(p),
            (LinuxNamespaceType::Pid, None) => ns.pid = PidNs::Own,
            // The init always makes a mount namespace of its own.
            (LinuxNamespaceType::Mount, None) => {}
            (LinuxNamespaceType::Cgroup, None) => ns.new.cgroup = true,
            (kind, Some(_))
                if matches!(kind, LinuxNamespaceType::Mount | LinuxNamespaceType::Cgroup) =>
            {
                return Err(unsupported(format!("joining a {kind} namespace")));
            }
            (kind, _) => return Err(unsupported(format!("a {kind} namespace"))),
        }
    }
    Ok(ns)
}

/// The rootfs containerd hands over: one overlay mount (the snapshotter's), a bind of a
/// directory, or nothing (the bundle's root is there already). Without a writable upper
/// directory from containerd, the container writes into its task dir.
fn rootfs(task: &Task<'_>, target: PathBuf, readonly: bool) -> Result<Rootfs, OciError> {
    let own = |layers: Vec<PathBuf>| Rootfs {
        layers,
        upper: task.dir.join("upper"),
        work: task.dir.join("work"),
        target: target.clone(),
        readonly,
        mountpoints: None,
    };
    match task.rootfs {
        [] => Ok(own(vec![target.clone()])),
        [m] if m.typ == "overlay" => {
            let option = |key: &str| {
                m.options
                    .iter()
                    .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
            };
            let lower = option("lowerdir")
                .ok_or_else(|| invalid("rootfs", "an overlay mount without lowerdir"))?;
            // Top first in the option; bottom first in a Rootfs.
            let layers: Vec<PathBuf> = lower.split(':').rev().map(PathBuf::from).collect();
            match (option("upperdir"), option("workdir")) {
                (Some(upper), Some(work)) => Ok(Rootfs {
                    upper: upper.into(),
                    work: work.into(),
                    ..own(layers)
                }),
                (None, None) => Ok(own(layers)),
                _ => Err(invalid(
                    "rootfs",
                    "an overlay mount needs upperdir and workdir together",
                )),
            }
        }
        [m] if m.typ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind") => {
            Ok(own(vec![PathBuf::from(&m.source)]))
        }
        [m] => Err(unsupported(format!("a rootfs mount of type {:?}", m.typ))),
        _ => Err(unsupported("a rootfs of several mounts")),
    }
}

/// Filesystems the init mounts itself, wherever a bundle asks for them.
const STANDARD: &[(&str, &str)] = &[
    ("/proc", "proc"),
    ("/dev", "tmpfs"),
    ("/dev/pts", "devpts"),
    ("/dev/shm", "tmpfs"),
    ("/dev/mqueue", "mqueue"),
    ("/sys", "sysfs"),
    ("/sys/fs/cgroup", "cgroup"),
    ("/sys/fs/cgroup", "cgroup2"),
];

fn mounts(spec: &Spec) -> Result<(Vec<Bind>, Vec<Tmpfs>), OciError> {
    let mut binds = Vec::new();
    let mut tmpfs = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let destination = m.destination().display().to_string();
        let typ = m.typ().clone().unwrap_or_default();
        let options = m.options().clone().unwrap_or_default();
        let has = |o: &str| options.iter().any(|x| x == o);
        let is_bind = typ == "bind" || has("bind") || has("rbind");
        // A procfs the init mounts itself, never a bind (whatever its type says).
        let standard = !is_bind && STANDARD.contains(&(destination.as_str(), typ.as_str()));
        if !standard && !procmount::allowed(&destination) {
            return Err(invalid(
                "mounts",
                format!(
                    "{destination:?} is under /proc, where only the standard procfs and {} may be mounted",
                    procmount::ALLOWED.join(", ")
                ),
            ));
        }
        if is_bind {
            let source = m
                .source()
                .clone()
                .ok_or_else(|| invalid("mounts", format!("bind at {destination} has no source")))?;
            let propagation = if has("rshared") || has("shared") {
                Propagation::Bidirectional
            } else if has("rslave") || has("slave") {
                Propagation::HostToContainer
            } else {
                Propagation::Private
            };
            // runc's `rro`: read-only, the mounts below included.
            binds.push(Bind {
                source,
                destination,
                readonly: has("ro") || has("rro"),
                recursive_readonly: has("rro"),
                propagation,
            });
        } else if standard {
            continue;
        } else if typ == "tmpfs" {
            let flags = [
                "nosuid",
                "nodev",
                "noexec",
                "ro",
                "rw",
                "strictatime",
                "noatime",
            ];
            let data: Vec<&str> = options
                .iter()
                .map(String::as_str)
                .filter(|o| !flags.contains(o))
                .collect();
            tmpfs.push(Tmpfs {
                destination,
                nosuid: has("nosuid"),
                nodev: has("nodev"),
                noexec: has("noexec"),
                readonly: has("ro"),
                data: data.join(","),
            });
        } else {
            return Err(unsupported(format!("a {typ:?} mount at {destination}")));
        }
    }
    let depth = |d: &str| Path::new(d).components().count();
    binds.sort_by_key(|b| depth(&b.destination));
    tmpfs.sort_by_key(|t| depth(&t.destination));
    Ok((binds, tmpfs))
}

/// The bundle's cgroup (`linux.cgroupsPath`), relative to each hierarchy's root: a cgroupfs
/// path (`/a/b`), or systemd's `slice:prefix:name`, which containerd 1.6 writes for every pod
/// whose parent is a `.slice` (with `SystemdCgroup = true` or not). That one is the scope's
/// place as systemd names it (`kubepods.slice/…/<prefix>-<name>.scope`), made through
/// cgroupfs like any other path.
pub fn cgroup_path(spec: &Spec) -> Result<Option<PathBuf>, OciError> {
    let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
        return Ok(None);
    };
    let text = path.display().to_string();
    if text.is_empty() {
        return Ok(None);
    }
    if text.contains(':') {
        return systemd_path::from_oci(&text)
            .map(Some)
            .map_err(|why| invalid("linux.cgroupsPath", why));
    }
    if text.split('/').any(|c| c == "..") {
        return Err(invalid(
            "linux.cgroupsPath",
            format!("{text:?} leaves the hierarchy"),
        ));
    }
    Ok(Some(PathBuf::from(text.trim_start_matches('/'))))
}

/// `linux.resources` as the limits peapod writes into a container's cgroup.
pub fn resources(spec: &Spec) -> Resources {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .map(limits)
        .unwrap_or_default()
}

/// OCI resources (a bundle's, or an Update's) as peapod's cgroup limits.
pub fn limits(res: &oci_spec::runtime::LinuxResources) -> Resources {
    let mut r = Resources::default();
    if let Some(mem) = res.memory() {
        r.memory_limit = mem.limit().unwrap_or(0).max(0);
        r.memory_swap_limit = mem.swap().unwrap_or(0).max(0);
    }
    if let Some(cpu) = res.cpu() {
        r.cpu_shares = cpu.shares().unwrap_or(0) as i64;
        r.cpu_quota = cpu.quota().unwrap_or(0).max(0);
        r.cpu_period = cpu.period().unwrap_or(0) as i64;
    }
    if let Some(cpu) = res.cpu() {
        for (file, set) in [("cpuset.cpus", cpu.cpus()), ("cpuset.mems", cpu.mems())] {
            if let Some(set) = set.as_ref().filter(|s| !s.is_empty()) {
                r.unified.insert(file.into(), set.clone());
            }
        }
    }
    for h in res.hugepage_limits().iter().flatten() {
        r.hugepage_limits
            .insert(h.page_size().clone(), h.limit().max(0) as u64);
    }
    if let Some(pids) = res.pids()
        && pids.limit() > 0
    {
        r.unified
            .insert("pids.max".into(), pids.limit().to_string());
    }
    // The CRI's `unified` map, as containerd passes it through; it wins over the fields.
    for (k, v) in res.unified().iter().flatten() {
        r.unified.insert(k.clone(), v.clone());
    }
    r
}

mod devices;
#[cfg(test)]
mod tests;
