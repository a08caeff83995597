//! `peapod-cni`: netsetup as a CNI plugin (spec 1.0 and 1.1: ADD, DEL, CHECK, GC, STATUS,
//! VERSION), for runtimes such as containerd that drive pod networks through CNI.
//!
//! The runtime runs it with the `CNI_*` environment and the network configuration on stdin;
//! the result, or an error as the spec's error JSON, goes to stdout, and the exit status is 0
//! or 1. Installed under the name the configuration's `"type"` gives (`peapod`) in the
//! runtime's CNI bin dir.

mod conf;
mod error;
mod go_json;
mod plugin;
mod state;

use std::io::{self, Read};
use std::process::ExitCode;

use error::CniError;

/// More than any real configuration (a conflist entry with its prevResult is a few KiB).
const STDIN_LIMIT: u64 = 1 << 20;

fn main() -> ExitCode {
    // Warnings (e.g. a rollback that failed) go to stderr, which runtimes log.
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PEAPOD_CNI_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .without_time()
        .init();
    let stdin = read_stdin(io::stdin().lock());
    let version = stdin
        .as_deref()
        .map_or_else(|_| conf::DEFAULT_VERSION.to_owned(), conf::version_of);
    let outcome = stdin.and_then(|stdin| plugin::run(&plugin::Env::from_process(), &stdin));
    match outcome {
        Ok(Some(result)) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&version));
            eprintln!("peapod-cni: {}", error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// All of stdin, refusing more than [`STDIN_LIMIT`] bytes without reading on.
fn read_stdin(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut bytes = Vec::new();
    input
        .take(STDIN_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| CniError::Stdin { source })?;
    if bytes.len() as u64 > STDIN_LIMIT {
        return Err(CniError::TooLarge { limit: STDIN_LIMIT });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_up_to_the_limit_is_read_and_beyond_it_refused() {
        let exact = vec![b' '; STDIN_LIMIT as usize];
        assert_eq!(read_stdin(&exact[..]).unwrap().len(), exact.len());
        let over = vec![b' '; STDIN_LIMIT as usize + 1];
        let err = read_stdin(&over[..]).unwrap_err();
        assert!(matches!(err, CniError::TooLarge { .. }), "{err}");
        assert_eq!(err.code(), error::code::DECODE);
    }
}
