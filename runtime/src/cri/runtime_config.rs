use cri_api::v1 as cri;

use super::CriService;
use crate::config::CgroupDriver;

/// The cgroup driver in use, which the kubelet follows.
pub fn handle(svc: &CriService, _req: cri::RuntimeConfigRequest) -> cri::RuntimeConfigResponse {
    let driver = match svc.sandboxes.cgroups().driver() {
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
    };
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}
