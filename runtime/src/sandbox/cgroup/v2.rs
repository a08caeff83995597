//! What the v2 unified hierarchy asks beyond making directories: a cgroup's children get a
//! controller only when it is listed in the cgroup's `cgroup.subtree_control`, and a cgroup
//! with processes of its own cannot hand controllers down (the no-internal-processes rule;
//! the root is exempt). Hence the pause's own leaf, and controllers enabled from the root down.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a killed cgroup may take to empty.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The controllers `dir` can hand to its children: its `cgroup.controllers`.
pub fn controllers(dir: &Path) -> Vec<String> {
    words(&dir.join("cgroup.controllers"))
}

fn words(file: &Path) -> Vec<String> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Enables in `dir`'s `cgroup.subtree_control` every controller it has that is not enabled
/// yet, one at a time so that one the kernel refuses does not keep the others off. A refused
/// one is only logged: the limit that needs it reports it (as runc does).
pub fn enable_all(dir: &Path) {
    let ctl = dir.join("cgroup.subtree_control");
    let enabled = words(&ctl);
    for c in controllers(dir) {
        if enabled.contains(&c) {
            continue;
        }
        if let Err(e) = fs::write(&ctl, format!("+{c}")) {
            tracing::warn!(controller = %c, file = %ctl.display(), error = %e,
                "cannot enable a cgroup controller");
        }
    }
}

/// Kills every process in `dir` and below with `cgroup.kill` (Linux 5.14) and waits until
/// it is empty. `Ok(false)`: the kernel has no `cgroup.kill` here (v1, or an old kernel).
pub fn kill(dir: &Path) -> io::Result<bool> {
    let file = dir.join("cgroup.kill");
    if !file.exists() {
        return Ok(false);
    }
    if !populated(dir) {
        return Ok(true);
    }
    fs::write(&file, "1")?;
    let deadline = Instant::now() + KILL_WAIT;
    while populated(dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(true)
}

/// Whether a process is left in `dir` or below (`cgroup.events`); false once it is gone.
fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == "populated 1")
}
