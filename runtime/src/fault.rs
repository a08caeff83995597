//! Fault points for the crash tests. Built with the `fault-injection` feature, the daemon
//! SIGKILLs itself at the point named by `PEAPOD_FAULT` — as if it crashed right there — so a
//! test can check that every step of a sequence recovers. `PEAPOD_FAULT` may name several
//! points, comma-separated; a stall point named there sleeps for [`STALL`] instead, to widen a
//! window that is otherwise too short to hit (the monitor inherits the variable from the
//! daemon). Without the feature (any normal build) a fault point compiles to nothing.

/// How long a named stall point sleeps.
#[cfg(feature = "fault-injection")]
pub const STALL: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(feature = "fault-injection")]
fn wanted(name: &str) -> bool {
    use std::sync::OnceLock;
    static WANTED: OnceLock<Vec<String>> = OnceLock::new();
    WANTED
        .get_or_init(|| {
            std::env::var("PEAPOD_FAULT")
                .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|w| w == name)
}

#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    if wanted(name) {
        eprintln!("peapod: fault injection: crashing at {name}");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
    }
}

#[cfg(feature = "fault-injection")]
pub fn stall(name: &str) {
    if wanted(name) {
        eprintln!("peapod: fault injection: stalling at {name}");
        std::thread::sleep(STALL);
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn stall(_name: &str) {}
