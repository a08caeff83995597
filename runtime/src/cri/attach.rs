//! Attach: checks the container and the streams, then answers a one-time URL of the
//! streaming server where the client joins the container's stdio.

use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use crate::container::validate;
use crate::streaming::tokens::{AttachRequest, Pending};

#[tracing::instrument(name = "Attach", skip_all, fields(container = %req.container_id))]
pub fn handle(svc: &CriService, req: cri::AttachRequest) -> Result<cri::AttachResponse, Status> {
    validate::streams(req.tty, req.stdin, req.stdout, req.stderr)?;
    svc.containers
        .check_attach(&req.container_id, req.stdin, req.tty)?;
    let id = svc.containers.status(&req.container_id)?.id;
    let url = svc
        .streaming
        .url(Pending::Attach(AttachRequest {
            container_id: id,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    Ok(cri::AttachResponse { url })
}
