use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use super::convert;
use crate::sandbox::{Filter, SandboxState};

pub fn handle(
    svc: &CriService,
    req: cri::ListPodSandboxRequest,
) -> Result<cri::ListPodSandboxResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let state = match f.state {
        None => None,
        Some(v) => Some(match cri::PodSandboxState::try_from(v.state) {
            Ok(cri::PodSandboxState::SandboxReady) => SandboxState::Ready,
            Ok(cri::PodSandboxState::SandboxNotready) => SandboxState::NotReady,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "invalid filter.state: {}",
                    v.state
                )));
            }
        }),
    };
    let filter = Filter {
        id: (!f.id.is_empty()).then_some(f.id),
        state,
        labels: f.label_selector.into_iter().collect(),
    };
    let items = svc
        .sandboxes
        .list(&filter)
        .iter()
        .map(convert::pod_sandbox)
        .collect();
    Ok(cri::ListPodSandboxResponse { items })
}
