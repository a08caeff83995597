//! Which devices a container may use: the device cgroup's rules and the nodes in its `/dev`.
//!
//! The rules are runc's: whatever the container's spec says (for a CRI container: deny all,
//! then allow each granted device with its permissions; allow all when privileged), with
//! runc's default list appended (mknod of any device, the standard character devices,
//! `/dev/pts/*`, `/dev/ptmx`, `/dev/net/tun`). They are reduced the way cgroup v1 reduces
//! them ([`Effective`]: a default plus exceptions) and written before the container's init
//! joins its cgroup: on v1 into `devices.deny` / `devices.allow`, on v2 as a
//! BPF_CGROUP_DEVICE program attached to the container's cgroup (`bpf`).

mod bpf;
pub mod host;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::launch::CgroupDir;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid device permissions {permissions:?}: one or more of r, w and m")]
    Permissions { permissions: String },
    #[error("device {path} does not exist on the node")]
    Missing {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a device node")]
    NotADevice { path: String },
    #[error("cannot read the devices under {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {rule:?} into {path}")]
    Cgroup {
        rule: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what} the device program of cgroup {path}{log}")]
    Bpf {
        what: &'static str,
        path: PathBuf,
        log: String,
        #[source]
        source: std::io::Error,
    },
}

impl DeviceError {
    /// Whether the request is at fault (bad permissions, a host path that is no device).
    pub fn is_invalid(&self) -> bool {
        matches!(
            self,
            DeviceError::Permissions { .. }
                | DeviceError::Missing { .. }
                | DeviceError::NotADevice { .. }
        )
    }
}

/// A rule's device type: `a` (all), `c`, `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DevType {
    #[serde(rename = "a")]
    All,
    #[serde(rename = "c")]
    Char,
    #[serde(rename = "b")]
    Block,
}

impl DevType {
    fn letter(self) -> char {
        match self {
            DevType::All => 'a',
            DevType::Char => 'c',
            DevType::Block => 'b',
        }
    }
}

/// Access to a device: bits as the BPF device context has them (mknod 1, read 2, write 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Access(u8);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const READ: Access = Access(2);
    pub const WRITE: Access = Access(4);
    pub const ALL: Access = Access(7);

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `r`, `w` and `m` in any order, at least one; anything else is refused.
    pub fn parse(s: &str) -> Result<Access, DeviceError> {
        let bad = || DeviceError::Permissions {
            permissions: s.to_owned(),
        };
        let mut bits = 0;
        for c in s.chars() {
            bits |= match c {
                'r' => Access::READ.0,
                'w' => Access::WRITE.0,
                'm' => Access::MKNOD.0,
                _ => return Err(bad()),
            };
        }
        if bits == 0 {
            return Err(bad());
        }
        Ok(Access(bits))
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, c) in [
            (Access::READ, 'r'),
            (Access::WRITE, 'w'),
            (Access::MKNOD, 'm'),
        ] {
            if self.0 & bit.0 != 0 {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl TryFrom<String> for Access {
    type Error = DeviceError;
    fn try_from(s: String) -> Result<Access, DeviceError> {
        Access::parse(&s)
    }
}

impl From<Access> for String {
    fn from(a: Access) -> String {
        a.to_string()
    }
}

/// One device cgroup rule; `None` for a major or minor is the wildcard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: DevType,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl DeviceRule {
    pub const fn allow(kind: DevType, major: Option<u32>, minor: Option<u32>, bits: u8) -> Self {
        DeviceRule {
            allow: true,
            kind,
            major,
            minor,
            access: Access(bits),
        }
    }

    /// The same device (type and numbers), whatever the access.
    fn same_device(&self, other: &DeviceRule) -> bool {
        (self.kind, self.major, self.minor) == (other.kind, other.major, other.minor)
    }
}

/// As `devices.list` and `devices.allow` write it: `c 1:3 rwm`, `b *:* m`.
impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |v: Option<u32>| v.map_or("*".to_owned(), |v| v.to_string());
        let (major, minor) = (n(self.major), n(self.minor));
        write!(f, "{} {major}:{minor} {}", self.kind.letter(), self.access)
    }
}

const RWM: u8 = 7;

/// runc's default list (libcontainer/specconv `AllowedDevices`), appended to every
/// container's rules.
pub const RUNC_DEFAULTS: [DeviceRule; 11] = [
    DeviceRule::allow(DevType::Char, None, None, 1),
    DeviceRule::allow(DevType::Block, None, None, 1),
    DeviceRule::allow(DevType::Char, Some(1), Some(3), RWM), // null
    DeviceRule::allow(DevType::Char, Some(1), Some(8), RWM), // random
    DeviceRule::allow(DevType::Char, Some(1), Some(7), RWM), // full
    DeviceRule::allow(DevType::Char, Some(5), Some(0), RWM), // tty
    DeviceRule::allow(DevType::Char, Some(1), Some(5), RWM), // zero
    DeviceRule::allow(DevType::Char, Some(1), Some(9), RWM), // urandom
    DeviceRule::allow(DevType::Char, Some(136), None, RWM),  // /dev/pts/*
    DeviceRule::allow(DevType::Char, Some(5), Some(2), RWM), // ptmx
    DeviceRule::allow(DevType::Char, Some(10), Some(200), RWM), // net/tun
];

/// A device node made in the container, at `path` (absolute, in the container).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    pub path: String,
    pub kind: DevType,
    pub major: u32,
    pub minor: u32,
    /// Permission bits (`0o666`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl DeviceNode {
    /// The rule that lets the container use this node with `access`.
    pub fn rule(&self, access: Access) -> DeviceRule {
        DeviceRule {
            allow: true,
            kind: self.kind,
            major: Some(self.major),
            minor: Some(self.minor),
            access,
        }
    }
}

/// A CRI container's rules: everything when privileged; otherwise deny all, then the granted
/// devices, then runc's defaults (containerd's spec, as runc reads it).
pub fn cri_rules(privileged: bool, granted: &[DeviceRule]) -> Vec<DeviceRule> {
    let all = |allow| DeviceRule {
        allow,
        kind: DevType::All,
        major: None,
        minor: None,
        access: Access::ALL,
    };
    if privileged {
        return vec![all(true)];
    }
    let mut rules = vec![all(false)];
    rules.extend_from_slice(granted);
    rules.extend_from_slice(&RUNC_DEFAULTS);
    rules
}

/// An OCI spec's rules with runc's defaults appended, as runc does.
pub fn oci_rules(spec: &[DeviceRule]) -> Vec<DeviceRule> {
    let mut rules = spec.to_vec();
    rules.extend_from_slice(&RUNC_DEFAULTS);
    rules
}

/// The state the rules leave a v1 device cgroup in (the kernel's semantics, which the v2
/// program reproduces): a default, and exceptions to it. An `a` rule sets the default and
/// clears the exceptions; a rule against the default adds (or widens) an exception; a rule
/// with the default narrows or removes an exception of the same device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub default_allow: bool,
    pub exceptions: Vec<DeviceRule>,
}

impl Effective {
    /// Starting from deny-all, as runc does: rules that name no `a` rule allow only what they
    /// allow.
    pub fn new(rules: &[DeviceRule]) -> Effective {
        let mut e = Effective {
            default_allow: false,
            exceptions: Vec::new(),
        };
        for r in rules {
            e.apply(r);
        }
        e
    }

    fn apply(&mut self, r: &DeviceRule) {
        if r.kind == DevType::All {
            self.default_allow = r.allow;
            self.exceptions.clear();
        } else if r.allow != self.default_allow {
            match self.exceptions.iter_mut().find(|x| x.same_device(r)) {
                Some(x) => x.access.0 |= r.access.0,
                None => self.exceptions.push(DeviceRule {
                    allow: r.allow,
                    ..*r
                }),
            }
        } else {
            for x in self.exceptions.iter_mut().filter(|x| x.same_device(r)) {
                x.access.0 &= !r.access.0;
            }
            self.exceptions.retain(|x| !x.access.is_empty());
        }
    }

    /// What a v1 cgroup's `devices.list` shows for it.
    pub fn list(&self) -> Vec<String> {
        match (self.default_allow, self.exceptions.is_empty()) {
            (true, true) => vec!["a *:* rwm".into()],
            _ => self.exceptions.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Writes `rules` into the container's cgroup in every hierarchy that controls devices (a
/// v1 `devices` hierarchy, the v2 unified one), before anything of the container is in it.
pub fn apply(cgroups: &[CgroupDir], rules: &[DeviceRule]) -> Result<(), DeviceError> {
    let effective = Effective::new(rules);
    for c in cgroups {
        if c.name.is_empty() {
            bpf::attach(&c.path, &effective)?;
        } else if c.path.join("devices.deny").exists() {
            write_v1(&c.path, &effective)?;
        }
    }
    Ok(())
}

/// v1: the default first (`a` into `devices.deny` or `devices.allow`, which clears every
/// exception), then each exception into the other file.
fn write_v1(dir: &Path, e: &Effective) -> Result<(), DeviceError> {
    let (default_file, exception_file) = if e.default_allow {
        ("devices.allow", "devices.deny")
    } else {
        ("devices.deny", "devices.allow")
    };
    let write = |file: &str, rule: String| {
        let path = dir.join(file);
        std::fs::write(&path, &rule).map_err(|source| DeviceError::Cgroup { rule, path, source })
    };
    write(default_file, "a".into())?;
    for x in &e.exceptions {
        write(exception_file, x.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_are_r_w_m_only() {
        assert_eq!(Access::parse("rwm").unwrap(), Access::ALL);
        assert_eq!(Access::parse("mr").unwrap().to_string(), "rm");
        assert_eq!(Access::parse("w").unwrap(), Access::WRITE);
        for bad in ["", "rwx", "R", " r", "rw,"] {
            assert!(
                matches!(Access::parse(bad), Err(DeviceError::Permissions { .. })),
                "{bad:?}"
            );
        }
        let json = serde_json::to_string(&Access::parse("wr").unwrap()).unwrap();
        assert_eq!(json, "\"rw\"");
        assert!(serde_json::from_str::<Access>("\"rx\"").is_err());
    }

    #[test]
    fn a_default_container_gets_runcs_list() {
        let e = Effective::new(&cri_rules(false, &[]));
        assert!(!e.default_allow);
        assert_eq!(
            e.list(),
            [
                "c *:* m",
                "b *:* m",
                "c 1:3 rwm",
                "c 1:8 rwm",
                "c 1:7 rwm",
                "c 5:0 rwm",
                "c 1:5 rwm",
                "c 1:9 rwm",
                "c 136:* rwm",
                "c 5:2 rwm",
                "c 10:200 rwm"
            ]
        );
        let p = Effective::new(&cri_rules(true, &[]));
        assert_eq!(p.list(), ["a *:* rwm"]);
    }

    #[test]
    fn granted_devices_join_the_list_and_rules_combine_as_in_v1() {
        let node = DeviceNode {
            path: "/dev/granted".into(),
            kind: DevType::Block,
            major: 7,
            minor: 3,
            mode: 0o660,
            uid: 0,
            gid: 6,
        };
        let e = Effective::new(&cri_rules(false, &[node.rule(Access::READ)]));
        assert_eq!(e.list()[0], "b 7:3 r");
        // Widening, narrowing, and an `a` rule that starts over.
        let c = |allow, bits| DeviceRule {
            allow,
            ..DeviceRule::allow(DevType::Char, Some(10), Some(232), bits)
        };
        let deny_all = DeviceRule {
            allow: false,
            ..DeviceRule::allow(DevType::All, None, None, RWM)
        };
        let e = Effective::new(&[deny_all, c(true, 2), c(true, 4), c(false, 2)]);
        assert_eq!(e.list(), ["c 10:232 w"]);
        let e = Effective::new(&[deny_all, c(true, 2), c(false, 2)]);
        assert!(e.list().is_empty() && !e.default_allow);
        // No `a` rule: deny-all is the start.
        let e = Effective::new(&[c(true, RWM)]);
        assert_eq!(
            (e.default_allow, e.list()),
            (false, vec!["c 10:232 rwm".into()])
        );
        // On allow-all, a deny is an exception; an allow of the same removes it.
        let allow_all = DeviceRule::allow(DevType::All, None, None, RWM);
        let e = Effective::new(&[allow_all, c(false, RWM)]);
        assert_eq!(
            (e.default_allow, e.list()),
            (true, vec!["c 10:232 rwm".into()])
        );
        let e = Effective::new(&[allow_all, c(false, RWM), c(true, RWM)]);
        assert_eq!(e.list(), ["a *:* rwm"]);
        // runc's defaults follow an OCI spec's own rules.
        let oci = oci_rules(&[deny_all]);
        assert_eq!(oci.len(), RUNC_DEFAULTS.len() + 1);
    }

    #[test]
    fn v1_files_get_the_default_then_the_exceptions() {
        let t = tempfile::tempdir().unwrap();
        for f in ["devices.allow", "devices.deny"] {
            std::fs::write(t.path().join(f), "").unwrap();
        }
        let e = Effective::new(&cri_rules(false, &[]));
        write_v1(t.path(), &e).unwrap();
        // A plain file keeps the last write only: the last exception.
        let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap();
        assert_eq!(read("devices.deny"), "a");
        assert_eq!(read("devices.allow"), "c 10:200 rwm");
    }
}
