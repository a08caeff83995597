//! The systemd driver's side of [`Cgroups`]: a pod's cgroup is the scope `peapod-<id>.scope`
//! in the slice its request names (`kubepods-burstable-pod<uid>.slice`, at
//! `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`), made by
//! systemd around the pause with `Delegate=yes`; below it the pause's leaf and the monitors'
//! leaf, peapod's under systemd's delegation rules. Each container is a scope of its own
//! beside it, `peapod-<container id>.scope` in the same slice, with its limits as the
//! scope's properties (as runc makes `cri-containerd-<id>.scope`): its cgroup is made and
//! limited first, its process joins it, and systemd then takes the running process's
//! cgroup as the scope (see [`Cgroups::adopt`]).
//!
//! The record of a pod or a container exists before its scope, so a crash leaves no scope
//! that the start-up reconcile does not find; it also lists peapod's scopes and stops those
//! of this daemon (their description ends with its marker) that no record claims.

use std::path::{Path, PathBuf};

use super::{CgroupRecord, Cgroups, DEFAULT_PARENT, Hierarchy, systemd, systemd_path};
use crate::config::{CgroupDriver, Config};
use crate::sandbox::error::SandboxError;

/// With the systemd driver, the parent of pods whose request names none and whose config
/// sets none.
pub const DEFAULT_SLICE: &str = "peapod.slice";
const UNIT_PREFIX: &str = "peapod-";
const UNIT_SUFFIX: &str = ".scope";
const POD_DESCRIPTION: &str = "peapod pod sandbox";
const CONTAINER_DESCRIPTION: &str = "peapod container";

/// The scope unit of the pod `id`.
pub fn unit_name(id: &str) -> String {
    format!("{UNIT_PREFIX}{id}{UNIT_SUFFIX}")
}

/// The pod id in a scope unit's name, if it is one of peapod's.
fn unit_id(unit: &str) -> Option<&str> {
    let id = unit.strip_prefix(UNIT_PREFIX)?.strip_suffix(UNIT_SUFFIX)?;
    crate::sandbox::is_sandbox_id(id).then_some(id)
}

fn bad_parent(reason: String) -> SandboxError {
    SandboxError::invalid("linux.cgroup_parent", reason)
}

impl Cgroups {
    /// Switches to the systemd driver. The default parent must then be a slice; peapod's own
    /// default becomes [`DEFAULT_SLICE`]. `state_dir` marks this daemon's scopes.
    pub fn with_systemd(mut self, state_dir: &Path) -> Result<Cgroups, SandboxError> {
        let configured = self.default_parent.to_string_lossy().into_owned();
        let slice = match configured.as_str() {
            DEFAULT_PARENT => DEFAULT_SLICE.to_owned(),
            other => other.to_owned(),
        };
        systemd_path::expand_slice(&slice)
            .map_err(|reason| SandboxError::invalid("cgroup_parent", reason))?;
        self.default_parent = PathBuf::from(slice);
        self.driver = CgroupDriver::Systemd;
        self.unit_marker = format!("(peapod {})", state_dir.display());
        Ok(self)
    }

    /// The node's cgroups as `cfg` says: its hierarchy, and the driver it names, or when it
    /// names none, systemd where systemd is PID 1 and answers on the system bus.
    pub fn for_node(cfg: &Config) -> Result<Cgroups, SandboxError> {
        let cgroups = Cgroups::new(Hierarchy::detect(), &cfg.state_dir, &cfg.cgroup_parent)?;
        let systemd = match cfg.cgroup_driver {
            Some(CgroupDriver::Cgroupfs) => false,
            Some(CgroupDriver::Systemd) if !systemd::available() => {
                return Err(SandboxError::invalid(
                    "cgroup_driver",
                    "systemd is not PID 1 of peapod's PID namespace or does not answer on \
                     the system bus",
                ));
            }
            Some(CgroupDriver::Systemd) => true,
            None => systemd::available(),
        };
        match systemd {
            true => cgroups.with_systemd(&cfg.state_dir),
            false => Ok(cgroups),
        }
    }

    /// For the containerd shim on a node that runs systemd: cgroups named as scopes in
    /// slices (containerd's `slice:prefix:name`) become systemd's scope units (see
    /// [`Cgroups::adopt`]); plain paths stay plain cgroupfs directories.
    pub fn with_systemd_scopes(mut self) -> Cgroups {
        self.driver = CgroupDriver::Systemd;
        self
    }

    pub fn driver(&self) -> CgroupDriver {
        self.driver
    }

    /// A request's `cgroup_parent` (empty: the default). With the systemd driver it is a
    /// slice name, as the kubelet sends it; with cgroupfs a path (one ending in `.slice` is a
    /// directory of that name, as runc takes it).
    pub fn check_parent(&self, parent: &str) -> Result<(), SandboxError> {
        if self.driver == CgroupDriver::Systemd && !parent.is_empty() {
            systemd_path::expand_slice(parent)
                .map_err(|e| bad_parent(format!("{e} (the systemd cgroup driver is in use)")))?;
        }
        Ok(())
    }

    /// Where the pod `id` with `parent` lives (whether or not it was made): `<parent>/<id>`,
    /// or with the systemd driver its scope in the slice `parent`.
    pub fn sandbox_record(&self, parent: &str, id: &str) -> Result<CgroupRecord, SandboxError> {
        if self.driver == CgroupDriver::Cgroupfs {
            return Ok(self.record_for(parent, id));
        }
        let slice = match parent {
            "" => self.default_parent.to_string_lossy().into_owned(),
            p => p.to_owned(),
        };
        let dir = systemd_path::expand_slice(&slice).map_err(bad_parent)?;
        Ok(CgroupRecord {
            rel: dir.join(unit_name(id)),
        })
    }

    /// Makes the pod `id`'s cgroup: now with cgroupfs; with systemd it is made around the
    /// pause (see [`Cgroups::place`]).
    pub fn create_sandbox(&self, parent: &str, id: &str) -> Result<CgroupRecord, SandboxError> {
        match self.driver {
            CgroupDriver::Cgroupfs => self.create(parent, id),
            CgroupDriver::Systemd => self.sandbox_record(parent, id),
        }
    }

    /// Where the container `id` of the pod whose cgroup is `pod` lives: `<pod>/<id>` with
    /// cgroupfs, its scope beside the pod's in the pod's slice with systemd.
    pub fn container_record(&self, pod: &CgroupRecord, id: &str) -> CgroupRecord {
        match (self.driver, self.scope_unit(pod)) {
            (CgroupDriver::Systemd, Some(_)) => CgroupRecord {
                rel: pod.rel.with_file_name(unit_name(id)),
            },
            _ => self.record_for(&pod.rel.to_string_lossy(), id),
        }
    }

    /// The scope unit whose cgroup `rec` is, with the systemd driver: a `.scope` directly
    /// in a `.slice` (peapod's own, or a containerd task's `cri-containerd-<id>.scope`).
    pub fn scope_unit(&self, rec: &CgroupRecord) -> Option<String> {
        let name = rec.rel.file_name()?.to_str()?;
        let slice = rec.rel.parent().and_then(Path::file_name);
        let in_slice = slice.is_none_or(|s| s.to_string_lossy().ends_with(".slice"));
        (self.driver == CgroupDriver::Systemd
            && name.ends_with(UNIT_SUFFIX)
            && name.len() > UNIT_SUFFIX.len()
            && in_slice)
            .then(|| name.to_owned())
    }

    /// The slice unit that `rec`'s cgroup lies in.
    fn slice_of(rec: &CgroupRecord) -> String {
        rec.rel.parent().and_then(Path::file_name).map_or_else(
            || "-.slice".to_owned(),
            |s| s.to_string_lossy().into_owned(),
        )
    }

    /// Asks systemd for the pod scope `unit` around the pause `pid`, in the slice that `rec`
    /// lies in.
    pub(super) fn start_scope(
        &self,
        rec: &CgroupRecord,
        unit: &str,
        pid: i32,
    ) -> Result<(), SandboxError> {
        let id = unit_id(unit).unwrap_or(unit);
        let description = format!("{POD_DESCRIPTION} {id} {}", self.unit_marker);
        systemd::start_scope(&systemd::Scope {
            unit,
            slice: &Self::slice_of(rec),
            pid: pid as u32,
            description: &description,
            limits: &[],
        })?;
        crate::fault::point("run:scope");
        Ok(())
    }

    /// With the systemd driver, makes the cgroup `rec` (made and limited through cgroupfs,
    /// with `pid` running in it) a scope unit of systemd's with `limits` as its properties;
    /// systemd takes the existing cgroup as the scope's. `what` names it in the unit's
    /// description: a container's id, or for another client (the shim) a whole
    /// description. Nothing to do with cgroupfs.
    pub fn adopt(
        &self,
        rec: &CgroupRecord,
        pid: i32,
        what: &str,
        limits: &[systemd::Property],
    ) -> Result<(), SandboxError> {
        let Some(unit) = self.scope_unit(rec) else {
            return Ok(());
        };
        let description = match unit_id(&unit) {
            Some(id) => format!("{CONTAINER_DESCRIPTION} {id} {}", self.unit_marker),
            None => what.to_owned(),
        };
        systemd::start_scope(&systemd::Scope {
            unit: &unit,
            slice: &Self::slice_of(rec),
            pid: pid as u32,
            description: &description,
            limits,
        })?;
        Ok(())
    }

    /// With the systemd driver, sets new `limits` on the scope `rec` (gone or never made: no
    /// error; the cgroup files are what counts until then).
    pub fn set_unit_limits(
        &self,
        rec: &CgroupRecord,
        limits: &[systemd::Property],
    ) -> Result<(), SandboxError> {
        match self.scope_unit(rec) {
            Some(unit) => Ok(systemd::set_properties(&unit, limits)?),
            None => Ok(()),
        }
    }

    /// This daemon's pod scopes (by the marker in their description) of pods `known` does
    /// not claim, as records to remove. A scope without a cgroup (not running) is left to
    /// systemd, which collects it.
    pub(super) fn orphan_scopes(&self, known: &dyn Fn(&str) -> bool) -> Vec<CgroupRecord> {
        self.orphans_described(POD_DESCRIPTION, known)
    }

    /// This daemon's container scopes of containers `known` does not claim.
    pub fn orphan_container_scopes(&self, known: &dyn Fn(&str) -> bool) -> Vec<CgroupRecord> {
        self.orphans_described(CONTAINER_DESCRIPTION, known)
    }

    fn orphans_described(&self, what: &str, known: &dyn Fn(&str) -> bool) -> Vec<CgroupRecord> {
        if self.driver != CgroupDriver::Systemd {
            return Vec::new();
        }
        let units = match systemd::list_scopes(&format!("{UNIT_PREFIX}*{UNIT_SUFFIX}")) {
            Ok(units) => units,
            Err(e) => {
                tracing::warn!(error = %crate::errors::chain(&e), "cannot list peapod's scopes");
                return Vec::new();
            }
        };
        units
            .into_iter()
            .filter(|u| u.description.ends_with(&self.unit_marker))
            .filter(|u| u.description.starts_with(&format!("{what} ")))
            .filter(|u| unit_id(&u.name).is_some_and(|id| !known(id)))
            .filter(|u| Path::new(&u.cgroup).file_name() == Some(u.name.as_ref()))
            .map(|u| CgroupRecord {
                rel: PathBuf::from(u.cgroup),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::cgroup::MONITORS_LEAF;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn systemd(t: &Path, default_parent: &str) -> Result<Cgroups, SandboxError> {
        let h = Hierarchy::V2 {
            root: t.join("unified"),
        };
        Cgroups::new(h, t, default_parent)?.with_systemd(Path::new("/var/lib/peapod"))
    }

    #[test]
    fn a_pod_is_a_scope_in_the_slice_it_names() {
        let t = tempfile::tempdir().unwrap();
        let cg = systemd(t.path(), DEFAULT_PARENT).unwrap();
        let rec = cg
            .sandbox_record("kubepods-burstable-pod1.slice", ID)
            .unwrap();
        assert_eq!(
            rec.rel,
            PathBuf::from(format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/\
                 peapod-{ID}.scope"
            ))
        );
        assert_eq!(cg.scope_unit(&rec), Some(format!("peapod-{ID}.scope")));
        // A container is a scope beside it; the leaves below it are not units.
        let ctr = cg.container_record(&rec, &ID.replace('0', "f"));
        assert_eq!(
            ctr.rel,
            rec.rel
                .with_file_name(format!("peapod-{}.scope", ID.replace('0', "f")))
        );
        assert!(cg.scope_unit(&ctr).is_some());
        let leaf = cg.record_for(&rec.rel.to_string_lossy(), MONITORS_LEAF);
        assert_eq!(cg.scope_unit(&leaf), None);
        // A containerd task's scope in its slice is one too.
        let task = cg.record_for("kubepods.slice", "cri-containerd-c1.scope");
        assert_eq!(cg.scope_unit(&task), Some("cri-containerd-c1.scope".into()));
        assert_eq!(
            cg.sandbox_record("", ID).unwrap().rel,
            PathBuf::from(format!("peapod.slice/peapod-{ID}.scope"))
        );
        // Nothing is made before the pause runs.
        cg.create_sandbox("", ID).unwrap();
        assert!(!t.path().join("unified/peapod.slice").exists());
        assert!(cg.pause_tasks_files(&rec).is_empty());
    }

    #[test]
    fn with_systemd_parents_are_slices() {
        let t = tempfile::tempdir().unwrap();
        let cg = systemd(t.path(), DEFAULT_PARENT).unwrap();
        assert_eq!(cg.driver(), CgroupDriver::Systemd);
        assert!(cg.check_parent("kubepods-besteffort-pod2.slice").is_ok());
        assert!(cg.check_parent("").is_ok());
        for bad in ["/kubepods/besteffort", "kubepods--x.slice", "a/b.slice"] {
            let e = cg.check_parent(bad).unwrap_err();
            assert!(
                matches!(&e, SandboxError::Invalid { field, .. } if field == "linux.cgroup_parent"),
                "{bad}: {e:?}"
            );
        }
        assert!(systemd(t.path(), "my.slice").is_ok());
        assert!(systemd(t.path(), "kubepods/besteffort").is_err());
        // cgroupfs takes a slice's name as a directory.
        let h = Hierarchy::V2 {
            root: t.path().join("unified"),
        };
        let fs = Cgroups::new(h, t.path(), DEFAULT_PARENT).unwrap();
        assert!(fs.check_parent("kubepods-besteffort-pod2.slice").is_ok());
        assert_eq!(
            fs.sandbox_record("kubepods.slice", ID).unwrap().rel,
            PathBuf::from(format!("kubepods.slice/{ID}"))
        );
        assert_eq!(fs.scope_unit(&fs.record_for("", &unit_name(ID))), None);
        let pod = fs.sandbox_record("kubepods.slice", ID).unwrap();
        assert_eq!(
            fs.container_record(&pod, "c1").rel,
            PathBuf::from(format!("kubepods.slice/{ID}/c1"))
        );
    }

    #[test]
    fn unit_names_carry_the_pod_id() {
        assert_eq!(unit_id(&unit_name(ID)), Some(ID));
        assert_eq!(unit_id("peapod.service"), None);
        assert_eq!(unit_id("peapod-monitors.scope"), None);
        assert_eq!(unit_id(&format!("cri-containerd-{ID}.scope")), None);
    }
}
