//! Issue item 9: errors are clear and never crash or hang. Upstream failures become 502/503 `Status`
//! JSON naming the upstream and the cause; startup problems are one line on stderr and exit 64 (bad
//! configuration) or 1 (environment); malformed or oversized client requests get 400/414/431 and kproxy
//! keeps serving.
mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Frame;

/// A loopback port with nothing listening on it.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A kubeconfig for `server` trusting `pki`'s CA, with a static token.
fn kubeconfig_trusting(pki: &Pki, server: &str) -> std::path::PathBuf {
    kubeconfig(
        pki.dir.path(),
        "kc.yaml",
        server,
        &format!("certificate-authority: {}", pki.ca_path.display()),
        "token: t",
    )
}

async fn assert_still_serving(kp: &Kproxy) {
    let (status, _, body) = get(&format!("{}/version", kp.url)).await;
    assert_eq!(status, 200, "kproxy stopped serving");
    assert_eq!(json(&body)["gitVersion"], "v1.37.0-fake");
}

#[tokio::test]
async fn refused_upstream_is_a_503_status_naming_server_and_cause() {
    let port = closed_port().await;
    let pki = Pki::new();
    let server = format!("https://127.0.0.1:{port}");
    let kc = kubeconfig_trusting(&pki, &server);
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let (status, headers, body) = get(&format!("{}/api/v1/pods", kp.url)).await;
    let msg = assert_status(status, &body, 503);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json(&body)["reason"], "ServiceUnavailable");
    assert!(msg.contains(&server), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    kp.stop().await;
}

#[tokio::test]
async fn untrusted_server_certificate_is_a_502_status() {
    let api = FakeApi::builder().start().await;
    // A kubeconfig trusting some other CA.
    let other = Pki::new();
    let kc = kubeconfig_trusting(&other, &api.url);
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let (status, _, body) = get(&format!("{}/api/v1/pods", kp.url)).await;
    let msg = assert_status(status, &body, 502);
    assert!(msg.contains(&api.url), "{msg}");
    assert!(msg.contains("certificate"), "{msg}");
    assert_eq!(
        api.count(),
        0,
        "no request may go out over an unverified connection"
    );
    kp.stop().await;
}

#[tokio::test]
async fn upstream_closing_without_answer_is_a_502_status() {
    // An "API server" that accepts and hangs up at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let kp = Kproxy::start(
        &[&format!("--server=http://{addr}")],
        kproxy::env::MapEnv::default(),
    )
    .await
    .unwrap();
    let (status, _, body) = get(&format!("{}/api/v1/pods", kp.url)).await;
    let msg = assert_status(status, &body, 502);
    assert!(msg.contains(&format!("http://{addr}")), "{msg}");
    kp.stop().await;
}

#[tokio::test]
async fn a_server_that_never_answers_the_tls_handshake_is_a_503_after_the_dial_bound() {
    // An "API server" that accepts TCP, reads the ClientHello and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = accepted_tx.send(());
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut s, &mut sink).await;
            });
        }
    });
    let pki = Pki::new();
    let server = format!("https://{addr}");
    let kc = kubeconfig_trusting(&pki, &server);
    let bound = std::time::Duration::from_millis(300);
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = Kproxy::start_with(&[&kc_flag], kproxy::env::MapEnv::default(), |c| {
        c.dial_timeout = bound;
    })
    .await
    .unwrap();
    // Each way kproxy dials: two ordinary requests waiting on the one shared HTTP/2 dial, a LIST (a bulk
    // read: the HTTP/1.1 pool's dial) and a watch (a lane's dial).
    let started = std::time::Instant::now();
    let urls = [
        format!("{}/version", kp.url),
        format!("{}/api/v1/namespaces/default/pods/p", kp.url),
        format!("{}/api/v1/pods", kp.url),
        format!("{}/api/v1/pods?watch=true", kp.url),
    ];
    let answers = futures_util::future::join_all(urls.iter().map(|u| get(u))).await;
    let took = started.elapsed();
    for (url, (status, _, body)) in urls.iter().zip(&answers) {
        let msg = assert_status(*status, body, 503);
        assert!(msg.contains(&server), "{url}: {msg}");
        assert!(msg.contains("TLS handshake"), "{url}: {msg}");
    }
    assert!(took >= bound, "answered after {took:?}, before the bound");
    let mut dials = 0;
    while accepted.try_recv().is_ok() {
        dials += 1;
    }
    assert_eq!(
        dials, 3,
        "one dial each: shared connection, HTTP/1.1 pool, lane; got {dials}"
    );
    kp.stop().await;
}

#[tokio::test]
async fn upstream_failing_mid_body_aborts_that_response_only() {
    // The upstream sends its head and a first chunk, then fails once the test says so.
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<()>();
    let fail_rx = std::sync::Mutex::new(Some(fail_rx));
    let api = FakeApi::builder()
        .http1_only()
        .route("/api/v1/broken", move |_, _| {
            let fail = fail_rx.lock().unwrap().take().unwrap();
            async move {
                let body = async_stream(|tx| async move {
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from_static(b"{\"partial\":"))))
                        .await;
                    let _ = fail.await;
                    let _ = tx.send(Err(std::io::Error::other("disk on fire"))).await;
                });
                Response::builder()
                    .header("content-length", "1000")
                    .body(body)
                    .unwrap()
            }
        })
        .start()
        .await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let resp = send(
        http::Request::get(format!("{}/api/v1/broken", kp.url))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200, "the head is relayed as it comes");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"{\"partial\":");
    fail_tx.send(()).unwrap();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("a broken upstream body must not hang the client");
    assert!(
        rest.is_err(),
        "the client must see the body fail, not end cleanly"
    );
    assert_still_serving(&kp).await;
    kp.stop().await;
}

async fn started(api: &FakeApi) -> Kproxy {
    let kc = kubeconfig_for(api, "kc.yaml", "token: t");
    Kproxy::with_kubeconfig(&kc, &[]).await
}

#[tokio::test]
async fn malformed_requests_get_400_and_kproxy_keeps_serving() {
    let api = FakeApi::builder().start().await;
    let kp = started(&api).await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /api HTTP/1.1\r\nHost: localhost\r\nBad Header: x\r\n\r\n",
        b"POST /api HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
        b"GET /api/v1/x y HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /api HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
    ] {
        let resp = raw(kp.addr, bad).await;
        assert_eq!(
            resp.status,
            400,
            "{:?} -> {resp:?}",
            String::from_utf8_lossy(bad)
        );
        assert_still_serving(&kp).await;
    }
    assert!(
        api.recorded().iter().all(|r| r.uri == "/version"),
        "only the liveness checks reached the server"
    );
    kp.stop().await;
}

#[tokio::test]
async fn missing_or_repeated_host_is_a_400_status() {
    let api = FakeApi::builder().start().await;
    let kp = started(&api).await;
    // RFC 9112 §3.2, and what Go's server (so kubectl proxy) answers.
    for bad in [
        &b"GET /api/v1/pods HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET http://localhost/api/v1/pods HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /api/v1/pods HTTP/1.1\r\nHost: localhost\r\nHost: evil.com\r\nConnection: close\r\n\r\n",
    ] {
        let resp = raw(kp.addr, bad).await;
        let msg = assert_status(
            http::StatusCode::from_u16(resp.status).unwrap(),
            &resp.body,
            400,
        );
        assert!(msg.contains("Host"), "{msg}");
    }
    // The asterisk form is about the server itself: `OPTIONS *` gets Go's empty 200, anything else 400.
    let resp = raw(
        kp.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((resp.status, resp.body.len()), (200, 0), "{resp:?}");
    let resp = raw(
        kp.addr,
        b"GET * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_status(
        http::StatusCode::from_u16(resp.status).unwrap(),
        &resp.body,
        400,
    );
    // HTTP/1.0 needs no Host; the filter then sees an empty host and rejects it, as kubectl does.
    let resp = raw(kp.addr, b"GET /api/v1/pods HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 403);
    assert_eq!(api.count(), 0);
    kp.stop().await;
}

#[tokio::test]
async fn oversized_requests_get_431_or_414_and_kproxy_keeps_serving() {
    let api = FakeApi::builder().start().await;
    let kp = started(&api).await;
    let big_header = format!(
        "GET /api HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2 * 1024 * 1024)
    );
    let many_headers = format!(
        "GET /api HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
        (0..300)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(70_000)
    );
    for (req, code) in [(big_header, 431), (many_headers, 431), (long_uri, 414)] {
        let resp = raw(kp.addr, req.as_bytes()).await;
        assert_eq!(resp.status, code, "{}", &req[..40]);
        assert_still_serving(&kp).await;
    }
    kp.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Startup failures of the real binary: one line on stderr, exit 64 or 1, no panic.

fn assert_fails(args: &[&str], env: &[(&str, &str)], code: i32, needles: &[&str]) {
    let (got, stdout, stderr) = run_kproxy(args, env);
    assert_eq!(got, code, "{args:?}: stderr {stderr:?}");
    assert_eq!(stdout, "", "nothing on stdout: the startup line never came");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {stderr:?} lacks {n:?}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn kc_arg(p: &std::path::Path) -> String {
    format!("--kubeconfig={}", p.display())
}

#[test]
fn bad_kubeconfigs_exit_64_with_one_line() {
    let pki = Pki::new();
    let broken = pki.write("broken.yaml", "apiVersion: v1\nclusters: [ {name: x\n");
    assert_fails(&[&kc_arg(&broken)], &[], 64, &["broken.yaml", "parse"]);

    let missing = pki.path("missing.yaml");
    assert_fails(
        &[&kc_arg(&missing)],
        &[],
        64,
        &["missing.yaml", "does not exist"],
    );

    let kc = kubeconfig(
        pki.dir.path(),
        "kc.yaml",
        "https://127.0.0.1:1",
        "",
        "token: t",
    );
    assert_fails(
        &[&kc_arg(&kc), "--context=nope"],
        &[],
        64,
        &["context \"nope\" not found"],
    );
    assert_fails(
        &[&kc_arg(&kc), "--user=ghost"],
        &[],
        64,
        &["user \"ghost\" not found"],
    );

    let both = kubeconfig(
        pki.dir.path(),
        "both.yaml",
        "https://127.0.0.1:1",
        &format!(
            "certificate-authority: {}\ninsecure-skip-tls-verify: true",
            pki.ca_path.display()
        ),
        "",
    );
    assert_fails(&[&kc_arg(&both)], &[], 64, &["insecure"]);

    // No kubeconfig anywhere and not in a pod.
    assert_fails(&[], &[], 64, &["no Kubernetes configuration found"]);
    assert_fails(
        &[],
        &[("HOME", pki.dir.path().to_str().unwrap())],
        64,
        &[".kube/config does not exist"],
    );
}

#[test]
fn unreadable_or_mismatched_client_keys_exit_64_with_one_line() {
    let pki = Pki::new();
    let alice = pki.client("alice", "alice", &[]);
    let bob = pki.client("bob", "bob", &[]);
    let user = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "client-certificate: {}\nclient-key: {}",
            cert.display(),
            key.display()
        )
    };
    let ca = format!("certificate-authority: {}", pki.ca_path.display());
    let server = "https://127.0.0.1:1";

    let missing = pki.path("nokey.key");
    let kc = kubeconfig(
        pki.dir.path(),
        "a.yaml",
        server,
        &ca,
        &user(&alice.cert_path, &missing),
    );
    assert_fails(&[&kc_arg(&kc)], &[], 64, &["client-key", "nokey.key"]);

    let garbage = pki.write(
        "garbage.key",
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    );
    let kc = kubeconfig(
        pki.dir.path(),
        "b.yaml",
        server,
        &ca,
        &user(&alice.cert_path, &garbage),
    );
    assert_fails(&[&kc_arg(&kc)], &[], 64, &["client-key", "garbage.key"]);

    let kc = kubeconfig(
        pki.dir.path(),
        "c.yaml",
        server,
        &ca,
        &user(&alice.cert_path, &bob.key_path),
    );
    assert_fails(
        &[&kc_arg(&kc)],
        &[],
        64,
        &["does not match", "alice.crt", "bob.key"],
    );

    // The same through the override flags.
    let kc = kubeconfig(pki.dir.path(), "d.yaml", server, &ca, "");
    assert_fails(
        &[
            &kc_arg(&kc),
            &format!("--client-certificate={}", bob.cert_path.display()),
            &format!("--client-key={}", alice.key_path.display()),
        ],
        &[],
        64,
        &["does not match"],
    );
}

#[test]
fn invalid_flags_exit_64_with_one_line() {
    let pki = Pki::new();
    let kc = kubeconfig(
        pki.dir.path(),
        "kc.yaml",
        "https://127.0.0.1:1",
        "",
        "token: t",
    );
    let kc = kc_arg(&kc);
    assert_fails(
        &[&kc, "--accept-paths=^/api/(v1"],
        &[],
        64,
        &["invalid regex", "--accept-paths", "^/api/(v1"],
    );
    assert_fails(&[&kc, "--reject-methods=*"], &[], 64, &["--reject-methods"]);
    assert_fails(
        &[&kc, "--unix-socket=/tmp/x.sock", "--port=9000"],
        &[],
        64,
        &["--unix-socket", "--port"],
    );
    assert_fails(
        &[&kc, "--www=.", "--www-prefix=/x/", "--api-prefix=/x"],
        &[],
        64,
        &["--www-prefix", "--api-prefix"],
    );
    let (code, _, stderr) = run_kproxy(&[&kc, "--keepalive=5"], &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("--keepalive"), "{stderr}");
    let (code, _, stderr) = run_kproxy(&[&kc, "--no-such-flag"], &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[test]
fn port_in_use_exits_1_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let pki = Pki::new();
    let kc = kubeconfig(
        pki.dir.path(),
        "kc.yaml",
        "https://127.0.0.1:1",
        "",
        "token: t",
    );
    assert_fails(
        &[&kc_arg(&kc), &format!("--port={port}")],
        &[],
        1,
        &[&format!("127.0.0.1:{port}"), "in use"],
    );
    drop(taken);
}

#[tokio::test]
async fn kproxy_starts_while_the_server_is_down() {
    // As kubectl: nothing contacts the API server before a request arrives.
    let port = closed_port().await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let kp = Kproxy::start(
        &[&format!("--server=http://{addr}")],
        kproxy::env::MapEnv::default(),
    )
    .await
    .expect("kproxy must start without its server");
    let (status, _, body) = get(&format!("{}/api", kp.url)).await;
    assert_status(status, &body, 503);
    kp.stop().await;
}
