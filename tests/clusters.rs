//! Many contexts behind one port (issue 14): `--all-contexts` / `--contexts` serve each kubeconfig
//! context at `/clusters/<key>/…` with its own credentials and connections, `GET /clusters` lists them,
//! `/` keeps serving the default context. Two fake API servers, each with its own CA and token.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::streams::*;
use common::*;
use kproxy::env::MapEnv;

const ARN: &str = "arn:aws:eks:eu-west-1:123456789012:cluster/b";

/// A kubeconfig with contexts `a` (current, namespace ns-a) and, unless `only_a`, the ARN one for `b`
/// (its own CA and token, and it impersonates bob), `down` (nothing listens) and `broken` (its CA file
/// is missing).
fn kubeconfig_ab(a: &FakeApi, b: &FakeApi, only_a: bool) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n\
         - name: ca\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         - name: cb\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         - name: cdown\n  cluster:\n    server: https://127.0.0.1:1\n    certificate-authority: {}\n\
         - name: cbroken\n  cluster:\n    server: {}\n    certificate-authority: /nonexistent/kproxy-ca.crt\n\
         users:\n\
         - name: ua\n  user:\n    token: token-a\n\
         - name: ub\n  user:\n    token: token-b\n    as: bob\n\
         contexts:\n\
         - name: a\n  context:\n    cluster: ca\n    user: ua\n    namespace: ns-a\n",
        a.url,
        a.ca_path.display(),
        b.url,
        b.ca_path.display(),
        a.ca_path.display(),
        a.url,
    );
    if !only_a {
        s.push_str(&format!(
            "- name: \"{ARN}\"\n  context:\n    cluster: cb\n    user: ub\n\
             - name: down\n  context:\n    cluster: cdown\n    user: ua\n\
             - name: broken\n  context:\n    cluster: cbroken\n    user: ua\n"
        ));
    }
    s
}

struct Bed {
    a: FakeApi,
    b: FakeApi,
    b_tunnels: Tunnels,
    kp: Kproxy,
    _dir: tempfile::TempDir,
}

async fn bed(extra: &[&str]) -> Bed {
    // The service proxy's redirect of `…/proxy` to `…/proxy/`, and one to elsewhere.
    let a = FakeApi::builder()
        .route("/api/v1/namespaces/x/services/s/proxy", |_, _| async {
            http::Response::builder()
                .status(301)
                .header("location", "/api/v1/namespaces/x/services/s/proxy/?q=1")
                .body(full(""))
                .unwrap()
        })
        .route("/elsewhere", |_, _| async {
            http::Response::builder()
                .status(302)
                .header("location", "/apiary/x")
                .body(full(""))
                .unwrap()
        })
        .start()
        .await;
    let (builder, b_tunnels) = echo_routes(FakeApi::builder());
    let b = builder.start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::write(&kc, kubeconfig_ab(&a, &b, false)).unwrap();
    let kp = Kproxy::with_kubeconfig(&kc, extra).await;
    Bed {
        a,
        b,
        b_tunnels,
        kp,
        _dir: dir,
    }
}

fn keys_of(body: &[u8]) -> Vec<String> {
    json(body)["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn each_context_is_served_under_its_key_with_its_own_credentials() {
    let alias = format!("--cluster-alias=b={ARN}");
    let bed = bed(&["--all-contexts", &alias]).await;
    let Bed { a, b, kp, .. } = &bed;
    // Created on first use: nothing has connected to b (nor to the others) yet.
    let (status, _, body) = get(&format!("{}/clusters/a/api/v1/namespaces/x/pods/p", kp.url)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    let seen = a.last();
    assert_eq!(seen.uri, "/api/v1/namespaces/x/pods/p");
    assert_eq!(seen.header("authorization"), Some("Bearer token-a"));
    assert_eq!(seen.header("impersonate-user"), None);

    let (status, _, body) = get(&format!(
        "{}/clusters/b/api/v1/namespaces/x/pods/p?pretty=1",
        kp.url
    ))
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen = b.last();
    assert_eq!(seen.uri, "/api/v1/namespaces/x/pods/p?pretty=1");
    assert_eq!(seen.header("authorization"), Some("Bearer token-b"));
    assert_eq!(seen.header("impersonate-user"), Some("bob"));
    // A single object rides the shared HTTP/2 connection, a LIST (bulk read) an HTTP/1.1 one of its
    // own: decided on the path after the prefix.
    assert_eq!(json(&body)["version"], "HTTP/2.0");
    let (_, _, body) = get(&format!("{}/clusters/b/api/v1/pods", kp.url)).await;
    assert_eq!(json(&body)["version"], "HTTP/1.1", "{}", json(&body));
    assert_eq!(b.last().uri, "/api/v1/pods");

    // `/` is the current context, unchanged.
    let before = b.count();
    let (status, _, _) = get(&format!("{}/api/v1/namespaces/x/pods/q", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(a.last().uri, "/api/v1/namespaces/x/pods/q");
    assert_eq!(a.last().header("authorization"), Some("Bearer token-a"));
    assert_eq!(b.count(), before);
    bed.kp.stop().await;
}

#[tokio::test]
async fn clusters_lists_the_keys_behind_the_same_guards() {
    let bed = bed(&["--all-contexts"]).await;
    let kp = &bed.kp;
    let (status, headers, body) = get(&format!("{}/clusters", kp.url)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/json");
    let list = json(&body);
    let clusters = list["clusters"].as_array().unwrap();
    let keys = keys_of(&body);
    assert_eq!(keys.len(), 4, "{list}");
    assert_eq!(keys[0], "a");
    // The ARN is no valid key: a deterministic slug stands for it.
    assert!(
        keys[1].starts_with("arn-aws-eks-eu-west-1-123456789012-cluster-b-"),
        "{list}"
    );
    assert_eq!(&keys[2..], ["down", "broken"]);
    let a = &clusters[0];
    assert_eq!(a["context"], "a");
    assert_eq!(a["cluster"], "ca");
    assert_eq!(a["server"], bed.a.url);
    assert_eq!(a["namespace"], "ns-a");
    assert_eq!(a["path"], "/clusters/a/");
    assert_eq!(a["default"], true);
    assert_eq!(clusters[1]["context"], ARN);
    assert_eq!(clusters[1]["server"], bed.b.url);
    assert_eq!(clusters[1]["default"], false);
    assert!(!String::from_utf8_lossy(&body).contains("token-"));
    // The slug works as a key.
    let (status, _, _) = get(&format!("{}/clusters/{}/version", kp.url, keys[1])).await;
    assert_eq!(status, 200);
    assert_eq!(bed.b.last().uri, "/version");
    // `/clusters/` lists too.
    let (status, _, body) = get(&format!("{}/clusters/", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(keys_of(&body), keys);

    // Guarded like the API: a foreign Host is turned away (DNS rebinding), on the listing and under
    // every prefix.
    for path in ["/clusters", "/clusters/a/api"] {
        let (status, _, body) = request(
            "GET",
            &format!("{}{path}", kp.url),
            &[("host", "evil.example:8001")],
            "",
        )
        .await;
        assert_status(status, &body, 403);
    }
    let (status, headers, body) = request("POST", &format!("{}/clusters", kp.url), &[], "").await;
    assert_status(status, &body, 405);
    assert_eq!(headers["allow"], "GET, HEAD");

    // Unknown key: a 404 Status saying how to see the keys; no upstream sees the request.
    let (a_before, b_before) = (bed.a.count(), bed.b.count());
    let (status, _, body) = get(&format!("{}/clusters/nope/api/v1/pods", kp.url)).await;
    let message = assert_status(status, &body, 404);
    assert!(
        message.contains("\"nope\"") && message.contains("GET /clusters"),
        "{message}"
    );
    assert_eq!((bed.a.count(), bed.b.count()), (a_before, b_before));

    // `/clusters/a` is the root of a subtree: redirected, as kubectl's mux does for `--api-prefix`.
    let (status, headers, _) = get(&format!("{}/clusters/a?x=1", kp.url)).await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "/clusters/a/?x=1");
    // `..` cannot carry a request from one prefix into another: it is redirected to the clean path.
    let (status, headers, _) = get(&format!("{}/clusters/a/../down/api", kp.url)).await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "/clusters/down/api");
    assert_eq!((bed.a.count(), bed.b.count()), (a_before, b_before));
    bed.kp.stop().await;
}

/// The browser and inbound-token guards (issue 13) cover what kproxy answers itself under `/clusters`
/// (the listing, an unknown key, a context it cannot serve) as well as every context's API: otherwise a
/// page of another origin, or a local user without the token, could learn the contexts and servers.
#[tokio::test]
async fn the_origin_check_and_the_inbound_token_guard_every_cluster_route() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inbound");
    std::fs::write(&file, "inbound-s3cret\n").unwrap();
    let flag = format!("--auth-token-file={}", file.display());
    let bed = bed(&["--all-contexts", &flag]).await;
    let kp = &bed.kp;
    let (a_before, b_before) = (bed.a.count(), bed.b.count());
    let paths = [
        "/clusters",
        "/clusters/nope/api",
        "/clusters/broken/version",
        "/clusters/a/api/v1/pods",
    ];
    for path in paths {
        let url = format!("{}{path}", kp.url);
        let (status, _, body) = request("GET", &url, &[], "").await;
        let message = assert_status(status, &body, 401);
        assert!(message.contains("requires its token"), "{path}: {message}");
        let (status, _, body) = request(
            "GET",
            &url,
            &[
                ("authorization", "Bearer inbound-s3cret"),
                ("origin", "https://evil.example"),
            ],
            "",
        )
        .await;
        assert_status(status, &body, 403);
        let body = String::from_utf8_lossy(&body);
        assert!(
            !body.contains("127.0.0.1") && !body.contains("ns-a"),
            "{path}: {body}"
        );
    }
    assert_eq!((bed.a.count(), bed.b.count()), (a_before, b_before));

    // With the token and no foreign origin, each answers as it would without the guard; the upstream
    // never sees kproxy's inbound token.
    let auth = [("authorization", "Bearer inbound-s3cret")];
    let want = [200, 404, 503, 200];
    for (path, want) in paths.into_iter().zip(want) {
        let (status, _, body) = request("GET", &format!("{}{path}", kp.url), &auth, "").await;
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
    }
    let seen = bed.a.last();
    assert_eq!(seen.uri, "/api/v1/pods");
    assert_eq!(seen.headers["authorization"], "Bearer token-a");
    bed.kp.stop().await;
}

#[tokio::test]
async fn locations_into_the_api_keep_the_prefix() {
    let bed = bed(&["--all-contexts"]).await;
    let kp = &bed.kp;
    let (status, headers, _) = get(&format!(
        "{}/clusters/a/api/v1/namespaces/x/services/s/proxy",
        kp.url
    ))
    .await;
    assert_eq!(status, 301);
    assert_eq!(
        headers["location"],
        "/clusters/a/api/v1/namespaces/x/services/s/proxy/?q=1"
    );
    // Only the API's own paths: anything else is relayed as sent.
    let (status, headers, _) = get(&format!("{}/clusters/a/elsewhere", kp.url)).await;
    assert_eq!(status, 302);
    assert_eq!(headers["location"], "/apiary/x");
    // At `/`, nothing changes.
    let (_, headers, _) = get(&format!("{}/api/v1/namespaces/x/services/s/proxy", kp.url)).await;
    assert_eq!(
        headers["location"],
        "/api/v1/namespaces/x/services/s/proxy/?q=1"
    );
    bed.kp.stop().await;
}

#[tokio::test]
async fn the_filter_reads_the_path_after_the_prefix() {
    let bed = bed(&["--all-contexts", "--reject-paths=^/api/v1/secrets"]).await;
    let kp = &bed.kp;
    let before = bed.a.count();
    let (status, _, body) = get(&format!("{}/clusters/a/api/v1/secrets", kp.url)).await;
    let message = assert_status(status, &body, 403);
    assert!(message.contains("GET /api/v1/secrets"), "{message}");
    assert_eq!(bed.a.count(), before);
    let (status, _, _) = get(&format!("{}/clusters/a/api/v1/configmaps", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(bed.a.last().uri, "/api/v1/configmaps");
    bed.kp.stop().await;
}

#[tokio::test]
async fn watches_and_upgrades_work_under_a_prefix() {
    let contexts = format!("--contexts=a,{ARN}");
    let alias = format!("--cluster-alias=b={ARN}");
    let bed = bed(&[&contexts, &alias]).await;
    let kp = &bed.kp;
    let (head, mut s) = raw_watch(kp.addr, "/clusters/b/api/v1/pods?watch=true").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(bed.b.next_watch_opened().await, "/api/v1/pods?watch=true");
    bed.b
        .watch_tx
        .send(bytes::Bytes::from_static(b"{\"type\":\"ADDED\"}\n"))
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"ADDED").await;
    drop(s);

    let (head, s) = raw_upgrade(
        kp.addr,
        "/clusters/b/echo/ws?mode=echo",
        &ws_headers("v5.channel.k8s.io"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let got = exchange(s, b"through the prefix".to_vec()).await;
    assert_eq!(got, b"through the prefix");
    let report = bed.b_tunnels.next().await;
    assert_eq!(report.uri, "/echo/ws?mode=echo");
    let upgrade = bed
        .b
        .recorded()
        .into_iter()
        .find(|r| r.uri.starts_with("/echo/"))
        .unwrap();
    assert_eq!(upgrade.header("authorization"), Some("Bearer token-b"));
    bed.kp.stop().await;
}

#[tokio::test]
async fn an_unusable_context_costs_nothing_until_used_and_then_answers_a_status() {
    // `down` has no server listening and `broken` a missing CA file: kproxy starts anyway.
    let bed = bed(&["--all-contexts"]).await;
    let kp = &bed.kp;
    let (status, _, body) = get(&format!("{}/clusters/down/version", kp.url)).await;
    let message = assert_status(status, &body, 503);
    assert!(message.contains("127.0.0.1:1"), "{message}");
    let (status, _, body) = get(&format!("{}/clusters/broken/version", kp.url)).await;
    let message = assert_status(status, &body, 503);
    assert!(message.contains("\"broken\""), "{message}");
    assert!(message.contains("kproxy-ca.crt"), "{message}");
    // The others are unaffected.
    let (status, _, _) = get(&format!("{}/clusters/a/version", kp.url)).await;
    assert_eq!(status, 200);
    bed.kp.stop().await;
}

#[tokio::test]
async fn contexts_and_aliases_are_validated_at_startup() {
    let a = FakeApi::builder().start().await;
    let b = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::write(&kc, kubeconfig_ab(&a, &b, false)).unwrap();
    let kc_flag = format!("--kubeconfig={}", kc.display());
    for (args, want) in [
        (vec!["--contexts=a,nope"], "context \"nope\" not found"),
        (vec!["--all-contexts", "--contexts=a"], "drop one of them"),
        (
            vec!["--cluster-alias=x=a"],
            "needs --all-contexts or --contexts",
        ),
        (vec!["--contexts=a", "--cluster-alias=x=down"], "not served"),
        (vec!["--contexts=a", "--cluster-alias=a/b=a"], "must match"),
        (vec!["--contexts=a", "--cluster-alias=nokey"], "KEY=CONTEXT"),
        (
            vec!["--contexts=a,down", "--cluster-alias=a=down"],
            "both get the key \"a\"",
        ),
        (
            vec!["--contexts=a", "--api-prefix=/clusters/x"],
            "another --api-prefix",
        ),
        (
            vec!["--contexts=a", "--www=/tmp", "--www-prefix=/clusters/"],
            "another --api-prefix or --www-prefix",
        ),
    ] {
        let mut all = vec![kc_flag.as_str()];
        all.extend(args.iter().copied());
        let err = Kproxy::start(&all, MapEnv::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{args:?} started"));
        assert!(err.to_string().contains(want), "{args:?}: {err}");
        assert_eq!(err.exit_code(), 64, "{args:?}");
    }
    // Only the named contexts are served, in the order named.
    let kp = Kproxy::start(&[&kc_flag, "--contexts=down,a"], MapEnv::default())
        .await
        .unwrap();
    let (_, _, body) = get(&format!("{}/clusters", kp.url)).await;
    assert_eq!(keys_of(&body), ["down", "a"]);
    kp.stop().await;
}

#[tokio::test]
async fn without_the_flags_clusters_is_an_ordinary_api_path() {
    let a = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&a, "kc.yaml", "token: t");
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let (status, _, _) = get(&format!("{}/clusters/a/api", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(a.last().uri, "/clusters/a/api");
    kp.stop().await;
}

fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `GET /clusters` every 20 ms until `n` keys are listed, for at most [`WAIT`]; returns them.
async fn until_keys(kp: &Kproxy, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, _, body) = get(&format!("{}/clusters", kp.url)).await;
        let keys = keys_of(&body);
        if keys.len() == n {
            return keys;
        }
        assert!(
            Instant::now() < deadline,
            "keys stayed {keys:?}, never {n} of them"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reload_adds_and_removes_contexts() {
    let a = FakeApi::builder().start().await;
    let b = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::write(&kc, kubeconfig_ab(&a, &b, true)).unwrap();
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let kp = Kproxy::start(
        &[&kc_flag, "--all-contexts", "--config-poll-interval=50ms"],
        MapEnv::default(),
    )
    .await
    .unwrap();
    assert_eq!(until_keys(&kp, 1).await, ["a"]);
    let (status, _, _) = get(&format!("{}/clusters/down/version", kp.url)).await;
    assert_eq!(status, 404);

    replace_file(&kc, &kubeconfig_ab(&a, &b, false));
    let keys = until_keys(&kp, 4).await;
    let (status, _, _) = get(&format!("{}/clusters/{}/version", kp.url, keys[1])).await;
    assert_eq!(status, 200);
    assert_eq!(b.last().header("authorization"), Some("Bearer token-b"));

    replace_file(&kc, &kubeconfig_ab(&a, &b, true));
    assert_eq!(until_keys(&kp, 1).await, ["a"]);
    let (status, _, _) = get(&format!("{}/clusters/{}/version", kp.url, keys[1])).await;
    assert_eq!(status, 404);
    kp.stop().await;
}
