//! UpdateContainerResources: new limits for a created or running container. The fields the
//! request sets replace the recorded ones (zero means "not specified", as in the CRI); the
//! result is written into the container's cgroup with `cgroup::apply` when it has one, then
//! persisted, so ContainerStatus and a later start see it. A container that is not running
//! (created, or exited) only has its record updated, as containerd does: no error for a
//! container that exits while the kubelet resizes it.

use std::path::PathBuf;

use super::error::ContainerError;
use super::model::{ContainerState, Resources};
use super::{Containers, Result, cgroup};

/// The v1 swap+memory limit file: it must never be below `memory.limit_in_bytes`.
const MEMSW: &str = "memory.memsw.limit_in_bytes";

/// `old` with every field `new` specifies replaced. A new memory limit brings its own swap
/// limit (0: swap limited as memory). The oom score belongs to the process, not the cgroup:
/// it stays.
pub fn merge(old: &Resources, new: &Resources) -> Resources {
    let pick = |n: i64, o: i64| if n != 0 { n } else { o };
    let mut r = old.clone();
    r.cpu_period = pick(new.cpu_period, old.cpu_period);
    r.cpu_quota = pick(new.cpu_quota, old.cpu_quota);
    r.cpu_shares = pick(new.cpu_shares, old.cpu_shares);
    if new.memory_limit != 0 {
        r.memory_limit = new.memory_limit;
        r.memory_swap_limit = new.memory_swap_limit;
    } else {
        r.memory_swap_limit = pick(new.memory_swap_limit, old.memory_swap_limit);
    }
    r.unified
        .extend(new.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    r.hugepage_limits
        .extend(new.hugepage_limits.iter().map(|(k, v)| (k.clone(), *v)));
    r
}

/// What the kernel would refuse, refused up front with the field named.
pub fn validate(r: &Resources) -> Result<()> {
    let bad = |field: &str, why: &str| Err(ContainerError::invalid(field, why));
    for (field, v) in [
        ("linux.cpu_period", r.cpu_period),
        ("linux.cpu_quota", r.cpu_quota),
        ("linux.cpu_shares", r.cpu_shares),
        ("linux.memory_limit_in_bytes", r.memory_limit),
        ("linux.memory_swap_limit_in_bytes", r.memory_swap_limit),
    ] {
        if v < 0 {
            return bad(field, "must not be negative");
        }
    }
    if r.cpu_period != 0 && !(1_000..=1_000_000).contains(&r.cpu_period) {
        return bad("linux.cpu_period", "must be between 1000 and 1000000 µs");
    }
    if r.cpu_quota != 0 && r.cpu_quota < 1_000 {
        return bad("linux.cpu_quota", "must be at least 1000 µs");
    }
    if r.memory_swap_limit != 0 && r.memory_limit != 0 && r.memory_swap_limit < r.memory_limit {
        return bad(
            "linux.memory_swap_limit_in_bytes",
            "must not be below memory_limit_in_bytes",
        );
    }
    // Page sizes and unified keys, as CreateContainer checks them.
    cgroup::validate(r)
}

/// v1: raising the memory limit above the current swap+memory limit fails, so the new swap
/// limit goes in first (a raw file that `apply` skips where swap accounting is off).
fn raise_swap_first(new: &Resources) -> Option<Resources> {
    if new.memory_limit <= 0 {
        return None;
    }
    let swap = new.memory_swap_limit.max(new.memory_limit);
    Some(Resources {
        unified: [(MEMSW.to_owned(), swap.to_string())].into(),
        ..Default::default()
    })
}

fn write(dirs: &[PathBuf], r: &Resources, v2: bool) -> Result<()> {
    if !v2
        && let Some(pre) = raise_swap_first(r)
        && let Some(cur) = dirs.iter().map(|d| d.join(MEMSW)).find(|p| p.exists())
    {
        let now: i64 = std::fs::read_to_string(&cur)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(i64::MAX);
        if now < r.memory_limit {
            cgroup::apply(dirs, &pre, false)?;
        }
    }
    cgroup::apply(dirs, r, v2)
}

impl Containers {
    /// Returns the container's resources as they now are.
    pub fn update_resources(&self, id: &str, new: &Resources) -> Result<Resources> {
        let (id, entry) = self.lookup(id)?;
        let _op = entry.op.lock().expect("lock");
        let mut rec = entry.rec.lock().expect("lock").clone();
        self.refresh(&mut rec);
        let old = rec.spec.resources.clone();
        let merged = merge(&old, new);
        validate(&merged)?;
        if rec.state == ContainerState::Running
            && let Some(cg) = &rec.cgroup
        {
            let cgroups = self.sandboxes.cgroups();
            let v2 = cgroups.version() == 2;
            let dirs = cgroups.paths(&cg.rel);
            // With the systemd driver the scope's properties follow (systemd writes them,
            // rounded, into the files, hence the files once more).
            let set = |r: &Resources| -> Result<()> {
                write(&dirs, r, v2)?;
                if cgroup::set_scope_limits(cgroups, cg, r)? {
                    write(&dirs, r, v2)?;
                }
                Ok(())
            };
            if let Err(e) = set(&merged) {
                // All or nothing: put back what was there.
                if let Err(back) = set(&old) {
                    tracing::warn!(container = %id, error = %back.chain(), "cannot restore the old limits");
                }
                return Err(e);
            }
        }
        rec.spec.resources = merged.clone();
        self.persist(&rec)?;
        *entry.rec.lock().expect("lock") = rec;
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_what_is_not_specified() {
        let old = Resources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit: 64 << 20,
            memory_swap_limit: 128 << 20,
            oom_score_adj: 10,
            hugepage_limits: [("2MB".to_owned(), 0)].into(),
            unified: [("pids.max".to_owned(), "20".to_owned())].into(),
        };
        let new = Resources {
            cpu_quota: 20_000,
            memory_limit: 256 << 20,
            unified: [("pids.max".to_owned(), "30".to_owned())].into(),
            ..Default::default()
        };
        let m = merge(&old, &new);
        assert_eq!(
            (m.cpu_shares, m.cpu_quota, m.cpu_period),
            (512, 20_000, 100_000)
        );
        assert_eq!((m.memory_limit, m.memory_swap_limit), (256 << 20, 0));
        assert_eq!(m.oom_score_adj, 10);
        assert_eq!(m.unified["pids.max"], "30");
        assert_eq!(m.hugepage_limits["2MB"], 0);
        let m = merge(
            &m,
            &Resources {
                hugepage_limits: [("2MB".to_owned(), 4 << 20)].into(),
                ..Default::default()
            },
        );
        assert_eq!(m.hugepage_limits["2MB"], 4 << 20);
        validate(&m).unwrap();
        assert_eq!(merge(&old, &Resources::default()), old);
    }

    #[test]
    fn validation_names_the_field() {
        let r = |f: fn(&mut Resources)| {
            let mut r = Resources::default();
            f(&mut r);
            validate(&r).unwrap_err().to_string()
        };
        assert!(r(|r| r.memory_limit = -1).contains("memory_limit"));
        assert!(r(|r| r.cpu_period = 10).contains("cpu_period"));
        assert!(r(|r| r.cpu_quota = 10).contains("cpu_quota"));
        assert!(
            r(|r| {
                r.memory_limit = 100 << 20;
                r.memory_swap_limit = 50 << 20
            })
            .contains("swap")
        );
        assert!(
            r(|r| {
                r.unified.insert("../x".into(), "1".into());
            })
            .contains("unified")
        );
    }

    #[test]
    fn raising_memory_writes_swap_first() {
        let t = tempfile::tempdir().unwrap();
        let mem = t.path().join("memory");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(mem.join("memory.limit_in_bytes"), "1048576").unwrap();
        std::fs::write(mem.join(MEMSW), "1048576").unwrap();
        let r = Resources {
            memory_limit: 8 << 20,
            ..Default::default()
        };
        assert!(raise_swap_first(&r).is_some());
        write(std::slice::from_ref(&mem), &r, false).unwrap();
        let read = |f: &str| std::fs::read_to_string(mem.join(f)).unwrap();
        assert_eq!(read("memory.limit_in_bytes"), (8u64 << 20).to_string());
        assert_eq!(read(MEMSW), (8u64 << 20).to_string());
    }
}
