//! The sandbox as peapod knows it: the validated spec, its state machine, and the record of
//! everything made for it (persisted as `sandbox.json`, the source of truth for teardown).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use netsetup::Attachment;
use serde::{Deserialize, Serialize};

use super::cgroup::CgroupRecord;
use super::process::ProcRef;

/// The identity the kubelet retries with; two requests with the same metadata are one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodMetadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsMode {
    #[default]
    Pod,
    Container,
    Node,
    Target,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    #[serde(default)]
    pub target_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// A validated RunPodSandbox request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub metadata: PodMetadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub namespaces: NamespaceOptions,
    pub runtime_handler: String,
}

impl PodSpec {
    pub fn host_network(&self) -> bool {
        self.namespaces.network == NsMode::Node
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Persisted before the kernel is touched; a record still `Creating` at start-up is the
    /// trace of an interrupted RunPodSandbox and is rolled back.
    Creating,
    Ready,
    NotReady,
}

impl SandboxState {
    /// Stop is allowed from every state and is a no-op once stopped.
    pub fn needs_stop(self) -> bool {
        !matches!(self, SandboxState::NotReady)
    }
}

/// Namespace pins (bind mounts of nsfs files) made for the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: Option<PathBuf>,
}

impl Pins {
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts, &self.pid]
            .into_iter()
            .flatten()
    }
}

/// Everything peapod knows about a sandbox; what was made is recorded so that teardown can
/// work from the record alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub spec: PodSpec,
    pub state: SandboxState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub pause: Option<ProcRef>,
    pub pins: Pins,
    pub cgroup: Option<CgroupRecord>,
    pub network: Option<Attachment>,
    /// For host-network pods: the node's IP when the pod was made.
    pub node_ip: Option<IpAddr>,
}

impl SandboxRecord {
    pub fn new(id: String, spec: PodSpec, created_at: i64) -> SandboxRecord {
        SandboxRecord {
            id,
            spec,
            state: SandboxState::Creating,
            created_at,
            pause: None,
            pins: Pins::default(),
            cgroup: None,
            network: None,
            node_ip: None,
        }
    }

    /// The pod's IP as CRI reports it: the attachment's while it has one, the node's for
    /// host-network pods.
    pub fn ip(&self) -> Option<IpAddr> {
        match (&self.network, self.spec.host_network()) {
            (Some(att), _) => Some(att.ip),
            (None, true) => self.node_ip,
            (None, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_guards() {
        assert!(SandboxState::Creating.needs_stop());
        assert!(SandboxState::Ready.needs_stop());
        assert!(!SandboxState::NotReady.needs_stop());
    }

    #[test]
    fn record_round_trips_through_json() {
        let mut r = SandboxRecord::new("ab".repeat(32), PodSpec::default(), 42);
        r.state = SandboxState::Ready;
        r.pins.net = Some("/run/netns/peapod-x".into());
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<SandboxRecord>(&text).unwrap(), r);
    }

    #[test]
    fn host_network_pods_report_the_node_ip() {
        let mut spec = PodSpec::default();
        spec.namespaces.network = NsMode::Node;
        let mut r = SandboxRecord::new("x".into(), spec, 1);
        r.node_ip = Some("192.0.2.1".parse().unwrap());
        assert_eq!(r.ip(), Some("192.0.2.1".parse().unwrap()));
    }
}
