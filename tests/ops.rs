//! Operations (issue #7), through the public surface only: HTTP to the admin listener, access-log lines
//! captured from the real binary's stderr, kubeconfig and in-cluster files rewritten on disk, and signals
//! sent to a real kproxy process. No test sleeps for a poll interval: each polls for the effect, bounded
//! by `WAIT`.
mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use kproxy::env::MapEnv;
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------------
// Helpers

/// kproxy in process with its admin listener, both on 127.0.0.1:0.
struct WithAdmin {
    url: String,
    admin: String,
    kp: Kproxy,
}

impl WithAdmin {
    async fn start(args: &[&str], env: MapEnv) -> WithAdmin {
        let kp = Kproxy::with_admin(args, env).await;
        WithAdmin {
            url: kp.url.clone(),
            admin: kp.admin.clone().unwrap(),
            kp,
        }
    }

    async fn metrics(&self) -> String {
        let (status, headers, body) = get(&format!("{}/metrics", self.admin)).await;
        assert_eq!(status, 200);
        assert_eq!(
            headers["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        String::from_utf8(body.to_vec()).unwrap()
    }

    async fn readyz(&self) -> (StatusCode, String) {
        self.readyz_query("").await
    }

    /// `/readyz?QUERY` (`/readyz` when `query` is empty).
    async fn readyz_query(&self, query: &str) -> (StatusCode, String) {
        let sep = if query.is_empty() { "" } else { "?" };
        let (status, _, body) = get(&format!("{}/readyz{sep}{query}", self.admin)).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn stop(self) {
        self.kp.stop().await;
    }
}

/// The value of the sample `name{labels}` (labels exactly as rendered), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    })
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<BoxBody> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full(Bytes::new())).unwrap()
}

fn write_kubeconfig(path: &Path, api: &FakeApi, user: &str) {
    let dir = path.parent().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    kubeconfig(
        dir,
        name,
        &api.url,
        &format!("certificate-authority: {}", api.pki.ca_path.display()),
        user,
    );
}

/// Replaces `path` atomically, as editors and `kubectl config` do.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The real binary with stdout piped (for the startup line) and stderr written to a file.
struct Proc {
    child: Child,
    port: u16,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut child = Command::new(kproxy_bin())
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim_end()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no startup line ({line:?}); stderr: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        Proc {
            child,
            port,
            stderr,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (off the async runtime) for the exit code, panicking after `within`.
    async fn wait(mut self, within: Duration) -> (i32, Duration, String) {
        let start = Instant::now();
        tokio::task::spawn_blocking(move || loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let stderr = std::fs::read_to_string(&self.stderr).unwrap();
                return (status.code().unwrap_or(-1), start.elapsed(), stderr);
            }
            if start.elapsed() > within {
                let _ = self.child.kill();
                panic!("kproxy did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        })
        .await
        .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------------
// Admin listener: health, metrics, readiness

#[tokio::test]
async fn admin_serves_health_and_counts_requests_by_method_code_and_upstream() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: s3cret");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = WithAdmin::start(&[&kc_flag], MapEnv::default()).await;

    let (status, _, body) = get(&format!("{}/healthz", kp.admin)).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
    let (status, _, _) = get(&format!("{}/nothing", kp.admin)).await;
    assert_eq!(status, 404);

    for _ in 0..3 {
        let (status, _, _) = get(&format!("{}/version", kp.url)).await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = get(&format!("{}/status/404", kp.url)).await;
    assert_eq!(status, 404);
    // Rejected by the default filter: answered by kproxy, so upstream="none".
    let (status, _, _) = get(&format!("{}/api/v1/namespaces/d/pods/p/exec", kp.url)).await;
    assert_eq!(status, 403);
    let post = Request::post(format!("{}/api/v1/namespaces/d/configmaps", kp.url))
        .header("content-type", "application/json")
        .body(full(Bytes::from_static(b"{\"kind\":\"ConfigMap\"}")))
        .unwrap();
    let (status, _, _) = collect(send(post).await).await;
    assert_eq!(status, 200);

    let m = kp.metrics().await;
    let up = &api.url;
    let series = |s: &str| sample(&m, s).unwrap_or_else(|| panic!("no {s} in:\n{m}"));
    assert_eq!(
        series(&format!(
            r#"kproxy_requests_total{{method="GET",code="200",upstream="{up}"}}"#
        )),
        3.0
    );
    assert_eq!(
        series(&format!(
            r#"kproxy_requests_total{{method="GET",code="404",upstream="{up}"}}"#
        )),
        1.0
    );
    assert_eq!(
        series(r#"kproxy_requests_total{method="GET",code="403",upstream="none"}"#),
        1.0
    );
    assert_eq!(
        series(&format!(
            r#"kproxy_requests_total{{method="POST",code="200",upstream="{up}"}}"#
        )),
        1.0
    );
    assert_eq!(
        series(&format!(
            r#"kproxy_request_duration_seconds_count{{method="GET",upstream="{up}"}}"#
        )),
        4.0
    );
    assert_eq!(
        series(&format!(
            r#"kproxy_request_duration_seconds_bucket{{method="GET",upstream="{up}",le="+Inf"}}"#
        )),
        4.0
    );
    assert_eq!(
        series(&format!(
            r#"kproxy_request_body_bytes_total{{upstream="{up}"}}"#
        )),
        20.0
    );
    assert!(
        series(&format!(
            r#"kproxy_response_body_bytes_total{{upstream="{up}"}}"#
        )) > 0.0
    );
    // HTTP/2 to the fake API server: one pooled connection carries everything.
    assert_eq!(
        series(&format!(
            r#"kproxy_upstream_connections_opened_total{{upstream="{up}"}}"#
        )),
        1.0
    );
    assert_eq!(
        series(&format!(
            r#"kproxy_upstream_connections{{upstream="{up}"}}"#
        )),
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = series("kproxy_upstream_last_answer_timestamp_seconds");
    assert!((now - last).abs() < 60.0, "last answer {last}, now {now}");
    assert_eq!(series("kproxy_requests_in_flight"), 0.0);
    assert_eq!(series("kproxy_open_upgrades"), 0.0);
    assert!(series("process_resident_memory_bytes") > 0.0);
    assert!(m.contains("# TYPE kproxy_request_duration_seconds histogram"));
    // The text format never carries credentials.
    assert!(!m.contains("s3cret"));
    kp.stop().await;
}

#[test]
fn admin_address_errors_exit_like_the_proxy_listener() {
    let (code, _, stderr) = run_kproxy(
        &["--server=http://127.0.0.1:1", "--admin-address=9101"],
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("needs a port: use HOST:PORT"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let flag = format!("--admin-address={addr}");
    let (code, stdout, stderr) =
        run_kproxy(&["--server=http://127.0.0.1:1", "--port=0", &flag], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stdout.is_empty(),
        "no startup line before the admin port is bound"
    );
    assert!(
        stderr.contains(&format!("error: listen admin tcp {addr}:")),
        "{stderr}"
    );
}

#[tokio::test]
async fn open_watches_are_a_gauge_and_leave_the_latency_histogram_alone() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = WithAdmin::start(&[&kc_flag], MapEnv::default()).await;

    let watch = send(
        Request::get(format!("{}/api/v1/pods?watch=true", kp.url))
            .body(full(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(watch.status(), 200);
    api.next_watch_opened().await;
    let m = kp.metrics().await;
    assert_eq!(sample(&m, "kproxy_open_watches"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "kproxy_requests_in_flight"), Some(1.0), "{m}");

    // An empty event ends every watch on the fake server.
    api.watch_tx.send(Bytes::new()).unwrap();
    let (status, _, _) = collect(watch).await;
    assert_eq!(status, 200);
    let m = eventually("the watch to be counted as finished", || async {
        let m = kp.metrics().await;
        (sample(&m, "kproxy_open_watches") == Some(0.0)).then_some(m)
    })
    .await;
    assert_eq!(
        sample(
            &m,
            &format!(
                r#"kproxy_requests_total{{method="GET",code="200",upstream="{}"}}"#,
                api.url
            )
        ),
        Some(1.0)
    );
    assert!(
        !m.contains("kproxy_request_duration_seconds_count"),
        "watches stay out of the latency histogram:\n{m}"
    );
    kp.stop().await;
}

#[tokio::test]
async fn readyz_probes_an_idle_upstream_and_fails_when_it_is_unreachable() {
    // Reachable, nothing proxied yet: readyz probes GET /version with the configured credential.
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: probe-token");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = WithAdmin::start(&[&kc_flag], MapEnv::default()).await;
    let (status, body) = kp.readyz().await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    let probe = api.last();
    assert_eq!(probe.uri, "/version");
    assert_eq!(probe.header("authorization"), Some("Bearer probe-token"));
    // The probe's answer counts as a recent answer: no second probe.
    let (status, _) = kp.readyz().await;
    assert_eq!(status, 200);
    assert_eq!(api.recorded().len(), 1);
    kp.stop().await;

    // Unreachable: a port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(
        dir.path(),
        "kc.yaml",
        &format!("https://127.0.0.1:{port}"),
        "insecure-skip-tls-verify: true",
        "token: t",
    );
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = WithAdmin::start(&[&kc_flag], MapEnv::default()).await;
    let (status, body) = kp.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: upstream: no answer from the API server since start, and GET /version failed: cannot reach the API server"),
        "{body}"
    );
    // Liveness is not readiness.
    let (status, _, _) = get(&format!("{}/healthz", kp.admin)).await;
    assert_eq!(status, 200);
    kp.stop().await;
}

/// The native-sidecar readiness: `/readyz?exclude=upstream` follows kproxy's own state only, so an
/// API-server outage does not take the Pod out of its Services, and it costs the API server nothing.
#[tokio::test]
async fn readyz_exclude_upstream_ignores_the_api_server() {
    // Unreachable: the full rule says not ready, the sidecar mode says ready.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(
        dir.path(),
        "kc.yaml",
        &format!("https://127.0.0.1:{port}"),
        "insecure-skip-tls-verify: true",
        "token: t",
    );
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = WithAdmin::start(&[&kc_flag], MapEnv::default()).await;
    let (status, body) = kp.readyz().await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = kp.readyz_query("exclude=upstream").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    // Other parameters (kube-apiserver's `verbose`) are ignored.
    let (status, _) = kp.readyz_query("verbose&exclude=upstream").await;
    assert_eq!(status, 200);
    // A misspelt check is an error naming the valid ones, never a silent full check.
    let (status, _, body) = get(&format!("{}/readyz?exclude=upstrem", kp.admin)).await;
    let msg = assert_status(status, &body, 400);
    assert!(
        msg.contains("\"upstrem\"") && msg.contains("\"upstream\""),
        "{msg}"
    );
    kp.stop().await;

    // Reachable: the sidecar mode sends nothing upstream, where the full rule probes GET /version.
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = WithAdmin::start(&[&kc_flag], MapEnv::default()).await;
    for _ in 0..3 {
        assert_eq!(kp.readyz_query("exclude=upstream").await.0, 200);
    }
    assert_eq!(api.count(), 0, "{:?}", api.recorded());
    assert_eq!(kp.readyz().await.0, 200);
    assert_eq!(api.last().uri, "/version");
    kp.stop().await;
}

#[tokio::test]
async fn readyz_fails_while_the_token_file_cannot_be_refreshed() {
    let api = FakeApi::builder().start().await;
    let token = api.pki.write("token", "first-token\n");
    let kc = kubeconfig_for(&api, "kc.yaml", &format!("tokenFile: {}", token.display()));
    let kc_flag = format!("--kubeconfig={}", kc.display());
    // Polling off: this test is about the credential, not about reloads.
    let kp = WithAdmin::start(&[&kc_flag, "--config-poll-interval=0"], MapEnv::default()).await;
    let (status, _, _) = get(&format!("{}/version", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(kp.readyz().await.0, 200);

    // A 401 for our token makes kproxy re-read the file before the next request; it is gone.
    std::fs::remove_file(&token).unwrap();
    let (status, _, _) = get(&format!("{}/status/401", kp.url)).await;
    assert_eq!(status, 401);
    // The last token was rejected and the file cannot be read: kproxy says so (docs/credentials.md).
    let (status, _, body) = get(&format!("{}/version", kp.url)).await;
    let msg = assert_status(status, &body, 401);
    assert!(msg.contains(&token.display().to_string()), "{msg}");
    let (status, body) = kp.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("credentials:"), "{body}");
    // The sidecar mode keeps the credential check (kproxy's own state); it can be left out too.
    let (status, body) = kp.readyz_query("exclude=upstream").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("credentials:"), "{body}");
    let (status, body) = kp
        .readyz_query("exclude=upstream&exclude=credentials")
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    let m = kp.metrics().await;
    // Two failed re-reads: one for the retry after the 401, one for the next request.
    assert_eq!(
        sample(&m, "kproxy_credential_refresh_failures_total"),
        Some(2.0),
        "{m}"
    );

    // The file comes back: the next refresh succeeds and readiness returns.
    std::fs::write(&token, "second-token\n").unwrap();
    let (status, _, _) = get(&format!("{}/status/401", kp.url)).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&format!("{}/version", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(
        api.last().header("authorization"),
        Some("Bearer second-token")
    );
    let (status, body) = kp.readyz().await;
    assert_eq!(status, 200, "{body}");
    kp.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Access log

/// Sends requests carrying secrets in every place a client or the kubeconfig can put them.
async fn requests_with_secrets(url: &str) -> usize {
    let (status, _, _) = collect(
        send(get_with(
            &format!("{url}/api/v1/namespaces/default/pods?limit=5"),
            &[
                ("authorization", "Bearer secret-xyz"),
                ("impersonate-user", "imp-secret-user"),
                ("impersonate-group", "imp-secret-group"),
                ("cookie", "session=cookie-secret"),
            ],
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = get(&format!("{url}/version?access_token=query-secret&x=1")).await;
    assert_eq!(status, 200);
    let post = Request::post(format!("{url}/api/v1/namespaces/default/secrets"))
        .header("content-type", "application/json")
        .body(full(Bytes::from_static(b"{\"data\":\"body-secret\"}")))
        .unwrap();
    let (status, _, _) = collect(send(post).await).await;
    assert_eq!(status, 200);
    let (status, _, _) = get(&format!("{url}/api/v1/namespaces/d/pods/p/exec")).await;
    assert_eq!(status, 403);
    4
}

const SECRETS: &[&str] = &[
    "secret-xyz",
    "kubeconfig-secret-abc",
    "query-secret",
    "imp-secret",
    "cookie-secret",
    "body-secret",
    "Bearer",
];

#[tokio::test]
async fn access_log_text_has_one_line_per_request_and_no_credential() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: kubeconfig-secret-abc");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    // -v=10: the most verbose diagnostics must not leak anything either.
    let kp = Proc::spawn(&[&kc_flag, "--port=0", "--access-log=text", "-v=10"]);
    let sent = requests_with_secrets(&kp.url()).await;
    kp.signal("TERM");
    let (code, _, stderr) = kp.wait(WAIT).await;
    assert_eq!(code, 0, "{stderr}");

    for s in SECRETS {
        assert!(!stderr.contains(s), "stderr leaks {s:?}:\n{stderr}");
    }
    // `time method target status bytes_in bytes_out duration_ms proto`
    let lines: Vec<Vec<&str>> = stderr
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        // Access-log times have milliseconds (24 characters); tracing's have microseconds.
        .filter(|f| f.len() == 8 && f[0].len() == 24 && f[0].ends_with('Z'))
        .collect();
    assert_eq!(lines.len(), sent, "one line per request:\n{stderr}");
    let pods = &lines[0];
    assert_eq!(pods[1], "GET");
    assert_eq!(pods[2], "/api/v1/namespaces/default/pods?limit=5");
    assert_eq!(pods[3], "200");
    assert_eq!(pods[4], "0");
    assert!(pods[5].parse::<u64>().unwrap() > 0);
    assert!(pods[6].parse::<f64>().is_ok());
    // A LIST is a bulk read: HTTP/1.1 upstream; /version goes over the shared HTTP/2 connection.
    assert_eq!(pods[7], "http/1.1");
    assert_eq!(lines[1][2], "/version?access_token=REDACTED&x=1");
    assert_eq!(lines[1][7], "h2");
    assert_eq!(lines[2][1], "POST");
    assert_eq!(lines[2][4], "22");
    assert_eq!(lines[3][3], "403");
    assert_eq!(lines[3][7], "-", "kproxy answered itself");
    // -v=6 and above: one round-trip line per upstream request, kubectl style.
    assert!(
        stderr.contains(&format!(
            "GET {}/api/v1/namespaces/default/pods?limit=5 200 in ",
            api.url
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn access_log_json_objects_carry_the_fields_and_no_credential() {
    let api = FakeApi::builder().http1_only().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: kubeconfig-secret-abc");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = Proc::spawn(&[&kc_flag, "--port=0", "--access-log=json"]);
    let sent = requests_with_secrets(&kp.url()).await;
    kp.signal("TERM");
    let (code, _, stderr) = kp.wait(WAIT).await;
    assert_eq!(code, 0, "{stderr}");
    for s in SECRETS {
        assert!(!stderr.contains(s), "stderr leaks {s:?}:\n{stderr}");
    }
    let objects: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), sent, "{stderr}");
    let first = &objects[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/api/v1/namespaces/default/pods?limit=5");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_in"], 0);
    assert!(first["bytes_out"].as_u64().unwrap() > 0);
    assert!(first["duration_ms"].as_f64().is_some());
    assert_eq!(first["proto"], "http/1.1");
    assert_eq!(first["upstream"], api.url.as_str());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(objects[3]["status"], 403);
    assert_eq!(objects[3]["proto"], serde_json::Value::Null);
    assert_eq!(objects[3]["upstream"], serde_json::Value::Null);
}

#[tokio::test]
async fn access_log_is_off_by_default() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = Proc::spawn(&[&kc_flag, "--port=0"]);
    let (status, _, _) = get(&format!("{}/version", kp.url())).await;
    assert_eq!(status, 200);
    kp.signal("TERM");
    let (code, _, stderr) = kp.wait(WAIT).await;
    assert_eq!(code, 0);
    assert!(!stderr.contains("/version"), "{stderr}");
}

/// Two contexts on one API server: `a` (current, so also `/`) and `b`.
fn contexts_a_b_on_one_server(dir: &Path, api: &FakeApi) -> PathBuf {
    let path = dir.join("two.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n\
             - name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: u\n  user:\n    token: t\n\
             contexts:\n\
             - name: a\n  context:\n    cluster: c\n    user: u\n\
             - name: b\n  context:\n    cluster: c\n    user: u\n",
            api.url,
            api.pki.ca_path.display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn requests_under_a_cluster_prefix_are_counted_and_logged_with_its_key() {
    // Issue 14 (6): one series per served context even when two contexts share a server, kproxy's own
    // answers under a prefix carry the key too, and an unknown key adds no label value (bounded).
    let api = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = contexts_a_b_on_one_server(dir.path(), &api);
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = WithAdmin::start(&[&kc_flag, "--all-contexts"], MapEnv::default()).await;
    for path in ["/version", "/clusters/b/version", "/clusters/b/version"] {
        let (status, _, _) = get(&format!("{}{path}", kp.url)).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _, _) = get(&format!(
        "{}/clusters/b/api/v1/namespaces/d/pods/p/exec",
        kp.url
    ))
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = get(&format!("{}/clusters/nope/version", kp.url)).await;
    assert_eq!(status, 404);

    let m = kp.metrics().await;
    let up = &api.url;
    let series = |s: &str| sample(&m, s).unwrap_or_else(|| panic!("no {s} in:\n{m}"));
    assert_eq!(
        series(&format!(
            r#"kproxy_requests_total{{method="GET",code="200",upstream="{up}"}}"#
        )),
        1.0
    );
    assert_eq!(
        series(&format!(
            r#"kproxy_requests_total{{method="GET",code="200",cluster="b",upstream="{up}"}}"#
        )),
        2.0
    );
    assert_eq!(
        series(r#"kproxy_requests_total{method="GET",code="403",cluster="b",upstream="none"}"#),
        1.0
    );
    assert_eq!(
        series(r#"kproxy_requests_total{method="GET",code="404",upstream="none"}"#),
        1.0
    );
    assert_eq!(
        series(&format!(
            r#"kproxy_upstream_connections_opened_total{{cluster="b",upstream="{up}"}}"#
        )),
        1.0,
        "b's connections are its own"
    );
    assert!(!m.contains("nope"), "an unknown key became a label:\n{m}");
    assert!(
        !m.contains(r#"cluster="a""#),
        "`a` was only used at /:\n{m}"
    );
    kp.stop().await;

    let kp = Proc::spawn(&[&kc_flag, "--port=0", "--all-contexts", "--access-log=json"]);
    for path in ["/version", "/clusters/b/version"] {
        let (status, _, _) = get(&format!("{}{path}", kp.url())).await;
        assert_eq!(status, 200, "{path}");
    }
    kp.signal("TERM");
    let (code, _, stderr) = kp.wait(WAIT).await;
    assert_eq!(code, 0, "{stderr}");
    let clusters: Vec<(String, serde_json::Value)> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["path"].as_str().unwrap().to_owned(), v["cluster"].clone()))
        .collect();
    assert_eq!(
        clusters,
        [
            ("/version".to_owned(), serde_json::Value::Null),
            ("/clusters/b/version".to_owned(), serde_json::json!("b")),
        ],
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Hot reload

/// A fake API server whose `/slow` answers only once `release` is sent, counting arrivals.
async fn api_with_slow_route(
    name: &'static str,
    release: tokio::sync::watch::Receiver<bool>,
    arrived: Arc<AtomicUsize>,
    http1: bool,
) -> FakeApi {
    let builder = FakeApi::builder();
    let builder = if http1 { builder.http1_only() } else { builder };
    builder
        .route("/slow", move |_req, _rec| {
            let mut release = release.clone();
            arrived.fetch_add(1, Ordering::SeqCst);
            async move {
                let _ = release.wait_for(|r| *r).await;
                Response::builder()
                    .header("content-type", "text/plain")
                    .body(full(format!("answered by {name}")))
                    .unwrap()
            }
        })
        .start()
        .await
}

fn seen_token(api: &FakeApi, token: &str) -> bool {
    let want = format!("Bearer {token}");
    api.recorded()
        .iter()
        .any(|r| r.header("authorization") == Some(want.as_str()))
}

#[tokio::test]
async fn kubeconfig_change_moves_new_requests_while_in_flight_ones_finish_and_broken_files_are_ignored(
) {
    let (release, rx) = tokio::sync::watch::channel(false);
    let arrived = Arc::new(AtomicUsize::new(0));
    let a = api_with_slow_route("a", rx.clone(), arrived.clone(), false).await;
    let b = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    write_kubeconfig(&kc, &a, "token: token-a");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = WithAdmin::start(
        &[&kc_flag, "--config-poll-interval=50ms"],
        MapEnv::default(),
    )
    .await;

    // In flight on the first configuration.
    let slow = tokio::spawn(get_owned(format!("{}/slow", kp.url)));
    eventually("the slow request to reach A", || async {
        (arrived.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    // Point the kubeconfig at B with another token.
    let b_yaml = std::fs::read_to_string({
        let p = dir.path().join("b.yaml");
        write_kubeconfig(&p, &b, "token: token-b");
        p
    })
    .unwrap();
    let reloaded = Instant::now();
    replace_file(&kc, &b_yaml);
    eventually("new requests to reach B", || async {
        let (status, _, _) = get(&format!("{}/version", kp.url)).await;
        assert_eq!(status, 200);
        seen_token(&b, "token-b").then_some(())
    })
    .await;
    eprintln!("reload took effect after {:?}", reloaded.elapsed());
    assert!(!seen_token(&b, "token-a"));

    // The in-flight request finishes on A, with A's credential.
    release.send(true).unwrap();
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"answered by a"[..]));
    assert!(a
        .recorded()
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer token-a")));

    // A broken file is reported and B stays in force.
    replace_file(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters: [ {{{ not yaml\n",
    );
    eventually("the failed reload to be counted", || async {
        let m = kp.metrics().await;
        (sample(&m, "kproxy_config_reload_failures_total") == Some(1.0)).then_some(())
    })
    .await;
    let before = b.recorded().len();
    let (status, _, _) = get(&format!("{}/version", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(b.recorded().len(), before + 1, "B still serves");
    let m = kp.metrics().await;
    assert_eq!(sample(&m, "kproxy_config_reloads_total"), Some(1.0), "{m}");
    // Both API servers have their series.
    assert!(m.contains(&format!(r#"upstream="{}""#, a.url)));
    assert!(m.contains(&format!(r#"upstream="{}""#, b.url)));
    kp.stop().await;
}

fn two_contexts(a: &FakeApi, b: &FakeApi, current: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: {current}\nclusters:\n\
         - name: a\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         - name: b\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         contexts:\n\
         - name: ctx-a\n  context:\n    cluster: a\n    user: u\n\
         - name: ctx-b\n  context:\n    cluster: b\n    user: u\n\
         users:\n- name: u\n  user:\n    token: t\n",
        a.url,
        a.pki.ca_path.display(),
        b.url,
        b.pki.ca_path.display()
    )
}

#[tokio::test]
async fn a_pinned_context_stays_pinned_across_reloads() {
    let a = FakeApi::builder().start().await;
    let b = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::write(&kc, two_contexts(&a, &b, "ctx-a")).unwrap();
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = WithAdmin::start(
        &[&kc_flag, "--context=ctx-a", "--config-poll-interval=50ms"],
        MapEnv::default(),
    )
    .await;
    // `kubectl config use-context ctx-b` elsewhere: the file changes and is reloaded...
    replace_file(&kc, &two_contexts(&a, &b, "ctx-b"));
    eventually("the reload", || async {
        let m = kp.metrics().await;
        assert_eq!(
            sample(&m, "kproxy_config_reload_failures_total"),
            Some(0.0),
            "{m}"
        );
        (sample(&m, "kproxy_config_reloads_total") == Some(1.0)).then_some(())
    })
    .await;
    // ...but --context still wins.
    let (status, _, _) = get(&format!("{}/version", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(a.recorded().len(), 1);
    assert!(b.recorded().is_empty());
    kp.stop().await;
}

async fn get_owned(url: String) -> (StatusCode, Bytes) {
    let (status, _, body) = get(&url).await;
    (status, body)
}

/// The layout kubelet gives a projected service-account volume: the files are symlinks through `..data`,
/// itself a symlink to a timestamped directory, and an update swaps `..data` atomically.
fn project(dir: &Path, generation: u32, token: &str, ca: &Path) {
    let real = dir.join(format!("..2024_01_01_00_00_0{generation}.000"));
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("token"), token).unwrap();
    std::fs::copy(ca, real.join("ca.crt")).unwrap();
    std::fs::write(real.join("namespace"), "default").unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(real.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["token", "ca.crt", "namespace"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[tokio::test]
async fn in_cluster_token_swapped_by_kubelet_is_picked_up_without_waiting_for_a_401() {
    let api = FakeApi::builder().start().await;
    let sa = tempfile::tempdir().unwrap();
    project(sa.path(), 1, "sa-token-1", &api.pki.ca_path);
    let env = MapEnv::new([
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
        ("KUBERNETES_SERVICE_PORT", api.addr.port().to_string()),
        ("KPROXY_INCLUSTER_DIR", sa.path().display().to_string()),
    ]);
    let kp = WithAdmin::start(&["--config-poll-interval=50ms"], env).await;
    let (status, _, _) = get(&format!("{}/version", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(
        api.last().header("authorization"),
        Some("Bearer sa-token-1")
    );

    project(sa.path(), 2, "sa-token-2", &api.pki.ca_path);
    eventually("requests to carry the rotated token", || async {
        let (status, _, _) = get(&format!("{}/version", kp.url)).await;
        assert_eq!(status, 200);
        (api.last().header("authorization") == Some("Bearer sa-token-2")).then_some(())
    })
    .await;
    kp.stop().await;
}

#[tokio::test]
async fn sighup_forces_a_reload_of_the_real_binary() {
    let a = FakeApi::builder().start().await;
    let b = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    write_kubeconfig(&kc, &a, "token: token-a");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    // No polling: only SIGHUP can make kproxy notice.
    let mut kp = Proc::spawn(&[&kc_flag, "--port=0", "--config-poll-interval=0", "-v=2"]);
    let (status, _, _) = get(&format!("{}/version", kp.url())).await;
    assert_eq!(status, 200);

    let b_path = dir.path().join("b.yaml");
    write_kubeconfig(&b_path, &b, "token: token-b");
    replace_file(&kc, &std::fs::read_to_string(&b_path).unwrap());
    let (status, _, _) = get(&format!("{}/version", kp.url())).await;
    assert_eq!(status, 200);
    assert!(
        b.recorded().is_empty(),
        "without polling the change waits for SIGHUP"
    );

    kp.signal("HUP");
    eventually("requests to reach B after SIGHUP", || async {
        let (status, _, _) = get(&format!("{}/version", kp.url())).await;
        assert_eq!(status, 200);
        seen_token(&b, "token-b").then_some(())
    })
    .await;
    assert!(kp.alive(), "SIGHUP must not terminate kproxy");

    // A broken file and SIGHUP: one warning, and B stays in force.
    replace_file(&kc, "clusters: [ {{{ not yaml token: must-not-be-logged\n");
    kp.signal("HUP");
    let stderr_path = kp.stderr.clone();
    eventually("the failed reload to be logged", || {
        let text = std::fs::read_to_string(&stderr_path).unwrap();
        async move { text.contains("configuration reload failed").then_some(()) }
    })
    .await;
    let before = b.recorded().len();
    let (status, _, _) = get(&format!("{}/version", kp.url())).await;
    assert_eq!(status, 200);
    assert_eq!(b.recorded().len(), before + 1, "B still serves");

    kp.signal("TERM");
    let (code, _, stderr) = kp.wait(WAIT).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("reloaded the configuration (SIGHUP)"),
        "{stderr}"
    );
    let failures: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("configuration reload failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{stderr}");
    assert!(
        failures[0].contains(
            "configuration reload failed, keeping the last good configuration: cannot parse kubeconfig"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("must-not-be-logged"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------------
// Graceful shutdown under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_64_requests_and_100_watches_completes_requests_and_ends_watches_cleanly() {
    const REQUESTS: usize = 64;
    const WATCHES: usize = 100;
    let grace = Duration::from_secs(30);
    let (release, rx) = tokio::sync::watch::channel(false);
    let arrived = Arc::new(AtomicUsize::new(0));
    // HTTP/1.1 upstream: one connection per request, so 100 watches cannot starve the 64 requests of
    // HTTP/2 streams (the fake allows 100 per connection).
    let api = api_with_slow_route("api", rx, arrived.clone(), true).await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = Proc::spawn(&[&kc_flag, "--port=0", "--shutdown-grace=30s"]);
    let url = kp.url();

    let mut watches = Vec::new();
    for i in 0..WATCHES {
        let url = format!("{url}/api/v1/namespaces/ns{i}/pods?watch=true");
        watches.push(tokio::spawn(async move {
            let resp = send(Request::get(url).body(full(Bytes::new())).unwrap()).await;
            assert_eq!(resp.status(), 200);
            // Ok only if the chunked body ended with its terminator.
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map(|b| b.to_bytes())
        }));
    }
    for _ in 0..WATCHES {
        api.next_watch_opened().await;
    }
    // Events flow before shutdown.
    api.watch_tx
        .send(Bytes::from_static(b"{\"type\":\"ADDED\"}\n"))
        .unwrap();

    let completed = Arc::new(AtomicUsize::new(0));
    let mut requests = Vec::new();
    for i in 0..REQUESTS {
        let url = format!("{url}/slow/{i}");
        let completed = completed.clone();
        requests.push(tokio::spawn(async move {
            let (status, _, body) = get(&url).await;
            completed.fetch_add(1, Ordering::SeqCst);
            (status, body)
        }));
    }
    eventually("all requests to reach the API server", || async {
        (arrived.load(Ordering::SeqCst) == REQUESTS).then_some(())
    })
    .await;

    let signalled = Instant::now();
    kp.signal("TERM");
    // Every watch ends cleanly while the requests are still being answered.
    for w in watches {
        let body = tokio::time::timeout(WAIT, w)
            .await
            .expect("a watch did not end at shutdown")
            .unwrap()
            .expect("a watch was cut off without its chunked terminator");
        assert_eq!(&body[..], b"{\"type\":\"ADDED\"}\n");
    }
    let watches_ended = signalled.elapsed();
    assert_eq!(
        completed.load(Ordering::SeqCst),
        0,
        "watches must end without waiting for in-flight requests"
    );

    release.send(true).unwrap();
    for r in requests {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"answered by api");
    }
    let (code, took, stderr) = kp.wait(grace).await;
    assert_eq!(code, 0, "{stderr}");
    eprintln!(
        "watches ended {watches_ended:?} after SIGTERM; kproxy exited {:?} after it ({took:?} after the requests were released)",
        signalled.elapsed()
    );
}
