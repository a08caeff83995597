use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;

#[tracing::instrument(name = "StopPodSandbox", skip_all, fields(sandbox = %req.pod_sandbox_id))]
pub async fn handle(
    svc: &CriService,
    req: cri::StopPodSandboxRequest,
) -> Result<cri::StopPodSandboxResponse, Status> {
    svc.sandboxes.stop(&req.pod_sandbox_id).await?;
    Ok(cri::StopPodSandboxResponse {})
}
