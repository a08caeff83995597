//! What the runtime hands the plugin: the `CNI_*` environment and the network configuration
//! on stdin, decoded and checked before anything is touched.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use netsetup::IpNet;
use netsetup::hostport::{HostPort, Protocol};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CniError;
use crate::go_json::go_case;

/// Spec versions this plugin speaks; results are the same in both.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];
/// The version errors carry when the configuration does not say one.
pub const DEFAULT_VERSION: &str = "1.1.0";
/// Where attachments and leases live unless `dataDir` says otherwise.
const DEFAULT_DATA_DIR: &str = "/var/lib/peapod-cni";
const DEFAULT_BRIDGE: &str = "peapod0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(value: Option<&str>) -> Result<Command, CniError> {
        let reason = |r: String| CniError::InvalidEnv {
            var: "CNI_COMMAND",
            reason: r,
        };
        match value {
            Some("ADD") => Ok(Command::Add),
            Some("DEL") => Ok(Command::Del),
            Some("CHECK") => Ok(Command::Check),
            Some("GC") => Ok(Command::Gc),
            Some("STATUS") => Ok(Command::Status),
            Some("VERSION") => Ok(Command::Version),
            Some(other) => Err(reason(format!("is {other:?}, not a CNI command"))),
            None => Err(reason("is not set".into())),
        }
    }
}

/// One attachment: a container's interface, as the runtime names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct AttachmentId {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}
go_case!(AttachmentId, Serialize);

impl AttachmentId {
    /// From `CNI_CONTAINERID` and `CNI_IFNAME`, both required and checked.
    pub fn from_env(
        container_id: Option<String>,
        ifname: Option<String>,
    ) -> Result<AttachmentId, CniError> {
        let missing = |var| CniError::InvalidEnv {
            var,
            reason: "is not set".into(),
        };
        let container_id = container_id.ok_or_else(|| missing("CNI_CONTAINERID"))?;
        let ifname = ifname.ok_or_else(|| missing("CNI_IFNAME"))?;
        check_container_id(&container_id)?;
        netsetup::check_ifname(&ifname).map_err(|_| CniError::InvalidEnv {
            var: "CNI_IFNAME",
            reason: format!("{ifname:?} is not a valid interface name"),
        })?;
        Ok(AttachmentId {
            container_id,
            ifname,
        })
    }
}

/// The spec: alphanumerics, then alphanumerics, `_`, `.` and `-`.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let valid = id.len() <= 256
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(CniError::InvalidEnv {
            var: "CNI_CONTAINERID",
            reason: format!("{id:?} is not a valid container id"),
        })
    }
}

/// A hostPort as runtimes pass it in `runtimeConfig.portMappings` (the `portMappings`
/// capability). Keys in any case: containerd sends Go's field names (`HostPort`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", remote = "Self")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}
go_case!(PortMapping, Serialize);

fn tcp() -> String {
    "tcp".into()
}

impl PortMapping {
    pub fn to_host_port(&self) -> Result<HostPort, CniError> {
        let bad = |reason: String| CniError::invalid_config("runtimeConfig.portMappings", reason);
        let protocol: Protocol = self
            .protocol
            .to_ascii_lowercase()
            .parse()
            .map_err(|()| bad(format!("protocol {:?} is not tcp or udp", self.protocol)))?;
        if self.host_port == 0 || self.container_port == 0 {
            return Err(bad("ports must be 1 to 65535".into()));
        }
        let host_ip = match self.host_ip.as_deref() {
            None | Some("") | Some("0.0.0.0") => None,
            Some(text) => match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => Some(ip),
                Ok(IpAddr::V6(_)) => return Err(bad(format!("hostIP {text}: IPv6 unsupported"))),
                Err(_) => return Err(bad(format!("hostIP {text:?} is not an address"))),
            },
        };
        Ok(HostPort {
            protocol,
            host_ip,
            host_port: self.host_port,
            container_port: self.container_port,
        })
    }
}

/// The capabilities the runtime passes; only ADD uses them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", remote = "Self")]
struct RuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<PortMapping>,
}
go_case!(RuntimeConfig);

/// The network configuration as it comes on stdin, keys matched as a Go plugin matches them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", remote = "Self")]
struct RawConf {
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    bridge: Option<String>,
    subnet: Option<String>,
    mtu: Option<u32>,
    ip_masq: Option<bool>,
    data_dir: Option<PathBuf>,
    /// Decoded apart, so that a runtimeConfig ADD could not use does not stop a DEL.
    runtime_config: Option<Value>,
    prev_result: Option<Value>,
    dns: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<AttachmentId>>,
    /// The name an earlier draft of the spec used; runtimes send both.
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<AttachmentId>>,
}
go_case!(RawConf);

/// The configuration, checked.
#[derive(Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub bridge: String,
    pub subnet: IpNet,
    /// `None`: the MTU of the node's default-route link.
    pub mtu: Option<u32>,
    pub ip_masq: bool,
    /// This network's own directory: `<dataDir>/<name>`.
    pub dir: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    pub host_ports: Vec<HostPort>,
    pub prev_result: Option<Value>,
    pub dns: Option<Value>,
    /// GC's `cni.dev/valid-attachments` (or the older `cni.dev/attachments`); `None` when
    /// the runtime sent neither.
    pub valid_attachments: Option<BTreeSet<AttachmentId>>,
}

impl NetConf {
    /// The configuration for `command`. Only ADD needs the runtimeConfig: the others ignore
    /// one they cannot use (with a warning), so that a runtime can always tear down.
    pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
        let raw: RawConf =
            serde_json::from_slice(stdin).map_err(|source| CniError::Decode { source })?;
        check_version(&raw.cni_version)?;
        if !valid_network_name(&raw.name) {
            return Err(CniError::invalid_config(
                "name",
                format!("{:?} is not a valid network name", raw.name),
            ));
        }
        if raw.kind.is_empty() {
            return Err(CniError::invalid_config("type", "is empty"));
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.into());
        netsetup::check_ifname(&bridge)
            .map_err(|e| CniError::invalid_config("bridge", e.to_string()))?;
        let subnet = parse_subnet(raw.subnet.as_deref())?;
        if let Some(mtu) = raw.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(CniError::invalid_config(
                "mtu",
                format!("{mtu} is not 68 to 65535"),
            ));
        }
        let ip_masq = raw.ip_masq.unwrap_or(true);
        let (port_mappings, host_ports) = match port_mappings(raw.runtime_config, ip_masq) {
            Ok(ports) => ports,
            Err(e) if command != Command::Add => {
                tracing::warn!(error = %crate::error::chain(&e), "runtimeConfig ignored");
                (Vec::new(), Vec::new())
            }
            Err(e) => return Err(e),
        };
        let data_dir = raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        if !data_dir.is_absolute() {
            return Err(CniError::invalid_config(
                "dataDir",
                "must be an absolute path",
            ));
        }
        let valid_attachments = match (raw.valid_attachments, raw.attachments) {
            (None, None) => None,
            (a, b) => Some(a.into_iter().chain(b).flatten().collect()),
        };
        Ok(NetConf {
            dir: data_dir.join(&raw.name),
            cni_version: raw.cni_version,
            bridge,
            subnet,
            mtu: raw.mtu,
            ip_masq,
            port_mappings,
            host_ports,
            prev_result: raw.prev_result,
            dns: raw.dns,
            valid_attachments,
        })
    }
}

/// `runtimeConfig.portMappings`, decoded and checked.
fn port_mappings(
    runtime_config: Option<Value>,
    ip_masq: bool,
) -> Result<(Vec<PortMapping>, Vec<HostPort>), CniError> {
    let runtime_config = match runtime_config {
        None => RuntimeConfig::default(),
        Some(value) => {
            serde_json::from_value(value).map_err(|source| CniError::Decode { source })?
        }
    };
    let port_mappings = runtime_config.port_mappings;
    let host_ports = port_mappings
        .iter()
        .map(PortMapping::to_host_port)
        .collect::<Result<Vec<_>, _>>()?;
    if !host_ports.is_empty() && !ip_masq {
        return Err(CniError::invalid_config(
            "runtimeConfig.portMappings",
            "hostPorts need peapod's nftables table, which ipMasq false turns off",
        ));
    }
    Ok((port_mappings, host_ports))
}

pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::IncompatibleVersion {
            version: version.to_owned(),
        })
    }
}

/// The spec: an alphanumeric, then alphanumerics, `_`, `.` and `-`; it names a directory.
fn valid_network_name(name: &str) -> bool {
    name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An IPv4 subnet with room for at least one pod besides the gateway.
fn parse_subnet(text: Option<&str>) -> Result<IpNet, CniError> {
    let bad = |reason: String| CniError::invalid_config("subnet", reason);
    let text = text.ok_or_else(|| bad("is required".into()))?;
    let subnet: IpNet = text
        .parse()
        .map_err(|_| bad(format!("{text:?} is not a CIDR")))?;
    match subnet {
        IpNet::V4(v4) if v4.prefix_len() <= 30 => Ok(IpNet::V4(v4.trunc())),
        IpNet::V4(_) => Err(bad(format!("{text} leaves no address for a pod"))),
        IpNet::V6(_) => Err(bad(format!("{text}: IPv6 subnets are not supported yet"))),
    }
}

/// How many addresses of an IPv4 subnet pods can get: all but network, gateway, broadcast.
pub fn pool_size(subnet: IpNet) -> u64 {
    let hosts = 1u64 << (32 - u32::from(subnet.prefix_len()));
    hosts.saturating_sub(3)
}

/// The version to answer in, read leniently (for errors and VERSION): the configuration's if
/// it names one.
pub fn version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| DEFAULT_VERSION.into())
}

/// `0.0.0.0` in results' routes.
pub const ANY_V4: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

#[cfg(test)]
mod tests;
