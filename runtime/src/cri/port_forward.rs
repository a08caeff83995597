//! PortForward: checks the pod and the ports, then answers a one-time URL of the streaming
//! server; the client names the ports it forwards on the connection (each must be one of the
//! request's, if the request named any).

use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use crate::sandbox::model::SandboxState;
use crate::streaming::tokens::{Pending, PortForwardRequest};

/// Ports one request may name.
const MAX_PORTS: usize = 64;

#[tracing::instrument(name = "PortForward", skip_all, fields(pod = %req.pod_sandbox_id))]
pub fn handle(
    svc: &CriService,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    if req.port.len() > MAX_PORTS {
        return Err(Status::invalid_argument(format!(
            "port: more than {MAX_PORTS} ports"
        )));
    }
    let mut ports = Vec::with_capacity(req.port.len());
    for p in &req.port {
        match u16::try_from(*p) {
            Ok(p) if p != 0 => ports.push(p),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "port: {p} is outside 1..=65535"
                )));
            }
        }
    }
    let rec = svc.sandboxes.status(&req.pod_sandbox_id)?;
    if rec.state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready",
            rec.id
        )));
    }
    let url = svc
        .streaming
        .url(Pending::PortForward(PortForwardRequest {
            sandbox_id: rec.id,
            ports,
        }))
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    Ok(cri::PortForwardResponse { url })
}
