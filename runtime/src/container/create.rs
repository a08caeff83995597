//! CreateContainer: validation, the image, the pod's /dev/shm, the launch spec, the record.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::error::ContainerError;
use super::launch::{self, CgroupDir};
use super::model::{ContainerRecord, ContainerSpec, ContainerState};
use super::{Containers, Filter, ROOTFS_MOUNT_POINT, Result, cgroup, new_id, now_nanos};
use crate::fault;
use crate::monitor::LAUNCH_FILE;
use crate::sandbox::SandboxState;
use crate::sandbox::model::NsMode;
use crate::store;

/// A signal's number from its name (`TERM`, `SIGUSR1`, `RTMIN+2`) or number: only the
/// signals that exist.
pub(crate) fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let num = if let Ok(num) = n.parse::<i32>() {
        num
    } else if let Some(off) = n.strip_prefix("RTMIN+") {
        min.checked_add(off.parse().ok()?)?
    } else if let Some(off) = n.strip_prefix("RTMAX-") {
        max.checked_sub(off.parse().ok()?)?
    } else if n == "RTMIN" {
        min
    } else if n == "RTMAX" {
        max
    } else {
        return format!("SIG{n}")
            .parse::<nix::sys::signal::Signal>()
            .ok()
            .map(|s| s as i32);
    };
    (1..=max).contains(&num).then_some(num)
}

/// The image's StopSignal, or SIGTERM (as containerd does) when it names no signal: a stop
/// must never fail on a signal that does not exist.
fn stop_signal(image: Option<&str>) -> i32 {
    match image {
        None => libc::SIGTERM,
        Some(name) => signal_number(name).unwrap_or_else(|| {
            warn!(
                stop_signal = name,
                "the image's StopSignal is no signal; SIGTERM instead"
            );
            libc::SIGTERM
        }),
    }
}

impl Containers {
    /// CreateContainer (blocking).
    pub fn create(&self, sandbox_id: &str, spec: ContainerSpec) -> Result<String> {
        super::validate::validate(&spec)?;
        let sandbox = self.sandboxes.status(sandbox_id)?;
        // Held until the container is recorded (see `closed`).
        let closed = self.closed.read().expect("lock");
        if sandbox.state != SandboxState::Ready || closed.contains(&sandbox.id) {
            return Err(ContainerError::SandboxNotReady { id: sandbox.id });
        }
        cgroup::check(
            self.sandboxes.cgroups(),
            sandbox.cgroup.as_ref(),
            &spec.resources,
        )?;
        let key = (sandbox.id.clone(), spec.name.clone(), spec.attempt);
        if !self.names.lock().expect("lock").insert(key.clone()) {
            let id = self
                .list(&Filter {
                    sandbox_id: Some(sandbox.id.clone()),
                    ..Default::default()
                })
                .into_iter()
                .find(|c| c.spec.name == spec.name && c.spec.attempt == spec.attempt)
                .map(|c| c.id)
                .unwrap_or_else(|| "(being created)".into());
            return Err(ContainerError::AlreadyExists {
                name: spec.name,
                attempt: spec.attempt,
                sandbox: sandbox.id,
                id,
            });
        }
        let id = new_id();
        let r = self.make(&id, &sandbox, spec);
        if r.is_err() {
            self.names.lock().expect("lock").remove(&key);
            let _ = store::remove_dir_all(&self.dir(&id));
        }
        drop(closed);
        r.map(|()| id)
    }

    fn make(
        &self,
        id: &str,
        sandbox: &crate::sandbox::SandboxRecord,
        spec: ContainerSpec,
    ) -> Result<()> {
        let image = self.images.resolve(&spec.image)?;
        // Image volumes: their images are held (not removable) as the container's own is.
        let volumes = spec
            .mounts
            .iter()
            .filter(|m| !m.image.is_empty())
            .map(|m| self.images.resolve(&m.image))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let dir = self.dir(id);
        for d in [dir.join("upper"), dir.join("work")] {
            store::create_dir_all(&d)?;
        }
        fault::point("create:dir");
        let shm = match (&sandbox.pins.ipc, sandbox.spec.namespaces.ipc) {
            (Some(_), _) => Some(self.ensure_shm(&sandbox.id)?),
            (None, NsMode::Node) => Some(PathBuf::from("/dev/shm")),
            (None, _) => None,
        };
        fault::point("create:shm");
        fault::stall("create:stall");
        // Where its cgroup will be, recorded now so that StartContainer has nothing to
        // record before it makes it.
        let cg = sandbox
            .cgroup
            .as_ref()
            .map(|c| self.sandboxes.cgroups().container_record(c, id))
            .ok_or_else(|| ContainerError::SandboxNotReady {
                id: sandbox.id.clone(),
            })?;
        let cgroups = self
            .sandboxes
            .cgroups()
            .dirs(&cg.rel)
            .into_iter()
            .map(|(path, name)| CgroupDir { path, name })
            .collect();
        let log_path = match (sandbox.spec.log_directory.as_str(), spec.log_path.as_str()) {
            ("", _) | (_, "") => None,
            (d, p) => Some(Path::new(d).join(p)),
        };
        let launch = launch::build(&launch::Inputs {
            id,
            spec: &spec,
            sandbox,
            sandbox_dir: &self.sandboxes.sandbox_dir(&sandbox.id),
            image: &image,
            dir: &dir,
            shm,
            cgroups,
            log_path: log_path.clone(),
            control_socket: self.socket(id),
            mount_point: self.cfg.run_dir.join(ROOTFS_MOUNT_POINT),
            mountpoints: Some(self.mountpoints_dir()).filter(|d| d.is_dir()),
            volume_layers: volumes.iter().map(|v| v.layers.clone()).collect(),
        })?;
        store::write_json(&dir.join(LAUNCH_FILE), &launch)?;
        fault::point("create:launch");
        let stop_signal = stop_signal(
            spec.stop_signal
                .as_deref()
                .or(image.config.stop_signal.as_deref()),
        );
        let rec = ContainerRecord {
            id: id.to_owned(),
            sandbox_id: sandbox.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            image_id: image.id,
            spec,
            log_path: log_path
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            stop_signal,
            state: ContainerState::Created,
            created_at: now_nanos(),
            started_at: 0,
            running: None,
            cgroup: Some(cg),
            user: Some(launch.user.clone()),
            volume_images: volumes.into_iter().map(|v| v.id).collect(),
            exit: None,
        };
        self.persist(&rec)?;
        fault::point("create:record");
        info!(container = %id, sandbox = %rec.sandbox_id, name = %rec.spec.name, "container created");
        let sandbox_id = rec.sandbox_id.clone();
        self.insert(rec);
        self.publish(id, &sandbox_id, super::events::EventKind::Created);
        Ok(())
    }

    fn ensure_shm(&self, sandbox_id: &str) -> Result<PathBuf> {
        use nix::mount::{MsFlags, mount};
        let dir = self.shm_dir(sandbox_id);
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(4) == dir.to_str());
        if !mounted {
            store::create_dir_all(&dir)?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(
                Some("shm"),
                &dir,
                Some("tmpfs"),
                flags,
                Some("mode=1777,size=65536k"),
            )
            .map_err(|e| {
                ContainerError::io("mount the pod's /dev/shm at", dir.clone())(e.into())
            })?;
        }
        Ok(dir)
    }

    pub(super) fn remove_shm(&self, sandbox_id: &str) -> Result<()> {
        let dir = self.shm_dir(sandbox_id);
        match nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(ContainerError::io("unmount", dir)(e.into())),
        }
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ContainerError::io("remove", dir)(e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_that_exist_are_kept() {
        for (name, want) in [
            ("SIGTERM", libc::SIGTERM),
            ("term", libc::SIGTERM),
            (" SIGUSR1 ", libc::SIGUSR1),
            ("9", libc::SIGKILL),
            ("SIGRTMIN+2", libc::SIGRTMIN() + 2),
            ("RTMAX", libc::SIGRTMAX()),
            ("64", 64),
        ] {
            assert_eq!(stop_signal(Some(name)), want, "{name}");
        }
        assert_eq!(stop_signal(None), libc::SIGTERM);
    }

    #[test]
    fn stop_signals_that_do_not_exist_become_sigterm() {
        for name in [
            "99999",
            "-9",
            "0",
            "65",
            "SIGFOO",
            "",
            "SIG",
            "RTMIN+99",
            "RTMAX-99",
            "RTMIN+x",
            "2147483647",
            "-2147483648",
            "SIGKILL9",
        ] {
            assert_eq!(signal_number(name), None, "{name}");
            assert_eq!(stop_signal(Some(name)), libc::SIGTERM, "{name}");
        }
    }
}
