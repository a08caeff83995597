//! The streaming rows: Exec round trips (`true` over SPDY v4, the kubelet's and crictl's
//! way: CRI Exec, connect, upgrade, streams, exit status), exec stdout throughput (`cat` of
//! a 256 MiB file), and port-forward throughput and connection setup to busybox httpd in the pod.
//! The benchmark runs inside the node (hack/bench), so it dials the streaming server's
//! loopback address directly.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use peapod_tests::Client;
use peapod_tests::stream::{
    Direct, SpdySession, exec_request, exec_url, port_forward_url, spdy_exec_at,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Pods;
use super::containers::Containers;
use super::report::{Row, Samples, Target, Value};

const BIG: u64 = 256 << 20;
const PROTOCOL: &str = "v4.channel.k8s.io";

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / took.as_secs_f64()
}

/// Reads a stream to its end, counting.
async fn drain(mut r: impl AsyncReadExt + Unpin) -> Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf).await? {
            0 => return Ok(n),
            k => n += k as u64,
        }
    }
}

/// One GET through a new port-forward pair on `s`; the response's size and the time to its
/// first byte.
async fn get(s: &SpdySession, id: usize, path: &str) -> Result<(u64, Duration)> {
    let start = Instant::now();
    let id = id.to_string();
    let h = |t| {
        [
            ("streamtype", t),
            ("port", "8080"),
            ("requestid", id.as_str()),
        ]
    };
    let mut error = s.stream(&h("error")).await?;
    let mut data = s.stream(&h("data")).await?;
    data.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut first = [0u8; 1];
    data.read_exact(&mut first).await?;
    let ttfb = start.elapsed();
    let n = 1 + drain(&mut data).await?;
    let mut err = String::new();
    error.read_to_string(&mut err).await?;
    ensure!(err.is_empty(), "port-forward: {err}");
    Ok((n, ttfb))
}

pub async fn measure(
    ctrs: &Containers,
    pods: &Pods,
    client: &mut Client,
    rounds: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let cmd = "head -c 268435456 /dev/zero > /tmp/big && exec httpd -f -p 8080 -h /tmp";
    let made = ctrs.run_pod_with(pods, client, &["sh", "-c", cmd]).await?;
    let result = rows_for(&made.pod, &made.id, client, rounds, rows).await;
    let _ = ctrs.remove(client, &made.id).await;
    let _ = pods.stop(client, &made.pod).await;
    let _ = pods.remove(client, &made.pod).await;
    result
}

async fn rows_for(
    pod: &str,
    ctr: &str,
    client: &mut Client,
    rounds: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let mut rtt = Samples::default();
    for _ in 0..rounds {
        let start = Instant::now();
        let req = exec_request(ctr, &["true"], false, false);
        let url = exec_url(client, req.clone()).await?;
        let out = spdy_exec_at(&Direct, &url, &req, PROTOCOL, None).await?;
        ensure!(out.exit_code()? == 0, "exec true: {out:?}");
        rtt.push(start.elapsed());
    }
    rows.push(Row {
        what: "exec round trip (true, SPDY)".into(),
        value: Value::Latency(rtt),
        target: Target::P50Under(Duration::from_millis(15)),
    });

    let url = port_forward_url(client, pod, &[8080]).await?;
    let s = SpdySession::open(&Direct, &url, &["portforward.k8s.io"]).await?;
    // The file is written before httpd starts: wait until it answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut id = 0;
    loop {
        id += 1;
        match get(&s, id, "/nothing").await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("httpd in the bench pod never answered"),
        }
    }
    let req = exec_request(ctr, &["cat", "/tmp/big"], false, false);
    let url = exec_url(client, req).await?;
    let es = SpdySession::open(&Direct, &url, &[PROTOCOL]).await?;
    let mut error = es.stream(&[("streamtype", "error")]).await?;
    let stdout = es.stream(&[("streamtype", "stdout")]).await?;
    let stderr = es.stream(&[("streamtype", "stderr")]).await?;
    let start = Instant::now();
    let (n, _) = tokio::try_join!(drain(stdout), drain(stderr))?;
    let took = start.elapsed();
    let mut status = String::new();
    error.read_to_string(&mut status).await?;
    ensure!(n == BIG, "exec stdout: {n} bytes; {status}");
    rows.push(Row {
        what: "exec stdout throughput (cat of 256 MiB, MiB/s)".into(),
        value: Value::Rate(mib_per_s(n, took)),
        target: Target::RateOver(500.0),
    });
    drop(es);

    let mut setup = Samples::default();
    for _ in 0..rounds {
        id += 1;
        let (_, ttfb) = get(&s, id, "/nothing").await?;
        setup.push(ttfb);
    }
    id += 1;
    let start = Instant::now();
    let (n, _) = get(&s, id, "/big").await?;
    let took = start.elapsed();
    ensure!(n > BIG, "port-forward: {n} bytes");
    rows.push(Row {
        what: "port-forward throughput (256 MiB, MiB/s)".into(),
        value: Value::Rate(mib_per_s(n, took)),
        target: Target::RateOver(500.0),
    });
    rows.push(Row {
        what: "port-forward connection setup (to first byte)".into(),
        value: Value::Latency(setup),
        target: Target::None,
    });
    Ok(())
}
