//! One-time tokens for the streaming URLs: `Exec`, `Attach` and `PortForward` each store the
//! request they were made for under a fresh random token, and the streaming server takes it
//! back exactly once. A token is 192 random bits (base64url), lives one minute, and the cache
//! holds a bounded number of them, so a client that asks for URLs it never uses cannot grow
//! the daemon's memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long a URL can wait before it is used.
pub const TTL: Duration = Duration::from_secs(60);

/// Outstanding tokens at most; beyond, a new request is refused until some are used or expire.
pub const MAX_PENDING: usize = 1024;

/// What a token stands for: the request, as the CRI call made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Pending {
    /// The URL path's first segment for this kind of request.
    pub fn kind(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub sandbox_id: String,
    /// The ports the request named; empty: any port the client asks for.
    pub ports: Vec<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{MAX_PENDING} streaming URLs are waiting to be used; try again when some are used or expired"
)]
pub struct TooManyPending;

#[derive(Default)]
pub struct Tokens {
    pending: Mutex<HashMap<String, (Pending, Instant)>>,
}

impl Tokens {
    /// Stores `req` under a new token, answered.
    pub fn insert(&self, req: Pending) -> Result<String, TooManyPending> {
        self.insert_at(req, Instant::now())
    }

    fn insert_at(&self, req: Pending, now: Instant) -> Result<String, TooManyPending> {
        let mut pending = self.pending.lock().expect("lock");
        pending.retain(|_, (_, born)| now.saturating_duration_since(*born) < TTL);
        if pending.len() >= MAX_PENDING {
            return Err(TooManyPending);
        }
        let token = new_token();
        pending.insert(token.clone(), (req, now));
        Ok(token)
    }

    /// The request behind `token` if it exists, is unused, is of `kind` and has not expired;
    /// it is gone from the cache afterwards whatever the answer (a wrong kind burns it too).
    pub fn take(&self, kind: &str, token: &str) -> Option<Pending> {
        self.take_at(kind, token, Instant::now())
    }

    fn take_at(&self, kind: &str, token: &str, now: Instant) -> Option<Pending> {
        let (req, born) = self.pending.lock().expect("lock").remove(token)?;
        (now.saturating_duration_since(born) < TTL && req.kind() == kind).then_some(req)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.lock().expect("lock").len()
    }
}

fn new_token() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("kernel randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward(PortForwardRequest {
            sandbox_id: "p".into(),
            ports: vec![80],
        })
    }

    fn exec() -> Pending {
        Pending::Exec(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
    }

    #[test]
    fn a_token_is_taken_once() {
        let t = Tokens::default();
        let tok = t.insert(exec()).unwrap();
        assert_eq!(tok.len(), 32);
        assert!(
            tok.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(t.take("exec", &tok), Some(exec()));
        assert_eq!(t.take("exec", &tok), None);
        assert_eq!(t.take("exec", "nonsense"), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_token_is_bound_to_its_kind() {
        let t = Tokens::default();
        let tok = t.insert(pf()).unwrap();
        assert_eq!(t.take("exec", &tok), None);
        // Burnt by the wrong use: a guessed kind does not leave it for a second try.
        assert_eq!(t.take("portforward", &tok), None);
    }

    #[test]
    fn tokens_differ() {
        let t = Tokens::default();
        let a = t.insert(pf()).unwrap();
        let b = t.insert(pf()).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_token_expires_after_a_minute() {
        let t = Tokens::default();
        let start = Instant::now();
        let tok = t.insert_at(exec(), start).unwrap();
        assert_eq!(t.take_at("exec", &tok, start + TTL), None);
        let tok = t.insert_at(exec(), start).unwrap();
        assert_eq!(
            t.take_at("exec", &tok, start + TTL - Duration::from_millis(1)),
            Some(exec())
        );
    }

    #[test]
    fn the_cache_is_bounded_and_expiry_frees_room() {
        let t = Tokens::default();
        let start = Instant::now();
        for _ in 0..MAX_PENDING {
            t.insert_at(pf(), start).unwrap();
        }
        assert_eq!(t.insert_at(pf(), start), Err(TooManyPending));
        assert_eq!(t.len(), MAX_PENDING);
        assert!(t.insert_at(pf(), start + TTL).is_ok());
        assert_eq!(t.len(), 1);
    }
}
