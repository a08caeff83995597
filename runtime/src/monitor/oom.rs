//! Whether the kernel OOM-killed a process of the container: the `oom_kill` count of its
//! memory cgroup (v1 `memory.oom_control`, v2 `memory.events`), read when the container
//! ends, and on v2 also whenever `memory.events` changes while it runs (inotify). The second
//! matters with the systemd driver: a container's scope is systemd's, which removes its
//! cgroup, counters and all, as soon as the last process in it has exited, possibly before
//! the monitor has reaped the container and read the file.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::container::launch::LaunchSpec;

pub struct OomWatch {
    inotify: Option<Inotify>,
    seen: bool,
}

impl OomWatch {
    /// Watches the `memory.events` files of the container's cgroups (none on v1).
    pub fn new(spec: &LaunchSpec) -> OomWatch {
        let files: Vec<_> = spec
            .cgroups
            .iter()
            .map(|c| c.path.join("memory.events"))
            .filter(|f| f.exists())
            .collect();
        let inotify = (!files.is_empty())
            .then(|| Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok())
            .flatten()
            .filter(|i| {
                files
                    .iter()
                    .all(|f| i.add_watch(f, AddWatchFlags::IN_MODIFY).is_ok())
            });
        OomWatch {
            inotify,
            seen: false,
        }
    }

    /// The fd to poll for changes, if there is one.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// The watched files changed: reads the counts.
    pub fn changed(&mut self, spec: &LaunchSpec) {
        if let Some(i) = &self.inotify {
            while matches!(i.read_events(), Ok(events) if !events.is_empty()) {}
        }
        self.seen |= counted(spec);
    }

    /// Whether an OOM kill was seen or is counted now.
    pub fn killed(&self, spec: &LaunchSpec) -> bool {
        self.seen || counted(spec)
    }
}

/// Whether the container's memory cgroup counts an OOM kill.
fn counted(spec: &LaunchSpec) -> bool {
    spec.cgroups.iter().any(|c| {
        ["memory.oom_control", "memory.events"].iter().any(|f| {
            std::fs::read_to_string(c.path.join(f))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
    })
}
