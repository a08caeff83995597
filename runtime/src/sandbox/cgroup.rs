//! cgroupfs placement for the pause: `<cgroup_parent>/<sandbox id>` in every hierarchy. This
//! kind of machine runs cgroup v1 controllers; modern hosts run the v2 unified hierarchy.
//! Which one is detected at start.
//!
//! On v2 the pause sits in a leaf of its own, `<cgroup_parent>/<sandbox id>/pause`: a cgroup
//! with processes cannot hand controllers to its children, the containers. Every controller a
//! cgroup has is enabled for its children on the way down (see [`v2`]).
//!
//! Parent cgroups that peapod had to create (the kubelet makes its own; `crictl` users often
//! name one that does not exist) are remembered in `cgroup-parents.json`, so that whichever
//! pod leaves last removes them. Ownership is per hierarchy: on v1 the kubelet makes its
//! `kubepods` tree in every hierarchy but `devices`, so peapod makes the tree there alone, and
//! only there may it remove it again.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::error::SandboxError;
use crate::config::CgroupDriver;
use crate::store;

mod scopes;
pub mod systemd;
pub mod systemd_path;
mod v2;

pub use v2::controllers;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Used when a request names no cgroup_parent and the config sets none.
pub const DEFAULT_PARENT: &str = "peapod";
/// v2: the pause's cgroup below its pod's.
pub const PAUSE_LEAF: &str = "pause";
/// The cgroup below a pod's where its containers' monitors live: out of the daemon's own
/// cgroup, so that stopping the daemon's systemd unit (`KillMode=control-group`, the
/// default, kills the unit's whole cgroup) takes no monitor along, as CRI-O's conmon lives
/// in the pod's cgroup. A monitor counts toward its pod's limits, as conmon does.
pub const MONITORS_LEAF: &str = "monitors";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// One mount point per v1 hierarchy (cpu, memory, pids, name=systemd, …).
    V1 {
        roots: Vec<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
}

pub struct Cgroups {
    hierarchy: Hierarchy,
    driver: CgroupDriver,
    /// The systemd driver: what ends the description of each scope this daemon makes (its
    /// state dir), so that the start-up reconcile stops only its own orphans.
    unit_marker: String,
    /// Parent cgroups peapod created, as directories of one hierarchy each (e.g.
    /// `/sys/fs/cgroup/devices/kubepods`), persisted in `owned_file`.
    owned: Mutex<BTreeSet<PathBuf>>,
    owned_file: PathBuf,
    /// For pods whose request names no cgroup_parent (`cgroup_parent` in the config).
    default_parent: PathBuf,
    /// Held while making a cgroup path and while removing emptied parents: otherwise a
    /// parent that one pod's removal finds empty can go between another pod's mkdir of it
    /// (EEXIST) and its mkdir of the leaf below (ENOENT).
    tree: Mutex<()>,
}

/// What was made for one sandbox, for removal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRecord {
    /// Relative path below each hierarchy root, e.g. `kubepods/pod1/<id>`.
    pub rel: PathBuf,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Cgroup {
        path: path.to_owned(),
        source,
    }
}

impl Hierarchy {
    pub fn detect() -> Hierarchy {
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            return Hierarchy::V2 {
                root: root.to_owned(),
            };
        }
        let roots = fs::read_to_string("/proc/self/mountinfo")
            .map(|t| v1_roots(&t))
            .unwrap_or_default();
        Hierarchy::V1 { roots }
    }
}

impl Cgroups {
    pub fn new(
        hierarchy: Hierarchy,
        state_dir: &Path,
        default_parent: &str,
    ) -> Result<Cgroups, SandboxError> {
        let owned_file = state_dir.join("cgroup-parents.json");
        let recorded: BTreeSet<PathBuf> = store::read_json_opt(&owned_file)?.unwrap_or_default();
        let mut cgroups = Cgroups {
            hierarchy,
            driver: CgroupDriver::Cgroupfs,
            unit_marker: String::new(),
            owned: Mutex::default(),
            owned_file,
            default_parent: PathBuf::from(default_parent.trim_start_matches('/')),
            tree: Mutex::new(()),
        };
        // Earlier versions recorded relative paths, each claimed in every hierarchy.
        let owned = recorded
            .into_iter()
            .flat_map(|p| match p.is_absolute() {
                true => vec![p],
                false => cgroups.paths(&p),
            })
            .collect();
        *cgroups.owned.get_mut().expect("lock") = owned;
        Ok(cgroups)
    }

    pub fn version(&self) -> u8 {
        match self.hierarchy {
            Hierarchy::V1 { .. } => 1,
            Hierarchy::V2 { .. } => 2,
        }
    }

    fn roots(&self) -> Vec<&Path> {
        match &self.hierarchy {
            Hierarchy::V1 { roots } => roots.iter().map(PathBuf::as_path).collect(),
            Hierarchy::V2 { root } => vec![root.as_path()],
        }
    }

    /// Records that peapod made the parent cgroup `dir` (a directory of one hierarchy).
    fn own(&self, dir: &Path) -> Result<(), SandboxError> {
        let mut set = self.owned.lock().expect("lock");
        if set.insert(dir.to_owned()) {
            store::write_json(&self.owned_file, &*set)?;
        }
        Ok(())
    }

    /// Where the sandbox `id` with `parent` lives (whether or not it was made).
    pub fn record_for(&self, parent: &str, id: &str) -> CgroupRecord {
        let parent = if parent.is_empty() {
            &self.default_parent
        } else {
            Path::new(parent.trim_start_matches('/'))
        };
        CgroupRecord {
            rel: parent.join(id),
        }
    }

    /// Creates `<parent>/<id>` in every hierarchy. On error, what it made is removed again.
    pub fn create(&self, parent: &str, id: &str) -> Result<CgroupRecord, SandboxError> {
        let rec = self.record_for(parent, id);
        self.make(&rec).map(|()| rec)
    }

    /// Makes the cgroup `rec` (and the parents it lacks); on failure, nothing of it is left.
    pub fn make(&self, rec: &CgroupRecord) -> Result<(), SandboxError> {
        let r = self.make_dirs(&rec.rel);
        if r.is_err() {
            let _ = self.remove(rec);
        }
        r
    }

    /// Makes `rel` and the parents it lacks; on v2, every cgroup above `rel`, from the root
    /// down, hands all the controllers it has to its children.
    fn make_dirs(&self, rel: &Path) -> Result<(), SandboxError> {
        let _tree = self.tree.lock().expect("lock");
        let v2 = self.version() == 2;
        for root in self.roots() {
            let cpuset = root.join("cpuset.cpus").exists();
            let mut dir = root.to_path_buf();
            let mut rel_dir = PathBuf::new();
            for comp in rel.components() {
                let parent_dir = dir.clone();
                if v2 {
                    v2::enable_all(&parent_dir);
                }
                dir.push(comp);
                rel_dir.push(comp);
                match fs::create_dir(&dir) {
                    Ok(()) if rel_dir != rel => self.own(&dir)?,
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(err(&dir)(e)),
                }
                // Also for a parent someone else just made: it may not have its CPUs yet.
                if cpuset {
                    inherit_cpuset(&parent_dir, &dir)?;
                }
            }
        }
        Ok(())
    }

    /// The directory of `rel` in every hierarchy.
    pub fn paths(&self, rel: &Path) -> Vec<PathBuf> {
        self.roots()
            .into_iter()
            .map(|root| root.join(rel))
            .collect()
    }

    /// The directory of `rel` in every hierarchy, with the hierarchy's name under
    /// `/sys/fs/cgroup` (empty for the v2 unified hierarchy).
    pub fn dirs(&self, rel: &Path) -> Vec<(PathBuf, String)> {
        let v2 = self.version() == 2;
        self.roots()
            .into_iter()
            .map(|root| {
                let name = match (v2, root.file_name()) {
                    (false, Some(n)) => n.to_string_lossy().into_owned(),
                    _ => String::new(),
                };
                (root.join(rel), name)
            })
            .collect()
    }

    /// The pause's cgroup in the sandbox cgroup `rec`: the sandbox cgroup itself on v1, its
    /// [`PAUSE_LEAF`] on v2.
    pub fn pause_rel(&self, rec: &CgroupRecord) -> PathBuf {
        match self.hierarchy {
            Hierarchy::V1 { .. } => rec.rel.clone(),
            Hierarchy::V2 { .. } => rec.rel.join(PAUSE_LEAF),
        }
    }

    /// v1: the `tasks` file of the pause's cgroup in every hierarchy, for the pause to write 0
    /// into between clone and exec: moving the writing thread alone (the whole of a
    /// single-threaded child) skips the global threadgroup lock that a `cgroup.procs` write
    /// takes, whose first taking waits for an RCU grace period. v2 (no `tasks`): empty, and
    /// [`Cgroups::place`] does it.
    pub fn pause_tasks_files(&self, rec: &CgroupRecord) -> Vec<PathBuf> {
        if self.driver == CgroupDriver::Systemd {
            // The cgroup is made by systemd around the running pause (see `place`).
            return Vec::new();
        }
        match &self.hierarchy {
            Hierarchy::V1 { roots } => roots
                .iter()
                .map(|r| r.join(&rec.rel).join("tasks"))
                .collect(),
            Hierarchy::V2 { .. } => Vec::new(),
        }
    }

    /// The files a process writes 0 into to join the cgroup `rel` in every hierarchy: v1
    /// `tasks` (the writing thread alone: for a single-threaded process the same, without
    /// the cost of a `cgroup.procs` write, see [`Cgroups::pause_tasks_files`]), v2
    /// `cgroup.procs`.
    pub fn join_files(&self, rel: &Path) -> Vec<PathBuf> {
        let file = match self.hierarchy {
            Hierarchy::V1 { .. } => "tasks",
            Hierarchy::V2 { .. } => "cgroup.procs",
        };
        self.roots()
            .into_iter()
            .map(|root| root.join(rel).join(file))
            .collect()
    }

    /// Moves the pause `pid` into its cgroup (see [`Cgroups::pause_rel`]) in every hierarchy;
    /// with the systemd driver, after systemd has made the pod's scope around it.
    pub fn place(&self, rec: &CgroupRecord, pid: i32) -> Result<(), SandboxError> {
        if let Some(unit) = self.scope_unit(rec) {
            self.start_scope(rec, &unit, pid)?;
        }
        let rel = self.pause_rel(rec);
        if rel != rec.rel {
            // v2: a plain leaf below a cgroup that exists. Controllers are handed down once
            // the pause has left the pod's cgroup (with systemd it starts there, and a
            // cgroup with processes cannot).
            for root in self.roots() {
                let leaf = root.join(&rel);
                match fs::create_dir(&leaf) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(err(&leaf)(e));
                    }
                    _ => {}
                }
            }
        } else if self.driver == CgroupDriver::Systemd {
            // v1: the hierarchies whose controllers systemd does not manage.
            self.make_dirs(&rel)?;
        }
        for root in self.roots() {
            let procs = root.join(&rel).join("cgroup.procs");
            fs::write(&procs, pid.to_string()).map_err(err(&procs))?;
            if rel != rec.rel {
                // The pod's cgroup is empty now: it can hand its controllers down.
                v2::enable_all(&root.join(&rec.rel));
            }
        }
        Ok(())
    }

    /// Removes the cgroup `rec` (a sandbox's, with its pause leaf, or a container's) after
    /// killing what is left in it, then every parent peapod created that is now empty.
    pub fn remove(&self, rec: &CgroupRecord) -> Result<(), SandboxError> {
        let unit = self.scope_unit(rec);
        for root in self.roots() {
            let leaf = root.join(&rec.rel);
            kill_all(&leaf)?;
            rmdir_all(&[leaf.join(PAUSE_LEAF), leaf.join(MONITORS_LEAF)])?;
            if unit.is_none() {
                rmdir_all(&[leaf])?;
            }
        }
        if let Some(unit) = unit {
            // The scope's own cgroup is systemd's to remove; what is left of it then (a
            // hierarchy systemd does not manage) is ours.
            systemd::stop_unit(&unit)?;
            rmdir_all(&self.paths(&rec.rel))?;
        }
        let _tree = self.tree.lock().expect("lock");
        let mut owned = self.owned.lock().expect("lock");
        let mut changed = false;
        for root in self.roots() {
            let mut parent = rec.rel.parent();
            while let Some(rel) = parent.filter(|p| !p.as_os_str().is_empty()) {
                let dir = root.join(rel);
                if !owned.contains(&dir) {
                    break;
                }
                match fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // Other pods still live below it.
                    Err(_) => break,
                }
                owned.remove(&dir);
                changed = true;
                parent = rel.parent();
            }
        }
        if changed {
            store::write_json(&self.owned_file, &*owned)?;
        }
        Ok(())
    }
}

impl Cgroups {
    /// Sandbox cgroups (leaves named by a sandbox id) below the parents peapod made and its
    /// default parent, that `known` does not claim. (Parents the kubelet made are its own to
    /// clean.)
    pub fn orphans(&self, known: &dyn Fn(&str) -> bool) -> Vec<CgroupRecord> {
        let owned = self.owned.lock().expect("lock").clone();
        let mut found = self.orphan_scopes(known);
        for root in self.roots() {
            let mut parents: Vec<PathBuf> = owned
                .iter()
                .filter_map(|dir| dir.strip_prefix(root).ok())
                .map(Path::to_path_buf)
                .collect();
            parents.push(self.default_parent.clone());
            for parent in &parents {
                let Ok(entries) = fs::read_dir(root.join(parent)) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let rec = CgroupRecord {
                        rel: parent.join(&name),
                    };
                    if super::is_sandbox_id(&name)
                        && e.path().is_dir()
                        && !known(&name)
                        && !found.contains(&rec)
                    {
                        found.push(rec);
                    }
                }
            }
        }
        found
    }

    /// Removes a sandbox cgroup with everything below it (container cgroups), deepest first,
    /// after killing every process left in it, then the parents peapod made that are left
    /// empty.
    pub fn remove_tree(&self, rec: &CgroupRecord) -> Result<(), SandboxError> {
        for root in self.roots() {
            kill_all(&root.join(&rec.rel))?;
            let mut dirs = Vec::new();
            let mut stack = vec![root.join(&rec.rel)];
            while let Some(d) = stack.pop() {
                if let Ok(entries) = fs::read_dir(&d) {
                    stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
                dirs.push(d);
            }
            for d in dirs.iter().rev() {
                match rmdir_retrying(d) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(d)(e)),
                    _ => {}
                }
            }
        }
        self.remove(rec)
    }
}

/// Kills every process in `dir` and below: `cgroup.kill` where the kernel has it (v2, Linux
/// 5.14: atomic, so that nothing forked meanwhile escapes, and waited for until the cgroup is
/// empty), else a SIGKILL to each pid listed (v1). A cgroup that is gone is no error.
pub fn kill_all(dir: &Path) -> Result<(), SandboxError> {
    match v2::kill(dir) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(dir)(e)),
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Ok(entries) = fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    Ok(())
}

/// Removes each of `dirs` that is there (see [`rmdir_retrying`]).
fn rmdir_all(dirs: &[PathBuf]) -> Result<(), SandboxError> {
    for dir in dirs {
        match rmdir_retrying(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(dir)(e)),
            _ => {}
        }
    }
    Ok(())
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

    /// Plain directories stand in for two hierarchies: the create/remove bookkeeping, not the
    /// kernel (the integration tests use the real cgroupfs).
    fn fake(t: &Path) -> (Cgroups, PathBuf, PathBuf) {
        let (cpu, mem) = (t.join("cpu"), t.join("memory"));
        fs::create_dir_all(cpu.join("kubepods")).unwrap();
        fs::create_dir_all(mem.join("kubepods")).unwrap();
        let h = Hierarchy::V1 {
            roots: vec![cpu.clone(), mem.clone()],
        };
        (Cgroups::new(h, t, DEFAULT_PARENT).unwrap(), cpu, mem)
    }

    #[test]
    fn the_last_pod_out_removes_the_parents_peapod_made() {
        let t = tempfile::tempdir().unwrap();
        let (cg, cpu, mem) = fake(t.path());
        let a = cg.create("/kubepods/pod1", "a").unwrap();
        let b = cg.create("/kubepods/pod1", "b").unwrap();
        assert_eq!(a.rel, PathBuf::from("kubepods/pod1/a"));
        assert!(cpu.join("kubepods/pod1/b").is_dir() && mem.join("kubepods/pod1/b").is_dir());
        // a made the parent, but b is still in it.
        cg.remove(&a).unwrap();
        assert!(cpu.join("kubepods/pod1").is_dir());
        cg.remove(&b).unwrap();
        assert!(!cpu.join("kubepods/pod1").exists() && !mem.join("kubepods/pod1").exists());
        assert!(
            cpu.join("kubepods").exists(),
            "a parent peapod did not make stays"
        );
        cg.remove(&b).unwrap();
        // The bookkeeping survives a restart.
        let c = cg.create("", "c").unwrap();
        let (again, _, _) = fake(t.path());
        again.remove(&c).unwrap();
        assert!(!cpu.join(DEFAULT_PARENT).exists());
    }

    #[test]
    fn a_parent_made_by_someone_else_in_some_hierarchies_stays_there() {
        let t = tempfile::tempdir().unwrap();
        // As the kubelet does on v1: its pod cgroup in every hierarchy but devices.
        let roots: Vec<PathBuf> = ["cpu", "memory", "devices"]
            .iter()
            .map(|h| t.path().join(h))
            .collect();
        for r in &roots[..2] {
            fs::create_dir_all(r.join("kubepods/burstable/pod1")).unwrap();
        }
        fs::create_dir_all(&roots[2]).unwrap();
        let h = Hierarchy::V1 {
            roots: roots.clone(),
        };
        let cg = Cgroups::new(h.clone(), t.path(), DEFAULT_PARENT).unwrap();
        let a = cg.create("/kubepods/burstable/pod1", "a").unwrap();
        assert!(roots[2].join("kubepods/burstable/pod1/a").is_dir());
        // The record survives a restart.
        drop(cg);
        let cg = Cgroups::new(h, t.path(), DEFAULT_PARENT).unwrap();
        cg.remove(&a).unwrap();
        for r in &roots[..2] {
            assert!(r.join("kubepods/burstable/pod1").is_dir(), "{r:?}");
            assert!(!r.join("kubepods/burstable/pod1/a").exists(), "{r:?}");
        }
        assert!(
            !roots[2].join("kubepods").exists(),
            "what peapod made in devices goes"
        );
        assert!(cg.owned.lock().unwrap().is_empty());
    }

    #[test]
    fn parents_recorded_by_an_earlier_version_are_claimed_in_every_hierarchy() {
        let t = tempfile::tempdir().unwrap();
        store::write_json(
            &t.path().join("cgroup-parents.json"),
            &BTreeSet::from([PathBuf::from("mine")]),
        )
        .unwrap();
        let (cg, cpu, mem) = fake(t.path());
        let owned = cg.owned.lock().unwrap().clone();
        assert_eq!(owned, BTreeSet::from([cpu.join("mine"), mem.join("mine")]));
    }
}
