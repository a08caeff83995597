//! Removing the cgroups a node's pods left under its `cgroup_parent`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Mount points of every cgroup hierarchy (v1 controllers and v2), from `/proc/self/mountinfo`.
pub fn hierarchies() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mountpoint = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mountpoint))
        })
        .collect()
}

/// Where the host mounts the cgroup2 hierarchy, if it does.
pub fn v2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mountpoint = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mountpoint))
    })
}

/// The directories of `cgroup` (e.g. `/peapod-test-1234/<id>`) that exist in any hierarchy.
pub fn existing(cgroup: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(cgroup.trim_start_matches('/')))
        .filter(|p| p.is_dir())
        .collect()
}

/// Removes `cgroup` and everything under it in every hierarchy, deepest first, retrying
/// for a while where the kernel still holds on to a cgroup of processes that just died.
/// Returns the directories it could not remove.
pub fn remove(cgroup: &str) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = existing(cgroup);
    while !left.is_empty() {
        left.retain(|dir| remove_tree(dir).is_err());
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    left
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    // Cgroup dirs hold only control files (which rmdir ignores) and child cgroups.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
