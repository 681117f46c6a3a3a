//! End to end, the streaming subresources: client → proxy → genuine kube-apiserver v1.37 → kubelet.
//! The kubelet is kwok (`tests/kwok`), one per test, managing the test's own node: pods bound to it
//! become Running, and its kubelet endpoint (TLS on 127.0.0.1, verified by the API server) runs exec
//! commands on this machine, serves logs and attach from files and forwards ports to a server the test
//! starts.
//!
//! Every scenario runs three ways and the outputs are compared byte for byte: kubectl straight to the
//! API server with the admin kubeconfig ("direct"), kubectl through `kubectl proxy`, and kubectl through
//! kproxy, both proxies started with the same kubeconfig and `--reject-paths=` (exec and attach are
//! rejected by default; `exec_and_attach_are_rejected_by_default_with_advice` checks that).
//!
//! Run by `bash tests/e2e.sh` (which also builds kwok and sets `KPROXY_E2E_KWOK`); `#[ignore]`d for the
//! hermetic `cargo test`. Findings: docs/e2e.md.

#[path = "e2e/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// Where a kubectl command goes.
struct Target {
    name: &'static str,
    /// `None`: the API server itself with the admin kubeconfig.
    proxy: Option<String>,
}

/// The proxies behind [`Target`]s; killed when dropped.
struct Proxies {
    kproxy: Proc,
    _kubectl_proxy: Proc,
}

/// The three targets: direct, kubectl proxy and kproxy, both proxies with the admin kubeconfig and
/// `flags`, kproxy also with `kproxy_only`.
fn targets_with(ctx: &Ctx, flags: &[&str], kproxy_only: &[&str]) -> (Proxies, Vec<Target>) {
    let kc = format!("--kubeconfig={}", ctx.server.kubeconfig("admin").display());
    let mut args = vec![kc.as_str()];
    args.extend_from_slice(flags);
    let (reference, kc_url) = kubectl_proxy(ctx, &args);
    args.extend_from_slice(kproxy_only);
    let (ours, kp_url) = kproxy(ctx, &args, &[]);
    let targets = vec![
        Target {
            name: "direct",
            proxy: None,
        },
        Target {
            name: "kubectl proxy",
            proxy: Some(kc_url),
        },
        Target {
            name: "kproxy",
            proxy: Some(kp_url),
        },
    ];
    (
        Proxies {
            kproxy: ours,
            _kubectl_proxy: reference,
        },
        targets,
    )
}

fn targets(ctx: &Ctx, flags: &[&str]) -> (Proxies, Vec<Target>) {
    targets_with(ctx, flags, &[])
}

/// Exec and attach allowed, as users of either proxy must ask for.
const ALLOW_EXEC: &[&str] = &["--reject-paths="];

/// The kubectl arguments that point at `t` (before the subcommand).
fn target_args(ctx: &Ctx, t: &Target) -> Vec<String> {
    match &t.proxy {
        None => vec![format!(
            "--kubeconfig={}",
            ctx.server.kubeconfig("admin").display()
        )],
        Some(url) => vec!["--kubeconfig=/dev/null".into(), format!("--server={url}")],
    }
}

/// `kubectl` at `t` in the test's namespace, with `env` added.
fn kubectl(ctx: &Ctx, t: &Target, env: &[(&str, &str)]) -> Command {
    let mut cmd = ctx.kubectl_cmd();
    cmd.args(target_args(ctx, t))
        .args(["-n", &ctx.ns])
        .envs(env.iter().copied());
    cmd
}

/// kubectl's remote-command transports: WebSocket (v5.channel.k8s.io, the default since 1.30) and SPDY.
const TRANSPORTS: [(&str, &[(&str, &str)]); 2] = [
    ("websocket", &[]),
    ("spdy", &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")]),
];

/// Port-forward transports: WebSocket tunnelling (the default since 1.31) and SPDY.
const FORWARD_TRANSPORTS: [(&str, &[(&str, &str)]); 2] = [
    ("websocket", &[]),
    ("spdy", &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")]),
];

/// Asserts that every target's result equals the direct one's; returns the direct one.
#[track_caller]
fn all_equal<T: PartialEq + std::fmt::Debug + Clone>(what: &str, results: &[(&str, T)]) -> T {
    let (first, expected) = &results[0];
    for (name, got) in &results[1..] {
        assert_eq!(
            got, expected,
            "{what}: {name} differs from {first} (left: {name}, right: {first})"
        );
    }
    expected.clone()
}

/// `sha256sum` of a file, as hex.
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A file of `mib` MiB of random bytes.
fn random_file(path: &Path, mib: usize) {
    let out = Command::new("head")
        .args(["-c", &format!("{}", mib * 1024 * 1024), "/dev/urandom"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(path, out.stdout).unwrap();
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------------------------------
// exec

#[test]
#[ignore = "end-to-end: needs the real API server and kwok; run by tests/e2e.sh"]
fn exec_streams_stdin_stdout_stderr_and_the_exit_code_like_the_api_server() {
    let ctx = Ctx::new("exec");
    let kwok = Kwok::start(&ctx, KubeletRules { forward_to: None });
    kwok.running_pod(&ctx, "web");
    let (proxies, targets) = targets(&ctx, ALLOW_EXEC);
    // Reads two lines of stdin (kwok never closes the command's stdin, so nothing may wait for EOF),
    // echoes them, writes 588,895 bytes of stdout and a line of stderr, and exits 3.
    let script = "head -n 2; seq 1 100000; echo to-stderr >&2; exit 3";
    let ok_script = "printf 'no stdin\\n'; echo quiet >&2";
    for (transport, env) in TRANSPORTS {
        let mut failing = Vec::new();
        let mut succeeding = Vec::new();
        for t in &targets {
            let mut cmd = kubectl(&ctx, t, env);
            cmd.args(["exec", "-i", "web", "--", "sh", "-c", script]);
            let out = run(cmd, Some("one\ntwo\n"));
            failing.push((t.name, (out.code, out.stdout, out.stderr)));
            let mut cmd = kubectl(&ctx, t, env);
            cmd.args(["exec", "web", "-c", "main", "--", "sh", "-c", ok_script]);
            let out = run(cmd, None);
            succeeding.push((t.name, (out.code, out.stdout, out.stderr)));
        }
        let (code, stdout, stderr) = all_equal(&format!("exec {transport}"), &failing);
        let mut expected = "one\ntwo\n".to_owned();
        for i in 1..=100_000 {
            expected.push_str(&format!("{i}\n"));
        }
        assert!(
            stdout == expected,
            "{transport}: stdout {} bytes",
            stdout.len()
        );
        assert!(stderr.starts_with("to-stderr\n"), "{transport}: {stderr}");
        // kwok reports a command's exit as an error, not as the exit code (see docs/e2e.md): kubectl
        // exits 1 and prints the command's status.
        assert_ne!(code, 0, "{transport}");
        assert!(stderr.contains("exit status 3"), "{transport}: {stderr}");
        let ok = all_equal(&format!("exec {transport}, success"), &succeeding);
        assert_eq!(
            ok,
            (0, "no stdin\n".into(), "quiet\n".into()),
            "{transport}"
        );
    }
    // The transports were the ones asked for: kubectl opens a WebSocket with GET and SPDY with POST
    // (kproxy's filter log names each request it accepts).
    let log = proxies.kproxy.stderr_text();
    for method in ["GET", "POST"] {
        let line = format!(
            "Filter accepting {method} /api/v1/namespaces/{}/pods/web/exec",
            ctx.ns
        );
        assert_eq!(log.matches(&line).count(), 2, "{method}:\n{log}");
    }
}

#[test]
#[ignore = "end-to-end: needs the real API server and kwok; run by tests/e2e.sh"]
fn exec_with_a_tty_follows_terminal_resizes() {
    let ctx = Ctx::new("exec-tty");
    let kwok = Kwok::start(&ctx, KubeletRules { forward_to: None });
    kwok.running_pod(&ctx, "web");
    let (_pair, targets) = targets(&ctx, ALLOW_EXEC);
    // kubectl needs a terminal for `-t`: tests/e2e/pty_resize.py runs it on a pty sized 41x123, and
    // resizes that pty to 50x100 once the first size came back. kubectl sends each size on its resize
    // channel (v5 channel 4 / the SPDY resize stream); kwok applies it to the command's pty, where
    // `stty size` prints it. kwok starts the command before it applies the first size, and drops output
    // not yet copied when the command exits, so the command waits for each size to change and, after
    // printing the last, for a line from the test.
    let remote = r#"until [ "$(stty size)" != "0 0" ]; do sleep 0.01; done; stty size; read x;
        until [ "$(stty size)" != "41 123" ]; do sleep 0.01; done; stty size; read y"#;
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/pty_resize.py");
    for (transport, env) in TRANSPORTS {
        let mut results = Vec::new();
        for t in &targets {
            let mut cmd = Command::new(required_env("KPROXY_E2E_PYTHON"));
            cmd.env_clear()
                .env("HOME", &ctx.home)
                .env("PATH", path_env())
                .env("TERM", "xterm")
                .envs(env.iter().copied())
                .arg(&helper)
                .args(["41", "123", "50", "100", "--", &kubectl_bin()])
                .arg(format!(
                    "--cache-dir={}",
                    ctx.home.join("kube-cache").display()
                ))
                .args(target_args(&ctx, t))
                .args([
                    "-n", &ctx.ns, "exec", "-it", "web", "--", "sh", "-c", remote,
                ]);
            let out = run(cmd, None);
            assert_eq!(out.code, 0, "{transport} via {}: {out}", t.name);
            let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
                .unwrap_or_else(|e| panic!("{transport} via {}: {e}: {out}", t.name));
            results.push((t.name, v));
        }
        let v = all_equal(&format!("exec -t {transport}"), &results);
        assert_eq!(
            v,
            serde_json::json!({"code": 0, "sizes": ["41 123", "50 100"]}),
            "{transport}"
        );
    }
}

#[test]
#[ignore = "end-to-end: needs the real API server and kwok; run by tests/e2e.sh"]
fn exec_and_attach_are_rejected_by_default_with_advice() {
    let ctx = Ctx::new("exec-default");
    let kwok = Kwok::start(&ctx, KubeletRules { forward_to: None });
    kwok.running_pod(&ctx, "web");
    let (_pair, targets) = targets(&ctx, &[]);
    for (transport, env) in TRANSPORTS {
        for sub in [&["exec", "web", "--", "true"][..], &["attach", "web"][..]] {
            let mut outs = BTreeMap::new();
            for t in &targets[1..] {
                let mut cmd = kubectl(&ctx, t, env);
                cmd.args(sub);
                let out = run(cmd, None);
                assert_ne!(out.code, 0, "{} {transport} {sub:?}: {out}", t.name);
                outs.insert(t.name, out.stderr);
            }
            // kubectl proxy answers `403 Forbidden` in text/plain; kproxy answers the same status as a
            // Status naming the rule and how to lift it (README deviation), which kubectl prints.
            let theirs = &outs["kubectl proxy"];
            let ours = &outs["kproxy"];
            assert!(
                theirs.contains("Forbidden"),
                "{transport} {sub:?}: {theirs}"
            );
            assert!(
                ours.contains("--reject-paths"),
                "{transport} {sub:?}: {ours}"
            );
            assert!(
                ours.contains("pass --reject-paths=''"),
                "{transport} {sub:?}: {ours}"
            );
        }
    }
}

#[test]
#[ignore = "end-to-end: needs the real API server and kwok; run by tests/e2e.sh"]
fn stream_errors_are_relayed_like_the_api_server() {
    let ctx = Ctx::new("stream-errors");
    // No port-forward rule: kwok refuses every forwarded connection.
    let kwok = Kwok::start(&ctx, KubeletRules { forward_to: None });
    kwok.running_pod(&ctx, "web");
    let (_proxies, targets) = targets(&ctx, ALLOW_EXEC);
    let cases: [&[&str]; 2] = [
        // The API server refuses before any upgrade (400).
        &["exec", "web", "-c", "nope", "--", "true"],
        // The kubelet fails to start the command, after the upgrade.
        &["exec", "web", "--", "/nonexistent/command"],
    ];
    for (transport, env) in TRANSPORTS {
        for args in cases {
            let mut results = Vec::new();
            for t in &targets {
                let mut cmd = kubectl(&ctx, t, env);
                cmd.args(args);
                let out = run(cmd, None);
                results.push((t.name, (out.code, out.stdout, out.stderr)));
            }
            let (code, _, stderr) = all_equal(&format!("{transport} {args:?}"), &results);
            assert_ne!(code, 0, "{transport} {args:?}");
            let cause = if args.contains(&"nope") {
                "container nope is not valid"
            } else {
                "/nonexistent/command"
            };
            assert!(stderr.contains(cause), "{transport} {args:?}: {stderr}");
        }
    }
    // A forwarded connection the kubelet cannot serve: the client's connection is closed without an
    // answer, the same way on every path.
    let mut results = Vec::new();
    for t in &targets {
        let (_fwd, port) = port_forward(&ctx, t, &[], &format!("pf {}", t.name));
        let mut cmd = ctx.curl_cmd();
        cmd.args(["-sS", "--max-time", "60"])
            .arg(format!("http://127.0.0.1:{port}/"));
        let out = run(cmd, None);
        results.push((t.name, out.code));
    }
    let code = all_equal("port-forward without a target", &results);
    assert_ne!(code, 0);
}

// ---------------------------------------------------------------------------------------------------
// logs and attach

#[test]
#[ignore = "end-to-end: needs the real API server and kwok; run by tests/e2e.sh"]
fn logs_and_logs_follow_deliver_lines_as_written() {
    let ctx = Ctx::new("logs");
    let kwok = Kwok::start(&ctx, KubeletRules { forward_to: None });
    kwok.running_pod(&ctx, "web");
    let admin = format!("127.0.0.1:{}", free_port());
    let admin_flag = format!("--admin-address={admin}");
    let (_proxies, targets) = targets_with(&ctx, ALLOW_EXEC, &[&admin_flag]);
    let mut written = String::new();
    let mut expected = String::new();
    for i in 0..2000 {
        let text = format!("line {i} {}", "x".repeat(i % 97));
        written.push_str(&cri_log_line(&text));
        expected.push_str(&text);
        expected.push('\n');
    }
    append(&kwok.logs, &written);
    let tail: Vec<&str> = expected.lines().skip(1997).collect();
    let tail = tail.join("\n") + "\n";
    let cases: [(&[&str], i32, Option<&str>); 4] = [
        (&["logs", "web"], 0, Some(&expected)),
        (&["logs", "web", "--tail=3"], 0, Some(&tail)),
        (
            &["logs", "web", "--limit-bytes=1000"],
            0,
            Some(&expected[..1000]),
        ),
        // The API server's own 400, relayed.
        (&["logs", "web", "-c", "nope"], 1, None),
    ];
    for (args, want_code, want) in cases {
        let mut results = Vec::new();
        for t in &targets {
            let mut cmd = kubectl(&ctx, t, &[]);
            cmd.args(args);
            let out = run(cmd, None);
            results.push((t.name, (out.code, out.stdout, out.stderr)));
        }
        let (code, stdout, stderr) = all_equal(&format!("{args:?}"), &results);
        assert_eq!(code, want_code, "{args:?}: {stderr}");
        match want {
            Some(want) => assert!(stdout == want, "{args:?}: {} bytes", stdout.len()),
            None => assert!(stderr.contains("container nope is not valid"), "{stderr}"),
        }
    }

    // logs -f through each target: every line appended to the file must come out of kubectl. The delay
    // per line is measured from the append to its arrival; through kproxy the median must stay under
    // 100 ms (kubectl proxy flushes chunked bodies at once; a proxy that buffered would show here).
    let mut delays: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for t in &targets {
        let mut cmd = kubectl(&ctx, t, &[]);
        cmd.args(["logs", "-f", "--tail=0", "web"]);
        let mut follow = Proc::spawn(&ctx, &format!("logs-f {}", t.name), cmd);
        // Connected once a marker line comes through (lines written before the follow started are
        // not shown with --tail=0): write markers until one arrives.
        let mut n = 0;
        ctx.eventually(&format!("{}: logs -f to connect", t.name), WAIT, || {
            n += 1;
            append(&kwok.logs, &cri_log_line(&format!("marker {} {n}", t.name)));
            follow
                .stdout_text()
                .contains(&format!("marker {} ", t.name))
                .then_some(())
        });
        let mut d = Vec::new();
        for i in 0..20 {
            let text = format!("follow {} {i}", t.name);
            let start = Instant::now();
            append(&kwok.logs, &cri_log_line(&text));
            follow.wait_for_every(Duration::from_millis(2), &format!("line {i}"), |out| {
                String::from_utf8_lossy(out)
                    .contains(&format!("{text}\n"))
                    .then_some(())
            });
            d.push(start.elapsed());
        }
        delays.insert(t.name, d);
        // While kubectl follows, the API server has exactly this log request open (its gauge of
        // long-running requests; no other test here follows logs), and so has kproxy.
        assert_eq!(
            log_follows(&ctx),
            1,
            "{}: API server while following",
            t.name
        );
        if t.name == "kproxy" {
            assert_eq!(in_flight(&ctx, &admin), 1, "kproxy while following");
        }
        // The client quits: kubectl is killed, which closes its connection. The request must end all
        // the way to the API server (and so to kwok), through either proxy as directly.
        drop(follow);
        ctx.eventually(
            &format!(
                "{}: the API server to end the follow after the client quit",
                t.name
            ),
            WAIT,
            || (log_follows(&ctx) == 0).then_some(()),
        );
        if t.name == "kproxy" {
            assert_eq!(in_flight(&ctx, &admin), 0, "kproxy after the client quit");
        }
    }
    for (name, d) in &mut delays {
        d.sort();
        eprintln!(
            "logs -f per-line delay via {name}: median {:?}, max {:?}",
            d[d.len() / 2],
            d[d.len() - 1]
        );
    }
    // Through kproxy the median and the 90th percentile must stay under 100 ms (kubectl proxy flushes
    // chunked bodies at once; a proxy that buffered or flushed on a timer would show here). Two of the
    // twenty lines may be late, for a loaded machine's scheduling.
    let kp = &delays["kproxy"];
    for q in [kp.len() / 2, kp.len() * 9 / 10 - 1] {
        assert!(kp[q] < Duration::from_millis(100), "kproxy delays {kp:?}");
    }
}

/// The API server's open `pods/log` requests (`apiserver_longrunning_requests`, which counts follows).
fn log_follows(ctx: &Ctx) -> i64 {
    let metrics = ctx.admin(&["get", "--raw", "/metrics"]).ok();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_longrunning_requests{")
                && l.contains(r#"resource="pods""#)
                && l.contains(r#"subresource="log""#)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        .sum()
}

/// kproxy's `kproxy_requests_in_flight` from its admin listener at `admin`.
fn in_flight(ctx: &Ctx, admin: &str) -> i64 {
    let metrics = ctx.curl(&format!("http://{admin}/metrics"), &[]);
    metrics
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("kproxy_requests_in_flight "))
        .unwrap_or_else(|| panic!("no kproxy_requests_in_flight in {}", metrics.text()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
#[ignore = "end-to-end: needs the real API server and kwok; run by tests/e2e.sh"]
fn attach_follows_the_containers_output() {
    let ctx = Ctx::new("attach");
    let kwok = Kwok::start(&ctx, KubeletRules { forward_to: None });
    kwok.running_pod(&ctx, "web");
    let (_pair, targets) = targets(&ctx, ALLOW_EXEC);
    for (transport, env) in TRANSPORTS {
        let mut results = Vec::new();
        for t in &targets {
            let mut cmd = kubectl(&ctx, t, env);
            cmd.args(["attach", "web", "-c", "main"]);
            let mut attach = Proc::spawn(&ctx, &format!("attach {}", t.name), cmd);
            let tag = format!("{transport} {}", t.name);
            let mut n = 0;
            ctx.eventually(&format!("{tag}: attach to connect"), WAIT, || {
                n += 1;
                append(
                    &kwok.attach_log,
                    &cri_log_line(&format!("marker {tag} {n}")),
                );
                attach
                    .stdout_text()
                    .contains(&format!("marker {tag} "))
                    .then_some(())
            });
            for i in 0..50 {
                append(
                    &kwok.attach_log,
                    &cri_log_line(&format!("attached {tag} {i}")),
                );
            }
            let last = format!("attached {tag} 49\n");
            let out = attach.wait_for("the last line", |out| {
                let text = String::from_utf8_lossy(out);
                text.contains(&last).then(|| text.into_owned())
            });
            // What came after the markers, with this target's tag removed for the comparison.
            let lines: Vec<String> = out
                .lines()
                .filter(|l| !l.starts_with("marker "))
                .map(|l| l.replace(&tag, "T"))
                .collect();
            results.push((t.name, lines));
        }
        let lines = all_equal(&format!("attach {transport}"), &results);
        let expected: Vec<String> = (0..50).map(|i| format!("attached T {i}")).collect();
        assert_eq!(lines, expected, "{transport}");
    }
}

// ---------------------------------------------------------------------------------------------------
// port-forward

/// The HTTP server "in the pod": Python's http.server on 127.0.0.1 serving `dir`.
fn http_server(ctx: &Ctx, dir: &Path) -> (Proc, u16) {
    let mut cmd = Command::new(required_env("KPROXY_E2E_PYTHON"));
    cmd.env_clear()
        .env("PATH", path_env())
        .args([
            "-u",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .arg("0");
    let mut p = Proc::spawn(ctx, "http-server", cmd);
    let port = p.wait_for("its serving line", |out| {
        let text = String::from_utf8_lossy(out);
        let rest = text.split(" port ").nth(1)?;
        rest.split_whitespace().next()?.parse::<u16>().ok()
    });
    (p, port)
}

/// `kubectl port-forward pod/web :80` at `t`: the process and its local port.
fn port_forward(ctx: &Ctx, t: &Target, env: &[(&str, &str)], name: &str) -> (Proc, u16) {
    let mut cmd = kubectl(ctx, t, env);
    cmd.args(["port-forward", "--address=127.0.0.1", "pod/web", ":80"]);
    let mut p = Proc::spawn(ctx, name, cmd);
    let port = p.wait_for("its Forwarding line", |out| {
        let text = String::from_utf8_lossy(out);
        let rest = text.split("Forwarding from 127.0.0.1:").nth(1)?;
        rest.split_whitespace().next()?.parse::<u16>().ok()
    });
    (p, port)
}

/// Downloads `url` with curl; the sha256 of what arrived.
fn download_sha(url: &str) -> String {
    let mut sh = Command::new("bash");
    sh.env_clear()
        .env("PATH", path_env())
        .arg("-c")
        .arg(format!(
            "set -o pipefail; curl -q -sSf --max-time 80 {} | sha256sum",
            sh_quote(url)
        ));
    let out = run(sh, None);
    assert_eq!(out.code, 0, "download {url}: {out}");
    out.stdout.split_whitespace().next().unwrap().to_owned()
}

#[test]
#[ignore = "end-to-end: needs the real API server and kwok; run by tests/e2e.sh"]
fn port_forward_carries_requests_and_100_mb_intact() {
    let ctx = Ctx::new("port-forward");
    let www = ctx.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("small.txt"), "hello from the pod\n").unwrap();
    random_file(&www.join("big.bin"), 100);
    random_file(&www.join("mid.bin"), 20);
    let big = sha256(&www.join("big.bin"));
    let mid = sha256(&www.join("mid.bin"));
    let (_server, server_port) = http_server(&ctx, &www);
    let kwok = Kwok::start(
        &ctx,
        KubeletRules {
            forward_to: Some(server_port),
        },
    );
    kwok.running_pod(&ctx, "web");
    let (proxies, targets) = targets(&ctx, &[]);
    for (transport, env) in FORWARD_TRANSPORTS {
        let mut results = Vec::new();
        for t in &targets {
            let (_fwd, port) = port_forward(&ctx, t, env, &format!("pf {}", t.name));
            // 100 sequential requests, each on its own connection (http.server speaks HTTP/1.0), so
            // each is a new stream through the forward.
            let mut cmd = ctx.curl_cmd();
            cmd.args(["-sSf", "--max-time", "80"]);
            for i in 0..100 {
                cmd.arg(format!("http://127.0.0.1:{port}/small.txt?{i}"));
            }
            let out = run(cmd, None);
            assert_eq!(out.code, 0, "{transport} {}: {out}", t.name);
            let started = Instant::now();
            let got = download_sha(&format!("http://127.0.0.1:{port}/big.bin"));
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "port-forward {transport} via {}: 100 MiB in {secs:.2}s ({:.0} MiB/s)",
                t.name,
                100.0 / secs
            );
            results.push((t.name, (out.stdout, got)));
        }
        let (bodies, got) = all_equal(&format!("port-forward {transport}"), &results);
        assert_eq!(bodies, "hello from the pod\n".repeat(100), "{transport}");
        assert_eq!(got, big, "{transport}: the 100 MiB file arrived changed");
    }

    // Two forwards at once through each target, each downloading 20 MiB while the other does.
    let mut results = Vec::new();
    for t in &targets {
        let (_a, pa) = port_forward(&ctx, t, &[], &format!("pf-a {}", t.name));
        let (_b, pb) = port_forward(&ctx, t, &[], &format!("pf-b {}", t.name));
        let shas = std::thread::scope(|s| {
            let ha = s.spawn(|| download_sha(&format!("http://127.0.0.1:{pa}/mid.bin")));
            let hb = s.spawn(|| download_sha(&format!("http://127.0.0.1:{pb}/mid.bin")));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        results.push((t.name, shas));
    }
    let shas = all_equal("two concurrent forwards", &results);
    assert_eq!(shas, (mid.clone(), mid));
    // One connection per kubectl port-forward, carrying every forwarded connection: WebSocket (GET)
    // for the first and the two concurrent ones, SPDY (POST) for the second.
    let log = proxies.kproxy.stderr_text();
    for (method, n) in [("GET", 3), ("POST", 1)] {
        let line = format!(
            "Filter accepting {method} /api/v1/namespaces/{}/pods/web/portforward",
            ctx.ns
        );
        assert_eq!(log.matches(&line).count(), n, "{method}:\n{log}");
    }
}

// ---------------------------------------------------------------------------------------------------
// cp

#[test]
#[ignore = "end-to-end: needs the real API server and kwok; run by tests/e2e.sh"]
fn cp_copies_20_mb_both_ways_intact() {
    let ctx = Ctx::new("cp");
    let kwok = Kwok::start(&ctx, KubeletRules { forward_to: None });
    kwok.running_pod(&ctx, "web");
    let (_pair, targets) = targets(&ctx, ALLOW_EXEC);
    let local = ctx.dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    let src = local.join("up.bin");
    random_file(&src, 20);
    let up = sha256(&src);
    let in_pod = kwok.root.join("down.bin");
    random_file(&in_pod, 20);
    let down = sha256(&in_pod);
    let mut results = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        // To the pod: kubectl runs `tar -xmf - -C DIR` there and streams a tar over stdin.
        let dest = kwok.root.join(format!("up-{i}"));
        std::fs::create_dir_all(&dest).unwrap();
        let mut cmd = kubectl(&ctx, t, &[]);
        cmd.arg("cp")
            .arg(&src)
            .arg(format!("web:{}/up.bin", dest.display()));
        let out_up = run(cmd, None);
        // From the pod: `tar cf - FILE` there, unpacked here.
        let back = local.join(format!("down-{i}.bin"));
        let mut cmd = kubectl(&ctx, t, &[]);
        cmd.arg("cp")
            .arg(format!("web:{}", in_pod.display()))
            .arg(&back);
        let out_down = run(cmd, None);
        assert_eq!(out_up.code, 0, "cp to the pod via {}: {out_up}", t.name);
        assert_eq!(
            out_down.code, 0,
            "cp from the pod via {}: {out_down}",
            t.name
        );
        results.push((
            t.name,
            (
                sha256(&dest.join("up.bin")),
                sha256(&back),
                out_up.stdout + &out_down.stdout,
            ),
        ));
    }
    let (got_up, got_down, _) = all_equal("cp", &results);
    assert_eq!(got_up, up, "the file copied to the pod changed");
    assert_eq!(got_down, down, "the file copied from the pod changed");
}

// ---------------------------------------------------------------------------------------------------
// The Python client

#[test]
#[ignore = "end-to-end: needs the real API server and kwok; run by tests/e2e.sh"]
fn python_client_stream_exec_and_portforward() {
    let ctx = Ctx::new("python-streams");
    let www = ctx.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("small.txt"), "hello from the pod\n").unwrap();
    let (_server, server_port) = http_server(&ctx, &www);
    let kwok = Kwok::start(
        &ctx,
        KubeletRules {
            forward_to: Some(server_port),
        },
    );
    kwok.running_pod(&ctx, "web");
    let (_pair, targets) = targets(&ctx, ALLOW_EXEC);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python_streams.py");
    let mut results = Vec::new();
    for t in &targets {
        let mut cmd = Command::new(required_env("KPROXY_E2E_PYTHON"));
        cmd.env_clear()
            .env("HOME", &ctx.home)
            .env("PATH", path_env())
            .arg(&script);
        match &t.proxy {
            None => cmd.arg(format!(
                "--kubeconfig={}",
                ctx.server.kubeconfig("admin").display()
            )),
            Some(url) => cmd.arg(format!("--server={url}")),
        };
        cmd.args([&ctx.ns, "web"]);
        let out = run(cmd, None);
        assert_eq!(out.code, 0, "python via {}: {out}", t.name);
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("python via {}: {e}: {out}", t.name));
        results.push((t.name, v));
    }
    let v = all_equal("python stream/portforward", &results);
    assert_eq!(v["exec"]["stdout"], "one\ntwo\n", "{v}");
    assert_eq!(v["exec"]["stderr"], "to-stderr\n", "{v}");
    assert_eq!(v["exec"]["status"], "Success", "{v}");
    assert_eq!(v["portforward"]["status"], 200, "{v}");
    assert_eq!(v["portforward"]["body"], "hello from the pod\n", "{v}");
}
