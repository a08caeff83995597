//! The container as peapod knows it: the validated request, its state machine, and the record
//! persisted as `container.json`. The monitor writes `exit.json` (an [`ExitRecord`]) when the
//! container's process ends; the two together give the container's state.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sandbox::cgroup::CgroupRecord;
use crate::sandbox::model::NsMode;
use crate::sandbox::process::ProcRef;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountReq {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    /// Read-only all the way down: the mounts below the source too (`mount_setattr`).
    #[serde(default)]
    pub recursive_read_only: bool,
    pub propagation: Propagation,
    /// An image volume: the image (a name or id) whose files are mounted, read-only and
    /// noexec, at `container_path` (`host_path` is empty then).
    #[serde(default)]
    pub image: String,
    /// A directory or file within the image to mount instead of its root.
    #[serde(default)]
    pub image_sub_path: String,
}

/// A node device the request grants: made at `container_path` with the node device's type
/// and numbers, usable with `permissions` (`r`, `w`, `m`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReq {
    pub container_path: String,
    pub host_path: String,
    pub permissions: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompReq {
    Unconfined,
    RuntimeDefault,
    /// A profile file on the node (OCI seccomp JSON).
    Localhost(PathBuf),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit: i64,
    pub memory_swap_limit: i64,
    pub oom_score_adj: i64,
    /// Huge page size as the kernel names it (`2MB`, `1GB`) → limit in bytes.
    #[serde(default)]
    pub hugepage_limits: BTreeMap<String, u64>,
    /// Raw cgroup files (`pids.max`, …): the CRI's `unified` map, written on v1 too into the
    /// hierarchy that has the file.
    pub unified: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityReq {
    pub privileged: bool,
    pub add_caps: Vec<String>,
    pub drop_caps: Vec<String>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub supplemental_groups: Vec<i64>,
    /// SupplementalGroupsPolicy Strict: the image's `/etc/group` adds no groups (Merge, the
    /// default, adds those that list the user).
    #[serde(default)]
    pub strict_groups: bool,
    pub readonly_rootfs: bool,
    pub no_new_privs: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub seccomp: SeccompReq,
    /// The container's PID namespace: CONTAINER (own), POD, NODE or TARGET.
    pub pid: NsMode,
    pub target_id: String,
}

impl Default for SecurityReq {
    fn default() -> Self {
        SecurityReq {
            privileged: false,
            add_caps: Vec::new(),
            drop_caps: Vec::new(),
            run_as_user: None,
            run_as_group: None,
            run_as_username: String::new(),
            supplemental_groups: Vec::new(),
            strict_groups: false,
            readonly_rootfs: false,
            no_new_privs: false,
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
            seccomp: SeccompReq::Unconfined,
            pid: NsMode::Container,
            target_id: String::new(),
        }
    }
}

/// The CRI's interactive stdio of a container: its stdin held open by the monitor for
/// attachers, closed after the first attach with `stdin_once`; a pty with `tty`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioMode {
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

/// A validated CreateContainer request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<MountReq>,
    #[serde(default)]
    pub devices: Vec<DeviceReq>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Relative to the pod's log directory, as the kubelet sends it.
    pub log_path: String,
    pub resources: Resources,
    pub security: SecurityReq,
    #[serde(default)]
    pub stdio: StdioMode,
    /// The request's stop signal (`SIGTERM`, `SIGRTMIN+1`, …): it wins over the image's.
    #[serde(default)]
    pub stop_signal: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

impl ContainerState {
    pub fn can_start(self) -> bool {
        self == ContainerState::Created
    }
}

/// Written by the monitor (temp + fsync + rename) when the container's process has ended
/// and its output is drained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    pub oom_killed: bool,
    /// Set when the process could not be started at all.
    #[serde(default)]
    pub start_error: Option<String>,
    /// Set by the daemon when the monitor died without recording the exit: why the status
    /// is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

impl ExitRecord {
    /// CRI's reason: `OOMKilled`, `Completed`, `Error` (or `StartError`, or `MonitorDied`
    /// when the exit status was lost).
    pub fn reason(&self) -> &'static str {
        if self.lost.is_some() {
            "MonitorDied"
        } else if self.start_error.is_some() {
            "StartError"
        } else if self.oom_killed {
            "OOMKilled"
        } else if self.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// What the monitor reports once the container's process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub monitor: ProcRef,
    pub init: ProcRef,
    /// When the container's process was forked (ns since the epoch).
    pub started_at: i64,
}

/// Everything peapod knows about a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub spec: ContainerSpec,
    /// The resolved image id (`sha256:…`) and the name it was resolved from.
    pub image_id: String,
    pub image_ref: String,
    /// Absolute log path, empty when the pod has no log directory.
    pub log_path: String,
    /// The image's stop signal, e.g. `SIGQUIT`; SIGTERM when none.
    pub stop_signal: i32,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub running: Option<Running>,
    pub cgroup: Option<CgroupRecord>,
    /// Who the container's first process is (uid, gid, groups), as resolved at create; none
    /// in records from before it was kept.
    #[serde(default)]
    pub user: Option<super::user::User>,
    /// The ids of the images its image volumes mount.
    #[serde(default)]
    pub volume_images: Vec<String>,
    /// Filled in from `exit.json`; not persisted in `container.json`.
    #[serde(skip)]
    pub exit: Option<ExitRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let mut e = ExitRecord {
            exit_code: 0,
            signal: None,
            finished_at: 1,
            oom_killed: false,
            start_error: None,
            lost: None,
        };
        assert_eq!(e.reason(), "Completed");
        e.exit_code = 3;
        assert_eq!(e.reason(), "Error");
        e.oom_killed = true;
        assert_eq!(e.reason(), "OOMKilled");
        e.start_error = Some("no such file".into());
        assert_eq!(e.reason(), "StartError");
        e.lost = Some("the monitor died".into());
        assert_eq!(e.reason(), "MonitorDied");
        assert!(ContainerState::Created.can_start());
        assert!(!ContainerState::Exited.can_start());
    }
}
