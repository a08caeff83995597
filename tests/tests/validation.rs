//! Bad requests are refused with InvalidArgument and change nothing.

mod common;

use anyhow::{Result, ensure};
use cri_api::v1::RunPodSandboxRequest;
use tonic::Code;

#[tokio::test]
async fn bad_requests_are_invalid_and_change_nothing() -> Result<()> {
    let node = common::node().await?;
    let good = node.run_pod(&node.pod_config("good")).await?;
    let ids = node.pod_ids().await?;
    let leases = node.leases()?;
    let pins = node.pins().await?;
    let veths = node.host_veths().await?;
    let dirs = node.sandbox_dirs();
    let pauses = node.pauses().await?.len();

    let no_metadata = {
        let mut config = node.pod_config("no-metadata").build();
        config.metadata = None;
        config
    };
    let cases = [
        ("no config", None),
        ("no metadata", Some(no_metadata)),
        (
            "an empty name",
            Some(node.pod_config("").hostname("empty").build()),
        ),
        (
            "a non-namespaced sysctl",
            Some(node.pod_config("panic").sysctl("kernel.panic", "1").build()),
        ),
        (
            "a 64-character hostname",
            Some(node.pod_config("long").hostname(&"h".repeat(64)).build()),
        ),
    ];
    let mut client = node.client().await?;
    for (what, config) in cases {
        let request = RunPodSandboxRequest {
            config,
            runtime_handler: String::new(),
        };
        let result = client.run_pod_sandbox(request).await;
        common::expect_code(result, Code::InvalidArgument, &format!("a pod with {what}"))?;
        ensure!(
            node.pod_ids().await? == ids,
            "a pod with {what} changed the pod list"
        );
        ensure!(
            node.leases()? == leases,
            "a pod with {what} changed the leases"
        );
        ensure!(
            node.pins().await? == pins,
            "a pod with {what} changed the pins"
        );
        ensure!(
            node.host_veths().await? == veths,
            "a pod with {what} left a veth"
        );
        ensure!(
            node.sandbox_dirs() == dirs,
            "a pod with {what} left a sandbox dir"
        );
        ensure!(
            node.pauses().await?.len() == pauses,
            "a pod with {what} left a process"
        );
    }

    // Nothing was reserved by the refused requests: a valid one by the same name works.
    let long = node.run_pod(&node.pod_config("long")).await?;
    for id in [&good, &long] {
        node.stop_and_remove(id).await?;
    }
    node.assert_empty().await
}
