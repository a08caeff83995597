use k8s_cri::v1 as cri;
use tonic::Status;

use super::CriService;
use crate::container::model::Resources;

#[tracing::instrument(name = "UpdateContainerResources", skip_all, fields(container = %req.container_id))]
pub async fn handle(
    svc: &CriService,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    let new = from_cri(req.linux.unwrap_or_default())?;
    let c = svc.containers.clone();
    tokio::task::spawn_blocking(move || c.update_resources(&req.container_id, &new))
        .await
        .expect("no panic")?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

/// Hugepage and cpuset limits are not applied by peapod: a request for them is refused
/// rather than silently dropped.
fn from_cri(l: cri::LinuxContainerResources) -> Result<Resources, Status> {
    if !l.hugepage_limits.is_empty() {
        return Err(Status::invalid_argument(
            "linux.hugepage_limits are not supported by peapod",
        ));
    }
    if !l.cpuset_cpus.is_empty() || !l.cpuset_mems.is_empty() {
        return Err(Status::invalid_argument(
            "linux.cpuset_cpus and cpuset_mems are not supported by peapod",
        ));
    }
    Ok(Resources {
        cpu_period: l.cpu_period,
        cpu_quota: l.cpu_quota,
        cpu_shares: l.cpu_shares,
        memory_limit: l.memory_limit_in_bytes,
        memory_swap_limit: l.memory_swap_limit_in_bytes,
        oom_score_adj: l.oom_score_adj,
        unified: l.unified.into_iter().collect(),
    })
}

/// The container's resources as ContainerStatus reports them.
pub fn to_cri(r: &Resources) -> cri::ContainerResources {
    cri::ContainerResources {
        linux: Some(cri::LinuxContainerResources {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit,
            oom_score_adj: r.oom_score_adj,
            memory_swap_limit_in_bytes: r.memory_swap_limit,
            unified: r.unified.clone().into_iter().collect(),
            ..Default::default()
        }),
        windows: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let l = cri::LinuxContainerResources {
            cpu_quota: 20_000,
            memory_limit_in_bytes: 1 << 26,
            unified: [("pids.max".to_owned(), "9".to_owned())].into(),
            ..Default::default()
        };
        let r = from_cri(l.clone()).unwrap();
        assert_eq!(to_cri(&r).linux.unwrap(), l);
        let cpuset = cri::LinuxContainerResources {
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        assert_eq!(
            from_cri(cpuset).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
