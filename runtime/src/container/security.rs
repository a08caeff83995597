//! Capabilities and /proc masking: the defaults containerd and Docker give, and the CRI
//! request's changes to them.

use std::str::FromStr;

use caps::Capability;

/// The capability set containerd and Docker give a container by default.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// CRI's default masked paths (used when the request names none and is not privileged).
pub const DEFAULT_MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// CRI's default read-only paths.
pub const DEFAULT_READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown capability {0:?}")]
pub struct UnknownCap(pub String);

/// `CHOWN`, `cap_chown` or `CAP_CHOWN` → `CAP_CHOWN`.
pub fn parse_cap(name: &str) -> Result<Capability, UnknownCap> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    Capability::from_str(&full).map_err(|_| UnknownCap(name.to_owned()))
}

fn is_all(s: &str) -> bool {
    s.eq_ignore_ascii_case("ALL")
}

/// The container's capability names: all (that the runtime has) for privileged containers,
/// otherwise the defaults
/// with the request's drops (`ALL` drops every default) and adds (`ALL` adds every one) applied,
/// in containerd's order. Sorted and deduplicated.
pub fn capabilities(
    privileged: bool,
    add: &[String],
    drop: &[String],
) -> Result<Vec<String>, UnknownCap> {
    // "All" is what this process may hand out: its bounding set (as containerd does for
    // privileged containers). A host whose root lacks a capability (here CAP_SYS_RESOURCE)
    // would otherwise fail every privileged start with EPERM from capset.
    let bounding = caps::read(None, caps::CapSet::Bounding).unwrap_or_else(|_| caps::all());
    let all: Vec<Capability> = caps::all()
        .into_iter()
        .filter(|c| bounding.contains(c))
        .collect();
    let mut set: Vec<Capability> = if privileged || add.iter().any(|a| is_all(a)) {
        all.clone()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| parse_cap(c).expect("known"))
            .collect()
    };
    if !privileged {
        if drop.iter().any(|d| is_all(d)) {
            set.clear();
        }
        for d in drop.iter().filter(|d| !is_all(d)) {
            let c = parse_cap(d)?;
            set.retain(|x| *x != c);
        }
        for a in add.iter().filter(|a| !is_all(a)) {
            set.push(parse_cap(a)?);
        }
        if add.iter().any(|a| is_all(a)) {
            // add ALL then drop X: everything but X.
            for d in drop.iter().filter(|d| !is_all(d)) {
                let c = parse_cap(d)?;
                set.retain(|x| *x != c);
            }
        }
    }
    let mut names: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn defaults_adds_and_drops() {
        let d = capabilities(false, &[], &[]).unwrap();
        assert_eq!(d.len(), DEFAULT_CAPS.len());
        let c = capabilities(false, &s(&["NET_ADMIN"]), &s(&["cap_chown", "KILL"])).unwrap();
        assert!(c.contains(&"CAP_NET_ADMIN".into()));
        assert!(!c.contains(&"CAP_CHOWN".into()) && !c.contains(&"CAP_KILL".into()));
        let c = capabilities(false, &s(&["NET_BIND_SERVICE"]), &s(&["ALL"])).unwrap();
        assert_eq!(c, s(&["CAP_NET_BIND_SERVICE"]));
        let c = capabilities(false, &s(&["ALL"]), &s(&["SYS_ADMIN"])).unwrap();
        assert!(c.len() > 30 && !c.contains(&"CAP_SYS_ADMIN".into()));
        // Privileged: everything in our bounding set (root here lacks CAP_SYS_RESOURCE).
        let bounding = caps::read(None, caps::CapSet::Bounding).unwrap();
        let p = capabilities(true, &[], &s(&["ALL"])).unwrap();
        assert_eq!(p.len(), bounding.len());
        assert!(p.iter().all(|c| bounding.contains(&parse_cap(c).unwrap())));
        assert_eq!(
            capabilities(false, &s(&["BOGUS"]), &[]),
            Err(UnknownCap("BOGUS".into()))
        );
    }
}
