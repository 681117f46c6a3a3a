//! Upstream proxies (issue #3): the cluster's `proxy-url` (http, https, socks5) and, without it,
//! `HTTPS_PROXY` / `NO_PROXY` with Go's loopback exemption, for ordinary requests and upgrades alike.
mod common;
mod creds_support;

use bytes::Bytes;
use common::*;
use creds_support::*;
use http::{Request, Response};
use kproxy::env::MapEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A kubeconfig naming the fake API server `kubernetes.test` (only the fake proxies resolve it) and
/// verifying its certificate as `localhost`.
fn remote_kubeconfig(api: &FakeApi, cluster_extra: &str, user: &str) -> std::path::PathBuf {
    kubeconfig(
        api.pki.dir.path(),
        "kc.yaml",
        &format!("https://{REMOTE_HOST}:{}", api.addr.port()),
        &format!(
            "certificate-authority: {}\ntls-server-name: localhost\n{cluster_extra}",
            api.pki.ca_path.display()
        ),
        user,
    )
}

#[tokio::test]
async fn proxy_url_http_connect_with_credentials() {
    let api = FakeApi::builder().start().await;
    let proxy = FakeProxy::connect(None).await;
    let kc = remote_kubeconfig(
        &api,
        &format!(
            "proxy-url: http://proxy%20user:pa%3Ass@127.0.0.1:{}",
            proxy.addr.port()
        ),
        "token: t",
    );
    let kp = start_kc(&kc, MapEnv::default(), |_| {}).await;
    for _ in 0..3 {
        assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    }
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "one tunnel, reused by the pool: {seen:?}");
    assert_eq!(seen[0].target, format!("{REMOTE_HOST}:{}", api.addr.port()));
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("proxy user:pa:ss");
    assert_eq!(
        seen[0].auth.as_deref(),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(api.last().header("authorization"), Some("Bearer t"));
    assert_eq!(
        api.last().version,
        http::Version::HTTP_2,
        "ALPN still negotiates h2 through the tunnel"
    );
    kp.stop().await;
}

#[tokio::test]
async fn proxy_url_https_proxy() {
    let api = FakeApi::builder().start().await;
    // As in Go, the TLS session to the proxy uses the cluster's trust settings.
    let proxy = FakeProxy::connect(Some(&api.pki)).await;
    let kc = remote_kubeconfig(
        &api,
        &format!("proxy-url: https://localhost:{}", proxy.addr.port()),
        "token: t",
    );
    let kp = start_kc(&kc, MapEnv::default(), |_| {}).await;
    let (s, _, body) = get(&format!("{}/version", kp.url)).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(proxy.seen().len(), 1);
    kp.stop().await;
}

#[tokio::test]
async fn proxy_url_socks5_resolves_names_at_the_proxy() {
    let api = FakeApi::builder().start().await;
    let proxy = FakeProxy::socks5().await;
    let kc = remote_kubeconfig(
        &api,
        &format!(
            "proxy-url: socks5://sockuser:sockpass@127.0.0.1:{}",
            proxy.addr.port()
        ),
        "token: t",
    );
    let kp = start_kc(&kc, MapEnv::default(), |_| {}).await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, format!("{REMOTE_HOST}:{}", api.addr.port()));
    assert_eq!(seen[0].auth.as_deref(), Some("sockuser:sockpass"));
    kp.stop().await;
}

#[tokio::test]
async fn proxy_url_is_used_even_for_loopback_servers() {
    let api = FakeApi::builder().start().await;
    let proxy = FakeProxy::connect(None).await;
    let kc = kubeconfig(
        api.pki.dir.path(),
        "kc.yaml",
        &api.url,
        &format!(
            "certificate-authority: {}\nproxy-url: http://127.0.0.1:{}",
            api.pki.ca_path.display(),
            proxy.addr.port()
        ),
        "token: t",
    );
    let kp = start_kc(&kc, MapEnv::default(), |_| {}).await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(proxy.seen().len(), 1);
    kp.stop().await;
}

#[tokio::test]
async fn https_proxy_from_the_environment_with_no_proxy_and_loopback_exemption() {
    let api = FakeApi::builder().start().await;
    let proxy = FakeProxy::connect(None).await;
    let proxy_env = |extra: &[(&str, &str)]| {
        let mut e = MapEnv::new(extra.iter().copied());
        e.set("HTTPS_PROXY", format!("127.0.0.1:{}", proxy.addr.port()));
        e.set("HTTP_PROXY", "http://127.0.0.1:1");
        e
    };

    // A remote-looking server goes through HTTPS_PROXY (scheme defaulted to http://).
    let kc = remote_kubeconfig(&api, "", "token: t");
    let kp = start_kc(&kc, proxy_env(&[]), |_| {}).await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(proxy.seen().len(), 1);
    kp.stop().await;

    // NO_PROXY matches: dialled directly (and the name does not resolve outside the proxy).
    let kp = start_kc(
        &kc,
        proxy_env(&[("no_proxy", "example.org, .test")]),
        |_| {},
    )
    .await;
    let (s, _, body) = get(&format!("{}/version", kp.url)).await;
    let msg = assert_status(s, &body, 503);
    assert!(msg.contains(REMOTE_HOST), "{msg}");
    assert_eq!(proxy.seen().len(), 1, "NO_PROXY bypasses the proxy");
    kp.stop().await;

    // A loopback server is never proxied from the environment.
    let kc = kubeconfig_for(&api, "loopback.yaml", "token: t");
    let kp = start_kc(&kc, proxy_env(&[]), |_| {}).await;
    assert_eq!(get(&format!("{}/version", kp.url)).await.0, 200);
    assert_eq!(proxy.seen().len(), 1, "loopback is exempt");
    kp.stop().await;
}

#[tokio::test]
async fn unusable_proxy_settings_fail_at_startup() {
    let api = FakeApi::builder().start().await;
    let kc = remote_kubeconfig(&api, "", "token: t");
    let arg = format!("--kubeconfig={}", kc.display());
    let env = MapEnv::new([("HTTPS_PROXY", "ftp://user:SECRET@proxy:21")]);
    let err = start_with(&[arg.as_str()], env, |_| {})
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not supported") && !err.contains("SECRET"),
        "{err}"
    );
    let kc = remote_kubeconfig(&api, "proxy-url: socks5h://127.0.0.1:1080", "token: t");
    let arg = format!("--kubeconfig={}", kc.display());
    let err = start_with(&[arg.as_str()], MapEnv::default(), |_| {})
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("proxy-url"), "{err}");
}

/// An upgrade route on the fake API server: answers 101 and echoes the tunnel.
async fn upgrade_echo(req: Request<hyper::body::Incoming>, _rec: Recorded) -> Response<BoxBody> {
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut io = hyper_util::rt::TokioIo::new(up);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .body(full(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn upgrades_use_the_proxy_and_the_refreshed_credential() {
    let api = FakeApi::builder()
        .route(
            "/api/v1/namespaces/default/pods/p/portforward",
            upgrade_echo,
        )
        .start()
        .await;
    let proxy = FakeProxy::connect(None).await;
    let token = api.pki.write("token", "upgrade-token\n");
    let kc = remote_kubeconfig(
        &api,
        &format!("proxy-url: http://127.0.0.1:{}", proxy.addr.port()),
        &format!("tokenFile: {}", token.display()),
    );
    let kp = start_kc(&kc, MapEnv::default(), |_| {}).await;
    let port = kp.url.rsplit(':').next().unwrap();
    let mut conn = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    conn.write_all(
        b"POST /api/v1/namespaces/default/pods/p/portforward HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, conn.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    conn.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(WAIT, conn.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
    let seen = proxy.seen();
    assert_eq!(
        seen.len(),
        1,
        "the upgrade dialled through the proxy: {seen:?}"
    );
    let rec = api.last();
    assert_eq!(rec.header("authorization"), Some("Bearer upgrade-token"));
    drop(conn);
    kp.stop().await;
}
