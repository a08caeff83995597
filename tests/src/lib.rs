//! The peapod integration-test harness.
//!
//! A [`Node`] is a throwaway Kubernetes node made of namespaces: its own network namespace, a
//! private mount namespace with its own tmpfs `/run` (so the daemon's `/run/netns` pins stay
//! inside) and its own sysfs, its own pid namespace (killing the node kills every process it
//! holds), and its own temp dir for socket, state, config and logs. The real `peapod serve`
//! runs inside it; tests talk to it over its unix socket with a real CRI client and look at the
//! node from inside (links, pins, mounts, nftables, processes).
//!
//! Binaries are found through `PEAPOD_BIN_DIR` (set by `hack/test.sh`), falling back to the
//! target dir next to the test executable. Nothing here runs cargo.
//!
//! The whole thing needs root; [`require_root`] fails loudly otherwise, it never skips.

mod cgroup;
mod cni;
pub mod containerd;
pub mod containers;
pub mod cri;
pub mod events;
mod exec;
mod explain;
pub mod images;
mod inspect;
mod node;
mod pods;
mod registry;
mod services;
mod spawn;
#[path = "../../runtime/src/streaming/spdy.rs"]
pub mod spdy;
#[path = "../../runtime/src/streaming/spdy_conn.rs"]
pub mod spdy_conn;
pub mod stream;
pub mod vm;
#[path = "../../runtime/src/streaming/ws_io.rs"]
pub mod ws_io;

use std::path::PathBuf;

pub use cni::CniOutput;
pub use cri::{Client, PodConfig, connect, stop_and_remove_pod};
pub use exec::Background;
pub use explain::{
    LEAVING_THE_NODE, Traced, kinds, named_rules, one_branch_traced, parse_trace, same_rules,
};
pub use images::{ImageClient, TestImages, make_test_images_script};
pub use inspect::{Proc, host_veth};
pub use node::{Node, NodeBuilder};
pub use pods::{PodInfo, in_cidr, is_sandbox_id};
pub use registry::{Registry, RegistryTls, TestCa};

/// Panics unless the process runs as root: privileged tests never skip silently.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the peapod integration tests need root (namespaces, mounts, netlink, cgroups): \
         run them as root, e.g. with `hack/test.sh`"
    );
}

/// The directory holding the `peapod` and `peapod-pause` binaries under test: `PEAPOD_BIN_DIR`,
/// or else the target dir that holds the running test executable (`target/debug/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PEAPOD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("cannot find the test executable");
    let deps = exe.parent().expect("test executable has no parent dir");
    match deps.file_name() {
        Some(name) if name == "deps" => deps.parent().unwrap_or(deps).to_path_buf(),
        _ => deps.to_path_buf(),
    }
}

/// Mount points of the host's cgroup v1 hierarchies (one per controller or name).
pub fn cgroup_v1_hierarchies() -> Vec<PathBuf> {
    let v2 = cgroup::v2_root();
    let mut all = cgroup::hierarchies();
    all.retain(|h| Some(h) != v2.as_ref());
    all
}

/// Where this machine keeps `controller` (`pids`, `memory`, …): its v1 hierarchy, else the
/// cgroup2 hierarchy if that offers it.
pub fn cgroup_hierarchy_of(controller: &str) -> Option<PathBuf> {
    if let Some(v1) = cgroup_v1_hierarchies()
        .into_iter()
        .find(|h| h.ends_with(controller))
    {
        return Some(v1);
    }
    let v2 = cgroup::v2_root()?;
    let offered = std::fs::read_to_string(v2.join("cgroup.controllers")).ok()?;
    offered
        .split_whitespace()
        .any(|c| c == controller)
        .then_some(v2)
}

/// The directories of `cgroup` (e.g. `/peapod-test-1234/<id>`) that exist in any cgroup
/// hierarchy of this machine (v1 controllers and v2).
pub fn cgroup_dirs(cgroup: &str) -> Vec<PathBuf> {
    cgroup::existing(cgroup)
}

/// Removes `cgroup` (e.g. `/peapod-test-1234`) with everything below it from every cgroup
/// hierarchy of this machine; returns the directories it could not remove.
pub fn remove_cgroup(cgroup: &str) -> Vec<PathBuf> {
    cgroup::remove(cgroup)
}

/// A random lowercase hex string of `bytes * 2` characters.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("getrandom failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
