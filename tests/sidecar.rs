//! kproxy as a native sidecar (an init container with `restartPolicy: Always`,
//! examples/ambassador/pod.yaml), through the real binary and the public surface: its admin listener,
//! its proxy port and signals.
//!
//! What kubelet's ordering implies for kproxy. Start: the app container starts only once the sidecar's
//! startupProbe passes, so the probe must pass as soon as kproxy serves, without waiting on the API
//! server. Stop: kubelet sends SIGTERM to the app first and to the sidecar only after the app has exited,
//! so kproxy must serve the app's last requests (made after the app's own SIGTERM) as usual, and then, on
//! its own SIGTERM, drain what is still in flight and exit without waiting out `--shutdown-grace`: the
//! Pod's `terminationGracePeriodSeconds` is shared, and the sidecar gets what the app left of it.
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// How long the slow request in flight at the sidecar's SIGTERM takes.
const HOLD: Duration = Duration::from_secs(2);

/// A fake API server whose `/api/v1/namespaces/default/configmaps/slow` reports each arrival and
/// answers after [`HOLD`]; everything else is echoed.
async fn api() -> (FakeApi, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let api = FakeApi::builder()
        .route("/api/v1/namespaces/default/configmaps/slow", move |_, _| {
            let _ = tx.send(());
            async move {
                tokio::time::sleep(HOLD).await;
                Response::new(full("{\"kind\":\"ConfigMap\"}"))
            }
        })
        .start()
        .await;
    (api, rx)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// kproxy with the ambassador example's probe listener and a grace far longer than any bound below,
/// so a kproxy that waited out its grace fails.
fn sidecar(api: &FakeApi) -> (KproxyProcess, String) {
    let kc = kubeconfig_for(api, "kc.yaml", "token: t");
    let kc = format!("--kubeconfig={}", kc.display());
    let admin = format!("127.0.0.1:{}", free_port());
    let admin_flag = format!("--admin-address={admin}");
    let kp = KproxyProcess::spawn(&["--port=0", &kc, &admin_flag, "--shutdown-grace=30s"], &[]);
    (kp, format!("http://{admin}"))
}

/// The app container's HTTP client: one keep-alive connection to kproxy, as an HTTP library keeps.
struct App {
    sender: hyper::client::conn::http1::SendRequest<BoxBody>,
    conn: tokio::task::JoinHandle<()>,
}

impl App {
    async fn connect(port: u16) -> App {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        App { sender, conn }
    }

    async fn send(&mut self, method: &str, path: &str) -> Result<StatusCode, String> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(full(Bytes::new()))
            .unwrap();
        // The connection takes the next request only once it has finished with the last response.
        tokio::time::timeout(WAIT, self.sender.ready())
            .await
            .map_err(|_| "the connection never became ready".to_owned())?
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(WAIT, self.sender.send_request(req))
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }

    /// The app's process ends: its connection goes with it.
    async fn exit(self) {
        drop(self.sender);
        tokio::time::timeout(WAIT, self.conn)
            .await
            .expect("the app's connection did not close")
            .unwrap();
    }
}

async fn admin_get(admin: &str, path: &str) -> (StatusCode, String) {
    let (status, _, body) = get(&format!("{admin}{path}")).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls until a connection to `port` is refused, for at most `within`.
async fn refuses_connections_within(port: u16, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_sidecar_order_serves_the_apps_last_requests_then_drains_on_its_own_sigterm() {
    let (api, mut arrived) = api().await;
    let (kp, admin) = sidecar(&api);
    let port = kp.port();

    // Start: the startupProbe (examples/ambassador/pod.yaml) passes as soon as kproxy serves, and asks
    // the API server nothing; only then does kubelet start the app.
    assert_eq!(
        admin_get(&admin, "/readyz?exclude=upstream").await,
        (StatusCode::OK, "ok\n".to_owned())
    );
    assert_eq!(api.count(), 0, "{:?}", api.recorded());
    let mut app = App::connect(port).await;
    assert_eq!(
        app.send("GET", "/api/v1/namespaces/default/pods").await,
        Ok(StatusCode::OK)
    );

    // Pod deletion, step 1: SIGTERM to the app only. Its shutdown handler releases its lease on its
    // open connection and reports on a new one; the sidecar, not yet signalled, serves both.
    let lease = "/apis/coordination.k8s.io/v1/namespaces/default/leases/app";
    assert_eq!(app.send("DELETE", lease).await, Ok(StatusCode::OK));
    let (status, _, _) = request(
        "POST",
        &format!("http://127.0.0.1:{port}/api/v1/namespaces/default/events"),
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    assert!(api
        .recorded()
        .iter()
        .any(|r| r.method == "DELETE" && r.uri == lease));
    assert_eq!(
        admin_get(&admin, "/readyz?exclude=upstream").await.0,
        200,
        "the sidecar stays ready while the app terminates"
    );
    app.exit().await;

    // Step 2, once the app has exited: SIGTERM to the sidecar, here with one request still in flight
    // (another container's, or a read that outlived its client's last call).
    let slow = format!("http://127.0.0.1:{port}/api/v1/namespaces/default/configmaps/slow");
    let in_flight = tokio::spawn(async move { get(&slow).await });
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .expect("the slow request did not reach the API server");
    let signalled = Instant::now();
    kp.signal("TERM");
    assert!(
        refuses_connections_within(port, Duration::from_millis(1500)).await,
        "kproxy kept accepting after its SIGTERM"
    );
    // Draining: not ready in any mode, still alive (kubelet must not restart a draining sidecar).
    let (status, body) = admin_get(&admin, "/readyz?exclude=upstream").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(admin_get(&admin, "/healthz").await.0, 200);
    let (status, _, body) = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the in-flight request did not finish")
        .unwrap();
    assert_eq!(status, 200, "the in-flight request must complete");
    assert_eq!(json(&body)["kind"], "ConfigMap");
    let drained = Instant::now();
    // Then it exits at once: the 30 s grace is an upper bound, not a wait.
    let (code, _) = kp.wait(WAIT);
    let after_drain = drained.elapsed();
    eprintln!(
        "sidecar SIGTERM with a {HOLD:?} request in flight: exited {:?} after the signal, {after_drain:?} after the request ended",
        signalled.elapsed()
    );
    assert_eq!(code, 0);
    assert!(
        after_drain < Duration::from_secs(2),
        "kproxy waited {after_drain:?} after its last request ended"
    );
}

/// The contrast that motivates the native sidecar: as an ordinary container, kproxy gets SIGTERM at the
/// same moment as the app, stops accepting and closes idle connections, and the app's last requests fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalled_with_the_app_as_an_ordinary_container_the_apps_last_requests_fail() {
    let (api, _arrived) = api().await;
    let (kp, _admin) = sidecar(&api);
    let port = kp.port();
    let mut app = App::connect(port).await;
    assert_eq!(
        app.send("GET", "/api/v1/namespaces/default/pods").await,
        Ok(StatusCode::OK)
    );
    let before = api.count();

    kp.signal("TERM");
    assert!(
        refuses_connections_within(port, Duration::from_millis(1500)).await,
        "kproxy kept accepting after its SIGTERM"
    );
    let lease = "/apis/coordination.k8s.io/v1/namespaces/default/leases/app";
    let outcome = app.send("DELETE", lease).await;
    assert!(
        outcome.is_err(),
        "the app's request on its idle connection was served: {outcome:?}"
    );
    assert_eq!(api.count(), before, "{:?}", api.recorded());
    assert_eq!(kp.wait(WAIT).0, 0);
}
