//! kproxy against the real `kubectl proxy` (v1.32 at /usr/bin/kubectl): both run side by side, with the
//! same flags, in front of the same fake API server, and answer the same table of raw requests. For each
//! request the test compares the status (and `Location`) the client got and what the API server received
//! (method, path and query, every header). Known, documented deviations (README "Deviations from kubectl
//! proxy") are asserted as such, so a change on either side shows up here.
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use http::Version;

use common::*;

const KUBECTL: &str = "/usr/bin/kubectl";

/// A running `kubectl proxy`.
struct KubectlProxy {
    child: Child,
    addr: SocketAddr,
    _home: tempfile::TempDir,
}

impl KubectlProxy {
    fn spawn(args: &[String]) -> KubectlProxy {
        assert!(
            Path::new(KUBECTL).exists(),
            "{KUBECTL} is missing: the compatibility test needs kubectl v1.32 as its reference \
             (install it, e.g. from the Kubernetes release binaries or the google-cloud-cli-kubectl package)"
        );
        let home = tempfile::tempdir().unwrap();
        let mut child = Command::new(KUBECTL)
            .arg("proxy")
            .args(args)
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run kubectl");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("Starting to serve on ")
            .unwrap_or_else(|| panic!("unexpected kubectl startup line {line:?} for {args:?}"))
            .parse()
            .unwrap();
        KubectlProxy {
            child,
            addr,
            _home: home,
        }
    }
}

impl Drop for KubectlProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kubectl proxy and kproxy (the real binary) started with the same flags.
struct Pair {
    kubectl: KubectlProxy,
    /// Kept to stop the process on drop.
    _kproxy: KproxyProcess,
    kproxy_addr: SocketAddr,
}

impl Pair {
    fn start(args: &[String]) -> Pair {
        let kubectl = KubectlProxy::spawn(&[&["--port=0".to_owned()], args].concat());
        let mut kargs = vec!["--port=0"];
        kargs.extend(args.iter().map(String::as_str));
        let kproxy = KproxyProcess::spawn(&kargs, &[]);
        let kproxy_addr = format!("127.0.0.1:{}", kproxy.port()).parse().unwrap();
        Pair {
            kubectl,
            _kproxy: kproxy,
            kproxy_addr,
        }
    }
}

/// What one proxy did with one request.
#[derive(Debug)]
struct Outcome {
    response: RawResponse,
    /// What the fake API server received, if anything.
    upstream: Option<Recorded>,
}

impl Outcome {
    fn status(&self) -> u16 {
        self.response.status
    }
    fn up(&self) -> &Recorded {
        self.upstream
            .as_ref()
            .unwrap_or_else(|| panic!("nothing reached the server: {:?}", self.response))
    }
    fn header(&self, name: &str) -> Vec<String> {
        self.up().header_all(name)
    }
}

/// Every header the server received, sorted, without the test's tag.
fn headers_of(rec: &Recorded) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = rec
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() != "x-case")
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Builds a raw request. `head` is the request line plus any headers, `\r\n`-separated, without the
/// final blank line; `{host}` becomes `localhost:PORT` of the proxy under test. A tag header finds the
/// request at the server; `User-Agent` and `Accept-Encoding` are sent unless `head` already has them or
/// the case is about their absence (`bare`), since their absence is a known deviation.
fn build(head: &str, tag: &str, port: u16, bare: bool, body: &str) -> Vec<u8> {
    let mut text = head.replace("{host}", &format!("localhost:{port}"));
    text.push_str("\r\n");
    let lower = text.to_ascii_lowercase();
    if !bare && !lower.contains("\r\nuser-agent:") {
        text.push_str("User-Agent: compat-test/1.0\r\n");
    }
    if !bare && !lower.contains("\r\naccept-encoding:") {
        text.push_str("Accept-Encoding: gzip\r\n");
    }
    if !lower.contains(" http/1.0\r\n") {
        text.push_str("Connection: close\r\n");
    }
    text.push_str(&format!("X-Case: {tag}\r\n"));
    if !body.is_empty() && !lower.contains("\r\ntransfer-encoding:") {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

async fn run_one(
    api: &FakeApi,
    addr: SocketAddr,
    head: &str,
    tag: &str,
    bare: bool,
    body: &str,
) -> Outcome {
    let response = raw(addr, &build(head, tag, addr.port(), bare, body)).await;
    Outcome {
        response,
        upstream: api.find("x-case", tag),
    }
}

/// Sends the same request through both proxies. The tags (`NAME/kc`, `NAME/kp`) have the same length,
/// so the echoed bodies, and their lengths, can be compared.
async fn both(
    pair: &Pair,
    api: &FakeApi,
    name: &str,
    head: &str,
    bare: bool,
    body: &str,
) -> (Outcome, Outcome) {
    let k = run_one(
        api,
        pair.kubectl.addr,
        head,
        &format!("{name}/kc"),
        bare,
        body,
    )
    .await;
    let p = run_one(
        api,
        pair.kproxy_addr,
        head,
        &format!("{name}/kp"),
        bare,
        body,
    )
    .await;
    (k, p)
}

/// Whether kproxy sends this request over HTTP/1.1 as a bulk read: its API path (after any server
/// path) is a LIST, a log or an OpenAPI document (`kproxy::internals::is_bulk_read`, table-tested in its
/// module).
fn is_bulk_read(rec: &Recorded) -> bool {
    let path = rec.uri.split('?').next().unwrap_or("");
    let api = path
        .find("/openapi")
        .or_else(|| path.find("/api"))
        .map_or(path, |i| &path[i..]);
    kproxy::internals::is_bulk_read(&rec.method, api)
}

/// Asserts both proxies behaved the same: status, `Location`, and (when the request got through) the
/// method, path, query, HTTP version and every header the server saw.
fn assert_same(name: &str, k: &Outcome, p: &Outcome) {
    assert_eq!(
        k.status(),
        p.status(),
        "{name}: kubectl {:?}\nkproxy {:?}",
        k.response,
        p.response
    );
    assert_eq!(
        k.response.header("location"),
        p.response.header("location"),
        "{name}: Location"
    );
    match (&k.upstream, &p.upstream) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            // What the client got back: the same headers (but the date) and the same body.
            let response_headers = |o: &Outcome| {
                let mut h: Vec<(String, String)> = o
                    .response
                    .headers
                    .iter()
                    .filter(|(n, _)| n != "date")
                    .cloned()
                    .collect();
                h.sort();
                h
            };
            assert_eq!(
                response_headers(k),
                response_headers(p),
                "{name}: response headers"
            );
            assert_eq!(a.method, b.method, "{name}: method");
            assert_eq!(a.uri, b.uri, "{name}: path and query");
            // kproxy sends bulk reads (LISTs, logs, OpenAPI) over HTTP/1.1, where kubectl uses HTTP/2
            // for everything (README, deviations); HTTP/1.1 then carries the authority in `Host`.
            let bulk = a.version == Version::HTTP_2 && is_bulk_read(a);
            if bulk {
                assert_eq!(
                    b.version,
                    Version::HTTP_11,
                    "{name}: a bulk read over HTTP/1.1"
                );
                assert!(
                    b.header("host")
                        .is_some_and(|h| h.starts_with("127.0.0.1:")),
                    "{name}: Host of the HTTP/1.1 request: {:?}",
                    b.header("host")
                );
            } else {
                assert_eq!(a.version, b.version, "{name}: HTTP version upstream");
            }
            // The server follows the client's order: both offer AES-128-GCM first.
            assert_eq!(a.cipher_suite, b.cipher_suite, "{name}: TLS cipher suite");
            assert_eq!(a.body_len, b.body_len, "{name}: body length");
            let without_host = |r: &Recorded| {
                let mut h = headers_of(r);
                h.retain(|(n, _)| !(bulk && n == "host"));
                h
            };
            assert_eq!(without_host(a), without_host(b), "{name}: upstream headers");
        }
        _ => panic!(
            "{name}: only one proxy reached the server: kubectl {:?} / kproxy {:?}",
            k.upstream.as_ref().map(|r| &r.uri),
            p.upstream.as_ref().map(|r| &r.uri)
        ),
    }
}

/// A table row expected to behave identically.
async fn same(pair: &Pair, api: &FakeApi, name: &str, head: &str, want_status: u16) {
    let (k, p) = both(pair, api, name, head, false, "").await;
    assert_same(name, &k, &p);
    assert_eq!(k.status(), want_status, "{name}: {:?}", k.response);
}

async fn same_with_body(pair: &Pair, api: &FakeApi, name: &str, head: &str, body: &str) {
    let (k, p) = both(pair, api, name, head, false, body).await;
    assert_same(name, &k, &p);
    assert_eq!(k.status(), 200, "{name}");
}

fn kubeconfig_arg(path: &Path) -> String {
    format!("--kubeconfig={}", path.display())
}

/// A fake API server over TLS (h2) plus a kubeconfig for it with a token and impersonation.
async fn fake_with_kubeconfig(server_path: &str) -> (FakeApi, PathBuf) {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig(
        api.pki.dir.path(),
        "kc.yaml",
        &format!("{}{server_path}", api.url),
        &format!("certificate-authority: {}", api.ca_path.display()),
        "token: kubeconfig-token\nas: jane\nas-uid: \"42\"\nas-groups: [g1]",
    );
    (api, kc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_flags_behave_like_kubectl_proxy() {
    let (api, kc) = fake_with_kubeconfig("").await;
    let pair = Pair::start(&[kubeconfig_arg(&kc)]);
    let p = &pair;
    let a = &api;

    // Paths, queries, methods, bodies.
    same(p, a, "query", "GET /api/v1/namespaces/default/pods?limit=500&labelSelector=a%3Db&x=%2F&y HTTP/1.1\r\nHost: {host}", 200).await;
    same(
        p,
        a,
        "empty-query",
        "GET /api/v1/pods? HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    same(
        p,
        a,
        "encoded-slash",
        "GET /api/v1/namespaces/a%2Fb/pods HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    same(p, a, "root", "GET / HTTP/1.1\r\nHost: {host}", 200).await;
    let (k, kp) = both(
        p,
        a,
        "method-foo",
        "FOO /api/v1/pods HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_same("method-foo", &k, &kp);
    same(
        p,
        a,
        "empty-post",
        "POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0",
        200,
    )
    .await;
    // No Content-Length and no body: Go sends `content-length: 0` for POST, PUT and PATCH only.
    same(
        p,
        a,
        "post-without-length",
        "POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    same(
        p,
        a,
        "method-delete",
        "DELETE /api/v1/namespaces/default/pods/p HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    same_with_body(p, a, "patch-body", "PATCH /api/v1/namespaces/default/pods/p HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/merge-patch+json", "{\"metadata\":{\"labels\":{\"a\":\"b\"}}}").await;
    same_with_body(p, a, "chunked-body", "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await;

    // The Host filter.
    for (name, host, status) in [
        ("host-localhost", "localhost", 200),
        ("host-localhost-port9", "localhost:9", 200),
        ("host-ipv4", "127.0.0.1:8001", 200),
        ("host-ipv6-no-port", "[::1]", 200),
        ("host-evil", "evil.com", 403),
        ("host-evil-port", "evil.com:8001", 403),
        ("host-uppercase", "LOCALHOST", 403),
        ("host-suffix", "127.0.0.1.evil.com", 403),
        ("host-prefix", "evillocalhost", 403),
    ] {
        same(
            p,
            a,
            name,
            &format!("GET /api/v1/pods HTTP/1.1\r\nHost: {host}"),
            status,
        )
        .await;
    }
    same(
        p,
        a,
        "absolute-form-good",
        "GET http://localhost/api/v1/pods HTTP/1.1\r\nHost: evil.com",
        200,
    )
    .await;
    same(
        p,
        a,
        "absolute-form-evil",
        "GET http://evil.com/api/v1/pods HTTP/1.1\r\nHost: localhost",
        403,
    )
    .await;
    same(p, a, "http10-no-host", "GET /api/v1/pods HTTP/1.0", 403).await;
    same(p, a, "http11-no-host", "GET /api/v1/pods HTTP/1.1", 400).await;
    same(
        p,
        a,
        "two-hosts",
        "GET /api/v1/pods HTTP/1.1\r\nHost: localhost\r\nHost: evil.com",
        400,
    )
    .await;
    same(
        p,
        a,
        "options-asterisk",
        "OPTIONS * HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    same(p, a, "get-asterisk", "GET * HTTP/1.1\r\nHost: {host}", 400).await;

    // Default reject-paths.
    same(
        p,
        a,
        "exec",
        "POST /api/v1/namespaces/d/pods/p/exec?command=sh HTTP/1.1\r\nHost: {host}",
        403,
    )
    .await;
    same(
        p,
        a,
        "attach",
        "POST /api/v1/namespaces/d/pods/p/attach HTTP/1.1\r\nHost: {host}",
        403,
    )
    .await;
    same(
        p,
        a,
        "exec-encoded",
        "POST /api/v1/namespaces/d/pods/p/%65xec HTTP/1.1\r\nHost: {host}",
        403,
    )
    .await;
    same(
        p,
        a,
        "execfoo",
        "GET /api/v1/namespaces/d/pods/p/execfoo HTTP/1.1\r\nHost: {host}",
        403,
    )
    .await;
    same(
        p,
        a,
        "portforward-plain",
        "GET /api/v1/namespaces/d/pods/p/portforward HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    same(
        p,
        a,
        "apis-exec-lookalike",
        "GET /apis/x.io/v1/namespaces/d/pods/p/exec HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;

    // Unclean paths are redirected before the filter.
    same(
        p,
        a,
        "double-slash",
        "GET //api/v1/namespaces/d/pods/p/exec HTTP/1.1\r\nHost: {host}",
        301,
    )
    .await;
    same(
        p,
        a,
        "dot-dot",
        "GET /api/v1/../v1/pods?x=1 HTTP/1.1\r\nHost: {host}",
        301,
    )
    .await;
    same(
        p,
        a,
        "dot",
        "GET /api/./v1/pods HTTP/1.1\r\nHost: {host}",
        301,
    )
    .await;

    // Header handling.
    same(p, a, "hop-by-hop", "GET /api/v1/pods HTTP/1.1\r\nHost: localhost\r\nConnection: X-Secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nCookie: a=b\r\nOrigin: http://localhost\r\nX-Custom: kept\r\nForwarded: for=1.2.3.4\r\nX-Forwarded-Proto: https", 200).await;
    same(
        p,
        a,
        "te-trailers",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nTE: trailers",
        200,
    )
    .await;
    same(
        p,
        a,
        "xff",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 10.0.0.1",
        200,
    )
    .await;
    same(p, a, "xff-two", "GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2", 200).await;
    same(
        p,
        a,
        "client-authorization",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer client-token",
        200,
    )
    .await;
    same(
        p,
        a,
        "empty-authorization",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nAuthorization: ",
        200,
    )
    .await;
    same(p, a, "client-impersonate-user", "GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nImpersonate-User: bob\r\nImpersonate-Group: bg", 200).await;
    same(
        p,
        a,
        "client-impersonate-group",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nImpersonate-Group: cg",
        200,
    )
    .await;
    same(
        p,
        a,
        "client-impersonate-uid",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nImpersonate-Uid: u1",
        200,
    )
    .await;
    same(
        p,
        a,
        "empty-impersonate-user",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nImpersonate-User: ",
        200,
    )
    .await;
    same(
        p,
        a,
        "accept-encoding-sent",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: gzip, deflate",
        200,
    )
    .await;

    // What the kubeconfig adds, checked once explicitly on top of the comparisons.
    let (k, _) = both(
        p,
        a,
        "explicit",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_eq!(k.header("authorization"), ["Bearer kubeconfig-token"]);
    assert_eq!(k.header("impersonate-user"), ["jane"]);
    assert_eq!(k.header("impersonate-group"), ["g1"]);
    assert_eq!(k.up().version, http::Version::HTTP_2);
    let ua = k.header("user-agent");
    assert_eq!(ua, ["compat-test/1.0"]);

    // ---- Known, documented deviations ----

    // [::1]:port is rejected by kubectl's own default (kubernetes/kubernetes#77496); kproxy accepts it.
    let (k, p2) = both(
        p,
        a,
        "host-ipv6-port",
        "GET /api/v1/pods HTTP/1.1\r\nHost: [::1]:8001",
        false,
        "",
    )
    .await;
    assert_eq!((k.status(), p2.status()), (403, 200));

    // A web page of another origin (issue 13): kubectl proxy serves it; kproxy refuses it unless
    // --allow-any-origin or --cors-allowed-origin says otherwise (tests/security.rs).
    for (name, extra) in [
        ("origin-other", "Origin: https://evil.example"),
        ("origin-cross-site", "Sec-Fetch-Site: cross-site"),
    ] {
        let head =
            format!("GET /api/v1/namespaces/default/secrets HTTP/1.1\r\nHost: {{host}}\r\n{extra}");
        let (k, p2) = both(p, a, name, &head, false, "").await;
        assert_eq!((k.status(), p2.status()), (200, 403), "{name}");
        assert!(
            p2.upstream.is_none(),
            "{name} reached the server through kproxy"
        );
    }

    // Errors kproxy answers itself are Status JSON; kubectl writes text/plain.
    let (k, p2) = both(
        p,
        a,
        "forbidden-body",
        "GET /api/v1/pods HTTP/1.1\r\nHost: evil.com",
        false,
        "",
    )
    .await;
    assert_eq!(k.response.body_str(), "Forbidden\n");
    assert_eq!(
        k.response.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(p2.response.header("content-type"), Some("application/json"));
    assert_eq!(json(&p2.response.body)["reason"], "Forbidden");

    // No User-Agent from the client: each fills in its own.
    // No Accept-Encoding from the client: kubectl asks for gzip and decompresses; kproxy passes the
    // client's choice through.
    let (k, p2) = both(
        p,
        a,
        "bare",
        "GET /api/v1/namespaces/default/pods/p HTTP/1.1\r\nHost: {host}",
        true,
        "",
    )
    .await;
    assert_eq!(k.status(), 200);
    assert_eq!(p2.status(), 200);
    assert!(
        k.header("user-agent")[0].starts_with("kubectl/v1.32"),
        "{:?}",
        k.header("user-agent")
    );
    assert_eq!(
        p2.header("user-agent"),
        [concat!("kproxy/", env!("CARGO_PKG_VERSION"))]
    );
    assert_eq!(k.header("accept-encoding"), ["gzip"]);
    assert!(p2.header("accept-encoding").is_empty());
    let strip = |r: &Recorded| {
        headers_of(r)
            .into_iter()
            .filter(|(n, _)| n != "user-agent" && n != "accept-encoding")
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(k.up()), strip(p2.up()), "otherwise the same headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_behave_like_kubectl_proxy() {
    let (api, kc) = fake_with_kubeconfig("").await;
    let p = &Pair::start(&[kubeconfig_arg(&kc), "--api-prefix=/custom/".to_owned()]);
    let a = &api;
    same(
        p,
        a,
        "stripped",
        "GET /custom/api/v1/pods?watch=false HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    same(
        p,
        a,
        "prefix-root",
        "GET /custom/ HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    same(
        p,
        a,
        "prefix-no-slash",
        "GET /custom?x=1 HTTP/1.1\r\nHost: {host}",
        301,
    )
    .await;
    same(
        p,
        a,
        "prefix-exec",
        "POST /custom/api/v1/namespaces/d/pods/p/exec HTTP/1.1\r\nHost: {host}",
        403,
    )
    .await;
    // Unknown routes: both 404 (kubectl text, kproxy Status JSON).
    let (k, kp) = both(
        p,
        a,
        "outside-prefix",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_same("outside-prefix", &k, &kp);
    assert_eq!(k.status(), 404);
    assert_eq!(k.response.body_str(), "404 page not found\n");
    assert_eq!(json(&kp.response.body)["reason"], "NotFound");
    // Deviation: kubectl decodes %2F when it strips a prefix; kproxy forwards the raw path.
    let (k, kp) = both(
        p,
        a,
        "prefix-encoded",
        "GET /custom/api/v1/namespaces/a%2Fb HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_eq!(k.up().uri, "/api/v1/namespaces/a/b");
    assert_eq!(kp.up().uri, "/api/v1/namespaces/a%2Fb");

    // A prefix starting with /api is not stripped (kubectl's quirk, kept).
    let p = &Pair::start(&[kubeconfig_arg(&kc), "--api-prefix=/api/".to_owned()]);
    same(
        p,
        a,
        "api-prefix-kept",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    same(
        p,
        a,
        "api-prefix-apis",
        "GET /apis/apps/v1 HTTP/1.1\r\nHost: {host}",
        404,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_filters_behave_like_kubectl_proxy() {
    let (api, kc) = fake_with_kubeconfig("").await;
    let p = &Pair::start(&[
        kubeconfig_arg(&kc),
        "--reject-methods=POST,PUT".to_owned(),
        "--accept-paths=^/api/v1/namespaces/default/,^/version".to_owned(),
        "--accept-hosts=^localhost$,example".to_owned(),
        "--reject-paths=secrets".to_owned(),
    ]);
    let a = &api;
    for (name, head, status) in [
        (
            "post",
            "POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: {host}",
            403,
        ),
        (
            "put",
            "PUT /api/v1/namespaces/default/pods/p HTTP/1.1\r\nHost: {host}",
            403,
        ),
        (
            "accepted-path",
            "GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: {host}",
            200,
        ),
        (
            "other-namespace",
            "GET /api/v1/namespaces/kube-system/pods HTTP/1.1\r\nHost: {host}",
            403,
        ),
        (
            "version-unanchored",
            "GET /versionz HTTP/1.1\r\nHost: {host}",
            200,
        ),
        (
            "secrets",
            "GET /api/v1/namespaces/default/secrets HTTP/1.1\r\nHost: {host}",
            403,
        ),
        (
            "exec-allowed-now",
            "GET /api/v1/namespaces/default/pods/p/exec HTTP/1.1\r\nHost: {host}",
            200,
        ),
        (
            "host-unanchored",
            "GET /version HTTP/1.1\r\nHost: www.example.org:1",
            200,
        ),
        (
            "host-localhost",
            "GET /version HTTP/1.1\r\nHost: localhost",
            200,
        ),
        ("host-127", "GET /version HTTP/1.1\r\nHost: 127.0.0.1", 403),
    ] {
        same(p, a, name, head, status).await;
    }
    let (k, kp) = both(
        p,
        a,
        "lowercase-post",
        "post /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_same("lowercase-post", &k, &kp);
    assert_eq!(k.up().method.as_str(), "post");
    let p = &Pair::start(&[kubeconfig_arg(&kc), "--accept-hosts=".to_owned()]);
    same(
        p,
        a,
        "empty-accept-hosts",
        "GET /version HTTP/1.1\r\nHost: localhost",
        403,
    )
    .await;
    let p = &Pair::start(&[kubeconfig_arg(&kc), "--reject-paths=".to_owned()]);
    same(
        p,
        a,
        "empty-reject-paths",
        "POST /api/v1/namespaces/d/pods/p/exec HTTP/1.1\r\nHost: localhost",
        200,
    )
    .await;
    let p = &Pair::start(&[kubeconfig_arg(&kc), "--disable-filter=true".to_owned()]);
    same(
        p,
        a,
        "disable-filter",
        "POST /api/v1/namespaces/d/pods/p/exec HTTP/1.1\r\nHost: evil.com",
        200,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_behave_like_kubectl_proxy() {
    let (api, kc) = fake_with_kubeconfig("").await;
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(www.path().join("app.js"), "console.log(1)").unwrap();
    let p = &Pair::start(&[
        kubeconfig_arg(&kc),
        format!("--www={}", www.path().display()),
        "--www-prefix=/ui/".to_owned(),
    ]);
    let a = &api;
    for (name, head, status) in [
        ("file", "GET /ui/app.js HTTP/1.1\r\nHost: {host}", 200),
        ("dir-index", "GET /ui/ HTTP/1.1\r\nHost: {host}", 200),
        (
            "evil-host-file",
            "GET /ui/app.js HTTP/1.1\r\nHost: evil.com",
            200,
        ),
        ("prefix-no-slash", "GET /ui HTTP/1.1\r\nHost: {host}", 301),
        (
            "missing",
            "GET /ui/missing.js HTTP/1.1\r\nHost: {host}",
            404,
        ),
        (
            "traversal",
            "GET /ui/../secret HTTP/1.1\r\nHost: {host}",
            301,
        ),
        (
            "api-beside-files",
            "GET /api/v1/pods HTTP/1.1\r\nHost: {host}",
            200,
        ),
    ] {
        let (k, kp) = both(p, a, name, head, false, "").await;
        assert_same(name, &k, &kp);
        assert_eq!(k.status(), status, "{name}: {:?}", k.response);
        if k.upstream.is_none() && status != 301 {
            assert_eq!(k.response.body, kp.response.body, "{name}: body");
        }
    }
    // Deviation: encoded dot-segments. Go 1.22+'s ServeMux matches the escaped path, so kubectl lets
    // `%2e%2e` through to the file server, which cleans it inside the directory (404 here); kproxy
    // decodes first and redirects to the clean path, as for literal `..`. Neither escapes the directory.
    let (k, kp) = both(
        p,
        a,
        "encoded-traversal",
        "GET /ui/%2e%2e/secret HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_eq!((k.status(), kp.status()), (404, 301));
    assert_eq!(kp.response.header("location"), Some("/secret"));
    // Deviation: Go's FileServer answers any method with the file; ServeDir only GET and HEAD.
    let (k, kp) = both(
        p,
        a,
        "post-file",
        "POST /ui/app.js HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_eq!((k.status(), kp.status()), (200, 405));
    assert_eq!(k.response.body_str(), "console.log(1)");
    // Deviation: Go's FileServer redirects .../index.html to ./; ServeDir serves it.
    let (k, kp) = both(
        p,
        a,
        "index-html",
        "GET /ui/index.html HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_eq!((k.status(), kp.status()), (301, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_paths_and_http_servers_behave_like_kubectl_proxy() {
    let (api, kc) = fake_with_kubeconfig("/k8s/clusters/c-1").await;
    let a = &api;
    let p = &Pair::start(&[kubeconfig_arg(&kc), "--append-server-path".to_owned()]);
    same(
        p,
        a,
        "append-server-path",
        "GET /api/v1/pods?limit=1 HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    assert_eq!(
        api.find("x-case", "append-server-path/kp").unwrap().uri,
        "/k8s/clusters/c-1/api/v1/pods?limit=1"
    );
    let p = &Pair::start(&[kubeconfig_arg(&kc)]);
    same(
        p,
        a,
        "server-path-dropped",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}",
        200,
    )
    .await;
    assert_eq!(
        api.find("x-case", "server-path-dropped/kp").unwrap().uri,
        "/api/v1/pods"
    );

    // Credentials and impersonation only go to https:// servers.
    let plain = FakeApi::builder().http().start().await;
    let p = &Pair::start(&[
        format!("--server={}", plain.url),
        "--token=flag-token".to_owned(),
        "--as=jane".to_owned(),
        "--as-group=g".to_owned(),
    ]);
    let (k, kp) = both(
        p,
        &plain,
        "http-server",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_same("http-server", &k, &kp);
    assert!(k.header("authorization").is_empty());
    assert_eq!(
        k.header("impersonate-user"),
        ["jane"],
        "impersonation is no credential"
    );
    assert_eq!(k.up().version, http::Version::HTTP_11);
    // The same from the kubeconfig.
    let kc = kubeconfig(
        plain.pki.dir.path(),
        "plain.yaml",
        &plain.url,
        "",
        "token: t\nas: jane\nas-groups: [g1]",
    );
    let p = &Pair::start(&[kubeconfig_arg(&kc)]);
    let (k, kp) = both(
        p,
        &plain,
        "http-server-kubeconfig",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_same("http-server-kubeconfig", &k, &kp);
    assert!(k.header("authorization").is_empty());
    assert_eq!(k.header("impersonate-group"), ["g1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_documented_deviations() {
    // Nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = format!("https://127.0.0.1:{port}");
    let api = FakeApi::builder().start().await;
    let p = &Pair::start(&[
        format!("--server={down}"),
        "--insecure-skip-tls-verify".to_owned(),
        // Without any credential kubectl prompts for a username on an https server.
        "--token=t".to_owned(),
    ]);
    let (k, kp) = both(
        p,
        &api,
        "refused",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_eq!(k.status(), 500);
    assert!(
        k.response.body_str().contains("connection refused"),
        "{:?}",
        k.response
    );
    let msg = assert_status(
        http::StatusCode::from_u16(kp.status()).unwrap(),
        &kp.response.body,
        503,
    );
    assert!(msg.contains(&down), "{msg}");

    // A server certificate the kubeconfig does not trust.
    let other = Pki::new();
    let p = &Pair::start(&[
        format!("--server={}", api.url),
        format!("--certificate-authority={}", other.ca_path.display()),
        "--token=t".to_owned(),
    ]);
    let (k, kp) = both(
        p,
        &api,
        "untrusted",
        "GET /api/v1/pods HTTP/1.1\r\nHost: {host}",
        false,
        "",
    )
    .await;
    assert_eq!(k.status(), 500);
    assert!(
        k.response.body_str().contains("certificate"),
        "{:?}",
        k.response
    );
    assert_status(
        http::StatusCode::from_u16(kp.status()).unwrap(),
        &kp.response.body,
        502,
    );
    assert_eq!(api.count(), 0);
}
