use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;

#[tracing::instrument(name = "RemoveContainer", skip_all, fields(container = %req.container_id))]
pub async fn handle(
    svc: &CriService,
    req: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse, Status> {
    let c = svc.containers.clone();
    tokio::task::spawn_blocking(move || c.remove(&req.container_id))
        .await
        .expect("no panic")?;
    Ok(cri::RemoveContainerResponse {})
}
