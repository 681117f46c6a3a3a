//! Credentials that never go stale (issue #3): exec plugins, token files, client certificate and CA
//! reloads, OIDC refresh, and the rule that every credential failure is reported without its secret.
//! Refresh periods are shortened through `Config::timing`; no test waits for a real period.
mod common;
mod creds_support;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use creds_support::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kproxy::env::MapEnv;

fn status(code: u16, body: &str) -> Response<BoxBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(body.to_owned()))
        .unwrap()
}

/// A route answering 401 to the listed `Authorization` values and 200 otherwise.
fn reject(
    bad: &'static [&'static str],
) -> impl Fn(Request<hyper::body::Incoming>, Recorded) -> std::future::Ready<Response<BoxBody>>
       + Send
       + Sync
       + 'static {
    move |_req, rec| {
        let auth = rec.header("authorization").unwrap_or("");
        std::future::ready(if bad.contains(&auth) {
            status(
                401,
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Unauthorized","code":401}"#,
            )
        } else {
            status(200, r#"{"kind":"PodList","items":[]}"#)
        })
    }
}

fn auths(api: &FakeApi, path: &str) -> Vec<String> {
    api.recorded()
        .into_iter()
        .filter(|r| r.uri.starts_with(path))
        .map(|r| r.header("authorization").unwrap_or("").to_owned())
        .collect()
}

async fn post(url: &str, body: &'static str) -> (StatusCode, Bytes) {
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap();
    let (s, _, b) = collect(send(req).await).await;
    (s, b)
}

// ---------------------------------------------------------------------------------------------------
// Exec plugins

#[tokio::test]
async fn exec_token_is_cached_and_one_run_serves_100_concurrent_requests() {
    let api = FakeApi::builder().start().await;
    let plugin = Plugin::new();
    plugin.write("out", &token_credential(V1, "token-1", None));
    // Slow enough that all requests arrive while the first run is still going.
    plugin.write("sleep", "1");
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        &plugin.user_yaml(V1, "interactiveMode: Never"),
    );
    let kp = start_kc(&kc, env_with_path(&[]), |_| {}).await;

    let mut tasks = Vec::new();
    for _ in 0..100 {
        let url = format!("{}/version", kp.url);
        tasks.push(tokio::spawn(async move { get(&url).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        plugin.runs(),
        1,
        "100 concurrent requests share one plugin run"
    );
    for _ in 0..5 {
        assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    }
    assert_eq!(
        plugin.runs(),
        1,
        "no expirationTimestamp: cached for the process lifetime"
    );
    let seen = auths(&api, "/version");
    assert_eq!(seen.len(), 105);
    assert!(seen.iter().all(|a| a == "Bearer token-1"), "{seen:?}");
    kp.stop().await;
}

#[tokio::test]
async fn exec_reruns_once_per_expiry() {
    let api = FakeApi::builder().start().await;
    let plugin = Plugin::new();
    // The first credential is already expired; the second lasts.
    plugin.write("out-1", &token_credential(V1BETA1, "token-1", Some(PAST)));
    plugin.write("out", &token_credential(V1BETA1, "token-2", Some(FUTURE)));
    // v1beta1 without interactiveMode: defaults to IfAvailable.
    let kc = kubeconfig_for(&api, "kc.yaml", &plugin.user_yaml(V1BETA1, ""));
    let kp = start_kc(&kc, env_with_path(&[]), |_| {}).await;
    for _ in 0..6 {
        assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    }
    assert_eq!(plugin.runs(), 2);
    let seen = auths(&api, "/version");
    assert_eq!(
        seen[0], "Bearer token-1",
        "an expired credential still serves the request it ran for"
    );
    assert!(seen[1..].iter().all(|a| a == "Bearer token-2"), "{seen:?}");
    kp.stop().await;
}

#[tokio::test]
async fn exec_reruns_after_401_retries_bodyless_requests_and_never_replays_bodies() {
    let api = FakeApi::builder()
        .route("/api/v1/pods", reject(&["Bearer token-1"]))
        .route("/api/v1/namespaces", reject(&["Bearer token-2"]))
        .start()
        .await;
    let plugin = Plugin::new();
    plugin.write("out-1", &token_credential(V1, "token-1", None));
    plugin.write("out-2", &token_credential(V1, "token-2", None));
    plugin.write("out", &token_credential(V1, "token-3", None));
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        &plugin.user_yaml(V1, "interactiveMode: IfAvailable"),
    );
    let kp = start_kc(&kc, env_with_path(&[]), |_| {}).await;

    // GET: 401 with token-1, plugin re-run, retried once with token-2.
    let (s, _, _) = get(&format!("{}/api/v1/pods", kp.url)).await;
    assert_eq!(s, 200);
    assert_eq!(
        auths(&api, "/api/v1/pods"),
        ["Bearer token-1", "Bearer token-2"]
    );
    assert_eq!(plugin.runs(), 2);

    // POST with a body: 401 with token-2 is relayed, the body is not sent twice.
    let (s, body) = post(
        &format!("{}/api/v1/namespaces", kp.url),
        r#"{"kind":"Namespace"}"#,
    )
    .await;
    assert_eq!(s, 401, "{}", String::from_utf8_lossy(&body));
    assert_eq!(auths(&api, "/api/v1/namespaces"), ["Bearer token-2"]);
    // The next request runs the plugin again and succeeds.
    let (s, _) = post(
        &format!("{}/api/v1/namespaces", kp.url),
        r#"{"kind":"Namespace"}"#,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        auths(&api, "/api/v1/namespaces"),
        ["Bearer token-2", "Bearer token-3"]
    );
    assert_eq!(plugin.runs(), 3);
    kp.stop().await;
}

#[tokio::test]
async fn exec_environment_and_cluster_info() {
    let api = FakeApi::builder().start().await;
    let plugin = Plugin::new();
    plugin.write("out", &token_credential(V1, "t", None));
    let kc = kubeconfig(
        api.pki.dir.path(),
        "kc.yaml",
        &api.url,
        &format!(
            "certificate-authority: {}\nextensions:\n- name: client.authentication.k8s.io/exec\n  extension:\n    audience: kproxy-test",
            api.pki.ca_path.display()
        ),
        &plugin.user_yaml(
            V1,
            "interactiveMode: Never\nprovideClusterInfo: true\ninstallHint: not shown",
        )
        .replace(
            "  env:\n",
            "  env:\n  - name: FROM_KUBECONFIG\n    value: kc-value\n  - name: SHADOWED\n    value: from-kubeconfig\n",
        ),
    );
    let env = env_with_path(&[("FROM_KPROXY", "kproxy-value"), ("SHADOWED", "from-kproxy")]);
    let kp = start_kc(&kc, env, |_| {}).await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);

    let environ = plugin.read("env-1");
    assert!(
        environ.lines().any(|l| l == "FROM_KPROXY=kproxy-value"),
        "{environ}"
    );
    assert!(
        environ.lines().any(|l| l == "FROM_KUBECONFIG=kc-value"),
        "{environ}"
    );
    assert!(
        environ.lines().any(|l| l == "SHADOWED=from-kubeconfig"),
        "kubeconfig env wins: {environ}"
    );
    assert!(
        !environ.contains("HOME="),
        "only kproxy's environment is passed: {environ}"
    );

    let info = json(plugin.read("info-1").as_bytes());
    assert_eq!(info["kind"], "ExecCredential");
    assert_eq!(info["apiVersion"], V1);
    assert_eq!(info["spec"]["interactive"], false);
    let cluster = &info["spec"]["cluster"];
    assert_eq!(cluster["server"], api.url.as_str());
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(cluster["certificate-authority-data"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(ca).unwrap(), api.pki.ca_pem);
    assert_eq!(cluster["config"]["audience"], "kproxy-test");
    kp.stop().await;
}

#[tokio::test]
async fn exec_client_certificate_is_presented_and_rotation_retires_connections() {
    let api = FakeApi::builder().start().await;
    let c1 = api.pki.client("exec-1", "alice", &["dev"]);
    let c2 = api.pki.client("exec-2", "alice", &["dev"]);
    let cred = |c: &Issued, exp: &str| {
        serde_json::json!({"kind": "ExecCredential", "apiVersion": V1, "status": {
            "clientCertificateData": c.cert_pem, "clientKeyData": c.key_pem, "expirationTimestamp": exp}})
        .to_string()
    };
    let plugin = Plugin::new();
    plugin.write("out-1", &cred(&c1, PAST));
    plugin.write("out", &cred(&c2, FUTURE));
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        &plugin.user_yaml(V1, "interactiveMode: Never"),
    );
    let kp = start_kc(&kc, env_with_path(&[]), |_| {}).await;
    for _ in 0..3 {
        assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    }
    let recs = api.recorded();
    assert_eq!(recs[0].peer_cert.as_deref(), Some(&c1.der[..]));
    assert!(
        recs[1..]
            .iter()
            .all(|r| r.peer_cert.as_deref() == Some(&c2.der[..])),
        "the pooled HTTP/2 connection with the old certificate was retired"
    );
    assert!(recs.iter().all(|r| r.header("authorization").is_none()));
    assert_eq!(plugin.runs(), 2);
    assert_eq!(api.connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    kp.stop().await;
}

#[tokio::test]
async fn exec_not_used_when_the_user_has_a_token() {
    let api = FakeApi::builder().start().await;
    let plugin = Plugin::new();
    plugin.write("out", &token_credential(V1, "from-plugin", None));
    let user = format!(
        "token: inline\n{}",
        plugin.user_yaml(V1, "interactiveMode: Never")
    );
    let kc = kubeconfig_for(&api, "kc.yaml", &user);
    let kp = start_kc(&kc, env_with_path(&[]), |_| {}).await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(api.last().header("authorization"), Some("Bearer inline"));
    assert_eq!(plugin.runs(), 0);
    kp.stop().await;
}

#[tokio::test]
async fn exec_missing_command_reports_the_install_hint() {
    let api = FakeApi::builder().start().await;
    let user = "exec:\n  apiVersion: client.authentication.k8s.io/v1beta1\n  command: kproxy-test-no-such-plugin\n  installHint: \"\\e[1mbrew install kproxy-test-plugin\\e[0m\"";
    let kc = kubeconfig_for(&api, "kc.yaml", user);
    let kp = start_kc(&kc, env_with_path(&[]), |_| {}).await;
    let (s, _, body) = get(&format!("{}/api/v1/pods", kp.url)).await;
    let msg = assert_status(s, &body, 401);
    assert!(
        msg.contains("executable kproxy-test-no-such-plugin not found"),
        "{msg}"
    );
    assert!(
        msg.contains("client-go credential plugin that is not installed"),
        "{msg}"
    );
    assert!(
        msg.contains("brew install kproxy-test-plugin") && !msg.contains('\u{1b}'),
        "{msg}"
    );
    assert!(
        api.recorded().is_empty(),
        "no request goes out without its credential"
    );
    kp.stop().await;
}

#[tokio::test]
async fn exec_failures_are_reported_and_other_requests_still_served() {
    let api = FakeApi::builder().start().await;
    let plugin = Plugin::new();
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        &plugin.user_yaml(V1, "interactiveMode: Never"),
    );
    let kp = start_kc(&kc, env_with_path(&[]), |c| {
        c.timing.exec_timeout = Duration::from_secs(1)
    })
    .await;
    let url = format!("{}/api/v1/pods", kp.url);

    // Exit status ≠ 0, even with a credential printed.
    plugin.write("out", &token_credential(V1, "SECRET-exit", None));
    plugin.write("exit", "3");
    let (s, _, body) = get(&url).await;
    let msg = assert_status(s, &body, 401);
    assert!(
        msg.contains("failed with exit code 3") && msg.contains("plugin.sh"),
        "{msg}"
    );
    std::fs::remove_file(plugin.dir.path().join("exit")).unwrap();

    // Malformed ExecCredential: the message gives the position, not the value.
    plugin.write("out", r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":"SECRET-malformed"}"#);
    let (s, _, body) = get(&url).await;
    let msg = assert_status(s, &body, 401);
    assert!(
        msg.contains("decoding stdout") && !msg.contains("SECRET"),
        "{msg}"
    );

    // Wrong apiVersion.
    plugin.write("out", &token_credential(V1BETA1, "SECRET-version", None));
    let (s, _, body) = get(&url).await;
    let msg = assert_status(s, &body, 401);
    assert!(
        msg.contains("plugin returned version client.authentication.k8s.io/v1beta1"),
        "{msg}"
    );

    // A hung plugin times out; meanwhile a request with the client's own credential is served.
    plugin.write("sleep", "30");
    let hung = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let own = Request::get(format!("{}/version", kp.url))
        .header("authorization", "Bearer clients-own")
        .body(full(Bytes::new()))
        .unwrap();
    let (s, _, _) = collect(send(own).await).await;
    assert_eq!(s, 200);
    let (s, _, body) = hung.await.unwrap();
    let msg = assert_status(s, &body, 401);
    assert!(msg.contains("did not finish within 1s"), "{msg}");

    assert!(
        auths(&api, "/api/v1/pods").is_empty(),
        "no request went out with a bad credential"
    );
    kp.stop().await;
}

#[tokio::test]
async fn exec_configuration_errors_fail_at_startup() {
    let api = FakeApi::builder().start().await;
    let plugin = Plugin::new();
    let start = |user: String| {
        let kc = kubeconfig_for(&api, "kc.yaml", &user);
        async move {
            let arg = format!("--kubeconfig={}", kc.display());
            start_with(&[arg.as_str()], MapEnv::default(), |_| {})
                .await
                .err()
                .expect("startup should fail")
                .to_string()
        }
    };
    let e = start(plugin.user_yaml(V1, "")).await;
    assert!(
        e.contains("interactiveMode must be specified for test-user"),
        "{e}"
    );
    let e = start(plugin.user_yaml(
        "client.authentication.k8s.io/v1alpha1",
        "interactiveMode: Never",
    ))
    .await;
    assert!(e.contains("invalid apiVersion"), "{e}");
    let e = start(
        plugin
            .user_yaml(V1, "interactiveMode: Never")
            .replace("- name: PLUGIN_DIR", "- name: \"\""),
    )
    .await;
    assert!(e.contains("env variable name must be specified"), "{e}");
}

#[tokio::test]
async fn exec_always_interactive_needs_a_terminal() {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        return; // run under a terminal: the plugin would get it
    }
    let api = FakeApi::builder().start().await;
    let plugin = Plugin::new();
    plugin.write("out", &token_credential(V1, "t", None));
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        &plugin.user_yaml(V1, "interactiveMode: Always"),
    );
    let kp = start_kc(&kc, env_with_path(&[]), |_| {}).await;
    let (s, _, body) = get(&format!("{}/version", kp.url)).await;
    let msg = assert_status(s, &body, 401);
    assert!(msg.contains("standard input is not a terminal"), "{msg}");
    assert_eq!(plugin.runs(), 0);
    kp.stop().await;
}

/// The real binary, so the plugin's inherited stderr is kproxy's stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_plugin_stderr_reaches_the_user() {
    let api = FakeApi::builder().start().await;
    let plugin = Plugin::new();
    plugin.write("out", &token_credential(V1, "t", None));
    plugin.write(
        "stderr",
        "plugin says: open https://login.example/device and enter ABCD-EFGH",
    );
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        &plugin.user_yaml(V1, "interactiveMode: IfAvailable"),
    );
    let log = plugin.dir.path().join("kproxy.log");
    let mut child = spawn_logged(&kc, &log, &[]);
    let port = wait_port(&log);
    let (s, _, _) = get(&format!("http://127.0.0.1:{port}/version")).await;
    assert_eq!(s, 200);
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("plugin says: open https://login.example/device"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Token files

#[tokio::test]
async fn token_file_rewritten_in_place_is_used_within_the_period() {
    let api = FakeApi::builder().start().await;
    let path = api.pki.write("token", "  first-token\n");
    let kc = kubeconfig_for(&api, "kc.yaml", &format!("tokenFile: {}", path.display()));
    let kp = start_kc(&kc, MapEnv::default(), |c| {
        c.timing.token_file_period = Duration::from_millis(100)
    })
    .await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(
        api.last().header("authorization"),
        Some("Bearer first-token")
    );

    std::fs::write(&path, "second-token\n").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
        if api.last().header("authorization") == Some("Bearer second-token") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rewritten token was never used"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kp.stop().await;
}

#[tokio::test]
async fn token_file_is_cached_then_reread_at_once_after_a_401() {
    let api = FakeApi::builder()
        .route("/api/v1/pods", reject(&["Bearer old"]))
        .start()
        .await;
    let path = api.pki.write("token", "old");
    let kc = kubeconfig_for(&api, "kc.yaml", &format!("tokenFile: {}", path.display()));
    // The default 50 s period: nothing re-reads the file during this test except the 401.
    let kp = start_kc(&kc, MapEnv::default(), |_| {}).await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    std::fs::write(&path, "new").unwrap();
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(
        auths(&api, "/version"),
        ["Bearer old", "Bearer old"],
        "cached within the period"
    );

    let (s, _, _) = get(&format!("{}/api/v1/pods", kp.url)).await;
    assert_eq!(
        s, 200,
        "the 401 was answered by re-reading the file and retrying"
    );
    assert_eq!(auths(&api, "/api/v1/pods"), ["Bearer old", "Bearer new"]);
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(api.last().header("authorization"), Some("Bearer new"));
    kp.stop().await;
}

#[tokio::test]
async fn unreadable_token_file_after_a_401_is_reported_without_the_token() {
    let api = FakeApi::builder()
        .route("/api/v1/pods", reject(&["Bearer SECRET-revoked"]))
        .start()
        .await;
    let path = api.pki.write("token", "SECRET-revoked");
    let kc = kubeconfig_for(&api, "kc.yaml", &format!("tokenFile: {}", path.display()));
    let kp = start_kc(&kc, MapEnv::default(), |_| {}).await;
    std::fs::remove_file(&path).unwrap();
    // Unreadable but not yet known bad: the last good token is kept (client-go).
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    let (s, _, _) = get(&format!("{}/api/v1/pods", kp.url)).await;
    assert_eq!(s, 401);
    let (s, _, body) = get(&format!("{}/api/v1/pods", kp.url)).await;
    let msg = assert_status(s, &body, 401);
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("rejected"),
        "{msg}"
    );
    assert!(!String::from_utf8_lossy(&body).contains("SECRET"));
    // The file comes back: served again.
    std::fs::write(&path, "fresh").unwrap();
    assert_eq!(get(&format!("{}/api/v1/pods", kp.url)).await.0, 200);
    kp.stop().await;
}

#[tokio::test]
async fn in_cluster_token_rotation() {
    let api = FakeApi::builder().start().await;
    let sa = tempfile::tempdir().unwrap();
    std::fs::write(sa.path().join("token"), "sa-token-1\n").unwrap();
    std::fs::write(sa.path().join("ca.crt"), &api.pki.ca_pem).unwrap();
    let env = MapEnv::new([
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
        ("KUBERNETES_SERVICE_PORT", api.addr.port().to_string()),
        ("KPROXY_INCLUSTER_DIR", sa.path().display().to_string()),
    ]);
    let kp = start_with(&[], env, |c| c.timing.token_file_period = Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(
        api.last().header("authorization"),
        Some("Bearer sa-token-1")
    );
    // kubelet rotates the projected token by swapping the file.
    std::fs::write(sa.path().join("token.tmp"), "sa-token-2").unwrap();
    std::fs::rename(sa.path().join("token.tmp"), sa.path().join("token")).unwrap();
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(
        api.last().header("authorization"),
        Some("Bearer sa-token-2")
    );
    kp.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Certificate and CA files

#[tokio::test]
async fn client_certificate_files_reload_and_retire_pooled_connections() {
    let api = FakeApi::builder().start().await;
    let c1 = api.pki.client("files-1", "alice", &[]);
    let c2 = api.pki.client("files-2", "alice", &[]);
    let cert = api.pki.write("client.crt", &c1.cert_pem);
    let key = api.pki.write("client.key", &c1.key_pem);
    let user = format!(
        "client-certificate: {}\nclient-key: {}",
        cert.display(),
        key.display()
    );
    let kc = kubeconfig_for(&api, "kc.yaml", &user);
    let kp = start_kc(&kc, MapEnv::default(), |c| {
        c.timing.file_check_period = Duration::ZERO
    })
    .await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(api.last().peer_cert.as_deref(), Some(&c1.der[..]));

    // A watch in flight on the old connection.
    let watch = send(
        Request::get(format!("{}/api/v1/pods?watch=true", kp.url))
            .body(full(Bytes::new()))
            .unwrap(),
    )
    .await;
    api.next_watch_opened().await;

    // Rotate: a half-written pair (new cert, old key) is not used; the complete pair is.
    std::fs::write(&cert, &c2.cert_pem).unwrap();
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(
        api.last().peer_cert.as_deref(),
        Some(&c1.der[..]),
        "mismatched pair ignored"
    );
    std::fs::write(&key, &c2.key_pem).unwrap();
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(
        api.last().peer_cert.as_deref(),
        Some(&c2.der[..]),
        "new connection, new certificate"
    );
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(api.last().peer_cert.as_deref(), Some(&c2.der[..]));

    // The watch opened before the rotation still streams.
    api.watch_tx
        .send(Bytes::from_static(b"{\"type\":\"ADDED\"}\n"))
        .unwrap();
    let mut body = watch.into_body();
    let frame = tokio::time::timeout(WAIT, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "{\"type\":\"ADDED\"}\n");
    kp.stop().await;
}

#[tokio::test]
async fn certificate_authority_file_reload() {
    let api = FakeApi::builder().start().await;
    let other = Pki::new();
    let ca = api.pki.write("rotating-ca.crt", &other.ca_pem);
    let kc = kubeconfig(
        api.pki.dir.path(),
        "kc.yaml",
        &api.url,
        &format!("certificate-authority: {}", ca.display()),
        "token: t",
    );
    let kp = start_kc(&kc, MapEnv::default(), |c| {
        c.timing.file_check_period = Duration::ZERO
    })
    .await;
    let (s, _, body) = get(&format!("{}/version", kp.url)).await;
    let msg = assert_status(s, &body, s.as_u16());
    assert!(
        s.is_server_error() && msg.contains("invalid peer certificate"),
        "wrong CA: {msg}"
    );
    std::fs::write(&ca, &api.pki.ca_pem).unwrap();
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    kp.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// OIDC

fn oidc_user(issuer: &FakeIssuer, pki: &Pki, id_token: &str, refresh: &str) -> String {
    use base64::Engine as _;
    format!(
        "auth-provider:\n  name: oidc\n  config:\n    client-id: kproxy-client\n    id-token: {id_token}\n    refresh-token: {refresh}\n    idp-issuer-url: {}\n    idp-certificate-authority-data: {}",
        issuer.url,
        base64::engine::general_purpose::STANDARD.encode(&pki.ca_pem)
    )
}

fn provider_config(kc: &std::path::Path) -> std::collections::HashMap<String, String> {
    let text = std::fs::read_to_string(kc).unwrap();
    let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let user = parsed
        .auth_infos
        .iter()
        .find(|u| u.name == "test-user")
        .unwrap();
    user.auth_info
        .as_ref()
        .unwrap()
        .auth_provider
        .as_ref()
        .unwrap()
        .config
        .clone()
}

#[tokio::test]
async fn oidc_expired_id_token_is_refreshed_and_written_back() {
    let api = FakeApi::builder().start().await;
    let issuer = FakeIssuer::start(&api.pki).await;
    let fresh = jwt(3600, "fresh");
    issuer.answer(200, serde_json::json!({"access_token": "a", "token_type": "Bearer", "id_token": fresh, "refresh_token": "refresh-2"}));
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        &oidc_user(&issuer, &api.pki, &jwt(-60, "stale"), "refresh-1"),
    );
    let kp = start_kc(&kc, MapEnv::default(), |_| {}).await;
    for _ in 0..3 {
        assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    }
    assert!(auths(&api, "/version")
        .iter()
        .all(|a| *a == format!("Bearer {fresh}")));
    assert_eq!(*issuer.discoveries.lock().unwrap(), 1);
    let reqs = issuer.token_requests();
    assert_eq!(
        reqs.len(),
        1,
        "one refresh, then the new id-token is cached"
    );
    assert_eq!(reqs[0].form["grant_type"], "refresh_token");
    assert_eq!(reqs[0].form["refresh_token"], "refresh-1");
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("kproxy-client:");
    assert_eq!(
        reqs[0].authorization.as_deref(),
        Some(format!("Basic {basic}").as_str())
    );

    let cfg = provider_config(&kc);
    assert_eq!(cfg["id-token"], fresh, "written back to the kubeconfig");
    assert_eq!(cfg["refresh-token"], "refresh-2");
    assert_eq!(cfg["client-id"], "kproxy-client");
    assert!(!kc.with_extension("yaml.lock").exists());
    kp.stop().await;
}

#[tokio::test]
async fn oidc_valid_id_token_is_sent_without_refresh() {
    let api = FakeApi::builder().start().await;
    let issuer = FakeIssuer::start(&api.pki).await;
    let valid = jwt(3600, "valid");
    let kc = kubeconfig_for(&api, "kc.yaml", &oidc_user(&issuer, &api.pki, &valid, "r"));
    let kp = start_kc(&kc, MapEnv::default(), |_| {}).await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(
        api.last().header("authorization"),
        Some(format!("Bearer {valid}").as_str())
    );
    assert_eq!(*issuer.discoveries.lock().unwrap(), 0);
    kp.stop().await;
}

#[tokio::test]
async fn oidc_refresh_failure_is_reported_without_tokens() {
    let api = FakeApi::builder().start().await;
    let issuer = FakeIssuer::start(&api.pki).await;
    issuer.answer(
        400,
        serde_json::json!({"error": "invalid_grant", "error_description": "refresh token expired"}),
    );
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        &oidc_user(&issuer, &api.pki, &jwt(-60, "stale"), "SECRET-refresh"),
    );
    let kp = start_kc(&kc, MapEnv::default(), |_| {}).await;
    let (s, _, body) = get(&format!("{}/version", kp.url)).await;
    let msg = assert_status(s, &body, 401);
    assert!(
        msg.contains(&issuer.url) && msg.contains("invalid_grant"),
        "{msg}"
    );
    assert!(!msg.contains("SECRET"), "{msg}");
    assert_eq!(
        issuer.token_requests().len(),
        2,
        "header auth, then form auth, as Go's oauth2 auto-detects"
    );
    assert!(api.recorded().is_empty());
    // Another process refreshes into the kubeconfig: picked up instead of failing again.
    let fresh = jwt(3600, "by-kubectl");
    let text = std::fs::read_to_string(&kc).unwrap();
    let stale_line = text
        .lines()
        .find(|l| l.contains("id-token:"))
        .unwrap()
        .to_owned();
    let indent = stale_line.split_once("id-token:").unwrap().0;
    std::fs::write(
        &kc,
        text.replace(&stale_line, &format!("{indent}id-token: {fresh}")),
    )
    .unwrap();
    let (s, _, body) = get(&format!("{}/version", kp.url)).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        api.last().header("authorization"),
        Some(format!("Bearer {fresh}").as_str())
    );
    kp.stop().await;
}

#[tokio::test]
async fn removed_auth_providers_fail_with_kubectls_guidance() {
    let api = FakeApi::builder().start().await;
    for (name, hint) in [
        ("gcp", "gke-gcloud-auth-plugin"),
        ("azure", "https://github.com/Azure/kubelogin"),
    ] {
        let kc = kubeconfig_for(
            &api,
            "kc.yaml",
            &format!("auth-provider:\n  name: {name}\n  config: {{}}"),
        );
        let arg = format!("--kubeconfig={}", kc.display());
        let err = start_with(&[arg.as_str()], MapEnv::default(), |_| {})
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("The {name} auth plugin has been removed."))
                && err.contains(hint),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Secrets never reach logs or error bodies

fn spawn_logged(
    kc: &std::path::Path,
    log: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> std::process::Child {
    let plugin_path = "/usr/local/bin:/usr/bin:/bin";
    std::process::Command::new(kproxy_bin())
        .args([
            format!("--kubeconfig={}", kc.display()),
            "--port=0".into(),
            "-v=9".into(),
        ])
        .env_clear()
        .env("PATH", plugin_path)
        .envs(extra_env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn wait_port(log: &std::path::Path) -> u16 {
    let out = log.with_extension("out");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
            return line.rsplit(':').next().unwrap().trim().parse().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kproxy did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_error_bodies() {
    let api = FakeApi::builder()
        .route("/api/v1/pods", reject(&["Bearer SECRET-exec-1"]))
        .route("/api/v1/services", reject(&["Bearer SECRET-exec-2"]))
        .start()
        .await;
    let plugin = Plugin::new();
    plugin.write("out-1", &token_credential(V1, "SECRET-exec-1", None));
    plugin.write("out-2", &token_credential(V1, "SECRET-exec-2", None));
    plugin.write("out-3", r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":"SECRET-exec-3"}"#);
    plugin.write("out-4", r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":{"token":["SECRET-exec-4"]}}"#);
    plugin.write(
        "out",
        &token_credential(V1, "SECRET-exec-5", Some("not a time")),
    );
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        &plugin.user_yaml(V1, "interactiveMode: Never"),
    );
    let log = plugin.dir.path().join("kproxy.log");
    let mut child = spawn_logged(&kc, &log, &[]);
    let port = wait_port(&log);
    let base = format!("http://127.0.0.1:{port}");
    let mut bodies = Vec::new();
    // Run 1 → 401 → run 2 → retried with the second token.
    bodies.push(get(&format!("{base}/api/v1/pods")).await.2);
    // A 401 to the second token (a POST: relayed, not retried); the next runs all fail.
    bodies.push(post(&format!("{base}/api/v1/services"), "{}").await.1);
    for _ in 0..3 {
        let (s, _, b) = get(&format!("{base}/version")).await;
        assert_eq!(s, 401);
        bodies.push(b);
    }
    assert_eq!(plugin.runs(), 5);
    let _ = child.kill();
    let _ = child.wait();

    // The token file case, through a proxy whose URL holds a password, in a second process.
    let tf_api = FakeApi::builder()
        .route("/api/v1/pods", reject(&["Bearer SECRET-file-1"]))
        .start()
        .await;
    let proxy = FakeProxy::connect(None).await;
    let token = tf_api.pki.write("token", "SECRET-file-1\n");
    let kc2 = kubeconfig(
        tf_api.pki.dir.path(),
        "kc.yaml",
        &tf_api.url,
        &format!(
            "certificate-authority: {}\nproxy-url: http://user:SECRET-proxy@127.0.0.1:{}",
            tf_api.pki.ca_path.display(),
            proxy.addr.port()
        ),
        &format!("tokenFile: {}", token.display()),
    );
    let log2 = plugin.dir.path().join("kproxy2.log");
    let mut child = spawn_logged(&kc2, &log2, &[]);
    let port = wait_port(&log2);
    let base = format!("http://127.0.0.1:{port}");
    std::fs::remove_file(&token).unwrap();
    bodies.push(get(&format!("{base}/api/v1/pods")).await.2);
    bodies.push(get(&format!("{base}/api/v1/pods")).await.2);
    assert_eq!(proxy.seen().len(), 1);
    let _ = child.kill();
    let _ = child.wait();

    // A failing OIDC refresh, in a third process.
    let issuer = FakeIssuer::start(&tf_api.pki).await;
    issuer.answer(400, serde_json::json!({"error": "invalid_grant"}));
    let stale = jwt(-60, "stale");
    let kc3 = kubeconfig_for(
        &tf_api,
        "oidc.yaml",
        &oidc_user(&issuer, &tf_api.pki, &stale, "SECRET-refresh"),
    );
    let log3 = plugin.dir.path().join("kproxy3.log");
    let mut child = spawn_logged(&kc3, &log3, &[]);
    let port = wait_port(&log3);
    let (s, _, b) = get(&format!("http://127.0.0.1:{port}/version")).await;
    assert_eq!(s, 401);
    bodies.push(b);
    let _ = child.kill();
    let _ = child.wait();

    let logs = [&log, &log2, &log3]
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap())
        .collect::<String>();
    assert!(
        logs.contains("exec credential plugin failed") && logs.contains("oidc"),
        "failures are logged: {logs}"
    );
    for line in logs.lines() {
        assert!(
            !line.contains("SECRET") && !line.contains(&stale),
            "a secret reached the log: {line}"
        );
    }
    for b in &bodies {
        let text = String::from_utf8_lossy(b);
        assert!(
            !text.contains("SECRET") && !text.contains(&stale),
            "a secret reached an error body: {text}"
        );
    }
}
