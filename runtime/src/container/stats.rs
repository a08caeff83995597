//! Resource usage of containers (ContainerStats, ListContainerStats): cpu and memory read from
//! the container's cgroup, the writable layer measured in its overlay upper dir. Plain data,
//! no protobuf; the cri adapters convert.
//!
//! cgroup files: v1 `cpuacct.usage`, `memory.usage_in_bytes`, `memory.limit_in_bytes`,
//! `memory.stat` (the hierarchical `total_*` keys); v2 `cpu.stat` (`usage_usec`),
//! `memory.current`, `memory.max`, `memory.stat`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::debug;

use super::model::{ContainerRecord, ContainerState};
use super::psi::{self, Psi};
use super::{Containers, Filter, Result, now_nanos};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuUsage {
    pub timestamp: i64,
    /// Cumulative, all cores, since the cgroup was made.
    pub usage_core_ns: u64,
    /// Averaged since the previous sample of the same cgroup, when there is one.
    pub usage_nano_cores: Option<u64>,
    /// cgroup v2 only.
    pub psi: Option<Psi>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryUsage {
    pub timestamp: i64,
    /// usage − inactive_file, as the kubelet defines it.
    pub working_set: u64,
    /// limit − working set; None when unlimited.
    pub available: Option<u64>,
    pub usage: u64,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// cgroup v2 only.
    pub psi: Option<Psi>,
}

/// I/O: only its pressure (cgroup v2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoUsage {
    pub timestamp: i64,
    pub psi: Psi,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsUsage {
    pub timestamp: i64,
    /// The mount point of the filesystem holding the state dir.
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

#[derive(Clone, Debug)]
pub struct ContainerStats {
    pub rec: ContainerRecord,
    pub cpu: Option<CpuUsage>,
    pub memory: Option<MemoryUsage>,
    pub io: Option<IoUsage>,
    pub writable_layer: Option<FsUsage>,
    /// Tasks in its cgroup (`pids.current`).
    pub processes: Option<u64>,
}

/// Reads usage from one cgroup's directories (one per v1 hierarchy, one for v2).
pub struct CgroupReader<'a> {
    pub dirs: &'a [PathBuf],
    pub v2: bool,
}

/// The previous cpu sample of each cgroup (by its directory), for `usage_nano_cores`.
static SAMPLES: Mutex<BTreeMap<PathBuf, (i64, u64)>> = Mutex::new(BTreeMap::new());
/// Samples older than this are dropped (their cgroup is likely gone).
const SAMPLE_TTL_NS: i64 = 10 * 60 * 1_000_000_000;

/// v1 reports an unlimited memory limit as a page-aligned i64::MAX; anything this large is.
const UNLIMITED: u64 = 1 << 62;

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat).
pub fn parse_kv(text: &str) -> BTreeMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

impl CgroupReader<'_> {
    fn file(&self, name: &str) -> Option<PathBuf> {
        self.dirs.iter().map(|d| d.join(name)).find(|p| p.exists())
    }

    fn cumulative_cpu_ns(&self) -> Option<u64> {
        if self.v2 {
            let text = fs::read_to_string(self.file("cpu.stat")?).ok()?;
            parse_kv(&text).get("usage_usec").map(|us| us * 1000)
        } else {
            read_u64(&self.file("cpuacct.usage")?)
        }
    }

    pub fn cpu(&self) -> Option<CpuUsage> {
        let usage = self.cumulative_cpu_ns()?;
        let timestamp = now_nanos();
        let key = self.dirs.first()?.clone();
        let mut samples = SAMPLES.lock().expect("lock");
        let prev = samples.insert(key, (timestamp, usage));
        samples.retain(|_, (t, _)| timestamp - *t < SAMPLE_TTL_NS);
        Some(CpuUsage {
            timestamp,
            usage_core_ns: usage,
            usage_nano_cores: prev.and_then(|p| nano_cores(p, (timestamp, usage))),
            psi: self.psi("cpu"),
        })
    }

    pub fn memory(&self) -> Option<MemoryUsage> {
        let timestamp = now_nanos();
        let (usage, limit, stat) = if self.v2 {
            let limit = fs::read_to_string(self.file("memory.max")?).ok()?;
            (
                read_u64(&self.file("memory.current")?)?,
                limit.trim().parse::<u64>().ok(),
                fs::read_to_string(self.file("memory.stat")?).ok()?,
            )
        } else {
            (
                read_u64(&self.file("memory.usage_in_bytes")?)?,
                read_u64(&self.file("memory.limit_in_bytes")?),
                fs::read_to_string(self.file("memory.stat")?).ok()?,
            )
        };
        let kv = parse_kv(&stat);
        let key =
            |v1: &'static str, v2: &'static str| kv.get(if self.v2 { v2 } else { v1 }).copied();
        let inactive = key("total_inactive_file", "inactive_file").unwrap_or(0);
        let working_set = usage.saturating_sub(inactive);
        Some(MemoryUsage {
            timestamp,
            working_set,
            available: limit
                .filter(|l| *l < UNLIMITED)
                .map(|l| l.saturating_sub(working_set)),
            usage,
            rss: key("total_rss", "anon"),
            page_faults: key("total_pgfault", "pgfault"),
            major_page_faults: key("total_pgmajfault", "pgmajfault"),
            psi: self.psi("memory"),
        })
    }

    /// The pressure of `resource` (`cpu`, `memory`, `io`): cgroup v2 only.
    fn psi(&self, resource: &str) -> Option<Psi> {
        if !self.v2 {
            return None;
        }
        psi::read(self.dirs.first()?, resource)
    }

    pub fn io(&self) -> Option<IoUsage> {
        Some(IoUsage {
            timestamp: now_nanos(),
            psi: self.psi("io")?,
        })
    }

    /// Tasks in the cgroup and below (`pids.current`).
    pub fn process_count(&self) -> Option<u64> {
        read_u64(&self.file("pids.current")?)
    }
}

/// Core-nanoseconds per second between two (timestamp, cumulative ns) samples.
fn nano_cores(prev: (i64, u64), now: (i64, u64)) -> Option<u64> {
    let dt = u128::try_from(now.0 - prev.0).ok().filter(|d| *d > 0)?;
    let used = u128::from(now.1.checked_sub(prev.1)?);
    u64::try_from(used * 1_000_000_000 / dt).ok()
}

/// Bytes (allocated blocks) and inodes below `root`, hard links counted once.
pub fn disk_usage(root: &Path) -> std::io::Result<(u64, u64)> {
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            // Removed while we walk: the container is writing; not ours to count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && p != root => continue,
            Err(e) => return Err(e),
        };
        if !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        inodes += 1;
        bytes += m.blocks() * 512;
        if m.is_dir() {
            match fs::read_dir(&p) {
                Ok(entries) => stack.extend(entries.flatten().map(|e| e.path())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok((bytes, inodes))
}

/// The mount point (from `mountinfo`) of the filesystem that holds `path`.
pub fn mountpoint_of(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
}

impl Containers {
    /// ContainerStats: any container; cpu and memory are left out when it has no cgroup.
    pub fn stats(&self, id: &str) -> Result<ContainerStats> {
        let rec = self.status(id)?;
        Ok(self.stats_of(rec))
    }

    /// ListContainerStats: the running containers that match `f` (its state is ignored).
    pub fn list_stats(&self, mut f: Filter) -> Vec<ContainerStats> {
        f.state = Some(ContainerState::Running);
        self.list(&f)
            .into_iter()
            .map(|r| self.stats_of(r))
            .collect()
    }

    /// The dirs of cgroup `cg` (none without one) and whether they are v2, for a
    /// [`CgroupReader`].
    pub(super) fn cgroup_dirs(
        &self,
        cg: Option<&crate::sandbox::cgroup::CgroupRecord>,
    ) -> (Vec<PathBuf>, bool) {
        let cgroups = self.sandboxes.cgroups();
        let dirs = cg.map(|cg| cgroups.paths(&cg.rel)).unwrap_or_default();
        (dirs, cgroups.version() == 2)
    }

    pub(super) fn stats_of(&self, rec: ContainerRecord) -> ContainerStats {
        let (dirs, v2) = self.cgroup_dirs(rec.cgroup.as_ref());
        let reader = CgroupReader { dirs: &dirs, v2 };
        ContainerStats {
            cpu: reader.cpu(),
            memory: reader.memory(),
            io: reader.io(),
            writable_layer: self.writable_layer(&rec.id),
            processes: reader.process_count(),
            rec,
        }
    }

    fn writable_layer(&self, id: &str) -> Option<FsUsage> {
        let upper = self.dir(id).join("upper");
        let timestamp = now_nanos();
        let (used_bytes, inodes_used) = disk_usage(&upper)
            .inspect_err(
                |e| debug!(container = %id, error = %e, "cannot measure the writable layer"),
            )
            .ok()?;
        let state_dir = fs::canonicalize(&self.cfg.state_dir).unwrap_or(self.cfg.state_dir.clone());
        let mountpoint = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| mountpoint_of(&m, &state_dir))
            .unwrap_or(state_dir);
        Some(FsUsage {
            timestamp,
            mountpoint,
            used_bytes,
            inodes_used,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup_v1(t: &Path) -> Vec<PathBuf> {
        let (cpu, mem) = (t.join("cpuacct"), t.join("memory"));
        fs::create_dir_all(&cpu).unwrap();
        fs::create_dir_all(&mem).unwrap();
        fs::write(cpu.join("cpuacct.usage"), "5000000000\n").unwrap();
        fs::write(mem.join("memory.usage_in_bytes"), "1000000\n").unwrap();
        fs::write(mem.join("memory.limit_in_bytes"), "4000000\n").unwrap();
        fs::write(
            mem.join("memory.stat"),
            "cache 5\nrss 7\ntotal_rss 600000\ntotal_inactive_file 300000\n\
             total_pgfault 42\ntotal_pgmajfault 3\n",
        )
        .unwrap();
        vec![cpu, mem]
    }

    #[test]
    fn v1_files_give_working_set_and_cpu() {
        let t = tempfile::tempdir().unwrap();
        let dirs = cgroup_v1(t.path());
        let r = CgroupReader {
            dirs: &dirs,
            v2: false,
        };
        let m = r.memory().unwrap();
        assert_eq!(m.usage, 1_000_000);
        assert_eq!(m.working_set, 700_000);
        assert_eq!(m.available, Some(3_300_000));
        assert_eq!(m.rss, Some(600_000));
        assert_eq!((m.page_faults, m.major_page_faults), (Some(42), Some(3)));
        let c = r.cpu().unwrap();
        assert_eq!(c.usage_core_ns, 5_000_000_000);
        fs::write(
            dirs[1].join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(r.memory().unwrap().available, None);
    }

    #[test]
    fn v2_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().to_path_buf();
        fs::write(d.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        fs::write(d.join("memory.current"), "2048\n").unwrap();
        fs::write(d.join("memory.max"), "max\n").unwrap();
        fs::write(d.join("memory.stat"), "anon 1024\ninactive_file 512\n").unwrap();
        let dirs = [d];
        let r = CgroupReader {
            dirs: &dirs,
            v2: true,
        };
        assert_eq!(r.cpu().unwrap().usage_core_ns, 1_500_000);
        let m = r.memory().unwrap();
        assert_eq!(
            (m.working_set, m.available, m.rss),
            (1536, None, Some(1024))
        );
    }

    #[test]
    fn rates_and_mountpoints() {
        assert_eq!(
            nano_cores((0, 0), (1_000_000_000, 500_000_000)),
            Some(500_000_000)
        );
        assert_eq!(nano_cores((5, 10), (5, 20)), None);
        assert_eq!(nano_cores((1, 10), (2, 5)), None);
        let mi = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                  30 22 0:5 / /var/lib rw - tmpfs t rw\n\
                  31 22 0:6 / /var/lib2 rw - tmpfs t rw\n";
        assert_eq!(
            mountpoint_of(mi, Path::new("/var/lib/peapod")),
            Some(PathBuf::from("/var/lib"))
        );
        assert_eq!(
            mountpoint_of(mi, Path::new("/var/lib2x")),
            Some(PathBuf::from("/"))
        );
    }

    #[test]
    fn disk_usage_counts_files_once() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        fs::hard_link(t.path().join("a"), t.path().join("b")).unwrap();
        let (bytes, inodes) = disk_usage(t.path()).unwrap();
        assert_eq!(inodes, 2);
        assert!((64 * 1024..2 * 64 * 1024).contains(&bytes), "{bytes}");
    }
}
