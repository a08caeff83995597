use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;

#[tracing::instrument(name = "ReopenContainerLog", skip_all, fields(container = %req.container_id))]
pub async fn handle(
    svc: &CriService,
    req: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, Status> {
    let c = svc.containers.clone();
    tokio::task::spawn_blocking(move || c.reopen_log(&req.container_id))
        .await
        .expect("no panic")?;
    Ok(cri::ReopenContainerLogResponse {})
}
