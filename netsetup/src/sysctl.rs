//! Kernel parameters under `/proc/sys`.
//!
//! The `net.*` files act on the network namespace of the thread that opens them, the
//! `kernel.shm*`/`msg*`/`sem` and `fs.mqueue.*` ones on its ipc namespace: to set a pod's
//! sysctls, call [`write`] inside [`crate::netns::run_in_namespaces`].

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("invalid sysctl name {name:?}")]
    InvalidName { name: String },
    #[error("cannot write sysctl {name}")]
    Write {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read sysctl {name}")]
    Read {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// The file behind a sysctl name: `net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`.
///
/// A name that contains a slash is taken as already in path form, so that interface names
/// with dots stay whole: `net/ipv4/conf/eth0.100/rp_filter`.
pub fn path(name: &str) -> Result<PathBuf, SysctlError> {
    let relative = if name.contains('/') {
        name.to_owned()
    } else {
        name.replace('.', "/")
    };
    let valid = relative
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..");
    if !valid {
        return Err(SysctlError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(Path::new("/proc/sys").join(relative))
}

/// Writes `value` to the sysctl `name`, in the namespaces of the calling thread.
pub fn write(name: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(path(name)?, value).map_err(|source| SysctlError::Write {
        name: name.to_owned(),
        source,
    })
}

/// Reads the sysctl `name`, without its trailing newline.
pub fn read(name: &str) -> Result<String, SysctlError> {
    let text = std::fs::read_to_string(path(name)?).map_err(|source| SysctlError::Read {
        name: name.to_owned(),
        source,
    })?;
    Ok(text.trim_end_matches('\n').to_owned())
}

/// The namespace a per-pod sysctl lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlNamespace {
    Net,
    Ipc,
}

/// Which namespace `name` lives in, for the namespaced families Kubernetes lets a pod set:
/// `net.*` (network) and `kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*` (IPC).
/// `None` for everything else: those are node-wide.
pub fn namespace_of(name: &str) -> Option<SysctlNamespace> {
    let name = name.replace('/', ".");
    if name.starts_with("net.") {
        Some(SysctlNamespace::Net)
    } else if name == "kernel.sem"
        || name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name.starts_with("fs.mqueue.")
    {
        Some(SysctlNamespace::Ipc)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names_become_paths() {
        assert_eq!(
            path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
    }

    #[test]
    fn slashed_names_keep_their_dots() {
        assert_eq!(
            path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn names_cannot_escape_proc_sys() {
        for bad in ["", "..", "net/../../etc/passwd", "/etc/passwd", "net..ipv4"] {
            assert!(path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn namespaced_families() {
        for ipc in [
            "kernel.shmmax",
            "kernel.shm_rmid_forced",
            "kernel.msgmax",
            "kernel.sem",
            "fs.mqueue.msg_max",
        ] {
            assert_eq!(namespace_of(ipc), Some(SysctlNamespace::Ipc), "{ipc}");
        }
        for net in [
            "net.ipv4.ip_forward",
            "net.core.somaxconn",
            "net/ipv4/conf/eth0.100/rp_filter",
        ] {
            assert_eq!(namespace_of(net), Some(SysctlNamespace::Net), "{net}");
        }
        for no in [
            "kernel.pid_max",
            "kernel.semx",
            "kernel.hostname",
            "vm.max_map_count",
            "fs.file-max",
            "fs.mqueue",
            "network",
        ] {
            assert_eq!(namespace_of(no), None, "{no} should not be namespaced");
        }
    }
}
