//! cgroupfs placement for the pause: `<cgroup_parent>/<sandbox id>` in every hierarchy. This
//! kind of machine runs cgroup v1 controllers; modern hosts run the v2 unified hierarchy.
//! Which one is detected at start.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::SandboxError;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Used when a request names no cgroup_parent.
pub const DEFAULT_PARENT: &str = "peapod";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroups {
    /// One mount point per v1 hierarchy (cpu, memory, pids, name=systemd, …).
    V1 {
        roots: Vec<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
}

/// What was made for one sandbox, for removal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRecord {
    /// Relative path below each hierarchy root, e.g. `kubepods/pod1/<id>`.
    pub rel: PathBuf,
    /// Directories we created, in creation order (parents first).
    pub created: Vec<PathBuf>,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Cgroup {
        path: path.to_owned(),
        source,
    }
}

impl Cgroups {
    pub fn detect() -> Cgroups {
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            return Cgroups::V2 {
                root: root.to_owned(),
            };
        }
        let roots = fs::read_to_string("/proc/self/mountinfo")
            .map(|t| v1_roots(&t))
            .unwrap_or_default();
        Cgroups::V1 { roots }
    }

    pub fn version(&self) -> u8 {
        match self {
            Cgroups::V1 { .. } => 1,
            Cgroups::V2 { .. } => 2,
        }
    }

    fn roots(&self) -> Vec<&Path> {
        match self {
            Cgroups::V1 { roots } => roots.iter().map(PathBuf::as_path).collect(),
            Cgroups::V2 { root } => vec![root.as_path()],
        }
    }

    /// Creates `<parent>/<id>` in every hierarchy and records what it made. On error the
    /// directories made so far are removed again.
    pub fn create(&self, parent: &str, id: &str) -> Result<CgroupRecord, SandboxError> {
        let parent = if parent.is_empty() {
            DEFAULT_PARENT
        } else {
            parent
        };
        let rel = Path::new(parent.trim_start_matches('/')).join(id);
        let mut rec = CgroupRecord {
            rel: rel.clone(),
            created: Vec::new(),
        };
        for root in self.roots() {
            let cpuset = root.join("cpuset.cpus").exists();
            let mut dir = root.to_path_buf();
            for comp in rel.components() {
                let parent_dir = dir.clone();
                dir.push(comp);
                match fs::create_dir(&dir) {
                    Ok(()) => {
                        rec.created.push(dir.clone());
                        if cpuset && let Err(e) = inherit_cpuset(&parent_dir, &dir) {
                            let _ = self.remove(&rec);
                            return Err(e);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        let _ = self.remove(&rec);
                        return Err(err(&dir)(e));
                    }
                }
            }
        }
        Ok(rec)
    }

    /// Moves `pid` into the sandbox cgroup of every hierarchy.
    pub fn place(&self, rec: &CgroupRecord, pid: i32) -> Result<(), SandboxError> {
        for root in self.roots() {
            let procs = root.join(&rec.rel).join("cgroup.procs");
            fs::write(&procs, pid.to_string()).map_err(err(&procs))?;
        }
        Ok(())
    }

    /// Removes what `create` made, deepest first. The leaf must go; a parent still used by
    /// other pods stays.
    pub fn remove(&self, rec: &CgroupRecord) -> Result<(), SandboxError> {
        let mut first_err = None;
        for dir in rec.created.iter().rev() {
            let is_leaf = dir.ends_with(&rec.rel);
            match rmdir_retrying(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) if !is_leaf => {}
                Err(e) => {
                    first_err.get_or_insert(err(dir)(e));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A process that just exited may still be accounted for a moment: retry busy for ~1 s.
fn rmdir_retrying(dir: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes; copy the parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), SandboxError> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mine = dir.join(f);
        if fs::read_to_string(&mine)
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            let theirs = fs::read_to_string(parent.join(f)).map_err(err(parent))?;
            fs::write(&mine, theirs.trim()).map_err(err(&mine))?;
        }
    }
    Ok(())
}

/// Mount points of cgroup v1 hierarchies from `/proc/self/mountinfo`.
fn v1_roots(mountinfo: &str) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for line in mountinfo.lines() {
        // ... mount_point ... - fstype source super_options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup") {
            continue;
        }
        if let Some(mp) = left.split_whitespace().nth(4) {
            let mp = PathBuf::from(mp);
            if !roots.contains(&mp) {
                roots.push(mp);
            }
        }
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_hierarchies() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
34 30 0:30 / /sys/fs/cgroup/systemd rw,relatime shared:9 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            v1_roots(mi),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/memory"),
                PathBuf::from("/sys/fs/cgroup/systemd"),
            ]
        );
    }

    #[test]
    fn create_and_remove_in_a_fake_tree() {
        // Plain directories stand in for a hierarchy: create/remove logic, not the kernel.
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cpu");
        fs::create_dir_all(root.join("kubepods")).unwrap();
        let cg = Cgroups::V1 {
            roots: vec![root.clone()],
        };
        let rec = cg.create("/kubepods/pod1", "abc").unwrap();
        assert_eq!(rec.rel, PathBuf::from("kubepods/pod1/abc"));
        assert_eq!(
            rec.created,
            vec![root.join("kubepods/pod1"), root.join("kubepods/pod1/abc")]
        );
        cg.remove(&rec).unwrap();
        assert!(!root.join("kubepods/pod1").exists());
        assert!(root.join("kubepods").exists(), "pre-existing parent kept");
        cg.remove(&rec).unwrap();
    }
}
