//! A container's resource limits, written into its cgroup (`<pod cgroup>/<container id>`)
//! before its init joins it. v1: the file is written in whichever hierarchy has it; v2: the
//! controllers are enabled down the tree, then the unified files are written.

use std::path::{Path, PathBuf};

use super::error::ContainerError;
use super::model::Resources;

/// v1 `cpu.shares` → v2 `cpu.weight`, the conversion runc and the kubelet use.
pub fn shares_to_weight(shares: i64) -> i64 {
    if shares <= 0 {
        return 0;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// (file, value) pairs for the limits in `r`.
pub fn files(r: &Resources, v2: bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| out.push((k.to_owned(), v));
    if v2 {
        if r.cpu_shares > 0 {
            put("cpu.weight", shares_to_weight(r.cpu_shares).to_string());
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
            put("cpu.max", format!("{quota} {period}"));
        }
        if r.memory_limit > 0 {
            put("memory.max", r.memory_limit.to_string());
            if r.memory_swap_limit > 0 {
                let swap = (r.memory_swap_limit - r.memory_limit).max(0);
                put("memory.swap.max", swap.to_string());
            }
        }
    } else {
        if r.cpu_shares > 0 {
            put("cpu.shares", r.cpu_shares.to_string());
        }
        if r.cpu_period > 0 {
            put("cpu.cfs_period_us", r.cpu_period.to_string());
        }
        if r.cpu_quota > 0 {
            put("cpu.cfs_quota_us", r.cpu_quota.to_string());
        }
        if r.memory_limit > 0 {
            put("memory.limit_in_bytes", r.memory_limit.to_string());
            let swap = if r.memory_swap_limit > 0 {
                r.memory_swap_limit
            } else {
                r.memory_limit
            };
            put("memory.memsw.limit_in_bytes", swap.to_string());
        }
    }
    for (k, v) in &r.unified {
        put(k, v.clone());
    }
    out
}

/// Files that may be missing without it being an error (swap accounting is often off).
fn optional(file: &str) -> bool {
    matches!(file, "memory.memsw.limit_in_bytes" | "memory.swap.max")
}

/// Writes the limits into the container's cgroup dirs (one per hierarchy).
pub fn apply(dirs: &[PathBuf], r: &Resources, v2: bool) -> Result<(), ContainerError> {
    if v2 && let Some(dir) = dirs.first() {
        enable_controllers(dir)?;
    }
    for (file, value) in files(r, v2) {
        let Some(path) = dirs.iter().map(|d| d.join(&file)).find(|p| p.exists()) else {
            if optional(&file) {
                continue;
            }
            return Err(ContainerError::invalid(
                "linux.resources",
                format!("no cgroup controller on this node has {file}"),
            ));
        };
        std::fs::write(&path, &value)
            .map_err(ContainerError::io("write the cgroup limit", path))?;
    }
    Ok(())
}

/// v2: a controller's files exist in a cgroup only when its parent enables it for its
/// children; enable cpu, memory and pids from the root down to the container's parent.
fn enable_controllers(dir: &Path) -> Result<(), ContainerError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    let mut chain: Vec<&Path> = parent
        .ancestors()
        .take_while(|p| p.join("cgroup.controllers").exists())
        .collect();
    chain.reverse();
    for cg in chain {
        let ctl = cg.join("cgroup.subtree_control");
        let have = std::fs::read_to_string(&ctl).unwrap_or_default();
        for c in ["cpu", "memory", "pids"] {
            if !have.split_whitespace().any(|x| x == c) {
                std::fs::write(&ctl, format!("+{c}"))
                    .map_err(ContainerError::io("enable a controller in", ctl.clone()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            unified: [("pids.max".to_owned(), "20".to_owned())].into(),
            ..Default::default()
        };
        let v1 = files(&r, false);
        assert!(v1.contains(&("cpu.cfs_quota_us".into(), "50000".into())));
        assert!(v1.contains(&(
            "memory.memsw.limit_in_bytes".into(),
            (64u64 << 20).to_string()
        )));
        assert!(v1.contains(&("pids.max".into(), "20".into())));
        let v2 = files(&r, true);
        assert!(v2.contains(&("cpu.max".into(), "50000 100000".into())));
        assert!(v2.contains(&("cpu.weight".into(), shares_to_weight(512).to_string())));
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
        assert!(apply(&[cpu], &bad, false).is_err());
    }
}
