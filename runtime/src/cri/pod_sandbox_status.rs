use std::collections::HashMap;

use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use super::convert;
use crate::sandbox::{SandboxRecord, Sandboxes};

#[tracing::instrument(name = "PodSandboxStatus", skip_all, fields(sandbox = %req.pod_sandbox_id))]
pub fn handle(
    svc: &CriService,
    req: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    let rec = svc.sandboxes.status(&req.pod_sandbox_id)?;
    let info = if req.verbose {
        HashMap::from([("info".to_owned(), verbose_info(&rec).to_string())])
    } else {
        HashMap::new()
    };
    Ok(cri::PodSandboxStatusResponse {
        status: Some(status(&rec)),
        info,
        containers_statuses: Vec::new(),
        timestamp: 0,
    })
}

pub(super) fn status(r: &SandboxRecord) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(convert::metadata(&r.spec.metadata)),
        state: convert::state(r.state) as i32,
        created_at: r.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: r.ip().map(|ip| ip.to_string()).unwrap_or_default(),
            additional_ips: Vec::new(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(convert::namespace_options(&r.spec.namespaces)),
            }),
        }),
        labels: r.spec.labels.clone().into_iter().collect(),
        annotations: r.spec.annotations.clone().into_iter().collect(),
        runtime_handler: r.spec.runtime_handler.clone(),
    }
}

/// What an operator needs at 3 a.m.: the pause, the namespaces, the links, the cgroup.
fn verbose_info(r: &SandboxRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "state": format!("{:?}", r.state),
        "pid": r.pause.map(|p| p.pid),
        "pidStartTime": r.pause.map(|p| p.start_time),
        "netnsPath": r.pins.net.as_ref().map(|_| Sandboxes::netns_pin(&r.id)),
        "pins": r.pins,
        "hostVeth": r.network.as_ref().map(|a| a.host_ifname.clone()),
        "ip": r.ip(),
        "network": r.network,
        "cgroupPath": r.cgroup.as_ref().map(|c| c.rel.clone()),
        "config": r.spec,
    })
}
