//! Which pod holds which hostPort. A RunPodSandbox reserves its mappings here, under one short
//! lock, before anything is made for it; a mapping that would catch the packets of one a pod
//! already holds is refused. A pod holds its mappings until its network is detached (the map
//! elements are gone): a pod whose pause died keeps them until StopPodSandbox.

use std::collections::BTreeMap;
use std::sync::Mutex;

use netsetup::hostport::{HostPort, HostPortElement};

use super::error::SandboxError;
use super::model::SandboxRecord;

#[derive(Debug, Default)]
pub struct HostPorts {
    held: Mutex<BTreeMap<String, Vec<HostPort>>>,
}

impl HostPorts {
    /// Reserves `ports` for the pod `id`, or refuses them all if one overlaps a mapping of
    /// another pod.
    pub fn reserve(&self, id: &str, ports: &[HostPort]) -> Result<(), SandboxError> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut held = self.held.lock().expect("lock");
        for (holder, theirs) in held.iter().filter(|(holder, _)| *holder != id) {
            for mine in ports {
                if theirs.iter().any(|t| t.overlaps(mine)) {
                    return Err(SandboxError::HostPortTaken {
                        mapping: mine.to_string(),
                        holder: holder.clone(),
                    });
                }
            }
        }
        held.insert(id.to_owned(), ports.to_vec());
        Ok(())
    }

    /// The mappings a record's attachment made (read from its rule ids), reserved again at
    /// start-up. Without a check: they are in the kernel already.
    pub fn restore(&self, rec: &SandboxRecord) {
        let Some(att) = &rec.network else { return };
        let ports: Vec<HostPort> = att
            .rules
            .iter()
            .filter_map(|id| id.parse::<HostPortElement>().ok())
            .map(|e| e.port)
            .collect();
        if !ports.is_empty() {
            self.held
                .lock()
                .expect("lock")
                .insert(rec.id.clone(), ports);
        }
    }

    pub fn release(&self, id: &str) {
        self.held.lock().expect("lock").remove(id);
    }
}

#[cfg(test)]
mod tests {
    use netsetup::Attachment;
    use netsetup::hostport::Protocol;

    use super::*;
    use crate::sandbox::model::PodSpec;

    fn port(host_ip: Option<&str>, protocol: Protocol, host_port: u16) -> HostPort {
        HostPort {
            protocol,
            host_ip: host_ip.map(|ip| ip.parse().unwrap()),
            host_port,
            container_port: 80,
        }
    }

    #[test]
    fn overlapping_mappings_of_another_pod_are_refused() {
        let h = HostPorts::default();
        h.reserve("a", &[port(None, Protocol::Tcp, 8080)]).unwrap();
        let err = h
            .reserve("b", &[port(Some("192.0.2.1"), Protocol::Tcp, 8080)])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hostPort tcp/192.0.2.1:8080 is already mapped by pod sandbox a"
        );
        // Refused whole: nothing of b is held.
        h.reserve("c", &[port(None, Protocol::Udp, 8080)]).unwrap();
        h.reserve("b", &[port(None, Protocol::Tcp, 8081)]).unwrap();
        h.release("a");
        h.reserve("d", &[port(None, Protocol::Tcp, 8080)]).unwrap();
    }

    #[test]
    fn records_give_back_their_mappings() {
        let mut rec = SandboxRecord::new("a".into(), PodSpec::default(), 1);
        rec.network = Some(Attachment {
            ip: "10.88.0.5".parse().unwrap(),
            prefix_len: 16,
            gateway: "10.88.0.1".parse().unwrap(),
            host_ifname: "ppaaaaaaaa".into(),
            pod_ifname: "eth0".into(),
            mac: String::new(),
            rules: vec!["hostport udp *:53 10.88.0.5:5353".into()],
        });
        let h = HostPorts::default();
        h.restore(&rec);
        assert!(h.reserve("b", &[port(None, Protocol::Udp, 53)]).is_err());
        assert!(h.reserve("b", &[port(None, Protocol::Tcp, 53)]).is_ok());
    }
}
