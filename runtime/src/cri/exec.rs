//! Exec: checks the request, then answers a one-time URL of the streaming server where the
//! command runs when the client connects.

use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use crate::container::{ContainerError, ContainerState, validate};
use crate::streaming::tokens::{ExecRequest, Pending};

#[tracing::instrument(name = "Exec", skip_all, fields(container = %req.container_id))]
pub fn handle(svc: &CriService, req: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
    validate::exec_request(&req.cmd, req.tty, req.stdin, req.stdout, req.stderr)?;
    let rec = svc.containers.status(&req.container_id)?;
    if rec.state != ContainerState::Running {
        return Err(ContainerError::WrongState {
            id: rec.id,
            state: rec.state,
            op: "exec",
        }
        .into());
    }
    let url = svc
        .streaming
        .url(Pending::Exec(ExecRequest {
            container_id: rec.id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    Ok(cri::ExecResponse { url })
}
