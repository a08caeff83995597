//! Conversions shared by the RPC adapters: domain record → CRI messages.

use k8s_cri::v1 as cri;

use crate::sandbox::model::{NamespaceOptions, NsMode};
use crate::sandbox::{PodMetadata, SandboxRecord, SandboxState};

pub fn metadata(m: &PodMetadata) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

pub fn state(s: SandboxState) -> cri::PodSandboxState {
    match s {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        SandboxState::Creating | SandboxState::NotReady => cri::PodSandboxState::SandboxNotready,
    }
}

pub fn ns_mode(m: NsMode) -> cri::NamespaceMode {
    match m {
        NsMode::Pod => cri::NamespaceMode::Pod,
        NsMode::Container => cri::NamespaceMode::Container,
        NsMode::Node => cri::NamespaceMode::Node,
        NsMode::Target => cri::NamespaceMode::Target,
    }
}

pub fn ns_mode_from(v: i32) -> Option<NsMode> {
    Some(match cri::NamespaceMode::try_from(v).ok()? {
        cri::NamespaceMode::Pod => NsMode::Pod,
        cri::NamespaceMode::Container => NsMode::Container,
        cri::NamespaceMode::Node => NsMode::Node,
        cri::NamespaceMode::Target => NsMode::Target,
    })
}

pub fn namespace_options(o: &NamespaceOptions) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: ns_mode(o.network) as i32,
        pid: ns_mode(o.pid) as i32,
        ipc: ns_mode(o.ipc) as i32,
        target_id: o.target_id.clone(),
        userns_options: None,
    }
}

pub fn pod_sandbox(r: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: r.id.clone(),
        metadata: Some(metadata(&r.spec.metadata)),
        state: state(r.state) as i32,
        created_at: r.created_at,
        labels: r.spec.labels.clone().into_iter().collect(),
        annotations: r.spec.annotations.clone().into_iter().collect(),
        runtime_handler: r.spec.runtime_handler.clone(),
    }
}
