//! The scripting mode (issue 14): `kproxy --exec -- CMD`, `--ready-file`, `kproxy kubeconfig` and
//! `--write-kubeconfig`, through the real binary against a fake API server.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// PATH for the child (sh, cat, stat, curl); nothing else is inherited.
fn path_env() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned())
}

/// Runs the binary to completion off the runtime thread (the fake API server must keep serving).
async fn run(args: Vec<String>, env: Vec<(String, String)>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_kproxy(&args, &env)
    })
    .await
    .unwrap()
}

fn two_contexts(a: &FakeApi, b: &FakeApi) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n\
         - name: ca\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         - name: cb\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         users:\n- name: ua\n  user:\n    token: secret-token-a\n\
         - name: ub\n  user:\n    token: secret-token-b\n\
         contexts:\n- name: a\n  context:\n    cluster: ca\n    user: ua\n    namespace: ns-a\n\
         - name: prod/b\n  context:\n    cluster: cb\n    user: ub\n",
        a.url,
        a.ca_path.display(),
        b.url,
        b.ca_path.display(),
    )
}

#[tokio::test]
async fn exec_runs_the_command_against_the_proxy_and_returns_its_status() {
    let a = FakeApi::builder().start().await;
    let b = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::write(&kc, two_contexts(&a, &b)).unwrap();
    let script = r#"
        echo "url=$KPROXY_URL"
        echo "kubeconfig=$KUBECONFIG"
        echo "mode=$(stat -c %a "$KUBECONFIG")"
        echo "no_proxy=$NO_PROXY"
        echo "service_host=${KUBERNETES_SERVICE_HOST-unset}"
        echo "version=$(curl -s "$KPROXY_URL/clusters/b/version")"
        cat "$KUBECONFIG"
        exit 7
    "#;
    let args = vec![
        format!("--kubeconfig={}", kc.display()),
        "--all-contexts".to_owned(),
        "--cluster-alias=b=prod/b".to_owned(),
        "--exec".to_owned(),
        "--".to_owned(),
        "sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
    ];
    let env = vec![
        ("PATH".to_owned(), path_env()),
        ("NO_PROXY".to_owned(), "corp.example".to_owned()),
        // A proxy that does not exist: the child must not be sent through it to reach kproxy.
        ("HTTP_PROXY".to_owned(), "http://127.0.0.1:1".to_owned()),
        ("TMPDIR".to_owned(), dir.path().display().to_string()),
    ];
    let (code, out, err) = run(args, env).await;
    assert_eq!(code, 7, "stdout: {out}\nstderr: {err}");
    let line = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {out}"))
            .to_owned()
    };
    let url = line("url");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_ne!(url, "http://127.0.0.1:8001", "a free port is picked");
    assert_eq!(line("mode"), "600");
    assert_eq!(line("no_proxy"), "corp.example,127.0.0.1,localhost,::1");
    assert_eq!(line("service_host"), "unset");
    assert!(line("version").contains("v1.37.0-fake"), "{out}");
    assert_eq!(b.last().uri, "/version");
    assert_eq!(
        b.last().header("authorization"),
        Some("Bearer secret-token-b")
    );
    // The kubeconfig: one context per proxied context at its prefix, namespace kept, no credentials.
    assert!(
        out.contains(&format!("server: \"{url}/clusters/a\"")),
        "{out}"
    );
    assert!(
        out.contains(&format!("server: \"{url}/clusters/b\"")),
        "{out}"
    );
    assert!(out.contains("name: \"prod/b\""), "{out}");
    assert!(out.contains("namespace: \"ns-a\""), "{out}");
    assert!(out.contains("current-context: \"a\""), "{out}");
    assert!(!out.contains("secret-token"), "{out}");
    // No startup line on the child's stdout, and the file is gone.
    assert!(!out.contains("Starting to serve"), "{out}");
    assert!(!std::path::Path::new(&line("kubeconfig")).exists());
}

#[tokio::test]
async fn exec_exit_codes_follow_the_shell() {
    let a = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&a, "kc.yaml", "token: t");
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let env = vec![("PATH".to_owned(), path_env())];
    for (command, want) in [
        (vec!["true"], 0),
        (vec!["sh", "-c", "exit 3"], 3),
        // Killed by SIGTERM: 128 + 15.
        (vec!["sh", "-c", "kill -TERM $$"], 143),
        (vec!["/nonexistent/kproxy-test-command"], 127),
    ] {
        let mut args = vec![kc_flag.clone(), "--exec".to_owned(), "--".to_owned()];
        args.extend(command.iter().map(|s| s.to_string()));
        let (code, out, err) = run(args, env.clone()).await;
        assert_eq!(code, want, "{command:?}: {out} {err}");
    }
    // Usage errors: 64, one line naming the fix.
    for args in [
        vec![kc_flag.clone(), "--exec".to_owned()],
        vec![kc_flag.clone(), "--".to_owned(), "true".to_owned()],
    ] {
        let (code, _, err) = run(args.clone(), env.clone()).await;
        assert_eq!(code, 64, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[tokio::test]
async fn exec_forwards_sigterm_to_the_child_and_writes_the_ready_file() {
    let a = FakeApi::builder().start().await;
    let kc = kubeconfig_for(&a, "kc.yaml", "token: t");
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    // The child reports the ready file's content, then waits for SIGTERM (bounded: it gives up after
    // about WAIT) and exits 42 when it arrives.
    let script = format!(
        r#"trap 'echo got-term; exit 42' TERM
        echo "ready=$(cat {})"
        i=0; while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; exit 1"#,
        ready.display()
    );
    let mut child = Command::new(kproxy_bin())
        .args([
            &format!("--kubeconfig={}", kc.display()),
            &format!("--ready-file={}", ready.display()),
            "--exec",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env_clear()
        .env("PATH", path_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        // The child is running: SIGTERM goes to kproxy, which passes it on.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx.recv_timeout(WAIT);
        (first, rest, status)
    })
    .await
    .unwrap();
    let (first, rest, status) = outcome;
    let Ok(Ok(status)) = status else {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!("kproxy --exec did not exit");
    };
    let url = first.strip_prefix("ready=").expect(&first);
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    assert_eq!(rest, ["got-term"]);
    assert_eq!(status.code(), Some(42));
    assert!(!ready.exists(), "the ready file is removed at exit");
}

#[tokio::test]
async fn kproxy_kubeconfig_prints_what_a_proxy_with_the_same_flags_serves() {
    let a = FakeApi::builder().start().await;
    let b = FakeApi::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::write(&kc, two_contexts(&a, &b)).unwrap();
    let kc_flag = format!("--kubeconfig={}", kc.display());
    let (code, out, err) = run(
        vec![
            "kubeconfig".to_owned(),
            kc_flag.clone(),
            "--contexts=prod/b".to_owned(),
            "--port=18001".to_owned(),
        ],
        vec![],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // `/` (context a) is not among the --contexts, so it gets a context of its own at the root.
    assert!(out.contains("server: \"http://127.0.0.1:18001\""), "{out}");
    let slug = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server: \"http://127.0.0.1:18001/clusters/")
        })
        .expect(&out)
        .trim_end_matches('"')
        .to_owned();
    assert!(slug.starts_with("prod-b-"), "{slug}");
    assert!(!out.contains("secret-token"), "{out}");
    // Nothing was contacted.
    assert_eq!(a.count() + b.count(), 0);
    // Port 0 cannot be written down.
    let (code, _, err) = run(
        vec![
            "kubeconfig".to_owned(),
            kc_flag.clone(),
            "--port=0".to_owned(),
        ],
        vec![],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--port"), "{err}");

    // --write-kubeconfig: written once serving, with the port actually bound; kubectl reads it and goes
    // through the proxy.
    let written = dir.path().join("out.yaml");
    let mut kp = KproxyProcess::spawn(
        &[
            &kc_flag,
            "--all-contexts",
            "--port=0",
            &format!("--write-kubeconfig={}", written.display()),
        ],
        &[],
    );
    let text = std::fs::read_to_string(&written).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&written).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        text.contains(&format!("server: \"{}/clusters/a\"", kp.url())),
        "{text}"
    );
    let (written_path, home) = (written.clone(), dir.path().to_owned());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .args(["--kubeconfig", written_path.to_str().unwrap()])
            .args(["--context", "a", "get", "--raw", "/version"])
            .env_clear()
            .env("PATH", path_env())
            .env("HOME", home)
            .output()
            .expect("kubectl on PATH (tests/kubectl.rs needs it too)")
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("v1.37.0-fake"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(a.last().uri, "/version");
    assert_eq!(
        a.last().header("authorization"),
        Some("Bearer secret-token-a")
    );
    kp.signal("TERM");
    let _ = kp.rest_of_stdout();
    let (code, _) = kp.wait(Duration::from_secs(20));
    assert_eq!(code, 0);
}
