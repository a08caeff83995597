use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use super::convert;
use crate::container::Filter;

pub fn handle(
    svc: &CriService,
    req: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let state = match f.state {
        None => None,
        Some(v) => Some(convert::container_state_from(v.state).ok_or_else(|| {
            Status::invalid_argument(format!("invalid filter.state: {}", v.state))
        })?),
    };
    let filter = Filter {
        id: (!f.id.is_empty()).then_some(f.id),
        sandbox_id: (!f.pod_sandbox_id.is_empty()).then_some(f.pod_sandbox_id),
        state,
        labels: f.label_selector.into_iter().collect(),
    };
    let containers = svc
        .containers
        .list(&filter)
        .iter()
        .map(convert::container)
        .collect();
    Ok(cri::ListContainersResponse { containers })
}
