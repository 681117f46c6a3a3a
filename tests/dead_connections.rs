//! Issue 12 (1): no request waits forever on a dead connection. A TCP relay between kproxy and the fake
//! API server freezes the connections open at that moment (sockets stay open, no FIN, no RST, no
//! bytes in either direction), as a NAT timeout or a load-balancer failover does. For each way a
//! request travels (the shared HTTP/2 connection, a watch lane, the HTTP/1.1 bulk pool, through an
//! egress proxy) the request in flight ends within the liveness bound, and the next one succeeds over a
//! fresh connection. The bounds are shortened through the Config (ping 300 ms + 300 ms), never slept.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PING: Duration = Duration::from_millis(300);
/// The stall bound the configuration above gives (ping interval + ping timeout).
const STALL: Duration = Duration::from_millis(600);
/// How late after the bound a request may end: scheduling on a loaded CI machine.
const SLACK: Duration = Duration::from_secs(3);

/// A TCP relay that can freeze the connections it carries: [`Relay::freeze`] stops forwarding on
/// every connection open at that moment, in both directions, without closing anything. Connections
/// made later are relayed normally. With `connect`, it is an HTTP CONNECT proxy instead of a fixed
/// relay.
struct Relay {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Relay {
    async fn start(target: Option<SocketAddr>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let registry = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let frozen = Arc::new(AtomicBool::new(false));
                registry.lock().unwrap().push(frozen.clone());
                tokio::spawn(async move {
                    let to = match target {
                        Some(t) => t,
                        None => match read_connect(&mut client).await {
                            Some(t) => t,
                            None => return,
                        },
                    };
                    let Ok(server) = TcpStream::connect(to).await else {
                        return;
                    };
                    if target.is_none()
                        && client
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .await
                            .is_err()
                    {
                        return;
                    }
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, frozen.clone()), pump(sr, cw, frozen.clone()));
                });
            }
        });
        Relay { addr, open }
    }

    /// Freezes every connection open now.
    fn freeze(&self) {
        for f in self.open.lock().unwrap().iter() {
            f.store(true, Ordering::SeqCst);
        }
    }
}

/// Reads a CONNECT request head; returns its target.
async fn read_connect(s: &mut TcpStream) -> Option<SocketAddr> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_owned();
    let target = line.strip_prefix("CONNECT ")?.split(' ').next()?.to_owned();
    tokio::net::lookup_host(target).await.ok()?.next()
}

/// Copies until EOF; once `frozen`, stops forwarding and holds both sockets open, forever.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if frozen.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Swallow everything from now on; keep both halves (no FIN, no RST).
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A fake API server whose `?hang` requests never answer, whose `?stall` requests send a head and a
/// first chunk and then nothing, and whose `?trickle` requests send a chunk every 100 ms for
/// four times the stall bound.
async fn api(http1_only: bool) -> FakeApi {
    let mut b = FakeApi::builder();
    if http1_only {
        b = b.http1_only();
    }
    b.route("/api/v1/", |req, _| async move {
        let q = req.uri().query().unwrap_or("").to_owned();
        if q.contains("hang") {
            std::future::pending::<()>().await;
        }
        if q.contains("stall") {
            return http::Response::builder()
                .header("content-type", "application/json")
                .body(async_stream(|tx| async move {
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from_static(b"{\"items\":["))))
                        .await;
                    tx.closed().await;
                }))
                .unwrap();
        }
        if q.contains("trickle") {
            return http::Response::builder()
                .header("content-type", "application/json")
                .body(async_stream(|tx| async move {
                    let end = Instant::now() + STALL * 4;
                    while Instant::now() < end {
                        if tx
                            .send(Ok(Frame::data(Bytes::from_static(b" "))))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"{}")))).await;
                }))
                .unwrap();
        }
        http::Response::builder()
            .header("content-type", "application/json")
            .body(full(r#"{"kind":"List","items":[]}"#))
            .unwrap()
    })
    .start()
    .await
}

async fn kproxy_via(api: &FakeApi, server: &str, extra: &str) -> Kproxy {
    let kc = kubeconfig(
        api.pki.dir.path(),
        "relayed.kubeconfig",
        server,
        &format!("certificate-authority: {}\n{extra}", api.ca_path.display()),
        "",
    );
    let kc_flag = format!("--kubeconfig={}", kc.display());
    Kproxy::start_with(&[&kc_flag], kproxy::env::MapEnv::default(), |c| {
        c.ping_interval = PING;
        c.ping_timeout = PING;
    })
    .await
    .unwrap()
}

/// Waits (bounded) until the API server has received `n` requests in all.
async fn received(api: &FakeApi, n: usize) {
    let deadline = Instant::now() + WAIT;
    while api.count() < n {
        assert!(
            Instant::now() < deadline,
            "the API server saw {} requests, not {n}",
            api.count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One request whose connection freezes before its response head: it gets a 504 `Status` within the
/// bound, and the same request without `hang` then succeeds at once.
async fn frozen_before_head(api: &FakeApi, relay: &Relay, kp: &Kproxy, path: &str) {
    // Warm up: the connection this class of request uses exists and works.
    let (status, _, _) = get(&format!("{}{path}", kp.url)).await;
    assert_eq!(status, 200, "{path}");
    let before = api.count();
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = format!("{}{path}{sep}hang", kp.url);
    let pending = tokio::spawn(async move { get(&url).await });
    received(api, before + 1).await;
    relay.freeze();
    let frozen_at = Instant::now();
    let (status, _, body) = tokio::time::timeout(STALL + SLACK, pending)
        .await
        .unwrap_or_else(|_| panic!("{path}: still waiting {:?} after the freeze", STALL + SLACK))
        .unwrap();
    let took = frozen_at.elapsed();
    let msg = assert_status(status, &body, 504);
    assert!(msg.contains("new connection"), "{path}: {msg}");
    eprintln!("{path}: 504 {took:?} after the freeze");
    let started = Instant::now();
    let (status, _, _) = get(&format!("{}{path}", kp.url)).await;
    assert_eq!(status, 200, "{path} after the freeze");
    assert!(
        started.elapsed() < SLACK,
        "{path}: the next request took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shared_http2_connection_frozen_before_the_response() {
    let api = api(false).await;
    let relay = Relay::start(Some(api.addr)).await;
    let kp = kproxy_via(&api, &format!("https://{}", relay.addr), "").await;
    frozen_before_head(&api, &relay, &kp, "/api/v1/namespaces/default/pods/p").await;
    kp.stop().await;
}

#[tokio::test]
async fn http1_bulk_pool_frozen_before_the_response() {
    let api = api(false).await;
    let relay = Relay::start(Some(api.addr)).await;
    let kp = kproxy_via(&api, &format!("https://{}", relay.addr), "").await;
    // A LIST: a bulk read over the HTTP/1.1 pool.
    frozen_before_head(&api, &relay, &kp, "/api/v1/pods").await;
    kp.stop().await;
}

#[tokio::test]
async fn http1_only_server_ordinary_request_frozen_before_the_response() {
    let api = api(true).await;
    let relay = Relay::start(Some(api.addr)).await;
    let kp = kproxy_via(&api, &format!("https://{}", relay.addr), "").await;
    frozen_before_head(&api, &relay, &kp, "/api/v1/namespaces/default/pods/p").await;
    kp.stop().await;
}

#[tokio::test]
async fn egress_proxy_path_frozen_before_the_response() {
    let api = api(false).await;
    let proxy = Relay::start(None).await;
    let kp = kproxy_via(&api, &api.url, &format!("proxy-url: http://{}", proxy.addr)).await;
    frozen_before_head(&api, &proxy, &kp, "/api/v1/namespaces/default/pods/p").await;
    frozen_before_head(&api, &proxy, &kp, "/api/v1/pods").await;
    kp.stop().await;
}

/// A response whose connection freezes mid-body: the client sees it cut (the connection closes before
/// the chunked body's end), within the bound.
async fn frozen_mid_body(relay: &Relay, kp: &Kproxy, path: &str) {
    let mut s = TcpStream::connect(kp.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // The head and first chunk arrive.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("{\"items\":[") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("no first chunk")
            .unwrap();
        assert!(
            n > 0,
            "{path}: closed early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    relay.freeze();
    let frozen_at = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(STALL + SLACK, s.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{path}: body still open {:?} after the freeze",
                STALL + SLACK
            )
        })
        .ok();
    got.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&got).into_owned();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let (_, complete) = dechunk(body.as_bytes());
    assert!(!complete, "{path}: looked complete: {text:?}");
    eprintln!("{path}: cut {:?} after the freeze", frozen_at.elapsed());
}

#[tokio::test]
async fn bodies_frozen_mid_response_are_cut_on_every_path() {
    let api = api(false).await;
    let relay = Relay::start(Some(api.addr)).await;
    let kp = kproxy_via(&api, &format!("https://{}", relay.addr), "").await;
    // The bulk pool (a LIST) and the shared HTTP/2 connection (a single object).
    frozen_mid_body(&relay, &kp, "/api/v1/pods?stall").await;
    frozen_mid_body(&relay, &kp, "/api/v1/namespaces/default/pods/p?stall").await;
    let (status, _, _) = get(&format!("{}/api/v1/pods", kp.url)).await;
    assert_eq!(status, 200);
    kp.stop().await;
}

#[tokio::test]
async fn watch_lane_frozen_ends_the_watch_and_the_next_one_opens() {
    let api = api(false).await;
    let relay = Relay::start(Some(api.addr)).await;
    let kp = kproxy_via(&api, &format!("https://{}", relay.addr), "").await;
    let url = format!("{}/apis/apps/v1/deployments?watch=true", kp.url);
    let resp = send_within(http::Request::get(&url).body(full("")).unwrap(), WAIT).await;
    assert_eq!(resp.status(), 200);
    api.next_watch_opened().await;
    relay.freeze();
    let frozen_at = Instant::now();
    let mut body = resp.into_body();
    let ended = tokio::time::timeout(STALL + SLACK, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the watch was still open {:?} after the freeze",
        STALL + SLACK
    );
    eprintln!("watch ended {:?} after the freeze", frozen_at.elapsed());
    let resp = send_within(http::Request::get(&url).body(full("")).unwrap(), SLACK).await;
    assert_eq!(resp.status(), 200);
    api.next_watch_opened().await;
    kp.stop().await;
}

#[tokio::test]
async fn long_reads_that_keep_delivering_are_never_cut() {
    let api = api(false).await;
    let kp = kproxy_via(&api, &api.url, "").await;
    // A LIST (HTTP/1.1 bulk pool) and a single object (HTTP/2) delivering a byte every 100 ms for four
    // times the stall bound.
    for path in [
        "/api/v1/pods?trickle",
        "/api/v1/namespaces/default/pods/p?trickle",
    ] {
        let (status, _, body) = get(&format!("{}{path}", kp.url)).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.ends_with(b"{}"), "{path}: cut: {body:?}");
    }
    kp.stop().await;
}
