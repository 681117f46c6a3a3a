//! The in-process test bed: a PKI from rcgen, a fake API server (hyper + rustls) that records what it
//! receives, kproxy started through the library entry point on `127.0.0.1:0`, the real `kproxy` binary
//! for CLI tests, and small clients. Each integration test file does `mod common;` and uses what it needs.
#![allow(dead_code)]

// Upgrade endpoints (WebSocket, SPDY/3.1, kubectl's exec/attach/port-forward) and raw stream clients.
pub mod fuzzgen;
pub mod spdy;
pub mod streams;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kproxy::cli::Cli;
use kproxy::env::MapEnv;
use kproxy::{App, Config, Listen};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, Recorded) -> Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>>
        + Send
        + Sync,
>;

/// Upper bound for any single wait in a test: long enough for a loaded 2-core CI machine, short enough
/// that a hang fails instead of stalling the suite.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

// ---------------------------------------------------------------------------------------------------
// PKI

/// A throwaway CA plus helpers to issue server and client certificates, all written into a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_pem: String,
    pub ca_path: PathBuf,
}

pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kproxy-test-ca");
        ca_params.distinguished_name = dn;
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_pem = ca_cert.pem();
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, &ca_pem).unwrap();
        Pki {
            dir,
            ca_params,
            ca_key,
            ca_pem,
            ca_path,
        }
    }

    fn issue(&self, name: &str, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{name}.crt"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path,
            key_path,
            der: cert.der().to_vec(),
        }
    }

    /// A serving certificate for localhost, 127.0.0.1 and ::1 plus `extra` names.
    pub fn server(&self, name: &str, extra: &[&str]) -> Issued {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(extra.iter().map(|s| s.to_string()));
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(name, params)
    }

    /// A serving certificate for exactly `names`.
    pub fn server_named(&self, name: &str, names: &[String]) -> Issued {
        let mut params = CertificateParams::new(names.to_vec()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(name, params)
    }

    /// A client certificate for user `cn` in groups `orgs`.
    pub fn client(&self, name: &str, cn: &str, orgs: &[&str]) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(name, params)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

// ---------------------------------------------------------------------------------------------------
// Fake API server

/// What the fake API server saw of one request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query exactly as received.
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// DER of the client certificate presented on the connection, if any.
    pub peer_cert: Option<Vec<u8>>,
    /// The TLS cipher suite the connection negotiated (`TLS13_AES_128_GCM_SHA256`, ...). The server
    /// follows the client's order, so this is the client's first choice.
    pub cipher_suite: Option<String>,
    pub body_len: u64,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .collect()
    }
}

pub struct FakeApiBuilder {
    tls: bool,
    h2: bool,
    routes: Vec<(String, Handler)>,
    pki: Option<Arc<Pki>>,
    server_names: Vec<String>,
    example_certs: bool,
}

/// A running fake API server.
pub struct FakeApi {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT` or `http://...`.
    pub url: String,
    pub pki: Arc<Pki>,
    /// The serving certificate, for tests that need it.
    pub server_cert: Arc<Issued>,
    /// The CA that signed the serving certificate and that client certificates must chain to.
    pub ca_path: PathBuf,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    /// Events pushed here are written to every open watch (one chunk each).
    pub watch_tx: broadcast::Sender<Bytes>,
    /// Receives the request URI of each watch whose client went away (response body dropped).
    pub watch_closed: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// Receives the request URI each time a watch starts streaming.
    pub watch_opened: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// Count of TCP connections accepted.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Bumped to make every open connection shut down gracefully (HTTP/2 GOAWAY).
    goaway: Arc<watch::Sender<u64>>,
    /// Connections that have ended, server side.
    ended: watch::Receiver<usize>,
    _shutdown: oneshot::Sender<()>,
}

impl FakeApi {
    pub fn builder() -> FakeApiBuilder {
        FakeApiBuilder {
            tls: true,
            h2: true,
            routes: Vec::new(),
            pki: None,
            server_names: Vec::new(),
            example_certs: false,
        }
    }

    /// Shuts every open connection down gracefully, as an API server does with `--goaway-chance` or
    /// when it stops: HTTP/2 GOAWAY, in-flight requests finished, then the connection closed.
    pub fn close_connections(&self) {
        self.goaway.send_modify(|n| *n += 1);
    }

    /// Waits until `n` connections have ended on the server's side.
    pub async fn connections_ended(&self, n: usize, within: Duration) {
        let mut ended = self.ended.clone();
        tokio::time::timeout(within, ended.wait_for(|e| *e >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} connections did not end within {within:?}"))
            .expect("the fake API server stopped");
    }

    /// Every request received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Recorded {
        self.recorded()
            .last()
            .cloned()
            .expect("the fake API server received no request")
    }

    /// Waits for the next watch to open and returns its URI.
    pub async fn next_watch_opened(&self) -> String {
        let mut rx = self.watch_opened.lock().await;
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no watch opened")
            .unwrap()
    }

    /// Waits for a watch to be closed by its client and returns its URI.
    pub async fn next_watch_closed(&self, within: Duration) -> Option<String> {
        let mut rx = self.watch_closed.lock().await;
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }
}

impl FakeApiBuilder {
    pub fn http(mut self) -> Self {
        self.tls = false;
        self
    }
    pub fn http1_only(mut self) -> Self {
        self.h2 = false;
        self
    }
    pub fn pki(mut self, pki: Arc<Pki>) -> Self {
        self.pki = Some(pki);
        self
    }
    /// Gives the serving certificate exactly these names, instead of localhost, 127.0.0.1 and ::1 (so a
    /// kubeconfig must use `tls-server-name` to verify it).
    pub fn server_names(mut self, names: &[&str]) -> Self {
        self.server_names = names.iter().map(|n| n.to_string()).collect();
        self
    }
    /// Serves with `certs-example/server.{crt,key}` and accepts client certificates signed by
    /// `certs-example/ca.crt`, so `certs-example/kubeconfig.yaml` works against this server.
    pub fn example_certs(mut self) -> Self {
        self.example_certs = true;
        self
    }
    /// Requests whose path starts with `prefix` go to `handler` (first match wins; built-ins last).
    pub fn route<F, Fut>(mut self, prefix: &str, handler: F) -> Self
    where
        F: Fn(Request<Incoming>, Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<BoxBody>> + Send + 'static,
    {
        let h: Handler = Arc::new(move |req, rec| Box::pin(handler(req, rec)));
        self.routes.push((prefix.to_owned(), h));
        self
    }

    pub async fn start(self) -> FakeApi {
        let pki = self.pki.unwrap_or_else(|| Arc::new(Pki::new()));
        let (server_cert, ca_path) = if self.example_certs {
            let dir = example_dir();
            let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
            let cert_pem = read("server.crt");
            let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .unwrap()
                .to_vec();
            let issued = Issued {
                cert_pem,
                key_pem: read("server.key"),
                cert_path: dir.join("server.crt"),
                key_path: dir.join("server.key"),
                der,
            };
            (Arc::new(issued), dir.join("ca.crt"))
        } else {
            let issued = if self.server_names.is_empty() {
                pki.server("apiserver", &[])
            } else {
                pki.server_named("apiserver", &self.server_names)
            };
            (Arc::new(issued), pki.ca_path.clone())
        };
        let ca_pem = std::fs::read_to_string(&ca_path).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if self.tls { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{}", addr.port());

        let acceptor = self.tls.then(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .allow_unauthenticated()
            .build()
            .unwrap();
            let certs = vec![rustls_pki_types::CertificateDer::from_pem_slice(
                server_cert.cert_pem.as_bytes(),
            )
            .unwrap()];
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(server_cert.key_pem.as_bytes())
                    .unwrap();
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .unwrap();
            cfg.alpn_protocols = if self.h2 {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            } else {
                vec![b"http/1.1".to_vec()]
            };
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });

        let recorded = Arc::new(Mutex::new(Vec::new()));
        let (watch_tx, _) = broadcast::channel(1024);
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        let (opened_tx, opened_rx) = mpsc::unbounded_channel();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (shutdown_tx, mut shutdown_rx) = oneshot::channel::<()>();
        let goaway = Arc::new(watch::channel(0u64).0);
        let (ended_tx, ended) = watch::channel(0usize);
        let state = Arc::new(State {
            goaway: goaway.clone(),
            ended: ended_tx,
            routes: self.routes,
            recorded: recorded.clone(),
            watch_tx: watch_tx.clone(),
            closed_tx,
            opened_tx,
        });
        let conns = connections.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = &mut shutdown_rx => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let state = state.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let session = &tls.get_ref().1;
                            let peer = TlsSeen {
                                peer_cert: session
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| c.to_vec()),
                                cipher_suite: session
                                    .negotiated_cipher_suite()
                                    .map(|s| format!("{:?}", s.suite())),
                            };
                            serve_conn(TokioIo::new(tls), state, peer).await;
                        }
                        None => serve_conn(TokioIo::new(tcp), state, TlsSeen::default()).await,
                    }
                });
            }
        });
        FakeApi {
            addr,
            url,
            pki,
            server_cert,
            ca_path,
            recorded,
            watch_tx,
            watch_closed: tokio::sync::Mutex::new(closed_rx),
            watch_opened: tokio::sync::Mutex::new(opened_rx),
            connections,
            goaway,
            ended,
            _shutdown: shutdown_tx,
        }
    }
}

struct State {
    goaway: Arc<watch::Sender<u64>>,
    ended: watch::Sender<usize>,
    routes: Vec<(String, Handler)>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    watch_tx: broadcast::Sender<Bytes>,
    closed_tx: mpsc::UnboundedSender<String>,
    opened_tx: mpsc::UnboundedSender<String>,
}

/// What the server learnt from a connection's TLS handshake.
#[derive(Clone, Default)]
struct TlsSeen {
    peer_cert: Option<Vec<u8>>,
    cipher_suite: Option<String>,
}

async fn serve_conn<I>(io: I, state: Arc<State>, peer: TlsSeen)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut goaway = state.goaway.subscribe();
    let ended = state.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(handle(req, state, peer).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(100);
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = goaway.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    ended.ended.send_modify(|n| *n += 1);
}

fn record(req: &Request<Incoming>, peer: TlsSeen) -> Recorded {
    Recorded {
        method: req.method().clone(),
        uri: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        version: req.version(),
        headers: req.headers().clone(),
        peer_cert: peer.peer_cert,
        cipher_suite: peer.cipher_suite,
        body_len: 0,
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>, peer: TlsSeen) -> Response<BoxBody> {
    let rec = record(&req, peer);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    for (prefix, h) in &state.routes {
        if path.starts_with(prefix.as_str()) {
            state.recorded.lock().unwrap().push(rec.clone());
            return h(req, rec).await;
        }
    }
    if query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
        || path.contains("/watch/")
    {
        state.recorded.lock().unwrap().push(rec.clone());
        return watch_response(&state, rec.uri.clone());
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        state.recorded.lock().unwrap().push(rec.clone());
        return bytes_response(n.parse().unwrap_or(0));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        state.recorded.lock().unwrap().push(rec);
        let code = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        return Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(full(format!(
                "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"code\":{}}}",
                code.as_u16()
            )))
            .unwrap();
    }
    if path == "/version" {
        state.recorded.lock().unwrap().push(rec);
        return Response::builder()
            .header("content-type", "application/json")
            .body(full(
                r#"{"major":"1","minor":"37","gitVersion":"v1.37.0-fake"}"#,
            ))
            .unwrap();
    }
    // Default: drain (count) the body and echo what was received.
    let mut rec = rec;
    let mut body = req.into_body();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    len += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    rec.body_len = len;
    state.recorded.lock().unwrap().push(rec.clone());
    // Without `Host`: HTTP/1.1 carries the authority there, HTTP/2 in `:authority`, and kproxy sends bulk
    // reads over HTTP/1.1 where kubectl uses HTTP/2; the echo should not differ for that alone.
    let headers: HashMap<String, Vec<String>> = rec
        .headers
        .keys()
        .filter(|k| *k != http::header::HOST)
        .map(|k| (k.as_str().to_owned(), rec.header_all(k.as_str())))
        .collect();
    let echo = serde_json::json!({
        "method": rec.method.as_str(),
        "uri": rec.uri,
        "version": format!("{:?}", rec.version),
        "headers": headers,
        "body_len": len,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(&echo).unwrap()))
        .unwrap()
}

/// Notifies `closed_tx` when dropped: the response body of a watch goes away when the client (kproxy)
/// cancels the request.
struct DropSignal(mpsc::UnboundedSender<String>, String);
impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(self.1.clone());
    }
}

fn watch_response(state: &State, uri: String) -> Response<BoxBody> {
    let mut rx = state.watch_tx.subscribe();
    let guard = DropSignal(state.closed_tx.clone(), uri.clone());
    let _ = state.opened_tx.send(uri);
    let stream = async_stream(
        move |tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>| async move {
            let _guard = guard;
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(b) if b.is_empty() => break, // an empty event ends every watch (server-side close)
                        Ok(b) => if tx.send(Ok(Frame::data(b))).await.is_err() { break },
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    },
                    _ = tx.closed() => break,
                }
            }
        },
    );
    Response::builder()
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(stream)
        .unwrap()
}

/// `n` bytes of a repeating pattern, in 64 KiB chunks, generated on the fly.
fn bytes_response(n: u64) -> Response<BoxBody> {
    let stream = async_stream(
        move |tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>| async move {
            // 64 KiB is not a multiple of 251: each chunk starts where the pattern left off.
            let chunk = Bytes::from(pattern(64 * 1024 + 251));
            let mut pos = 0u64;
            while pos < n {
                let take = (n - pos).min(64 * 1024) as usize;
                let off = (pos % 251) as usize;
                if tx
                    .send(Ok(Frame::data(chunk.slice(off..off + take))))
                    .await
                    .is_err()
                {
                    break;
                }
                pos += take as u64;
            }
        },
    );
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("content-length", n.to_string())
        .body(stream)
        .unwrap()
}

/// A rustls server configuration with a certificate for localhost/127.0.0.1 from `pki`, offering `alpn`.
pub fn tls_server_config(pki: &Pki, name: &str, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let issued = pki.server(name, &[]);
    let certs =
        vec![rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// The byte pattern used by `/bytes/N`: position modulo 251.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A body fed by a task writing into a channel; the task sees `tx.closed()` when the body is dropped.
pub fn async_stream<F, Fut>(f: F) -> BoxBody
where
    F: FnOnce(mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(f(tx));
    StreamBody::new(ReceiverStream(rx)).boxed_unsync()
}

struct ReceiverStream<T>(mpsc::Receiver<T>);
impl<T> futures_util::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

// ---------------------------------------------------------------------------------------------------
// Kubeconfigs

/// Writes a kubeconfig with one cluster/context/user. `user` is YAML for the `user:` mapping, indented
/// by the caller-neutral form `key: value` lines (they are indented here).
pub fn kubeconfig(
    dir: &Path,
    name: &str,
    server: &str,
    cluster_extra: &str,
    user: &str,
) -> PathBuf {
    let indent = |s: &str, n: usize| {
        s.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{}{l}\n", " ".repeat(n)))
            .collect::<String>()
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n{}contexts:\n- name: test\n  context:\n    cluster: test\n    user: test-user\n    namespace: default\ncurrent-context: test\nusers:\n- name: test-user\n  user:\n{}",
        indent(cluster_extra, 4),
        if user.trim().is_empty() { "    {}\n".to_owned() } else { indent(user, 4) },
    );
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A kubeconfig for `api` trusting its CA, with the given user YAML.
pub fn kubeconfig_for(api: &FakeApi, name: &str, user: &str) -> PathBuf {
    kubeconfig(
        api.pki.dir.path(),
        name,
        &api.url,
        &format!("certificate-authority: {}", api.ca_path.display()),
        user,
    )
}

// ---------------------------------------------------------------------------------------------------
// kproxy in process

/// kproxy running in this process on 127.0.0.1:0.
pub struct Kproxy {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the admin listener, when the configuration has one.
    pub admin: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), kproxy::StartupError>>>,
}

impl Kproxy {
    /// Starts kproxy with these flags (without the program name). The listen flags are replaced by
    /// `127.0.0.1:0`. `env` is the only environment kproxy sees.
    pub async fn start(args: &[&str], env: MapEnv) -> Result<Kproxy, kproxy::StartupError> {
        Kproxy::start_with(args, env, |_| {}).await
    }

    /// [`Kproxy::start`], letting `tweak` adjust the validated configuration first (refresh timings,
    /// poll intervals: the knobs tests shorten instead of waiting).
    pub async fn start_with(
        args: &[&str],
        env: MapEnv,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Kproxy, kproxy::StartupError> {
        let cli = Cli::try_parse_from(std::iter::once("kproxy").chain(args.iter().copied()))
            .map_err(|e| kproxy::StartupError::Usage(e.to_string()))?;
        let mut config = Config::from_cli(&cli, &env)?;
        config.listen = Listen::Tcp {
            address: "127.0.0.1".into(),
            port: 0,
        };
        tweak(&mut config);
        // Everything that reads credentials happens here, before this returns, as in main.rs: build
        // errors (bad keys) surface now, and a test may change files on disk right after.
        let app = App::build(config).await?;
        let addr = app.local_addr().unwrap();
        let admin = app
            .admin_addr()
            .map(|a| format!("http://127.0.0.1:{}", a.port()));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(async move {
                let _ = rx.await;
            })
            .await;
            Ok(())
        });
        Ok(Kproxy {
            addr,
            url: format!("http://127.0.0.1:{}", addr.port()),
            admin,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// [`Kproxy::start`] with the admin listener (`/healthz`, `/readyz`, `/metrics`) on 127.0.0.1:0,
    /// its URL in [`Kproxy::admin`].
    pub async fn with_admin(args: &[&str], env: MapEnv) -> Kproxy {
        Kproxy::start_with(args, env, |c| c.admin_address = Some("127.0.0.1:0".into()))
            .await
            .expect("kproxy failed to start")
    }

    /// Starts kproxy against `kubeconfig` plus extra flags, with an empty environment.
    pub async fn with_kubeconfig(kubeconfig: &Path, extra: &[&str]) -> Kproxy {
        let kc = format!("--kubeconfig={}", kubeconfig.display());
        let mut args = vec![kc.as_str()];
        args.extend_from_slice(extra);
        Kproxy::start(&args, MapEnv::default())
            .await
            .expect("kproxy failed to start")
    }

    /// Signals shutdown and waits for kproxy to finish draining; returns how long that took.
    pub async fn stop(mut self) -> Duration {
        let start = std::time::Instant::now();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("kproxy did not stop")
                .unwrap()
                .unwrap();
        }
        start.elapsed()
    }

    /// Signals shutdown without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server task to finish (after `signal_stop`).
    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("kproxy did not stop")
                .unwrap()
                .unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Clients

/// An HTTP/1.1 client (no pooling surprises: a fresh connection per request).
pub async fn send(req: Request<BoxBody>) -> Response<Incoming> {
    send_within(req, WAIT).await
}

/// [`send`], waiting up to `within` for the response head.
pub async fn send_within(req: Request<BoxBody>, within: Duration) -> Response<Incoming> {
    let uri = req.uri().clone();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let (mut parts, body) = req.into_parts();
    if !parts.headers.contains_key(http::header::HOST) {
        parts.headers.insert(
            http::header::HOST,
            format!("localhost:{}", uri.port_u16().unwrap())
                .parse()
                .unwrap(),
        );
    }
    parts.uri = uri.path_and_query().unwrap().as_str().parse().unwrap();
    tokio::time::timeout(
        within,
        sender.send_request(Request::from_parts(parts, body)),
    )
    .await
    .expect("request timed out")
    .unwrap()
}

/// GET `url` with Host `localhost` and return status, headers and the whole body.
pub async fn get(url: &str) -> (StatusCode, HeaderMap, Bytes) {
    let resp = send(Request::get(url).body(full(Bytes::new())).unwrap()).await;
    collect(resp).await
}

pub async fn collect(resp: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes();
    (parts.status, parts.headers, body)
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Asserts that `body` is a Kubernetes `Status` with `code` and returns its message.
pub fn assert_status(status: StatusCode, body: &[u8], code: u16) -> String {
    assert_eq!(
        status.as_u16(),
        code,
        "body: {}",
        String::from_utf8_lossy(body)
    );
    let v = json(body);
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["code"], code, "{v}");
    v["message"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------------
// The real binary

/// A `kproxy` process started with exactly `args` and `env` (nothing inherited).
pub struct KproxyProcess {
    pub child: Child,
    /// The startup line, e.g. `Starting to serve on 127.0.0.1:40485`.
    pub startup_line: String,
    stdout: BufReader<std::process::ChildStdout>,
}

pub fn kproxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kproxy")
}

/// The real kubectl (v1.32), the reference: `/usr/bin/kubectl` or `$KPROXY_TEST_KUBECTL`. Fails, saying
/// so, when it is not installed: CI has it.
pub fn kubectl_bin() -> std::path::PathBuf {
    let path = std::env::var_os("KPROXY_TEST_KUBECTL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/usr/bin/kubectl"));
    assert!(
        path.exists(),
        "kubectl not found at {}: this test needs the real kubectl (v1.32); install it or set KPROXY_TEST_KUBECTL",
        path.display()
    );
    path
}

/// Runs kproxy to completion (for startup failures) and returns (exit code, stdout, stderr).
pub fn run_kproxy(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(kproxy_bin());
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    // A start that unexpectedly succeeds would serve forever: bound it.
    let out = match rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("kproxy {args:?} did not exit");
        }
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl KproxyProcess {
    /// Starts the binary and waits for its startup line.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> KproxyProcess {
        let mut child = Command::new(kproxy_bin())
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "kproxy exited without a startup line");
        KproxyProcess {
            child,
            startup_line: line.trim_end().to_owned(),
            stdout,
        }
    }

    /// The port from the startup line.
    pub fn port(&self) -> u16 {
        self.startup_line
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// Sends a signal with `kill(1)` (the crate forbids unsafe code, so no libc call here).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit and returns the exit code and the elapsed time.
    pub fn wait(mut self, within: Duration) -> (i32, Duration) {
        let start = std::time::Instant::now();
        let pid = self.child.id();
        let mut child = self.child.take_for_wait();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(within) {
            Ok(status) => (status.unwrap().code().unwrap_or(-1), start.elapsed()),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!("kproxy did not exit within {within:?}");
            }
        }
    }
}

trait TakeForWait {
    fn take_for_wait(&mut self) -> Child;
}

impl TakeForWait for Child {
    /// Moves the child out, leaving a placeholder that `Drop` ignores (an already-reaped `true`).
    fn take_for_wait(&mut self) -> Child {
        let mut placeholder = Command::new("true").spawn().unwrap();
        let _ = placeholder.wait();
        std::mem::replace(self, placeholder)
    }
}

impl Drop for KproxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------------
// Helpers shared by the integration tests

/// `certs-example/` in this repository.
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-example")
}

impl FakeApi {
    /// The request that carried header `name: value` (tests tag requests to find them).
    pub fn find(&self, name: &str, value: &str) -> Option<Recorded> {
        self.recorded()
            .into_iter()
            .find(|r| r.header(name) == Some(value))
    }

    /// How many requests the fake has received.
    pub fn count(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }
}

/// Sends `method url` with `headers` and `body` on a fresh HTTP/1.1 connection (Host `localhost:PORT`
/// unless given) and returns the status, headers and whole body.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    collect(send(req.body(full(body)).unwrap()).await).await
}

/// A response read off the wire by [`raw`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    pub status: u16,
    /// Header names lowercased, in wire order.
    pub headers: Vec<(String, String)>,
    /// The body with chunked framing removed.
    pub body: Vec<u8>,
    /// Whether the body was chunked and ended with the terminating chunk.
    pub chunked_complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `request` bytes as they are to `addr`, reads until the server closes (bounded by [`WAIT`]),
/// and parses the first response. Requests should say `Connection: close` (or be HTTP/1.0).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    parse_response(&out)
}

/// Parses one HTTP/1.x response (and only the first of several, e.g. after `100 Continue` use
/// [`parse_response`] on the rest).
pub fn parse_response(bytes: &[u8]) -> RawResponse {
    let text_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..text_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &bytes[text_end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let (body, chunked_complete) = if chunked {
        dechunk(rest)
    } else {
        (rest.to_vec(), false)
    };
    RawResponse {
        status_line,
        status,
        headers,
        body,
        chunked_complete,
    }
}

/// Removes chunked framing; returns the data and whether the zero-size last chunk was seen.
pub fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size_line = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        rest = &rest[eol + 2..];
        if size == 0 {
            return (body, true);
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..rest.len().min(size)]);
            return (body, false);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Peak resident set size (`VmHWM`) of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("no VmHWM in /proc/PID/status")
}

/// Checks `data`, found at offset `pos` of a stream, against [`pattern`] without allocating per call.
pub fn matches_pattern(pos: u64, data: &[u8]) -> bool {
    static BUF: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    const SPAN: usize = 1 << 20;
    let buf = BUF.get_or_init(|| pattern(SPAN + 251));
    let mut pos = pos;
    data.chunks(SPAN).all(|piece| {
        let start = (pos % 251) as usize;
        pos += piece.len() as u64;
        piece == &buf[start..start + piece.len()]
    })
}

impl KproxyProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the rest of stdout after the startup line (until the process closes it).
    pub fn rest_of_stdout(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        let _ = self.stdout.read_to_string(&mut s);
        s
    }
}
