//! Fault points for the crash tests. Built with the `fault-injection` feature, the daemon
//! SIGKILLs itself at the point named by `PEAPOD_FAULT` — as if it crashed right there — so a
//! test can check that every step of a sequence recovers. Without the feature (any normal
//! build) a fault point compiles to nothing.

#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    use std::sync::OnceLock;
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("PEAPOD_FAULT").ok());
    if wanted.as_deref() == Some(name) {
        eprintln!("peapod: fault injection: crashing at {name}");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}
