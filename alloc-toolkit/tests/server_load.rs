//! The flagship server (`examples/inference_server`) under what an operator
//! throws at it, over real TCP on 127.0.0.1 with short timeouts: slow
//! clients cut, huge announced bodies answered at once, bad bodies answered
//! with precise 4xx, a burst past the in-flight cap answered 503 with
//! `Retry-After` and a message for the client, and the `request` scopes
//! counting only the requests that were served. Every loop is bounded in
//! count and in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloc_core::{CachingAllocator, Config, HostBackend};
use alloc_host::TrackingAllocator;
use alloc_toolkit::{MemoryMonitor, MonitorConfig};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "../examples/inference_server/server.rs"]
#[allow(dead_code)]
mod server;

#[path = "../examples/inference_server/cli.rs"]
#[allow(dead_code)]
mod cli;

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

/// The timeouts of every server in this file.
const HEADER_TIMEOUT: Duration = Duration::from_millis(400);
const BODY_TIMEOUT: Duration = Duration::from_millis(400);
/// How long past a timeout the test waits for the cut before failing.
const SLACK: Duration = Duration::from_secs(3);

fn config(max_in_flight: usize) -> server::ServerConfig {
    server::ServerConfig {
        header_timeout: HEADER_TIMEOUT,
        body_timeout: BODY_TIMEOUT,
        max_body_bytes: 64 << 10,
        max_in_flight,
        retry_after_secs: 2,
    }
}

include!("support/start.rs");

/// Reads from `tcp` until the server closes it or `limit` passes: what was
/// read, and whether the connection was closed.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// One HTTP/1.1 client connection, and the task driving it (it ends when
/// the server closes the connection).
async fn connect(
    addr: SocketAddr,
) -> (
    SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    (send, tokio::spawn(conn))
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

async fn call(
    send: &mut SendRequest<Full<Bytes>>,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    send.ready().await.unwrap();
    let mut req = Request::builder()
        .method(if body.is_empty() {
            Method::GET
        } else {
            Method::POST
        })
        .uri(path)
        .header("host", "127.0.0.1");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        send.send_request(req.body(Full::new(Bytes::from(body))).unwrap()),
    )
    .await
    .expect("an answer within 20 s")
    .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn infer_body(id: u64, tokens: &[u32]) -> Vec<u8> {
    serde_json::to_vec(&server::InferRequest {
        id,
        tokens: tokens.to_vec(),
    })
    .unwrap()
}

#[test]
fn a_client_sending_half_its_headers_is_cut() {
    let (rt, addr) = start(config(8), 64 << 20);
    rt.block_on(async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            .await
            .unwrap();
        let t0 = Instant::now();
        let (_, closed) = read_until_closed(&mut tcp, HEADER_TIMEOUT + SLACK).await;
        assert!(
            closed,
            "half a request head still held open after {:?} (header timeout {HEADER_TIMEOUT:?})",
            t0.elapsed()
        );
    });
}

#[test]
fn a_client_sending_part_of_its_body_is_cut() {
    let (rt, addr) = start(config(8), 64 << 20);
    rt.block_on(async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"POST /infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"id\"",
        )
        .await
        .unwrap();
        let t0 = Instant::now();
        let (got, closed) = read_until_closed(&mut tcp, BODY_TIMEOUT + SLACK).await;
        assert!(
            closed,
            "5 of 100 body bytes: connection still open after {:?} (body timeout {BODY_TIMEOUT:?}); read {got:?}",
            t0.elapsed()
        );
        assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    });
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let (rt, addr) = start(config(8), 64 << 20);
    rt.block_on(async {
        let (mut send, conn) = connect(addr).await;
        let a = call(&mut send, "/metrics", None, Vec::new()).await;
        assert_eq!(a.status, 200);
        let t0 = Instant::now();
        let ended = tokio::time::timeout(HEADER_TIMEOUT + SLACK, conn).await;
        assert!(
            ended.is_ok(),
            "an idle kept-alive connection still open after {:?} (timeout {HEADER_TIMEOUT:?})",
            t0.elapsed()
        );
    });
}

#[test]
fn a_huge_announced_body_is_answered_413_at_once() {
    let (rt, addr) = start(config(8), 64 << 20);
    rt.block_on(async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"POST /infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 10000000000\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 1024];
        // Answered from the head alone: 413, not the body timeout's 408.
        let n = tokio::time::timeout(SLACK, tcp.read(&mut buf))
            .await
            .expect("no answer to Content-Length: 10000000000 within 3 s")
            .unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with("HTTP/1.1 413"), "{got:?}");
        assert!(got.contains("10000000000"), "names the size sent: {got:?}");
    });
}

#[test]
fn bad_bodies_get_precise_answers() {
    let (rt, addr) = start(config(8), 64 << 20);
    rt.block_on(async {
        let (mut send, _conn) = connect(addr).await;
        let json = Some("application/json");
        // Not JSON by its content type.
        let a = call(
            &mut send,
            "/infer",
            Some("text/plain"),
            infer_body(1, &[1, 2]),
        )
        .await;
        assert_eq!(a.status, 415, "{}", a.body);
        assert!(
            a.body.contains("text/plain") && a.body.contains("application/json"),
            "names what was sent and what is expected: {}",
            a.body
        );
        let (mut send, _conn) = connect(addr).await;
        let a = call(&mut send, "/infer", None, infer_body(1, &[1, 2])).await;
        assert_eq!(a.status, 415, "no content type: {}", a.body);
        // A token outside the vocabulary.
        let (mut send, _conn) = connect(addr).await;
        let a = call(&mut send, "/infer", json, infer_body(2, &[1, 99_999, 3])).await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert!(
            a.body.contains("99999") && a.body.contains(&server::VOCAB.to_string()),
            "names the value and the limit: {}",
            a.body
        );
        // Malformed JSON (held before; kept).
        let (mut send, _conn) = connect(addr).await;
        let a = call(
            &mut send,
            "/infer",
            json,
            b"{\"id\":3,\"tokens\":[1,".to_vec(),
        )
        .await;
        assert_eq!(a.status, 400, "{}", a.body);
        // Over the body limit (64 KiB here), sent in full.
        let (mut send, _conn) = connect(addr).await;
        let big = infer_body(4, &vec![1000; 20_000]);
        assert!(big.len() > 64 << 10);
        let a = call(&mut send, "/infer", json, big.clone()).await;
        assert_eq!(a.status, 413, "{}", a.body);
        // The same without a length announced (chunked): cut at the limit.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut raw = format!(
            "POST /infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            big.len()
        )
        .into_bytes();
        raw.extend_from_slice(&big);
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
        // The server may close before taking it all.
        tcp.write_all(&raw).await.ok();
        let (got, _) = read_until_closed(&mut tcp, SLACK).await;
        assert!(got.starts_with("HTTP/1.1 413"), "{got:?}");
    });
}

/// A burst of simultaneous requests past the in-flight cap, on a device too
/// small to hold them all: the excess is answered 503 with `Retry-After`
/// and a message for the client, and only the requests served are counted
/// as `request` scopes. Then a request the device cannot hold.
#[test]
fn a_burst_past_the_cap_is_shed_and_not_counted() {
    const CLIENTS: usize = 24;
    const TOKENS: usize = 256; // 512 KiB of KV cache each
    // Room for 4 requests' KV caches; the cap admits 2 at a time.
    let (rt, addr) = start(config(2), 2 << 20);
    let before = alloc_host::aggregate("request").map_or(0, |a| a.closed);
    let answers = rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..CLIENTS {
            conns.push(connect(addr).await);
        }
        let start = Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, (mut send, conn))| {
                let start = start.clone();
                tokio::spawn(async move {
                    let tokens: Vec<u32> = (0..TOKENS as u32)
                        .map(|t| (t * 7 + i as u32) % 4096)
                        .collect();
                    let body = infer_body(i as u64, &tokens);
                    start.wait().await;
                    let a = call(&mut send, "/infer", Some("application/json"), body).await;
                    drop((send, conn));
                    a
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        answers
    });
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let shed: Vec<_> = answers.iter().filter(|a| a.status == 503).collect();
    eprintln!(
        "{CLIENTS} requests: {ok} answered 200, {} answered 503",
        shed.len()
    );
    assert_eq!(ok + shed.len(), CLIENTS, "only 200 or 503");
    assert!(ok >= 1, "some requests are served");
    assert!(
        !shed.is_empty(),
        "a burst of {CLIENTS} past a cap of 2: none shed"
    );
    for a in &shed {
        assert_eq!(a.retry_after.as_deref(), Some("2"), "{}", a.body);
        assert!(
            a.body.contains("retry") && !a.body.contains("max_reserved"),
            "a message for the client, not the allocator's: {}",
            a.body
        );
    }
    // Scopes close when their handles drop, before the answer is sent.
    let counted = alloc_host::aggregate("request").map_or(0, |a| a.closed) - before;
    assert_eq!(
        counted, ok as u64,
        "`request` scopes closed: {counted}; requests answered 200: {ok}"
    );
    drop(rt);
    // Admitted, but the device cannot hold its KV cache (2 MiB on a 1 MiB
    // device): 503 with `Retry-After`, and the allocator's text and remedy
    // stay in the server's log. It opened a `request` scope (its device
    // bytes are charged there), marked failed: counted under
    // `request (failed)`, not in the `request` distribution.
    let ok_before = alloc_host::aggregate("request").map_or(0, |a| a.closed);
    let failed_before = alloc_host::aggregate("request (failed)").map_or(0, |a| a.closed);
    let (rt, addr) = start(config(2), 1 << 20);
    let a = rt.block_on(async {
        let (mut send, _conn) = connect(addr).await;
        let body = infer_body(1, &[5; 1024]);
        call(&mut send, "/infer", Some("application/json"), body).await
    });
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.retry_after.as_deref(), Some("2"), "{}", a.body);
    assert!(
        a.body.contains("retry")
            && !a.body.contains("max_reserved")
            && !a.body.contains("per_process_memory_fraction"),
        "a message for the client, not the allocator's: {}",
        a.body
    );
    drop(rt);
    let ok_after = alloc_host::aggregate("request").map_or(0, |a| a.closed);
    let failed_after = alloc_host::aggregate("request (failed)").map_or(0, |a| a.closed);
    assert_eq!(
        (ok_after - ok_before, failed_after - failed_before),
        (0, 1),
        "a request refused for device memory counts as `request (failed)` only"
    );
}

/// The command line refuses numbers out of range, naming the value and the
/// range (before: `--port 70000` served on 4464, `--port 65536` on 3000,
/// `--requests 0` ran one request, `--concurrency 0` one connection).
#[test]
fn command_line_numbers_are_checked() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        cli::Options::try_parse_from(
            std::iter::once("inference_server").chain(args.iter().copied()),
        )
    };
    for (args, value, range) in [
        (&["--port", "70000"][..], "70000", "0..=65535"),
        (&["--port", "65536"][..], "65536", "0..=65535"),
        (&["--requests", "0"][..], "0", "1..=100000"),
        (&["--concurrency", "0"][..], "0", "1..=1024"),
        (&["--max-in-flight", "0"][..], "0", "1..=4096"),
        (&["--header-timeout", "0"][..], "0", "0.001..=3600"),
        (
            &["--body-timeout", "1e20"][..],
            "100000000000000000000",
            "0.001..=3600",
        ),
    ] {
        let e = parse(args).expect_err(&format!("{args:?} accepted"));
        let msg = e.to_string();
        assert!(
            msg.contains(value) && msg.contains(range),
            "{args:?}: the message names {value} and {range}: {msg}"
        );
    }
    let o = parse(&["--serve"]).unwrap();
    assert_eq!((o.port(), o.requests, o.concurrency), (3000, 300, 32));
    let o = parse(&["--port", "65535", "--header-timeout", "0.5"]).unwrap();
    assert_eq!(o.port(), 65535);
    assert_eq!(o.server_config().header_timeout, Duration::from_millis(500));
    assert_eq!(parse(&[]).unwrap().port(), 0, "the load run: any free port");
}
