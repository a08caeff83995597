use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;

#[tracing::instrument(name = "StopContainer", skip_all, fields(container = %req.container_id))]
pub async fn handle(
    svc: &CriService,
    req: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse, Status> {
    let c = svc.containers.clone();
    tokio::task::spawn_blocking(move || c.stop(&req.container_id, req.timeout))
        .await
        .expect("no panic")?;
    Ok(cri::StopContainerResponse {})
}
