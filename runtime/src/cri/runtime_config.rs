use cri_api::v1 as cri;

/// peapod drives cgroups through cgroupfs.
pub fn handle(_req: cri::RuntimeConfigRequest) -> cri::RuntimeConfigResponse {
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
        }),
    }
}
