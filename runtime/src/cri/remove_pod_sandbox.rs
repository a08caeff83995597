use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;

#[tracing::instrument(name = "RemovePodSandbox", skip_all, fields(sandbox = %req.pod_sandbox_id))]
pub async fn handle(
    svc: &CriService,
    req: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse, Status> {
    svc.sandboxes.remove(&req.pod_sandbox_id).await?;
    Ok(cri::RemovePodSandboxResponse {})
}
