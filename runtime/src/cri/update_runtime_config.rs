//! UpdateRuntimeConfig: the kubelet hands over the node's pod CIDR. New pods use it;
//! running pods keep their IPs.

use cri_api::v1 as cri;
use ipnet::IpNet;
use tonic::Status;

use super::CriService;
use crate::config::validate_cidr;

pub async fn handle(
    svc: &CriService,
    req: cri::UpdateRuntimeConfigRequest,
) -> Result<cri::UpdateRuntimeConfigResponse, Status> {
    let cidrs = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    if cidrs.trim().is_empty() {
        return Ok(cri::UpdateRuntimeConfigResponse {});
    }
    // Dual-stack nodes send "v4,v6": take the IPv4 one (IPv6 pods come later).
    let mut v4 = None;
    for c in cidrs.split(',').map(str::trim) {
        let net: IpNet = c.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "invalid runtime_config.network_config.pod_cidr: {c:?} is not a CIDR"
            ))
        })?;
        if let IpNet::V4(_) = net {
            validate_cidr(&net).map_err(|e| Status::invalid_argument(e.to_string()))?;
            v4.get_or_insert(net.trunc());
        } else {
            tracing::info!(pod_cidr = %net, "ignoring IPv6 pod CIDR: not supported yet");
        }
    }
    if let Some(cidr) = v4 {
        let net = svc.net.clone();
        tokio::task::spawn_blocking(move || net.set_cidr(cidr))
            .await
            .expect("no panic")?;
        tracing::info!(pod_cidr = %cidr, "pod CIDR updated");
    }
    Ok(cri::UpdateRuntimeConfigResponse {})
}
