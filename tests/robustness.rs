//! Issue 12: never hang, never lie about a response. Idle client connections, the HTTP/2 preface on the
//! listener, bounded echoes of client input, malformed client bodies, malformed upstream framing, and
//! the open-file limit.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one response with a `Content-Length` body (or a `Status` 400 with `connection: close`) from a
/// keep-alive connection, bounded by [`WAIT`].
async fn read_response(s: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return;
                }
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("no response");
    parse_response(&buf)
}

/// Waits (bounded) for the peer to close `s`; returns what it sent before closing.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .expect("the connection was not closed")
        .ok();
    out
}

#[tokio::test]
async fn idle_keep_alive_connections_stay_open_but_a_stalled_head_is_cut() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc", "");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let timeout = Duration::from_millis(300);
    let kp = Kproxy::start_with(&[&kc_flag], kproxy::env::MapEnv::default(), |c| {
        c.header_read_timeout = timeout;
    })
    .await
    .unwrap();
    let get = b"GET /version HTTP/1.1\r\nHost: localhost\r\n\r\n";

    // A connection idle for several times the header-read timeout, before its first request and between
    // two, is still usable: the timeout starts with a request's first byte.
    let mut idle = TcpStream::connect(kp.addr).await.unwrap();
    tokio::time::sleep(timeout * 4).await; // the idle period under test, not a synchronisation
    idle.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);
    tokio::time::sleep(timeout * 4).await;
    idle.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);

    // A head that starts and stalls is cut once the timeout has run from its first byte.
    let mut slow = TcpStream::connect(kp.addr).await.unwrap();
    let started = std::time::Instant::now();
    slow.write_all(b"GET /version HTTP/1.1\r\nHo")
        .await
        .unwrap();
    read_until_closed(&mut slow, WAIT).await;
    let took = started.elapsed();
    assert!(took >= timeout && took < timeout * 10, "cut after {took:?}");
    kp.stop().await;
}

#[tokio::test]
async fn http2_preface_gets_a_400_status() {
    let api = FakeApi::builder().start().await;
    let kp = Kproxy::with_kubeconfig(&kubeconfig_for(&api, "kc", ""), &[]).await;
    // What `curl --http2-prior-knowledge` sends first.
    let mut s = TcpStream::connect(kp.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let out = read_until_closed(&mut s, WAIT).await;
    let resp = parse_response(&out);
    let msg = assert_status(
        http::StatusCode::from_u16(resp.status).unwrap(),
        &resp.body,
        400,
    );
    assert!(msg.contains("HTTP/2"), "{msg}");
    assert_eq!(api.count(), 0);
    kp.stop().await;
}

#[tokio::test]
async fn client_values_echoed_in_answers_are_bounded() {
    let api = FakeApi::builder().start().await;
    let kp =
        Kproxy::with_kubeconfig(&kubeconfig_for(&api, "kc", ""), &["--accept-paths=^/api/"]).await;
    let limit = kproxy::internals::ECHO_LIMIT;
    // A 300 KB Host: rejected by --accept-hosts, echoed cut.
    let host = "h".repeat(300 * 1024);
    let req = format!("GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let resp = raw(kp.addr, req.as_bytes()).await;
    let msg = assert_status(
        http::StatusCode::from_u16(resp.status).unwrap(),
        &resp.body,
        403,
    );
    assert!(msg.contains("more bytes"), "{}", &msg[..200.min(msg.len())]);
    assert!(
        resp.body.len() < limit + 1024,
        "403 body of {} bytes",
        resp.body.len()
    );
    // A 60 KB path not accepted (hyper answers 414 past 64 KiB): the same.
    let path = format!("/apis/{}", "p".repeat(60 * 1024));
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let resp = raw(kp.addr, req.as_bytes()).await;
    let msg = assert_status(
        http::StatusCode::from_u16(resp.status).unwrap(),
        &resp.body,
        403,
    );
    assert!(msg.contains("more bytes"), "{}", &msg[..200.min(msg.len())]);
    assert!(
        resp.body.len() < limit + 1024,
        "403 body of {} bytes",
        resp.body.len()
    );
    assert_eq!(api.count(), 0);
    kp.stop().await;
}

#[tokio::test]
async fn malformed_chunked_request_body_is_a_400_over_http2_and_http1() {
    for http1 in [false, true] {
        let mut b = FakeApi::builder();
        if http1 {
            b = b.http1_only();
        }
        let api = b.start().await;
        let kp = Kproxy::with_kubeconfig(&kubeconfig_for(&api, "kc", ""), &[]).await;
        // A valid first chunk, then a chunk-size line that is not hex.
        let req = b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: localhost\r\n\
                    Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
                    2\r\n{}\r\nzz\r\nnot a chunk\r\n0\r\n\r\n";
        let resp = raw(kp.addr, req).await;
        let msg = assert_status(
            http::StatusCode::from_u16(resp.status).unwrap(),
            &resp.body,
            400,
        );
        assert!(msg.contains("request body"), "http1={http1}: {msg}");
        // The next request goes through as usual.
        let (status, _, _) = get(&format!("{}/version", kp.url)).await;
        assert_eq!(status, 200, "http1={http1}");
        kp.stop().await;
    }
}

/// An HTTPS "API server" that answers every request with `response`, raw, then closes if `close`.
async fn raw_tls_upstream(pki: &Pki, response: &'static [u8]) -> SocketAddr {
    let cfg = tls_server_config(pki, "raw", &[b"http/1.1"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tls.write_all(response).await;
                let _ = tls.flush().await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

async fn kproxy_for_raw(pki: &Pki, addr: SocketAddr) -> Kproxy {
    let kc = kubeconfig(
        pki.dir.path(),
        "raw.kubeconfig",
        &format!("https://{addr}"),
        &format!("certificate-authority: {}", pki.path("ca.crt").display()),
        "",
    );
    Kproxy::with_kubeconfig(&kc, &[]).await
}

#[tokio::test]
async fn both_framing_headers_from_upstream_the_chunked_body_wins() {
    let pki = Pki::new();
    let addr = raw_tls_upstream(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let kp = kproxy_for_raw(&pki, addr).await;
    // An ordinary request and a LIST (the HTTP/1.1 bulk pool) alike.
    for path in ["/api/v1/namespaces/default/pods/p", "/api/v1/pods"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = raw(kp.addr, req.as_bytes()).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.header("content-length"), None, "{path}");
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"), "{path}");
        assert_eq!(resp.body_str(), "hello", "{path}");
    }
    kp.stop().await;
}

#[tokio::test]
async fn short_upstream_bodies_close_the_client_connection_early() {
    let pki = Pki::new();
    // Content-Length promises 10 bytes, 5 come, then the server closes.
    let short = raw_tls_upstream(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nhello",
    )
    .await;
    // A chunked body that stops without its last chunk.
    let unterminated = raw_tls_upstream(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    for (addr, what) in [(short, "short"), (unterminated, "unterminated")] {
        let kp = kproxy_for_raw(&pki, addr).await;
        for path in ["/api/v1/namespaces/default/pods/p", "/api/v1/pods"] {
            // Keep-alive: a complete-looking response would leave the connection open.
            let mut s = TcpStream::connect(kp.addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let out = read_until_closed(&mut s, WAIT).await;
            let text = String::from_utf8_lossy(&out).into_owned();
            let end = text.find("\r\n\r\n").expect("a response head") + 4;
            let (head, body) = text.split_at(end);
            let head = head.to_ascii_lowercase();
            if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                let len: usize = len.trim().parse().unwrap();
                assert!(body.len() < len, "{what} {path}: padded to {len}: {text:?}");
            } else {
                assert!(
                    head.contains("transfer-encoding: chunked"),
                    "{what} {path}: {text:?}"
                );
                let (_, complete) = dechunk(body.as_bytes());
                assert!(
                    !complete,
                    "{what} {path}: chunked body terminated: {text:?}"
                );
            }
        }
        kp.stop().await;
    }
}

/// Started under a soft limit of 1,024 open files (the hard limit left as it is), the kproxy binary raises
/// it, holds 3,000 idle keep-alive client connections, and still answers a new request; then every held
/// connection is still usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_idle_clients_under_a_soft_limit_of_1024() {
    const CLIENTS: usize = 3000;
    let limits = kproxy::fd_limit::raise_soft_to_hard().unwrap();
    assert!(
        limits.soft >= 2 * CLIENTS as u64 + 200,
        "this test needs a hard open-file limit above {} (have {})",
        2 * CLIENTS + 200,
        limits.hard
    );
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc", "");
    let child = std::process::Command::new("prlimit")
        .arg(format!("--nofile=1024:{}", limits.hard))
        .arg(kproxy_bin())
        .args(["--port=0", &format!("--kubeconfig={}", kc.display())])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let kp = Spawned::new(child);
    let addr: SocketAddr = format!("127.0.0.1:{}", kp.port).parse().unwrap();
    let get_version = b"GET /version HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut held = Vec::with_capacity(CLIENTS);
    for chunk in 0..CLIENTS / 100 {
        let batch = (0..100).map(|_| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(get_version).await.unwrap();
            let status = read_response(&mut s).await.status;
            (s, status)
        });
        for (s, status) in futures_util::future::join_all(batch).await {
            assert_eq!(status, 200, "batch {chunk}");
            held.push(s);
        }
    }
    let (status, _, _) = get(&format!("http://{addr}/version")).await;
    assert_eq!(status, 200);
    // Every held connection is still open and answers.
    let answers = futures_util::future::join_all(held.iter_mut().map(|s| async move {
        s.write_all(get_version).await.unwrap();
        read_response(s).await.status
    }))
    .await;
    assert!(answers.iter().all(|s| *s == 200));
    let stderr = kp.stop();
    assert!(!stderr.contains("accept failed"), "{stderr}");
}

/// At the open-file limit (here a hard limit of 256 that cannot be raised), accept pauses instead of
/// spinning, logs the condition once rather than per attempt, and takes the waiting connections once
/// descriptors are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_at_the_file_limit_backs_off_quietly_and_recovers() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc", "");
    let child = std::process::Command::new("prlimit")
        .arg("--nofile=256:256")
        .arg(kproxy_bin())
        .args(["--port=0", &format!("--kubeconfig={}", kc.display())])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let kp = Spawned::new(child);
    let addr: SocketAddr = format!("127.0.0.1:{}", kp.port).parse().unwrap();
    // More connections than descriptors: the excess waits in the listen backlog.
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // kproxy runs into the limit; then it is left there for a while (the period under test: the
    // backoff tops out at one second, so it retries several times).
    let deadline = std::time::Instant::now() + WAIT;
    while !kp.stderr().contains("accept failed") {
        assert!(std::time::Instant::now() < deadline, "no accept failure");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Free descriptors: the last connection, accepted only now, is answered.
    let mut last = held.pop().unwrap();
    held.truncate(100);
    last.write_all(b"GET /version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = read_until_closed(&mut last, WAIT).await;
    assert_eq!(parse_response(&out).status, 200);
    drop(held);
    let stderr = kp.stop();
    let failures = stderr.matches("accept failed").count();
    assert_eq!(
        failures, 1,
        "accept failures logged {failures} times:\n{stderr}"
    );
    assert!(stderr.contains("accepting connections again"), "{stderr}");
}

/// A kproxy child process: its port from the startup line; killed and its stderr returned by `stop`.
struct Spawned {
    child: std::process::Child,
    port: u16,
    stderr: Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Spawned {
    fn new(mut child: std::process::Child) -> Spawned {
        use std::io::{BufRead, Read};
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line
            .trim_end()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no startup line: {line:?}"));
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Spawned {
            child,
            port,
            stderr,
            reader: Some(reader),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let s = self.stderr.lock().unwrap().clone();
        s
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
