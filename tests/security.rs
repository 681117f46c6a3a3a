//! Issue 13: who may use the proxy. The browser Origin check (on by default) and `--allow-any-origin`,
//! opt-in CORS (`--cors-allowed-origin`), the inbound token (`--auth-token-file`, header and WebSocket
//! subprotocol), the unix socket's peer uid (`--allow-uid`), `--read-only`, and the refusal metrics.
//! Everything is observed from outside: the answer a client gets and what the fake API server received.
mod common;

use std::time::Duration;

use base64::Engine as _;
use common::streams::{raw_upgrade, ws_headers};
use common::*;
use http::{HeaderMap, StatusCode};
use kproxy::env::MapEnv;

async fn proxy(api: &FakeApi, extra: &[&str]) -> Kproxy {
    let kc = kubeconfig_for(api, "kc.yaml", "token: kubeconfig-token");
    Kproxy::with_kubeconfig(&kc, extra).await
}

/// The answer to one request, and whether it reached the API server.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
    reached: bool,
}

impl Answer {
    /// Asserts a `Status` with `code` that kproxy answered itself, and returns its message.
    fn refused(&self, code: u16) -> String {
        assert!(!self.reached, "a refused request reached the API server");
        assert_eq!(self.headers["content-type"], "application/json");
        assert_status(self.status, &self.body, code)
    }
}

async fn send_to(
    kp: &Kproxy,
    api: &FakeApi,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let before = api.count();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", kp.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send(req.body(full(body.to_owned())).unwrap()).await;
    // The fake server streams watches until the client goes: the head is what matters.
    let (status, headers, body) = if path.contains("watch") && resp.status() == 200 {
        let (parts, _) = resp.into_parts();
        (parts.status, parts.headers, bytes::Bytes::new())
    } else {
        collect(resp).await
    };
    let reached = api.count() > before;
    Answer {
        status,
        headers,
        body,
        reached,
    }
}

#[tokio::test]
async fn browser_requests_from_other_origins_are_refused_by_default() {
    let api = FakeApi::builder().start().await;
    let kp = proxy(&api, &[]).await;
    let port = kp.addr.port();
    let own_localhost = format!("http://localhost:{port}");
    let own_ip = format!("http://127.0.0.1:{port}");
    let ip_host = format!("127.0.0.1:{port}");
    let other_port = format!("http://localhost:{}", port.wrapping_add(1));
    let upper = format!("http://LOCALHOST:{port}");
    let https_own = format!("https://localhost:{port}");

    // Not a browser: no Origin, no Sec-Fetch-Site.
    let a = send_to(&kp, &api, "GET", "/api/v1/pods", &[], "").await;
    assert!(a.reached && a.status == 200);
    // kproxy's own origin (the Host the request was sent to), as a page served by --www sends it, and
    // as the Python client's WebSocket sends it (`Origin: http://127.0.0.1:PORT`).
    for (origin, host) in [
        (own_localhost.as_str(), None),
        (own_ip.as_str(), Some(ip_host.as_str())),
        (upper.as_str(), None),
    ] {
        let mut headers = vec![("origin", origin), ("sec-fetch-site", "same-origin")];
        if let Some(h) = host {
            headers.push(("host", h));
        }
        let a = send_to(
            &kp,
            &api,
            "POST",
            "/api/v1/namespaces/d/pods",
            &headers,
            "{}",
        )
        .await;
        assert!(a.reached && a.status == 200, "{origin}");
        assert_eq!(api.last().header("origin"), Some(origin), "Origin goes on");
    }
    // Any other origin, whatever the method.
    for (method, origin) in [
        ("GET", "https://evil.example"),
        ("POST", "https://evil.example"),
        ("DELETE", other_port.as_str()),
        ("GET", "null"),
        ("GET", https_own.as_str()),
        ("GET", own_ip.as_str()), // reached as localhost: another origin
    ] {
        let a = send_to(
            &kp,
            &api,
            method,
            "/api/v1/secrets",
            &[("origin", origin)],
            "",
        )
        .await;
        let msg = a.refused(403);
        assert_eq!(json(&a.body)["reason"], "Forbidden");
        assert!(
            msg.contains(&format!("{origin:?}"))
                && msg.contains(&format!("--cors-allowed-origin={origin}"))
                && msg.contains("--allow-any-origin")
                && msg.contains(&own_localhost),
            "the message names the origin, kproxy's own and both ways to allow it: {msg}"
        );
    }
    // A page chooses its Origin text: a huge one is not echoed whole.
    let huge = format!("http://{}", "a".repeat(20_000));
    let a = send_to(
        &kp,
        &api,
        "GET",
        "/api/v1/pods",
        &[("origin", huge.as_str())],
        "",
    )
    .await;
    let msg = a.refused(403);
    assert!(msg.len() < 1_000, "{} bytes", msg.len());
    kp.stop().await;
}

#[tokio::test]
async fn cross_site_fetch_metadata_is_refused() {
    let api = FakeApi::builder().start().await;
    let kp = proxy(&api, &[]).await;
    let own = format!("http://localhost:{}", kp.addr.port());
    // A cross-site request without Origin (a no-cors subresource, a link from another site).
    let a = send_to(
        &kp,
        &api,
        "GET",
        "/api/v1/secrets",
        &[("sec-fetch-site", "cross-site")],
        "",
    )
    .await;
    let msg = a.refused(403);
    assert!(
        msg.contains("Sec-Fetch-Site: cross-site") && msg.contains("--allow-any-origin"),
        "{msg}"
    );
    let a = send_to(
        &kp,
        &api,
        "GET",
        "/api/v1/secrets",
        &[("sec-fetch-site", "Cross-Site")],
        "",
    )
    .await;
    a.refused(403);
    // Even with kproxy's own Origin, cross-site is not same-origin.
    let a = send_to(
        &kp,
        &api,
        "GET",
        "/api/v1/secrets",
        &[("origin", own.as_str()), ("sec-fetch-site", "cross-site")],
        "",
    )
    .await;
    let msg = a.refused(403);
    assert!(msg.contains("Sec-Fetch-Site: cross-site"), "{msg}");
    // The user typing the URL (`none`), same-origin and same-site requests without Origin pass.
    for site in ["none", "same-origin", "same-site"] {
        let a = send_to(
            &kp,
            &api,
            "GET",
            "/api/v1/secrets",
            &[("sec-fetch-site", site)],
            "",
        )
        .await;
        assert!(a.reached && a.status == 200, "{site}");
    }
    kp.stop().await;
}

#[tokio::test]
async fn websocket_upgrades_and_static_files_are_origin_checked_too() {
    let api = FakeApi::builder().start().await;
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "<h1>ui</h1>").unwrap();
    let www_flag = format!("--www={}", www.path().display());
    let kp = proxy(&api, &[&www_flag]).await;
    let port = kp.addr.port();

    // The issue's attack: a page on any site opening a watch on Secrets over a WebSocket.
    let before = api.count();
    let mut headers = ws_headers("v4.channel.k8s.io");
    headers.push(("Origin", "https://evil.example"));
    let (head, _s) = raw_upgrade(
        kp.addr,
        "/api/v1/namespaces/default/secrets?watch=true",
        &headers,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(api.count(), before, "the upgrade reached the API server");

    // The same upgrade from kproxy's own origin goes through to the server.
    let own = format!("http://localhost:{port}");
    let mut headers = ws_headers("v4.channel.k8s.io");
    headers.push(("Origin", &own));
    let (_head, _s) = raw_upgrade(
        kp.addr,
        "/api/v1/namespaces/default/secrets?watch=true",
        &headers,
    )
    .await;
    let rec = api.last();
    assert_eq!(rec.header("upgrade"), Some("websocket"));
    assert_eq!(rec.header("origin"), Some(own.as_str()));

    // Static files: served to kproxy's own pages and to non-browsers, not to other origins.
    let a = send_to(&kp, &api, "GET", "/static/", &[("origin", &own)], "").await;
    assert_eq!(
        (a.status, &a.body[..]),
        (StatusCode::OK, &b"<h1>ui</h1>"[..])
    );
    let a = send_to(&kp, &api, "GET", "/static/", &[], "").await;
    assert_eq!(a.status, 200);
    let a = send_to(
        &kp,
        &api,
        "GET",
        "/static/",
        &[("origin", "https://evil.example")],
        "",
    )
    .await;
    a.refused(403);
    kp.stop().await;
}

/// The API server's own CORS answer, which kproxy must never pass on to a browser.
fn server_with_its_own_cors() -> FakeApiBuilder {
    FakeApi::builder().route("/api/v1/namespaces", |req, _| async move {
        let origin = req
            .headers()
            .get("origin")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| "*".into());
        http::Response::builder()
            .header("content-type", "application/json")
            .header("access-control-allow-origin", origin)
            .header("access-control-allow-credentials", "true")
            .header("access-control-expose-headers", "Date")
            .header("vary", "Accept-Encoding")
            .body(full(r#"{"kind":"NamespaceList","items":[]}"#))
            .unwrap()
    })
}

#[tokio::test]
async fn allow_any_origin_restores_kubectl_behaviour() {
    let api = server_with_its_own_cors().start().await;
    let kp = proxy(&api, &["--allow-any-origin"]).await;
    for headers in [
        vec![("origin", "https://evil.example")],
        vec![("sec-fetch-site", "cross-site")],
    ] {
        let a = send_to(&kp, &api, "GET", "/api/v1/pods", &headers, "").await;
        assert!(a.reached && a.status == 200, "{headers:?}");
    }
    // The API server's CORS headers never reach a page, even then...
    let a = send_to(
        &kp,
        &api,
        "GET",
        "/api/v1/namespaces",
        &[("origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(
        a.headers
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")),
        "{:?}",
        a.headers
    );
    // ...but requests without Origin get the server's headers untouched.
    let a = send_to(&kp, &api, "GET", "/api/v1/namespaces", &[], "").await;
    assert_eq!(a.headers["access-control-allow-origin"], "*");
    assert_eq!(a.headers["access-control-allow-credentials"], "true");
    kp.stop().await;
}

#[tokio::test]
async fn cors_allowed_origins_get_preflights_and_their_own_headers() {
    let api = server_with_its_own_cors().start().await;
    let kp = proxy(
        &api,
        &[
            "--cors-allowed-origin=http://ui.example:3000",
            "--cors-allowed-origin=HTTPS://Other.Example:443",
            "--read-only",
        ],
    )
    .await;
    let ui = "http://ui.example:3000";

    // The preflight is kproxy's to answer.
    let a = send_to(
        &kp,
        &api,
        "OPTIONS",
        "/api/v1/namespaces/default/configmaps",
        &[
            ("origin", ui),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, authorization",
            ),
        ],
        "",
    )
    .await;
    assert!(!a.reached, "the preflight reached the API server");
    assert_eq!(a.status, 204);
    assert_eq!(a.headers["access-control-allow-origin"], ui);
    assert!(a.headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(
        a.headers["access-control-allow-headers"],
        "content-type, authorization"
    );
    assert!(a.headers.contains_key("access-control-max-age"));
    assert!(!a.headers.contains_key("access-control-allow-credentials"));

    // The real request: the API server's CORS headers replaced by kproxy's, for that exact origin.
    let a = send_to(
        &kp,
        &api,
        "GET",
        "/api/v1/namespaces",
        &[("origin", ui)],
        "",
    )
    .await;
    assert!(a.reached && a.status == 200);
    assert_eq!(a.headers["access-control-allow-origin"], ui);
    assert!(!a.headers.contains_key("access-control-allow-credentials"));
    assert!(!a.headers.contains_key("access-control-expose-headers"));
    let vary: Vec<_> = a
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(vary, ["Accept-Encoding", "Origin"]);
    // The second origin, written with a default port and capitals on the command line.
    let a = send_to(
        &kp,
        &api,
        "GET",
        "/api/v1/namespaces",
        &[("origin", "https://other.example")],
        "",
    )
    .await;
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://other.example"
    );

    // kproxy's own refusals carry the CORS header too, so the page can read why.
    let a = send_to(
        &kp,
        &api,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        &[("origin", ui)],
        "{}",
    )
    .await;
    let msg = a.refused(403);
    assert!(msg.contains("--read-only"), "{msg}");
    assert_eq!(a.headers["access-control-allow-origin"], ui);

    // The list governs WebSockets too.
    let mut headers = ws_headers("v4.channel.k8s.io");
    headers.push(("Origin", ui));
    let (head, _s) = raw_upgrade(kp.addr, "/api/v1/pods?watch=1", &headers).await;
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "read-only refuses upgrades: {head}"
    );
    assert!(
        head.contains("access-control-allow-origin: http://ui.example:3000"),
        "{head}"
    );

    // Exact origins only: not a subdomain, another port, another scheme or a prefix.
    for origin in [
        "http://ui.example:3001",
        "https://ui.example:3000",
        "http://evil.ui.example:3000",
        "http://ui.example:3000.evil.example",
        "http://ui.example",
    ] {
        let a = send_to(
            &kp,
            &api,
            "OPTIONS",
            "/api/v1/pods",
            &[("origin", origin), ("access-control-request-method", "GET")],
            "",
        )
        .await;
        a.refused(403);
        assert!(
            !a.headers.contains_key("access-control-allow-origin"),
            "{origin}"
        );
    }
    // An OPTIONS that is not a preflight is the API server's.
    let a = send_to(&kp, &api, "OPTIONS", "/api/v1/pods", &[("origin", ui)], "").await;
    assert!(a.reached);
    kp.stop().await;
}

#[test]
fn bad_access_flags_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "  \n").unwrap();
    let empty_flag = format!("--auth-token-file={}", empty.display());
    let missing_flag = format!("--auth-token-file={}", dir.path().join("nope").display());
    for (args, want) in [
        (
            vec!["--cors-allowed-origin=*"],
            "wildcards are not accepted",
        ),
        (
            vec!["--cors-allowed-origin=https://*.example.com"],
            "wildcards",
        ),
        (vec!["--cors-allowed-origin=https://ui.example/"], "no path"),
        (
            vec!["--cors-allowed-origin=^https://.*$"],
            "--cors-allowed-origin",
        ),
        (vec!["--cors-allowed-origin=ui.example"], "scheme://host"),
        (vec![empty_flag.as_str()], "empty"),
        (vec![missing_flag.as_str()], "nope"),
        (vec!["--allow-uid=0"], "--unix-socket"),
    ] {
        let mut all = vec!["--server=http://127.0.0.1:1"];
        all.extend(args.iter().copied());
        let (code, stdout, stderr) = run_kproxy(&all, &[]);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        assert_eq!(stdout, "");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(want),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn the_inbound_token_is_required_checked_and_removed() {
    let api = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "  inbound-s3cret\n").unwrap();
    let flag = format!("--auth-token-file={}", file.display());
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "ui").unwrap();
    let www_flag = format!("--www={}", www.path().display());
    let kp = proxy(&api, &[&flag, &www_flag]).await;

    for (headers, want) in [
        (vec![], "requires its token"),
        (vec![("authorization", "Bearer wrong")], "not the one"),
        (
            vec![("authorization", "Bearer inbound-s3cre")],
            "not the one",
        ),
        (
            vec![("authorization", "Bearer inbound-s3cret2")],
            "not the one",
        ),
        (
            vec![("authorization", "Basic aW5ib3VuZC1zM2NyZXQ=")],
            "requires its token",
        ),
        (vec![("authorization", "")], "requires its token"),
    ] {
        let a = send_to(&kp, &api, "GET", "/api/v1/pods", &headers, "").await;
        let msg = a.refused(401);
        assert_eq!(json(&a.body)["reason"], "Unauthorized");
        assert!(
            msg.contains(want) && msg.contains(&file.display().to_string()),
            "{msg}"
        );
        assert!(
            !msg.contains("s3cret") && !msg.contains("wrong"),
            "a token in the message: {msg}"
        );
    }
    // Two Authorization headers: refused, whatever they hold.
    let req = http::Request::get(format!("{}/api/v1/pods", kp.url))
        .header("authorization", "Bearer inbound-s3cret")
        .header("authorization", "Bearer inbound-s3cret")
        .body(full(""))
        .unwrap();
    let (status, _, _) = collect(send(req).await).await;
    assert_eq!(status, 401);

    // The right token: the request goes on with kproxy's own credential in its place.
    for scheme in ["Bearer", "bearer"] {
        let value = format!("{scheme} inbound-s3cret");
        let a = send_to(
            &kp,
            &api,
            "GET",
            "/api/v1/pods",
            &[("authorization", &value)],
            "",
        )
        .await;
        assert!(a.reached && a.status == 200);
        assert_eq!(
            api.last().header_all("authorization"),
            ["Bearer kubeconfig-token"]
        );
    }
    // Static files hold no cluster credential: served without the token.
    let a = send_to(&kp, &api, "GET", "/static/", &[], "").await;
    assert_eq!(a.status, 200);
    kp.stop().await;
}

#[tokio::test]
async fn the_inbound_token_rides_the_websocket_subprotocol() {
    let api = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "inbound-s3cret").unwrap();
    let flag = format!("--auth-token-file={}", file.display());
    let kp = proxy(&api, &[&flag]).await;
    let b64 = |t: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
    let path = "/api/v1/namespaces/default/pods/p/exec?command=ls";

    let offered = format!(
        "v5.channel.k8s.io, base64url.bearer.authorization.k8s.io.{}, v4.channel.k8s.io",
        b64("inbound-s3cret")
    );
    let before = api.count();
    let mut headers = ws_headers("placeholder");
    headers.retain(|(k, _)| *k != "Sec-WebSocket-Protocol");
    headers.push(("Sec-WebSocket-Protocol", &offered));
    let _ = raw_upgrade(
        kp.addr,
        path.replace("exec", "portforward").as_str(),
        &headers,
    )
    .await;
    assert_eq!(api.count(), before + 1, "the upgrade went on");
    let rec = api.last();
    assert_eq!(
        rec.header("sec-websocket-protocol"),
        Some("v5.channel.k8s.io, v4.channel.k8s.io"),
        "the token protocol is removed"
    );
    assert_eq!(rec.header_all("authorization"), ["Bearer kubeconfig-token"]);

    let wrong = format!(
        "v4.channel.k8s.io, base64url.bearer.authorization.k8s.io.{}",
        b64("nope")
    );
    let alone = format!(
        "base64url.bearer.authorization.k8s.io.{}",
        b64("inbound-s3cret")
    );
    let twice = format!("{alone}, {alone}, v4.channel.k8s.io");
    let padded = "v4.channel.k8s.io, base64url.bearer.authorization.k8s.io.aW5ib3VuZC1zM2NyZXQ=";
    for offered in [wrong.as_str(), alone.as_str(), twice.as_str(), padded] {
        let before = api.count();
        let mut headers = ws_headers("placeholder");
        headers.retain(|(k, _)| *k != "Sec-WebSocket-Protocol");
        headers.push(("Sec-WebSocket-Protocol", offered));
        let (head, _s) = raw_upgrade(
            kp.addr,
            "/api/v1/namespaces/default/pods/p/portforward",
            &headers,
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 401"), "{offered}: {head}");
        assert_eq!(api.count(), before, "{offered}");
    }
    kp.stop().await;
}

/// kproxy as a process (the binary), its stderr collected.
struct Spawned {
    child: std::process::Child,
    stderr: std::sync::mpsc::Receiver<String>,
    stdout_line: String,
}

impl Spawned {
    fn start(cmd: &mut std::process::Command) -> Spawned {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (ltx, lrx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = ltx.send(line);
        });
        let stdout_line = match lrx.recv_timeout(WAIT) {
            Ok(l) if !l.is_empty() => l.trim_end().to_owned(),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let lines: Vec<String> = stderr.try_iter().collect();
                panic!("kproxy did not start: {lines:?}");
            }
        };
        Spawned {
            child,
            stderr,
            stdout_line,
        }
    }

    /// SIGTERM, then the exit status and every stderr line.
    fn stop(mut self) -> (i32, String) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = std::time::Instant::now() + WAIT;
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code().unwrap_or(-1);
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("kproxy did not exit on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut text = String::new();
        while let Ok(line) = self.stderr.recv_timeout(WAIT) {
            text.push_str(&line);
            text.push('\n');
        }
        (code, text)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_token_is_a_new_private_file_and_is_never_logged() {
    use std::os::unix::fs::PermissionsExt;
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: kubeconfig-token");
    let tmp = tempfile::tempdir().unwrap();
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = Spawned::start(
        std::process::Command::new(kproxy_bin())
            .args(["--port=0", &kc_flag, "--auth-token-file=auto", "-v=10"])
            .env_clear()
            .env("TMPDIR", tmp.path()),
    );
    assert!(
        kp.stdout_line
            .starts_with("Starting to serve on 127.0.0.1:"),
        "stdout is only the startup line"
    );
    let port = kp.stdout_line.rsplit(':').next().unwrap().to_owned();
    let line = loop {
        let line = kp
            .stderr
            .recv_timeout(WAIT)
            .expect("a line naming the token file");
        if line.contains("wrote a new token") {
            break line;
        }
    };
    let path = line
        .split_whitespace()
        .find(|w| w.starts_with(&tmp.path().display().to_string()))
        .unwrap_or_else(|| panic!("no path in {line:?}"));
    let meta = std::fs::metadata(path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{path}");
    let token = std::fs::read_to_string(path).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!line.contains(&token));

    let url = format!("http://127.0.0.1:{port}/api/v1/pods");
    let good = format!("Bearer {token}");
    let (status, _, _) = request("GET", &url, &[("authorization", &good)], "").await;
    assert_eq!(status, 200);
    assert_eq!(
        api.last().header_all("authorization"),
        ["Bearer kubeconfig-token"]
    );
    let (status, _, _) = request(
        "GET",
        &url,
        &[("authorization", "Bearer not-the-token-xyz")],
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = request("GET", &url, &[], "").await;
    assert_eq!(status, 401);

    let path = path.to_owned();
    let (code, stderr) = kp.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("Filter accepting"),
        "-v=10 logged requests: {stderr}"
    );
    assert!(!stderr.contains(&token), "the token was logged");
    assert!(
        !stderr.contains("not-the-token-xyz"),
        "a rejected token was logged"
    );
    assert!(
        !std::path::Path::new(&path).exists(),
        "the token file outlived kproxy"
    );
}

/// (method, path, extra headers, body, the rule's words in the refusal (None: passes)).
type Case<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    &'a str,
    Option<&'a str>,
);

#[tokio::test]
async fn read_only_lets_reads_reviews_and_dry_runs_through_and_nothing_else() {
    let api = FakeApi::builder().start().await;
    let kp = proxy(&api, &["--read-only"]).await;
    let cm = "/api/v1/namespaces/d/configmaps";
    // (method, path, extra headers, body, refused by rule (None: passes))
    let cases: Vec<Case<'_>> = vec![
        ("GET", "/api/v1/pods".into(), vec![], "", None),
        ("GET", "/api/v1/pods?watch=true".into(), vec![], "", None),
        (
            "GET",
            "/api/v1/watch/namespaces/d/pods".into(),
            vec![],
            "",
            None,
        ),
        ("HEAD", "/api/v1/pods".into(), vec![], "", None),
        ("OPTIONS", "/api/v1/pods".into(), vec![], "", None),
        (
            "GET",
            "/api/v1/namespaces/d/pods/p/log?follow=true".into(),
            vec![],
            "",
            None,
        ),
        // Writes.
        ("POST", cm.into(), vec![], "{}", Some("dryRun=All")),
        ("PUT", format!("{cm}/c"), vec![], "{}", Some("dryRun=All")),
        ("PATCH", format!("{cm}/c"), vec![], "{}", Some("dryRun=All")),
        ("DELETE", format!("{cm}/c"), vec![], "", Some("dryRun=All")),
        ("DELETE", cm.into(), vec![], "", Some("dryRun=All")),
        ("PROPFIND", cm.into(), vec![], "", Some("dryRun=All")),
        (
            "POST",
            format!("{cm}?dryRun=All&dryRun=x"),
            vec![],
            "{}",
            Some("dryRun=All"),
        ),
        (
            "POST",
            format!("{cm}?dryRun="),
            vec![],
            "{}",
            Some("dryRun=All"),
        ),
        (
            "POST",
            format!("{cm}?dryRun=all"),
            vec![],
            "{}",
            Some("dryRun=All"),
        ),
        (
            "POST",
            format!("{cm}?dryrun=All"),
            vec![],
            "{}",
            Some("dryRun=All"),
        ),
        // A DELETE's body overrides its query at the API server: only a body-less one is a dry run.
        (
            "DELETE",
            format!("{cm}/c?dryRun=All"),
            vec![],
            r#"{"dryRun":[]}"#,
            Some("dryRun=All"),
        ),
        // Dry runs.
        ("POST", format!("{cm}?dryRun=All"), vec![], "{}", None),
        (
            "POST",
            format!("{cm}?fieldManager=kubectl&dryRun=All"),
            vec![],
            "{}",
            None,
        ),
        (
            "PATCH",
            format!("{cm}/c?dryRun=All&fieldManager=kubectl-client-side-apply"),
            vec![],
            "{}",
            None,
        ),
        ("PUT", format!("{cm}/c?dryRun=All"), vec![], "{}", None),
        ("DELETE", format!("{cm}/c?dryRun=All"), vec![], "", None),
        // Access reviews, matched exactly.
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews".into(),
            vec![],
            "{}",
            None,
        ),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews".into(),
            vec![],
            "{}",
            None,
        ),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews".into(),
            vec![],
            "{}",
            None,
        ),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/namespaces/d/localsubjectaccessreviews".into(),
            vec![],
            "{}",
            None,
        ),
        (
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews".into(),
            vec![],
            "{}",
            None,
        ),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/".into(),
            vec![],
            "{}",
            Some("dryRun=All"),
        ),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviewsx".into(),
            vec![],
            "{}",
            Some("dryRun=All"),
        ),
        (
            "PUT",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews".into(),
            vec![],
            "{}",
            Some("dryRun=All"),
        ),
        (
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews".into(),
            vec![],
            "{}",
            Some("dryRun=All"),
        ),
        // TokenRequests hand out credentials, dry run or not.
        (
            "POST",
            "/api/v1/namespaces/d/serviceaccounts/default/token?dryRun=All".into(),
            vec![],
            "{}",
            Some("TokenRequests"),
        ),
        // Proxy subresources, any method.
        (
            "GET",
            "/api/v1/namespaces/d/services/s:80/proxy/".into(),
            vec![],
            "",
            Some("proxy subresources"),
        ),
        (
            "GET",
            "/api/v1/namespaces/d/pods/p/proxy".into(),
            vec![],
            "",
            Some("proxy subresources"),
        ),
        (
            "HEAD",
            "/api/v1/nodes/n/proxy/metrics".into(),
            vec![],
            "",
            Some("proxy subresources"),
        ),
        (
            "POST",
            "/api/v1/namespaces/d/services/s/proxy/x?dryRun=All".into(),
            vec![],
            "{}",
            Some("proxy subresources"),
        ),
        // Client impersonation.
        (
            "GET",
            "/api/v1/pods".into(),
            vec![("impersonate-user", "admin")],
            "",
            Some("Impersonate-*"),
        ),
        (
            "GET",
            "/api/v1/pods".into(),
            vec![("impersonate-group", "system:masters")],
            "",
            Some("Impersonate-*"),
        ),
        (
            "GET",
            "/api/v1/pods".into(),
            vec![("impersonate-uid", "1")],
            "",
            Some("Impersonate-*"),
        ),
        // Upgrades, any method: a WebSocket exec is a GET.
        (
            "GET",
            "/api/v1/namespaces/d/pods/p/exec?command=sh".into(),
            vec![("connection", "upgrade"), ("upgrade", "websocket")],
            "",
            Some("upgrades"),
        ),
        (
            "POST",
            "/api/v1/namespaces/d/pods/p/portforward".into(),
            vec![("connection", "upgrade"), ("upgrade", "SPDY/3.1")],
            "",
            Some("upgrades"),
        ),
        (
            "GET",
            "/api/v1/pods?watch=1".into(),
            vec![("connection", "upgrade"), ("upgrade", "websocket")],
            "",
            Some("upgrades"),
        ),
        // An h2c-only offer is no upgrade (kproxy proxies it as a plain request).
        (
            "GET",
            "/api/v1/pods".into(),
            vec![
                ("connection", "upgrade, http2-settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ],
            "",
            None,
        ),
    ];
    for (method, path, headers, body, refused) in cases {
        let a = send_to(&kp, &api, method, &path, &headers, body).await;
        match refused {
            None => assert!(
                a.reached && a.status == 200,
                "{method} {path} {headers:?}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            ),
            Some(_) if method == "HEAD" => {
                assert_eq!(a.status, 403, "{path}");
                assert!(!a.reached, "{path}");
            }
            Some(rule) => {
                let msg = a.refused(403);
                assert!(
                    msg.starts_with(&format!("kproxy --read-only refused {method} "))
                        && msg.contains(rule),
                    "{method} {path} {headers:?}: {msg}"
                );
            }
        }
    }
    kp.stop().await;
}

fn refusals(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("kproxy_refusals_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: kubeconfig-token");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "tok").unwrap();
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let tok_flag = format!("--auth-token-file={}", file.display());
    let kp = Kproxy::with_admin(&[&kc_flag, &tok_flag, "--read-only"], MapEnv::default()).await;
    let url = kp.url.clone();
    let metrics_url = format!("{}/metrics", kp.admin.as_deref().unwrap());
    let auth = ("authorization", "Bearer tok");
    for (headers, method, path) in [
        (
            vec![("origin", "https://evil.example")],
            "GET",
            "/api/v1/pods",
        ),
        (
            vec![("origin", "https://evil.example")],
            "GET",
            "/api/v1/pods",
        ),
        (
            vec![("sec-fetch-site", "cross-site")],
            "GET",
            "/api/v1/pods",
        ),
        (vec![], "GET", "/api/v1/pods"),
        (vec![auth], "DELETE", "/api/v1/namespaces/d/pods/p"),
        (
            vec![auth, ("upgrade", "websocket"), ("connection", "upgrade")],
            "GET",
            "/api/v1/pods",
        ),
        (vec![auth], "GET", "/api/v1/nodes/n/proxy/"),
        (vec![auth, ("impersonate-user", "x")], "GET", "/api/v1/pods"),
        (vec![auth], "GET", "/api/v1/pods"),
    ] {
        let _ = request(method, &format!("{url}{path}"), &headers, "").await;
    }
    let (status, _, body) = get(&metrics_url).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    for (reason, n) in [
        ("origin", 2),
        ("cross_site", 1),
        ("token", 1),
        ("peer_uid", 0),
        ("read_only_write", 1),
        ("read_only_upgrade", 1),
        ("read_only_proxy", 1),
        ("read_only_impersonate", 1),
    ] {
        assert_eq!(refusals(&text, reason), n, "{reason}");
    }
    kp.stop().await;
}

/// The unix socket serves only kproxy's own user (and `--allow-uid`). Connecting as another user needs
/// two users: kproxy runs as `nobody` (through `setpriv`) and the test, as root, connects; root passes
/// the socket's 0600 mode, which is exactly the case SO_PEERCRED closes.
#[test]
fn unix_socket_peers_must_be_kproxys_user() {
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if uid.ok() != Some(0) || !setpriv.exists() {
        // Documented in docs/security.md: CI runs as root, where this test runs in full.
        eprintln!(
            "SKIPPED unix_socket_peers_must_be_kproxys_user: needs root and setpriv (util-linux)"
        );
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.path().join("kproxy.sock");
    let socket_flag = format!("--unix-socket={}", socket.display());
    let curl = |extra: &[&str]| -> (bool, String) {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--unix-socket"])
            .arg(&socket)
            .args(extra)
            .arg("http://localhost/static/")
            .output()
            .expect("curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello").unwrap();
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        www.join("index.html"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let www_flag = format!("--www={}", www.display());
    for (allow, served) in [(None, false), (Some("--allow-uid=0"), true)] {
        let mut cmd = std::process::Command::new(setpriv);
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            kproxy_bin(),
        ])
        .args(["--server=http://127.0.0.1:1", &socket_flag, &www_flag])
        .args(allow)
        .env_clear();
        let kp = Spawned::start(&mut cmd);
        let meta = std::fs::metadata(&socket).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
        let (ok, out) = curl(&[]);
        assert_eq!(ok, served, "{allow:?}: {out}");
        if served {
            assert_eq!(out, "hello");
        }
        let (code, stderr) = kp.stop();
        assert_eq!(code, 0);
        assert_eq!(
            stderr.contains("refused a unix-socket connection from another user"),
            !served,
            "{stderr}"
        );
        if !served {
            assert!(stderr.contains("uid=0"), "{stderr}");
        }
    }
}

/// `GET /api/v1/pods` with `Authorization: Bearer <token>`.
async fn pods(kp: &Kproxy, api: &FakeApi, token: &str) -> Answer {
    let auth = format!("Bearer {token}");
    send_to(
        kp,
        api,
        "GET",
        "/api/v1/pods",
        &[("authorization", &auth)],
        "",
    )
    .await
}

#[tokio::test]
async fn a_rotated_token_file_is_in_force_on_the_next_request_and_a_broken_one_keeps_the_last() {
    // A Secret volume rotates the token in place (a new file swapped in); the app then sends the new
    // token. The check period is 0 here so that every request re-reads the file (1 s outside tests).
    let api = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "token-one\n").unwrap();
    let flag = format!("--auth-token-file={}", file.display());
    let kc = kubeconfig_for(&api, "kc.yaml", "token: kubeconfig-token");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = Kproxy::start_with(&[&kc_flag, &flag], MapEnv::default(), |c| {
        c.timing.file_check_period = Duration::ZERO;
    })
    .await
    .unwrap();
    let a = pods(&kp, &api, "token-one").await;
    assert_eq!(a.status, 200);

    let swap = |contents: &str| {
        let tmp = dir.path().join("token.new");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    swap("token-two\n");
    let a = pods(&kp, &api, "token-two").await;
    assert_eq!(a.status, 200, "the rotated token is refused");
    let a = pods(&kp, &api, "token-one").await;
    assert!(a.refused(401).contains("not the one"));

    // Emptied, unprintable, removed: the last good token stays in force.
    for broken in ["", "two words\n"] {
        swap(broken);
        let a = pods(&kp, &api, "token-two").await;
        assert_eq!(a.status, 200, "{broken:?} replaced the token");
    }
    std::fs::remove_file(&file).unwrap();
    let a = pods(&kp, &api, "token-two").await;
    assert_eq!(a.status, 200, "a removed file dropped the token");
    let a = send_to(&kp, &api, "GET", "/api/v1/pods", &[], "").await;
    a.refused(401);
    kp.stop().await;
}
