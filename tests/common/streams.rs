//! Upgrade endpoints for the fake API server, and raw clients for tunnels and watches.
//!
//! - `/echo/...`: accepts any upgrade (WebSocket or SPDY/3.1 handshake headers) and then treats the
//!   tunnel as raw bytes, in the mode the query names: `mode=echo` (echo as it arrives, close the write
//!   half on EOF), `mode=after-eof` (read to EOF, then send it all back: proves the client's half-close
//!   arrived and data still flows the other way), `mode=server-first&n=N` (send N pattern bytes, close the
//!   write half, then read to EOF). `?status=N` answers N with a Status body instead of upgrading.
//!   Every tunnel reports what it received on [`Tunnels`].
//! - `/ws/echo`: a real WebSocket server (tungstenite) echoing every message.
//! - [`kube_routes`]: enough of the API for kubectl: discovery, a running Pod, `exec` and `attach` over
//!   WebSocket `v5.channel.k8s.io`, and `portforward` over SPDY/3.1 (plain, or tunnelled in WebSocket
//!   as `SPDY/3.1+portforward.k8s.io`) with an echo behind every port.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{full, pattern, BoxBody, FakeApiBuilder, Recorded, WAIT};

/// What one `/echo` tunnel saw, reported when it ends.
#[derive(Debug)]
pub struct TunnelReport {
    /// The request path and query.
    pub uri: String,
    /// Every byte the upstream end received.
    pub received: Vec<u8>,
    /// Whether reading ended with a clean EOF (a FIN or TLS close_notify), not an error.
    pub clean_eof: bool,
}

/// The reports of `/echo` tunnels, in the order they ended.
pub struct Tunnels(tokio::sync::Mutex<mpsc::UnboundedReceiver<TunnelReport>>);

impl Tunnels {
    /// The next tunnel to end, waiting at most [`WAIT`].
    pub async fn next(&self) -> TunnelReport {
        self.within(WAIT).await.expect("no tunnel ended")
    }

    /// The next tunnel to end within `d`.
    pub async fn within(&self, d: Duration) -> Option<TunnelReport> {
        let mut rx = self.0.lock().await;
        tokio::time::timeout(d, rx.recv()).await.ok().flatten()
    }
}

/// Adds `/echo/` and `/ws/echo` to the fake API server.
pub fn echo_routes(builder: FakeApiBuilder) -> (FakeApiBuilder, Tunnels) {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = builder
        .route("/echo/", move |req, rec| raw_echo(req, rec, tx.clone()))
        .route("/ws/echo", |req, _| ws_echo(req));
    (builder, Tunnels(tokio::sync::Mutex::new(rx)))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn status(code: u16, message: &str) -> Response<BoxBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{message}","code":{code}}}"#
        )))
        .unwrap()
}

/// The 101 the API server sends for `req`: the upgrade echoed, the WebSocket accept key, and the first
/// offered subprotocol (WebSocket) or stream protocol version (SPDY) chosen.
fn switching(req: &Request<Incoming>, choose: Option<&str>) -> Response<BoxBody> {
    let upgrade = header(req, "upgrade").to_owned();
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", &upgrade)
        .header("x-fake-upgrade", "yes");
    if upgrade.eq_ignore_ascii_case("websocket") {
        let key = header(req, "sec-websocket-key");
        resp = resp.header("sec-websocket-accept", derive_accept_key(key.as_bytes()));
        let offered = header(req, "sec-websocket-protocol");
        let chosen = choose.or_else(|| offered.split(',').map(str::trim).find(|p| !p.is_empty()));
        if let Some(p) = chosen {
            resp = resp.header("sec-websocket-protocol", p);
        }
    } else {
        let offered = header(req, "x-stream-protocol-version");
        let chosen = choose.or_else(|| offered.split(',').map(str::trim).find(|p| !p.is_empty()));
        if let Some(p) = chosen {
            resp = resp.header("x-stream-protocol-version", p);
        }
    }
    resp.body(full(Bytes::new())).unwrap()
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    header(req, "connection")
        .to_ascii_lowercase()
        .contains("upgrade")
        && !header(req, "upgrade").is_empty()
}

async fn raw_echo(
    mut req: Request<Incoming>,
    rec: Recorded,
    reports: mpsc::UnboundedSender<TunnelReport>,
) -> Response<BoxBody> {
    let query = req.uri().query().unwrap_or("").to_owned();
    if let Some(code) = query_param(&query, "status") {
        return status(code.parse().unwrap(), "refused by the fake API server");
    }
    if !is_upgrade(&req) {
        return status(400, "Upgrade request required");
    }
    let mode = query_param(&query, "mode").unwrap_or("echo").to_owned();
    let n: usize = query_param(&query, "n").map_or(0, |n| n.parse().unwrap());
    let on = hyper::upgrade::on(&mut req);
    let resp = switching(&req, None);
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let io = TokioIo::new(upgraded);
        let (mut r, mut w) = tokio::io::split(io);
        let (received, clean_eof) = match mode.as_str() {
            "after-eof" => {
                let got = read_to_eof(&mut r).await;
                let _ = w.write_all(&got.0).await;
                let _ = w.shutdown().await;
                got
            }
            "server-first" => {
                let _ = w.write_all(&pattern(n)).await;
                let _ = w.shutdown().await;
                read_to_eof(&mut r).await
            }
            _ => {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                let clean = loop {
                    match r.read(&mut buf).await {
                        Ok(0) => break true,
                        Ok(k) => {
                            got.extend_from_slice(&buf[..k]);
                            if w.write_all(&buf[..k]).await.is_err() {
                                break false;
                            }
                        }
                        Err(_) => break false,
                    }
                };
                let _ = w.shutdown().await;
                (got, clean)
            }
        };
        let _ = reports.send(TunnelReport {
            uri: rec.uri,
            received,
            clean_eof,
        });
    });
    resp
}

async fn read_to_eof<R: AsyncRead + Unpin>(r: &mut R) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let clean = r.read_to_end(&mut got).await.is_ok();
    (got, clean)
}

async fn ws_echo(mut req: Request<Incoming>) -> Response<BoxBody> {
    if !is_upgrade(&req) {
        return status(400, "Upgrade request required");
    }
    let on = hyper::upgrade::on(&mut req);
    let resp = switching(&req, None);
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let echo = matches!(msg, Message::Binary(_) | Message::Text(_));
            if msg.is_close() || (echo && ws.send(msg).await.is_err()) {
                break;
            }
        }
        let _ = ws.close(None).await;
    });
    resp
}

// ---------------------------------------------------------------------------------------------------
// Enough of the API for kubectl exec, attach and port-forward.

/// A Pod kubectl will exec into: running, one container `main`.
pub fn pod_json(ns: &str, name: &str) -> String {
    serde_json::json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": "00000000-0000-0000-0000-000000000001",
                     "resourceVersion": "1"},
        "spec": {"containers": [{"name": "main", "image": "busybox",
                                 "ports": [{"containerPort": 80, "protocol": "TCP"}]}]},
        "status": {"phase": "Running",
                   "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0,
                                          "image": "busybox", "imageID": "",
                                          "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}]}
    })
    .to_string()
}

fn json_ok(body: String) -> Response<BoxBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap()
}

/// Adds discovery (`/api`, `/apis`, `/api/v1`), Pods, and exec/attach/portforward to the fake API server.
pub fn kube_routes(builder: FakeApiBuilder) -> FakeApiBuilder {
    builder.route("/api", |req, _| kube(req))
}

async fn kube(req: Request<Incoming>) -> Response<BoxBody> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/api" => {
            return json_ok(
                r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1:6443"}]}"#.into(),
            )
        }
        "/apis" => return json_ok(r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#.into()),
        "/api/v1" => {
            return json_ok(
                r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[
                {"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list","watch"],"shortNames":["po"]},
                {"name":"pods/attach","singularName":"","namespaced":true,"kind":"PodAttachOptions","verbs":["create","get"]},
                {"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]},
                {"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}"#
                    .into(),
            )
        }
        _ => {}
    }
    // /api/v1/namespaces/NS/pods/NAME[/SUB]
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name] => json_ok(pod_json(ns, name)),
        ["api", "v1", "namespaces", _, "pods", _, sub @ ("exec" | "attach")] => {
            let sub = sub.to_string();
            remote_command(req, sub)
        }
        ["api", "v1", "namespaces", _, "pods", _, "portforward"] => port_forward(req),
        _ => status(404, "not found in the fake API server"),
    }
}

/// exec and attach over WebSocket `v5.channel.k8s.io`: stdout on channel 1 (for exec, the command;
/// with stdin, an echo of it until stdin is closed), then a Success status on channel 3, then a close.
fn remote_command(mut req: Request<Incoming>, sub: String) -> Response<BoxBody> {
    if !header(&req, "upgrade").eq_ignore_ascii_case("websocket") {
        return status(
            400,
            "the fake API server speaks only WebSocket for exec and attach",
        );
    }
    if !header(&req, "sec-websocket-protocol")
        .split(',')
        .any(|p| p.trim() == "v5.channel.k8s.io")
    {
        return status(400, "the fake API server needs v5.channel.k8s.io");
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    let command: Vec<String> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == "command")
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let stdin = query_param(&query, "stdin") == Some("true");
    let on = hyper::upgrade::on(&mut req);
    let resp = switching(&req, Some("v5.channel.k8s.io"));
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let line = if sub == "exec" {
            format!("exec: {}\n", command.join(" "))
        } else {
            "attached to main\n".to_owned()
        };
        let mut out = vec![1u8];
        out.extend_from_slice(line.as_bytes());
        if ws.send(Message::Binary(out.into())).await.is_err() {
            return;
        }
        if stdin {
            // Echo stdin to stdout until the client sends the v5 CLOSE signal for stdin (255, 0).
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Binary(b) = msg else { continue };
                match b.first() {
                    Some(0) => {
                        let mut out = vec![1u8];
                        out.extend_from_slice(&b[1..]);
                        let _ = ws.send(Message::Binary(out.into())).await;
                    }
                    Some(255) if b.get(1) == Some(&0) => break,
                    _ => {}
                }
            }
        }
        let mut status = vec![3u8];
        status.extend_from_slice(br#"{"metadata":{},"status":"Success"}"#);
        let _ = ws.send(Message::Binary(status.into())).await;
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        // Let the client answer the close; bounded, since some clients just hang up.
        let _ =
            tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    });
    resp
}

/// port-forward: SPDY/3.1 (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version: portforward.k8s.io`) or
/// WebSocket tunnelling SPDY (`SPDY/3.1+portforward.k8s.io`), with an echo behind every port.
fn port_forward(mut req: Request<Incoming>) -> Response<BoxBody> {
    let upgrade = header(&req, "upgrade").to_ascii_lowercase();
    let on = hyper::upgrade::on(&mut req);
    if upgrade == "websocket" {
        if !header(&req, "sec-websocket-protocol")
            .split(',')
            .any(|p| p.trim() == "SPDY/3.1+portforward.k8s.io")
        {
            return status(
                400,
                "the fake API server tunnels only SPDY/3.1+portforward.k8s.io",
            );
        }
        let resp = switching(&req, Some("SPDY/3.1+portforward.k8s.io"));
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else { return };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            let (near, far) = tokio::io::duplex(256 * 1024);
            tokio::spawn(super::spdy::serve_port_forward(far));
            bridge_ws(ws, near).await;
        });
        resp
    } else if upgrade == "spdy/3.1" {
        if !header(&req, "x-stream-protocol-version")
            .split(',')
            .any(|p| p.trim() == "portforward.k8s.io")
        {
            return status(400, "the fake API server needs portforward.k8s.io");
        }
        let resp = switching(&req, Some("portforward.k8s.io"));
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else { return };
            super::spdy::serve_port_forward(TokioIo::new(upgraded)).await;
        });
        resp
    } else {
        status(400, "Upgrade request required")
    }
}

/// Carries bytes between a WebSocket (one binary message per write, as client-go's tunnelling
/// connection does) and a byte stream.
async fn bridge_ws<S, D>(ws: WebSocketStream<S>, pipe: D)
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let (mut pr, mut pw) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_close() {
                break;
            }
            if let Message::Binary(b) = msg {
                if pw.write_all(&b).await.is_err() {
                    break;
                }
            }
        }
        let _ = pw.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match pr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..k])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::join!(inbound, outbound);
}

// ---------------------------------------------------------------------------------------------------
// Raw clients.

/// Opens a TCP connection to `addr`, sends an upgrade request for `path` with `headers`, and returns the
/// response head (status line and headers, as text) and the stream positioned after it.
pub async fn raw_upgrade(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: localhost:{}\r\n", addr.port());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (head, s)
}

/// The WebSocket handshake headers for a raw upgrade offering `protocol`.
pub fn ws_headers(protocol: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Protocol", protocol),
    ]
}

/// The SPDY/3.1 handshake headers for a raw upgrade offering `protocol`.
pub fn spdy_headers(protocol: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", protocol),
    ]
}

/// Reads an HTTP response head byte by byte (so nothing after it is consumed).
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    tokio::time::timeout(WAIT, async {
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            assert!(
                n == 1,
                "connection closed inside the response head: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(b[0]);
        }
    })
    .await
    .expect("no response head");
    String::from_utf8(head).unwrap()
}

/// The value of header `name` in a raw response head.
pub fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Writes `data` and shuts down the write half while reading everything the other side sends until
/// EOF; returns what was read.
pub async fn exchange(s: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut got))
        .await
        .expect("tunnel did not end")
        .unwrap();
    drop(writer.await.unwrap());
    got
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Raw HTTP/1.1 GET for a watch; returns the stream after the response head and the head.
pub async fn raw_watch(addr: std::net::SocketAddr, path: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
        addr.port()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (head, s)
}

/// Reads from a chunked watch response until `needle` has been seen; returns everything read.
pub async fn read_until(s: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8]) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while !contains(seen, needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "stream ended before {:?}",
                String::from_utf8_lossy(needle)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never saw {:?}", String::from_utf8_lossy(needle)));
}

/// Shared reports for tests that need one handle in several tasks.
pub type SharedTunnels = Arc<Tunnels>;

/// A header value, for building requests.
pub fn hv(s: &'static str) -> HeaderValue {
    HeaderValue::from_static(s)
}
