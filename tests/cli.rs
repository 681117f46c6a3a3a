//! Issue items 2 and 3: every `kubectl proxy` flag with kubectl's names, short forms, defaults and both
//! spellings (`--flag=value`, `--flag value`); the startup line on stdout (real port with `--port=0`,
//! IPv6 with and without brackets, the socket path); the unix socket (owner-only, removed on exit, a
//! stale socket replaced, any other file refused).
mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use common::*;
use http::Request;
use hyper_util::rt::TokioIo;
use kproxy::cli::Cli;

const KUBECTL_FLAGS: &[&str] = &[
    "-p, --port",
    "--address",
    "-u, --unix-socket",
    "--api-prefix",
    "-w, --www",
    "-P, --www-prefix",
    "--accept-hosts",
    "--accept-paths",
    "--reject-paths",
    "--reject-methods",
    "--disable-filter",
    "--keepalive",
    "--append-server-path",
    "--kubeconfig",
    "--context",
    "--cluster",
    "--user",
    "-s, --server",
    "--token",
    "--username",
    "--password",
    "--certificate-authority",
    "--client-certificate",
    "--client-key",
    "--insecure-skip-tls-verify",
    "--tls-server-name",
    "--as ",
    "--as-group",
    "--as-uid",
    "--disable-compression",
    "--request-timeout",
    "-n, --namespace",
    "--shutdown-grace",
    "--incluster-dir",
    // Many contexts and scripting (tests/clusters.rs, tests/exec.rs).
    "--all-contexts",
    "--contexts",
    "--cluster-alias",
    "--write-kubeconfig",
    "--ready-file",
    "--exec",
];

#[test]
fn help_lists_every_flag() {
    let (code, stdout, _) = run_kproxy(&["--help"], &[]);
    assert_eq!(code, 0);
    for flag in KUBECTL_FLAGS {
        assert!(stdout.contains(flag), "--help lacks {flag:?}");
    }
}

fn parse(args: &[&str]) -> String {
    let cli = Cli::try_parse_from(std::iter::once("kproxy").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    format!("{cli:?}")
}

#[test]
fn every_value_flag_takes_both_spellings_and_changes_the_result() {
    let default = parse(&[]);
    for (flag, value) in [
        ("--port", "0"),
        ("-p", "9000"),
        ("--address", "::1"),
        ("--unix-socket", "/tmp/k.sock"),
        ("-u", "/tmp/k.sock"),
        ("--api-prefix", "/k8s/"),
        ("--www", "/srv/www"),
        ("-w", "/srv/www"),
        ("--www-prefix", "/ui/"),
        ("-P", "/ui/"),
        ("--accept-hosts", "^example$"),
        ("--accept-paths", "^/api"),
        ("--reject-paths", ""),
        ("--reject-methods", "POST,PUT"),
        ("--keepalive", "30s"),
        ("--kubeconfig", "/tmp/kc"),
        ("--context", "c"),
        ("--cluster", "c"),
        ("--user", "u"),
        ("--server", "https://h:6443"),
        ("-s", "https://h:6443"),
        ("--token", "t"),
        ("--username", "u"),
        ("--password", "p"),
        ("--certificate-authority", "/tmp/ca"),
        ("--client-certificate", "/tmp/c"),
        ("--client-key", "/tmp/k"),
        ("--tls-server-name", "n"),
        ("--as", "jane"),
        ("--as-group", "g"),
        ("--as-uid", "1"),
        ("--request-timeout", "5s"),
        ("--namespace", "ns"),
        ("-n", "ns"),
        ("--shutdown-grace", "1s"),
        ("--incluster-dir", "/tmp/sa"),
    ] {
        let spaced = parse(&[flag, value]);
        let joined = parse(&[&format!("{flag}={value}")]);
        assert_eq!(spaced, joined, "{flag}");
        assert_ne!(spaced, default, "{flag} {value:?} changed nothing");
        if flag.len() == 2 {
            assert_eq!(parse(&[&format!("{flag}{value}")]), spaced, "{flag}{value}");
        }
    }
    // Booleans: bare, =true, =false (pflag does not take a separate value for booleans).
    for flag in [
        "--disable-filter",
        "--append-server-path",
        "--insecure-skip-tls-verify",
        "--disable-compression",
    ] {
        assert_eq!(parse(&[flag]), parse(&[&format!("{flag}=true")]), "{flag}");
        assert_ne!(parse(&[flag]), default, "{flag}");
        assert_ne!(parse(&[&format!("{flag}=false")]), parse(&[flag]), "{flag}");
    }
    // --as-group repeats.
    let cli = Cli::try_parse_from(["kproxy", "--as-group=a", "--as-group", "b"]).unwrap();
    assert_eq!(cli.as_group, ["a", "b"]);
}

#[test]
fn defaults_are_kubectl_defaults() {
    let cli = Cli::try_parse_from(["kproxy"]).unwrap();
    assert_eq!(cli.port, 8001);
    assert_eq!(cli.address, "127.0.0.1");
    assert_eq!(cli.unix_socket, None);
    assert_eq!(cli.api_prefix, "/");
    assert_eq!(cli.www_prefix, "/static/");
    assert_eq!(cli.accept_hosts, r"^localhost$,^127\.0\.0\.1$,^\[::1\]$");
    assert_eq!(cli.accept_paths, "^.*");
    assert_eq!(
        cli.reject_paths,
        "^/api/.*/pods/.*/exec,^/api/.*/pods/.*/attach"
    );
    assert_eq!(cli.reject_methods, "^$");
    assert!(!cli.disable_filter);
    assert!(!cli.append_server_path);
    assert_eq!(cli.keepalive.magnitude, Duration::ZERO);
}

/// Reads the startup line's address part.
fn served_on(kp: &KproxyProcess) -> String {
    kp.startup_line
        .strip_prefix("Starting to serve on ")
        .unwrap_or_else(|| panic!("unexpected startup line {:?}", kp.startup_line))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_accepts_every_flag_and_serves() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: from-kubeconfig");
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("a.txt"), "static").unwrap();
    let kc_arg = format!("--kubeconfig={}", kc.display());
    let www_arg = www.path().display().to_string();
    let ca = api.ca_path.display().to_string();
    let server = api.url.clone();
    let mut kp = KproxyProcess::spawn(
        &[
            "-p",
            "0",
            "--address",
            "127.0.0.1",
            "--api-prefix=/",
            "-w",
            &www_arg,
            "-P=/files/",
            "--accept-hosts",
            "^localhost$",
            "--accept-paths=^/",
            "--reject-paths",
            "^/api/.*/pods/.*/exec",
            "--reject-methods=^$",
            "--disable-filter=false",
            "--keepalive=30s",
            "--append-server-path=false",
            &kc_arg,
            "--context",
            "test",
            "--cluster=test",
            "--user",
            "test-user",
            "-s",
            &server,
            "--token",
            "from-flag",
            "--certificate-authority",
            &ca,
            "--tls-server-name=localhost",
            "--as",
            "jane",
            "--as-group=g1",
            "--as-group",
            "g2",
            "--as-uid=7",
            "--disable-compression",
            "--request-timeout",
            "5s",
            "-n",
            "default",
            "--shutdown-grace=2s",
            "-v=0",
        ],
        &[],
    );
    let (status, _, _) = get(&format!("{}/api/v1/pods", kp.url())).await;
    assert_eq!(status, 200);
    let rec = api.last();
    assert_eq!(rec.header("authorization"), Some("Bearer from-flag"));
    assert_eq!(rec.header_all("impersonate-group"), ["g1", "g2"]);
    assert_eq!(rec.header("impersonate-uid"), Some("7"));
    let (status, _, body) = get(&format!("{}/files/a.txt", kp.url())).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"static");
    kp.signal("TERM");
    assert_eq!(
        kp.rest_of_stdout(),
        "",
        "the startup line is all kproxy prints on stdout"
    );
    assert_eq!(kp.wait(WAIT).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_line_names_the_real_port() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kc = format!("--kubeconfig={}", kc.display());
    let kp = KproxyProcess::spawn(&["--port=0", &kc], &[]);
    let addr = served_on(&kp);
    let port: u16 = addr
        .strip_prefix("127.0.0.1:")
        .unwrap_or_else(|| panic!("{addr}"))
        .parse()
        .unwrap();
    assert_ne!(port, 0);
    assert_eq!(get(&format!("http://{addr}/version")).await.0, 200);
    drop(kp);

    // An explicit port is used as given, -p and --port alike.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let kp = KproxyProcess::spawn(&["-p", &port.to_string(), &kc], &[]);
    assert_eq!(
        kp.startup_line,
        format!("Starting to serve on 127.0.0.1:{port}")
    );
    drop(kp);

    // A name resolves as Go does, preferring IPv4.
    let kp = KproxyProcess::spawn(&["--port=0", "--address=localhost", &kc], &[]);
    assert!(
        served_on(&kp).starts_with("127.0.0.1:"),
        "{}",
        kp.startup_line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_addresses_with_and_without_brackets() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kc = format!("--kubeconfig={}", kc.display());
    for address in ["--address=::1", "--address=[::1]"] {
        let kp = KproxyProcess::spawn(&["--port=0", address, &kc], &[]);
        let addr = served_on(&kp);
        assert!(addr.starts_with("[::1]:"), "{address}: {}", kp.startup_line);
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        // The default accept-hosts take the bracketed Host with its port (kubectl rejects it, #77496).
        let resp = raw(
            format!("[::1]:{port}").parse().unwrap(),
            format!("GET /api/v1/pods HTTP/1.1\r\nHost: [::1]:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 200, "{address}: {resp:?}");
        assert_eq!(api.last().header("x-forwarded-for"), Some("::1"));
    }
}

/// Sends one request over a unix socket.
async fn over_socket(path: &Path, host: &str, uri: &str) -> (http::StatusCode, bytes::Bytes) {
    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(
        WAIT,
        sender.send_request(
            Request::get(uri)
                .header("host", host)
                .body(full(""))
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let (status, _, body) = collect(resp).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_is_owner_only_filtered_and_removed_on_exit() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kc = format!("--kubeconfig={}", kc.display());
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kproxy.sock");
    let sock_arg = sock.display().to_string();
    let kp = KproxyProcess::spawn(&["-u", &sock_arg, &kc], &[]);
    assert_eq!(
        kp.startup_line,
        format!("Starting to serve on {}", sock.display())
    );
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "owner-only socket"
    );
    // No staging leftovers beside it.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);

    let (status, _) = over_socket(&sock, "localhost", "/api/v1/pods").await;
    assert_eq!(status, 200);
    assert_eq!(
        api.last().header("x-forwarded-for"),
        None,
        "no client address on a socket"
    );
    // The Host filter still applies.
    let (status, _) = over_socket(&sock, "evil.com", "/api/v1/pods").await;
    assert_eq!(status, 403);

    kp.signal("INT");
    assert_eq!(kp.wait(WAIT).0, 0);
    assert!(!sock.exists(), "the socket must be removed on exit");
}

/// The backlog of the listening socket on the line of `ss`'s output that contains `needle` (the
/// Send-Q column is the backlog for listeners).
fn listen_backlog(ss_args: &[&str], needle: &str) -> u32 {
    let out = std::process::Command::new("ss")
        .args(ss_args)
        .output()
        .expect(
            "ss (iproute2) is needed to read a listener's backlog: apt-get install -y iproute2",
        );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains(needle)).unwrap_or("");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // TCP: `LISTEN 0 4096 127.0.0.1:PORT ...`; unix: `u_str LISTEN 0 4096 PATH ...`.
    let at = fields
        .iter()
        .position(|f| *f == "LISTEN")
        .unwrap_or_else(|| panic!("no listener in `ss {ss_args:?}`: {text:?}"));
    fields[at + 2].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_backlog_is_somaxconn_as_in_go() {
    // Go (so kubectl proxy) listens with the kernel's net.core.somaxconn, capped at 65,535; Rust's
    // standard library and mio ask for 128.
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Kernels since 5.4 default to 4096; on an older one (128) this cannot tell the two apart.
    let want = somaxconn.min(65_535);
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kc = format!("--kubeconfig={}", kc.display());
    let kp = KproxyProcess::spawn(&["--port=0", &kc], &[]);
    let sport = format!("sport = :{}", kp.port());
    assert_eq!(
        listen_backlog(&["-Hltn", &sport], "LISTEN"),
        want,
        "TCP listener"
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kproxy.sock");
    let sock_arg = sock.display().to_string();
    let kp = KproxyProcess::spawn(&["-u", &sock_arg, &kc], &[]);
    // The kernel names a unix socket by the path it was bound at: kproxy binds in a staging directory
    // beside the final path and renames it into place.
    let bound_in = dir.path().join(".kproxy-").display().to_string();
    assert_eq!(listen_backlog(&["-Hlx"], &bound_in), want, "unix socket");
    drop(kp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_and_other_files_are_refused() {
    let api = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: t");
    let kc = format!("--kubeconfig={}", kc.display());
    let dir = tempfile::tempdir().unwrap();

    // A socket file left by a crashed process.
    let sock = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let sock_arg = sock.display().to_string();
    // `-p 8001` (the default) may accompany -u, as in kubectl.
    let kp = KproxyProcess::spawn(&["-p", "8001", "-u", &sock_arg, &kc], &[]);
    let (status, _) = over_socket(&sock, "localhost", "/version").await;
    assert_eq!(status, 200);
    drop(kp);

    // A regular file is never removed.
    let file = dir.path().join("precious.txt");
    std::fs::write(&file, "keep me").unwrap();
    let (code, stdout, stderr) = run_kproxy(&["-u", file.to_str().unwrap(), &kc], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("precious.txt"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}
