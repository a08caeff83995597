//! RuntimeDefault against containerd's default profile, syscall by syscall.
//!
//! `containerd_default.txt` holds containerd's rules (facts: names, conditions, actions).
//! For several capability sets, the rules peapod's profile has must be exactly the rules
//! containerd's has on this architecture. Remaining differences: none. (containerd's
//! "kernel >= 4.8" group is unconditional in peapod, whose kernels are all newer.)

use std::collections::BTreeSet;

use serde_json::Value;

use super::super::compile;
use super::runtime_default;
use crate::container::security::DEFAULT_CAPS;

const CONTAINERD: &str = include_str!("containerd_default.txt");

/// containerd's rules that apply to a container with bounding set `caps`, as
/// "ACTION SYSCALL [CONDITION]".
fn containerd(caps: &[String]) -> BTreeSet<String> {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut out = BTreeSet::new();
    for line in CONTAINERD.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (when, rule) = line.split_once(' ').expect("WHEN ACTION SYSCALL");
        let applies = match when.split_once('=') {
            _ if when == "always" || when == "kernel>=4.8" => true,
            Some(("arch", a)) => a == std::env::consts::ARCH,
            Some(("cap", c)) => has(c),
            Some(("!cap", c)) => !has(c),
            _ => panic!("unknown condition {when:?}"),
        };
        if applies {
            out.insert(rule.to_owned());
        }
    }
    out
}

/// peapod's rules in the same notation.
fn peapod(caps: &[String]) -> BTreeSet<String> {
    let p: Value = serde_json::from_str(&runtime_default(caps)).unwrap();
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
    assert!(p.get("defaultErrnoRet").is_none(), "the default is EPERM");
    let mut out = BTreeSet::new();
    for r in p["syscalls"].as_array().unwrap() {
        let action = match (r["action"].as_str().unwrap(), r.get("errnoRet")) {
            ("SCMP_ACT_ALLOW", None) => "allow".to_owned(),
            ("SCMP_ACT_ERRNO", Some(n)) => format!("errno={n}"),
            other => panic!("unexpected action {other:?}"),
        };
        let args = r.get("args").and_then(Value::as_array).cloned();
        let cond = match args.as_deref() {
            None | Some([]) => String::new(),
            Some([a]) => {
                let (i, v) = (&a["index"], a["value"].as_u64().unwrap());
                match a["op"].as_str().unwrap() {
                    "SCMP_CMP_EQ" => format!(" arg{i}=={v:#x}"),
                    "SCMP_CMP_LT" => format!(" arg{i}<{v}"),
                    "SCMP_CMP_GT" => format!(" arg{i}>{v}"),
                    "SCMP_CMP_MASKED_EQ" => format!(" arg{i}&{v:#x}=={}", a["valueTwo"]),
                    op => panic!("unexpected operator {op}"),
                }
            }
            Some(more) => panic!("one condition a rule, not {more:?}"),
        };
        for n in r["names"].as_array().unwrap() {
            out.insert(format!("{action} {}{cond}", n.as_str().unwrap()));
        }
    }
    out
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn assert_same(caps: &[String]) {
    let (theirs, ours) = (containerd(caps), peapod(caps));
    let missing: Vec<_> = theirs.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&theirs).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "caps {caps:?}: containerd has, peapod lacks {missing:?}; peapod has, containerd lacks {extra:?}"
    );
    // And it compiles: one filter for the allow-list, one for clone3's ENOSYS.
    let filters = compile(&runtime_default(caps)).unwrap();
    let admin = caps.iter().any(|c| c == "CAP_SYS_ADMIN");
    assert_eq!(filters.len(), if admin { 1 } else { 2 }, "{caps:?}");
}

#[test]
fn runtime_default_is_containerds_profile() {
    assert_same(&names(DEFAULT_CAPS));
    assert_same(&[]);
    let all: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    assert_same(&all);
    for c in &all {
        assert_same(std::slice::from_ref(c));
    }
}

#[test]
fn namespaces_only_with_cap_sys_admin() {
    let default = peapod(&names(DEFAULT_CAPS));
    for call in [
        "unshare", "setns", "mount", "clone3", "clone", "bpf", "keyctl",
    ] {
        assert!(!default.contains(&format!("allow {call}")), "{call}");
    }
    assert!(default.contains("allow clone arg0&0x7e020000==0"));
    assert!(default.contains("errno=38 clone3"));
    let admin = peapod(&names(&["CAP_SYS_ADMIN"]));
    for call in ["unshare", "setns", "clone", "clone3"] {
        assert!(admin.contains(&format!("allow {call}")), "{call}");
    }
    assert!(!admin.iter().any(|r| r.contains("errno") || r.contains('&')));
}
