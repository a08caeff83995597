//! CreateContainer: proto → `ContainerSpec`, create, id back.

use cri_api::v1 as cri;
use tonic::Status;
use tracing::Instrument;

use super::CriService;
use super::convert::ns_mode_from;
use crate::container::ContainerError;
use crate::container::model::{
    ContainerSpec, DeviceReq, MountReq, Propagation, SeccompReq, SecurityReq,
};
use crate::sandbox::model::NsMode;

pub async fn handle(
    svc: &CriService,
    req: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, Status> {
    let sandbox_id = req.pod_sandbox_id.clone();
    let spec = to_spec(req)?;
    let span =
        tracing::info_span!("CreateContainer", sandbox = %sandbox_id, container = %spec.name);
    let containers = svc.containers.clone();
    let id = tokio::task::spawn_blocking(move || containers.create(&sandbox_id, spec))
        .instrument(span)
        .await
        .expect("no panic")?;
    Ok(cri::CreateContainerResponse { container_id: id })
}

fn invalid(field: &str, reason: &str) -> ContainerError {
    ContainerError::invalid(field, reason)
}

/// Whether the policy is Strict (Merge, the default, is not).
fn strict_groups(policy: i32) -> Result<bool, ContainerError> {
    match cri::SupplementalGroupsPolicy::try_from(policy) {
        Ok(cri::SupplementalGroupsPolicy::Merge) => Ok(false),
        Ok(cri::SupplementalGroupsPolicy::Strict) => Ok(true),
        Err(_) => Err(invalid(
            "linux.security_context.supplemental_groups_policy",
            "unknown policy",
        )),
    }
}

fn seccomp(sc: &cri::LinuxContainerSecurityContext) -> Result<SeccompReq, ContainerError> {
    use cri::security_profile::ProfileType;
    if let Some(p) = &sc.seccomp {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(SeccompReq::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(SeccompReq::Unconfined),
            Ok(ProfileType::Localhost) if p.localhost_ref.starts_with('/') => {
                Ok(SeccompReq::Localhost(p.localhost_ref.clone().into()))
            }
            Ok(ProfileType::Localhost) => Err(invalid(
                "seccomp.localhost_ref",
                "must be an absolute path on the node",
            )),
            Err(_) => Err(invalid("seccomp.profile_type", "unknown profile type")),
        };
    }
    // None: the kubelet's default, Unconfined.
    Ok(SeccompReq::Unconfined)
}

/// Field-by-field conversion; semantic checks are the container module's.
pub fn to_spec(req: cri::CreateContainerRequest) -> Result<ContainerSpec, ContainerError> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid("pod_sandbox_id", "must not be empty"));
    }
    let config = req.config.ok_or_else(|| invalid("config", "is required"))?;
    let m = config
        .metadata
        .ok_or_else(|| invalid("config.metadata", "is required"))?;
    let image = config.image.map(|i| i.image).unwrap_or_default();
    if image.is_empty() {
        return Err(invalid("config.image", "is required"));
    }
    let linux = config.linux.unwrap_or_default();
    let res = linux.resources.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let pid = match &sc.namespace_options {
        Some(ns) => {
            ns_mode_from(ns.pid).ok_or_else(|| invalid("namespace_options.pid", "unknown mode"))?
        }
        None => NsMode::Container,
    };
    let mounts = config
        .mounts
        .into_iter()
        .map(|mnt| {
            if !mnt.container_path.starts_with('/') {
                return Err(invalid("mounts.container_path", "must be absolute"));
            }
            let image = mnt.image.map(|i| i.image).unwrap_or_default();
            match (mnt.host_path.is_empty(), image.is_empty()) {
                (true, true) => {
                    return Err(invalid("mounts.host_path", "must not be empty"));
                }
                (false, false) => {
                    return Err(invalid(
                        "mounts.image",
                        "a mount has a host_path or an image, not both",
                    ));
                }
                _ => {}
            }
            let sub = std::path::Path::new(&mnt.image_sub_path);
            if !mnt.image_sub_path.is_empty()
                && (image.is_empty()
                    || sub.is_absolute()
                    || sub
                        .components()
                        .any(|c| c == std::path::Component::ParentDir))
            {
                return Err(invalid(
                    "mounts.image_sub_path",
                    "must be a relative path within the image, without '..', with an image",
                ));
            }
            let propagation = match cri::MountPropagation::try_from(mnt.propagation) {
                Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
                Ok(cri::MountPropagation::PropagationHostToContainer) => {
                    Propagation::HostToContainer
                }
                Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
                Err(_) => return Err(invalid("mounts.propagation", "unknown propagation")),
            };
            // As the CRI says: recursive read-only only with readonly and private
            // propagation (the kernel cannot keep a shared or slave tree read-only).
            if mnt.recursive_read_only && !mnt.readonly {
                return Err(invalid(
                    "mounts.recursive_read_only",
                    "needs readonly: true as well",
                ));
            }
            if mnt.recursive_read_only && propagation != Propagation::Private {
                return Err(invalid(
                    "mounts.recursive_read_only",
                    "needs propagation PROPAGATION_PRIVATE",
                ));
            }
            Ok(MountReq {
                container_path: mnt.container_path,
                host_path: mnt.host_path,
                readonly: mnt.readonly,
                recursive_read_only: mnt.recursive_read_only,
                propagation,
                image,
                image_sub_path: mnt.image_sub_path,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Env values are bytes on the wire; a process's environment is text here.
    let envs = config
        .envs
        .into_iter()
        .map(|kv| match String::from_utf8(kv.value) {
            Ok(v) => Ok((kv.key, v)),
            Err(_) => Err(invalid("envs.value", "is not UTF-8")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stop_signal = super::signal::name(config.stop_signal)
        .map_err(|_| invalid("stop_signal", "is no signal the CRI names"))?;
    Ok(ContainerSpec {
        name: m.name,
        attempt: m.attempt,
        image,
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        envs,
        stop_signal,
        mounts,
        devices: config
            .devices
            .into_iter()
            .map(|d| DeviceReq {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        log_path: config.log_path,
        stdio: crate::container::model::StdioMode {
            stdin: config.stdin,
            stdin_once: config.stdin && config.stdin_once,
            tty: config.tty,
        },
        resources: super::resources::from_cri(res)?,
        security: SecurityReq {
            seccomp: seccomp(&sc)?,
            privileged: sc.privileged,
            add_caps: caps.add_capabilities,
            drop_caps: caps.drop_capabilities,
            run_as_user: sc.run_as_user.map(|v| v.value),
            run_as_group: sc.run_as_group.map(|v| v.value),
            run_as_username: sc.run_as_username,
            supplemental_groups: sc.supplemental_groups,
            strict_groups: strict_groups(sc.supplemental_groups_policy)?,
            readonly_rootfs: sc.readonly_rootfs,
            no_new_privs: sc.no_new_privs,
            masked_paths: sc.masked_paths,
            readonly_paths: sc.readonly_paths,
            pid,
            target_id: sc
                .namespace_options
                .map(|n| n.target_id)
                .unwrap_or_default(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_refuses() {
        let mut req = cri::CreateContainerRequest {
            pod_sandbox_id: "p".into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "web".into(),
                    attempt: 1,
                }),
                image: Some(cri::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        seccomp: Some(cri::SecurityProfile {
                            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                            localhost_ref: String::new(),
                        }),
                        run_as_user: Some(cri::Int64Value { value: 1000 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        let spec = to_spec(req.clone()).unwrap();
        assert_eq!((spec.name.as_str(), spec.attempt), ("web", 1));
        assert_eq!(spec.security.seccomp, SeccompReq::RuntimeDefault);
        assert_eq!(spec.security.run_as_user, Some(1000));
        assert_eq!(spec.security.pid, NsMode::Container);
        req.config.as_mut().unwrap().mounts.push(cri::Mount {
            container_path: "relative".into(),
            host_path: "/tmp".into(),
            ..Default::default()
        });
        assert!(matches!(to_spec(req), Err(ContainerError::Invalid { .. })));
    }
}
