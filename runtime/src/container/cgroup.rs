//! A container's resource limits, written into its cgroup (`<pod cgroup>/<container id>`)
//! before its init joins it. v1: the file is written in whichever hierarchy has it; v2: the
//! unified files, in the one cgroup (the controllers were enabled down the tree when it was
//! made).
//!
//! A limit whose controller the node lacks is refused (`ControllerMissing`), at
//! CreateContainer on v2 and at the latest when the limit is written: a container that runs
//! unlimited where the request asked for a limit would be a silent lie. Huge page limits are
//! the exception, as in containerd and CRI-O: the kubelet sends one for every page size the
//! kernel has, whether or not the hugetlb controller is there, so without it they are skipped
//! with a warning.

use std::path::{Path, PathBuf};

use super::error::ContainerError;
use super::model::Resources;
use super::unit_limits::unit_limits;
use crate::sandbox::cgroup::{CgroupRecord, Cgroups, controllers};

/// v1 `cpu.shares` → v2 `cpu.weight`, the conversion runc and the kubelet use.
pub fn shares_to_weight(shares: i64) -> i64 {
    if shares <= 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// One cgroup file to write, and the request field it comes from (for errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub file: String,
    pub value: String,
    pub field: String,
}

impl Limit {
    /// The controller that provides the file: what comes before its first dot (`cgroup` for
    /// the core files every cgroup has).
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

/// The limits in `r`, as cgroup files of v1 or v2.
pub fn files(r: &Resources, v2: bool) -> Vec<Limit> {
    let mut out: Vec<Limit> = Vec::new();
    let mut put = |file: &str, value: String, field: &str| {
        out.push(Limit {
            file: file.to_owned(),
            value,
            field: format!("linux.resources.{field}"),
        })
    };
    if v2 {
        if r.cpu_shares > 0 {
            let w = shares_to_weight(r.cpu_shares).to_string();
            put("cpu.weight", w, "cpu_shares");
        }
        if r.cpu_quota > 0 || r.cpu_period > 0 {
            let quota = if r.cpu_quota > 0 {
                r.cpu_quota.to_string()
            } else {
                "max".into()
            };
            let period = if r.cpu_period > 0 {
                r.cpu_period
            } else {
                100_000
            };
            put("cpu.max", format!("{quota} {period}"), "cpu_quota");
        }
        if r.memory_limit > 0 {
            put(
                "memory.max",
                r.memory_limit.to_string(),
                "memory_limit_in_bytes",
            );
            if r.memory_swap_limit > 0 {
                let swap = (r.memory_swap_limit - r.memory_limit).max(0);
                put(
                    "memory.swap.max",
                    swap.to_string(),
                    "memory_swap_limit_in_bytes",
                );
            }
        }
    } else {
        if r.cpu_shares > 0 {
            put("cpu.shares", r.cpu_shares.to_string(), "cpu_shares");
        }
        if r.cpu_period > 0 {
            put("cpu.cfs_period_us", r.cpu_period.to_string(), "cpu_period");
        }
        if r.cpu_quota > 0 {
            put("cpu.cfs_quota_us", r.cpu_quota.to_string(), "cpu_quota");
        }
        if r.memory_limit > 0 {
            let mem = r.memory_limit.to_string();
            put("memory.limit_in_bytes", mem, "memory_limit_in_bytes");
            let swap = if r.memory_swap_limit > 0 {
                r.memory_swap_limit
            } else {
                r.memory_limit
            };
            let field = "memory_swap_limit_in_bytes";
            put("memory.memsw.limit_in_bytes", swap.to_string(), field);
        }
    }
    // The reserved-pages limit too where the kernel has it (as runc does): without it a
    // process can reserve huge pages it then faults on (SIGBUS) instead of failing mmap.
    let (max, rsvd) = if v2 {
        ("max", "rsvd.max")
    } else {
        ("limit_in_bytes", "rsvd.limit_in_bytes")
    };
    for (size, limit) in &r.hugepage_limits {
        let field = format!("hugepage_limits[{size}]");
        put(&format!("hugetlb.{size}.{max}"), limit.to_string(), &field);
        put(&format!("hugetlb.{size}.{rsvd}"), limit.to_string(), &field);
    }
    for (k, v) in &r.unified {
        put(k, v.clone(), &format!("unified[{k}]"));
    }
    out
}

/// Files that may be missing without it being an error (swap accounting is often off;
/// reserved huge pages need Linux 5.7).
fn optional(file: &str) -> bool {
    matches!(file, "memory.memsw.limit_in_bytes" | "memory.swap.max") || file.contains(".rsvd.")
}

/// The checks that need no node: huge page sizes as the kernel names them (`2MB`, `1GB`),
/// `unified` keys of the form `CONTROLLER.PARAMETER` (they become file names).
pub fn validate(r: &Resources) -> Result<(), ContainerError> {
    for size in r.hugepage_limits.keys() {
        let split = size
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(size.len());
        let (digits, unit) = size.split_at(split);
        if digits.is_empty() || !matches!(unit, "KB" | "MB" | "GB") {
            return Err(ContainerError::invalid(
                "linux.resources.hugepage_limits.page_size",
                format!("{size:?} is not a page size like 2MB or 1GB"),
            ));
        }
    }
    for key in r.unified.keys() {
        let well_formed = key
            .split_once('.')
            .is_some_and(|(c, p)| !c.is_empty() && !p.is_empty());
        if !well_formed || key.contains('/') || key.contains('\0') || key.starts_with('.') {
            return Err(ContainerError::invalid(
                "linux.resources.unified",
                format!("{key:?} is not a cgroup file name of the form CONTROLLER.PARAMETER"),
            ));
        }
    }
    Ok(())
}

/// v2: refuses a limit whose controller `available` (the controllers the pod's cgroup hands
/// to its containers) lacks; hugetlb is left to [`apply`], which skips it.
pub fn check_available(r: &Resources, available: &[String]) -> Result<(), ContainerError> {
    for l in files(r, true) {
        let c = l.controller();
        if c == "cgroup" || c == "hugetlb" || optional(&l.file) {
            continue;
        }
        if !available.iter().any(|a| a == c) {
            return Err(missing(&l, available));
        }
    }
    Ok(())
}

/// CreateContainer's checks of the limits: [`validate`], and on v2 [`check_available`]
/// against what the pod's cgroup `pod` hands down.
pub fn check(
    cgroups: &Cgroups,
    pod: Option<&CgroupRecord>,
    r: &Resources,
) -> Result<(), ContainerError> {
    validate(r)?;
    if let (2, Some(pod)) = (cgroups.version(), pod)
        && let Some(dir) = cgroups.paths(&pod.rel).into_iter().next()
    {
        check_available(r, &controllers(&dir))?;
    }
    Ok(())
}

fn missing(l: &Limit, available: &[String]) -> ContainerError {
    ContainerError::ControllerMissing {
        field: l.field.clone(),
        controller: l.controller().to_owned(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(" ")
        },
    }
}

/// Writes the limits into the container's cgroup dirs (one per hierarchy).
pub fn apply(dirs: &[PathBuf], r: &Resources, v2: bool) -> Result<(), ContainerError> {
    let available: Vec<String> = match dirs.first() {
        Some(dir) if v2 => controllers(dir),
        _ => Vec::new(),
    };
    // Whether the node has hugetlb at all (v2: the hierarchy's root has it); where it has,
    // a container cgroup without it is an error like any other missing controller. Asked
    // only when a huge page limit finds no file (it reads the hierarchies).
    let hugetlb = || {
        if let (true, Some(dir)) = (v2, dirs.first()) {
            let root = dir
                .ancestors()
                .take_while(|p| p.join("cgroup.controllers").exists())
                .last()
                .unwrap_or(dir);
            controllers(root).iter().any(|c| c == "hugetlb")
        } else {
            dirs.iter().any(|d| has_file_of(d, "hugetlb"))
        }
    };
    for l in files(r, v2) {
        let Some(path) = dirs.iter().map(|d| d.join(&l.file)).find(|p| p.exists()) else {
            if optional(&l.file) {
                continue;
            }
            if l.controller() == "hugetlb" && !hugetlb() {
                tracing::warn!(field = %l.field, "no hugetlb cgroup controller: huge page limit skipped");
                continue;
            }
            if v2 && l.controller() != "cgroup" && !available.iter().any(|a| a == l.controller()) {
                return Err(missing(&l, &available));
            }
            return Err(ContainerError::invalid(
                l.field,
                format!("no cgroup controller on this node has {}", l.file),
            ));
        };
        std::fs::write(&path, &l.value)
            .map_err(ContainerError::io("write the cgroup limit", path))?;
    }
    Ok(())
}

/// With the systemd driver, makes the cgroup `rec`, with `pid` running in it, its scope unit
/// with `r` as the scope's properties, then writes `r` into the files again (systemd writes
/// its own values, rounded, into a cgroup it takes over). Nothing to do with cgroupfs.
pub fn adopt_scope(
    cgroups: &Cgroups,
    rec: &CgroupRecord,
    pid: i32,
    what: &str,
    r: &Resources,
) -> Result<(), ContainerError> {
    if cgroups.scope_unit(rec).is_none() {
        return Ok(());
    }
    let v2 = cgroups.version() == 2;
    cgroups.adopt(rec, pid, what, &unit_limits(r, v2))?;
    apply(&cgroups.paths(&rec.rel), r, v2)
}

/// With the systemd driver, sets `r` as the properties of the scope `rec` too; true when it
/// did, and the caller writes the files once more (systemd rewrites them, rounded).
pub fn set_scope_limits(
    cgroups: &Cgroups,
    rec: &CgroupRecord,
    r: &Resources,
) -> Result<bool, ContainerError> {
    if cgroups.scope_unit(rec).is_none() {
        return Ok(false);
    }
    cgroups.set_unit_limits(rec, &unit_limits(r, cgroups.version() == 2))?;
    Ok(true)
}

/// Whether `dir` has a file of `controller` (v1: whether it is in that hierarchy).
fn has_file_of(dir: &Path, controller: &str) -> bool {
    let prefix = format!("{controller}.");
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(limits: &[Limit], file: &str, value: &str) -> bool {
        limits.iter().any(|l| l.file == file && l.value == value)
    }

    #[test]
    fn weights_and_files() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        let r = Resources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit: 64 << 20,
            hugepage_limits: [("2MB".to_owned(), 4 << 20)].into(),
            unified: [("pids.max".to_owned(), "20".to_owned())].into(),
            ..Default::default()
        };
        let v1 = files(&r, false);
        assert!(has(&v1, "cpu.cfs_quota_us", "50000"));
        assert!(has(
            &v1,
            "memory.memsw.limit_in_bytes",
            &(64u64 << 20).to_string()
        ));
        assert!(has(&v1, "pids.max", "20"));
        assert!(has(&v1, "hugetlb.2MB.limit_in_bytes", "4194304"));
        let v2 = files(&r, true);
        assert!(has(&v2, "cpu.max", "50000 100000"));
        assert!(has(&v2, "cpu.weight", &shares_to_weight(512).to_string()));
        assert!(has(&v2, "hugetlb.2MB.max", "4194304"));
        assert!(has(&v2, "hugetlb.2MB.rsvd.max", "4194304"));
        let mem = v2.iter().find(|l| l.file == "memory.max").unwrap();
        assert_eq!(
            (mem.controller(), mem.field.as_str()),
            ("memory", "linux.resources.memory_limit_in_bytes")
        );
    }

    #[test]
    fn page_sizes_and_unified_keys_are_file_names() {
        let with = |size: &str, key: &str| Resources {
            hugepage_limits: [(size.to_owned(), 0)].into(),
            unified: [(key.to_owned(), "1".to_owned())].into(),
            ..Default::default()
        };
        assert!(validate(&with("2MB", "pids.max")).is_ok());
        assert!(validate(&with("1GB", "memory.high")).is_ok());
        for (size, key) in [
            ("../2MB", "pids.max"),
            ("2XB", "pids.max"),
            ("MB", "pids.max"),
            ("2MB", "../../cgroup.procs"),
            ("2MB", "pids"),
            ("2MB", ".max"),
        ] {
            assert!(validate(&with(size, key)).is_err(), "{size} {key}");
        }
    }

    #[test]
    fn a_missing_v2_controller_is_named_and_hugetlb_is_let_through() {
        let r = Resources {
            memory_limit: 1 << 20,
            hugepage_limits: [("2MB".to_owned(), 0)].into(),
            ..Default::default()
        };
        let available = vec!["pids".to_owned()];
        let e = check_available(&r, &available).unwrap_err();
        assert!(
            matches!(&e, ContainerError::ControllerMissing { controller, .. } if controller == "memory"),
            "{e:?}"
        );
        let hugepages_only = Resources {
            hugepage_limits: r.hugepage_limits.clone(),
            ..Default::default()
        };
        assert!(check_available(&hugepages_only, &available).is_ok());
    }

    #[test]
    fn limits_land_in_the_hierarchy_that_has_the_file() {
        let t = tempfile::tempdir().unwrap();
        let (cpu, mem) = (t.path().join("cpu"), t.path().join("memory"));
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(cpu.join("cpu.shares"), "").unwrap();
        std::fs::write(mem.join("memory.limit_in_bytes"), "").unwrap();
        let r = Resources {
            cpu_shares: 256,
            memory_limit: 1 << 20,
            // No hugetlb hierarchy: skipped, not an error.
            hugepage_limits: [("2MB".to_owned(), 0)].into(),
            ..Default::default()
        };
        apply(&[cpu.clone(), mem.clone()], &r, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.shares")).unwrap(),
            "256"
        );
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            "1048576"
        );
        let bad = Resources {
            unified: [("nope.max".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        };
        assert!(apply(std::slice::from_ref(&cpu), &bad, false).is_err());

        // A hugetlb hierarchy: its limit is written, an unknown size is refused.
        let huge = t.path().join("hugetlb");
        std::fs::create_dir_all(&huge).unwrap();
        std::fs::write(huge.join("hugetlb.2MB.limit_in_bytes"), "").unwrap();
        let r = Resources {
            hugepage_limits: [("2MB".to_owned(), 2 << 20)].into(),
            ..Default::default()
        };
        apply(&[cpu.clone(), huge.clone()], &r, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(huge.join("hugetlb.2MB.limit_in_bytes")).unwrap(),
            "2097152"
        );
        let r = Resources {
            hugepage_limits: [("1GB".to_owned(), 0)].into(),
            ..Default::default()
        };
        assert!(apply(&[cpu, huge], &r, false).is_err());
    }
}
