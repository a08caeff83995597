//! The launch spec: everything the monitor and the container's init need, fully resolved at
//! CreateContainer (image config merged in, user resolved, capabilities computed, seccomp
//! profile read), persisted as `launch.json` in the container dir.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::devices::{self, Access, DeviceNode, DeviceRule};
use super::error::ContainerError;
use super::model::{ContainerSpec, MountReq, Propagation, SeccompReq};
use super::seccomp;
use super::security::{self, DEFAULT_MASKED, DEFAULT_READONLY};
use super::user::{self, User, UserReq};
use crate::image::ImageInfo;
use crate::sandbox::SandboxRecord;
use crate::sandbox::model::NsMode;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidNs {
    /// A new PID namespace; the container's process is its PID 1.
    Own,
    /// Join the namespace pinned at this path (the pod's).
    Join(PathBuf),
    /// The node's.
    Node,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: PidNs,
    /// Namespaces of the container's own, made at start (an OCI bundle's namespaces without
    /// a path); peapod's pods never ask for them, their pause holds the pod's.
    #[serde(default)]
    pub new: NewNamespaces,
}

/// Which namespaces (besides mount, always new, and PID, see [`PidNs`]) are made fresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNamespaces {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    pub cgroup: bool,
}

/// The FIFOs a containerd client hands a task for its stdio, given to the container's
/// process as they are (no copy through the monitor); `None`: `/dev/null`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fifos {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// Image layers, bottom first.
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The mount point (inside the container's own mount namespace only, so one directory
    /// serves every container).
    pub target: PathBuf,
    pub readonly: bool,
    /// The lowest layer, below the image's: empty mount points (see
    /// `Containers::ensure_mountpoints`), when the daemon has it.
    #[serde(default)]
    pub mountpoints: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
    /// Every mount below the destination read-only too (`readonly` is set as well).
    #[serde(default)]
    pub recursive_readonly: bool,
    pub propagation: Propagation,
}

/// An image mounted at `destination` (an image volume): its layers as a read-only overlay,
/// or `sub_path` of it, bound read-only, nosuid, nodev and noexec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageVolume {
    /// Bottom first.
    pub layers: Vec<PathBuf>,
    pub sub_path: String,
    pub destination: String,
}

/// A tmpfs an OCI bundle asks for (e.g. `/run`), mounted before the bind mounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tmpfs {
    pub destination: String,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub readonly: bool,
    /// The filesystem's own options, e.g. `mode=755,size=65536k`.
    pub data: String,
}

/// A cgroup directory of the container in one hierarchy; `name` is the hierarchy's mount
/// name under `/sys/fs/cgroup` (empty for the v2 unified hierarchy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDir {
    pub path: PathBuf,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub id: String,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub namespaces: Namespaces,
    pub rootfs: Rootfs,
    /// Bind mounts, in mount order (parents before children).
    pub mounts: Vec<Bind>,
    /// Image volumes, mounted after the binds, parents before children.
    #[serde(default)]
    pub image_volumes: Vec<ImageVolume>,
    /// tmpfs mounts (OCI bundles only), parents before children.
    #[serde(default)]
    pub tmpfs: Vec<Tmpfs>,
    /// The pod's `/dev/shm` (None: a tmpfs of the container's own).
    pub shm: Option<PathBuf>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// Capability names (`CAP_…`): the bounding set, and the effective set of a root process.
    pub caps: Vec<String>,
    pub privileged: bool,
    pub no_new_privs: bool,
    /// An OCI seccomp profile (JSON); None: unconfined.
    pub seccomp: Option<String>,
    pub cgroups: Vec<CgroupDir>,
    pub oom_score_adj: Option<i32>,
    pub log_path: Option<PathBuf>,
    /// The pod's log directory (the kubelet's): `log_path` is opened under it without
    /// following symlinks. Missing (older records): the log's own directory.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// The monitor's control socket (log reopen); the attach socket is beside it.
    pub control_socket: PathBuf,
    #[serde(default)]
    pub stdio: super::model::StdioMode,
    /// Set for an OCI bundle's task: its stdio are these FIFOs, and no CRI log is written.
    #[serde(default)]
    pub fifos: Option<Fifos>,
    /// The hostname of a new UTS namespace.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Namespaced sysctls (`net.*`, `kernel.shm*`, …) set in the container's namespaces
    /// before it runs (OCI bundles; peapod's pods set theirs on the pause).
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// Device nodes made in the container besides the standard ones of its `/dev`: the
    /// granted devices, the node's for a privileged container.
    #[serde(default)]
    pub devices: Vec<DeviceNode>,
    /// The device cgroup rules, in order (see [`devices`]). `None` in launch specs from
    /// before they were written here: the defaults for `privileged`.
    #[serde(default)]
    pub device_rules: Option<Vec<DeviceRule>>,
}

impl LaunchSpec {
    /// The device cgroup rules to write before the container's init joins its cgroup.
    pub fn device_rules(&self) -> Vec<DeviceRule> {
        match &self.device_rules {
            Some(rules) => rules.clone(),
            None => devices::cri_rules(self.privileged, &[]),
        }
    }
}

/// The nodes and rules of a CRI container: each granted device (a directory grants the
/// devices below it) with its permissions; all of the node's `/dev` when privileged, where
/// everything is allowed.
fn container_devices(
    spec: &ContainerSpec,
) -> Result<(Vec<DeviceNode>, Vec<DeviceRule>), ContainerError> {
    let mut nodes = Vec::new();
    let mut granted = Vec::new();
    for d in &spec.devices {
        let access = Access::parse(&d.permissions)?;
        for n in devices::host::granted(&d.host_path, &d.container_path)? {
            granted.push(n.rule(access));
            nodes.push(n);
        }
    }
    let privileged = spec.security.privileged;
    if privileged {
        let mut all = devices::host::all()?;
        all.retain(|n| !nodes.iter().any(|g| g.path == n.path));
        all.extend(nodes);
        nodes = all;
    }
    Ok((nodes, devices::cri_rules(privileged, &granted)))
}

/// What `build` needs besides the request.
pub struct Inputs<'a> {
    pub id: &'a str,
    pub spec: &'a ContainerSpec,
    pub sandbox: &'a SandboxRecord,
    pub sandbox_dir: &'a Path,
    pub image: &'a ImageInfo,
    pub dir: &'a Path,
    pub shm: Option<PathBuf>,
    pub cgroups: Vec<CgroupDir>,
    pub log_path: Option<PathBuf>,
    pub control_socket: PathBuf,
    /// Where the rootfs is mounted, and the mount points layer.
    pub mount_point: PathBuf,
    pub mountpoints: Option<PathBuf>,
    /// The layers of each image volume's image, in the order of `spec.mounts`.
    pub volume_layers: Vec<Vec<PathBuf>>,
}

/// The kubelet's rule: `command` replaces the image's entrypoint, `args` its cmd.
pub fn argv(spec: &ContainerSpec, entrypoint: &[String], cmd: &[String]) -> Vec<String> {
    let (head, tail) = match (spec.command.is_empty(), spec.args.is_empty()) {
        (false, _) => (&spec.command[..], &spec.args[..]),
        (true, false) => (entrypoint, &spec.args[..]),
        (true, true) => (entrypoint, cmd),
    };
    head.iter().chain(tail).cloned().collect()
}

/// The image's env with the request's on top (same key: the request wins), PATH defaulted.
pub fn env(image_env: &[String], request: &[(String, String)], hostname: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or("").to_owned();
        out.retain(|e| e.split('=').next() != Some(key.as_str()));
        out.push(kv);
    };
    if !hostname.is_empty() {
        set(format!("HOSTNAME={hostname}"));
    }
    for e in image_env {
        set(e.clone());
    }
    for (k, v) in request {
        set(format!("{k}={v}"));
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_owned());
    }
    out
}

fn bind(req: &MountReq) -> Result<Bind, ContainerError> {
    if std::fs::symlink_metadata(&req.host_path).is_err() {
        return Err(ContainerError::MountSource {
            path: req.host_path.clone(),
        });
    }
    if req.propagation == Propagation::Bidirectional {
        shared_source(&req.host_path)?;
    }
    Ok(Bind {
        source: PathBuf::from(&req.host_path),
        destination: req.container_path.clone(),
        readonly: req.readonly,
        recursive_readonly: req.recursive_read_only,
        propagation: req.propagation,
    })
}

/// A Bidirectional mount must come from a shared mount of the node, as with containerd:
/// otherwise nothing mounted in the container could reach the node.
fn shared_source(host_path: &str) -> Result<(), ContainerError> {
    let (mount_point, shared) = mount_of(Path::new(host_path))
        .map_err(ContainerError::io("find the mount of", host_path))?;
    if shared {
        return Ok(());
    }
    Err(ContainerError::invalid(
        "mounts.propagation",
        format!(
            "Bidirectional, but path {host_path} is mounted on {mount_point} \
             and it is not a shared mount (make it one: mount --make-shared {mount_point})"
        ),
    ))
}

/// The mount point of the mount `path` is on, and whether that mount is shared, from
/// `/proc/self/mountinfo` (the mount is found by the id the kernel reports for an `O_PATH` fd).
fn mount_of(path: &Path) -> std::io::Result<(String, bool)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?;
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd()))?;
    let id = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .map(str::trim)
        .ok_or_else(|| std::io::Error::other("no mnt_id in fdinfo"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').next() == Some(id))
        .ok_or_else(|| std::io::Error::other(format!("mount {id} not in mountinfo")))?;
    Ok(parse_mountinfo(line))
}

/// The mount point (unescaped) and whether the mount is shared, from one mountinfo line.
fn parse_mountinfo(line: &str) -> (String, bool) {
    let fields: Vec<&str> = line.split(' ').collect();
    let mount_point = fields.get(4).copied().unwrap_or("");
    let shared = fields
        .iter()
        .skip(6)
        .take_while(|f| **f != "-")
        .any(|f| f.starts_with("shared:"));
    (unescape(mount_point), shared)
}

/// Undoes the kernel's octal escapes (`\040` for a space) in a mountinfo path.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn seccomp_profile(
    spec: &ContainerSpec,
    caps: &[String],
) -> Result<Option<String>, ContainerError> {
    let s = &spec.security;
    if s.privileged {
        return Ok(None);
    }
    let (name, text) = match &s.seccomp {
        SeccompReq::Unconfined => return Ok(None),
        SeccompReq::RuntimeDefault => ("RuntimeDefault".to_owned(), seccomp::runtime_default(caps)),
        SeccompReq::Localhost(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| ContainerError::SeccompFile {
                    path: path.clone(),
                    source,
                })?;
            (path.display().to_string(), text)
        }
    };
    seccomp::compile(&text).map_err(|source| ContainerError::Seccomp {
        profile: name,
        source,
    })?;
    Ok(Some(text))
}

fn namespaces(i: &Inputs<'_>) -> Result<Namespaces, ContainerError> {
    let pins = &i.sandbox.pins;
    let pid = match i.spec.security.pid {
        NsMode::Container => PidNs::Own,
        NsMode::Node => PidNs::Node,
        NsMode::Pod => match &pins.pid {
            Some(p) => PidNs::Join(p.clone()),
            None => {
                return Err(ContainerError::invalid(
                    "linux.security_context.namespace_options.pid",
                    "POD, but the pod sandbox has no PID namespace of its own",
                ));
            }
        },
        NsMode::Target => {
            return Err(ContainerError::Unsupported {
                what: "namespace_options.pid TARGET".into(),
            });
        }
    };
    Ok(Namespaces {
        net: pins.net.clone(),
        ipc: pins.ipc.clone(),
        uts: pins.uts.clone(),
        pid,
        new: NewNamespaces::default(),
    })
}

pub fn build(i: &Inputs<'_>) -> Result<LaunchSpec, ContainerError> {
    let spec = i.spec;
    let sec = &spec.security;
    let cfg = &i.image.config;
    let argv = argv(spec, &cfg.entrypoint, &cfg.cmd);
    if argv.is_empty() || argv[0].is_empty() {
        return Err(ContainerError::invalid(
            "command",
            "no command given and the image has no entrypoint or cmd",
        ));
    }
    let passwd = user::read_from_layers(&i.image.layers, "etc/passwd");
    let group = user::read_from_layers(&i.image.layers, "etc/group");
    let user = user::resolve(
        &UserReq {
            run_as_user: sec.run_as_user,
            run_as_group: sec.run_as_group,
            run_as_username: &sec.run_as_username,
            supplemental_groups: &sec.supplemental_groups,
            strict: sec.strict_groups,
            image_user: &cfg.user,
        },
        &passwd,
        &group,
    )?;
    let caps = security::capabilities(sec.privileged, &sec.add_caps, &sec.drop_caps)?;
    let seccomp = seccomp_profile(spec, &caps)?;
    let defaults = |given: &[String], d: &[&str]| -> Vec<String> {
        match (given.is_empty(), sec.privileged) {
            (false, _) => given.to_vec(),
            (true, true) => Vec::new(),
            (true, false) => d.iter().map(|s| s.to_string()).collect(),
        }
    };
    let mut mounts = Vec::new();
    let wanted = |dest: &str| !spec.mounts.iter().any(|m| m.container_path == dest);
    for (file, dest) in [
        ("hosts", "/etc/hosts"),
        ("resolv.conf", "/etc/resolv.conf"),
        ("hostname", "/etc/hostname"),
    ] {
        let source = i.sandbox_dir.join(file);
        if wanted(dest) && source.exists() {
            mounts.push(Bind {
                source,
                destination: dest.to_owned(),
                readonly: sec.readonly_rootfs,
                recursive_readonly: false,
                propagation: Propagation::Private,
            });
        }
    }
    let mut user_mounts = spec
        .mounts
        .iter()
        .filter(|m| m.image.is_empty())
        .map(bind)
        .collect::<Result<Vec<_>, _>>()?;
    let mut image_volumes: Vec<ImageVolume> = spec
        .mounts
        .iter()
        .filter(|m| !m.image.is_empty())
        .zip(&i.volume_layers)
        .map(|(m, layers)| ImageVolume {
            layers: layers.clone(),
            sub_path: m.image_sub_path.clone(),
            destination: m.container_path.clone(),
        })
        .collect();
    image_volumes.sort_by_key(|v| Path::new(&v.destination).components().count());
    user_mounts.sort_by_key(|m| Path::new(&m.destination).components().count());
    mounts.extend(user_mounts);
    let (device_nodes, device_rules) = container_devices(spec)?;
    let cwd = match (spec.working_dir.as_str(), cfg.working_dir.as_str()) {
        ("", "") => "/".to_owned(),
        ("", w) | (w, _) => w.to_owned(),
    };
    Ok(LaunchSpec {
        id: i.id.to_owned(),
        argv,
        env: env(&cfg.env, &spec.envs, &i.sandbox.spec.hostname),
        cwd,
        user,
        namespaces: namespaces(i)?,
        rootfs: Rootfs {
            layers: i.image.layers.clone(),
            upper: i.dir.join("upper"),
            work: i.dir.join("work"),
            target: i.mount_point.clone(),
            readonly: sec.readonly_rootfs,
            mountpoints: i.mountpoints.clone(),
        },
        mounts,
        image_volumes,
        tmpfs: Vec::new(),
        shm: i.shm.clone(),
        masked_paths: defaults(&sec.masked_paths, DEFAULT_MASKED),
        readonly_paths: defaults(&sec.readonly_paths, DEFAULT_READONLY),
        caps,
        privileged: sec.privileged,
        no_new_privs: sec.no_new_privs,
        seccomp,
        cgroups: i.cgroups.clone(),
        oom_score_adj: (spec.resources.oom_score_adj != 0)
            .then(|| spec.resources.oom_score_adj.clamp(-1000, 1000) as i32),
        log_path: i.log_path.clone(),
        log_dir: i
            .log_path
            .as_ref()
            .map(|_| PathBuf::from(&i.sandbox.spec.log_directory)),
        control_socket: i.control_socket.clone(),
        stdio: spec.stdio,
        fifos: None,
        hostname: None,
        sysctls: Vec::new(),
        devices: device_nodes,
        device_rules: Some(device_rules),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_says_whether_a_mount_is_shared() {
        let shared = "36 35 98:0 /mnt1 /mnt\\040a rw,noatime master:1 shared:7 - ext3 /dev/root rw";
        assert_eq!(parse_mountinfo(shared), ("/mnt a".to_owned(), true));
        let slave = "36 35 98:0 / /data rw master:1 - ext3 /dev/root rw,shared:3";
        assert_eq!(parse_mountinfo(slave), ("/data".to_owned(), false));
        let private = "36 35 98:0 / / rw - ext3 /dev/root rw";
        assert_eq!(parse_mountinfo(private), ("/".to_owned(), false));
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_the_kubelet() {
        let (ep, cmd) = (v(&["/ep"]), v(&["c1", "c2"]));
        let mut spec = ContainerSpec::default();
        assert_eq!(argv(&spec, &ep, &cmd), v(&["/ep", "c1", "c2"]));
        spec.args = v(&["a"]);
        assert_eq!(argv(&spec, &ep, &cmd), v(&["/ep", "a"]));
        spec.command = v(&["/bin/sh", "-c"]);
        assert_eq!(argv(&spec, &ep, &cmd), v(&["/bin/sh", "-c", "a"]));
        spec.args.clear();
        assert_eq!(argv(&spec, &ep, &cmd), v(&["/bin/sh", "-c"]));
    }

    #[test]
    fn env_request_wins_and_path_defaults() {
        let e = env(
            &v(&["A=1", "B=2"]),
            &[("B".into(), "3".into()), ("C".into(), "x=y".into())],
            "web",
        );
        assert_eq!(e[0], DEFAULT_PATH);
        assert!(e.contains(&"A=1".into()) && e.contains(&"B=3".into()));
        assert!(e.contains(&"C=x=y".into()) && e.contains(&"HOSTNAME=web".into()));
        assert!(!e.contains(&"B=2".into()));
        let e = env(&v(&["PATH=/bin"]), &[], "");
        assert_eq!(e, v(&["PATH=/bin"]));
    }
}
