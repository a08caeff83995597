//! Talking CRI to a runtime over its unix socket, and building pod configs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use cri_api::v1::{
    DnsConfig, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint};

/// A CRI runtime-service client over a unix socket.
pub type Client = RuntimeServiceClient<Channel>;

/// How long one RPC may take before the client gives up: a hung daemon fails a test, it does
/// not hang the suite.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to the CRI socket at `socket`.
pub async fn connect(socket: &Path) -> Result<Client> {
    Ok(RuntimeServiceClient::new(channel(socket).await?))
}

/// A gRPC channel to the unix socket `socket`, for any CRI service.
/// StopPodSandbox, then RemovePodSandbox.
pub async fn stop_and_remove_pod(c: &mut Client, id: &str) -> Result<()> {
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    })
    .await?;
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    })
    .await?;
    Ok(())
}

pub async fn channel(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]")?
        .timeout(RPC_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("connect to {}", socket.display()))?;
    Ok(channel)
}

/// The socket path of an endpoint given as `unix:///path.sock` (or a plain path).
pub fn endpoint_path(endpoint: &str) -> Result<PathBuf> {
    match endpoint.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        Some(_) => bail!("endpoint {endpoint:?} must be unix:// with an absolute path"),
        None if endpoint.starts_with('/') => Ok(PathBuf::from(endpoint)),
        None => bail!("endpoint {endpoint:?} is neither unix:///path nor an absolute path"),
    }
}

/// A pod sandbox config with sensible defaults, edited through chained setters.
#[derive(Clone, Debug)]
pub struct PodConfig {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub cgroup_parent: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub sysctls: HashMap<String, String>,
    pub dns: Option<DnsConfig>,
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    pub port_mappings: Vec<PortMapping>,
}

impl PodConfig {
    /// Pod `name` in namespace `default`, uid `uid-<name>`, attempt 0, hostname `name`, its own
    /// network and ipc namespaces and the kubelet's default pid mode (`CONTAINER`).
    pub fn new(name: &str) -> Self {
        PodConfig {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            uid: format!("uid-{name}"),
            attempt: 0,
            hostname: name.to_owned(),
            log_directory: format!("/var/log/pods/default_{name}"),
            cgroup_parent: String::new(),
            labels: HashMap::from([("app".to_owned(), name.to_owned())]),
            annotations: HashMap::new(),
            sysctls: HashMap::new(),
            dns: None,
            network: NamespaceMode::Pod,
            pid: NamespaceMode::Container,
            ipc: NamespaceMode::Pod,
            port_mappings: Vec::new(),
        }
    }

    /// Adds a hostPort mapping; `host_ip` may be empty (every address of the node).
    pub fn port(
        mut self,
        protocol: Protocol,
        host_ip: &str,
        host_port: i32,
        container_port: i32,
    ) -> Self {
        self.port_mappings.push(PortMapping {
            protocol: protocol as i32,
            container_port,
            host_port,
            host_ip: host_ip.to_owned(),
        });
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = uid.to_owned();
        self
    }

    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = hostname.to_owned();
        self
    }

    pub fn cgroup_parent(mut self, cgroup_parent: &str) -> Self {
        self.cgroup_parent = cgroup_parent.to_owned();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn sysctl(mut self, key: &str, value: &str) -> Self {
        self.sysctls.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn dns(mut self, servers: &[&str], searches: &[&str], options: &[&str]) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        self.dns = Some(DnsConfig {
            servers: owned(servers),
            searches: owned(searches),
            options: owned(options),
        });
        self
    }

    pub fn network(mut self, mode: NamespaceMode) -> Self {
        self.network = mode;
        self
    }

    pub fn pid(mut self, mode: NamespaceMode) -> Self {
        self.pid = mode;
        self
    }

    pub fn ipc(mut self, mode: NamespaceMode) -> Self {
        self.ipc = mode;
        self
    }

    /// The namespace options as sent, to compare with what the status echoes.
    pub fn namespace_options(&self) -> NamespaceOption {
        NamespaceOption {
            network: self.network as i32,
            pid: self.pid as i32,
            ipc: self.ipc as i32,
            ..Default::default()
        }
    }

    pub fn metadata(&self) -> PodSandboxMetadata {
        PodSandboxMetadata {
            name: self.name.clone(),
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            attempt: self.attempt,
        }
    }

    pub fn build(&self) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(self.metadata()),
            hostname: self.hostname.clone(),
            log_directory: self.log_directory.clone(),
            dns_config: self.dns.clone(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            port_mappings: self.port_mappings.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(self.namespace_options()),
                    ..Default::default()
                }),
                sysctls: self.sysctls.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn request(&self) -> RunPodSandboxRequest {
        RunPodSandboxRequest {
            config: Some(self.build()),
            runtime_handler: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let path = endpoint_path("unix:///run/peapod/peapod.sock").unwrap();
        assert_eq!(path, PathBuf::from("/run/peapod/peapod.sock"));
        assert_eq!(endpoint_path("/x.sock").unwrap(), PathBuf::from("/x.sock"));
        assert!(endpoint_path("unix://relative.sock").is_err());
        assert!(endpoint_path("tcp://127.0.0.1:1234").is_err());
    }

    #[test]
    fn pod_config_carries_every_field() {
        let config = PodConfig::new("web")
            .namespace("prod")
            .attempt(2)
            .cgroup_parent("/kubepods")
            .sysctl("kernel.shmmni", "1024")
            .dns(&["10.96.0.10"], &["svc"], &["ndots:5"])
            .pid(NamespaceMode::Pod)
            .build();
        let metadata = config.metadata.unwrap();
        assert_eq!(
            (metadata.name.as_str(), metadata.namespace.as_str()),
            ("web", "prod")
        );
        assert_eq!((metadata.uid.as_str(), metadata.attempt), ("uid-web", 2));
        assert_eq!(config.hostname, "web");
        assert_eq!(config.dns_config.unwrap().servers, ["10.96.0.10"]);
        let linux = config.linux.unwrap();
        assert_eq!(linux.cgroup_parent, "/kubepods");
        assert_eq!(linux.sysctls["kernel.shmmni"], "1024");
        let options = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!(options.pid, NamespaceMode::Pod as i32);
        assert_eq!(options.network, NamespaceMode::Pod as i32);
    }
}
