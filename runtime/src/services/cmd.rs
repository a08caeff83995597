//! `peapod service …`: the Services of a running daemon, for operators and the demo.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use pb::services_client::ServicesClient;
use peapod_proto::net::v1 as pb;

use super::convert::{endpoints_from, service_from, service_to};
use super::model::Service;

#[derive(clap::Subcommand)]
pub enum ServiceCmd {
    /// Create a Service (or with --replace, replace it, keeping its endpoints).
    Add {
        name: String,
        #[arg(long, short, default_value = "default")]
        namespace: String,
        /// The virtual IP.
        #[arg(long)]
        cluster_ip: String,
        /// A port: [NAME=]PORT[:TARGET][/tcp|udp|sctp][@NODEPORT], e.g. http=80:8080/tcp@30080.
        #[arg(long = "port", required = true)]
        ports: Vec<String>,
        /// More virtual addresses with the same ports.
        #[arg(long = "external-ip")]
        external_ips: Vec<String>,
        /// ClientIP session affinity, with this timeout in seconds (1-86400).
        #[arg(long)]
        affinity_timeout: Option<u32>,
        #[arg(long)]
        replace: bool,
    },
    /// List Services.
    Ls {
        #[arg(long, short)]
        namespace: Option<String>,
    },
    /// Print a Service and its endpoints as JSON.
    Show {
        name: String,
        #[arg(long, short, default_value = "default")]
        namespace: String,
    },
    /// Remove a Service.
    Rm {
        name: String,
        #[arg(long, short, default_value = "default")]
        namespace: String,
    },
    /// Apply many Services with their endpoints in one transaction, from a JSON array of
    /// Services as `show` prints them (`-`: standard input).
    Apply {
        file: std::path::PathBuf,
        /// Remove every Service the file does not name.
        #[arg(long)]
        prune: bool,
    },
    /// A Service's endpoints.
    Endpoints {
        #[command(subcommand)]
        cmd: EndpointsCmd,
    },
}

#[derive(clap::Subcommand)]
pub enum EndpointsCmd {
    /// Replace a Service's endpoints (none: connections are refused).
    Set {
        name: String,
        #[arg(long, short, default_value = "default")]
        namespace: String,
        /// An endpoint: IP[,not-ready][,terminating][,PORTNAME=PORT…], e.g. 10.88.0.5,http=8081.
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
    },
}

/// `[NAME=]PORT[:TARGET][/PROTO][@NODEPORT]`.
pub fn parse_port(spec: &str) -> anyhow::Result<pb::ServicePort> {
    let bad =
        || format!("invalid port {spec:?}: want [NAME=]PORT[:TARGET][/tcp|udp|sctp][@NODEPORT]");
    let (name, rest) = spec.split_once('=').unwrap_or(("", spec));
    let (rest, node_port) = match rest.split_once('@') {
        Some((r, n)) => (r, n.parse().with_context(bad)?),
        None => (rest, 0),
    };
    let (rest, protocol) = match rest.split_once('/') {
        Some((r, p)) => (
            r,
            match p.to_ascii_lowercase().as_str() {
                "tcp" => pb::Protocol::Tcp,
                "udp" => pb::Protocol::Udp,
                "sctp" => pb::Protocol::Sctp,
                _ => bail!(bad()),
            },
        ),
        None => (rest, pb::Protocol::Tcp),
    };
    let (port, target) = match rest.split_once(':') {
        Some((p, t)) => (p.parse().with_context(bad)?, t.parse().with_context(bad)?),
        None => (rest.parse().with_context(bad)?, 0),
    };
    Ok(pb::ServicePort {
        name: name.into(),
        protocol: protocol.into(),
        port,
        target_port: target,
        node_port,
    })
}

/// `IP[,not-ready][,terminating][,PORTNAME=PORT…]`.
pub fn parse_endpoint(spec: &str) -> anyhow::Result<pb::Endpoint> {
    let mut parts = spec.split(',');
    let ip = parts.next().unwrap_or_default().to_owned();
    let mut e = pb::Endpoint {
        ip,
        ready: true,
        serving: true,
        terminating: false,
        ports: HashMap::new(),
    };
    for p in parts {
        match p.split_once('=') {
            None if p == "not-ready" => {
                e.ready = false;
                e.serving = false;
            }
            None if p == "terminating" => {
                e.terminating = true;
                e.ready = false;
            }
            Some((name, port)) => {
                let port = port
                    .parse()
                    .with_context(|| format!("invalid port {port:?} in endpoint {spec:?}"))?;
                e.ports.insert(name.into(), port);
            }
            None => bail!(
                "invalid endpoint {spec:?}: want IP[,not-ready][,terminating][,PORTNAME=PORT…]"
            ),
        }
    }
    Ok(e)
}

fn ports_column(s: &pb::Service) -> String {
    let proto = |p: i32| match pb::Protocol::try_from(p) {
        Ok(pb::Protocol::Udp) => "udp",
        Ok(pb::Protocol::Sctp) => "sctp",
        _ => "tcp",
    };
    s.ports
        .iter()
        .map(|p| {
            let mut c = format!("{}/{}", p.port, proto(p.protocol));
            if p.node_port != 0 {
                c.push_str(&format!("@{}", p.node_port));
            }
            c
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The daemon's answer as the model's JSON (the same shape as the records on disk).
fn to_json(s: pb::Service) -> anyhow::Result<String> {
    let endpoints = s.endpoints.clone();
    let mut model = service_from(s).context("the daemon sent an invalid Service")?;
    model.endpoints =
        endpoints_from(&model, endpoints).context("the daemon sent invalid endpoints")?;
    Ok(serde_json::to_string_pretty(&model)?)
}

pub async fn run(socket: &Path, cmd: ServiceCmd) -> anyhow::Result<()> {
    let mut c = ServicesClient::new(crate::client::channel(socket).await?);
    let mut out = std::io::stdout().lock();
    match cmd {
        ServiceCmd::Add {
            name,
            namespace,
            cluster_ip,
            ports,
            external_ips,
            affinity_timeout,
            replace,
        } => {
            let ports = ports
                .iter()
                .map(|p| parse_port(p))
                .collect::<anyhow::Result<_>>()?;
            let service = pb::Service {
                namespace,
                name,
                cluster_ip,
                ports,
                external_ips,
                session_affinity: if affinity_timeout.is_some() {
                    pb::SessionAffinity::ClientIp
                } else {
                    pb::SessionAffinity::None
                }
                .into(),
                affinity_timeout_seconds: affinity_timeout.unwrap_or(0),
                endpoints: Vec::new(),
            };
            let r = c
                .add_service(pb::AddServiceRequest {
                    service: Some(service),
                    replace,
                })
                .await?
                .into_inner();
            let s = r.service.context("no service in the answer")?;
            writeln!(out, "{}/{}", s.namespace, s.name)?;
        }
        ServiceCmd::Ls { namespace } => {
            let r = c
                .list_services(pb::ListServicesRequest {
                    namespace: namespace.unwrap_or_default(),
                })
                .await?
                .into_inner();
            writeln!(
                out,
                "{:<16} {:<24} {:<16} {:<28} ENDPOINTS",
                "NAMESPACE", "NAME", "CLUSTER-IP", "PORTS"
            )?;
            for s in &r.services {
                let ready = s.endpoints.iter().filter(|e| e.ready).count();
                writeln!(
                    out,
                    "{:<16} {:<24} {:<16} {:<28} {ready}/{}",
                    s.namespace,
                    s.name,
                    s.cluster_ip,
                    ports_column(s),
                    s.endpoints.len()
                )?;
            }
        }
        ServiceCmd::Show { name, namespace } => {
            let r = c
                .get_service(pb::GetServiceRequest { namespace, name })
                .await?
                .into_inner();
            writeln!(
                out,
                "{}",
                to_json(r.service.context("no service in the answer")?)?
            )?;
        }
        ServiceCmd::Rm { name, namespace } => {
            c.remove_service(pb::RemoveServiceRequest {
                namespace: namespace.clone(),
                name: name.clone(),
            })
            .await?;
            writeln!(out, "{namespace}/{name}")?;
        }
        ServiceCmd::Apply { file, prune } => {
            let json = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let services: Vec<Service> = serde_json::from_str(&json)
                .with_context(|| format!("{} is not a JSON array of Services", file.display()))?;
            let r = c
                .apply_services(pb::ApplyServicesRequest {
                    services: services.iter().map(service_to).collect(),
                    prune,
                })
                .await?
                .into_inner();
            writeln!(
                out,
                "created {}, updated {}, unchanged {}, removed {}",
                r.created, r.updated, r.unchanged, r.removed
            )?;
        }
        ServiceCmd::Endpoints {
            cmd:
                EndpointsCmd::Set {
                    name,
                    namespace,
                    endpoints,
                },
        } => {
            let endpoints = endpoints
                .iter()
                .map(|e| parse_endpoint(e))
                .collect::<anyhow::Result<_>>()?;
            let r = c
                .set_endpoints(pb::SetEndpointsRequest {
                    namespace,
                    name,
                    endpoints,
                })
                .await?
                .into_inner();
            let s = r.service.context("no service in the answer")?;
            let ready = s.endpoints.iter().filter(|e| e.ready).count();
            writeln!(
                out,
                "{}/{}: {ready} ready of {}",
                s.namespace,
                s.name,
                s.endpoints.len()
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        let p = parse_port("http=80:8080/udp@30080").unwrap();
        assert_eq!(
            (p.name.as_str(), p.port, p.target_port, p.node_port),
            ("http", 80, 8080, 30080)
        );
        assert_eq!(p.protocol, i32::from(pb::Protocol::Udp));
        let p = parse_port("53").unwrap();
        assert_eq!(
            (p.name.as_str(), p.port, p.target_port, p.node_port),
            ("", 53, 0, 0)
        );
        assert_eq!(p.protocol, i32::from(pb::Protocol::Tcp));
        for bad in ["", "x", "80/quic", "80:", "80@", "a=b"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_specs() {
        let e = parse_endpoint("10.88.0.5,terminating,http=8081").unwrap();
        assert_eq!(e.ip, "10.88.0.5");
        assert!(!e.ready && e.serving && e.terminating);
        assert_eq!(e.ports["http"], 8081);
        let e = parse_endpoint("10.88.0.6,not-ready").unwrap();
        assert!(!e.ready && !e.serving);
        assert!(parse_endpoint("10.88.0.5,what").is_err());
        assert!(parse_endpoint("10.88.0.5,http=x").is_err());
    }
}
