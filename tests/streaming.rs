//! Issue items 5 and 6: watches and followed logs reach the client chunk by chunk as the upstream sends
//! them, kproxy puts no timeout on them, a client that goes away cancels the upstream request, and bodies
//! of 1 GiB stream both ways through the real binary with a small, flat memory footprint.
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Reads frames from `body` until exactly `want` has arrived; fails if more, or nothing, arrives.
async fn expect_chunk(body: &mut Incoming, want: &[u8]) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "event {:?} did not reach the client (got {:?})",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(&got)
                )
            })
            .expect("the stream ended early")
            .expect("the stream failed");
        if let Some(d) = frame.data_ref() {
            got.extend_from_slice(d);
        }
    }
    assert_eq!(got, want, "one event per send, nothing buffered");
}

/// Sends events one at a time and checks each reaches the client before the next is sent, so nothing
/// is held back waiting for more data or for the stream to end. Returns the slowest delivery.
async fn lockstep(body: &mut Incoming, mut send: impl FnMut(Bytes)) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let event = Bytes::from(format!(
            "{{\"type\":\"ADDED\",\"object\":{{\"kind\":\"Pod\",\"n\":{i}}}}}\n"
        ));
        let start = Instant::now();
        send(event.clone());
        expect_chunk(body, &event).await;
        slowest = slowest.max(start.elapsed());
    }
    slowest
}

async fn watch_is_relayed_event_by_event(api: FakeApi) {
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let resp = send(
        Request::get(format!("{}/api/v1/pods?watch=true", kp.url))
            .body(full(Bytes::new()))
            .unwrap(),
    )
    .await;
    // The headers came back before any event exists upstream.
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(api.next_watch_opened().await, "/api/v1/pods?watch=true");
    let mut body = resp.into_body();
    let slowest = lockstep(&mut body, |e| {
        api.watch_tx.send(e).unwrap();
    })
    .await;
    eprintln!("slowest watch event delivery: {slowest:?}");
    // The server ends the watch: the client sees a clean end.
    api.watch_tx.send(Bytes::new()).unwrap();
    let end = tokio::time::timeout(WAIT, body.frame()).await.unwrap();
    assert!(end.is_none(), "expected the end of the stream, got {end:?}");
    kp.stop().await;
}

#[tokio::test]
async fn watch_events_arrive_one_by_one_over_h2() {
    watch_is_relayed_event_by_event(FakeApi::builder().start().await).await;
}

#[tokio::test]
async fn watch_events_arrive_one_by_one_over_http1() {
    watch_is_relayed_event_by_event(FakeApi::builder().http1_only().start().await).await;
}

/// A `log?follow=true` handler fed by the test through a channel.
fn follow_route(mut rx: mpsc::UnboundedReceiver<Bytes>) -> Response<BoxBody> {
    let body = async_stream(move |tx| async move {
        while let Some(line) = rx.recv().await {
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/plain")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn followed_log_lines_arrive_one_by_one() {
    let (line_tx, line_rx) = mpsc::unbounded_channel::<Bytes>();
    let line_rx = std::sync::Mutex::new(Some(line_rx));
    let api = FakeApi::builder()
        .route("/api/v1/namespaces/default/pods/web/log", move |_, _| {
            let rx = line_rx.lock().unwrap().take().expect("one follow request");
            async move { follow_route(rx) }
        })
        .start()
        .await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let resp = send(
        Request::get(format!(
            "{}/api/v1/namespaces/default/pods/web/log?follow=true&container=c",
            kp.url
        ))
        .body(full(Bytes::new()))
        .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let slowest = lockstep(&mut body, |l| line_tx.send(l).unwrap()).await;
    eprintln!("slowest log line delivery: {slowest:?}");
    assert_eq!(
        api.last().uri,
        "/api/v1/namespaces/default/pods/web/log?follow=true&container=c"
    );
    kp.stop().await;
}

async fn client_disconnect_cancels_upstream(api: FakeApi) {
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let mut conn = tokio::net::TcpStream::connect(kp.addr).await.unwrap();
    conn.write_all(b"GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(api.next_watch_opened().await, "/api/v1/pods?watch=1");
    let mut head = [0u8; 12];
    tokio::time::timeout(WAIT, conn.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(conn);
    assert_eq!(
        api.next_watch_closed(WAIT).await.as_deref(),
        Some("/api/v1/pods?watch=1"),
        "the upstream watch outlived its client"
    );
    kp.stop().await;
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_watch_over_h2() {
    client_disconnect_cancels_upstream(FakeApi::builder().start().await).await;
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_watch_over_http1() {
    client_disconnect_cancels_upstream(FakeApi::builder().http1_only().start().await).await;
}

/// kproxy's only timers are the 30 s header-read timeout on client connections and the 30 s HTTP/2
/// ping interval upstream; a quiet watch must outlive both.
#[tokio::test]
async fn quiet_watch_is_not_timed_out() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let resp = send(
        Request::get(format!("{}/api/v1/pods?watch=true", kp.url))
            .body(full(Bytes::new()))
            .unwrap(),
    )
    .await;
    api.next_watch_opened().await;
    let mut body = resp.into_body();
    // Nothing may arrive (not even an end of stream) while the watch is quiet.
    let quiet = tokio::time::timeout(Duration::from_secs(35), body.frame()).await;
    assert!(quiet.is_err(), "the quiet watch ended: {quiet:?}");
    api.watch_tx.send(Bytes::from_static(b"late\n")).unwrap();
    expect_chunk(&mut body, b"late\n").await;
    kp.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// 1 GiB each way through the real binary, with kproxy's peak RSS read from /proc.

const GIB: u64 = 1 << 30;
/// kproxy's peak resident memory must stay below this while moving 1 GiB.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

fn spawn_binary(api: &FakeApi) -> KproxyProcess {
    let kc = kubeconfig_for(api, "kc.yaml", "token: t");
    KproxyProcess::spawn(
        &["--port=0", &format!("--kubeconfig={}", kc.display())],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams_with_flat_memory() {
    let api = FakeApi::builder().start().await;
    let kp = spawn_binary(&api);
    let idle = vm_hwm_kib(kp.pid());
    let start = Instant::now();
    let resp = send(
        Request::get(format!("{}/bytes/{GIB}", kp.url()))
            .body(full(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-length"],
        GIB.to_string().as_str(),
        "the length is relayed, so the client can check completeness"
    );
    let mut body = resp.into_body();
    let mut pos = 0u64;
    while let Some(frame) = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the download stalled")
    {
        let frame = frame.expect("the download failed");
        if let Some(d) = frame.data_ref() {
            assert!(matches_pattern(pos, d), "corrupt bytes at offset {pos}");
            pos += d.len() as u64;
        }
    }
    assert_eq!(pos, GIB);
    let hwm = vm_hwm_kib(kp.pid());
    eprintln!(
        "1 GiB download in {:?}; kproxy peak RSS {hwm} KiB (idle {idle} KiB)",
        start.elapsed()
    );
    assert!(hwm < RSS_LIMIT_KIB, "kproxy peak RSS {hwm} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_with_flat_memory() {
    let api = FakeApi::builder()
        .route("/upload", |req, _| async move {
            let mut body = req.into_body();
            let mut pos = 0u64;
            let mut intact = true;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    intact &= matches_pattern(pos, d);
                    pos += d.len() as u64;
                }
            }
            Response::new(full(format!("{{\"len\":{pos},\"intact\":{intact}}}")))
        })
        .start()
        .await;
    let kp = spawn_binary(&api);
    let idle = vm_hwm_kib(kp.pid());
    let start = Instant::now();
    let upload = async_stream(|tx| async move {
        let chunk = Bytes::from(pattern(64 * 1024 + 251));
        let mut pos = 0u64;
        while pos < GIB {
            let take = (GIB - pos).min(64 * 1024) as usize;
            let off = (pos % 251) as usize;
            if tx
                .send(Ok(Frame::data(chunk.slice(off..off + take))))
                .await
                .is_err()
            {
                return;
            }
            pos += take as u64;
        }
    });
    // The answer comes once the whole body is through: allow more than one WAIT for that.
    let resp = send_within(
        Request::put(format!("{}/upload", kp.url()))
            .header("content-length", GIB.to_string())
            .header("content-type", "application/octet-stream")
            .body(upload)
            .unwrap(),
        Duration::from_secs(600),
    )
    .await;
    let (status, _, body) = collect(resp).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["len"], GIB, "{v}");
    assert_eq!(v["intact"], true, "{v}");
    let hwm = vm_hwm_kib(kp.pid());
    eprintln!(
        "1 GiB upload in {:?}; kproxy peak RSS {hwm} KiB (idle {idle} KiB)",
        start.elapsed()
    );
    assert!(hwm < RSS_LIMIT_KIB, "kproxy peak RSS {hwm} KiB");
    let rec = api.last();
    assert_eq!(rec.uri, "/upload");
    assert_eq!(rec.method, http::Method::PUT);
}

#[tokio::test]
async fn clients_that_stop_reading_do_not_stall_the_shared_connection() {
    // Four clients ask for a 32 MiB object over the shared HTTP/2 connection and never read it. Each
    // stalled stream holds up to a stream window of the connection's window; were the connection
    // window only a few stream windows (hyper grows both to the same size), a fifth request on the
    // connection would wait for them forever.
    const BIG: usize = 32 * 1024 * 1024;
    let api = FakeApi::builder()
        .route("/api/v1/namespaces/default/configmaps/big", |_, _| async {
            Response::new(full(pattern(BIG)))
        })
        .start()
        .await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small receive buffer, so the kernel absorbs little of what the client does not read.
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(kp.addr).await.unwrap();
        s.write_all(
            b"GET /api/v1/namespaces/default/configmaps/big HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await
        .unwrap();
        // Read the head, so the stream is open upstream, then stop reading.
        let mut first = [0u8; 1024];
        let n = s.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
        stalled.push(s);
    }
    let started = Instant::now();
    for _ in 0..3 {
        let (status, _, _) = tokio::time::timeout(WAIT, get(&format!("{}/version", kp.url)))
            .await
            .expect("a request behind the stalled streams must not wait for them");
        assert_eq!(status, 200);
    }
    eprintln!(
        "3 requests beside 4 stalled 32 MiB responses: {:?}",
        started.elapsed()
    );
    assert_eq!(api.last().version, http::Version::HTTP_2);
    drop(stalled);
    kp.stop().await;
}
