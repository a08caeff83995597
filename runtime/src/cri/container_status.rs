use std::collections::HashMap;

use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use super::convert;
use crate::container::ContainerRecord;

#[tracing::instrument(name = "ContainerStatus", skip_all, fields(container = %req.container_id))]
pub fn handle(
    svc: &CriService,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    let rec = svc.containers.status(&req.container_id)?;
    let info = if req.verbose {
        HashMap::from([("info".to_owned(), verbose_info(&rec).to_string())])
    } else {
        HashMap::new()
    };
    Ok(cri::ContainerStatusResponse {
        status: Some(status(&rec)),
        info,
    })
}

pub(super) fn status(r: &ContainerRecord) -> cri::ContainerStatus {
    let exit = r.exit.as_ref();
    cri::ContainerStatus {
        stop_signal: super::signal::of(r.stop_signal) as i32,
        id: r.id.clone(),
        metadata: Some(convert::container_metadata(r)),
        state: convert::container_state(r.state) as i32,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: exit.map_or(0, |e| e.finished_at),
        exit_code: exit.map_or(0, |e| e.exit_code),
        image: Some(convert::image_spec(r)),
        image_ref: r.image_ref.clone(),
        image_id: r.image_id.clone(),
        reason: exit.map(|e| e.reason().to_owned()).unwrap_or_default(),
        message: exit
            .and_then(|e| e.start_error.clone().or_else(|| e.lost.clone()))
            .unwrap_or_default(),
        labels: r.spec.labels.clone().into_iter().collect(),
        annotations: r.spec.annotations.clone().into_iter().collect(),
        mounts: r
            .spec
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                propagation: convert::propagation(m.propagation) as i32,
                image: (!m.image.is_empty()).then(|| cri::ImageSpec {
                    image: m.image.clone(),
                    ..Default::default()
                }),
                image_sub_path: m.image_sub_path.clone(),
                ..Default::default()
            })
            .collect(),
        log_path: r.log_path.clone(),
        resources: Some(super::resources::to_cri(&r.spec.resources)),
        user: r.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: u.uid.into(),
                gid: u.gid.into(),
                supplemental_groups: u.groups.iter().map(|&g| g.into()).collect(),
            }),
        }),
    }
}

/// The pid, the monitor, the cgroup and the exit record, for operators.
fn verbose_info(r: &ContainerRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "sandboxID": r.sandbox_id,
        "state": format!("{:?}", r.state),
        "pid": r.running.map(|x| x.init.pid),
        "pidStartTime": r.running.map(|x| x.init.start_time),
        "monitorPid": r.running.map(|x| x.monitor.pid),
        "cgroupPath": r.cgroup.as_ref().map(|c| c.rel.clone()),
        "exit": r.exit,
        "config": r.spec,
    })
}
