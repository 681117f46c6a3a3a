//! Upgrade tunnels (WebSocket and SPDY/3.1) through kproxy against the fake API server: handshakes,
//! byte-exact transfer both ways, half-close, cancellation, the filter, non-101 answers, h2c offers.
mod common;

use std::time::{Duration, Instant};

use common::streams::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const MIB: usize = 1024 * 1024;

async fn setup(extra: &[&str]) -> (FakeApi, Tunnels, Kproxy) {
    let (builder, tunnels) = echo_routes(FakeApi::builder());
    let api = builder.start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: s3cret");
    let kp = Kproxy::with_kubeconfig(&kc, extra).await;
    (api, tunnels, kp)
}

#[tokio::test]
async fn websocket_101_is_relayed_with_its_headers_over_http1_with_credentials() {
    let (api, tunnels, kp) = setup(&["--as=alice", "--as-group=devs"]).await;
    let (head, s) = raw_upgrade(
        kp.addr,
        "/echo/ws?mode=echo",
        &ws_headers("v5.channel.k8s.io, v4.channel.k8s.io"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(head_header(&head, "upgrade"), Some("websocket"), "{head}");
    assert!(
        head_header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{head}"
    );
    // RFC 6455's example key and its accept value.
    assert_eq!(
        head_header(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    assert_eq!(
        head_header(&head, "sec-websocket-protocol"),
        Some("v5.channel.k8s.io")
    );
    assert_eq!(head_header(&head, "x-fake-upgrade"), Some("yes"));

    let got = exchange(s, b"hello tunnel".to_vec()).await;
    assert_eq!(got, b"hello tunnel");
    let report = tunnels.next().await;
    assert!(report.clean_eof);

    let rec = api
        .recorded()
        .into_iter()
        .find(|r| r.uri.starts_with("/echo/"))
        .unwrap();
    assert_eq!(
        rec.version,
        http::Version::HTTP_11,
        "upgrades must go over HTTP/1.1"
    );
    assert_eq!(rec.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(rec.header("impersonate-user"), Some("alice"));
    assert_eq!(rec.header_all("impersonate-group"), vec!["devs"]);
    assert_eq!(rec.header("upgrade"), Some("websocket"));
    assert_eq!(
        rec.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert_eq!(
        rec.header("sec-websocket-protocol"),
        Some("v5.channel.k8s.io, v4.channel.k8s.io")
    );
    assert_eq!(rec.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        rec.header("host"),
        Some(&*format!("127.0.0.1:{}", api.addr.port()))
    );
    kp.stop().await;
}

#[tokio::test]
async fn websocket_echo_carries_one_mib_each_way_byte_exact() {
    let (_api, tunnels, kp) = setup(&[]).await;
    let (_head, s) = raw_upgrade(
        kp.addr,
        "/echo/ws?mode=echo",
        &ws_headers("portforward.k8s.io"),
    )
    .await;
    let data = pattern(MIB);
    let got = exchange(s, data.clone()).await;
    assert_eq!(got.len(), MIB);
    assert!(got == data, "echoed bytes differ");
    let report = tunnels.next().await;
    assert!(report.received == data, "upstream received different bytes");
    assert!(report.clean_eof);
    kp.stop().await;
}

#[tokio::test]
async fn real_websocket_client_and_server_talk_through_kproxy() {
    let (_api, _tunnels, kp) = setup(&[]).await;
    let mut req = format!("ws://127.0.0.1:{}/ws/echo", kp.addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", hv("v5.channel.k8s.io"));
    req.headers_mut().insert(
        "host",
        format!("localhost:{}", kp.addr.port()).parse().unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(kp.addr).await.unwrap();
    // tungstenite checks Upgrade, Connection and Sec-WebSocket-Accept of the relayed 101.
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, tcp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    let big = pattern(MIB);
    for msg in [
        Message::Binary(big.clone().into()),
        Message::Text("hi".into()),
    ] {
        ws.send(msg.clone()).await.unwrap();
        let echoed = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(echoed == msg);
    }
    ws.close(None).await.unwrap();
    kp.stop().await;
}

#[tokio::test]
async fn spdy_echo_carries_one_mib_each_way_byte_exact() {
    let (api, tunnels, kp) = setup(&[]).await;
    let (head, s) = raw_upgrade(
        kp.addr,
        "/echo/spdy?mode=echo",
        &spdy_headers("v4.channel.k8s.io,v3.channel.k8s.io"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(head_header(&head, "upgrade"), Some("SPDY/3.1"));
    assert_eq!(
        head_header(&head, "x-stream-protocol-version"),
        Some("v4.channel.k8s.io")
    );
    let data: Vec<u8> = pattern(MIB).into_iter().rev().collect();
    let got = exchange(s, data.clone()).await;
    assert!(
        got == data,
        "echoed bytes differ ({} of {})",
        got.len(),
        data.len()
    );
    assert!(tunnels.next().await.received == data);
    let rec = api
        .recorded()
        .into_iter()
        .find(|r| r.uri.starts_with("/echo/"))
        .unwrap();
    assert_eq!(rec.header("upgrade"), Some("SPDY/3.1"));
    assert_eq!(
        rec.header("x-stream-protocol-version"),
        Some("v4.channel.k8s.io,v3.channel.k8s.io")
    );
    kp.stop().await;
}

/// The client half-closes; the upstream sees EOF, and only then sends its answer, which still arrives.
#[tokio::test]
async fn client_half_close_reaches_upstream_and_the_answer_still_flows() {
    let (_api, tunnels, kp) = setup(&[]).await;
    let (_head, s) = raw_upgrade(
        kp.addr,
        "/echo/spdy?mode=after-eof",
        &spdy_headers("portforward.k8s.io"),
    )
    .await;
    let data = pattern(MIB);
    let got = exchange(s, data.clone()).await;
    assert!(
        got == data,
        "answer after half-close differs ({} bytes)",
        got.len()
    );
    let report = tunnels.next().await;
    assert!(report.clean_eof && report.received == data);
    kp.stop().await;
}

/// The upstream half-closes first; the client sees EOF and can still send, and the upstream gets it all.
#[tokio::test]
async fn upstream_half_close_reaches_client_and_the_client_can_still_send() {
    let (_api, tunnels, kp) = setup(&[]).await;
    let (_head, s) = raw_upgrade(
        kp.addr,
        &format!("/echo/ws?mode=server-first&n={MIB}"),
        &ws_headers("v5.channel.k8s.io"),
    )
    .await;
    let (mut r, mut w) = s.into_split();
    let mut first = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(
        first == pattern(MIB),
        "greeting differs ({} bytes)",
        first.len()
    );
    let data: Vec<u8> = pattern(MIB).into_iter().rev().collect();
    w.write_all(&data).await.unwrap();
    w.shutdown().await.unwrap();
    let report = tunnels.next().await;
    assert!(report.clean_eof);
    assert!(
        report.received == data,
        "upstream got {} bytes",
        report.received.len()
    );
    kp.stop().await;
}

#[tokio::test]
async fn client_disconnect_closes_the_upstream_side_of_the_tunnel() {
    let (_api, tunnels, kp) = setup(&[]).await;
    let (_head, mut s) = raw_upgrade(
        kp.addr,
        "/echo/ws?mode=echo",
        &ws_headers("v5.channel.k8s.io"),
    )
    .await;
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    let start = Instant::now();
    drop(s);
    let report = tunnels.next().await;
    eprintln!(
        "tunnel: client disconnect seen upstream after {:?}",
        start.elapsed()
    );
    assert_eq!(report.received, b"ping");
    kp.stop().await;
}

#[tokio::test]
async fn upstream_close_ends_the_client_side_of_the_tunnel() {
    let (_api, tunnels, kp) = setup(&[]).await;
    let (_head, s) = raw_upgrade(
        kp.addr,
        "/echo/ws?mode=server-first&n=10",
        &ws_headers("v5.channel.k8s.io"),
    )
    .await;
    let (mut r, w) = s.into_split();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, pattern(10));
    drop(w);
    assert!(tunnels.next().await.received.is_empty());
    kp.stop().await;
}

#[tokio::test]
async fn exec_and_attach_are_rejected_by_default_with_a_status_that_says_why() {
    let (api, _tunnels, kp) = setup(&[]).await;
    for sub in ["exec?command=ls&stdout=true", "attach?stdout=true"] {
        let path = format!("/api/v1/namespaces/default/pods/web/{sub}");
        let (head, mut s) = raw_upgrade(kp.addr, &path, &ws_headers("v5.channel.k8s.io")).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert_eq!(head_header(&head, "content-type"), Some("application/json"));
        let len: usize = head_header(&head, "content-length")
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        let msg = assert_status(http::StatusCode::FORBIDDEN, &body, 403);
        assert!(msg.contains("--reject-paths"), "{msg}");
        assert!(
            msg.contains("exec and attach are rejected by default"),
            "{msg}"
        );
    }
    assert!(
        api.recorded().iter().all(|r| !r.uri.contains("/pods/web/")),
        "a rejected upgrade must not reach the API server"
    );
    kp.stop().await;
}

#[tokio::test]
async fn reject_paths_and_disable_filter_open_exec_and_portforward_is_allowed_by_default() {
    // The fake API server's exec endpoint upgrades: what matters is that the request got through.
    let api = kube_routes(FakeApi::builder()).start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "");
    for flags in [&["--reject-paths="][..], &["--disable-filter"][..]] {
        let kp = Kproxy::with_kubeconfig(&kc, flags).await;
        let (head, _s) = raw_upgrade(
            kp.addr,
            "/api/v1/namespaces/default/pods/web/exec?command=ls&stdout=true",
            &ws_headers("v5.channel.k8s.io"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{flags:?}: {head}");
        kp.stop().await;
    }
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let (head, _s) = raw_upgrade(
        kp.addr,
        "/api/v1/namespaces/default/pods/web/portforward?ports=80",
        &spdy_headers("portforward.k8s.io"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        head_header(&head, "x-stream-protocol-version"),
        Some("portforward.k8s.io")
    );
    kp.stop().await;
}

#[tokio::test]
async fn a_non_101_answer_is_relayed_with_its_status_and_body() {
    let (_api, _tunnels, kp) = setup(&[]).await;
    for code in [403u16, 200, 404] {
        let (head, mut s) = raw_upgrade(
            kp.addr,
            &format!("/echo/x?status={code}"),
            &ws_headers("v5.channel.k8s.io"),
        )
        .await;
        assert!(head.starts_with(&format!("HTTP/1.1 {code}")), "{head}");
        let len: usize = head_header(&head, "content-length")
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        let v = json(&body);
        assert_eq!(v["message"], "refused by the fake API server", "{v}");
        assert_eq!(v["code"], code);
    }
    kp.stop().await;
}

/// `curl --http2 http://...` offers `Upgrade: h2c` on a plain request: kproxy proxies it normally
/// (kubectl proxy answers `500 invalid upgrade response: status code 200`).
#[tokio::test]
async fn an_h2c_offer_is_proxied_as_a_plain_request_with_its_body() {
    let (api, _tunnels, kp) = setup(&[]).await;
    let mut s = tokio::net::TcpStream::connect(kp.addr).await.unwrap();
    let req = format!(
        "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: localhost:{}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\nhello",
        kp.addr.port()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let rec = api.last();
    assert_eq!(rec.body_len, 5);
    assert_eq!(
        rec.version,
        http::Version::HTTP_2,
        "a plain request uses the pooled h2 client"
    );
    assert!(rec.header("upgrade").is_none() && rec.header("http2-settings").is_none());
    kp.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_tunnels() {
    let (_api, tunnels, mut kp) = setup(&[]).await;
    let (_head, mut s) = raw_upgrade(
        kp.addr,
        "/echo/ws?mode=echo",
        &ws_headers("v5.channel.k8s.io"),
    )
    .await;
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    kp.signal_stop();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("tunnel not ended");
    tunnels
        .within(WAIT)
        .await
        .expect("upstream side not closed");
    kp.join().await;
}

/// An upgrade honours the kubeconfig's `proxy-url` like ordinary requests do: the tunnel is opened with
/// `CONNECT` through the proxy.
#[tokio::test]
async fn upgrade_goes_through_the_upstream_proxy() {
    let (builder, tunnels) = echo_routes(FakeApi::builder());
    let api = builder.start().await;
    let (proxy_addr, mut connects) = connect_proxy().await;
    let kc = kubeconfig(
        api.pki.dir.path(),
        "kc.yaml",
        &api.url,
        &format!(
            "certificate-authority: {}\nproxy-url: http://{proxy_addr}",
            api.pki.ca_path.display()
        ),
        "token: s3cret",
    );
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let (head, s) = raw_upgrade(
        kp.addr,
        "/echo/ws?mode=echo",
        &ws_headers("v5.channel.k8s.io"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(exchange(s, pattern(64 * 1024)).await, pattern(64 * 1024));
    tunnels.next().await;
    let target = tokio::time::timeout(Duration::from_secs(5), connects.recv())
        .await
        .expect("the upgrade did not go through the proxy")
        .unwrap();
    assert_eq!(target, format!("127.0.0.1:{}", api.addr.port()));
    kp.stop().await;
}

/// A minimal HTTP CONNECT proxy; reports each CONNECT target.
async fn connect_proxy() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let _ = tx.send(target.clone());
                let Ok(mut up) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
            });
        }
    });
    (addr, rx)
}
