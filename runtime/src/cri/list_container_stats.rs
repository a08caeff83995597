use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use super::container_stats::container_stats;
use crate::container::Filter;

/// The running containers only, as the CRI says and containerd does.
#[tracing::instrument(name = "ListContainerStats", skip_all)]
pub async fn handle(
    svc: &CriService,
    req: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let filter = Filter {
        id: (!f.id.is_empty()).then_some(f.id),
        sandbox_id: (!f.pod_sandbox_id.is_empty()).then_some(f.pod_sandbox_id),
        state: None,
        labels: f.label_selector.into_iter().collect(),
    };
    let c = svc.containers.clone();
    let stats = tokio::task::spawn_blocking(move || c.list_stats(filter))
        .await
        .expect("no panic");
    Ok(cri::ListContainerStatsResponse {
        stats: stats.iter().map(container_stats).collect(),
    })
}
