//! The kubelet's `/metrics/cadvisor` from the runtime: ListMetricDescriptors names cAdvisor's
//! metrics with cAdvisor's labels, and ListPodSandboxMetrics (and its stream) reports every
//! ready pod's cgroup and network counters and its running containers' usage and limits.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use cri_api::v1::{
    ContainerStatsRequest, LinuxContainerResources, ListMetricDescriptorsRequest,
    ListPodSandboxMetricsRequest, Metric, PodSandboxMetrics, StreamPodSandboxMetricsRequest,
};
use peapod_tests::Node;
use peapod_tests::containers::{BUSYBOX, container_config};

const MIB: u64 = 1 << 20;

async fn list(node: &Node) -> Result<Vec<PodSandboxMetrics>> {
    Ok(node
        .client()
        .await?
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .context("ListPodSandboxMetrics")?
        .into_inner()
        .pod_metrics)
}

/// The value of metric `name` whose labels include `labels`, if there is exactly one.
fn value(
    metrics: &[Metric],
    keys: &HashMap<String, Vec<String>>,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<u64> {
    let found: Vec<&Metric> = metrics
        .iter()
        .filter(|m| m.name == name)
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                keys[name]
                    .iter()
                    .position(|key| key == k)
                    .is_some_and(|i| m.label_values[i] == *v)
            })
        })
        .collect();
    ensure!(found.len() == 1, "{name} {labels:?}: {found:?}");
    found[0].value.as_ref().map(|v| v.value).context("no value")
}

#[tokio::test]
async fn pod_metrics_have_cadvisors_names_and_the_pods_usage() -> Result<()> {
    let node = common::node().await?;
    node.import_busybox().await?;
    let descriptors = node
        .client()
        .await?
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await?
        .into_inner()
        .descriptors;
    let keys: HashMap<String, Vec<String>> = descriptors
        .into_iter()
        .map(|d| (d.name, d.label_keys))
        .collect();
    let base = ["container", "id", "image", "name", "namespace", "pod"];
    ensure!(
        keys.get("container_cpu_usage_seconds_total")
            .is_some_and(|k| k == &base)
    );
    ensure!(
        keys.get("container_memory_working_set_bytes")
            .is_some_and(|k| k == &base)
    );
    ensure!(
        keys.get("container_network_transmit_bytes_total")
            .is_some_and(|k| k.contains(&"interface".to_owned()) && k.len() == base.len() + 1)
    );

    // A pod serving 2 MiB to another, and a busy container beside the server.
    let web_cfg = node.pod_config("web");
    let web = node.run_pod(&web_cfg).await?;
    let ip = node.pod_info(&web).await?.ip;
    let mut server = container_config(
        "server",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "mkdir -p /w && head -c 2097152 /dev/zero > /w/big && exec httpd -f -p 80 -h /w",
        ],
    );
    server.linux.get_or_insert_with(Default::default).resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: (64 * MIB) as i64,
        ..Default::default()
    });
    let server = node.run_container(&web, &web_cfg, server).await?;
    let burner = container_config("burner", BUSYBOX, &["sh", "-c", "while :; do :; done"]);
    let burner = node.run_container(&web, &web_cfg, burner).await?;
    let client_cfg = node.pod_config("client");
    let client = node.run_pod(&client_cfg).await?;
    let fetch = container_config(
        "fetch",
        BUSYBOX,
        &[
            "sh",
            "-c",
            &format!("until wget -qO /dev/null http://{ip}/big; do sleep 0.2; done"),
        ],
    );
    let fetch = node.run_container(&client, &client_cfg, fetch).await?;
    let status = node.wait_exited(&fetch, Duration::from_secs(30)).await?;
    ensure!(status.exit_code == 0, "fetch: {status:?}");
    // Whole seconds of cpu: wait for the first one.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ns = node
            .client()
            .await?
            .container_stats(ContainerStatsRequest {
                container_id: burner.clone(),
            })
            .await?
            .into_inner()
            .stats
            .and_then(|s| s.cpu)
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value);
        if ns >= 1_200_000_000 {
            break;
        }
        ensure!(Instant::now() < deadline, "the burner used {ns} ns of cpu");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let all = list(&node).await?;
    let mut ids: Vec<&str> = all.iter().map(|p| p.pod_sandbox_id.as_str()).collect();
    ids.sort();
    let mut expected = vec![web.as_str(), client.as_str()];
    expected.sort();
    ensure!(ids == expected, "pods {ids:?}");
    // Every metric is described, its labels match the keys, and it was gathered live.
    for p in &all {
        let ctr = p.container_metrics.iter().flat_map(|c| &c.metrics);
        for m in p.metrics.iter().chain(ctr) {
            let k = keys
                .get(&m.name)
                .with_context(|| format!("{} undescribed", m.name))?;
            ensure!(m.label_values.len() == k.len() && m.timestamp == 0, "{m:?}");
        }
    }
    let web_meta = web_cfg.build().metadata.context("metadata")?;
    let pod = all
        .iter()
        .find(|p| p.pod_sandbox_id == web)
        .context("web")?;
    let pod_row = [
        ("container", ""),
        ("pod", web_meta.name.as_str()),
        ("namespace", web_meta.namespace.as_str()),
    ];
    let eth0 = [pod_row.as_slice(), &[("interface", "eth0")]].concat();
    let tx = value(
        &pod.metrics,
        &keys,
        "container_network_transmit_bytes_total",
        &eth0,
    )?;
    ensure!(tx >= 2 * MIB, "web sent {tx} bytes");
    let rx = value(
        &pod.metrics,
        &keys,
        "container_network_receive_packets_total",
        &eth0,
    )?;
    ensure!(rx > 0, "web received {rx} packets");
    let ws = value(
        &pod.metrics,
        &keys,
        "container_memory_working_set_bytes",
        &pod_row,
    )?;
    ensure!(ws > 0, "pod working set {ws}");

    let of = |id: &str| {
        pod.container_metrics
            .iter()
            .find(|c| c.container_id == id)
            .map(|c| c.metrics.clone())
            .with_context(|| format!("no metrics of {id}"))
    };
    let server_row = [
        ("container", "server"),
        ("name", server.as_str()),
        ("pod", web_meta.name.as_str()),
    ];
    let m = of(&server)?;
    let limit = value(&m, &keys, "container_spec_memory_limit_bytes", &server_row)?;
    ensure!(limit == 64 * MIB, "limit {limit}");
    ensure!(value(&m, &keys, "container_memory_working_set_bytes", &server_row)? > 0);
    ensure!(value(&m, &keys, "container_processes", &server_row)? >= 1);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let started = value(&m, &keys, "container_start_time_seconds", &server_row)?;
    ensure!(
        started <= now && started + 300 >= now,
        "started {started}, now {now}"
    );
    let m = of(&burner)?;
    let cpu = value(
        &m,
        &keys,
        "container_cpu_usage_seconds_total",
        &[("container", "burner")],
    )?;
    ensure!(cpu >= 1, "burner cpu {cpu} s");
    // The client's only container has exited: no container metrics.
    let c = all
        .iter()
        .find(|p| p.pod_sandbox_id == client)
        .context("client")?;
    ensure!(c.container_metrics.is_empty(), "{:?}", c.container_metrics);

    // The stream has the same pods; a stopped pod is in neither.
    node.stop_pod(&client).await?;
    let mut stream = node
        .client()
        .await?
        .stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest {})
        .await?
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(chunk) = stream.message().await? {
        streamed.extend(
            chunk
                .pod_sandbox_metrics
                .into_iter()
                .map(|p| p.pod_sandbox_id),
        );
    }
    ensure!(streamed == vec![web.clone()], "streamed {streamed:?}");
    let listed: Vec<String> = list(&node)
        .await?
        .into_iter()
        .map(|p| p.pod_sandbox_id)
        .collect();
    ensure!(listed == vec![web.clone()], "listed {listed:?}");

    node.stop_and_remove(&web).await?;
    node.stop_and_remove(&client).await?;
    node.assert_empty().await
}
