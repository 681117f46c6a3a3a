//! Issue item 7: kubectl's filter. The same regex lists (comma-split, unanchored, case-sensitive), the
//! same matched strings (Host without port, the path after the prefix, the method), a 403 `Status`,
//! exec/attach rejected by default, `//` and `..` redirected before the filter, `--www` outside it, and
//! the IPv6 fix (kubernetes/kubernetes#77496).
mod common;

use common::*;
use http::StatusCode;

async fn proxy(api: &FakeApi, extra: &[&str]) -> Kproxy {
    let kc = kubeconfig_for(api, "kc.yaml", "token: t");
    Kproxy::with_kubeconfig(&kc, extra).await
}

/// Sends `method path` with `Host: host` and returns the status, asserting a 403 is a proper `Status`
/// and that no rejected request reached the server.
async fn try_request(kp: &Kproxy, api: &FakeApi, method: &str, path: &str, host: &str) -> u16 {
    let before = api.count();
    let (status, headers, body) =
        request(method, &format!("{}{path}", kp.url), &[("host", host)], "").await;
    if status == StatusCode::FORBIDDEN {
        let msg = assert_status(status, &body, 403);
        assert_eq!(json(&body)["reason"], "Forbidden");
        assert_eq!(headers["content-type"], "application/json");
        assert!(msg.starts_with("kproxy rejected"), "{msg}");
        assert_eq!(api.count(), before, "a rejected request reached the server");
    } else {
        assert_eq!(api.count(), before + 1, "{method} {path} {host}");
    }
    status.as_u16()
}

#[tokio::test]
async fn default_accept_hosts() {
    let api = FakeApi::builder().start().await;
    let kp = proxy(&api, &[]).await;
    let port = kp.addr.port();
    for (host, want) in [
        ("localhost".to_owned(), 200),
        (format!("localhost:{port}"), 200),
        ("localhost:9".to_owned(), 200),
        (format!("127.0.0.1:{port}"), 200),
        ("[::1]".to_owned(), 200),
        // kubectl answers 403 here (kubernetes/kubernetes#77496); kproxy's documented fix.
        (format!("[::1]:{port}"), 200),
        ("evil.com".to_owned(), 403),
        (format!("evil.com:{port}"), 403),
        ("LOCALHOST".to_owned(), 403),
        ("127.0.0.1.evil.com".to_owned(), 403),
        ("localhost.evil.com".to_owned(), 403),
        ("evillocalhost".to_owned(), 403),
        ("127.0.0.2".to_owned(), 403),
        ("[::2]:80".to_owned(), 403),
    ] {
        assert_eq!(
            try_request(&kp, &api, "GET", "/api/v1/pods", &host).await,
            want,
            "Host: {host}"
        );
    }
    let (_, _, body) = request(
        "GET",
        &format!("{}/api", kp.url),
        &[("host", "evil.com:1234")],
        "",
    )
    .await;
    let msg = json(&body)["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("host \"evil.com\"") && msg.contains("--accept-hosts"),
        "the message names the host without its port and the flag: {msg}"
    );
    kp.stop().await;
}

#[tokio::test]
async fn exec_and_attach_are_rejected_by_default() {
    let api = FakeApi::builder().start().await;
    let kp = proxy(&api, &[]).await;
    for (method, path, want) in [
        ("POST", "/api/v1/namespaces/d/pods/p/exec?command=sh", 403),
        ("GET", "/api/v1/namespaces/d/pods/p/exec", 403),
        ("POST", "/api/v1/namespaces/d/pods/p/attach?stdin=true", 403),
        // The filter sees the decoded path.
        ("POST", "/api/v1/namespaces/d/pods/p/%65xec", 403),
        ("GET", "/api/v1/namespaces/d/pods/p/execfoo", 403),
        ("GET", "/api/v1/namespaces/d/pods/p/portforward", 200),
        ("GET", "/api/v1/namespaces/d/pods/p/proxy/exec", 403),
        ("GET", "/api/v1/nodes/n/proxy/logs", 200),
        ("GET", "/apis/x.io/v1/namespaces/d/pods/p/exec", 200),
        ("GET", "/api/v1/namespaces/d/pods/p/log", 200),
    ] {
        assert_eq!(
            try_request(&kp, &api, method, path, "localhost").await,
            want,
            "{method} {path}"
        );
    }
    let (_, _, body) = request(
        "POST",
        &format!("{}/api/v1/namespaces/d/pods/p/exec", kp.url),
        &[],
        "",
    )
    .await;
    let msg = json(&body)["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("--reject-paths"), "{msg}");
    assert!(
        msg.contains("exec and attach are rejected by default"),
        "{msg}"
    );
    kp.stop().await;
}

#[tokio::test]
async fn dot_segments_and_double_slashes_are_redirected_before_the_filter() {
    let api = FakeApi::builder().start().await;
    let kp = proxy(&api, &[]).await;
    for (path, location) in [
        (
            "//api/v1/namespaces/d/pods/p/exec",
            "/api/v1/namespaces/d/pods/p/exec",
        ),
        (
            "/api/v1/namespaces/d/pods/p/x/../exec?c=1",
            "/api/v1/namespaces/d/pods/p/exec?c=1",
        ),
        (
            "/api/v1/namespaces/d/pods/p/./attach",
            "/api/v1/namespaces/d/pods/p/attach",
        ),
        (
            "/api/v1/namespaces/d/pods/p/x%2F..%2Fexec",
            "/api/v1/namespaces/d/pods/p/exec",
        ),
    ] {
        let (status, headers, _) = get(&format!("{}{path}", kp.url)).await;
        assert_eq!(status, 301, "{path}");
        assert_eq!(headers["location"], location, "{path}");
        assert_eq!(
            try_request(&kp, &api, "GET", location, "localhost").await,
            403,
            "{location}"
        );
    }
    assert_eq!(api.count(), 0);
    kp.stop().await;
}

#[tokio::test]
async fn custom_regex_lists_are_comma_split_unanchored_and_case_sensitive() {
    let api = FakeApi::builder().start().await;
    let kp = proxy(
        &api,
        &[
            "--accept-paths=^/api/v1/namespaces/default/,^/version$",
            "--accept-hosts=example",
            "--reject-methods=POST,PUT",
            "--reject-paths=secrets",
        ],
    )
    .await;
    for (method, path, host, want) in [
        ("GET", "/api/v1/namespaces/default/pods", "example", 200),
        ("GET", "/version", "example", 200),
        ("GET", "/api/v1/pods", "example", 403),
        ("GET", "/version2", "example", 403),
        // Unanchored: any host containing "example".
        ("GET", "/version", "www.example.org:8080", 200),
        ("GET", "/version", "EXAMPLE", 403),
        ("POST", "/api/v1/namespaces/default/pods", "example", 403),
        ("PUT", "/api/v1/namespaces/default/pods/p", "example", 403),
        // Methods are matched as sent: `post` is not `POST`.
        ("post", "/api/v1/namespaces/default/pods", "example", 200),
        ("PATCH", "/api/v1/namespaces/default/pods/p", "example", 200),
        ("GET", "/api/v1/namespaces/default/secrets", "example", 403),
        // The default exec rule is gone when --reject-paths is given.
        (
            "GET",
            "/api/v1/namespaces/default/pods/p/exec",
            "example",
            200,
        ),
    ] {
        assert_eq!(
            try_request(&kp, &api, method, path, host).await,
            want,
            "{method} {path} {host}"
        );
    }
    assert!(api.recorded().iter().any(|r| r.method.as_str() == "post"));
    kp.stop().await;
}

#[tokio::test]
async fn empty_lists_and_disable_filter() {
    let api = FakeApi::builder().start().await;
    // An empty accept list accepts nothing.
    let kp = proxy(&api, &["--accept-hosts="]).await;
    assert_eq!(
        try_request(&kp, &api, "GET", "/version", "localhost").await,
        403
    );
    kp.stop().await;
    let kp = proxy(&api, &["--accept-paths="]).await;
    assert_eq!(
        try_request(&kp, &api, "GET", "/version", "localhost").await,
        403
    );
    kp.stop().await;
    // An empty reject list rejects nothing.
    let kp = proxy(&api, &["--reject-paths="]).await;
    assert_eq!(
        try_request(
            &kp,
            &api,
            "POST",
            "/api/v1/namespaces/d/pods/p/exec",
            "localhost"
        )
        .await,
        200
    );
    kp.stop().await;
    let kp = proxy(&api, &["--disable-filter"]).await;
    assert_eq!(
        try_request(
            &kp,
            &api,
            "POST",
            "/api/v1/namespaces/d/pods/p/exec",
            "evil.com"
        )
        .await,
        200
    );
    kp.stop().await;
    let kp = proxy(&api, &["--disable-filter=false"]).await;
    assert_eq!(
        try_request(&kp, &api, "GET", "/version", "evil.com").await,
        403
    );
    kp.stop().await;
}

#[tokio::test]
async fn the_filter_sees_the_path_after_the_prefix() {
    let api = FakeApi::builder().start().await;
    let kp = proxy(&api, &["--api-prefix=/custom/", "--accept-paths=^/api/"]).await;
    assert_eq!(
        try_request(&kp, &api, "GET", "/custom/api/v1/pods", "localhost").await,
        200
    );
    assert_eq!(
        try_request(&kp, &api, "GET", "/custom/version", "localhost").await,
        403
    );
    assert_eq!(
        try_request(
            &kp,
            &api,
            "POST",
            "/custom/api/v1/namespaces/d/pods/p/exec",
            "localhost"
        )
        .await,
        403
    );
    kp.stop().await;
}

#[tokio::test]
async fn static_files_are_outside_the_filter() {
    let api = FakeApi::builder().start().await;
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "<h1>hi</h1>").unwrap();
    let kp = proxy(&api, &[&format!("--www={}", www.path().display())]).await;
    let (status, _, body) = request(
        "GET",
        &format!("{}/static/index.html", kp.url),
        &[("host", "evil.com")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"<h1>hi</h1>");
    assert_eq!(try_request(&kp, &api, "GET", "/api", "evil.com").await, 403);
    kp.stop().await;
}
