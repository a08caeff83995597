//! Pod operations over CRI, with errors that name the pod.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use cri_api::v1::{
    ListPodSandboxRequest, PodSandbox, PodSandboxStatusRequest, PodSandboxStatusResponse,
    RemovePodSandboxRequest, StopPodSandboxRequest,
};

use crate::cri::PodConfig;
use crate::node::Node;

/// The verbose `info` of a pod, as PodSandboxStatus returns it.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub id: String,
    /// Pid of the pause process, as seen inside the node; none once the pod is stopped.
    pub pid: Option<u32>,
    pub netns_path: String,
    pub host_veth: String,
    pub ip: String,
    pub cgroup_path: String,
    pub raw: serde_json::Value,
}

impl PodInfo {
    /// The pause pid (inside the node); an error for a pod without one.
    pub fn pause_pid(&self) -> Result<u32> {
        self.pid
            .with_context(|| format!("pod {} reports no pause pid: {}", self.id, self.raw))
    }
}

/// Whether `id` looks like a sandbox id: 64 lowercase hex characters.
pub fn is_sandbox_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether the IPv4 address `ip` lies in `cidr` (e.g. `10.88.0.0/16`).
pub fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (Ok(ip), Some((net, len))) = (ip.parse::<Ipv4Addr>(), cidr.split_once('/')) else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

impl Node {
    /// RunPodSandbox; returns the sandbox id.
    pub async fn run_pod(&self, config: &PodConfig) -> Result<String> {
        let response = self
            .client()
            .await?
            .run_pod_sandbox(config.request())
            .await
            .with_context(|| format!("RunPodSandbox {}", config.name))?;
        let id = response.into_inner().pod_sandbox_id;
        if !is_sandbox_id(&id) {
            bail!(
                "RunPodSandbox {} returned {id:?}, not a 64-hex id",
                config.name
            );
        }
        Ok(id)
    }

    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let request = StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        let mut client = self.client().await?;
        client
            .stop_pod_sandbox(request)
            .await
            .with_context(|| format!("StopPodSandbox {id}"))?;
        Ok(())
    }

    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        let mut client = self.client().await?;
        client
            .remove_pod_sandbox(request)
            .await
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        Ok(())
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub async fn stop_and_remove(&self, id: &str) -> Result<()> {
        self.stop_pod(id).await?;
        self.remove_pod(id).await
    }

    pub async fn pod_status(&self, id: &str) -> Result<PodSandboxStatusResponse> {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        };
        let response = self.client().await?.pod_sandbox_status(request).await;
        Ok(response
            .with_context(|| format!("PodSandboxStatus {id}"))?
            .into_inner())
    }

    /// The verbose info of pod `id`, parsed.
    pub async fn pod_info(&self, id: &str) -> Result<PodInfo> {
        let status = self.pod_status(id).await?;
        let json = status
            .info
            .get("info")
            .with_context(|| format!("PodSandboxStatus {id} (verbose) has no info[\"info\"]"))?;
        let raw: serde_json::Value =
            serde_json::from_str(json).with_context(|| format!("info of {id} is not JSON"))?;
        let text = |key: &str| {
            raw.get(key)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let pid = match raw.get("pid") {
            None | Some(serde_json::Value::Null) => None,
            Some(pid) => Some(
                pid.as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .with_context(|| format!("info of {id} has a bad pid: {json}"))?,
            ),
        };
        Ok(PodInfo {
            id: id.to_owned(),
            pid,
            netns_path: text("netnsPath"),
            host_veth: text("hostVeth"),
            ip: text("ip"),
            cgroup_path: text("cgroupPath"),
            raw,
        })
    }

    /// Every pod ListPodSandbox knows, unfiltered.
    pub async fn list_pods(&self) -> Result<Vec<PodSandbox>> {
        let response = self
            .client()
            .await?
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .context("ListPodSandbox")?;
        Ok(response.into_inner().items)
    }

    /// The ids ListPodSandbox knows, sorted.
    pub async fn pod_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self.list_pods().await?.into_iter().map(|p| p.id).collect();
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_membership() {
        assert!(in_cidr("10.88.0.2", "10.88.0.0/16"));
        assert!(in_cidr("10.88.255.254", "10.88.0.0/16"));
        assert!(!in_cidr("10.89.0.1", "10.88.0.0/16"));
        assert!(in_cidr("10.77.0.6", "10.77.0.0/29"));
        assert!(!in_cidr("10.77.0.8", "10.77.0.0/29"));
        assert!(in_cidr("192.0.2.1", "0.0.0.0/0"));
        assert!(!in_cidr("not an ip", "10.0.0.0/8"));
        assert!(!in_cidr("10.0.0.1", "10.0.0.0"));
    }

    #[test]
    fn sandbox_ids() {
        assert!(is_sandbox_id(&"ab12".repeat(16)));
        assert!(!is_sandbox_id(&"AB12".repeat(16)));
        assert!(!is_sandbox_id("abc"));
    }
}
