//! Issue 12 (6): kproxy starts on exactly the kubeconfig files `kubectl proxy` starts on, with the same
//! meaning. A seeded generator (`common::fuzzgen`) mutates a valid kubeconfig the way people break
//! theirs (nameless entries, duplicate names, both CA forms, wrong types, a broken second YAML
//! document, UTF-16 as PowerShell writes it, CRLF, tabs, truncation, random bytes); each file is handed
//! to the installed `kubectl proxy` (v1.32) and to kproxy. Both must start or both must refuse; when
//! both start, one request through each must reach the same server with the same credential, or fail
//! alike. The two differences README "Deviations" lists are recognised by what each proxy did
//! ([`Documented`]); any other disagreement fails. The summary line also reports in how many files
//! both refuse kproxy names the cause kubectl names ([`cause`]).
//!
//! Bounded for CI (300 files, about 11 s). More, or another seed:
//!
//!     KPROXY_FUZZ_CASES=3000 KPROXY_FUZZ_SEED=7 cargo test --release --test kubeconfig_diff -- --nocapture
//!
//! A failure lists every disagreement with its seed, case number and file; the files are kept in the
//! printed directory.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::fuzzgen::{mutate_kubeconfig, Rng, BASE_SERVER};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const SECRET: &str = "SECRET-TOKEN-diff-5e1";

/// How long either proxy may take to print its startup line or exit: kubectl proxy needs about 0.1 s;
/// the bound only turns a hang into a failure on a loaded machine.
const START: Duration = Duration::from_secs(20);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a proxy did with a file: serving on a port, or refused with its stderr.
enum Start {
    Serving(u16, Child),
    Refused(String),
}

/// Starts `bin args…` with an empty environment but `HOME` (kubectl's cache) and waits for its
/// startup line or its exit.
async fn start(bin: &Path, args: &[String], home: &Path) -> Start {
    let mut child = Command::new(bin)
        .args(args)
        .env_clear()
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    let read = tokio::time::timeout(START, stdout.read_line(&mut line))
        .await
        .unwrap_or_else(|_| panic!("{} {args:?}: no startup line and no exit", bin.display()));
    read.unwrap();
    if let Some(addr) = line.trim().strip_prefix("Starting to serve on ") {
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        // Drained while it serves: Go dies of SIGPIPE writing its error log to a closed pipe.
        tokio::spawn(async move { tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await });
        tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
        return Start::Serving(port, child);
    }
    let mut err = String::new();
    let _ = tokio::time::timeout(START, stderr.read_to_string(&mut err)).await;
    let _ = tokio::time::timeout(START, child.wait()).await;
    Start::Refused(format!("{line}{err}").trim().to_owned())
}

/// One request through a serving proxy: the answer's status and body, and the credential the API
/// server received with it (`None`: the request never reached it).
struct Through {
    status: u16,
    body: String,
    credential: Option<String>,
}

async fn through(port: u16, api: &FakeApi, tag: &str) -> Through {
    let path = format!("/api/v1/pods?case={tag}");
    // Raw HTTP/1.1, so that a connection closed without an answer is seen (status 0), not a panic.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(START, conn.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("{tag}: no answer through port {port}"))
        .unwrap_or_default();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    let credential = api.recorded().into_iter().find(|r| r.uri == path).map(|r| {
        r.headers
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    });
    Through {
        status,
        body,
        credential,
    }
}

/// The differences README "Deviations" lists, each recognised by what both proxies did, so that any
/// other disagreement fails the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Documented {
    /// No usable current context or cluster: kubectl proxy falls back to client-go's default server,
    /// `http://localhost:8080` (plain HTTP, with the user's credential if one resolves); kproxy refuses
    /// and names the fix.
    LocalhostFallback,
    /// The user entry has no credential and the server is HTTPS: kubectl asks for a username and a
    /// password on the terminal (Basic auth, which API servers dropped in 1.19), and fails without one;
    /// kproxy never reads stdin and proxies anonymously.
    UsernamePrompt,
}

/// The cause a refusal names, by keyword, so that kubectl's and kproxy's wordings can be compared. Reported,
/// not asserted: a file with two defects may be refused for either, and Go's YAML reader reports control
/// characters before syntax errors.
fn cause(message: &str) -> &'static str {
    const CAUSES: &[(&str, &str)] = &[
        ("duplicate", "duplicate name"),
        ("no kind", "kind"),
        ("both specified", "both CA forms"),
        ("base64", "base64"),
        ("unable to read certificate-authority", "CA file"),
        ("context was not found", "context"),
        ("context \"", "context"),
        ("user \"", "user"),
        ("please enter username", "user"),
        ("missing ']'", "server URL"),
        ("not a valid url", "server URL"),
        ("utf-", "encoding"),
        ("control characters", "encoding"),
        ("unexpected character", "encoding"),
        ("cannot unmarshal", "type"),
        ("invalid type", "type"),
        ("not a yaml mapping", "type"),
        ("couldn't get version", "type"),
        ("yaml:", "syntax"),
        ("did not find expected", "syntax"),
        ("mapping values", "syntax"),
        ("tab", "syntax"),
        ("expected ':'", "syntax"),
        ("unclosed", "syntax"),
    ];
    let message = message.to_ascii_lowercase();
    CAUSES
        .iter()
        .find(|(keyword, _)| message.contains(keyword))
        .map_or("other", |(_, cause)| cause)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kproxy_starts_on_exactly_the_kubeconfigs_kubectl_proxy_starts_on() {
    let kubectl = kubectl_bin();
    let api = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let base = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {BASE_SERVER}\n    certificate-authority: {}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: {SECRET}\n",
        api.ca_path.display()
    );
    let seed = setting("KPROXY_FUZZ_SEED", 12);
    let n = setting("KPROXY_FUZZ_CASES", 300);
    let mut rng = Rng::new(seed);
    let (mut both_serve, mut both_refuse, mut same_cause) = (0, 0, 0);
    let mut disagreements = Vec::new();
    let mut documented = std::collections::BTreeMap::new();
    for case in 0..n {
        let bytes = mutate_kubeconfig(&mut rng, &base, &api.url);
        let file = dir.path().join(format!("case-{case}.yaml"));
        std::fs::write(&file, &bytes).unwrap();
        let flag = format!("--kubeconfig={}", file.display());
        let by_kubectl = start(
            &kubectl,
            &["proxy".into(), "--port=0".into(), flag.clone()],
            &home,
        )
        .await;
        let by_kproxy = start(Path::new(kproxy_bin()), &["--port=0".into(), flag], &home).await;
        let verdict = match (by_kubectl, by_kproxy) {
            (Start::Serving(k, _kc), Start::Serving(p, _kp)) => {
                both_serve += 1;
                let k = through(k, &api, &format!("{case}-kubectl")).await;
                let p = through(p, &api, &format!("{case}-kproxy")).await;
                // The same credential reaches the same server; the status is of the same class
                // (kproxy's own errors are Status JSON where kubectl's are text, but never a success
                // against a failure).
                (k.credential != p.credential || (k.status < 300) != (p.status < 300)).then(|| {
                    format!(
                        "both start, but kubectl proxy answers {} with {:?} upstream, kproxy {} with {:?}",
                        k.status, k.credential, p.status, p.credential
                    )
                })
            }
            (Start::Refused(k), Start::Refused(p)) => {
                both_refuse += 1;
                if cause(&k) == cause(&p) {
                    same_cause += 1;
                }
                assert!(
                    !p.contains(SECRET),
                    "seed {seed} case {case}: the token leaked: {p}"
                );
                None
            }
            (Start::Serving(k, _kc), Start::Refused(p)) => {
                let k = through(k, &api, &format!("{case}-kubectl")).await;
                let fallback = k.credential.is_none()
                    && k.body.contains("127.0.0.1:8080")
                    && [
                        "no current-context",
                        "not found in kubeconfig",
                        "defines no cluster",
                    ]
                    .iter()
                    .any(|reason| p.contains(reason));
                if fallback {
                    *documented.entry(Documented::LocalhostFallback).or_insert(0) += 1;
                    None
                } else {
                    Some(format!(
                        "kubectl proxy starts ({} {:?}); kproxy refuses: {p}",
                        k.status, k.body
                    ))
                }
            }
            (Start::Refused(k), Start::Serving(p, _kp)) => {
                let p = through(p, &api, &format!("{case}-kproxy")).await;
                if k.contains("Please enter Username") && p.credential.as_deref() == Some("") {
                    *documented.entry(Documented::UsernamePrompt).or_insert(0) += 1;
                    None
                } else {
                    Some(format!(
                        "kproxy starts ({}, {:?} upstream); kubectl proxy refuses: {k}",
                        p.status, p.credential
                    ))
                }
            }
        };
        if let Some(v) = verdict {
            disagreements.push(format!(
                "case {case} ({}): {v}\n{}",
                file.display(),
                String::from_utf8_lossy(&bytes).replace(SECRET, "<token>")
            ));
        }
    }
    eprintln!(
        "seed {seed}: {n} kubeconfigs; both start {both_serve}, both refuse {both_refuse} (kproxy names kubectl's cause in {same_cause}), documented differences {documented:?}, other disagreements {}",
        disagreements.len()
    );
    assert!(
        both_serve > 0 && both_refuse > 0,
        "the generator must produce both kinds: {both_serve} / {both_refuse}"
    );
    if !disagreements.is_empty() {
        let kept = dir.keep();
        panic!(
            "seed {seed}: kproxy and kubectl proxy disagree on {} of {n} kubeconfigs (files kept in {}):\n\n{}",
            disagreements.len(),
            kept.display(),
            disagreements.join("\n\n")
        );
    }
}
