//! `linux.devices` (nodes made in the container) and `linux.resources.devices` (the device
//! cgroup's rules, runc's defaults appended, as runc reads them). containerd's spec starts
//! with `deny a`, then allows what it grants; a privileged container's allows all and lists
//! the node's devices.

use oci_spec::runtime::{LinuxDeviceType, Spec};

use peapod::container::devices::{self, Access, DevType, DeviceNode, DeviceRule};

use super::{OciError, invalid};

fn number(field: &str, v: i64) -> Result<u32, OciError> {
    u32::try_from(v).map_err(|_| invalid(field, format!("{v} is no device number")))
}

/// `linux.devices`: character and block devices (`u` is a character device).
pub fn nodes(spec: &Spec) -> Result<Vec<DeviceNode>, OciError> {
    let list = spec.linux().as_ref().and_then(|l| l.devices().clone());
    let mut out = Vec::new();
    for d in list.unwrap_or_default() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => DevType::Char,
            LinuxDeviceType::B => DevType::Block,
            other => {
                return Err(invalid(
                    "linux.devices.type",
                    format!("{:?} is not a block or character device", other.as_str()),
                ));
            }
        };
        let path = d.path().display().to_string();
        if !path.starts_with('/') {
            return Err(invalid(
                "linux.devices.path",
                format!("{path:?} is not absolute"),
            ));
        }
        out.push(DeviceNode {
            path,
            kind,
            major: number("linux.devices.major", d.major())?,
            minor: number("linux.devices.minor", d.minor())?,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    Ok(out)
}

/// `linux.resources.devices` in order, then runc's defaults.
pub fn rules(spec: &Spec) -> Result<Vec<DeviceRule>, OciError> {
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().clone());
    let field = "linux.resources.devices";
    let mut out = Vec::new();
    for r in list.unwrap_or_default() {
        let kind = match r.typ().unwrap_or_default() {
            LinuxDeviceType::A => DevType::All,
            LinuxDeviceType::C | LinuxDeviceType::U => DevType::Char,
            LinuxDeviceType::B => DevType::Block,
            LinuxDeviceType::P => return Err(invalid(field, "type p has no cgroup rule")),
        };
        // A negative number is runc's wildcard too.
        let wildcard = |v: Option<i64>| match v {
            Some(n) if n >= 0 => number(field, n).map(Some),
            _ => Ok(None),
        };
        let access = Access::parse(r.access().as_deref().unwrap_or(""))
            .map_err(|e| invalid(field, e.to_string()))?;
        out.push(DeviceRule {
            allow: r.allow(),
            kind,
            major: wildcard(r.major())?,
            minor: wildcard(r.minor())?,
            access,
        });
    }
    Ok(devices::oci_rules(&out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::Effective;

    fn spec(linux: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({ "ociVersion": "1.0.2", "linux": linux }))
            .unwrap()
    }

    #[test]
    fn containerds_default_spec_is_runcs_default_list() {
        let s = spec(serde_json::json!({
            "resources": { "devices": [ { "allow": false, "access": "rwm" } ] },
            "devices": [ { "path": "/dev/granted", "type": "b", "major": 7, "minor": 3,
                           "fileMode": 0o660, "uid": 0, "gid": 6 } ]
        }));
        let e = Effective::new(&rules(&s).unwrap());
        assert!(!e.default_allow);
        assert_eq!(e.list()[..3], ["c *:* m", "b *:* m", "c 1:3 rwm"]);
        let n = nodes(&s).unwrap();
        assert_eq!(
            (n[0].kind, n[0].major, n[0].minor, n[0].mode),
            (DevType::Block, 7, 3, 0o660)
        );
        // No rules at all: deny-all plus the defaults, as runc does.
        let none = Effective::new(&rules(&spec(serde_json::json!({}))).unwrap());
        assert_eq!(none.list(), e.list());
        // Privileged: allow all.
        let all = spec(serde_json::json!({
            "resources": { "devices": [ { "allow": true, "access": "rwm" } ] }
        }));
        assert_eq!(Effective::new(&rules(&all).unwrap()).list(), ["a *:* rwm"]);
    }

    #[test]
    fn bad_rules_and_nodes_are_refused() {
        for bad in [
            serde_json::json!({"resources": {"devices": [{"allow": true, "access": "rwx"}]}}),
            serde_json::json!({"resources": {"devices": [{"allow": true}]}}),
            serde_json::json!({"devices": [{"path": "/dev/p", "type": "p"}]}),
            serde_json::json!({"devices": [{"path": "dev/x", "type": "c", "major": 1}]}),
        ] {
            let s = spec(bad.clone());
            assert!(rules(&s).is_err() || nodes(&s).is_err(), "{bad}");
        }
    }
}
