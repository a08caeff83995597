use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;

/// UpdatePodSandboxResources (in-place pod resize): the kubelet calls it after it has resized
/// the pod's own cgroup, the parent of everything peapod makes for the pod, and treats it as
/// best effort. peapod keeps no pod-level limits of its own below that cgroup (and has no
/// NRI plugins to tell), so there is nothing to change: the pod must exist (NotFound
/// otherwise), and the answer is OK.
#[tracing::instrument(name = "UpdatePodSandboxResources", skip_all, fields(sandbox = %req.pod_sandbox_id))]
pub fn handle(
    svc: &CriService,
    req: cri::UpdatePodSandboxResourcesRequest,
) -> Result<cri::UpdatePodSandboxResourcesResponse, Status> {
    svc.sandboxes.status(&req.pod_sandbox_id)?;
    Ok(cri::UpdatePodSandboxResourcesResponse {})
}
