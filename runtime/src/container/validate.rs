//! Validation of a CreateContainer request, before any work: a bad request changes nothing.
//! Everything that later becomes an argument, an environment entry, a path or a file name is
//! bounded here and free of NUL, so no later step can fail half-way on it or be steered by it.
//! (Resource limits are checked by `cgroup::check`, image references by the image store.)

use std::path::{Component, Path};

use super::error::ContainerError;
use super::model::{ContainerSpec, SeccompReq};
use super::procmount;
use crate::sandbox::model::NsMode;
use crate::sandbox::validate as pod;

/// Entries of command + args.
const MAX_ARGV: usize = 4096;
/// Bytes of command, args and env together: well inside the kernel's limit for execve (a
/// quarter of the 8 MiB default stack).
const MAX_EXEC_BYTES: usize = 1 << 20;
const MAX_ENVS: usize = 4096;
const MAX_MOUNTS: usize = 256;
const MAX_PATH: usize = 4096;
const MAX_PATH_LISTS: usize = 256;
/// NGROUPS_MAX.
const MAX_GROUPS: usize = 65536;
const MAX_CAPS: usize = 64;
const MAX_IMAGE: usize = 4096;
const MAX_USERNAME: usize = 256;

type Result<T = ()> = std::result::Result<T, ContainerError>;

fn invalid(field: &str, reason: impl Into<String>) -> ContainerError {
    ContainerError::invalid(field, reason)
}

/// Checks the whole spec; fills in nothing, changes nothing.
pub fn validate(spec: &ContainerSpec) -> Result {
    pod::name("metadata.name", &spec.name, true)?;
    if spec.image.len() > MAX_IMAGE || spec.image.chars().any(|c| c.is_control() || c == ' ') {
        return Err(invalid(
            "image.image",
            format!("must be at most {MAX_IMAGE} printable characters without spaces"),
        ));
    }
    exec(spec)?;
    if !spec.working_dir.is_empty() {
        absolute("working_dir", &spec.working_dir)?;
    }
    if spec.mounts.len() > MAX_MOUNTS {
        return Err(invalid("mounts", format!("more than {MAX_MOUNTS}")));
    }
    for m in &spec.mounts {
        absolute("mounts.container_path", &m.container_path)?;
        if m.image.is_empty() {
            absolute("mounts.host_path", &m.host_path)?;
        }
        if !procmount::allowed(&m.container_path) {
            return Err(invalid(
                "mounts.container_path",
                format!(
                    "{:?} is under /proc, where only {} may be mounted",
                    m.container_path,
                    procmount::ALLOWED.join(", ")
                ),
            ));
        }
    }
    if spec.devices.len() > MAX_MOUNTS {
        return Err(invalid("devices", format!("more than {MAX_MOUNTS}")));
    }
    for d in &spec.devices {
        absolute("devices.container_path", &d.container_path)?;
        absolute("devices.host_path", &d.host_path)?;
        if let Err(e) = super::devices::Access::parse(&d.permissions) {
            return Err(invalid("devices.permissions", e.to_string()));
        }
    }
    pod::labels_and_annotations(&spec.labels, &spec.annotations)?;
    log_path(&spec.log_path)?;
    security(spec)
}

/// Command, args and env: what execve will get.
fn exec(spec: &ContainerSpec) -> Result {
    let argv = spec.command.len() + spec.args.len();
    if argv > MAX_ARGV {
        return Err(invalid(
            "command",
            format!("{argv} command and args entries, at most {MAX_ARGV}"),
        ));
    }
    if let Some(a) = spec
        .command
        .iter()
        .chain(&spec.args)
        .find(|a| a.contains('\0'))
    {
        return Err(invalid("args", format!("{a:?} contains a NUL byte")));
    }
    if spec.envs.len() > MAX_ENVS {
        return Err(invalid("envs", format!("more than {MAX_ENVS}")));
    }
    for (k, v) in &spec.envs {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(invalid(
                "envs",
                format!("{k:?}: a name must be non-empty without '=' or NUL, a value without NUL"),
            ));
        }
    }
    let bytes: usize = spec
        .command
        .iter()
        .chain(&spec.args)
        .map(|a| a.len() + 1)
        .chain(spec.envs.iter().map(|(k, v)| k.len() + v.len() + 2))
        .sum();
    if bytes > MAX_EXEC_BYTES {
        return Err(invalid(
            "command",
            format!("command, args and env take {bytes} bytes, at most {MAX_EXEC_BYTES}"),
        ));
    }
    Ok(())
}

/// ExecSync's command and timeout (0: none).
pub fn exec_sync(cmd: &[String], timeout: i64) -> Result {
    if cmd.is_empty() {
        return Err(invalid("cmd", "must not be empty"));
    }
    if cmd.len() > MAX_ARGV {
        return Err(invalid("cmd", format!("more than {MAX_ARGV} entries")));
    }
    if let Some(a) = cmd.iter().find(|a| a.contains('\0')) {
        return Err(invalid("cmd", format!("{a:?} contains a NUL byte")));
    }
    let bytes: usize = cmd.iter().map(|a| a.len() + 1).sum();
    if bytes > MAX_EXEC_BYTES {
        return Err(invalid(
            "cmd",
            format!("{bytes} bytes, at most {MAX_EXEC_BYTES}"),
        ));
    }
    if timeout < 0 {
        return Err(invalid("timeout", "must not be negative (0: no timeout)"));
    }
    Ok(())
}

/// The CRI Exec request: a command as ExecSync takes it, and streams that make sense
/// together (with a TTY, stderr is stdout: the CRI says stderr must then be false).
pub fn exec_request(cmd: &[String], tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result {
    exec_sync(cmd, 0)?;
    streams(tty, stdin, stdout, stderr)
}

/// The streams of an Exec or Attach request.
pub fn streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result {
    if !(stdin || stdout || stderr) {
        return Err(invalid(
            "stdin/stdout/stderr",
            "at least one of them must be requested",
        ));
    }
    if tty && stderr {
        return Err(invalid(
            "stderr",
            "must be false with tty (a terminal has one output stream)",
        ));
    }
    Ok(())
}

fn absolute(field: &str, p: &str) -> Result {
    if !p.starts_with('/') || p.len() > MAX_PATH || p.contains('\0') {
        return Err(invalid(
            field,
            format!("{p:?} must be an absolute path of at most {MAX_PATH} bytes"),
        ));
    }
    Ok(())
}

/// Relative to the pod's log directory, without `..`.
pub fn log_path(p: &str) -> Result {
    let path = Path::new(p);
    if path.is_absolute()
        || path.components().any(|c| c == Component::ParentDir)
        || p.contains('\0')
        || p.len() > MAX_PATH
    {
        return Err(invalid(
            "log_path",
            format!("{p:?} must be relative to the pod's log directory, without '..'"),
        ));
    }
    Ok(())
}

fn security(spec: &ContainerSpec) -> Result {
    let s = &spec.security;
    for (field, caps) in [
        ("capabilities.add_capabilities", &s.add_caps),
        ("capabilities.drop_capabilities", &s.drop_caps),
    ] {
        if caps.len() > MAX_CAPS {
            return Err(invalid(field, format!("more than {MAX_CAPS}")));
        }
        if let Some(c) = caps.iter().find(|c| {
            c.is_empty()
                || c.len() > 32
                || !c.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }) {
            return Err(invalid(field, format!("{c:?} is not a capability name")));
        }
    }
    let id = |field: &str, v: i64| {
        if (0..i64::from(u32::MAX)).contains(&v) {
            Ok(())
        } else {
            Err(invalid(field, format!("{v} is not a user or group id")))
        }
    };
    if let Some(u) = s.run_as_user {
        id("run_as_user", u)?;
    }
    if let Some(g) = s.run_as_group {
        id("run_as_group", g)?;
        // The CRI: the runtime MUST refuse a group without a user (whose image entry would
        // otherwise decide the user while the request decides the group).
        if s.run_as_user.is_none() && s.run_as_username.is_empty() {
            return Err(invalid(
                "run_as_group",
                "is only allowed with run_as_user or run_as_username",
            ));
        }
    }
    if s.supplemental_groups.len() > MAX_GROUPS {
        return Err(invalid(
            "supplemental_groups",
            format!("more than {MAX_GROUPS}"),
        ));
    }
    for g in &s.supplemental_groups {
        id("supplemental_groups", *g)?;
    }
    if s.run_as_username.len() > MAX_USERNAME || s.run_as_username.contains([':', '\n', '\0', '/'])
    {
        return Err(invalid(
            "run_as_username",
            format!("{:?} is not a user name", s.run_as_username),
        ));
    }
    for (field, paths) in [
        ("masked_paths", &s.masked_paths),
        ("readonly_paths", &s.readonly_paths),
    ] {
        if paths.len() > MAX_PATH_LISTS {
            return Err(invalid(field, format!("more than {MAX_PATH_LISTS}")));
        }
        for p in paths {
            absolute(field, p)?;
        }
    }
    if let SeccompReq::Localhost(p) = &s.seccomp {
        absolute("seccomp.localhost_ref", &p.to_string_lossy())?;
    }
    if s.pid == NsMode::Target
        && (s.target_id.is_empty() || !s.target_id.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        return Err(invalid(
            "namespace_options.target_id",
            "TARGET needs the id of a container",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::model::{DeviceReq, MountReq, Propagation, SecurityReq};

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "web".into(),
            image: "busybox".into(),
            command: vec!["httpd".into()],
            args: vec!["-f".into()],
            working_dir: "/www".into(),
            envs: vec![("A".into(), "b=c".into())],
            log_path: "web/0.log".into(),
            ..Default::default()
        }
    }

    fn field_of(r: Result) -> String {
        match r {
            Err(ContainerError::Invalid { field, .. }) => field,
            Err(ContainerError::Sandbox(crate::sandbox::SandboxError::Invalid {
                field, ..
            })) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn exec_sync_commands_are_checked() {
        exec_sync(&["ls".into(), "-l".into()], 0).unwrap();
        assert_eq!(field_of(exec_sync(&[], 0)), "cmd");
        assert_eq!(field_of(exec_sync(&["a\0b".into()], 0)), "cmd");
        assert_eq!(field_of(exec_sync(&["x".repeat(2 << 20)], 0)), "cmd");
        assert_eq!(field_of(exec_sync(&["ls".into()], -1)), "timeout");
    }

    #[test]
    fn a_good_spec_passes() {
        validate(&spec()).unwrap();
    }

    #[test]
    fn a_group_needs_a_user_or_a_user_name() {
        let mut s = spec();
        s.security.run_as_group = Some(1000);
        assert_eq!(field_of(validate(&s)), "run_as_group");
        s.security.run_as_user = Some(0);
        validate(&s).unwrap();
        s.security.run_as_user = None;
        s.security.run_as_username = "app".into();
        validate(&s).unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        type Spoil = fn(&mut ContainerSpec);
        let cases: Vec<(&str, Spoil)> = vec![
            ("metadata.name", |s| s.name.clear()),
            ("metadata.name", |s| s.name = "a/b".into()),
            ("image.image", |s| s.image = "bad image".into()),
            ("args", |s| s.args.push("a\0b".into())),
            ("command", |s| s.args = vec![String::new(); MAX_ARGV + 1]),
            ("command", |s| s.args = vec!["x".repeat(1 << 20)]),
            ("envs", |s| s.envs.push(("A=B".into(), "c".into()))),
            ("envs", |s| s.envs.push((String::new(), "c".into()))),
            ("envs", |s| s.envs.push(("A".into(), "\0".into()))),
            ("working_dir", |s| s.working_dir = "www".into()),
            ("log_path", |s| s.log_path = "../../etc/passwd".into()),
            ("log_path", |s| s.log_path = "/etc/passwd".into()),
            ("mounts.host_path", |s| {
                s.mounts.push(MountReq {
                    container_path: "/data".into(),
                    host_path: "relative".into(),
                    readonly: false,
                    recursive_read_only: false,
                    propagation: Propagation::Private,
                    ..Default::default()
                })
            }),
            ("mounts.container_path", |s| {
                s.mounts.push(MountReq {
                    container_path: "//proc/../proc/sys/".into(),
                    host_path: "/proc/sys".into(),
                    readonly: false,
                    recursive_read_only: false,
                    propagation: Propagation::Private,
                    ..Default::default()
                })
            }),
            ("devices.permissions", |s| {
                s.devices.push(DeviceReq {
                    container_path: "/dev/x".into(),
                    host_path: "/dev/null".into(),
                    permissions: "rwx".into(),
                })
            }),
            ("devices.container_path", |s| {
                s.devices.push(DeviceReq {
                    container_path: "dev/x".into(),
                    host_path: "/dev/null".into(),
                    permissions: "rw".into(),
                })
            }),
            ("labels", |s| {
                s.labels.insert("bad key".into(), "v".into());
            }),
            ("capabilities.add_capabilities", |s| {
                s.security.add_caps.push("CAP NET".into())
            }),
            ("run_as_user", |s| s.security.run_as_user = Some(-1)),
            ("run_as_group", |s| s.security.run_as_group = Some(1000)),
            ("supplemental_groups", |s| {
                s.security.supplemental_groups.push(1 << 40)
            }),
            ("run_as_username", |s| {
                s.security.run_as_username = "root:x".into()
            }),
            ("masked_paths", |s| {
                s.security.masked_paths.push("proc/kcore".into())
            }),
            ("namespace_options.target_id", |s| {
                s.security.pid = NsMode::Target
            }),
        ];
        for (field, f) in cases {
            let mut s = spec();
            f(&mut s);
            assert_eq!(field_of(validate(&s)), field, "{s:?}");
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Strings: plain names and absolute paths often (so that whole specs pass and the
        /// property has something to check), and the awkward: NUL, '=', slashes, dots,
        /// spaces, non-ASCII.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => "[a-z]{1,8}",
                2 => "/[a-z]{1,8}",
                1 => ".{0,40}",
                2 => "[a-zA-Z0-9=/._ -]{0,30}",
                1 => "[A-Z]{1,4}=[a-z]{0,4}",
                1 => Just("..".to_owned()),
                1 => Just("../../etc/shadow".to_owned()),
                1 => Just("a\0b".to_owned()),
                1 => Just(String::new()),
            ]
        }

        /// Mostly `good`, sometimes anything: whole specs pass often enough for the property
        /// to have something to check, and each field still meets the awkward.
        fn mostly(good: &'static str) -> impl Strategy<Value = String> {
            prop_oneof![6 => proptest::string::string_regex(good).unwrap(), 1 => text()]
        }

        prop_compose! {
            fn arbitrary_spec()(
                name in mostly("[a-z]{1,8}"), image in mostly("[a-z]{1,8}"),
                working_dir in mostly("(/[a-z]{1,8})?"), log_path in mostly("[a-z]{1,8}\\.log"),
                command in proptest::collection::vec(text(), 0..3),
                envs in proptest::collection::vec((text(), text()), 0..3),
                mounts in proptest::collection::vec(
                    (mostly("/[a-z]{1,8}"), mostly("/[a-z]{1,8}")), 0..2),
                caps in proptest::collection::vec(mostly("[A-Z_]{1,12}"), 0..2),
                masked in proptest::collection::vec(mostly("/[a-z]{1,8}"), 0..2),
                username in mostly("[a-z]{0,8}"),
                user in proptest::option::of(prop_oneof![0..70_000i64, any::<i64>()]),
            ) -> ContainerSpec {
                ContainerSpec {
                    name, image, working_dir, log_path, command, envs,
                    mounts: mounts.into_iter().map(|(c, h)| MountReq {
                        container_path: c, host_path: h, readonly: false,
                        recursive_read_only: false,
                        propagation: Propagation::Private,
                    ..Default::default()
                    }).collect(),
                    security: SecurityReq {
                        add_caps: caps, masked_paths: masked, run_as_username: username,
                        run_as_user: user,
                        ..SecurityReq::default()
                    },
                    ..ContainerSpec::default()
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Never panics; whatever it accepts is safe to act on: nothing that becomes an
            /// argument, an environment entry or a path holds a NUL, env names hold no '=',
            /// paths that must be absolute are, and the log path stays below the pod's log
            /// directory.
            #[test]
            fn what_validation_accepts_is_safe(spec in arbitrary_spec()) {
                if validate(&spec).is_ok() {
                    prop_assert!(!spec.name.is_empty() && !spec.name.contains(['/', '\0']));
                    prop_assert!(spec.command.iter().all(|a| !a.contains('\0')));
                    for (k, v) in &spec.envs {
                        prop_assert!(!k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0'));
                    }
                    prop_assert!(spec.working_dir.is_empty() || spec.working_dir.starts_with('/'));
                    prop_assert!(!spec.working_dir.contains('\0'));
                    for m in &spec.mounts {
                        prop_assert!(m.container_path.starts_with('/') && m.host_path.starts_with('/'));
                        prop_assert!(super::procmount::allowed(&m.container_path));
                        prop_assert!(!m.container_path.contains('\0') && !m.host_path.contains('\0'));
                    }
                    let log = Path::new("/var/log/pods/x").join(&spec.log_path);
                    prop_assert!(log.starts_with("/var/log/pods/x"));
                    prop_assert!(!log.components().any(|c| c == Component::ParentDir));
                    prop_assert!(spec.security.masked_paths.iter().all(|p| p.starts_with('/')));
                    prop_assert!(!spec.security.run_as_username.contains([':', '\0', '\n']));
                    prop_assert!(spec.security.run_as_user.is_none_or(|u| (0..i64::from(u32::MAX)).contains(&u)));
                }
            }
        }
    }
}
