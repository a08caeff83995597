//! The CRI's `Signal` enum (a container's `stop_signal`) and the signal names peapod keeps
//! (`SIGTERM`, `SIGRTMIN+1`).

use cri_api::v1 as cri;

use crate::container::signal_number;

/// The name of the CRI signal `sig` as peapod keeps it; None for RUNTIME_DEFAULT (the
/// image's stop signal, else SIGTERM), Err for a value the enum does not have.
pub fn name(sig: i32) -> Result<Option<String>, i32> {
    match cri::Signal::try_from(sig) {
        Ok(cri::Signal::RuntimeDefault) => Ok(None),
        Ok(s) => Ok(Some(enum_name(s))),
        Err(_) => Err(sig),
    }
}

/// `SIGRTMINPLUS1` is `SIGRTMIN+1`, `SIGRTMAXMINUS1` is `SIGRTMAX-1`.
fn enum_name(s: cri::Signal) -> String {
    s.as_str_name().replace("PLUS", "+").replace("MINUS", "-")
}

/// The CRI signal of signal number `num`: the first of the enum's names for it (`SIGABRT`,
/// not `SIGIOT`); RUNTIME_DEFAULT for a number it has no name for.
pub fn of(num: i32) -> cri::Signal {
    (1..=65)
        .filter_map(|v| cri::Signal::try_from(v).ok())
        .find(|s| signal_number(&enum_name(*s)) == Some(num))
        .unwrap_or(cri::Signal::RuntimeDefault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_go_both_ways() {
        assert_eq!(
            name(cri::Signal::Sigterm as i32),
            Ok(Some("SIGTERM".into()))
        );
        assert_eq!(name(0), Ok(None));
        assert_eq!(name(999), Err(999));
        let rt1 = name(cri::Signal::Sigrtminplus1 as i32).unwrap().unwrap();
        assert_eq!(rt1, "SIGRTMIN+1");
        assert_eq!(signal_number(&rt1), Some(libc::SIGRTMIN() + 1));
        assert_eq!(of(libc::SIGUSR1), cri::Signal::Sigusr1);
        assert_eq!(of(libc::SIGABRT), cri::Signal::Sigabrt);
        assert_eq!(of(libc::SIGRTMAX() - 1), cri::Signal::Sigrtmaxminus1);
        assert_eq!(of(0), cri::Signal::RuntimeDefault);
    }
}
