//! Issue item 5: what reaches the API server and what comes back. Paths and queries byte for byte,
//! every method, bodies, hop-by-hop headers both ways, `X-Forwarded-For`, `User-Agent`, compression,
//! client `Authorization`/`Impersonate-*` precedence, prefixes, `--append-server-path`, HTTP/1.0,
//! `Expect: 100-continue`, absolute-form request lines, and the pooled HTTP/2 upstream client.
mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Frame;

async fn token_proxy(api: &FakeApi, extra: &[&str]) -> Kproxy {
    let kc = kubeconfig_for(api, "kc.yaml", "token: kubeconfig-token");
    Kproxy::with_kubeconfig(&kc, extra).await
}

#[tokio::test]
async fn paths_and_queries_reach_the_server_byte_for_byte() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    for uri in [
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb%2Ctier+in+(a)&limit=5&x=%2F&y",
        "/api/v1/pods?",
        "/api/v1/namespaces/x%2Fy/pods/%7Ename",
        "/apis/apps/v1/deployments?fieldSelector=metadata.name=a&&watch=false",
        "/",
    ] {
        let (status, _, body) = get(&format!("{}{uri}", kp.url)).await;
        assert_eq!(status, 200, "{uri}");
        assert_eq!(json(&body)["uri"], uri);
        assert_eq!(api.last().uri, uri);
    }
    kp.stop().await;
}

#[tokio::test]
async fn every_method_is_forwarded() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    for method in [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "FOO",
    ] {
        let (status, _, _) = request(method, &format!("{}/api/v1/pods", kp.url), &[], "").await;
        assert_eq!(status, 200, "{method}");
        assert_eq!(api.last().method.as_str(), method);
    }
    kp.stop().await;
}

#[tokio::test]
async fn request_bodies_arrive_whole_sized_or_chunked() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    let body = vec![b'x'; 300 * 1024];
    let (status, _, resp) = request(
        "POST",
        &format!("{}/api/v1/namespaces/default/configmaps", kp.url),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json(&resp)["body_len"], 300 * 1024);
    assert_eq!(api.last().header("content-type"), Some("application/json"));

    // Chunked: a body of unknown length, sent in pieces.
    let chunked = async_stream(|tx| async move {
        for _ in 0..10 {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![b'y'; 1000]))))
                .await;
        }
    });
    let resp = send(
        Request::patch(format!("{}/api/v1/namespaces/default/pods/p", kp.url))
            .header("content-type", "application/merge-patch+json")
            .body(chunked)
            .unwrap(),
    )
    .await;
    let (status, _, resp) = collect(resp).await;
    assert_eq!(status, 200);
    assert_eq!(json(&resp)["body_len"], 10_000);
    kp.stop().await;
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed_and_the_rest_forwarded() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    // kproxy's own origin (a page it served): other origins are refused (tests/security.rs).
    let origin = format!("http://localhost:{}", kp.addr.port());
    let (status, _, _) = request(
        "GET",
        &format!("{}/api/v1/pods", kp.url),
        &[
            ("connection", "X-Secret, keep-alive"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eDp5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("trailer", "X-Checksum"),
            ("upgrade", "h2c"),
            ("cookie", "a=b"),
            ("origin", origin.as_str()),
            ("accept", "application/json;as=Table;v=v1;g=meta.k8s.io"),
            ("x-custom", "kept"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-host", "example"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let rec = api.last();
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert_eq!(rec.header(gone), None, "{gone} reached the server");
    }
    for (name, value) in [
        ("cookie", "a=b"),
        ("origin", origin.as_str()),
        ("accept", "application/json;as=Table;v=v1;g=meta.k8s.io"),
        ("x-custom", "kept"),
        ("forwarded", "for=1.2.3.4"),
        ("x-forwarded-host", "example"),
    ] {
        assert_eq!(rec.header(name), Some(value), "{name}");
    }

    // `TE: trailers` is end-to-end in practice (gRPC-style clients) and kept, as Go does.
    request(
        "GET",
        &format!("{}/api/v1/pods", kp.url),
        &[("te", "trailers")],
        "",
    )
    .await;
    assert_eq!(api.last().header("te"), Some("trailers"));
    kp.stop().await;
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    // HTTP/1.1 upstream: HTTP/2 forbids connection-specific headers, so only h1 can send them.
    let api = FakeApi::builder()
        .http1_only()
        .route("/api/v1/hop", |_, _| async {
            Response::builder()
                .header("connection", "X-Up-Secret")
                .header("x-up-secret", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("proxy-connection", "keep-alive")
                .header("trailer", "X-Sum")
                .header("upgrade", "foo")
                .header("x-kept", "yes")
                .header("server", "fake-apiserver")
                .header("content-type", "application/json")
                .body(full("{}"))
                .unwrap()
        })
        .start()
        .await;
    let kp = token_proxy(&api, &[]).await;
    let resp = raw(
        kp.addr,
        b"GET /api/v1/hop HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    for gone in [
        "x-up-secret",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert_eq!(resp.header(gone), None, "{gone} reached the client");
    }
    // kproxy's own `Connection: close` answers the client's; the upstream's value is gone.
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(resp.header("x-kept"), Some("yes"));
    assert_eq!(resp.header("server"), Some("fake-apiserver"));
    assert_eq!(resp.body_str(), "{}");
    kp.stop().await;
}

#[tokio::test]
async fn x_forwarded_for_gets_the_client_address_appended() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    let url = format!("{}/api/v1/pods", kp.url);
    request("GET", &url, &[], "").await;
    assert_eq!(api.last().header_all("x-forwarded-for"), ["127.0.0.1"]);
    request("GET", &url, &[("x-forwarded-for", "10.1.1.1")], "").await;
    assert_eq!(
        api.last().header_all("x-forwarded-for"),
        ["10.1.1.1, 127.0.0.1"]
    );
    request(
        "GET",
        &url,
        &[
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-for", "10.2.2.2"),
        ],
        "",
    )
    .await;
    assert_eq!(
        api.last().header_all("x-forwarded-for"),
        ["10.1.1.1, 10.2.2.2, 127.0.0.1"]
    );
    kp.stop().await;
}

#[tokio::test]
async fn user_agent_kept_or_filled_in_and_no_transparent_gzip() {
    let api = FakeApi::builder()
        .route("/api/v1/gz", |_, _| async {
            Response::builder()
                .header("content-encoding", "gzip")
                .header("content-type", "application/json")
                .body(full(&b"\x1f\x8b not really gzip"[..]))
                .unwrap()
        })
        .start()
        .await;
    let kp = token_proxy(&api, &[]).await;
    let url = format!("{}/api/v1/pods", kp.url);
    request(
        "GET",
        &url,
        &[("user-agent", "kubectl/v1.32.4 (linux/amd64)")],
        "",
    )
    .await;
    let rec = api.last();
    assert_eq!(
        rec.header("user-agent"),
        Some("kubectl/v1.32.4 (linux/amd64)")
    );
    assert_eq!(rec.header("accept-encoding"), None, "kproxy adds no gzip");
    request("GET", &url, &[("accept-encoding", "gzip")], "").await;
    let rec = api.last();
    assert_eq!(
        rec.header("user-agent"),
        Some(concat!("kproxy/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(rec.header("accept-encoding"), Some("gzip"));
    // A compressed answer is relayed untouched, encoding header and all.
    let (status, headers, body) = request(
        "GET",
        &format!("{}/api/v1/gz", kp.url),
        &[("accept-encoding", "gzip")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(&body[..], b"\x1f\x8b not really gzip");
    kp.stop().await;
}

#[tokio::test]
async fn upstream_status_headers_body_and_redirects_pass_through() {
    let api = FakeApi::builder()
        .route("/api/v1/moved", |_, _| async {
            Response::builder()
                .status(302)
                .header("location", "/api/v1/")
                .header("access-control-allow-origin", "*")
                .body(full(""))
                .unwrap()
        })
        .start()
        .await;
    let kp = token_proxy(&api, &[]).await;
    let (status, headers, body) = get(&format!("{}/status/404", kp.url)).await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json(&body)["code"], 404, "the server's own Status");
    let (status, headers, _) = get(&format!("{}/api/v1/moved", kp.url)).await;
    assert_eq!(status, 302, "redirects are not followed");
    assert_eq!(headers["location"], "/api/v1/", "nor rewritten");
    assert_eq!(headers["access-control-allow-origin"], "*");
    kp.stop().await;
}

#[tokio::test]
async fn client_authorization_wins_over_the_kubeconfig_credential() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    let url = format!("{}/api/v1/pods", kp.url);
    request("GET", &url, &[], "").await;
    assert_eq!(
        api.last().header_all("authorization"),
        ["Bearer kubeconfig-token"]
    );
    request("GET", &url, &[("authorization", "Bearer client-token")], "").await;
    assert_eq!(
        api.last().header_all("authorization"),
        ["Bearer client-token"],
        "a client's Authorization is forwarded, as client-go does"
    );
    // client-go treats an empty Authorization as absent and sets its own.
    request("GET", &url, &[("authorization", "")], "").await;
    assert_eq!(
        api.last().header_all("authorization"),
        ["Bearer kubeconfig-token"]
    );
    kp.stop().await;
}

#[tokio::test]
async fn impersonation_follows_client_go_precedence() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        "token: t\nas: jane\nas-uid: \"42\"\nas-groups: [g1, g2]\nas-user-extra:\n  example.com/scope: [read]",
    );
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let url = format!("{}/api/v1/pods", kp.url);
    let imp = |rec: &Recorded| {
        (
            rec.header_all("impersonate-user"),
            rec.header_all("impersonate-uid"),
            rec.header_all("impersonate-group"),
            rec.header_all("impersonate-extra-example.com%2Fscope"),
        )
    };

    request("GET", &url, &[], "").await;
    assert_eq!(
        imp(&api.last()),
        (
            vec!["jane".to_owned()],
            vec!["42".to_owned()],
            vec!["g1".to_owned(), "g2".to_owned()],
            vec!["read".to_owned()]
        )
    );
    // A client Impersonate-User turns the configured impersonation off entirely.
    request("GET", &url, &[("impersonate-user", "bob")], "").await;
    assert_eq!(
        imp(&api.last()),
        (vec!["bob".to_owned()], vec![], vec![], vec![])
    );
    // Without it, configured groups are added to the client's, and user and uid replace the client's.
    request(
        "GET",
        &url,
        &[("impersonate-group", "cg"), ("impersonate-uid", "u1")],
        "",
    )
    .await;
    assert_eq!(
        imp(&api.last()),
        (
            vec!["jane".to_owned()],
            vec!["42".to_owned()],
            vec!["cg".to_owned(), "g1".to_owned(), "g2".to_owned()],
            vec!["read".to_owned()]
        )
    );
    // An empty Impersonate-User counts as absent.
    request("GET", &url, &[("impersonate-user", "")], "").await;
    assert_eq!(imp(&api.last()).0, ["jane"]);
    kp.stop().await;
}

#[tokio::test]
async fn credentials_go_only_to_https_servers_but_impersonation_does_not() {
    let api = FakeApi::builder().http().start().await;
    let kc = kubeconfig(
        api.pki.dir.path(),
        "kc.yaml",
        &api.url,
        "",
        "token: must-not-leak\nas: jane",
    );
    let kp = Kproxy::with_kubeconfig(&kc, &["--as-group=g"]).await;
    let (status, _, _) = get(&format!("{}/api/v1/pods", kp.url)).await;
    assert_eq!(status, 200);
    let rec = api.last();
    assert_eq!(rec.header("authorization"), None);
    // kubectl sends impersonation to http:// servers too (see tests/kubectl_compat.rs).
    assert_eq!(rec.header_all("impersonate-user"), ["jane"]);
    assert_eq!(rec.header_all("impersonate-group"), ["g"]);
    // And the flags on an http:// --server do not change that.
    let kp2 = Kproxy::start(
        &[&format!("--server={}", api.url), "--token=flag-token"],
        kproxy::env::MapEnv::default(),
    )
    .await
    .unwrap();
    get(&format!("{}/api/v1/pods", kp2.url)).await;
    assert_eq!(api.last().header("authorization"), None);
    assert_eq!(
        api.last().header("host"),
        Some(format!("127.0.0.1:{}", api.addr.port()).as_str()),
        "Host is the server's"
    );
    kp.stop().await;
    kp2.stop().await;
}

#[tokio::test]
async fn api_prefix_rules() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &["--api-prefix=/custom/"]).await;
    let (status, _, body) = get(&format!("{}/custom/api/v1/pods?x=1", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["uri"], "/api/v1/pods?x=1");
    let (_, _, body) = get(&format!("{}/custom/", kp.url)).await;
    assert_eq!(json(&body)["uri"], "/");
    // Raw paths are forwarded: kubectl would decode %2F here (a documented deviation).
    let (_, _, body) = get(&format!("{}/custom/api/v1/namespaces/a%2Fb", kp.url)).await;
    assert_eq!(json(&body)["uri"], "/api/v1/namespaces/a%2Fb");
    // `/custom` redirects to the prefix, keeping the query, as Go's ServeMux does.
    let (status, headers, _) = get(&format!("{}/custom?x=1", kp.url)).await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "/custom/?x=1");
    let (status, _, body) = get(&format!("{}/api/v1/pods", kp.url)).await;
    let msg = assert_status(status, &body, 404);
    assert!(msg.contains("/api/v1/pods"), "{msg}");
    kp.stop().await;

    // No leading slash: kproxy adds one (kubectl 404s everything).
    let kp = token_proxy(&api, &["--api-prefix=k8s"]).await;
    let (status, _, body) = get(&format!("{}/k8s/api/v1/pods", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["uri"], "/api/v1/pods");
    kp.stop().await;

    // kubectl's quirk: a prefix starting with /api is never stripped.
    let kp = token_proxy(&api, &["--api-prefix=/api/"]).await;
    let (status, _, body) = get(&format!("{}/api/v1/pods", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["uri"], "/api/v1/pods");
    let (status, _, body) = get(&format!("{}/apis/apps/v1", kp.url)).await;
    assert_status(status, &body, 404);
    kp.stop().await;
}

#[tokio::test]
async fn server_path_is_appended_only_with_the_flag() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig(
        api.pki.dir.path(),
        "kc.yaml",
        &format!("{}/k8s/clusters/c-1?ignored=1", api.url),
        &format!("certificate-authority: {}", api.ca_path.display()),
        "token: t",
    );
    let kp = Kproxy::with_kubeconfig(&kc, &["--append-server-path"]).await;
    let (_, _, body) = get(&format!("{}/api/v1/pods?w=1", kp.url)).await;
    assert_eq!(json(&body)["uri"], "/k8s/clusters/c-1/api/v1/pods?w=1");
    kp.stop().await;
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let (_, _, body) = get(&format!("{}/api/v1/pods?w=1", kp.url)).await;
    assert_eq!(json(&body)["uri"], "/api/v1/pods?w=1");
    kp.stop().await;
}

#[tokio::test]
async fn upstream_client_negotiates_h2_and_reuses_one_connection() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    let url = format!("{}/api/v1/namespaces/default/pods/p", kp.url);
    // A burst of first requests, before any connection exists, dials once and waits for it.
    let concurrent: Vec<_> = (0..10).map(|_| get(&url)).collect();
    for (status, _, _) in futures_util::future::join_all(concurrent).await {
        assert_eq!(status, 200);
    }
    for _ in 0..5 {
        assert_eq!(get(&url).await.0, 200);
    }
    assert!(api.recorded().iter().all(|r| r.version == Version::HTTP_2));
    // The fake server follows the client's cipher order; kproxy offers AES-128-GCM first, as client-go
    // does (tests/kubectl_compat.rs compares the two).
    assert!(api
        .recorded()
        .iter()
        .all(|r| r.cipher_suite.as_deref() == Some("TLS13_AES_128_GCM_SHA256")));
    assert_eq!(
        api.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "15 requests should share one HTTP/2 connection"
    );
    kp.stop().await;
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    let url = format!("{}/api/v1/namespaces/default/pods/p", kp.url);
    assert_eq!(get(&url).await.0, 200);
    // GOAWAY, as an API server sends when it stops or rebalances (`--goaway-chance`).
    api.close_connections();
    api.connections_ended(1, WAIT).await;
    for _ in 0..3 {
        assert_eq!(get(&url).await.0, 200);
    }
    assert_eq!(api.last().version, Version::HTTP_2);
    assert_eq!(
        api.connections.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one new connection for the three requests after the first closed"
    );
    kp.stop().await;
}

#[tokio::test]
async fn bulk_reads_use_pooled_http1_connections_and_the_rest_http2() {
    const BIG: usize = 3 * 1024 * 1024 + 7;
    let api = FakeApi::builder()
        .route("/api/v1/namespaces/big/configmaps", |_, _| async {
            Response::builder()
                .header("content-type", "application/json")
                .body(full(pattern(BIG)))
                .unwrap()
        })
        .start()
        .await;
    let kp = token_proxy(&api, &[]).await;
    let version_of = |path: &str| {
        let rec = api
            .recorded()
            .into_iter()
            .rev()
            .find(|r| r.uri == path)
            .unwrap_or_else(|| panic!("{path} did not reach the server"));
        rec.version
    };
    // Bulk reads: LISTs, logs, OpenAPI documents.
    for path in [
        "/api/v1/pods",
        "/api/v1/namespaces/default/pods?limit=500",
        "/apis/apps/v1/deployments",
        "/api/v1/namespaces/default/pods/p/log?container=c",
        "/openapi/v2",
    ] {
        assert_eq!(get(&format!("{}{path}", kp.url)).await.0, 200, "{path}");
        assert_eq!(version_of(path), Version::HTTP_11, "{path}");
    }
    // Everything else: single objects, discovery, writes.
    for path in ["/api/v1/namespaces/default/pods/p", "/api/v1", "/version"] {
        assert_eq!(get(&format!("{}{path}", kp.url)).await.0, 200, "{path}");
        assert_eq!(version_of(path), Version::HTTP_2, "{path}");
    }
    let post = Request::post(format!("{}/api/v1/namespaces/default/pods", kp.url))
        .body(full("{}"))
        .unwrap();
    assert_eq!(send(post).await.status(), 200);
    assert_eq!(
        api.last().version,
        Version::HTTP_2,
        "a POST to a collection"
    );
    // The eight sequential bulk and ordinary requests above used one connection of each kind.
    assert_eq!(api.connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Concurrent LISTs each get a connection and arrive whole.
    let url = format!("{}/api/v1/namespaces/big/configmaps", kp.url);
    let lists: Vec<_> = (0..3).map(|_| get(&url)).collect();
    for (status, _, body) in futures_util::future::join_all(lists).await {
        assert_eq!(status, 200);
        assert_eq!(body.len(), BIG);
        assert!(body[..] == pattern(BIG)[..], "LIST body corrupted");
    }
    assert_eq!(
        version_of("/api/v1/namespaces/big/configmaps"),
        Version::HTTP_11
    );
    kp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_reads_past_the_bound_share_the_http2_connection() {
    use kproxy::internals::BULK_CONNECTIONS;
    let n = BULK_CONNECTIONS + 4;
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let api = FakeApi::builder()
        .route("/api/v1/namespaces/held/pods", move |_, _| {
            let _ = arrived_tx.send(());
            let mut release = release.clone();
            async move {
                let _ = release.wait_for(|go| *go).await;
                Response::new(full("{\"items\":[]}"))
            }
        })
        .start()
        .await;
    let kp = token_proxy(&api, &[]).await;
    let url = format!("{}/api/v1/namespaces/held/pods", kp.url);
    let lists: Vec<_> = (0..n)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for _ in 0..n {
        tokio::time::timeout(WAIT, arrived.recv())
            .await
            .expect("a LIST did not reach the server");
    }
    let versions: Vec<Version> = api
        .recorded()
        .iter()
        .filter(|r| r.uri.starts_with("/api/v1/namespaces/held/"))
        .map(|r| r.version)
        .collect();
    let h1 = versions.iter().filter(|v| **v == Version::HTTP_11).count();
    assert_eq!(h1, BULK_CONNECTIONS, "{versions:?}");
    assert_eq!(n - h1, 4, "the rest over HTTP/2: {versions:?}");
    assert_eq!(
        api.connections.load(std::sync::atomic::Ordering::SeqCst),
        BULK_CONNECTIONS + 1
    );
    release_tx.send(true).unwrap();
    for list in lists {
        assert_eq!(list.await.unwrap().0, 200);
    }
    // The places are freed with the bodies: the next LIST goes over a pooled HTTP/1.1 connection.
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(api.last().version, Version::HTTP_11);
    assert_eq!(
        api.connections.load(std::sync::atomic::Ordering::SeqCst),
        BULK_CONNECTIONS + 1,
        "no new connection"
    );
    kp.stop().await;
}

#[tokio::test]
async fn http1_upstream_connections_are_pooled() {
    let api = FakeApi::builder().http1_only().start().await;
    let kp = token_proxy(&api, &[]).await;
    // Ordinary requests first: the connection that finds the server speaks only HTTP/1.1 is not
    // wasted but becomes the pool's first.
    for path in [
        "/version",
        "/api/v1/namespaces/default/pods/p",
        "/api/v1/pods",
    ] {
        for _ in 0..4 {
            assert_eq!(get(&format!("{}{path}", kp.url)).await.0, 200, "{path}");
        }
    }
    assert!(api.recorded().iter().all(|r| r.version == Version::HTTP_11));
    assert_eq!(
        api.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "sequential requests should reuse one keep-alive connection"
    );
    kp.stop().await;
}

#[tokio::test]
async fn http10_clients_are_served() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    let resp = raw(kp.addr, b"GET /version HTTP/1.0\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(json(&resp.body)["gitVersion"], "v1.37.0-fake");
    // A body of unknown length reaches an HTTP/1.0 client close-delimited, never chunked.
    let watch = tokio::spawn({
        let addr = kp.addr;
        async move {
            raw(
                addr,
                b"GET /api/v1/pods?watch=true HTTP/1.0\r\nHost: localhost\r\n\r\n",
            )
            .await
        }
    });
    api.next_watch_opened().await;
    api.watch_tx
        .send(Bytes::from_static(b"{\"type\":\"ADDED\"}\n"))
        .unwrap();
    api.watch_tx.send(Bytes::new()).unwrap();
    let resp = watch.await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(resp.body_str(), "{\"type\":\"ADDED\"}\n");
    kp.stop().await;
}

#[tokio::test]
async fn expect_100_continue_is_honoured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    let mut s = tokio::net::TcpStream::connect(kp.addr).await.unwrap();
    s.write_all(b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(WAIT, s.read_exact(&mut interim))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let resp = parse_response(&out);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(json(&resp.body)["body_len"], 5);
    kp.stop().await;
}

#[tokio::test]
async fn absolute_form_request_lines_use_their_authority() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    // As in kubectl, the authority of an absolute-form request line is the host the filter checks.
    let resp = raw(
        kp.addr,
        b"GET http://localhost/api/v1/pods?x=1 HTTP/1.1\r\nHost: evil.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(api.last().uri, "/api/v1/pods?x=1");
    let resp = raw(
        kp.addr,
        b"GET http://evil.com/api/v1/pods HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    kp.stop().await;
}

#[tokio::test]
async fn head_and_empty_bodies_keep_their_framing() {
    let api = FakeApi::builder().start().await;
    let kp = token_proxy(&api, &[]).await;
    let resp = raw(
        kp.addr,
        b"HEAD /bytes/1234 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("1234"));
    assert!(resp.body.is_empty());
    assert_eq!(api.last().method, Method::HEAD);
    let resp = send(
        Request::get(format!("{}/bytes/0", kp.url))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    kp.stop().await;
}

/// kproxy in front of an HTTP/2 server (TLS, ALPN `h2`) that resets the first `refuse` streams with
/// `REFUSED_STREAM` and answers the rest with `200 ok`; with the count of streams the server answered.
async fn behind_a_refusing_server(
    refuse: usize,
) -> (Kproxy, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let pki = Arc::new(Pki::new());
    let cfg = tls_server_config(&pki, "apiserver", &[b"h2"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let counted = answered.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen, answered) = (acceptor.clone(), seen.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    let mut body = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap();
                    let _ = body.send_data(Bytes::from_static(b"ok"), true);
                }
            });
        }
    });
    let kc = kubeconfig(
        pki.dir.path(),
        "kc.yaml",
        &url,
        &format!("certificate-authority: {}", pki.ca_path.display()),
        "token: t",
    );
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    // The CA file stays while kproxy runs (it watches it for changes).
    tokio::spawn(async move {
        let _pki = pki;
        std::future::pending::<()>().await
    });
    (kp, answered)
}

#[tokio::test]
async fn a_stream_the_server_refused_unprocessed_is_sent_again() {
    use std::sync::atomic::Ordering;
    let (kp, answered) = behind_a_refusing_server(1).await;
    // The server refuses the first stream (RFC 9113 §8.7: not processed); Go's transport, and so kubectl
    // proxy, sends such a request again, and so does kproxy for a request without a body.
    let (status, _, body) = get(&format!("{}/api/v1/namespaces/default/pods/p", kp.url)).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(&body[..], b"ok");
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    kp.stop().await;

    // Nor is the method what matters: a bodyless DELETE is sent again too, as Go's transport does for
    // any request without a body.
    let (kp, answered) = behind_a_refusing_server(1).await;
    let delete = Request::delete(format!("{}/api/v1/namespaces/default/pods/p", kp.url))
        .body(full(""))
        .unwrap();
    let (status, _, body) = collect(send(delete).await).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    kp.stop().await;

    // A request with a body is not sent twice (kproxy does not keep bodies): its refusal is the
    // client's 502, as with kubectl proxy, whose Go transport cannot rewind a proxied body either.
    let (kp, answered) = behind_a_refusing_server(1).await;
    let post = Request::post(format!("{}/api/v1/namespaces/default/pods", kp.url))
        .body(full("{}"))
        .unwrap();
    let resp = send(post).await;
    let (status, _, body) = collect(resp).await;
    assert_status(status, &body, 502);
    assert_eq!(answered.load(Ordering::SeqCst), 0);
    kp.stop().await;
}
