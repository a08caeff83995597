//! Many pods at once, an exhausted pod CIDR, and duplicate requests.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use peapod_tests::{Node, PodInfo, in_cidr};
use tokio::task::JoinSet;
use tonic::Code;

/// Runs every config concurrently, each on its own connection; results in input order.
async fn run_concurrently(
    node: &Node,
    configs: Vec<peapod_tests::PodConfig>,
) -> Result<Vec<Result<String, tonic::Status>>> {
    let mut tasks = JoinSet::new();
    for (i, config) in configs.into_iter().enumerate() {
        let mut client = node.client().await?;
        tasks.spawn(async move {
            let result = client.run_pod_sandbox(config.request()).await;
            (i, result.map(|r| r.into_inner().pod_sandbox_id))
        });
    }
    let mut results: Vec<_> = tasks.join_all().await;
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

async fn infos(node: &Node, ids: &[String]) -> Result<Vec<PodInfo>> {
    let mut infos = Vec::new();
    for id in ids {
        infos.push(node.pod_info(id).await?);
    }
    Ok(infos)
}

async fn pause_pids(node: &Node) -> Result<BTreeSet<u32>> {
    Ok(node.pauses().await?.into_iter().map(|p| p.pid).collect())
}

#[tokio::test]
async fn fifty_concurrent_pods_get_distinct_reachable_ips() -> Result<()> {
    const PODS: usize = 50;
    let node = Arc::new(common::node().await?);
    let configs = (0..PODS)
        .map(|i| node.pod_config(&format!("scale-{i:02}")))
        .collect();
    let mut ids = Vec::new();
    for (i, result) in run_concurrently(&node, configs)
        .await?
        .into_iter()
        .enumerate()
    {
        ids.push(result.with_context(|| format!("RunPodSandbox scale-{i:02}"))?);
    }
    let distinct: BTreeSet<&String> = ids.iter().collect();
    ensure!(
        distinct.len() == PODS,
        "{PODS} pods got {} distinct ids",
        distinct.len()
    );
    let infos = infos(&node, &ids).await?;
    let ips: BTreeSet<&str> = infos.iter().map(|p| p.ip.as_str()).collect();
    ensure!(
        ips.len() == PODS,
        "{PODS} pods got {} distinct IPs: {ips:?}",
        ips.len()
    );
    for pod in &infos {
        ensure!(
            in_cidr(&pod.ip, "10.88.0.0/16"),
            "{} is outside the CIDR",
            pod.ip
        );
    }
    ensure!(node.leases()?.len() == PODS, "leases: {:?}", node.leases()?);
    ensure!(node.host_veths().await?.len() == PODS, "host veths");
    ensure!(node.pauses().await?.len() == PODS, "pause processes");
    ensure!(node.pod_ids().await?.len() == PODS, "ListPodSandbox");

    // Every other pod reaches a listener in the first one.
    let target = format!("{}:8080", infos[0].ip);
    let listener = node
        .listen_in_pod(&ids[0], &target, (PODS - 1) as u32)
        .await?;
    for id in &ids[1..] {
        let said = node.connect_from_pod(id, &target).await?;
        ensure!(said == "hello from scale-00\n", "pod {id} got {said:?}");
    }
    listener.finish().await?;

    let mut tasks = JoinSet::new();
    for id in ids.clone() {
        let node = Arc::clone(&node);
        tasks.spawn(async move { node.stop_and_remove(&id).await });
    }
    for result in tasks.join_all().await {
        result?;
    }
    node.assert_gone(&infos).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn an_exhausted_cidr_answers_resource_exhausted_and_leaks_nothing() -> Result<()> {
    let node = common::builder()
        .daemon_args(&["--pod-cidr", "10.77.0.0/29"])
        .start()
        .await?;
    // A /29 has 8 addresses: network, gateway and broadcast leave 5 for pods.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(node.run_pod(&node.pod_config(&format!("fit-{i}"))).await?);
    }
    let infos = infos(&node, &ids).await?;
    let ips: BTreeSet<String> = infos.iter().map(|p| p.ip.clone()).collect();
    let expected: BTreeSet<String> = (2..=6).map(|i| format!("10.77.0.{i}")).collect();
    ensure!(ips == expected, "5 pods in 10.77.0.0/29 got {ips:?}");

    let pins = node.pins().await?;
    let veths = node.host_veths().await?;
    let leases = node.leases()?;
    let pauses = pause_pids(&node).await?;
    let dirs = node.sandbox_dirs();
    let mut client = node.client().await?;
    let sixth = node.pod_config("sixth");
    let result = client.run_pod_sandbox(sixth.request()).await;
    common::expect_code(result, Code::ResourceExhausted, "a 6th pod in a /29")?;
    ensure!(node.pins().await? == pins, "the failed pod left a pin");
    ensure!(
        node.host_veths().await? == veths,
        "the failed pod left a veth"
    );
    ensure!(node.leases()? == leases, "the failed pod left a lease");
    ensure!(
        pause_pids(&node).await? == pauses,
        "the failed pod left a process"
    );
    ensure!(
        node.sandbox_dirs() == dirs,
        "the failed pod left a sandbox dir"
    );
    let listed = node.pod_ids().await?;
    ensure!(
        listed.len() == 5,
        "ListPodSandbox after the failure: {listed:?}"
    );

    // Freeing one address makes room again, for the very same request.
    node.stop_and_remove(&ids[0]).await?;
    let id = node.run_pod(&sixth).await?;
    let ip = node.pod_info(&id).await?.ip;
    ensure!(
        ip == infos[0].ip,
        "the retry got {ip}, not the freed {}",
        infos[0].ip
    );
    ids[0] = id;

    for id in &ids {
        node.stop_and_remove(id).await?;
    }
    node.assert_empty().await
}

#[tokio::test]
async fn duplicate_requests_return_the_same_pod() -> Result<()> {
    let node = common::node().await?;
    let config = node.pod_config("dup");
    let results = run_concurrently(&node, vec![config.clone(); 8]).await?;
    let ids = results
        .into_iter()
        .collect::<Result<BTreeSet<String>, _>>()
        .context("a duplicate RunPodSandbox failed")?;
    ensure!(
        ids.len() == 1,
        "8 concurrent duplicates made {} pods: {ids:?}",
        ids.len()
    );
    let id = ids.into_iter().next().context("no id")?;
    ensure!(
        node.pod_ids().await? == [id.clone()],
        "ListPodSandbox shows other pods"
    );
    ensure!(node.leases()?.len() == 1, "leases: {:?}", node.leases()?);
    ensure!(
        node.pauses().await?.len() == 1,
        "pauses: {:?}",
        node.pauses().await?
    );
    ensure!(
        node.pins().await?.len() == 1,
        "pins: {:?}",
        node.pins().await?
    );

    let again = node.run_pod(&config).await?;
    ensure!(again == id, "a later duplicate got {again}, not {id}");

    // A new attempt is a new sandbox.
    let next = node.run_pod(&config.clone().attempt(1)).await?;
    ensure!(next != id, "attempt 1 got the id of attempt 0");
    for id in [&id, &next] {
        node.stop_and_remove(id).await?;
    }
    node.assert_empty().await
}
