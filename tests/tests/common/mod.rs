//! Shared by the integration tests: a node with the probe Cargo built for this test crate.
#![allow(dead_code)]

use anyhow::Result;
use peapod_tests::{Node, NodeBuilder};

/// The probe binary, built by Cargo for these tests.
pub const PROBE: &str = env!("CARGO_BIN_EXE_peapod-probe");

/// A node builder that knows the probe.
pub fn builder() -> NodeBuilder {
    Node::builder().probe(PROBE)
}

/// A node with the daemon running on its defaults.
pub async fn node() -> Result<Node> {
    builder().start().await
}

/// Fails unless `result` is an error with status `code`.
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    what: &str,
) -> Result<()> {
    match result {
        Ok(value) => anyhow::bail!("{what}: expected {code:?}, got a success: {value:?}"),
        Err(status) if status.code() == code => Ok(()),
        Err(status) => anyhow::bail!(
            "{what}: expected {code:?}, got {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}
