use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use super::pod_sandbox_stats::pod_stats;
use crate::sandbox::Filter;

/// The ready pods that match the filter (id prefix, labels).
#[tracing::instrument(name = "ListPodSandboxStats", skip_all)]
pub async fn handle(
    svc: &CriService,
    req: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, Status> {
    let f = req.filter.unwrap_or_default();
    let filter = Filter {
        id: (!f.id.is_empty()).then_some(f.id),
        state: None,
        labels: f.label_selector.into_iter().collect(),
    };
    let c = svc.containers.clone();
    let stats = tokio::task::spawn_blocking(move || c.list_pod_stats(filter))
        .await
        .expect("no panic");
    Ok(cri::ListPodSandboxStatsResponse {
        stats: stats.iter().map(pod_stats).collect(),
    })
}
