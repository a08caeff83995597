//! The streaming server: Exec and PortForward URLs opened over WebSocket (v4, v5, the
//! original channel protocol and base64), one-time tokens, TTYs and resizes, a client that
//! goes away, port-forward to a server in the pod, and hostile clients.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_api::v1::ExecRequest;
use peapod_tests::containers::{BUSYBOX as IMAGE, container_config};
use peapod_tests::stream::{WsSession, connect, exec_request, handshake_status, ws_exec};
use peapod_tests::{Node, PodConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(30);

/// A node with a pod running `sleep`, for execs; and the pod's config and id.
async fn pod_with_sleeper(node: &Node, name: &str) -> Result<(PodConfig, String, String)> {
    node.import_busybox().await?;
    let cfg = node.pod_config(name);
    let pod = node.run_pod(&cfg).await?;
    let ctr = node
        .run_container(
            &pod,
            &cfg,
            container_config("sleeper", IMAGE, &["sleep", "3600"]),
        )
        .await?;
    Ok((cfg, pod, ctr))
}

#[tokio::test]
async fn exec_over_websocket_every_protocol() -> Result<()> {
    let node = common::node().await?;
    let (_cfg, pod, ctr) = pod_with_sleeper(&node, "ws-exec").await?;
    for proto in [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v4.base64.channel.k8s.io",
    ] {
        let out = ws_exec(&node, &ctr, &["echo", "hello", proto], proto, None).await?;
        ensure!(
            out.stdout() == format!("hello {proto}\n"),
            "{proto}: {out:?}"
        );
        ensure!(out.exit_code()? == 0, "{proto}: {out:?}");
        let out = ws_exec(
            &node,
            &ctr,
            &["sh", "-c", "echo oops >&2; exit 3"],
            proto,
            None,
        )
        .await?;
        ensure!(out.stderr == b"oops\n", "{proto}: {out:?}");
        ensure!(out.exit_code()? == 3, "{proto}: {out:?}");
    }
    // The original protocol reports failures as text and successes as nothing.
    for proto in ["channel.k8s.io", "base64.channel.k8s.io"] {
        let out = ws_exec(&node, &ctr, &["sh", "-c", "exit 4"], proto, None).await?;
        let text = String::from_utf8_lossy(&out.error);
        ensure!(text.contains("exit code: 4"), "{proto}: {out:?}");
        let out = ws_exec(&node, &ctr, &["true"], proto, None).await?;
        ensure!(out.error.is_empty(), "{proto}: {out:?}");
    }
    // stdin: v5 closes it, and `cat` ends; on v4 the command reads what it needs.
    let out = ws_exec(&node, &ctr, &["cat"], "v5.channel.k8s.io", Some(b"a\nb\n")).await?;
    ensure!(out.stdout() == "a\nb\n" && out.exit_code()? == 0, "{out:?}");
    let out = ws_exec(
        &node,
        &ctr,
        &["head", "-n", "1"],
        "v4.channel.k8s.io",
        Some(b"first\nsecond\n"),
    )
    .await?;
    ensure!(out.stdout() == "first\n", "{out:?}");
    // A command that cannot run: 127 from the shell's convention.
    let out = ws_exec(&node, &ctr, &["/no/such"], "v4.channel.k8s.io", None).await?;
    ensure!(out.exit_code()? == 127, "{out:?}");
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn exec_with_a_tty_sees_resizes() -> Result<()> {
    let node = common::node().await?;
    let (_cfg, pod, ctr) = pod_with_sleeper(&node, "ws-tty").await?;
    let url = node
        .exec_url(exec_request(
            &ctr,
            &["sh", "-c", "read x; stty size; tty; exit 5"],
            true,
            true,
        ))
        .await?;
    let mut s = WsSession::open(&node, &url, &["v5.channel.k8s.io"]).await?;
    s.resize(123, 45).await?;
    // The resize channel and stdin are separate: give the size a moment to land first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send(0, b"go\r").await?;
    let out = s.collect(WAIT).await?;
    let text = out.stdout();
    ensure!(text.contains("45 123"), "{text:?}");
    ensure!(text.contains("/dev/pts/"), "{text:?}");
    ensure!(out.stderr.is_empty(), "{out:?}");
    ensure!(out.exit_code()? == 5, "{out:?}");
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn a_client_that_goes_away_kills_its_command() -> Result<()> {
    let node = common::node().await?;
    let (_cfg, pod, ctr) = pod_with_sleeper(&node, "ws-gone").await?;
    let url = node
        .exec_url(exec_request(&ctr, &["sleep", "1001"], false, false))
        .await?;
    let s = WsSession::open(&node, &url, &["v4.channel.k8s.io"]).await?;
    let running = || async {
        let ps = node.exec_ok(&ctr, &["ps", "-o", "args"]).await?;
        Ok::<_, anyhow::Error>(ps.contains("sleep 1001"))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !running().await? {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the command never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(s);
    while running().await? {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the command outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn tokens_are_single_use_and_requests_are_checked() -> Result<()> {
    let node = common::node().await?;
    let (_cfg, pod, ctr) = pod_with_sleeper(&node, "ws-tokens").await?;
    const MARK: &[&str] = &["sh", "-c", "echo ran >> /tmp/runs"];
    let runs = || async { node.exec_ok(&ctr, &["cat", "/tmp/runs"]).await };
    let url = node
        .exec_url(exec_request(&ctr, MARK, false, false))
        .await?;
    let out = WsSession::open(&node, &url, &["v4.channel.k8s.io"])
        .await?
        .collect(WAIT)
        .await?;
    ensure!(out.exit_code()? == 0, "{out:?}");
    ensure!(runs().await? == "ran\n");
    // Used: 404, and nothing runs again.
    let again = WsSession::open(&node, &url, &["v4.channel.k8s.io"]).await;
    let err = again.err().expect("a used token must be refused");
    ensure!(handshake_status(&err) == Some(404), "{err:#}");
    let mut forged = url.clone();
    forged.path = "/exec/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
    let err = WsSession::open(&node, &forged, &[])
        .await
        .err()
        .expect("forged");
    ensure!(handshake_status(&err) == Some(404), "{err:#}");
    // A token of one kind does not open another.
    let url = node
        .exec_url(exec_request(&ctr, MARK, false, false))
        .await?;
    let mut wrong = url.clone();
    wrong.path = url.path.replacen("/exec/", "/portforward/", 1);
    let err = WsSession::open(&node, &wrong, &[])
        .await
        .err()
        .expect("kind");
    ensure!(handshake_status(&err) == Some(404), "{err:#}");
    // An unknown protocol: 400.
    let url = node
        .exec_url(exec_request(&ctr, &["true"], false, false))
        .await?;
    let err = WsSession::open(&node, &url, &["v9.channel.k8s.io"])
        .await
        .err()
        .expect("protocol");
    ensure!(handshake_status(&err) == Some(400), "{err:#}");
    ensure!(runs().await? == "ran\n", "a refused URL ran its command");

    let client = node.client().await?;
    // Status (verbose) names the streaming server the URLs point at.
    let status = client
        .clone()
        .status(cri_api::v1::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"])?;
    ensure!(
        info["streamServer"] == format!("http://{}", url.addr),
        "{info} vs {url:?}"
    );
    let bad = |r: ExecRequest| {
        let mut c = client.clone();
        async move { c.exec(r).await }
    };
    common::expect_code(
        bad(exec_request(&ctr, &[], false, false)).await,
        tonic::Code::InvalidArgument,
        "empty command",
    )?;
    let mut tty_stderr = exec_request(&ctr, &["true"], false, true);
    tty_stderr.stderr = true;
    common::expect_code(
        bad(tty_stderr).await,
        tonic::Code::InvalidArgument,
        "tty with stderr",
    )?;
    let mut none = exec_request(&ctr, &["true"], false, false);
    none.stdout = false;
    none.stderr = false;
    common::expect_code(bad(none).await, tonic::Code::InvalidArgument, "no stream")?;
    common::expect_code(
        bad(exec_request(&"f".repeat(64), &["true"], false, false)).await,
        tonic::Code::NotFound,
        "unknown container",
    )?;
    common::expect_code(
        client
            .clone()
            .port_forward(cri_api::v1::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![70000],
            })
            .await,
        tonic::Code::InvalidArgument,
        "port out of range",
    )?;
    node.stop_container(&ctr, 0).await?;
    common::expect_code(
        bad(exec_request(&ctr, &["true"], false, false)).await,
        tonic::Code::FailedPrecondition,
        "stopped container",
    )?;
    node.stop_pod(&pod).await?;
    common::expect_code(
        client
            .clone()
            .port_forward(cri_api::v1::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![80],
            })
            .await,
        tonic::Code::FailedPrecondition,
        "stopped pod",
    )?;
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

/// A pod serving HTTP on port 80 (busybox httpd), ready.
async fn web_pod(node: &Node, name: &str) -> Result<String> {
    node.import_busybox().await?;
    let cfg = node.pod_config(name);
    let pod = node.run_pod(&cfg).await?;
    let web = container_config("web", IMAGE, &["httpd", "-f", "-p", "80", "-h", "/var/www"]);
    let web = node.run_container(&pod, &cfg, web).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while node
        .exec_ok(&web, &["wget", "-qO-", "http://127.0.0.1/"])
        .await
        .is_err()
    {
        ensure!(tokio::time::Instant::now() < deadline, "httpd never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(pod)
}

/// One HTTP request through a WebSocket port-forward to port 80; the response.
async fn ws_get(node: &Node, pod: &str) -> Result<String> {
    let url = node
        .port_forward_url(pod, &[80])
        .await?
        .with_query("port=80");
    let s = WsSession::open(node, &url, &["portforward.k8s.io"]).await?;
    http_get(s).await
}

/// One HTTP request through the port-forward session `s` to port 80; the response.
async fn http_get(mut s: WsSession) -> Result<String> {
    let mut opened = 0;
    let mut body = Vec::new();
    let mut sent = false;
    tokio::time::timeout(WAIT, async {
        while let Some((ch, data)) = s.next().await? {
            match ch {
                // Each channel opens with its port.
                0 | 1 if opened < 2 && data == 80u16.to_le_bytes() => opened += 1,
                0 => body.extend(data),
                1 => anyhow::bail!("error: {}", String::from_utf8_lossy(&data)),
                other => anyhow::bail!("channel {other}"),
            }
            if opened == 2 && !sent {
                s.send(0, b"GET / HTTP/1.0\r\n\r\n").await?;
                sent = true;
            }
        }
        Ok(())
    })
    .await??;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn port_forward_over_websocket() -> Result<()> {
    let node = common::node().await?;
    let pod = web_pod(&node, "ws-pf").await?;
    let page = ws_get(&node, &pod).await?;
    ensure!(
        page.starts_with("HTTP/1.") && page.contains("<h1>peapod</h1>"),
        "{page}"
    );
    // 20 at once.
    let all: Vec<_> = (0..20).map(|_| ws_get(&node, &pod)).collect();
    for page in futures_util::future::join_all(all).await {
        let page = page?;
        ensure!(page.contains("<h1>peapod</h1>"), "{page}");
    }
    // A burst from one address (as the kubelet proxies every client's stream): 40
    // connections, all accepted before the first request is sent, are all served.
    let mut burst = Vec::new();
    for _ in 0..40 {
        let url = node
            .port_forward_url(&pod, &[80])
            .await?
            .with_query("port=80");
        burst.push((connect(&node, &url, None).await?, url));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = burst.into_iter().map(|(io, url)| async move {
        http_get(WsSession::handshake(io, &url, &["portforward.k8s.io"]).await?).await
    });
    for (i, page) in futures_util::future::join_all(all)
        .await
        .into_iter()
        .enumerate()
    {
        let page = page.with_context(|| format!("connection {i} of the burst"))?;
        ensure!(page.contains("<h1>peapod</h1>"), "{page}");
    }
    // A closed port: an error on the port's error channel.
    let url = node
        .port_forward_url(&pod, &[])
        .await?
        .with_query("port=81");
    let mut s = WsSession::open(&node, &url, &["v4.channel.k8s.io"]).await?;
    let mut error = String::new();
    tokio::time::timeout(WAIT, async {
        while let Some((ch, data)) = s.next().await? {
            if ch == 1 && data != 81u16.to_le_bytes() {
                error.push_str(&String::from_utf8_lossy(&data));
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    ensure!(error.contains("error forwarding port 81"), "{error:?}");
    // A port the request did not name: refused before the upgrade.
    let url = node
        .port_forward_url(&pod, &[80])
        .await?
        .with_query("port=22");
    let err = WsSession::open(&node, &url, &["portforward.k8s.io"])
        .await
        .err()
        .expect("port not in the request");
    ensure!(handshake_status(&err) == Some(400), "{err:#}");
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn hostile_clients_do_not_stop_the_server() -> Result<()> {
    let node = common::node().await?;
    let (_cfg, pod, ctr) = pod_with_sleeper(&node, "ws-hostile").await?;
    let url = node
        .exec_url(exec_request(&ctr, &["true"], false, false))
        .await?;
    // Slowloris: half a request line, never finished.
    let mut slow = node.connect_tcp(url.addr).await?;
    slow.write_all(b"GET /exec/").await?;
    // An oversized message: the connection is cut, the command killed or never started.
    let big = node
        .exec_url(exec_request(&ctr, &["cat"], true, false))
        .await?;
    let mut s = WsSession::open(&node, &big, &["v5.channel.k8s.io"]).await?;
    let mut huge = vec![0u8; 2 << 20];
    huge[0] = 0;
    let _ = s.send_raw(Message::binary(huge)).await;
    let _ = s.collect(WAIT).await;
    // Unknown channels are ignored.
    let odd = node
        .exec_url(exec_request(&ctr, &["cat"], true, false))
        .await?;
    let mut s = WsSession::open(&node, &odd, &["v5.channel.k8s.io"]).await?;
    s.send(7, b"junk").await?;
    s.send(0, b"still fine\n").await?;
    s.close_stdin().await?;
    let out = s.collect(WAIT).await?;
    ensure!(out.stdout() == "still fine\n", "{out:?}");
    // Meanwhile the server serves others.
    let out = ws_exec(&node, &ctr, &["echo", "ok"], "v4.channel.k8s.io", None).await?;
    ensure!(out.stdout() == "ok\n", "{out:?}");
    // The slow client is cut off after the header timeout.
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, slow.read(&mut buf)).await??;
    let answer = String::from_utf8_lossy(&buf[..n]);
    ensure!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn exec_over_spdy_every_protocol() -> Result<()> {
    use peapod_tests::stream::{SpdySession, refused_status, spdy_exec};
    let node = common::node().await?;
    let (_cfg, pod, ctr) = pod_with_sleeper(&node, "spdy-exec").await?;
    let req = |cmd: &[&str], stdin: bool| exec_request(&ctr, cmd, stdin, false);
    let out = spdy_exec(
        &node,
        req(&["echo", "hi"], false),
        "v4.channel.k8s.io",
        None,
    )
    .await?;
    ensure!(out.stdout() == "hi\n" && out.exit_code()? == 0, "{out:?}");
    let out = spdy_exec(
        &node,
        req(&["sh", "-c", "echo e >&2; exit 3"], false),
        "v4.channel.k8s.io",
        None,
    )
    .await?;
    ensure!(out.stderr == b"e\n" && out.exit_code()? == 3, "{out:?}");
    let out = spdy_exec(
        &node,
        req(&["cat"], true),
        "v4.channel.k8s.io",
        Some(b"x\ny\n"),
    )
    .await?;
    ensure!(out.stdout() == "x\ny\n" && out.exit_code()? == 0, "{out:?}");
    for proto in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        let out = spdy_exec(
            &node,
            req(&["sh", "-c", "echo $0; exit 2"], false),
            proto,
            None,
        )
        .await?;
        ensure!(out.stdout() == "sh\n", "{proto}: {out:?}");
        let text = String::from_utf8_lossy(&out.error);
        ensure!(text.contains("exit code: 2"), "{proto}: {out:?}");
    }
    // A large output arrives whole (flow control both ways).
    let out = spdy_exec(
        &node,
        req(&["sh", "-c", "head -c 8388608 /dev/zero"], false),
        "v4.channel.k8s.io",
        None,
    )
    .await?;
    ensure!(
        out.stdout.len() == 8 << 20 && out.exit_code()? == 0,
        "{} bytes",
        out.stdout.len()
    );
    // A TTY with a resize stream.
    let url = node
        .exec_url(exec_request(
            &ctr,
            &["sh", "-c", "read x; stty size"],
            true,
            true,
        ))
        .await?;
    let s = SpdySession::open(&node, &url, &["v4.channel.k8s.io"]).await?;
    let mut error = s.stream(&[("streamtype", "error")]).await?;
    let mut stdin = s.stream(&[("streamtype", "stdin")]).await?;
    let mut stdout = s.stream(&[("streamtype", "stdout")]).await?;
    let mut resize = s.stream(&[("streamtype", "resize")]).await?;
    resize.write_all(br#"{"Width":99,"Height":33}"#).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stdin.write_all(b"go\r").await?;
    let mut text = Vec::new();
    tokio::time::timeout(WAIT, stdout.read_to_end(&mut text)).await??;
    let text = String::from_utf8_lossy(&text);
    ensure!(text.contains("33 99"), "{text:?}");
    let mut status = Vec::new();
    tokio::time::timeout(WAIT, error.read_to_end(&mut status)).await??;
    ensure!(
        String::from_utf8_lossy(&status).contains("Success"),
        "{status:?}"
    );
    drop(s);
    // Refusals: an unknown version 403, a used token 404.
    let url = node.exec_url(req(&["true"], false)).await?;
    let err = SpdySession::open(&node, &url, &["v9.channel.k8s.io"])
        .await
        .err()
        .expect("v9");
    ensure!(refused_status(&err) == Some(403), "{err:#}");
    let err = SpdySession::open(&node, &url, &["v4.channel.k8s.io"])
        .await
        .err()
        .expect("used");
    ensure!(refused_status(&err) == Some(404), "{err:#}");
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

/// One HTTP GET through a port-forward pair on a SPDY session.
async fn spdy_get(s: &peapod_tests::stream::SpdySession, port: &str, id: &str) -> Result<String> {
    let mut error = s
        .stream(&[("streamtype", "error"), ("port", port), ("requestid", id)])
        .await?;
    let mut data = s
        .stream(&[("streamtype", "data"), ("port", port), ("requestid", id)])
        .await?;
    // A refused pair may be closed before the request is written: what the error stream
    // says is the answer then.
    let _ = data.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    let mut body = Vec::new();
    let mut err = Vec::new();
    tokio::time::timeout(WAIT, async {
        let (a, b) = tokio::join!(data.read_to_end(&mut body), error.read_to_end(&mut err));
        a.and(b)
    })
    .await??;
    ensure!(
        err.is_empty(),
        "error stream: {}",
        String::from_utf8_lossy(&err)
    );
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn port_forward_over_spdy_and_tunnelled_spdy() -> Result<()> {
    use peapod_tests::stream::{SpdySession, WsIo};
    let node = common::node().await?;
    let pod = web_pod(&node, "spdy-pf").await?;
    let url = node.port_forward_url(&pod, &[80, 81]).await?;
    let s = SpdySession::open(&node, &url, &["portforward.k8s.io"]).await?;
    let page = spdy_get(&s, "80", "0").await?;
    ensure!(page.contains("<h1>peapod</h1>"), "{page}");
    // 20 connections at once on one session.
    let ids: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let all: Vec<_> = ids.iter().map(|id| spdy_get(&s, "80", id)).collect();
    for page in futures_util::future::join_all(all).await {
        ensure!(page?.contains("<h1>peapod</h1>"));
    }
    // A closed port: its error stream says so.
    let err = spdy_get(&s, "81", "21")
        .await
        .expect_err("port 81 is closed");
    ensure!(
        format!("{err}").contains("error forwarding port 81"),
        "{err:#}"
    );
    // A port the request did not name.
    let err = spdy_get(&s, "22", "22")
        .await
        .expect_err("port 22 not asked");
    ensure!(
        format!("{err}").contains("not in the PortForward request"),
        "{err:#}"
    );
    drop(s);
    // SPDY tunnelled in WebSocket binary messages, as kubectl does now.
    let url = node.port_forward_url(&pod, &[80]).await?;
    let ws = WsIo::open(&node, &url, "SPDY/3.1+portforward.k8s.io").await?;
    let (conn, _incoming) = peapod_tests::spdy_conn::SpdyConn::client(ws);
    let s = SpdySession {
        conn,
        protocol: None,
    };
    let page = spdy_get(&s, "80", "0").await?;
    ensure!(page.contains("<h1>peapod</h1>"), "{page}");
    drop(s);
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

#[tokio::test]
async fn the_streaming_server_speaks_tls_when_configured() -> Result<()> {
    let ca = peapod_tests::TestCa::new()?;
    let (cert, key) = ca.server();
    let config = format!(
        "stream_tls_cert = \"{}\"\nstream_tls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let node = common::builder().config(&config).start().await?;
    let (_cfg, pod, ctr) = pod_with_sleeper(&node, "tls").await?;
    let url = node
        .exec_url(exec_request(&ctr, &["echo", "secret"], false, false))
        .await?;
    ensure!(url.https, "{url:?}");
    let out = WsSession::open_with(&node, &url, &["v4.channel.k8s.io"], Some(&ca.ca()))
        .await?
        .collect(WAIT)
        .await?;
    ensure!(
        out.stdout() == "secret\n" && out.exit_code()? == 0,
        "{out:?}"
    );
    // Plain HTTP on the TLS port gets nowhere.
    let url = node
        .exec_url(exec_request(&ctr, &["true"], false, false))
        .await?;
    let mut plain = url.clone();
    plain.https = false;
    ensure!(WsSession::open(&node, &plain, &[]).await.is_err());
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(kb << 10)
}

#[tokio::test]
async fn hostile_spdy_clients_do_not_stop_the_server() -> Result<()> {
    use peapod_tests::stream::{SpdySession, spdy_exec, spdy_upgrade};
    let node = common::node().await?;
    let (_cfg, pod, ctr) = pod_with_sleeper(&node, "spdy-hostile").await?;
    let daemon = node.daemon_pid().expect("the daemon runs");
    // A client that never reads a command writing without end: the daemon's memory stays
    // bounded (back-pressure reaches the command), and others are served meanwhile.
    let url = node
        .exec_url(exec_request(&ctr, &["cat", "/dev/zero"], false, false))
        .await?;
    let stuck = SpdySession::open(&node, &url, &["v4.channel.k8s.io"]).await?;
    let _error = stuck.stream(&[("streamtype", "error")]).await?;
    let _stdout = stuck.stream(&[("streamtype", "stdout")]).await?;
    let _stderr = stuck.stream(&[("streamtype", "stderr")]).await?;
    let before = rss(daemon)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(daemon)?;
    ensure!(
        after < before + (64 << 20),
        "the daemon grew from {before} to {after} bytes for a client that does not read"
    );
    let out = spdy_exec(
        &node,
        exec_request(&ctr, &["echo", "served"], false, false),
        "v4.channel.k8s.io",
        None,
    )
    .await?;
    ensure!(out.stdout() == "served\n", "{out:?}");
    drop(stuck);
    // A stream type nobody asked for is reset; the session goes on.
    let url = node
        .exec_url(exec_request(&ctr, &["echo", "fine"], false, false))
        .await?;
    let s = SpdySession::open(&node, &url, &["v4.channel.k8s.io"]).await?;
    let mut junk = s.stream(&[("streamtype", "bogus")]).await?;
    let mut error = s.stream(&[("streamtype", "error")]).await?;
    let mut stdout = s.stream(&[("streamtype", "stdout")]).await?;
    let mut stderr = s.stream(&[("streamtype", "stderr")]).await?;
    let mut text = Vec::new();
    tokio::time::timeout(WAIT, stdout.read_to_end(&mut text)).await??;
    ensure!(text == b"fine\n", "{text:?}");
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stderr.read_to_end(&mut rest)).await??;
    tokio::time::timeout(WAIT, error.read_to_end(&mut rest)).await??;
    ensure!(
        junk.read_to_end(&mut rest).await.is_err(),
        "the bogus stream was not reset"
    );
    drop(s);
    // An oversized frame: a data frame claiming 16 MiB. The connection is closed.
    let url = node
        .exec_url(exec_request(&ctr, &["true"], false, false))
        .await?;
    let (mut raw, _) = spdy_upgrade(&node, &url, &["v4.channel.k8s.io"]).await?;
    raw.write_all(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]).await?;
    raw.write_all(&[0u8; 4096]).await?;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    ensure!(
        closed.is_ok(),
        "an oversized frame did not close the connection"
    );
    // Garbage instead of SPDY.
    let url = node
        .exec_url(exec_request(&ctr, &["true"], false, false))
        .await?;
    let (mut raw, _) = spdy_upgrade(&node, &url, &["v4.channel.k8s.io"]).await?;
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n this is no spdy")
        .await?;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    ensure!(closed.is_ok(), "garbage did not close the connection");
    // Nothing of the stuck exec is left running.
    let deadline = tokio::time::Instant::now() + WAIT;
    while node
        .exec_ok(&ctr, &["ps", "-o", "args"])
        .await?
        .contains("cat /dev/zero")
    {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "cat /dev/zero outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.stop_and_remove(&pod).await?;
    node.assert_empty().await
}
