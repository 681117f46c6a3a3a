//! Issue 12 (7): seeded, bounded fuzzing on stable Rust. Generated inputs go through the public
//! surface: raw requests to the listener (request line, headers, the Host filter, path cleaning,
//! chunked bodies), and generated kubeconfig files to the loader. Properties: no panic anywhere, every
//! request answered with a well-formed HTTP response or its connection closed within a bound, kproxy
//! still serving afterwards, and no secret of a broken kubeconfig in an error message.
//!
//! Bounded for CI (a few hundred cases each, a few seconds). Longer runs:
//!
//!     KPROXY_FUZZ_CASES=20000 KPROXY_FUZZ_SEED=7 cargo test --release --test fuzz -- --nocapture
//!
//! A failure prints the seed and case number; rerun with that seed to reproduce.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::fuzzgen::{mutate_kubeconfig, Rng, BASE_SERVER};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cases(default: usize) -> usize {
    std::env::var("KPROXY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("KPROXY_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

/// Counts panics on any thread (tokio swallows panics of spawned tasks, so a connection task that
/// panicked would otherwise go unseen).
fn count_panics() -> Arc<AtomicUsize> {
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    panics
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PRI", "get",
    "G\u{e9}T", "", "GET GET", "X-\u{1}",
];

const TARGETS: &[&str] = &[
    "/api/v1/pods",
    "/api/v1/namespaces/default/pods/p",
    "/api/v1/pods?watch=true&timeoutSeconds=0",
    "/api/v1/namespaces/x/pods/y/exec?command=sh",
    "/apis/../api",
    "/api/v1/%2e%2e/%2e%2e/etc/passwd",
    "//api//v1/./pods/",
    "/api/v1/a%2Fb",
    "/%zz",
    "*",
    "http://localhost:8001/api/v1/pods",
    "http://evil.example/api",
    "localhost:443",
    "/static/../../etc/passwd",
    "/api/v1/pods#frag",
    "/\u{ff}\u{fe}",
    "",
];

const HOSTS: &[&str] = &[
    "localhost",
    "localhost:8001",
    "127.0.0.1",
    "127.0.0.1:1",
    "[::1]",
    "[::1]:8001",
    "::1",
    "[::1",
    "evil.example",
    "localhost.evil.example",
    "",
    " localhost",
    "LOCALHOST",
    "local\u{0}host",
    "127.0.0.1:99999999999",
];

/// One generated request: a request line, headers and maybe a (possibly malformed) body.
fn request(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    // Most cases are nearly valid, so that they reach the router, the filter and the API server; each
    // hostile choice is taken now and then.
    let method = if rng.chance(85) {
        METHODS[rng.below(7)]
    } else {
        rng.pick(METHODS)
    }
    .to_string();
    let mut target = if rng.chance(70) {
        TARGETS[rng.below(4)]
    } else {
        rng.pick(TARGETS)
    }
    .to_string();
    if rng.chance(20) {
        // A long or odd-byte path segment.
        let n = *rng.pick(&[1usize, 100, 4000, 70_000]);
        target.push('/');
        target.push_str(&"a".repeat(n));
    }
    if rng.chance(5) {
        let n = rng.below(8) + 1;
        let junk = rng.bytes(n);
        target.push_str(&String::from_utf8_lossy(&junk));
    }
    let version = if rng.chance(85) {
        "HTTP/1.1"
    } else {
        *rng.pick(&["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1.1 x", ""])
    };
    out.extend_from_slice(format!("{method} {target} {version}\r\n").as_bytes());
    let hosts = if rng.chance(90) { 1 } else { rng.below(3) };
    for _ in 0..hosts {
        let host = if rng.chance(70) {
            HOSTS[rng.below(6)]
        } else {
            rng.pick(HOSTS)
        };
        out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    let chunked = rng.chance(30);
    let length = rng.chance(if chunked { 5 } else { 20 });
    if chunked {
        let te = *rng.pick(&[
            "chunked",
            "chunked",
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "Chunked",
        ]);
        out.extend_from_slice(format!("Transfer-Encoding: {te}\r\n").as_bytes());
    }
    if length {
        let cl = *rng.pick(&[
            "0",
            "5",
            "10",
            "-1",
            "1e3",
            "18446744073709551616",
            "5, 5",
            "",
        ]);
        out.extend_from_slice(format!("Content-Length: {cl}\r\n").as_bytes());
    }
    for _ in 0..rng.below(4) {
        let names = [
            "X-A",
            "Upgrade",
            "Connection",
            "Authorization",
            "Impersonate-User",
            "Expect",
            "X\u{7f}",
            "",
            "Bad Name",
        ];
        let values = [
            "1",
            "websocket",
            "Upgrade",
            "close",
            "Bearer x",
            "100-continue",
            "",
            "a\u{1}b",
        ];
        let name = if rng.chance(90) {
            names[rng.below(6)]
        } else {
            rng.pick(&names)
        };
        let value = if rng.chance(90) {
            values[rng.below(7)]
        } else {
            rng.pick(&values)
        };
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if rng.chance(5) {
        out.extend_from_slice(b"X-Big: ");
        out.extend(std::iter::repeat_n(b'b', 70_000));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if chunked {
        for _ in 0..rng.below(4) {
            let n = rng.below(20);
            let data = rng.bytes(n);
            let size = match rng.below(10) {
                0 => "zz".to_owned(),
                1 => format!("{:x};ext=1", data.len()),
                2 => format!("{:x}", data.len() + 3),
                3 => "ffffffffffffffffff".to_owned(),
                _ => format!("{:x}", data.len()),
            };
            out.extend_from_slice(size.as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&data);
            out.extend_from_slice(if rng.chance(90) { b"\r\n" } else { b"\n" });
        }
        if rng.chance(80) {
            out.extend_from_slice(b"0\r\n");
            if rng.chance(20) {
                out.extend_from_slice(b"X-Trailer: t\r\n");
            }
            out.extend_from_slice(b"\r\n");
        }
    } else if length || rng.chance(10) {
        let n = rng.below(12);
        out.extend(rng.bytes(n));
    }
    if rng.chance(5) {
        // Byte-level damage anywhere.
        for _ in 0..rng.below(4) + 1 {
            let i = rng.below(out.len());
            out[i] = rng.next_u64() as u8;
        }
    }
    out
}

/// Sends `bytes` and reads until a response head has come (a watch's body never ends) or the server
/// closed. Returns what came back; panics past the bound.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything: a failed write is fine.
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let done = tokio::time::timeout(WAIT, async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "no answer and no close within {WAIT:?} for {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_are_answered_or_closed_and_never_panic() {
    let panics = count_panics();
    let api = FakeApi::builder().start().await;
    let kp = Kproxy::with_kubeconfig(&kubeconfig_for(&api, "kc", ""), &[]).await;
    let seed = seed();
    let n = cases(300);
    let mut rng = Rng::new(seed);
    let mut statuses = std::collections::BTreeMap::new();
    for case in 0..n {
        let req = request(&mut rng);
        let out = exchange(kp.addr, &req).await;
        if out.is_empty() {
            *statuses.entry(0).or_insert(0) += 1;
            continue;
        }
        // Whatever came back is one well-formed response head.
        let text = String::from_utf8_lossy(&out);
        let status = text
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "seed {seed} case {case}: not a response: {:?}",
                    &text[..text.len().min(200)]
                )
            });
        assert!(
            (100..600).contains(&status),
            "seed {seed} case {case}: {status}"
        );
        assert!(
            text.contains("\r\n\r\n"),
            "seed {seed} case {case}: no end of head"
        );
        *statuses.entry(status).or_insert(0) += 1;
        if status == 400 && std::env::var("FUZZ_DEBUG").is_ok() && case < 40 {
            eprintln!(
                "400 for {:?}\n -> {:?}",
                String::from_utf8_lossy(&req[..req.len().min(200)]),
                &text[..text.len().min(300)]
            );
        }
        assert_eq!(
            panics.load(Ordering::SeqCst),
            0,
            "seed {seed} case {case} panicked"
        );
    }
    eprintln!("seed {seed}, {n} requests, answers by status (0: closed): {statuses:?}");
    // Still serving.
    let (status, _, _) = get(&format!("{}/version", kp.url)).await;
    assert_eq!(status, 200);
    assert_eq!(panics.load(Ordering::SeqCst), 0);
    kp.stop().await;
}

const SECRET: &str = "SECRET-TOKEN-b6f1c2";

/// A valid kubeconfig the generator mutates.
fn base_kubeconfig(dir: &std::path::Path) -> String {
    let ca = dir.join("ca.crt");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: {}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: {SECRET}\n",
        ca.display()
    )
}

#[test]
fn generated_kubeconfigs_load_or_fail_cleanly_and_never_leak_the_token() {
    use clap::Parser as _;
    let panics = count_panics();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), Pki::new().ca_pem).unwrap();
    let base = base_kubeconfig(dir.path());
    let seed = seed();
    let n = cases(400);
    let mut rng = Rng::new(seed);
    let (mut ok, mut failed) = (0, 0);
    for case in 0..n {
        let bytes = mutate_kubeconfig(&mut rng, &base, BASE_SERVER);
        let path = dir.path().join("config");
        std::fs::write(&path, &bytes).unwrap();
        let flag = format!("--kubeconfig={}", path.display());
        let cli = kproxy::cli::Cli::try_parse_from(["kproxy", flag.as_str()]).unwrap();
        let result = std::panic::catch_unwind(|| {
            kproxy::Config::from_cli(&cli, &kproxy::env::MapEnv::default())
        });
        let result = result.unwrap_or_else(|_| {
            panic!(
                "seed {seed} case {case}: the loader panicked on {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        match result {
            Ok(_) => ok += 1,
            Err(e) => {
                failed += 1;
                let msg = e.to_string();
                assert!(
                    !msg.contains(SECRET),
                    "seed {seed} case {case}: the token leaked: {msg}"
                );
                assert!(
                    msg.len() < 4096,
                    "seed {seed} case {case}: a {}-byte message",
                    msg.len()
                );
            }
        }
    }
    eprintln!("seed {seed}: {n} kubeconfigs, {ok} loaded, {failed} rejected");
    assert_eq!(panics.load(Ordering::SeqCst), 0);
    assert!(
        ok > 0 && failed > 0,
        "the generator must produce both: {ok} / {failed}"
    );
}
