//! Admission of streaming connections, so that idle ones cannot lock clients out.
//!
//! Until its request names a valid token, a connection is *waiting*: it has
//! [`HEADER_TIMEOUT`] (TLS handshake included) to send that request, and it may be shed to
//! make room for a newer one. At most [`MAX_WAITING_PER_PEER`] connections of one peer
//! address and [`MAX_WAITING`] in all wait; when a new connection would pass either limit,
//! the oldest waiting one (of that peer, respectively of all) is closed. A peer is an IPv4
//! address or an IPv6 /64 (one host usually holds a whole /64). A client that means
//! it (kubelet, kube-apiserver, crictl) sends its request at once, so a flood of idle
//! connections only ever sheds itself. A connection whose request carried a valid token is
//! *authenticated*: never shed nor timed out, it lives as long as its session. All
//! connections together stay under [`MAX_CONNECTIONS`], a backstop that only authenticated
//! sessions (each one a CRI call's token) can fill.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// How long a new connection has to send its request (a TLS handshake included).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Open connections at most, waiting and authenticated.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections waiting for their request, at most.
pub const MAX_WAITING: usize = 256;
/// Connections of one peer address waiting for their request, at most. Generous, because
/// one address is often every client at once: the kubelet proxies each `kubectl exec`,
/// `attach` and `port-forward` of its node from its own address, and a burst of them may all
/// be accepted before the first request is read. A quarter of [`MAX_WAITING`], so that one
/// peer alone never sheds another's connection.
pub const MAX_WAITING_PER_PEER: usize = MAX_WAITING / 4;

#[derive(Default)]
pub struct Limits {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// The waiting connections, oldest first (ids grow): their peer and how to shed them.
    waiting: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    waiting_per_peer: HashMap<IpAddr, usize>,
    authenticated: HashSet<u64>,
}

impl State {
    fn total(&self) -> usize {
        self.waiting.len() + self.authenticated.len()
    }

    /// Closes the waiting connection `id` (its task is told, and drops it).
    fn shed(&mut self, id: Option<u64>) {
        let Some((peer, notify)) = id.and_then(|id| self.waiting.remove(&id)) else {
            return;
        };
        self.forget(peer);
        notify.notify_one();
    }

    fn forget(&mut self, peer: IpAddr) {
        if let Some(n) = self.waiting_per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.waiting_per_peer.remove(&peer);
            }
        }
    }
}

impl Limits {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("streaming limits lock")
    }

    /// Admits a new connection from `peer`, shedding the oldest waiting connection (of this
    /// peer, then of all) to make room. `None` only when [`MAX_CONNECTIONS`] sessions are
    /// authenticated.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Admission> {
        let peer = peer_key(peer);
        let mut s = self.lock();
        if s.waiting_per_peer.get(&peer).copied().unwrap_or(0) >= MAX_WAITING_PER_PEER {
            let oldest = s.waiting.iter().find(|(_, (p, _))| *p == peer);
            let oldest = oldest.map(|(id, _)| *id);
            s.shed(oldest);
        }
        if s.waiting.len() >= MAX_WAITING || s.total() >= MAX_CONNECTIONS {
            let oldest = s.waiting.keys().next().copied();
            s.shed(oldest);
        }
        if s.total() >= MAX_CONNECTIONS {
            return None;
        }
        let id = s.next_id;
        s.next_id += 1;
        let shed = Arc::new(Notify::new());
        s.waiting.insert(id, (peer, shed.clone()));
        *s.waiting_per_peer.entry(peer).or_default() += 1;
        Some(Admission {
            limits: self.clone(),
            id,
            shed,
        })
    }
}

/// Who counts as one peer: an IPv4 address (also when mapped into IPv6), an IPv6 /64.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(a.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// A connection's place; dropped when the connection (and its session) ends.
pub struct Admission {
    limits: Arc<Limits>,
    id: u64,
    shed: Arc<Notify>,
}

impl Admission {
    /// The connection's request carried a valid token: from now on it is neither shed nor
    /// timed out. False when it was shed already.
    pub fn authenticate(&self) -> bool {
        let mut s = self.limits.lock();
        let Some((peer, _)) = s.waiting.remove(&self.id) else {
            return s.authenticated.contains(&self.id);
        };
        s.forget(peer);
        s.authenticated.insert(self.id);
        true
    }

    pub fn is_authenticated(&self) -> bool {
        self.limits.lock().authenticated.contains(&self.id)
    }

    /// Resolves when the connection is shed for a newer one.
    pub async fn shed(&self) {
        self.shed.notified().await
    }

    #[cfg(test)]
    fn is_waiting(&self) -> bool {
        self.limits.lock().waiting.contains_key(&self.id)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut s = self.limits.lock();
        if let Some((peer, _)) = s.waiting.remove(&self.id) {
            s.forget(peer);
        }
        s.authenticated.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + n))
    }

    #[test]
    fn a_peer_is_an_ipv4_address_or_an_ipv6_64() {
        let key = |s: &str| peer_key(s.parse().unwrap()).to_string();
        assert_eq!(key("127.0.0.2"), "127.0.0.2");
        assert_eq!(key("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::ffff"), key("2001:db8:1:2:1::"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn one_peer_sheds_only_its_own_oldest() {
        let limits = Arc::new(Limits::default());
        let other = limits.admit(ip(2)).unwrap();
        let mine: Vec<_> = (0..MAX_WAITING_PER_PEER)
            .map(|_| limits.admit(ip(1)).unwrap())
            .collect();
        assert!(mine.iter().all(Admission::is_waiting));
        let newest = limits.admit(ip(1)).unwrap();
        assert!(!mine[0].is_waiting(), "the peer's oldest is shed");
        assert!(mine[1..].iter().all(Admission::is_waiting));
        assert!(newest.is_waiting() && other.is_waiting());
        assert!(
            !mine[0].authenticate(),
            "a shed connection cannot authenticate"
        );
    }

    #[test]
    fn the_oldest_waiting_goes_when_all_wait() {
        let limits = Arc::new(Limits::default());
        let waiting: Vec<_> = (0..MAX_WAITING as u32)
            .map(|n| limits.admit(ip(n)).unwrap())
            .collect();
        let newest = limits.admit(ip(9999)).unwrap();
        assert!(!waiting[0].is_waiting());
        assert!(waiting[1..].iter().all(Admission::is_waiting));
        assert!(newest.is_waiting());
        assert_eq!(limits.lock().waiting.len(), MAX_WAITING);
    }

    #[test]
    fn authenticated_connections_are_never_shed_and_only_they_fill_the_backstop() {
        let limits = Arc::new(Limits::default());
        let sessions: Vec<_> = (0..MAX_CONNECTIONS - 1)
            .map(|_| {
                let a = limits.admit(ip(1)).unwrap();
                assert!(a.authenticate() && a.is_authenticated());
                a
            })
            .collect();
        // One place left: waiting connections take turns in it, sessions stay.
        let first = limits.admit(ip(2)).unwrap();
        let second = limits.admit(ip(3)).unwrap();
        assert!(!first.is_waiting() && second.is_waiting());
        assert!(sessions.iter().all(Admission::is_authenticated));
        assert!(second.authenticate());
        assert!(limits.admit(ip(4)).is_none(), "full of sessions");
        drop(sessions);
        drop(first);
        let s = limits.lock();
        assert_eq!(s.total(), 1);
        assert!(s.waiting_per_peer.is_empty());
    }

    #[test]
    fn a_shed_connection_is_told() {
        let limits = Arc::new(Limits::default());
        let old = limits.admit(ip(1)).unwrap();
        let _new: Vec<_> = (0..MAX_WAITING_PER_PEER)
            .map(|_| limits.admit(ip(1)).unwrap())
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), old.shed())
                .await
                .expect("told it is shed")
        });
    }
}
