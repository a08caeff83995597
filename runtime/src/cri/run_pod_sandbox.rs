//! RunPodSandbox: proto → `PodSpec`, run, id back.

use cri_api::v1 as cri;
use tonic::Status;
use tracing::Instrument;

use super::CriService;
use super::convert::ns_mode_from;
use crate::sandbox::SandboxError;
use crate::sandbox::model::{
    DnsConfig, NamespaceOptions, NsMode, PodMetadata, PodSpec, PortMapping,
};

pub async fn handle(
    svc: &CriService,
    req: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, Status> {
    let spec = to_spec(req)?;
    let span = tracing::info_span!(
        "RunPodSandbox",
        pod = %spec.metadata.name,
        namespace = %spec.metadata.namespace
    );
    let id = svc.sandboxes.run(spec).instrument(span).await?;
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
}

fn invalid(field: &str, reason: &str) -> SandboxError {
    SandboxError::invalid(field, reason)
}

fn mode(v: i32, field: &str) -> Result<NsMode, SandboxError> {
    ns_mode_from(v).ok_or_else(|| invalid(field, "unknown namespace mode"))
}

/// Field-by-field conversion; semantic checks are `sandbox::validate`'s.
pub fn to_spec(req: cri::RunPodSandboxRequest) -> Result<PodSpec, SandboxError> {
    let config = req.config.ok_or_else(|| invalid("config", "is required"))?;
    let m = config
        .metadata
        .ok_or_else(|| invalid("config.metadata", "is required"))?;
    let linux = config.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let ns = sc.namespace_options.unwrap_or_default();
    if let Some(userns) = &ns.userns_options
        && userns.mode == cri::NamespaceMode::Pod as i32
    {
        return Err(SandboxError::Unsupported {
            what: "user namespaces (userns_options mode POD)".into(),
        });
    }
    let namespaces = NamespaceOptions {
        network: mode(ns.network, "namespace_options.network")?,
        pid: mode(ns.pid, "namespace_options.pid")?,
        ipc: mode(ns.ipc, "namespace_options.ipc")?,
        target_id: ns.target_id,
    };
    let port_mappings = config
        .port_mappings
        .into_iter()
        .map(|p| PortMapping {
            protocol: cri::Protocol::try_from(p.protocol)
                .map(|x| x.as_str_name().to_owned())
                .unwrap_or_else(|_| p.protocol.to_string()),
            container_port: p.container_port,
            host_port: p.host_port,
            host_ip: p.host_ip,
        })
        .collect();
    Ok(PodSpec {
        metadata: PodMetadata {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            attempt: m.attempt,
        },
        // None given (the kubelet always gives one; a hand-written crictl config may not):
        // the node's, as containerd and CRI-O do.
        hostname: if config.hostname.is_empty() && namespaces.network != NsMode::Node {
            node_hostname()
        } else {
            config.hostname
        },
        log_directory: config.log_directory,
        dns: config.dns_config.map(|d| DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        sysctls: linux.sysctls.into_iter().collect(),
        namespaces,
        runtime_handler: req.runtime_handler,
    })
}

/// The node's hostname (of the daemon's UTS namespace); empty if it has none.
fn node_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_metadata_is_named() {
        let req = cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig::default()),
            runtime_handler: String::new(),
        };
        match to_spec(req) {
            Err(SandboxError::Invalid { field, .. }) => assert_eq!(field, "config.metadata"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pod_without_a_hostname_gets_the_nodes() {
        let cfg = |network: cri::NamespaceMode| cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                ..Default::default()
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: network as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = |c| {
            to_spec(cri::RunPodSandboxRequest {
                config: Some(c),
                runtime_handler: String::new(),
            })
            .unwrap()
        };
        let node = node_hostname();
        assert!(!node.is_empty());
        assert_eq!(spec(cfg(cri::NamespaceMode::Pod)).hostname, node);
        // A host-network pod has the node's UTS namespace: nothing to fill in.
        assert_eq!(spec(cfg(cri::NamespaceMode::Node)).hostname, "");
    }

    #[test]
    fn converts_the_fields() {
        let mut cfg = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                uid: "u".into(),
                namespace: "ns".into(),
                attempt: 2,
            }),
            hostname: "web".into(),
            ..Default::default()
        };
        cfg.labels.insert("app".into(), "web".into());
        cfg.linux = Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: "/kubepods/pod-u".into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let spec = to_spec(cri::RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: String::new(),
        })
        .unwrap();
        assert_eq!(spec.metadata.attempt, 2);
        assert_eq!(spec.namespaces.network, NsMode::Node);
        assert_eq!(spec.namespaces.pid, NsMode::Container);
        assert_eq!(spec.namespaces.ipc, NsMode::Pod);
        assert_eq!(spec.labels["app"], "web");
        assert_eq!(spec.cgroup_parent, "/kubepods/pod-u");
    }
}
