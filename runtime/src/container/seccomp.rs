//! Seccomp profiles: peapod's RuntimeDefault and a subset of the OCI seccomp JSON (as kubelet
//! `Localhost` profiles are written), compiled to BPF with `seccompiler`.
//!
//! An OCI profile can give each syscall its own action; a seccompiler filter has one match
//! action. So a profile becomes a small stack of filters, which the kernel evaluates together,
//! taking the most severe verdict: one filter per non-allow action (mismatch: allow), and, when
//! the default action is not allow, one filter that allows every syscall the profile names
//! (with its argument conditions) and applies the default to the rest. Syscall names unknown
//! on this architecture are skipped, as libseccomp does.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::{Value, json};

mod default;

pub use default::runtime_default;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("invalid seccomp profile")]
    Parse(#[source] serde_json::Error),
    #[error("unsupported seccomp action {0:?}")]
    Action(String),
    #[error("unsupported seccomp operator {0:?}")]
    Operator(String),
    #[error("cannot compile seccomp profile")]
    Compile(#[source] seccompiler::Error),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Arg>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

fn action(name: &str, errno: Option<u32>) -> Result<Value, SeccompError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => json!("allow"),
        "SCMP_ACT_ERRNO" => json!({ "errno": errno.unwrap_or(libc::EPERM as u32) }),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => json!("kill_thread"),
        "SCMP_ACT_KILL_PROCESS" => json!("kill_process"),
        "SCMP_ACT_LOG" => json!("log"),
        "SCMP_ACT_TRAP" => json!("trap"),
        other => return Err(SeccompError::Action(other.to_owned())),
    })
}

fn condition(a: &Arg) -> Result<Value, SeccompError> {
    let (op, val) = match a.op.as_str() {
        "SCMP_CMP_EQ" => (json!("eq"), a.value),
        "SCMP_CMP_NE" => (json!("ne"), a.value),
        "SCMP_CMP_LT" => (json!("lt"), a.value),
        "SCMP_CMP_LE" => (json!("le"), a.value),
        "SCMP_CMP_GT" => (json!("gt"), a.value),
        "SCMP_CMP_GE" => (json!("ge"), a.value),
        "SCMP_CMP_MASKED_EQ" => (json!({ "masked_eq": a.value }), a.value_two),
        other => return Err(SeccompError::Operator(other.to_owned())),
    };
    Ok(json!({"index": a.index, "type": "qword", "op": op, "val": val}))
}

fn arch() -> seccompiler::TargetArch {
    std::env::consts::ARCH
        .try_into()
        .expect("peapod builds for x86_64, aarch64 and riscv64")
}

fn filter(mismatch: Value, matched: Value, rules: Vec<Value>) -> Value {
    json!({"mismatch_action": mismatch, "match_action": matched, "filter": rules})
}

/// Whether seccompiler knows `name` on this architecture.
fn known(name: &str) -> bool {
    let probe = json!({"p": filter(json!("allow"), json!("log"), vec![json!({"syscall": name})])});
    seccompiler::compile_from_json(probe.to_string().as_bytes(), arch()).is_ok()
}

/// A syscall with a rule without conditions matches whatever its other rules say; seccompiler
/// would take the conditions alone, so those rules go.
fn unconditional_wins(rules: Vec<Value>) -> Vec<Value> {
    let bare: HashSet<String> = rules
        .iter()
        .filter(|r| r.get("args").is_none())
        .filter_map(|r| r["syscall"].as_str().map(str::to_owned))
        .collect();
    rules
        .into_iter()
        .filter(|r| {
            r.get("args").is_none() || !r["syscall"].as_str().is_some_and(|n| bare.contains(n))
        })
        .collect()
}

/// Compiles an OCI seccomp profile (JSON text) into the BPF programs to install, in order.
pub fn compile(profile: &str) -> Result<Vec<seccompiler::BpfProgram>, SeccompError> {
    let p: Profile = serde_json::from_str(profile).map_err(SeccompError::Parse)?;
    let default = action(&p.default_action, p.default_errno_ret)?;
    let mut by_action: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    let mut allowed = Vec::new();
    let mut cache: HashSet<String> = HashSet::new();
    for r in &p.syscalls {
        let act = action(&r.action, r.errno_ret)?;
        let args = r
            .args
            .iter()
            .map(condition)
            .collect::<Result<Vec<_>, _>>()?;
        for name in r.names.iter().chain(r.name.iter()) {
            if !cache.contains(name) {
                if !known(name) {
                    continue;
                }
                cache.insert(name.clone());
            }
            let rule = if args.is_empty() {
                json!({"syscall": name})
            } else {
                json!({"syscall": name, "args": args})
            };
            allowed.push(rule.clone());
            if act != json!("allow") {
                by_action
                    .entry(act.to_string())
                    .or_insert_with(|| (act.clone(), Vec::new()))
                    .1
                    .push(rule);
            }
        }
    }
    let mut filters = serde_json::Map::new();
    if default != json!("allow") {
        let allowed = unconditional_wins(allowed);
        filters.insert("default".into(), filter(default, json!("allow"), allowed));
    }
    for (i, (_, (act, rules))) in by_action.into_iter().enumerate() {
        let rules = unconditional_wins(rules);
        filters.insert(format!("action{i}"), filter(json!("allow"), act, rules));
    }
    let text = Value::Object(filters).to_string();
    let mut map =
        seccompiler::compile_from_json(text.as_bytes(), arch()).map_err(SeccompError::Compile)?;
    let mut names: Vec<String> = map.keys().cloned().collect();
    names.sort();
    Ok(names
        .into_iter()
        .filter_map(|n| map.remove(&n))
        .filter(|prog| !prog.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oci_allowlist_with_args_and_unknown_names_compiles() {
        let profile = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS"}
            ]
        }"#;
        assert_eq!(compile(profile).unwrap().len(), 2);
    }

    #[test]
    fn bad_profiles_are_refused() {
        assert!(matches!(compile("{"), Err(SeccompError::Parse(_))));
        assert!(matches!(
            compile(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#),
            Err(SeccompError::Action(_))
        ));
    }
}
