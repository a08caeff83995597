//! What the CRI of Kubernetes 1.36 (cri-api v0.36) added, against a real daemon: the
//! CRIListStreaming RPCs answer what their List RPCs answer; UpdatePodSandboxResources knows
//! its pods; a container's own `stop_signal` is the one its stop sends, and ContainerStatus
//! says which; env values, now bytes, must be text.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use cri_api::v1::{
    KeyValue, Signal, StreamContainerStatsRequest, StreamContainersRequest, StreamImagesRequest,
    StreamPodSandboxStatsRequest, StreamPodSandboxesRequest, UpdatePodSandboxResourcesRequest,
};
use peapod_tests::containers::{BUSYBOX, container_config};
use tonic::Code;

/// Every message of a server stream, or its error.
async fn all<T>(mut s: tonic::Streaming<T>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.push(m);
    }
    Ok(out)
}

#[tokio::test]
async fn list_streaming_resize_and_stop_signals_of_cri_1_36() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let cfg = node.pod_config("cri136");
    let pod = node.run_pod(&cfg).await?;
    // USR1 ends it with 7; TERM would be ignored (and the stop would take its whole timeout).
    let script = "trap 'exit 7' USR1; trap '' TERM; while :; do sleep 0.1; done";
    let mut c = container_config("usr1", BUSYBOX, &["sh", "-c", script]);
    c.stop_signal = Signal::Sigusr1 as i32;
    let usr1 = node.run_container(&pod, &cfg, c).await?;
    let plain = node
        .run_container(
            &pod,
            &cfg,
            container_config("plain", BUSYBOX, &["sleep", "1000"]),
        )
        .await?;

    // The streams carry what the lists carry.
    let mut client = node.client().await?;
    let pods: Vec<String> = all(client
        .stream_pod_sandboxes(StreamPodSandboxesRequest { filter: None })
        .await?
        .into_inner())
    .await?
    .into_iter()
    .flat_map(|m| m.pod_sandboxes)
    .map(|p| p.id)
    .collect();
    ensure!(pods == [pod.clone()], "{pods:?}");
    let mut listed: Vec<String> = node
        .list_containers()
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut streamed: Vec<String> = all(client
        .stream_containers(StreamContainersRequest { filter: None })
        .await?
        .into_inner())
    .await?
    .into_iter()
    .flat_map(|m| m.containers)
    .map(|c| c.id)
    .collect();
    listed.sort();
    streamed.sort();
    ensure!(
        listed.len() == 2 && streamed == listed,
        "{streamed:?} vs {listed:?}"
    );
    let stats = all(client
        .stream_container_stats(StreamContainerStatsRequest { filter: None })
        .await?
        .into_inner())
    .await?;
    let stats: usize = stats.iter().map(|m| m.container_stats.len()).sum();
    ensure!(stats == 2, "{stats} container stats");
    let pod_stats = all(client
        .stream_pod_sandbox_stats(StreamPodSandboxStatsRequest { filter: None })
        .await?
        .into_inner())
    .await?;
    ensure!(
        pod_stats
            .iter()
            .map(|m| m.pod_sandbox_stats.len())
            .sum::<usize>()
            == 1,
        "{pod_stats:?}"
    );
    let images = all(node
        .image_client()
        .await?
        .stream_images(StreamImagesRequest { filter: None })
        .await?
        .into_inner())
    .await?;
    let images: usize = images.iter().map(|m| m.images.len()).sum();
    ensure!(
        images == node.list_images().await?.len() && images > 0,
        "{images} images"
    );

    // UpdatePodSandboxResources: OK for a pod, NotFound for none.
    let update = |id: &str| UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: id.to_owned(),
        ..Default::default()
    };
    client.update_pod_sandbox_resources(update(&pod)).await?;
    let unknown = client
        .update_pod_sandbox_resources(update(&"0".repeat(64)))
        .await;
    common::expect_code(unknown, Code::NotFound, "an unknown pod")?;

    // The container's stop signal, not the image's default.
    let status = node.container_status(&usr1).await?;
    ensure!(status.stop_signal == Signal::Sigusr1 as i32, "{status:?}");
    let status = node.container_status(&plain).await?;
    ensure!(status.stop_signal == Signal::Sigterm as i32, "{status:?}");
    let started = std::time::Instant::now();
    node.stop_container(&usr1, 30).await?;
    let status = node.container_status(&usr1).await?;
    ensure!(
        status.exit_code == 7 && started.elapsed() < Duration::from_secs(10),
        "stopped with exit code {} after {:?}",
        status.exit_code,
        started.elapsed()
    );

    // An env value that is no text is refused, and nothing is made.
    let mut bad = container_config("bad", BUSYBOX, &["true"]);
    bad.envs = vec![KeyValue {
        key: "BIN".into(),
        value: vec![0xff, 0xfe],
    }];
    let err = node
        .create_container(&pod, &cfg, bad)
        .await
        .expect_err("refused");
    ensure!(format!("{err:#}").contains("envs.value"), "{err:#}");
    ensure!(node.list_containers().await?.len() == 2);

    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}
