//! Conversions shared by the RPC adapters: domain record → CRI messages.

use cri_api::v1 as cri;

use crate::container::model::Propagation;
use crate::container::{ContainerRecord, ContainerState};
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

pub fn container_state(s: ContainerState) -> cri::ContainerState {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
    }
}

/// None for UNKNOWN (peapod always knows) and values outside the enum.
pub fn container_state_from(v: i32) -> Option<ContainerState> {
    match cri::ContainerState::try_from(v).ok()? {
        cri::ContainerState::ContainerCreated => Some(ContainerState::Created),
        cri::ContainerState::ContainerRunning => Some(ContainerState::Running),
        cri::ContainerState::ContainerExited => Some(ContainerState::Exited),
        cri::ContainerState::ContainerUnknown => None,
    }
}

pub fn propagation(p: Propagation) -> cri::MountPropagation {
    match p {
        Propagation::Private => cri::MountPropagation::PropagationPrivate,
        Propagation::HostToContainer => cri::MountPropagation::PropagationHostToContainer,
        Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
    }
}

pub fn container_metadata(r: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: r.spec.name.clone(),
        attempt: r.spec.attempt,
    }
}

pub fn image_spec(r: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: r.spec.image.clone(),
        ..Default::default()
    }
}

pub fn container(r: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        metadata: Some(container_metadata(r)),
        image: Some(image_spec(r)),
        image_ref: r.image_ref.clone(),
        image_id: r.image_id.clone(),
        state: container_state(r.state) as i32,
        created_at: r.created_at,
        labels: r.spec.labels.clone().into_iter().collect(),
        annotations: r.spec.annotations.clone().into_iter().collect(),
    }
}
