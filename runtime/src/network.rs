//! The node's pod network as the daemon holds it: netsetup's `Network`, the pod CIDR in force
//! (from config or the kubelet's UpdateRuntimeConfig, persisted), and whether it is ready.

use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use ipnet::IpNet;
use netsetup::{Network, NodeNetConfig};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::store::{self, StoreError};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    pod_cidr: Option<IpNet>,
}

pub struct NodeNetwork {
    pub net: Network,
    cidr: RwLock<IpNet>,
    /// Every subnet with pods in it, plus the current CIDR: each gets a gateway and a
    /// masquerade rule.
    subnets: Mutex<Vec<IpNet>>,
    /// `Err(reason)` while the node side could not be set up.
    ready: Mutex<Result<(), String>>,
    state_file: PathBuf,
}

impl NodeNetwork {
    pub fn new(cfg: &Config) -> Result<NodeNetwork, StoreError> {
        let state_file = cfg.state_dir.join("network.json");
        let persisted: Persisted = store::read_json_opt(&state_file)?.unwrap_or_default();
        let cidr = match persisted.pod_cidr {
            Some(c) if c != cfg.pod_cidr => {
                tracing::info!(pod_cidr = %c, configured = %cfg.pod_cidr, "using the pod CIDR last set by UpdateRuntimeConfig");
                c
            }
            _ => cfg.pod_cidr,
        };
        // Over VXLAN, a pod's packets must fit in the node network's MTU with the
        // encapsulation around them.
        let overhead = match cfg.mode {
            netsetup::peers::Mode::Vxlan { .. } => netsetup::peers::VXLAN_OVERHEAD,
            netsetup::peers::Mode::Routed => 0,
        };
        let mtu = cfg
            .mtu
            .unwrap_or_else(|| netsetup::default_route_mtu().unwrap_or(1500) - overhead);
        let net = Network::new(NodeNetConfig {
            bridge: cfg.bridge.clone(),
            mtu,
            ipam_dir: cfg.state_dir.join("ipam").join("peapod"),
        });
        Ok(NodeNetwork {
            net,
            cidr: RwLock::new(cidr),
            subnets: Mutex::new(vec![cidr]),
            ready: Mutex::new(Err("not set up yet".into())),
            state_file,
        })
    }

    pub fn cidr(&self) -> IpNet {
        *self.cidr.read().expect("lock")
    }

    pub fn mtu(&self) -> u32 {
        self.net.config().mtu
    }

    /// Records a subnet that running pods use (found at start-up).
    pub fn add_subnet(&self, subnet: IpNet) {
        let mut s = self.subnets.lock().expect("lock");
        if !s.contains(&subnet) {
            s.push(subnet);
        }
    }

    /// Sets up the node side (idempotent); remembers the outcome for Status.
    pub fn ensure(&self) -> Result<(), String> {
        let subnets = self.subnets.lock().expect("lock").clone();
        let r = self
            .net
            .ensure_node(&subnets)
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        if let Err(reason) = &r {
            tracing::warn!(%reason, "pod network is not ready");
        }
        *self.ready.lock().expect("lock") = r.clone();
        r
    }

    /// Ready, or one more attempt at setting up.
    pub fn ready(&self) -> Result<(), String> {
        if self.ready.lock().expect("lock").is_ok() {
            return Ok(());
        }
        self.ensure()
    }

    pub fn status(&self) -> Result<(), String> {
        self.ready.lock().expect("lock").clone()
    }

    /// New pods get addresses from `cidr`; running pods keep theirs.
    pub fn set_cidr(&self, cidr: IpNet) -> Result<(), StoreError> {
        if self.cidr() == cidr {
            return Ok(());
        }
        store::write_json(
            &self.state_file,
            &Persisted {
                pod_cidr: Some(cidr),
            },
        )?;
        *self.cidr.write().expect("lock") = cidr;
        self.add_subnet(cidr);
        let _ = self.ensure();
        Ok(())
    }
}
