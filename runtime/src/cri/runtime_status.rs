//! Status: RuntimeReady and NetworkReady, truthfully.

use cri_api::v1 as cri;

use super::CriService;

pub fn handle(svc: &CriService, req: cri::StatusRequest) -> cri::StatusResponse {
    let net = svc.net.status();
    let conditions = vec![
        cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: net.is_ok(),
            reason: if net.is_ok() {
                String::new()
            } else {
                "NetworkSetupFailed".into()
            },
            message: net.clone().err().unwrap_or_default(),
        },
    ];
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        let v = serde_json::json!({
            "podCIDR": svc.net.cidr().to_string(),
            "bridge": svc.net.net.config().bridge,
            "mtu": svc.net.mtu(),
            "cgroupVersion": svc.sandboxes.cgroup_version(),
            "cgroupDriver": "cgroupfs",
            "networkError": net.err(),
            "version": env!("CARGO_PKG_VERSION"),
            "streamServer": svc.streaming.base_url(),
        });
        info.insert("info".to_owned(), v.to_string());
    }
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus { conditions }),
        info,
        runtime_handlers: vec![cri::RuntimeHandler {
            name: String::new(),
            features: Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: recursive_read_only_mounts(),
                user_namespaces: false,
            }),
        }],
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: true,
            user_namespaces_host_network: false,
        }),
    }
}

/// Whether this kernel can make a mount read-only with the mounts below it (probed once).
fn recursive_read_only_mounts() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(crate::monitor::rootfs::kernel_fs::recursive_readonly_supported)
}
