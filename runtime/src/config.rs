//! Daemon configuration: a TOML file (every key optional, unknown keys are an error) with
//! flags on top, and defaults that just work.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::image::RegistryConfig;
use netsetup::peers::{Mode, Peer};

pub const DEFAULT_CONFIG: &str = "/etc/peapod/config.toml";

/// The config file as written; every key optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub pod_cidr: Option<IpNet>,
    pub bridge: Option<String>,
    pub mtu: Option<u32>,
    pub pause_path: Option<PathBuf>,
    /// cgroup parent of pods whose request names none.
    pub cgroup_parent: Option<String>,
    /// `systemd` or `cgroupfs`; unset: `systemd` where systemd is PID 1 and answers on the
    /// system bus.
    pub cgroup_driver: Option<CgroupDriver>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    /// Per registry host: mirrors, insecure, ca, client_cert, client_key (file only, no
    /// flag).
    pub registries: Option<RegistryConfig>,
    /// Where the streaming server (exec, attach, port-forward URLs) listens.
    pub stream_address: Option<IpAddr>,
    /// 0: a free port, chosen at start (Status verbose info tells which).
    pub stream_port: Option<u16>,
    /// PEM certificate chain and key: the streaming server speaks HTTPS.
    pub stream_tls_cert: Option<PathBuf>,
    pub stream_tls_key: Option<PathBuf>,
    /// This node's IPv4 address on the node network (needed by the VXLAN overlay).
    pub node_ip: Option<Ipv4Addr>,
    /// How pods reach other nodes' pods: `routed` (default) or `vxlan`.
    pub overlay: Option<OverlayMode>,
    pub vxlan_vni: Option<u32>,
    pub vxlan_port: Option<u16>,
    /// CIDRs within which pod traffic is not masqueraded besides the nodes' pod CIDRs (e.g.
    /// the cluster CIDR).
    pub cluster_cidrs: Option<Vec<IpNet>>,
    /// The other nodes: `[[peers]]` with `name`, `node_ip`, `pod_cidr` (file only).
    pub peers: Option<Vec<Peer>>,
    /// A kubeconfig file: Services, EndpointSlices and Nodes come from that API server.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name in the cluster (its own Node object is no peer).
    pub node_name: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlayMode {
    #[default]
    Routed,
    Vxlan,
}

/// Who makes pods' cgroups: peapod itself in the cgroup filesystem, or systemd (transient
/// scope units in the slices the kubelet names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The settings in force.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub pod_cidr: IpNet,
    pub bridge: String,
    /// `None`: the MTU of the node's default-route link, 1500 if none.
    pub mtu: Option<u32>,
    pub pause_path: PathBuf,
    pub cgroup_parent: String,
    /// `None`: chosen at start (see [`FileConfig::cgroup_driver`]).
    pub cgroup_driver: Option<CgroupDriver>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub registries: RegistryConfig,
    pub stream_address: IpAddr,
    pub stream_port: u16,
    pub stream_tls_cert: Option<PathBuf>,
    pub stream_tls_key: Option<PathBuf>,
    pub node_ip: Option<Ipv4Addr>,
    pub mode: Mode,
    pub cluster_cidrs: Vec<IpNet>,
    /// Peers from the config file (more come through the Nodes API).
    pub peers: Vec<Peer>,
    /// Watch this API server for Services, EndpointSlices and Nodes (see `crate::kube`).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name in the cluster; default: the hostname, lowercased (as the kubelet
    /// names its Node).
    pub node_name: String,
}

/// VXLAN's IANA port.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads `path`; a missing file at the default location means all defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<FileConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => FileConfig::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(FileConfig::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Layers `over` (the flags) on top of `self` (the file) and fills in defaults.
    pub fn resolve(self, over: FileConfig, exe_dir: &Path) -> Result<Config, ConfigError> {
        let pod_cidr = over
            .pod_cidr
            .or(self.pod_cidr)
            .unwrap_or_else(|| "10.88.0.0/16".parse().expect("valid default"));
        validate_cidr(&pod_cidr)?;
        let bridge = over
            .bridge
            .or(self.bridge)
            .unwrap_or_else(|| "peapod0".into());
        if bridge.is_empty() || bridge.len() > 15 || bridge.contains(['/', ' ']) {
            return Err(ConfigError::Invalid {
                key: "bridge",
                reason: format!("{bridge:?} is not a valid interface name (1-15 characters)"),
            });
        }
        let mtu = over.mtu.or(self.mtu);
        if let Some(m) = mtu
            && !(576..=65535).contains(&m)
        {
            return Err(ConfigError::Invalid {
                key: "mtu",
                reason: format!("{m} is outside 576..=65535"),
            });
        }
        let cgroup_parent = over
            .cgroup_parent
            .or(self.cgroup_parent)
            .unwrap_or_else(|| crate::sandbox::cgroup::DEFAULT_PARENT.into());
        let rel = cgroup_parent.trim_start_matches('/');
        if rel.is_empty()
            || rel.contains('\0')
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(ConfigError::Invalid {
                key: "cgroup_parent",
                reason: format!(
                    "{cgroup_parent:?} must name a cgroup below the root, without '.' or '..'"
                ),
            });
        }
        let registries = over.registries.or(self.registries).unwrap_or_default();
        registries
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                key: "registries",
                reason,
            })?;
        let stream_tls_cert = over.stream_tls_cert.or(self.stream_tls_cert);
        let stream_tls_key = over.stream_tls_key.or(self.stream_tls_key);
        if stream_tls_cert.is_some() != stream_tls_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "stream_tls_cert",
                reason: "stream_tls_cert and stream_tls_key go together".into(),
            });
        }
        let node_ip = over.node_ip.or(self.node_ip);
        let mode = match over.overlay.or(self.overlay).unwrap_or_default() {
            OverlayMode::Routed => Mode::Routed,
            OverlayMode::Vxlan => {
                let vni = over.vxlan_vni.or(self.vxlan_vni).unwrap_or(1);
                if !(1..=0xff_ffff).contains(&vni) {
                    return Err(ConfigError::Invalid {
                        key: "vxlan_vni",
                        reason: format!("{vni} is outside 1..=16777215"),
                    });
                }
                if node_ip.is_none() {
                    return Err(ConfigError::Invalid {
                        key: "node_ip",
                        reason: "overlay = \"vxlan\" needs this node's node_ip".into(),
                    });
                }
                Mode::Vxlan {
                    vni,
                    port: over
                        .vxlan_port
                        .or(self.vxlan_port)
                        .unwrap_or(DEFAULT_VXLAN_PORT),
                }
            }
        };
        let peers = over.peers.or(self.peers).unwrap_or_default();
        crate::nodes::check_peers(&pod_cidr, node_ip, &peers).map_err(|reason| {
            ConfigError::Invalid {
                key: "peers",
                reason,
            }
        })?;
        let node_name = match over.node_name.or(self.node_name) {
            Some(n) => n,
            None => hostname(),
        };
        crate::services::convert::check_subdomain("node_name", &node_name).map_err(|e| {
            ConfigError::Invalid {
                key: "node_name",
                reason: e.to_string(),
            }
        })?;
        let kubeconfig = over.kubeconfig.or(self.kubeconfig);
        Ok(Config {
            kubeconfig,
            node_name,
            node_ip,
            mode,
            cluster_cidrs: over
                .cluster_cidrs
                .or(self.cluster_cidrs)
                .unwrap_or_default(),
            peers,
            stream_address: over
                .stream_address
                .or(self.stream_address)
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            stream_port: over.stream_port.or(self.stream_port).unwrap_or(0),
            stream_tls_cert,
            stream_tls_key,
            socket: over
                .socket
                .or(self.socket)
                .unwrap_or_else(|| "/run/peapod/peapod.sock".into()),
            socket_group: over.socket_group.or(self.socket_group),
            state_dir: over
                .state_dir
                .or(self.state_dir)
                .unwrap_or_else(|| "/var/lib/peapod".into()),
            run_dir: over
                .run_dir
                .or(self.run_dir)
                .unwrap_or_else(|| "/run/peapod".into()),
            pod_cidr,
            bridge,
            mtu,
            pause_path: over
                .pause_path
                .or(self.pause_path)
                .unwrap_or_else(|| exe_dir.join("peapod-pause")),
            cgroup_parent,
            cgroup_driver: over.cgroup_driver.or(self.cgroup_driver),
            log_level: over
                .log_level
                .or(self.log_level)
                .unwrap_or_else(|| "info".into()),
            log_format: over.log_format.or(self.log_format).unwrap_or_default(),
            registries,
        })
    }
}

/// The host's name, lowercased; "localhost" if it has none that is valid.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| crate::services::convert::check_subdomain("hostname", h).is_ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A pod CIDR must be IPv4 (for now) and leave room for a gateway and at least one pod.
pub fn validate_cidr(cidr: &IpNet) -> Result<(), ConfigError> {
    match cidr {
        IpNet::V4(n) if n.prefix_len() <= 30 => Ok(()),
        IpNet::V4(n) => Err(ConfigError::Invalid {
            key: "pod_cidr",
            reason: format!("{n} is too small: a /30 or larger is needed"),
        }),
        IpNet::V6(n) => Err(ConfigError::Invalid {
            key: "pod_cidr",
            reason: format!("{n}: IPv6 pod networks are not supported yet"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("")
            .unwrap()
            .resolve(FileConfig::default(), Path::new("/opt/bin"))
            .unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/peapod/peapod.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/peapod"));
        assert_eq!(c.run_dir, PathBuf::from("/run/peapod"));
        assert_eq!(c.pod_cidr.to_string(), "10.88.0.0/16");
        assert_eq!(c.bridge, "peapod0");
        assert_eq!(c.mtu, None);
        assert_eq!(c.pause_path, PathBuf::from("/opt/bin/peapod-pause"));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.stream_address.to_string(), "127.0.0.1");
        assert_eq!(c.stream_port, 0);
        assert_eq!(c.stream_tls_cert, None);
    }

    #[test]
    fn overlay_keys_and_peers() {
        let c = parse(
            "node_ip = \"192.0.2.1\"\noverlay = \"vxlan\"\npod_cidr = \"10.91.0.0/24\"\n\
             [[peers]]\nname = \"b\"\nnode_ip = \"192.0.2.2\"\npod_cidr = \"10.92.0.0/24\"\n",
        )
        .unwrap()
        .resolve(FileConfig::default(), Path::new("/"))
        .unwrap();
        assert_eq!(c.mode, Mode::Vxlan { vni: 1, port: 4789 });
        assert_eq!(c.peers.len(), 1);
        let routed = parse("")
            .unwrap()
            .resolve(FileConfig::default(), Path::new("/"))
            .unwrap();
        assert_eq!(routed.mode, Mode::Routed);
        let resolve =
            |t: &str| parse(t).and_then(|f| f.resolve(FileConfig::default(), Path::new("/")));
        assert!(
            resolve("overlay = \"vxlan\"").is_err(),
            "VXLAN without node_ip"
        );
        assert!(resolve("node_ip = \"192.0.2.1\"\noverlay = \"vxlan\"\nvxlan_vni = 0").is_err());
        assert!(resolve("overlay = \"gre\"").is_err());
        assert!(
            resolve(
                "[[peers]]\nname = \"b\"\nnode_ip = \"192.0.2.2\"\npod_cidr = \"10.88.1.0/24\""
            )
            .is_err(),
            "inside 10.88.0.0/16"
        );
    }

    #[test]
    fn stream_keys_parse_and_tls_needs_both() {
        let c = parse("stream_address = \"0.0.0.0\"\nstream_port = 10010")
            .unwrap()
            .resolve(FileConfig::default(), Path::new("/"))
            .unwrap();
        assert_eq!(c.stream_address.to_string(), "0.0.0.0");
        assert_eq!(c.stream_port, 10010);
        assert!(parse("stream_port = 70000").is_err());
        let half = parse("stream_tls_cert = \"/etc/peapod/s.pem\"").unwrap();
        assert!(matches!(
            half.resolve(FileConfig::default(), Path::new("/")),
            Err(ConfigError::Invalid {
                key: "stream_tls_cert",
                ..
            })
        ));
    }

    #[test]
    fn every_key_parses_and_flags_win() {
        let file = parse(
            r#"
            socket = "/tmp/a.sock"
            socket_group = "kube"
            state_dir = "/tmp/state"
            run_dir = "/tmp/run"
            pod_cidr = "10.1.0.0/24"
            bridge = "br9"
            mtu = 9000
            pause_path = "/usr/lib/peapod/peapod-pause"
            log_level = "debug"
            log_format = "json"
            "#,
        )
        .unwrap();
        let flags = FileConfig {
            bridge: Some("br7".into()),
            mtu: Some(1400),
            ..FileConfig::default()
        };
        let c = file.resolve(flags, Path::new("/x")).unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.socket_group.as_deref(), Some("kube"));
        assert_eq!(c.pod_cidr.to_string(), "10.1.0.0/24");
        assert_eq!(c.bridge, "br7");
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.cgroup_parent, "peapod");
        let flags = FileConfig {
            cgroup_parent: Some("/kubepods/besteffort".into()),
            ..FileConfig::default()
        };
        let c = FileConfig::default()
            .resolve(flags, Path::new("/x"))
            .unwrap();
        assert_eq!(c.cgroup_parent, "/kubepods/besteffort");
    }

    #[test]
    fn kubeconfig_and_node_name() {
        let c = parse("kubeconfig = \"/etc/peapod/kubeconfig\"\nnode_name = \"n1.example\"")
            .unwrap()
            .resolve(FileConfig::default(), Path::new("/"))
            .unwrap();
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/peapod/kubeconfig")));
        assert_eq!(c.node_name, "n1.example");
        let flags = FileConfig {
            node_name: Some("n2".into()),
            ..FileConfig::default()
        };
        let c = parse("node_name = \"n1\"")
            .unwrap()
            .resolve(flags, Path::new("/"))
            .unwrap();
        assert_eq!((c.node_name.as_str(), c.kubeconfig), ("n2", None));
        let default = FileConfig::default()
            .resolve(FileConfig::default(), Path::new("/"))
            .unwrap();
        assert!(!default.node_name.is_empty());
        assert_eq!(default.node_name, default.node_name.to_ascii_lowercase());
        let bad = parse("node_name = \"Node_1\"").unwrap();
        assert!(matches!(
            bad.resolve(FileConfig::default(), Path::new("/")),
            Err(ConfigError::Invalid {
                key: "node_name",
                ..
            })
        ));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("pod_cdir = \"10.0.0.0/8\"").unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(chain.contains("pod_cdir"), "{chain}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse("pod_cidr = \"not a cidr\"").is_err());
        assert!(parse("mtu = \"big\"").is_err());
        for (flags, key) in [
            (
                FileConfig {
                    pod_cidr: Some("10.0.0.0/31".parse().unwrap()),
                    ..Default::default()
                },
                "pod_cidr",
            ),
            (
                FileConfig {
                    pod_cidr: Some("fd00::/64".parse().unwrap()),
                    ..Default::default()
                },
                "pod_cidr",
            ),
            (
                FileConfig {
                    mtu: Some(100),
                    ..Default::default()
                },
                "mtu",
            ),
            (
                FileConfig {
                    bridge: Some("a-very-long-bridge-name".into()),
                    ..Default::default()
                },
                "bridge",
            ),
        ]
        .into_iter()
        .chain(["", "/", "a/../b", "./x", "/x/."].map(|p| {
            (
                FileConfig {
                    cgroup_parent: Some(p.into()),
                    ..Default::default()
                },
                "cgroup_parent",
            )
        })) {
            match FileConfig::default().resolve(flags, Path::new("/")) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("expected invalid {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn registries_parse_and_are_checked() {
        let file = parse(
            r#"
            [registries."docker.io"]
            mirrors = ["https://mirror.example.com", "http://127.0.0.1:5000"]
            [registries."127.0.0.1:5000"]
            insecure = true
            [registries."corp.example"]
            ca = ["/etc/peapod/a.pem", "/etc/peapod/b.pem"]
            client_cert = "/etc/peapod/node.pem"
            client_key = "/etc/peapod/node.key"
            "#,
        )
        .unwrap();
        let c = file.resolve(FileConfig::default(), Path::new("/")).unwrap();
        assert_eq!(c.registries.endpoints("corp.example")[0].tls.ca.len(), 2);
        assert!(c.registries.is_insecure("127.0.0.1:5000"));
        assert!(!c.registries.is_insecure("docker.io"));
        assert_eq!(c.registries.endpoints("docker.io").len(), 3);
        assert!(parse("[registries.\"x.io\"]\nmirrors = \"one\"").is_err());
        let err = parse("[registries.\"x.io\"]\nsecure = true").unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(chain.contains("secure"), "{chain}");
        let relative = parse("[registries.\"x.io\"]\nca = \"ca.pem\"").unwrap();
        assert!(matches!(
            relative.resolve(FileConfig::default(), Path::new("/")),
            Err(ConfigError::Invalid {
                key: "registries",
                ..
            })
        ));
        let bad = parse("[registries.\"x.io\"]\nmirrors = [\"ftp://m\"]").unwrap();
        match bad.resolve(FileConfig::default(), Path::new("/")) {
            Err(ConfigError::Invalid { key, reason }) => {
                assert_eq!(key, "registries");
                assert!(reason.contains("ftp://m"), "{reason}");
            }
            other => panic!("expected invalid registries, got {other:?}"),
        }
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_explicit_file_is_not() {
        let p = Path::new("/nonexistent/peapod/config.toml");
        assert_eq!(FileConfig::load(p, false).unwrap(), FileConfig::default());
        assert!(matches!(
            FileConfig::load(p, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
