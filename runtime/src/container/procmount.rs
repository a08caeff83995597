//! Mounts onto `/proc`. A bind of the node's `/proc/sys` over the container's would hand the
//! container the node's sysctls (`kernel.core_pattern` runs a program as root on the node);
//! the node's `/proc` over the container's, the node's processes. So no mount may go at or
//! under `/proc` but the files runc allows there (its checkProcMount list, the files lxcfs
//! emulates). Unlike runc, peapod refuses a procfs bind onto `/proc` itself too: a CRI mount
//! is always the node's, so that procfs would be the node's. The fresh procfs the init mounts
//! at `/proc` is not a mount of the request and is not affected.
//!
//! Destinations are normalised lexically first (`//proc/sys`, `/proc/./sys/`,
//! `/tmp/../proc/sys` are all `/proc/sys`); the monitor checks again after resolving the
//! destination in the rootfs, where symlinks of the image could lead elsewhere.

use std::path::{Component, Path};

/// Where under `/proc` a mount may go.
pub const ALLOWED: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/sys/kernel/ns_last_pid",
    "/proc/sys/crypto/fips_enabled",
];

/// `dest` as an absolute path without `.`, `..` (which stops at `/`) and repeated or
/// trailing slashes. Lexical: symlinks are not followed.
pub fn normalize(dest: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(dest).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or("\u{fffd}")),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether a mount of the request may go at `dest` (a path inside the container).
pub fn allowed(dest: &str) -> bool {
    let n = normalize(dest);
    let under_proc = n == "/proc" || n.starts_with("/proc/");
    !under_proc || ALLOWED.contains(&n.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_normalised() {
        for (given, want) in [
            ("/proc/sys", "/proc/sys"),
            ("//proc/sys", "/proc/sys"),
            ("/proc//sys/", "/proc/sys"),
            ("/proc/./sys", "/proc/sys"),
            ("/proc/../proc/sys", "/proc/sys"),
            ("/tmp/../proc/sys", "/proc/sys"),
            ("/../../proc", "/proc"),
            ("/", "/"),
            ("/data/", "/data"),
        ] {
            assert_eq!(normalize(given), want, "{given}");
        }
    }

    #[test]
    fn only_runcs_files_under_proc() {
        for bad in [
            "/proc",
            "/proc/",
            "//proc",
            "/proc/sys",
            "/proc/sys/",
            "/proc/sys/kernel/core_pattern",
            "/proc/../proc/sys",
            "/tmp/../proc/sys/kernel",
            "/proc/self",
            "/proc/1/root",
            "/proc/sysrq-trigger",
            "/proc/cpuinfo/x",
            "/proc/sys/kernel",
        ] {
            assert!(!allowed(bad), "{bad}");
        }
        for good in [
            "/proc/cpuinfo",
            "//proc/meminfo/",
            "/proc/./uptime",
            "/proc/sys/kernel/ns_last_pid",
            "/proc/sys/crypto/fips_enabled",
            "/data",
            "/procx",
            "/proc2/sys",
            "/var/proc/sys",
            "/",
        ] {
            assert!(allowed(good), "{good}");
        }
    }
}
