//! Issue item 8: `--www` serves files under `--www-prefix` through tower-http's `ServeDir`, and nothing
//! outside the directory is reachable: not by `..`, not by encoded `..` or `/`, not through symlinks.
mod common;

use common::*;

const SECRET: &str = "TOP-SECRET-OUTSIDE-WWW";

/// `root/www` (served) next to `root/outside/secret.txt` (must stay unreachable).
struct Site {
    root: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let root = tempfile::tempdir().unwrap();
        let www = root.path().join("www");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(www.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(www.join("index.html"), "<h1>index</h1>").unwrap();
        std::fs::write(www.join("app.js"), "console.log(1)").unwrap();
        std::fs::write(www.join("sub/page.txt"), "0123456789").unwrap();
        std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
        std::fs::write(root.path().join("secret.txt"), SECRET).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), www.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(&outside, www.join("leakdir")).unwrap();
        std::os::unix::fs::symlink(www.join("app.js"), www.join("alias.js")).unwrap();
        Site { root }
    }
    fn www(&self) -> String {
        format!("--www={}", self.root.path().join("www").display())
    }
}

async fn start(site: &Site, extra: &[&str]) -> (FakeApi, Kproxy) {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let www = site.www();
    let mut args = vec![www.as_str()];
    args.extend_from_slice(extra);
    let kp = Kproxy::with_kubeconfig(&kc, &args).await;
    (api, kp)
}

async fn raw_get(kp: &Kproxy, path: &str) -> RawResponse {
    raw(
        kp.addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn files_are_served_under_the_prefix() {
    let site = Site::new();
    let (api, kp) = start(&site, &[]).await;
    let r = raw_get(&kp, "/static/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "<h1>index</h1>");
    let r = raw_get(&kp, "/static/app.js").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "console.log(1)");
    assert!(r.header("content-type").unwrap().contains("javascript"));
    let r = raw_get(&kp, "/static/sub").await;
    assert!(
        matches!(r.status, 301 | 307 | 308),
        "a directory without slash redirects: {r:?}"
    );
    assert_eq!(r.header("location"), Some("/static/sub/"));
    let r = raw_get(&kp, "/static/nope.txt").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body_str(), "404 page not found\n");
    // Range requests work.
    let r = raw(
        kp.addr,
        b"GET /static/sub/page.txt HTTP/1.1\r\nHost: localhost\r\nRange: bytes=2-4\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body_str(), "234");
    // A symlink that stays inside the directory is fine.
    let r = raw_get(&kp, "/static/alias.js").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "console.log(1)");
    // The longest prefix wins: /static/ is not proxied even though the api-prefix `/` matches it.
    assert_eq!(api.count(), 0);
    let r = raw_get(&kp, "/api/v1/pods").await;
    assert_eq!(r.status, 200);
    assert_eq!(api.count(), 1);
    kp.stop().await;
}

#[tokio::test]
async fn traversal_attempts_never_reach_outside_files() {
    let site = Site::new();
    let (_api, kp) = start(&site, &[]).await;
    for path in [
        "/static/../secret.txt",
        "/static/../outside/secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E/outside/secret.txt",
        "/static/..%2fsecret.txt",
        "/static/..%2Foutside%2Fsecret.txt",
        "/static/sub/..%2f..%2fsecret.txt",
        "/static/sub%2f..%2f..%2foutside/secret.txt",
        "/static/leak.txt",
        "/static/leakdir/secret.txt",
        "/static/..\\secret.txt",
        "/static/%2e%2e%5csecret.txt",
        "/static//etc/passwd",
        "/static/%00/../secret.txt",
    ] {
        let r = raw_get(&kp, path).await;
        assert!(
            !r.body_str().contains(SECRET),
            "{path} leaked the secret: {r:?}"
        );
        assert!(
            matches!(r.status, 301 | 400 | 404),
            "{path}: unexpected {r:?}"
        );
        // Following a redirect lands on the API (proxied), never on the file system.
        if let Some(location) = r.header("location") {
            assert!(!location.starts_with("/static/.."), "{path} -> {location}");
            let followed = raw_get(&kp, location).await;
            assert!(
                !followed.body_str().contains(SECRET),
                "{path} -> {location}"
            );
        }
    }
    kp.stop().await;
}

#[tokio::test]
async fn custom_prefix_and_no_www() {
    let site = Site::new();
    let (api, kp) = start(&site, &["-P", "/ui"]).await;
    let r = raw_get(&kp, "/ui/app.js").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "console.log(1)");
    let r = raw_get(&kp, "/ui").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/ui/"));
    // /static/ is now just an API path.
    let r = raw_get(&kp, "/static/app.js").await;
    assert_eq!(r.status, 200);
    assert_eq!(api.last().uri, "/static/app.js");
    kp.stop().await;

    // A missing --www directory only warns, as in kubectl; its paths answer 404.
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &["--www=/nonexistent/dir"]).await;
    let r = raw_get(&kp, "/static/app.js").await;
    assert_eq!(r.status, 404);
    kp.stop().await;
}
