//! The real kubectl (v1.32) runs exec, attach and port-forward through kproxy against the fake API
//! server, which speaks the real handshakes: WebSocket `v5.channel.k8s.io` for exec and attach, SPDY/3.1
//! (plain, or tunnelled in WebSocket) for port-forward. Fails when kubectl is not installed: CI has it.
mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::streams::kube_routes;
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

struct Bed {
    api: FakeApi,
    kp: Kproxy,
    cache: tempfile::TempDir,
}

async fn bed(flags: &[&str]) -> Bed {
    let api = kube_routes(FakeApi::builder()).start().await;
    let kc = kubeconfig_for(&api, "kc.yaml", "token: s3cret");
    let kp = Kproxy::with_kubeconfig(&kc, flags).await;
    Bed {
        api,
        kp,
        cache: tempfile::tempdir().unwrap(),
    }
}

impl Bed {
    /// kubectl pointed at kproxy only, with no kubeconfig of its own.
    fn kubectl(&self, bin: &PathBuf, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("--kubeconfig=/dev/null")
            .arg(format!("--server={}", self.kp.url))
            .arg(format!("--cache-dir={}", self.cache.path().display()))
            .args(["-n", "default"])
            .args(args)
            .env_clear()
            .env("HOME", self.cache.path())
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

async fn output(mut cmd: Command, stdin: Option<&[u8]>) -> (i32, String, String) {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(data).await.unwrap();
        drop(w);
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("kubectl did not finish")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_exec_runs_over_websocket_through_kproxy() {
    let bin = kubectl_bin();
    let bed = bed(&["--reject-paths="]).await;
    let (code, out, err) = output(
        bed.kubectl(&bin, &["exec", "web", "--", "echo", "hello"]),
        None,
    )
    .await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "exec: echo hello\n", "stderr: {err}");
    bed.kp.stop().await;
}

#[tokio::test]
async fn kubectl_exec_with_stdin_streams_both_ways() {
    let bin = kubectl_bin();
    let bed = bed(&["--reject-paths="]).await;
    let (code, out, err) = output(
        bed.kubectl(&bin, &["exec", "-i", "web", "--", "cat"]),
        Some(b"line one\nline two\n"),
    )
    .await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "exec: cat\nline one\nline two\n", "stderr: {err}");
    bed.kp.stop().await;
}

#[tokio::test]
async fn kubectl_attach_runs_through_kproxy() {
    let bin = kubectl_bin();
    let bed = bed(&["--disable-filter"]).await;
    let (code, out, err) = output(bed.kubectl(&bin, &["attach", "web", "-c", "main"]), None).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("attached to main"),
        "stdout: {out}\nstderr: {err}"
    );
    bed.kp.stop().await;
}

#[tokio::test]
async fn kubectl_exec_is_rejected_by_default_and_says_why() {
    let bin = kubectl_bin();
    let bed = bed(&[]).await;
    let (code, out, err) = output(bed.kubectl(&bin, &["exec", "web", "--", "true"]), None).await;
    assert_ne!(code, 0, "stdout: {out}");
    assert!(
        err.contains("exec and attach are rejected by default"),
        "stderr: {err}"
    );
    bed.kp.stop().await;
}

/// Runs `kubectl port-forward` with `KUBECTL_PORT_FORWARD_WEBSOCKETS=websockets` and checks that
/// echoes come back and that the upgrade was `expect_upgrade` (WebSocket or SPDY/3.1).
async fn port_forward(websockets: Option<&str>, expect_upgrade: &str) {
    let bin = kubectl_bin();
    let bed = bed(&[]).await;
    let mut cmd = bed.kubectl(&bin, &["port-forward", "pod/web", ":80"]);
    if let Some(v) = websockets {
        cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", v);
    }
    cmd.stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    // "Forwarding from 127.0.0.1:PORT -> 80"
    let line = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("kubectl port-forward printed nothing")
        .unwrap();
    let Some(line) = line else {
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        panic!("kubectl port-forward exited: {err}");
    };
    let port: u16 = line
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line: {line}"));
    for round in 0..2 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let data = pattern(64 * 1024 + round);
        s.write_all(&data).await.unwrap();
        let mut got = vec![0u8; data.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut got))
            .await
            .expect("no echo through port-forward")
            .unwrap();
        assert!(got == data, "round {round}: echoed bytes differ");
    }
    child.kill().await.unwrap();
    let rec = bed
        .api
        .recorded()
        .into_iter()
        .find(|r| r.uri.contains("/portforward"))
        .unwrap();
    assert_eq!(rec.header("upgrade"), Some(expect_upgrade));
    assert_eq!(rec.version, http::Version::HTTP_11);
    bed.kp.stop().await;
}

#[tokio::test]
async fn kubectl_port_forward_default_transport_through_kproxy() {
    // kubectl 1.32 tunnels SPDY through WebSocket by default.
    port_forward(None, "websocket").await;
}

#[tokio::test]
async fn kubectl_port_forward_over_plain_spdy_through_kproxy() {
    port_forward(Some("false"), "SPDY/3.1").await;
}

#[tokio::test]
async fn kubectl_port_forward_over_websocket_tunnel_through_kproxy() {
    port_forward(Some("true"), "websocket").await;
}
