//! The files a pod's containers will mount: `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`.

use std::net::IpAddr;
use std::path::Path;

use super::error::SandboxError;
use super::model::DnsConfig;

pub const NODE_RESOLV_CONF: &str = "/etc/resolv.conf";
pub const NODE_HOSTS: &str = "/etc/hosts";

/// `/etc/hosts` for a pod with its own network: localhost entries, then the pod's own name.
pub fn hosts(ip: Option<IpAddr>, hostname: &str) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file (peapod).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if let (Some(ip), false) = (ip, hostname.is_empty()) {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// `/etc/resolv.conf` from the pod's DNS config.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

fn write(path: &Path, contents: &[u8]) -> Result<(), SandboxError> {
    std::fs::write(path, contents).map_err(|source| SandboxError::File {
        path: path.to_owned(),
        source,
    })
}

fn copy_or_empty(from: &str) -> Vec<u8> {
    std::fs::read(from).unwrap_or_default()
}

pub struct PodFiles<'a> {
    pub ip: Option<IpAddr>,
    pub hostname: &'a str,
    pub dns: Option<&'a DnsConfig>,
    pub host_network: bool,
}

/// Writes `hosts`, `resolv.conf` and `hostname` into the sandbox dir.
pub fn write_all(dir: &Path, f: &PodFiles<'_>) -> Result<(), SandboxError> {
    let hosts_text = if f.host_network {
        copy_or_empty(NODE_HOSTS)
    } else {
        hosts(f.ip, f.hostname).into_bytes()
    };
    write(&dir.join("hosts"), &hosts_text)?;
    let resolv = match f.dns {
        Some(dns) if !dns.servers.is_empty() || !dns.searches.is_empty() => {
            resolv_conf(dns).into_bytes()
        }
        _ => copy_or_empty(NODE_RESOLV_CONF),
    };
    write(&dir.join("resolv.conf"), &resolv)?;
    let hostname = if f.hostname.is_empty() {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        f.hostname.to_owned()
    };
    write(&dir.join("hostname"), format!("{hostname}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_has_localhost_and_the_pod() {
        let h = hosts(Some("10.88.0.5".parse().unwrap()), "web");
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("::1\tlocalhost"));
        assert!(h.ends_with("10.88.0.5\tweb\n"));
    }

    #[test]
    fn resolv_conf_follows_the_request() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into(), "edns0".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search ns.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\nnameserver 10.96.0.11\n\
             options ndots:5 edns0\n"
        );
    }

    #[test]
    fn files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let dns = DnsConfig {
            servers: vec!["192.0.2.53".into()],
            ..DnsConfig::default()
        };
        write_all(
            dir.path(),
            &PodFiles {
                ip: Some("10.88.0.9".parse().unwrap()),
                hostname: "api",
                dns: Some(&dns),
                host_network: false,
            },
        )
        .unwrap();
        let read = |n| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("hostname"), "api\n");
        assert_eq!(read("resolv.conf"), "nameserver 192.0.2.53\n");
        assert!(read("hosts").contains("10.88.0.9\tapi"));
    }
}
