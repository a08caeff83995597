use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;

#[tracing::instrument(name = "StartContainer", skip_all, fields(container = %req.container_id))]
pub async fn handle(
    svc: &CriService,
    req: cri::StartContainerRequest,
) -> Result<cri::StartContainerResponse, Status> {
    let c = svc.containers.clone();
    tokio::task::spawn_blocking(move || c.start(&req.container_id))
        .await
        .expect("no panic")?;
    Ok(cri::StartContainerResponse {})
}
