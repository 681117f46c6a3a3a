//! Issue item 10: on SIGINT/SIGTERM kproxy stops accepting, ends watches and other long-running streams
//! at once and cleanly, lets ordinary in-flight requests finish within `--shutdown-grace`, removes its
//! unix socket and exits 0.
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// How long a process may take to exit when only streams are open. The issue asks for "about a
/// second"; the bound leaves room for a loaded CI machine while staying far below the 30 s grace the
/// tests configure, so a kproxy that waited for the streams would fail.
const STREAMS_ONLY_EXIT: Duration = Duration::from_secs(3);

fn spawn(api: &FakeApi, extra: &[&str]) -> KproxyProcess {
    let kc = kubeconfig_for(api, "kc.yaml", "token: t");
    let kc = format!("--kubeconfig={}", kc.display());
    let mut args = vec!["--port=0", kc.as_str()];
    args.extend_from_slice(extra);
    KproxyProcess::spawn(&args, &[])
}

async fn open_watch(url: &str, api: &FakeApi, n: usize) -> hyper::body::Incoming {
    let resp = send(
        Request::get(format!("{url}/api/v1/pods?watch=true&n={n}"))
            .body(full(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    api.next_watch_opened().await;
    resp.into_body()
}

async fn signal_ends_watches(sig: &str) {
    let api = FakeApi::builder().start().await;
    let kp = spawn(&api, &["--shutdown-grace=30s"]);
    let url = kp.url();
    let mut watches = Vec::new();
    for n in 0..3 {
        watches.push(open_watch(&url, &api, n).await);
    }
    api.watch_tx
        .send(Bytes::from_static(b"{\"type\":\"ADDED\"}\n"))
        .unwrap();
    for w in &mut watches {
        let f = tokio::time::timeout(WAIT, w.frame()).await.unwrap();
        assert!(f.is_some());
    }
    let start = Instant::now();
    kp.signal(sig);
    for w in watches {
        // A clean end (terminating chunk), so clients simply re-establish the watch.
        let rest = tokio::time::timeout(WAIT, w.collect())
            .await
            .expect("the watch was not ended")
            .expect("the watch must end cleanly, not be cut");
        assert!(rest.to_bytes().is_empty());
    }
    let (code, _) = kp.wait(WAIT);
    let took = start.elapsed();
    eprintln!("{sig} with 3 watches open: exited in {took:?}");
    assert_eq!(code, 0);
    assert!(took < STREAMS_ONLY_EXIT, "exit took {took:?}");
    for _ in 0..3 {
        assert!(
            api.next_watch_closed(WAIT).await.is_some(),
            "the upstream watches must be cancelled too"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_watches_at_once_and_exits_0() {
    signal_ends_watches("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_watches_at_once_and_exits_0() {
    signal_ends_watches("INT").await;
}

/// A fake API server whose `/api/v1/slow` reports each arrival and answers after `hold`.
async fn slow_api(hold: Duration) -> (FakeApi, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let api = FakeApi::builder()
        .route("/api/v1/slow", move |_, _| {
            let _ = tx.send(());
            async move {
                tokio::time::sleep(hold).await;
                Response::new(full("{\"slow\":true}"))
            }
        })
        .start()
        .await;
    (api, rx)
}

/// Starts a GET of `/api/v1/slow` through `kp` and returns once the API server has it.
async fn slow_get_in_flight(
    kp: &KproxyProcess,
    arrived: &mut mpsc::UnboundedReceiver<()>,
) -> tokio::task::JoinHandle<(http::StatusCode, http::HeaderMap, bytes::Bytes)> {
    let url = format!("{}/api/v1/slow", kp.url());
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::timeout(WAIT, arrived.recv())
        .await
        .expect("the slow request did not arrive");
    in_flight
}

/// Polls until a connection to `port` is refused (the listener has closed), for at most `within`.
async fn listener_closes_within(port: u16, within: Duration) -> bool {
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
async fn grace_lets_an_in_flight_request_finish_while_new_connections_are_refused() {
    let (api, mut arrived) = slow_api(Duration::from_secs(2)).await;
    let kp = spawn(&api, &["--shutdown-grace=20s"]);
    let port = kp.port();
    let in_flight = slow_get_in_flight(&kp, &mut arrived).await;
    let start = Instant::now();
    kp.signal("TERM");
    // The listener closes at once (bounded by the handler's hold).
    assert!(
        listener_closes_within(port, Duration::from_millis(1500)).await,
        "kproxy kept accepting after SIGTERM"
    );
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the in-flight request must complete");
    assert_eq!(json(&body)["slow"], true);
    let (code, _) = kp.wait(WAIT);
    let took = start.elapsed();
    eprintln!("SIGTERM with a 2 s request in flight: exited after {took:?}");
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain_at_once() {
    let (api, mut arrived) = slow_api(Duration::from_secs(120)).await;
    let kp = spawn(&api, &["--shutdown-grace=60s"]);
    let port = kp.port();
    let _in_flight = slow_get_in_flight(&kp, &mut arrived).await;
    kp.signal("TERM");
    // Draining once the listener refuses connections.
    assert!(
        listener_closes_within(port, WAIT).await,
        "kproxy kept accepting after SIGTERM"
    );
    kp.signal("INT");
    let (code, took) = kp.wait(WAIT);
    eprintln!("second signal during a 60 s grace: exited after {took:?}");
    assert_eq!(code, 130, "128 + SIGINT");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_bounds_a_request_that_takes_too_long() {
    let (api, mut arrived) = slow_api(Duration::from_secs(120)).await;
    let kp = spawn(&api, &["--shutdown-grace=1s"]);
    let port = kp.port();
    let in_flight = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /api/v1/slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got)).await;
        got
    });
    tokio::time::timeout(WAIT, arrived.recv()).await.unwrap();
    let start = Instant::now();
    kp.signal("TERM");
    let (code, _) = kp.wait(WAIT);
    let took = start.elapsed();
    eprintln!("SIGTERM with a 120 s request in flight, grace 1 s: exited after {took:?}");
    assert_eq!(code, 0);
    assert!(
        took >= Duration::from_millis(900),
        "grace not honoured: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "grace not enforced: {took:?}"
    );
    let got = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the cut connection was not closed")
        .unwrap();
    assert!(
        got.is_empty(),
        "the cut request must get no answer, got {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn in_process_serve_returns_only_when_connections_are_closed() {
    let (api, mut arrived) = slow_api(Duration::from_secs(120)).await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &["--shutdown-grace=300ms"]).await;
    let stream = tokio::net::TcpStream::connect(kp.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(
        Request::get("/api/v1/slow")
            .header("host", "localhost")
            .body(full(""))
            .unwrap(),
    );
    let resp = tokio::spawn(resp);
    tokio::time::timeout(WAIT, arrived.recv()).await.unwrap();
    let took = kp.stop().await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Once `run` has returned, the connection it was serving is gone, not left running on the runtime.
    let outcome = tokio::time::timeout(WAIT, resp)
        .await
        .expect("the connection outlived kproxy::run")
        .unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    let _ = tokio::time::timeout(WAIT, conn)
        .await
        .expect("connection still open");
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_delay_shutdown() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &["--shutdown-grace=30s"]).await;
    let stream = tokio::net::TcpStream::connect(kp.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/version")
                .header("host", "localhost")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // The connection is now idle and kept alive.
    let took = kp.stop().await;
    eprintln!("stop with an idle keep-alive connection: {took:?}");
    assert!(took < STREAMS_ONLY_EXIT, "{took:?}");
    let closed = tokio::time::timeout(WAIT, conn).await;
    assert!(
        closed.is_ok(),
        "kproxy must close idle connections at shutdown"
    );
}

/// The API server parses `watch` and `follow` as Go booleans: `watch=True` is a watch too, and must be
/// ended at shutdown rather than waited for.
#[tokio::test]
async fn any_go_boolean_spelling_of_watch_is_ended_at_shutdown() {
    let (opened_tx, mut opened) = mpsc::unbounded_channel();
    let api = FakeApi::builder()
        .route("/api/v1/configmaps", move |_, _| {
            let _ = opened_tx.send(());
            async move {
                // A watch that never sends anything and never ends by itself.
                let body = async_stream(|tx| async move { tx.closed().await });
                Response::new(body)
            }
        })
        .start()
        .await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &["--shutdown-grace=30s"]).await;
    let resp = send(
        Request::get(format!("{}/api/v1/configmaps?watch=True", kp.url))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    tokio::time::timeout(WAIT, opened.recv()).await.unwrap();
    let took = kp.stop().await;
    assert!(took < STREAMS_ONLY_EXIT, "waited {took:?} for a watch");
    let rest = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap();
    assert!(rest.is_ok(), "the watch must end cleanly: {rest:?}");
}

/// A script may send SIGTERM the moment it has read the startup line: that must drain, never kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_right_after_the_startup_line_exits_0() {
    let api = FakeApi::builder().start().await;
    for sig in ["TERM", "INT", "TERM", "INT", "TERM"] {
        let kp = spawn(&api, &[]);
        kp.signal(sig);
        assert_eq!(kp.wait(WAIT).0, 0, "SIG{sig} right after startup");
    }
}
