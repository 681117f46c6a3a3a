//! Test bed for credential refresh and upstream proxies, on top of `common`: kproxy started in process
//! with shortened refresh timings (set on `Config`, never waited for), a scriptable fake exec plugin, an
//! HTTP CONNECT proxy (plain or TLS), a SOCKS5 proxy and a fake OIDC issuer.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kproxy::env::MapEnv;
use kproxy::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::Pki;

/// The host name tests give the API server when it must not look like loopback (so environment
/// proxies apply). Both fake proxies resolve it to 127.0.0.1; the system resolver does not know it.
pub const REMOTE_HOST: &str = "kubernetes.test";

// ---------------------------------------------------------------------------------------------------
// kproxy in process, with a hook on the validated Config

/// kproxy running in this process (the common test bed's handle).
pub type Running = crate::common::Kproxy;

/// Starts kproxy with `args` and `env`, letting `tweak` adjust the validated configuration first (the
/// refresh timings are set this way).
pub async fn start_with(
    args: &[&str],
    env: MapEnv,
    tweak: impl FnOnce(&mut Config),
) -> Result<Running, kproxy::StartupError> {
    Running::start_with(args, env, tweak).await
}

/// [`start_with`] for a kubeconfig and an environment.
pub async fn start_kc(kc: &Path, env: MapEnv, tweak: impl FnOnce(&mut Config)) -> Running {
    let arg = format!("--kubeconfig={}", kc.display());
    start_with(&[arg.as_str()], env, tweak)
        .await
        .expect("kproxy failed to start")
}

/// An environment with a usable PATH for plugin scripts.
pub fn env_with_path(extra: &[(&str, &str)]) -> MapEnv {
    let mut env = MapEnv::new(extra.iter().copied());
    env.set("PATH", "/usr/local/bin:/usr/bin:/bin");
    env
}

// ---------------------------------------------------------------------------------------------------
// A scriptable exec plugin

/// A fake exec plugin: a bash script in its own directory. Each run appends to `count`, saves
/// `KUBERNETES_EXEC_INFO` and its environment as `info-N` / `env-N`, sleeps for the number of seconds
/// in `sleep` if present, copies `stderr` to its stderr, prints `out-N` (else `out`) and exits with the
/// code in `exit` (else 0). Tests write those files to script it.
pub struct Plugin {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

const PLUGIN: &str = r#"#!/bin/bash
d="$PLUGIN_DIR"
echo run >> "$d/count"
mapfile -t runs < "$d/count"
n=${#runs[@]}
printf '%s' "$KUBERNETES_EXEC_INFO" > "$d/info-$n"
env > "$d/env-$n"
if [ -f "$d/sleep" ]; then exec_sleep="$(<"$d/sleep")"; sleep "$exec_sleep"; fi
if [ -f "$d/stderr" ]; then printf '%s\n' "$(<"$d/stderr")" >&2; fi
f="$d/out-$n"
[ -f "$f" ] || f="$d/out"
[ -f "$f" ] && printf '%s\n' "$(<"$f")"
code=0
[ -f "$d/exit" ] && code="$(<"$d/exit")"
exit "$code"
"#;

impl Plugin {
    pub fn new() -> Plugin {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.sh");
        std::fs::write(&path, PLUGIN).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Plugin { dir, path }
    }

    /// How many times the plugin ran.
    pub fn runs(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("count"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    pub fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.dir.path().join(name), contents).unwrap();
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap()
    }

    /// The `user:` YAML running this plugin with `api_version`, plus `extra` exec fields.
    pub fn user_yaml(&self, api_version: &str, extra: &str) -> String {
        let mut y = format!(
            "exec:\n  apiVersion: {api_version}\n  command: {}\n  env:\n  - name: PLUGIN_DIR\n    value: {}\n",
            self.path.display(),
            self.dir.path().display()
        );
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            y.push_str("  ");
            y.push_str(line);
            y.push('\n');
        }
        y
    }
}

/// An `ExecCredential` with a token and an optional expiry (RFC 3339).
pub fn token_credential(api_version: &str, token: &str, expiry: Option<&str>) -> String {
    let mut status = serde_json::json!({ "token": token });
    if let Some(e) = expiry {
        status["expirationTimestamp"] = e.into();
    }
    serde_json::json!({"kind": "ExecCredential", "apiVersion": api_version, "status": status})
        .to_string()
}

pub const V1: &str = "client.authentication.k8s.io/v1";
pub const V1BETA1: &str = "client.authentication.k8s.io/v1beta1";
pub const PAST: &str = "2000-01-01T00:00:00Z";
pub const FUTURE: &str = "2100-01-01T00:00:00Z";

// ---------------------------------------------------------------------------------------------------
// Proxies

/// What a fake proxy saw of one tunnel.
#[derive(Debug, Clone)]
pub struct Tunnelled {
    /// `host:port` asked for.
    pub target: String,
    /// `Proxy-Authorization` (CONNECT) or `user:pass` (SOCKS5).
    pub auth: Option<String>,
}

/// A fake HTTP CONNECT or SOCKS5 proxy on 127.0.0.1.
pub struct FakeProxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Tunnelled>>>,
}

impl FakeProxy {
    pub fn seen(&self) -> Vec<Tunnelled> {
        self.seen.lock().unwrap().clone()
    }

    /// An HTTP CONNECT proxy; with `tls`, clients reach it over TLS with a certificate from `tls`.
    pub async fn connect(tls: Option<&Pki>) -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tls.map(|pki| tokio_rustls::TlsAcceptor::from(server_config(pki, "proxy")));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = log.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                serve_connect(tls, log).await;
                            }
                        }
                        None => serve_connect(tcp, log).await,
                    }
                });
            }
        });
        FakeProxy { addr, seen }
    }

    /// A SOCKS5 proxy (no auth, or user/password when the client offers it).
    pub async fn socks5() -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = serve_socks5(tcp, log).await;
                });
            }
        });
        FakeProxy { addr, seen }
    }
}

/// Connects to `host:port`, resolving [`REMOTE_HOST`] to 127.0.0.1.
async fn dial(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let host = if host == REMOTE_HOST {
        "127.0.0.1"
    } else {
        host
    };
    TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await
}

async fn serve_connect<S>(mut client: S, log: Arc<Mutex<Vec<Tunnelled>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let auth = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_owned());
    log.lock().unwrap().push(Tunnelled {
        target: target.to_owned(),
        auth,
    });
    if method != "CONNECT" {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await;
        return;
    }
    let (host, port) = target.rsplit_once(':').unwrap_or((target, "443"));
    let Ok(mut upstream) = dial(host, port.parse().unwrap_or(443)).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

async fn serve_socks5(mut c: TcpStream, log: Arc<Mutex<Vec<Tunnelled>>>) -> std::io::Result<()> {
    let mut hdr = [0u8; 2];
    c.read_exact(&mut hdr).await?;
    let mut methods = vec![0u8; hdr[1] as usize];
    c.read_exact(&mut methods).await?;
    let mut auth = None;
    if methods.contains(&2) {
        c.write_all(&[5, 2]).await?;
        let ver = c.read_u8().await?;
        assert_eq!(ver, 1);
        let ulen = c.read_u8().await? as usize;
        let mut user = vec![0u8; ulen];
        c.read_exact(&mut user).await?;
        let plen = c.read_u8().await? as usize;
        let mut pass = vec![0u8; plen];
        c.read_exact(&mut pass).await?;
        auth = Some(format!(
            "{}:{}",
            String::from_utf8_lossy(&user),
            String::from_utf8_lossy(&pass)
        ));
        c.write_all(&[1, 0]).await?;
    } else {
        c.write_all(&[5, 0]).await?;
    }
    let mut req = [0u8; 4];
    c.read_exact(&mut req).await?;
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            c.read_exact(&mut a).await?;
            std::net::Ipv4Addr::from(a).to_string()
        }
        3 => {
            let len = c.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            c.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        4 => {
            let mut a = [0u8; 16];
            c.read_exact(&mut a).await?;
            format!("[{}]", std::net::Ipv6Addr::from(a))
        }
        _ => return Ok(()),
    };
    let port = c.read_u16().await?;
    log.lock().unwrap().push(Tunnelled {
        target: format!("{host}:{port}"),
        auth,
    });
    let mut upstream = dial(&host, port).await?;
    c.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut c, &mut upstream).await?;
    Ok(())
}

/// A rustls server configuration with a certificate for localhost/127.0.0.1 from `pki`, HTTP/1.1.
pub fn server_config(pki: &Pki, name: &str) -> Arc<rustls::ServerConfig> {
    crate::common::tls_server_config(pki, name, &[b"http/1.1"])
}

// ---------------------------------------------------------------------------------------------------
// A fake OIDC issuer

/// One request the issuer's token endpoint received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub authorization: Option<String>,
    pub form: HashMap<String, String>,
}

/// An HTTPS OIDC issuer on 127.0.0.1 with discovery and a token endpoint whose answer tests set.
pub struct FakeIssuer {
    pub url: String,
    pub discoveries: Arc<Mutex<usize>>,
    pub token_requests: Arc<Mutex<Vec<TokenRequest>>>,
    /// Status and JSON body the token endpoint answers.
    pub answer: Arc<Mutex<(u16, String)>>,
}

impl FakeIssuer {
    pub async fn start(pki: &Pki) -> FakeIssuer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(pki, "issuer"));
        let discoveries = Arc::new(Mutex::new(0));
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new((500, "{}".to_owned())));
        let (d, t, a, base) = (
            discoveries.clone(),
            token_requests.clone(),
            answer.clone(),
            url.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let (d, t, a, base) = (d.clone(), t.clone(), a.clone(), base.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (d, t, a, base) = (d.clone(), t.clone(), a.clone(), base.clone());
                    async move { Ok::<_, Infallible>(issuer_handle(req, d, t, a, base).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FakeIssuer {
            url,
            discoveries,
            token_requests,
            answer,
        }
    }

    pub fn answer(&self, status: u16, body: serde_json::Value) {
        *self.answer.lock().unwrap() = (status, body.to_string());
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token_requests.lock().unwrap().clone()
    }
}

async fn issuer_handle(
    req: Request<Incoming>,
    discoveries: Arc<Mutex<usize>>,
    tokens: Arc<Mutex<Vec<TokenRequest>>>,
    answer: Arc<Mutex<(u16, String)>>,
    base: String,
) -> Response<Full<Bytes>> {
    let json = |status: u16, body: String| {
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    match req.uri().path() {
        "/.well-known/openid-configuration" => {
            *discoveries.lock().unwrap() += 1;
            json(
                200,
                serde_json::json!({"issuer": base, "token_endpoint": format!("{base}/token")})
                    .to_string(),
            )
        }
        "/token" => {
            let authorization = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form = String::from_utf8_lossy(&body)
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| {
                    (
                        k.to_owned(),
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8_lossy()
                            .into_owned(),
                    )
                })
                .collect();
            tokens.lock().unwrap().push(TokenRequest {
                authorization,
                form,
            });
            let (status, body) = answer.lock().unwrap().clone();
            json(status, body)
        }
        _ => json(404, "{}".into()),
    }
}

/// An unsigned JWT whose `exp` is `secs_from_now` seconds away.
pub fn jwt(secs_from_now: i64, marker: &str) -> String {
    use base64::Engine as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.sig",
        b(r#"{"alg":"RS256"}"#),
        b(&format!(
            r#"{{"exp":{},"sub":"{marker}"}}"#,
            now + secs_from_now
        ))
    )
}
