//! The harness itself works end to end: fake API server over TLS + HTTP/2, kproxy in process, a client.
mod common;

use common::*;

#[tokio::test]
async fn get_through_kproxy_reaches_upstream_with_token() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: s3cret");
    let kp = Kproxy::with_kubeconfig(&kc, &[]).await;
    let (status, _, body) = get(&format!("{}/version", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["gitVersion"], "v1.37.0-fake");
    let rec = api.last();
    assert_eq!(rec.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(
        rec.version,
        http::Version::HTTP_2,
        "ALPN should negotiate h2"
    );
    kp.stop().await;
}
