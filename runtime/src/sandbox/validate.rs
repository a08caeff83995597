//! Validation of a RunPodSandbox request, before any work: a bad request changes nothing.

use std::net::IpAddr;
use std::path::{Component, Path};

use netsetup::hostport::{HostPort, Protocol};
use netsetup::sysctl::{self, SysctlNamespace};

use super::error::SandboxError;
use super::model::{NsMode, PodSpec};

const MAX_NAME: usize = 253;
/// Kernel HOST_NAME_MAX is 64 including room for a terminator in many libcs; Kubernetes
/// allows at most 63 characters for a hostname label.
pub const MAX_HOSTNAME: usize = 63;
const MAX_SYSCTL_VALUE: usize = 4096;
const MAX_DNS_SEARCHES: usize = 32;
const MAX_DNS_SERVERS: usize = 16;
const MAX_DNS_OPTIONS: usize = 32;
/// Kubernetes: a qualified name is a ≤253-character prefix, a slash and a ≤63-character name.
const MAX_KEY: usize = 317;
const MAX_LABELS: usize = 1024;
const MAX_LABEL_VALUE: usize = 4096;
/// Kubernetes caps a pod's annotations at 256 KiB in all.
const MAX_ANNOTATIONS_BYTES: usize = 256 << 10;
const MAX_SYSCTLS: usize = 256;
const MAX_PORT_MAPPINGS: usize = 1024;

type Result<T = ()> = std::result::Result<T, SandboxError>;

fn invalid(field: &str, reason: impl Into<String>) -> SandboxError {
    SandboxError::invalid(field, reason)
}

/// Checks the whole spec; fills in nothing, changes nothing.
pub fn validate(spec: &PodSpec) -> Result {
    let m = &spec.metadata;
    name("metadata.name", &m.name, true)?;
    name("metadata.namespace", &m.namespace, true)?;
    name("metadata.uid", &m.uid, false)?;
    namespaces(spec)?;
    if !spec.host_network() || !spec.hostname.is_empty() {
        hostname(&spec.hostname)?;
    }
    if !spec.log_directory.is_empty() {
        absolute_clean_path("log_directory", &spec.log_directory)?;
    }
    cgroup_parent(&spec.cgroup_parent)?;
    key_values(spec)?;
    if spec.sysctls.len() > MAX_SYSCTLS {
        return Err(invalid("linux.sysctls", format!("more than {MAX_SYSCTLS}")));
    }
    for (k, v) in &spec.sysctls {
        sysctl(spec, k, v)?;
    }
    if let Some(dns) = &spec.dns {
        if dns.servers.len() > MAX_DNS_SERVERS {
            return Err(invalid("dns_config.servers", "too many servers"));
        }
        for s in &dns.servers {
            s.parse::<IpAddr>().map_err(|_| {
                invalid("dns_config.servers", format!("{s:?} is not an IP address"))
            })?;
        }
        if dns.searches.len() > MAX_DNS_SEARCHES {
            return Err(invalid(
                "dns_config.searches",
                "more than 32 search domains",
            ));
        }
        for s in &dns.searches {
            token("dns_config.searches", s, 253)?;
        }
        if dns.options.len() > MAX_DNS_OPTIONS {
            return Err(invalid("dns_config.options", "more than 32 options"));
        }
        for o in &dns.options {
            token("dns_config.options", o, 253)?;
        }
    }
    host_ports(spec)?;
    if !spec.runtime_handler.is_empty() && spec.runtime_handler != "peapod" {
        return Err(invalid(
            "runtime_handler",
            format!(
                "unknown runtime handler {:?} (known: \"\", \"peapod\")",
                spec.runtime_handler
            ),
        ));
    }
    Ok(())
}

/// The hostPort mappings of a pod: those with a host port (the others only document a
/// container port). Refused: ports outside 1..=65535, protocols other than TCP and UDP, a host
/// IP that does not parse or is IPv6, two mappings of one pod that would catch the same
/// packets. A host IP of `""` or `0.0.0.0` means every address of the node.
pub fn host_ports(spec: &PodSpec) -> Result<Vec<HostPort>> {
    if spec.port_mappings.len() > MAX_PORT_MAPPINGS {
        return Err(invalid(
            "port_mappings",
            format!("more than {MAX_PORT_MAPPINGS}"),
        ));
    }
    let mut ports: Vec<HostPort> = Vec::new();
    for p in &spec.port_mappings {
        if !(0..=65535).contains(&p.container_port) || !(0..=65535).contains(&p.host_port) {
            return Err(invalid("port_mappings", "port outside 0..=65535"));
        }
        if p.host_port == 0 {
            continue;
        }
        let container_port = u16::try_from(p.container_port)
            .ok()
            .filter(|&c| c != 0)
            .ok_or_else(|| {
                invalid(
                    "port_mappings",
                    format!("host port {} maps to container port 0", p.host_port),
                )
            })?;
        let protocol = match p.protocol.as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                return Err(invalid(
                    "port_mappings",
                    format!("protocol {other} (hostPorts forward TCP and UDP)"),
                ));
            }
        };
        let host_ip = match p.host_ip.as_str() {
            "" => None,
            ip => match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) if v4.is_unspecified() => None,
                Ok(IpAddr::V4(v4)) => Some(v4),
                Ok(IpAddr::V6(_)) => {
                    return Err(SandboxError::Unsupported {
                        what: format!("hostPort on the IPv6 address {ip}"),
                    });
                }
                Err(_) => {
                    return Err(invalid(
                        "port_mappings",
                        format!("host_ip {ip:?} is not an IP address"),
                    ));
                }
            },
        };
        let port = HostPort {
            protocol,
            host_ip,
            host_port: p.host_port as u16,
            container_port,
        };
        if let Some(other) = ports.iter().find(|o| o.overlaps(&port)) {
            return Err(invalid(
                "port_mappings",
                format!("{port} and {other} catch the same packets"),
            ));
        }
        ports.push(port);
    }
    Ok(ports)
}

pub(crate) fn name(field: &str, v: &str, required: bool) -> Result {
    if v.is_empty() {
        return if required {
            Err(invalid(field, "must not be empty"))
        } else {
            Ok(())
        };
    }
    if v.len() > MAX_NAME {
        return Err(invalid(field, format!("longer than {MAX_NAME} characters")));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(invalid(field, format!("character {c:?} is not allowed")));
    }
    Ok(())
}

fn key_values(spec: &PodSpec) -> Result {
    labels_and_annotations(&spec.labels, &spec.annotations)
}

/// Labels and annotations (of a pod or a container): bounded in count and size, keys
/// printable and non-empty.
pub(crate) fn labels_and_annotations(
    labels: &std::collections::BTreeMap<String, String>,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result {
    if labels.len() > MAX_LABELS {
        return Err(invalid("labels", format!("more than {MAX_LABELS}")));
    }
    for (k, v) in labels {
        key("labels", k)?;
        if v.len() > MAX_LABEL_VALUE {
            return Err(invalid(
                "labels",
                format!("value of {k:?} is longer than {MAX_LABEL_VALUE} bytes"),
            ));
        }
    }
    let mut bytes = 0;
    for (k, v) in annotations {
        key("annotations", k)?;
        bytes += k.len() + v.len();
    }
    if bytes > MAX_ANNOTATIONS_BYTES {
        return Err(invalid(
            "annotations",
            format!("{bytes} bytes in all, at most {MAX_ANNOTATIONS_BYTES}"),
        ));
    }
    Ok(())
}

fn key(field: &str, k: &str) -> Result {
    if k.is_empty() || k.len() > MAX_KEY || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            field,
            format!("key {k:?} must be 1-{MAX_KEY} printable characters"),
        ));
    }
    Ok(())
}

fn namespaces(spec: &PodSpec) -> Result {
    let ns = &spec.namespaces;
    if matches!(ns.network, NsMode::Container | NsMode::Target) {
        return Err(invalid(
            "namespace_options.network",
            "a pod network namespace is POD or NODE",
        ));
    }
    if matches!(ns.ipc, NsMode::Container | NsMode::Target) {
        return Err(invalid(
            "namespace_options.ipc",
            "a pod IPC namespace is POD or NODE",
        ));
    }
    if ns.pid == NsMode::Target {
        return Err(invalid(
            "namespace_options.pid",
            "TARGET applies to containers, not to a pod sandbox",
        ));
    }
    Ok(())
}

/// A hostname: 1–63 characters, dot-separated RFC 1123 labels.
pub fn hostname(h: &str) -> Result {
    if h.is_empty() {
        return Err(invalid(
            "hostname",
            "must not be empty unless the pod uses the node network",
        ));
    }
    if h.len() > MAX_HOSTNAME {
        return Err(invalid(
            "hostname",
            format!("{} characters, at most {MAX_HOSTNAME} allowed", h.len()),
        ));
    }
    for label in h.split('.') {
        let ok = !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(invalid(
                "hostname",
                format!("{h:?} is not a valid hostname (RFC 1123 labels)"),
            ));
        }
    }
    Ok(())
}

fn absolute_clean_path(field: &str, p: &str) -> Result {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(invalid(field, format!("{p:?} is not an absolute path")));
    }
    if path.components().any(|c| c == Component::ParentDir) || p.contains('\0') {
        return Err(invalid(field, format!("{p:?} must not contain '..'")));
    }
    Ok(())
}

/// A clean parent, e.g. `/kubepods/burstable/pod1234` or `kubepods-burstable-pod1234.slice`;
/// empty means peapod's default. (The driver in use checks its own form.)
fn cgroup_parent(p: &str) -> Result {
    if p.is_empty() {
        return Ok(());
    }
    for comp in p.trim_start_matches('/').split('/') {
        let ok = !comp.is_empty()
            && comp != "."
            && comp != ".."
            && comp
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !ok {
            return Err(invalid(
                "linux.cgroup_parent",
                format!("{p:?} is not a clean cgroupfs path"),
            ));
        }
    }
    Ok(())
}

fn token(field: &str, v: &str, max: usize) -> Result {
    if v.is_empty() || v.len() > max || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            format!("{v:?} must be 1-{max} characters without spaces"),
        ));
    }
    Ok(())
}

fn sysctl(spec: &PodSpec, k: &str, v: &str) -> Result {
    let field = format!("linux.sysctls[{k}]");
    if k.len() > 256 || sysctl::path(k).is_err() {
        return Err(invalid(&field, "not a sysctl name"));
    }
    if v.len() > MAX_SYSCTL_VALUE || v.contains(['\n', '\0']) {
        return Err(invalid(&field, "value must be one line"));
    }
    match sysctl::namespace_of(k) {
        None => Err(invalid(
            &field,
            "not a namespaced sysctl: only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* may be set per pod",
        )),
        Some(SysctlNamespace::Net) if spec.host_network() => Err(invalid(
            &field,
            "net.* sysctls cannot be set for a pod on the node network",
        )),
        Some(SysctlNamespace::Ipc) if spec.namespaces.ipc == NsMode::Node => Err(invalid(
            &field,
            "IPC sysctls cannot be set for a pod in the node IPC namespace",
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::model::{DnsConfig, PodMetadata, PortMapping};

    fn spec() -> PodSpec {
        PodSpec {
            metadata: PodMetadata {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u-1".into(),
                attempt: 0,
            },
            hostname: "web".into(),
            ..PodSpec::default()
        }
    }

    fn field_of(r: Result) -> String {
        match r {
            Err(SandboxError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_pod_is_valid() {
        validate(&spec()).unwrap();
    }

    #[test]
    fn names_are_required_and_clean() {
        let mut s = spec();
        s.metadata.name.clear();
        assert_eq!(field_of(validate(&s)), "metadata.name");
        let mut s = spec();
        s.metadata.namespace = "a/b".into();
        assert_eq!(field_of(validate(&s)), "metadata.namespace");
        let mut s = spec();
        s.metadata.uid.clear();
        validate(&s).unwrap();
    }

    #[test]
    fn hostnames() {
        for ok in ["a", "web-1", "a.b.c", &"x".repeat(63)] {
            hostname(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "a..b", "a_b", "UPPER_", &"x".repeat(64)] {
            assert!(hostname(bad).is_err(), "{bad:?} accepted");
        }
        let mut s = spec();
        s.hostname = "x".repeat(64);
        assert_eq!(field_of(validate(&s)), "hostname");
        // Empty is fine only on the node network.
        let mut s = spec();
        s.hostname.clear();
        assert_eq!(field_of(validate(&s)), "hostname");
        s.namespaces.network = NsMode::Node;
        validate(&s).unwrap();
    }

    #[test]
    fn sysctls_must_be_namespaced_and_match_the_pod() {
        let mut s = spec();
        s.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "80".into());
        s.sysctls.insert("kernel.shmmni".into(), "1024".into());
        s.sysctls.insert("fs.mqueue.msg_max".into(), "20".into());
        validate(&s).unwrap();
        for bad in ["kernel.panic", "vm.swappiness", "net..x", "net/../x"] {
            let mut s = spec();
            s.sysctls.insert(bad.into(), "1".into());
            assert!(field_of(validate(&s)).starts_with("linux.sysctls"), "{bad}");
        }
        let mut s = spec();
        s.namespaces.network = NsMode::Node;
        s.sysctls.insert("net.core.somaxconn".into(), "1".into());
        assert!(validate(&s).is_err());
        let mut s = spec();
        s.sysctls.insert("net.core.somaxconn".into(), "1\n2".into());
        assert!(validate(&s).is_err());
    }

    #[test]
    fn labels_and_annotations_are_bounded() {
        let mut s = spec();
        s.labels
            .insert("app.kubernetes.io/name".into(), "web".into());
        s.annotations.insert("note".into(), "x".repeat(1000));
        validate(&s).unwrap();
        s.labels.insert(String::new(), "v".into());
        assert_eq!(field_of(validate(&s)), "labels");
        let mut s = spec();
        s.annotations.insert("big".into(), "x".repeat(300 << 10));
        assert_eq!(field_of(validate(&s)), "annotations");
        let mut s = spec();
        s.labels.insert("bad key".into(), "v".into());
        assert_eq!(field_of(validate(&s)), "labels");
    }

    #[test]
    fn paths_and_cgroups() {
        let mut s = spec();
        s.log_directory = "relative/dir".into();
        assert_eq!(field_of(validate(&s)), "log_directory");
        s.log_directory = "/var/log/pods/../../etc".into();
        assert_eq!(field_of(validate(&s)), "log_directory");
        s.log_directory = "/var/log/pods/default_web_u-1".into();
        validate(&s).unwrap();
        s.cgroup_parent = "/kubepods/../etc".into();
        assert_eq!(field_of(validate(&s)), "linux.cgroup_parent");
        s.cgroup_parent = "/kubepods/burstable/pod-1".into();
        validate(&s).unwrap();
        // A slice: clean as a path; whether the driver takes it is `Cgroups::check_parent`.
        s.cgroup_parent = "kubepods-burstable.slice".into();
        validate(&s).unwrap();
    }

    #[test]
    fn dns_and_ports() {
        let mut s = spec();
        s.dns = Some(DnsConfig {
            servers: vec!["10.96.0.10".into(), "fd00::a".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        validate(&s).unwrap();
        s.dns.as_mut().unwrap().servers.push("dns.example".into());
        assert_eq!(field_of(validate(&s)), "dns_config.servers");

        let mut s = spec();
        s.port_mappings.push(PortMapping {
            protocol: "TCP".into(),
            container_port: 80,
            host_port: 0,
            host_ip: String::new(),
        });
        validate(&s).unwrap();
        assert_eq!(host_ports(&s).unwrap(), []);
        s.port_mappings[0].host_port = 8080;
        validate(&s).unwrap();

        let mut s = spec();
        s.port_mappings.push(PortMapping {
            protocol: "UDP".into(),
            container_port: 53,
            host_port: 5353,
            host_ip: String::new(),
        });
        s.port_mappings.push(PortMapping {
            protocol: "TCP".into(),
            container_port: 53,
            host_port: 5353,
            host_ip: "192.0.2.7".into(),
        });
        let ports = host_ports(&s).unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].to_string(), "udp/*:5353");
        assert_eq!(ports[1].to_string(), "tcp/192.0.2.7:5353");
    }

    #[test]
    fn bad_host_ports_are_refused() {
        let mapping = |protocol: &str, container_port, host_port, host_ip: &str| PortMapping {
            protocol: protocol.into(),
            container_port,
            host_port,
            host_ip: host_ip.into(),
        };
        let with = |mappings: Vec<PortMapping>| {
            let mut s = spec();
            s.port_mappings = mappings;
            validate(&s)
        };
        for bad in [
            vec![mapping("TCP", 80, 65536, "")],
            vec![mapping("TCP", 80, -1, "")],
            vec![mapping("TCP", 0, 8080, "")],
            vec![mapping("SCTP", 80, 8080, "")],
            vec![mapping("7", 80, 8080, "")],
            vec![mapping("TCP", 80, 8080, "192.0.2.300")],
            // Twice the same, or a wildcard over a specific address.
            vec![mapping("TCP", 80, 8080, ""), mapping("TCP", 81, 8080, "")],
            vec![
                mapping("UDP", 80, 8080, "0.0.0.0"),
                mapping("UDP", 81, 8080, "192.0.2.1"),
            ],
        ] {
            assert_eq!(field_of(with(bad.clone())), "port_mappings", "{bad:?}");
        }
        assert!(matches!(
            with(vec![mapping("TCP", 80, 8080, "fd00::1")]),
            Err(SandboxError::Unsupported { .. })
        ));
        // Same port, other protocol or other address: fine.
        with(vec![
            mapping("TCP", 80, 8080, ""),
            mapping("UDP", 80, 8080, ""),
        ])
        .unwrap();
        with(vec![
            mapping("TCP", 80, 8080, "192.0.2.1"),
            mapping("TCP", 81, 8080, "192.0.2.2"),
        ])
        .unwrap();
    }

    #[test]
    fn namespaces_and_handlers() {
        let mut s = spec();
        s.namespaces.network = NsMode::Container;
        assert_eq!(field_of(validate(&s)), "namespace_options.network");
        let mut s = spec();
        s.namespaces.pid = NsMode::Target;
        assert_eq!(field_of(validate(&s)), "namespace_options.pid");

        let mut s = spec();
        s.runtime_handler = "kata".into();
        assert_eq!(field_of(validate(&s)), "runtime_handler");
    }

    mod fuzz {
        use super::*;
        use crate::sandbox::model::{NamespaceOptions, NsMode};
        use proptest::prelude::*;

        fn mode() -> impl Strategy<Value = NsMode> {
            prop_oneof![
                Just(NsMode::Pod),
                Just(NsMode::Container),
                Just(NsMode::Node),
                Just(NsMode::Target)
            ]
        }

        /// Strings biased towards the awkward: separators, dots, slashes, NUL, non-ASCII.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                ".{0,80}",
                "[a-z0-9./_-]{0,70}",
                Just("..".to_owned()),
                Just("/..".to_owned()),
                Just("net/../../etc".to_owned()),
                Just(String::new()),
            ]
        }

        prop_compose! {
            fn arbitrary_spec()(
                name in text(), namespace in text(), uid in text(), hostname in text(),
                log_directory in text(), cgroup_parent in text(),
                sysctls in proptest::collection::btree_map(text(), text(), 0..4),
                labels in proptest::collection::btree_map(text(), text(), 0..4),
                network in mode(), pid in mode(), ipc in mode(), handler in text(),
            ) -> PodSpec {
                PodSpec {
                    metadata: PodMetadata { name, namespace, uid, attempt: 0 },
                    hostname, log_directory, cgroup_parent, sysctls, labels,
                    namespaces: NamespaceOptions { network, pid, ipc, target_id: String::new() },
                    runtime_handler: handler,
                    ..PodSpec::default()
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Never panics; whatever it accepts is safe to act on.
            #[test]
            fn what_validation_accepts_is_safe(spec in arbitrary_spec()) {
                if validate(&spec).is_ok() {
                    prop_assert!(!spec.metadata.name.is_empty() && spec.metadata.name.len() <= MAX_NAME);
                    prop_assert!(!spec.metadata.name.contains(['/', '\0']));
                    if !spec.host_network() {
                        prop_assert!(!spec.hostname.is_empty() && spec.hostname.len() <= MAX_HOSTNAME);
                    }
                    prop_assert!(spec.log_directory.is_empty() || (spec.log_directory.starts_with('/') && !spec.log_directory.split('/').any(|c| c == "..")));
                    prop_assert!(!spec.cgroup_parent.split('/').any(|c| c == ".."));
                    for k in spec.sysctls.keys() {
                        prop_assert!(sysctl::namespace_of(k).is_some());
                        let path = sysctl::path(k).unwrap();
                        prop_assert!(path.starts_with("/proc/sys/") && !path.components().any(|c| c == std::path::Component::ParentDir));
                    }
                    prop_assert!(matches!(spec.namespaces.network, NsMode::Pod | NsMode::Node));
                }
            }
        }
    }
}
