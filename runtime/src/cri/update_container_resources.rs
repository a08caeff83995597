use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;

#[tracing::instrument(name = "UpdateContainerResources", skip_all, fields(container = %req.container_id))]
pub async fn handle(
    svc: &CriService,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    let new = super::resources::from_cri(req.linux.unwrap_or_default())?;
    let c = svc.containers.clone();
    tokio::task::spawn_blocking(move || c.update_resources(&req.container_id, &new))
        .await
        .expect("no panic")?;
    Ok(cri::UpdateContainerResourcesResponse {})
}
