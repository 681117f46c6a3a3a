//! Issue item 4: credentials resolved as kubectl resolves them, observed at the API server. KUBECONFIG
//! lists, `~/.kube/config`, context/cluster/user selection, override flags, relative paths, CA from file
//! or data or the system roots, insecure mode, tls-server-name, bearer token, tokenFile, client
//! certificates (EC SEC1, RSA PKCS#1, PKCS#8; file or data), basic auth, impersonation, and the in-cluster
//! service account. The environment is injected with `MapEnv`.
mod common;

use std::path::Path;

use base64::Engine as _;
use common::*;
use kproxy::env::MapEnv;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Starts kproxy with `args` and `env`, sends one GET and returns what the server received.
async fn through(api: &FakeApi, args: &[&str], env: MapEnv) -> Recorded {
    let kp = Kproxy::start(args, env)
        .await
        .expect("kproxy failed to start");
    let (status, _, body) = get(&format!("{}/api/v1/pods", kp.url)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    kp.stop().await;
    api.last()
}

/// The error kproxy answers for one GET (for configurations that start but cannot reach the server).
async fn failure(args: &[&str], env: MapEnv) -> (u16, String) {
    let kp = Kproxy::start(args, env)
        .await
        .expect("kproxy failed to start");
    let (status, _, body) = get(&format!("{}/api/v1/pods", kp.url)).await;
    kp.stop().await;
    let code = status.as_u16();
    (code, assert_status(status, &body, code))
}

fn kc_arg(p: &Path) -> String {
    format!("--kubeconfig={}", p.display())
}

fn env_of(vars: &[(&str, &str)]) -> MapEnv {
    MapEnv::new(vars.iter().copied())
}

/// Two kubeconfig files in different directories. `a` comes first; both define user `u`.
fn two_files(api: &FakeApi, root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let da = root.join("a");
    let db = root.join("b");
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    std::fs::copy(&api.ca_path, db.join("ca-b.crt")).unwrap();
    std::fs::write(db.join("tok-b"), "token-from-b-file\n").unwrap();
    let a = da.join("config");
    std::fs::write(
        &a,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: c1\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts:\n- name: x\n  context: {{cluster: c1, user: u}}\nusers:\n- name: u\n  user:\n    token: token-a\n",
            api.url,
            b64(&std::fs::read_to_string(&api.ca_path).unwrap())
        ),
    )
    .unwrap();
    let b = db.join("config");
    std::fs::write(
        &b,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: y\nclusters:\n- name: c1\n  cluster:\n    server: https://127.0.0.1:1\n- name: c2\n  cluster:\n    server: {}\n    certificate-authority: ca-b.crt\ncontexts:\n- name: y\n  context: {{cluster: c1, user: u}}\n- name: z\n  context: {{cluster: c2, user: v}}\nusers:\n- name: u\n  user:\n    token: token-b\n- name: v\n  user:\n    tokenFile: tok-b\n",
            api.url
        ),
    )
    .unwrap();
    (a, b)
}

#[tokio::test]
async fn kubeconfig_lists_merge_first_file_wins_and_missing_files_are_skipped() {
    let api = FakeApi::builder().start().await;
    let root = tempfile::tempdir().unwrap();
    let (a, b) = two_files(&api, root.path());
    let missing = root.path().join("missing");
    let list = format!("{}:{}:{}", missing.display(), a.display(), b.display());
    let env = || env_of(&[("KUBECONFIG", &list)]);

    // current-context from a (x), its user u from a (token-a), not b's u.
    let rec = through(&api, &[], env()).await;
    assert_eq!(rec.header("authorization"), Some("Bearer token-a"));
    // A context only b defines, with b's cluster c2 and b's relative CA and tokenFile paths,
    // resolved against b's directory.
    let rec = through(&api, &["--context=z"], env()).await;
    assert_eq!(
        rec.header("authorization"),
        Some("Bearer token-from-b-file")
    );
    // --user picks b's v while keeping a's context and cluster.
    let rec = through(&api, &["--user=v"], env()).await;
    assert_eq!(
        rec.header("authorization"),
        Some("Bearer token-from-b-file")
    );
    // --cluster=c1 is a's c1 (first wins), so the request still reaches the fake.
    through(&api, &["--context=y", "--cluster=c1"], env()).await;

    // --kubeconfig is used alone, ignoring KUBECONFIG.
    let kc = kubeconfig_for(&api, "only.yaml", "token: only");
    let rec = through(&api, &[&kc_arg(&kc)], env()).await;
    assert_eq!(rec.header("authorization"), Some("Bearer only"));
}

#[tokio::test]
async fn home_kube_config_is_the_default() {
    let api = FakeApi::builder().start().await;
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".kube")).unwrap();
    kubeconfig(
        &home.path().join(".kube"),
        "config",
        &api.url,
        &format!("certificate-authority: {}", api.ca_path.display()),
        "token: from-home",
    );
    let env = env_of(&[("HOME", home.path().to_str().unwrap())]);
    let rec = through(&api, &[], env).await;
    assert_eq!(rec.header("authorization"), Some("Bearer from-home"));
}

#[tokio::test]
async fn relative_paths_resolve_against_the_file_that_names_them() {
    let api = FakeApi::builder().start().await;
    let alice = api.pki.client("alice", "alice", &["dev"]);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(conf.join("pki")).unwrap();
    std::fs::copy(&api.ca_path, conf.join("pki/ca.crt")).unwrap();
    std::fs::copy(&alice.cert_path, conf.join("pki/alice.crt")).unwrap();
    std::fs::copy(&alice.key_path, conf.join("pki/alice.key")).unwrap();
    std::fs::write(conf.join("token"), "  relative-token\n\n").unwrap();
    let kc = kubeconfig(
        &conf,
        "kc.yaml",
        &api.url,
        "certificate-authority: pki/ca.crt",
        "client-certificate: pki/alice.crt\nclient-key: ./pki/alice.key\ntokenFile: token",
    );
    // The working directory is the crate root, not `conf`: only resolution against the file works.
    let rec = through(&api, &[&kc_arg(&kc)], MapEnv::default()).await;
    assert_eq!(
        rec.peer_cert.as_deref(),
        Some(&alice.der[..]),
        "client certificate"
    );
    assert_eq!(
        rec.header("authorization"),
        Some("Bearer relative-token"),
        "trimmed tokenFile"
    );
}

#[tokio::test]
async fn certs_example_kubeconfig_users() {
    let api = FakeApi::builder().example_certs().start().await;
    let kc = example_dir().join("kubeconfig.yaml");
    let server = format!("--server={}", api.url);
    let der = |name: &str| {
        let pem = std::fs::read_to_string(example_dir().join(name)).unwrap();
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    // EC key in SEC1 form ("BEGIN EC PRIVATE KEY"), files relative to certs-example/.
    let rec = through(&api, &[&kc_arg(&kc), &server], MapEnv::default()).await;
    assert_eq!(rec.peer_cert, Some(der("client.crt")));
    assert_eq!(rec.header("authorization"), None);
    // RSA key in PKCS#1 form ("BEGIN RSA PRIVATE KEY"), given as data.
    let rec = through(
        &api,
        &[&kc_arg(&kc), &server, "--context=example-rsa"],
        MapEnv::default(),
    )
    .await;
    assert_eq!(rec.peer_cert, Some(der("client-rsa.crt")));
    // The token user.
    let rec = through(
        &api,
        &[&kc_arg(&kc), &server, "--context=example-token"],
        MapEnv::default(),
    )
    .await;
    assert_eq!(rec.peer_cert, None);
    assert_eq!(rec.header("authorization"), Some("Bearer example-token"));
}

#[tokio::test]
async fn pkcs8_client_certificates_from_file_or_data() {
    let api = FakeApi::builder().start().await;
    let bob = api.pki.client("bob", "bob", &[]);
    assert!(
        bob.key_pem.contains("BEGIN PRIVATE KEY"),
        "rcgen writes PKCS#8"
    );
    let kc = kubeconfig_for(
        &api,
        "data.yaml",
        &format!(
            "client-certificate-data: {}\nclient-key-data: {}",
            b64(&bob.cert_pem),
            b64(&bob.key_pem)
        ),
    );
    let rec = through(&api, &[&kc_arg(&kc)], MapEnv::default()).await;
    assert_eq!(rec.peer_cert.as_deref(), Some(&bob.der[..]));
    // The same pair through the override flags, on a kubeconfig with no user credentials.
    let kc = kubeconfig_for(&api, "flags.yaml", "");
    let rec = through(
        &api,
        &[
            &kc_arg(&kc),
            &format!("--client-certificate={}", bob.cert_path.display()),
            &format!("--client-key={}", bob.key_path.display()),
        ],
        MapEnv::default(),
    )
    .await;
    assert_eq!(rec.peer_cert.as_deref(), Some(&bob.der[..]));
}

#[tokio::test]
async fn bearer_token_token_file_and_basic_auth() {
    let api = FakeApi::builder().start().await;
    let tok = api.pki.write("tok", "file-token\n");
    // tokenFile wins over token while it is readable (client-go).
    let kc = kubeconfig_for(
        &api,
        "both.yaml",
        &format!("token: inline\ntokenFile: {}", tok.display()),
    );
    let rec = through(&api, &[&kc_arg(&kc)], MapEnv::default()).await;
    assert_eq!(rec.header("authorization"), Some("Bearer file-token"));
    // --token overrides the kubeconfig's token and tokenFile.
    let rec = through(
        &api,
        &[&kc_arg(&kc), "--token=flag-token"],
        MapEnv::default(),
    )
    .await;
    assert_eq!(rec.header("authorization"), Some("Bearer flag-token"));

    let kc = kubeconfig_for(&api, "basic.yaml", "username: admin\npassword: p@ss:word");
    let rec = through(&api, &[&kc_arg(&kc)], MapEnv::default()).await;
    assert_eq!(
        rec.header("authorization"),
        Some(format!("Basic {}", b64("admin:p@ss:word")).as_str())
    );
    let kc = kubeconfig_for(&api, "none.yaml", "");
    let rec = through(
        &api,
        &[&kc_arg(&kc), "--username=u", "--password=p"],
        MapEnv::default(),
    )
    .await;
    assert_eq!(
        rec.header("authorization"),
        Some(format!("Basic {}", b64("u:p")).as_str())
    );
    let rec = through(&api, &[&kc_arg(&kc)], MapEnv::default()).await;
    assert_eq!(
        rec.header("authorization"),
        None,
        "a user without credentials"
    );
}

#[tokio::test]
async fn impersonation_from_kubeconfig_and_flags() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(
        &api,
        "kc.yaml",
        "token: t\nas: jane\nas-uid: u-1\nas-groups: [a, b]\nas-user-extra:\n  scopes: [view, edit]\n  example.com/team: [blue]",
    );
    let rec = through(&api, &[&kc_arg(&kc)], MapEnv::default()).await;
    assert_eq!(rec.header_all("impersonate-user"), ["jane"]);
    assert_eq!(rec.header_all("impersonate-uid"), ["u-1"]);
    assert_eq!(rec.header_all("impersonate-group"), ["a", "b"]);
    assert_eq!(rec.header_all("impersonate-extra-scopes"), ["view", "edit"]);
    assert_eq!(
        rec.header_all("impersonate-extra-example.com%2Fteam"),
        ["blue"]
    );
    let rec = through(
        &api,
        &[
            &kc_arg(&kc),
            "--as=system:serviceaccount:ns:sa",
            "--as-group=x",
            "--as-group",
            "y",
            "--as-uid=9",
        ],
        MapEnv::default(),
    )
    .await;
    assert_eq!(
        rec.header_all("impersonate-user"),
        ["system:serviceaccount:ns:sa"]
    );
    assert_eq!(rec.header_all("impersonate-uid"), ["9"]);
    assert_eq!(rec.header_all("impersonate-group"), ["x", "y"]);
}

#[tokio::test]
async fn trust_roots_ca_data_system_roots_and_insecure() {
    let api = FakeApi::builder().start().await;
    let ca_pem = std::fs::read_to_string(&api.ca_path).unwrap();
    let kc = kubeconfig(
        api.pki.dir.path(),
        "data.yaml",
        &api.url,
        &format!("certificate-authority-data: {}", b64(&ca_pem)),
        "token: t",
    );
    through(&api, &[&kc_arg(&kc)], MapEnv::default()).await;

    // No CA: the system roots, which do not know the test CA.
    let kc = kubeconfig(api.pki.dir.path(), "system.yaml", &api.url, "", "token: t");
    let (code, msg) = failure(&[&kc_arg(&kc)], MapEnv::default()).await;
    assert_eq!(code, 502, "{msg}");
    assert!(msg.contains("UnknownIssuer"), "{msg}");

    // insecure-skip-tls-verify, in the kubeconfig or as a flag (which replaces the CA as a unit).
    let kc = kubeconfig(
        api.pki.dir.path(),
        "insecure.yaml",
        &api.url,
        "insecure-skip-tls-verify: true",
        "token: t",
    );
    through(&api, &[&kc_arg(&kc)], MapEnv::default()).await;
    let other = Pki::new();
    let kc = kubeconfig(
        api.pki.dir.path(),
        "wrong-ca.yaml",
        &api.url,
        &format!("certificate-authority: {}", other.ca_path.display()),
        "token: t",
    );
    assert_eq!(failure(&[&kc_arg(&kc)], MapEnv::default()).await.0, 502);
    through(
        &api,
        &[&kc_arg(&kc), "--insecure-skip-tls-verify"],
        MapEnv::default(),
    )
    .await;
    through(
        &api,
        &[
            &kc_arg(&kc),
            &format!("--certificate-authority={}", api.ca_path.display()),
        ],
        MapEnv::default(),
    )
    .await;
}

#[tokio::test]
async fn tls_server_name_is_the_name_verified() {
    // The certificate names only kube.internal, not the 127.0.0.1 of the URL.
    let api = FakeApi::builder()
        .server_names(&["kube.internal"])
        .start()
        .await;
    let ca = format!("certificate-authority: {}", api.ca_path.display());
    let kc = kubeconfig(api.pki.dir.path(), "none.yaml", &api.url, &ca, "token: t");
    let (code, msg) = failure(&[&kc_arg(&kc)], MapEnv::default()).await;
    assert_eq!(code, 502, "{msg}");
    assert!(msg.contains("not valid for name"), "{msg}");
    let kc = kubeconfig(
        api.pki.dir.path(),
        "good.yaml",
        &api.url,
        &format!("{ca}\ntls-server-name: kube.internal"),
        "token: t",
    );
    through(&api, &[&kc_arg(&kc)], MapEnv::default()).await;
    // --server clears the kubeconfig's tls-server-name (client-go), so 127.0.0.1 is verified again.
    let (code, msg) = failure(
        &[&kc_arg(&kc), &format!("--server={}", api.url)],
        MapEnv::default(),
    )
    .await;
    assert_eq!(code, 502, "{msg}");
    let kc = kubeconfig(
        api.pki.dir.path(),
        "bad.yaml",
        &api.url,
        &format!("{ca}\ntls-server-name: wrong.internal"),
        "token: t",
    );
    let (code, msg) = failure(&[&kc_arg(&kc)], MapEnv::default()).await;
    assert_eq!(code, 502, "{msg}");
    assert!(msg.contains("wrong.internal"), "{msg}");
    // The flag replaces the kubeconfig's name.
    through(
        &api,
        &[&kc_arg(&kc), "--tls-server-name=kube.internal"],
        MapEnv::default(),
    )
    .await;
}

/// A service-account directory for `api`.
fn service_account(api: &FakeApi, root: &Path) -> std::path::PathBuf {
    let dir = root.join("serviceaccount");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "sa-token\n").unwrap();
    std::fs::copy(&api.ca_path, dir.join("ca.crt")).unwrap();
    std::fs::write(dir.join("namespace"), "team-a\n").unwrap();
    dir
}

#[tokio::test]
async fn in_cluster_service_account() {
    let api = FakeApi::builder().start().await;
    let root = tempfile::tempdir().unwrap();
    let sa = service_account(&api, root.path());
    let port = api.addr.port().to_string();
    let pod = |extra: &[(&str, &str)]| {
        let mut env = env_of(&[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
        ]);
        for (k, v) in extra {
            env.set(*k, *v);
        }
        env
    };
    // Through the environment variable.
    let rec = through(
        &api,
        &[],
        pod(&[("KPROXY_INCLUSTER_DIR", sa.to_str().unwrap())]),
    )
    .await;
    assert_eq!(rec.header("authorization"), Some("Bearer sa-token"));
    // Through the flag, which wins over the variable.
    let rec = through(
        &api,
        &[&format!("--incluster-dir={}", sa.display())],
        pod(&[("KPROXY_INCLUSTER_DIR", "/nonexistent")]),
    )
    .await;
    assert_eq!(rec.header("authorization"), Some("Bearer sa-token"));
    // KUBECONFIG naming only missing files is an empty config: in-cluster applies.
    let rec = through(
        &api,
        &[],
        pod(&[
            ("KPROXY_INCLUSTER_DIR", sa.to_str().unwrap()),
            ("KUBECONFIG", "/nonexistent/config"),
        ]),
    )
    .await;
    assert_eq!(rec.header("authorization"), Some("Bearer sa-token"));
    // A usable kubeconfig wins over the pod's service account.
    let kc = kubeconfig_for(&api, "kc.yaml", "token: kubeconfig");
    let rec = through(
        &api,
        &[],
        pod(&[
            ("KPROXY_INCLUSTER_DIR", sa.to_str().unwrap()),
            ("KUBECONFIG", kc.to_str().unwrap()),
        ]),
    )
    .await;
    assert_eq!(rec.header("authorization"), Some("Bearer kubeconfig"));
    // A broken kubeconfig is an error, never a reason to fall back.
    let broken = api.pki.write("broken.yaml", "clusters: [");
    let err = Kproxy::start(
        &[],
        pod(&[
            ("KPROXY_INCLUSTER_DIR", sa.to_str().unwrap()),
            ("KUBECONFIG", broken.to_str().unwrap()),
        ]),
    )
    .await
    .err()
    .expect("a broken kubeconfig must not fall back to in-cluster");
    assert!(err.to_string().contains("broken.yaml"), "{err}");
    // Without the service variables there is no in-cluster config.
    let err = Kproxy::start(
        &[&format!("--incluster-dir={}", sa.display())],
        MapEnv::default(),
    )
    .await
    .err()
    .expect("no configuration at all");
    assert!(err.to_string().contains("KUBERNETES_SERVICE_HOST"), "{err}");
}

#[test]
fn a_broken_file_is_refused_for_the_reason_kubectl_gives_first() {
    // client-go decodes the whole file (types, then `*-data` base64) before it turns the lists into
    // name-keyed maps, so kubectl names a wrong type or bad base64 even when a name is also repeated,
    // and bad base64 in an entry nobody uses still refuses the file. Found by tests/kubeconfig_diff.rs.
    let dir = tempfile::tempdir().unwrap();
    let base = "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
                clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n\
                contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n";
    let cases = [
        (
            "users:\n- name: u\n  user:\n    token: 5\n- name: u\n  user: {}\n",
            "users[0].user: invalid type: integer `5`, expected a string",
        ),
        (
            "users:\n- name: u\n  user:\n    token: t\n- name: other\n  user:\n    client-key-data: c2Vj!cmV0\n- name: u\n  user: {}\n",
            "illegal base64 data in client-key-data of user \"other\": invalid symbol at input byte 4",
        ),
        (
            "users:\n- name: u\n  user:\n    token: t\n- name: u\n  user: {}\n",
            "duplicate name \"u\" in list users",
        ),
    ];
    for (users, reason) in cases {
        let kc = dir.path().join("config");
        std::fs::write(&kc, format!("{base}{users}")).unwrap();
        let (code, stdout, stderr) = run_kproxy(&[&kc_arg(&kc), "--port=0"], &[]);
        assert_eq!(code, 64, "{users}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(reason),
            "{users}: want {reason:?}, got {stderr}"
        );
        assert!(!stderr.contains("c2Vj"), "key data in the error: {stderr}");
    }
}

#[tokio::test]
async fn a_null_list_entry_is_an_empty_entry_as_kubectl_reads_it() {
    // `users:\n-\n- name: u` decodes in Go to a nameless, empty user plus `u`: kubectl proxy serves.
    let api = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n-\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\nusers:\n-\n- name: u\n  user:\n    token: null-entry-token\n",
            api.url,
            api.ca_path.display()
        ),
    )
    .unwrap();
    let got = through(&api, &[&kc_arg(&kc)], MapEnv::default()).await;
    assert_eq!(got.headers["authorization"], "Bearer null-entry-token");
}
