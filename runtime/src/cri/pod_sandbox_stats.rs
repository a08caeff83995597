use cri_api::v1 as cri;
use tonic::Status;

use super::CriService;
use super::container_stats::{container_stats, cpu, memory};
use super::convert;
use crate::container::pod_stats::{InterfaceUsage, PodStats};

#[tracing::instrument(name = "PodSandboxStats", skip_all, fields(sandbox = %req.pod_sandbox_id))]
pub async fn handle(
    svc: &CriService,
    req: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, Status> {
    let c = svc.containers.clone();
    let stats = tokio::task::spawn_blocking(move || c.pod_stats(&req.pod_sandbox_id))
        .await
        .expect("no panic")?;
    Ok(cri::PodSandboxStatsResponse {
        stats: Some(pod_stats(&stats)),
    })
}

fn interface(i: &InterfaceUsage) -> cri::NetworkInterfaceUsage {
    let v = |value| Some(cri::UInt64Value { value });
    cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: v(i.rx_bytes),
        rx_errors: v(i.rx_errors),
        tx_bytes: v(i.tx_bytes),
        tx_errors: v(i.tx_errors),
    }
}

pub fn pod_stats(s: &PodStats) -> cri::PodSandboxStats {
    let r = &s.rec;
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: r.id.clone(),
            metadata: Some(convert::metadata(&r.spec.metadata)),
            labels: r.spec.labels.clone().into_iter().collect(),
            annotations: r.spec.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: s.cpu.as_ref().map(cpu),
            memory: s.memory.as_ref().map(memory),
            network: s.network.as_ref().map(|n| cri::NetworkUsage {
                timestamp: n.timestamp,
                default_interface: n.default_interface.as_ref().map(interface),
                interfaces: n.interfaces.iter().map(interface).collect(),
            }),
            process: s.processes.map(|(timestamp, count)| cri::ProcessUsage {
                timestamp,
                process_count: Some(cri::UInt64Value { value: count }),
            }),
            containers: s.containers.iter().map(container_stats).collect(),
            io: s.io.as_ref().map(super::container_stats::io),
        }),
        windows: None,
    }
}
