//! The systemd driver's side of [`Cgroups`]: a pod's cgroup is the scope `peapod-<id>.scope`
//! in the slice its request names (`kubepods-burstable-pod<uid>.slice`, at
//! `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`), made by
//! systemd around the pause with `Delegate=yes`. Below it everything is as with cgroupfs: the
//! pause's leaf, the monitors' leaf, the containers' cgroups with their limits, all
//! peapod's under systemd's delegation rules, so that a container start costs no D-Bus call.
//!
//! The record of a pod exists before its scope (it is written as `Creating`), so a crash
//! leaves no scope that the start-up reconcile does not find; it also lists peapod's scopes
//! and stops those of this daemon (their description ends with its marker) that no record
//! claims.

use std::path::{Path, PathBuf};

use super::{CgroupRecord, Cgroups, DEFAULT_PARENT, Hierarchy, systemd, systemd_path};
use crate::config::{CgroupDriver, Config};
use crate::sandbox::error::SandboxError;

/// With the systemd driver, the parent of pods whose request names none and whose config
/// sets none.
pub const DEFAULT_SLICE: &str = "peapod.slice";
const UNIT_PREFIX: &str = "peapod-";
const UNIT_SUFFIX: &str = ".scope";

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

    /// The scope unit whose cgroup `rec` is, with the systemd driver.
    pub(super) fn scope_unit(&self, rec: &CgroupRecord) -> Option<String> {
        let name = rec.rel.file_name()?.to_str()?;
        (self.driver == CgroupDriver::Systemd && unit_id(name).is_some()).then(|| name.to_owned())
    }

    /// Asks systemd for the scope `unit` around `pid`, in the slice that `rec` lies in.
    pub(super) fn start_scope(
        &self,
        rec: &CgroupRecord,
        unit: &str,
        pid: i32,
    ) -> Result<(), SandboxError> {
        let slice = rec.rel.parent().and_then(Path::file_name).map_or_else(
            || "-.slice".to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
        let id = unit_id(unit).unwrap_or(unit);
        let description = format!("peapod pod sandbox {id} {}", self.unit_marker);
        systemd::start_scope(&systemd::Scope {
            unit,
            slice: &slice,
            pid: pid as u32,
            description: &description,
        })?;
        crate::fault::point("run:scope");
        Ok(())
    }

    /// This daemon's scopes (by the marker in their description) of pods `known` does not
    /// claim, as records to remove. A scope without a cgroup (not running) is left to
    /// systemd, which collects it.
    pub(super) fn orphan_scopes(&self, known: &dyn Fn(&str) -> bool) -> Vec<CgroupRecord> {
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
        // Containers are cgroups below it, not units.
        let ctr = cg.record_for(&rec.rel.to_string_lossy(), "c1");
        assert_eq!(cg.scope_unit(&ctr), None);
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
    }

    #[test]
    fn unit_names_carry_the_pod_id() {
        assert_eq!(unit_id(&unit_name(ID)), Some(ID));
        assert_eq!(unit_id("peapod.service"), None);
        assert_eq!(unit_id("peapod-monitors.scope"), None);
        assert_eq!(unit_id(&format!("cri-containerd-{ID}.scope")), None);
    }
}
