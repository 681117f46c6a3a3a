//! Issue 13 against the genuine API server: what a web page in a real browser (headless Chromium) can
//! reach through kproxy and through `kubectl proxy`, `--read-only` with kubectl, and the inbound token
//! replaced by kproxy's own credential. Included by `tests/e2e_real_apiserver.rs`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// The Secret value the pages try to read (as it appears, base64-encoded, in the API's JSON).
const SECRET_VALUE: &str = "browser-hole-e2e";
const SECRET_B64: &str = "YnJvd3Nlci1ob2xlLWUyZQ==";

fn secret(ns: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db-password", "namespace": ns},
        "data": {"password": SECRET_B64}
    })
    .to_string()
}

/// The page: a cross-origin `fetch()` of the namespace's Secrets, then a WebSocket watch on them,
/// then a report of what it saw, posted (no-cors, so any page can) to the page server.
fn page(http_base: &str, ws_base: &str, ns: &str, report: &str) -> String {
    r#"<!doctype html><html><body><pre id="out">running</pre><script>
const results = {};
const SECRET = "__SECRET__";
async function tryFetch() {
  try {
    const r = await fetch("__HTTP__/api/v1/namespaces/__NS__/secrets");
    results.fetch_status = r.status;
    results.fetch_secret = (await r.text()).includes(SECRET);
  } catch (e) { results.fetch_error = String(e); }
}
function tryWebSocket() {
  return new Promise((resolve) => {
    let done = false;
    const finish = () => { if (!done) { done = true; resolve(); } };
    results.ws_secret = false;
    let ws;
    try { ws = new WebSocket("__WS__/api/v1/namespaces/__NS__/secrets?watch=true"); }
    catch (e) { results.ws_error = String(e); return finish(); }
    ws.onopen = () => { results.ws_open = true; };
    ws.onmessage = async (ev) => {
      const text = typeof ev.data === "string" ? ev.data : await ev.data.text();
      if (text.includes(SECRET)) { results.ws_secret = true; ws.close(); }
    };
    ws.onerror = () => { results.ws_error = "error event"; };
    ws.onclose = (ev) => { results.ws_close = ev.code; finish(); };
    setTimeout(() => { results.ws_timeout = true; try { ws.close(); } catch (e) {} finish(); }, 15000);
  });
}
(async () => {
  await tryFetch();
  await tryWebSocket();
  document.getElementById("out").textContent = JSON.stringify(results);
  await fetch("__REPORT__", {method: "POST", mode: "no-cors", body: JSON.stringify(results)});
})();
</script></body></html>
"#
    .replace("__SECRET__", SECRET_B64)
    .replace("__HTTP__", http_base)
    .replace("__WS__", ws_base)
    .replace("__NS__", ns)
    .replace("__REPORT__", report)
}

/// A loopback web server of the test's own: it serves pages (`GET /NAME.html`) and receives their
/// reports (`POST /report/NAME`). Its origin is `http://localhost:PORT`, another origin (and site) than
/// the proxies at `127.0.0.1`.
struct PageServer {
    port: u16,
    pages: Arc<Mutex<HashMap<String, String>>>,
    reports: Mutex<mpsc::Receiver<(String, String)>>,
}

impl PageServer {
    fn start() -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pages: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let served = pages.clone();
        // Lives as long as the test process; each connection gets a thread with a read timeout.
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let pages = served.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &pages, &tx);
                });
            }
        });
        PageServer {
            port,
            pages,
            reports: Mutex::new(rx),
        }
    }

    fn origin(&self) -> String {
        format!("http://localhost:{}", self.port)
    }

    fn add(&self, name: &str, html: String) -> String {
        self.pages.lock().unwrap().insert(name.to_owned(), html);
        format!("{}/{name}.html", self.origin())
    }

    fn report_url(&self, name: &str) -> String {
        format!("{}/report/{name}", self.origin())
    }

    /// The report of page `name`, waited for (bounded).
    fn report(&self, name: &str) -> Value {
        let rx = self.reports.lock().unwrap();
        loop {
            let (from, body) = rx
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no report from the page {name} within {WAIT:?}"));
            if from == name {
                return serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            }
        }
    }
}

fn serve_one(
    stream: TcpStream,
    pages: &Mutex<HashMap<String, String>>,
    reports: &mpsc::Sender<(String, String)>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let mut out = stream;
    let page = target
        .strip_prefix('/')
        .and_then(|t| t.strip_suffix(".html"))
        .and_then(|name| pages.lock().unwrap().get(name).cloned());
    match (method.as_str(), page, target.strip_prefix("/report/")) {
        ("GET", Some(html), _) => write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
            html.len()
        ),
        ("POST", _, Some(name)) => {
            let _ = reports.send((name.to_owned(), String::from_utf8_lossy(&body).into_owned()));
            write!(out, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        }
        _ => write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}

fn chromium_bin() -> String {
    let bin = required_env("KPROXY_E2E_CHROMIUM");
    assert!(
        Path::new(&bin).exists(),
        "KPROXY_E2E_CHROMIUM={bin} does not exist"
    );
    bin
}

/// Opens `url` in a new headless Chromium (its own profile) until the page has reported.
fn browse(ctx: &Ctx, pages: &PageServer, name: &str, url: &str) -> Value {
    let profile = ctx.file("chromium-profile");
    let mut cmd = Command::new(chromium_bin());
    cmd.env_clear()
        .env("HOME", &ctx.home)
        .env("PATH", path_env())
        .args([
            "--headless=new",
            // Root in CI; the page is the test's own.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url);
    let _browser = Proc::spawn(ctx, &format!("chromium-{name}"), cmd);
    let report = pages.report(name);
    eprintln!("e2e: page {name} ({url}) saw {report}");
    report
}

/// The issue's proof: the same page, from another loopback origin, against `kubectl proxy` (reads the
/// Secret over a WebSocket), kproxy (refused), kproxy with the page's origin in
/// `--cors-allowed-origin` (fetch and WebSocket both work), and a page served by kproxy's own `--www`
/// (same origin: works without any flag).
#[test]
#[ignore = "end-to-end: needs the real API server; run by tests/e2e.sh"]
fn a_web_page_in_chromium_reads_secrets_only_where_allowed() {
    let ctx = Ctx::new("browser");
    let ns = ctx.ns.as_str();
    ctx.admin_apply(&secret(ns));
    let pages = PageServer::start();
    let kc = format!("--kubeconfig={}", ctx.server.kubeconfig("admin").display());
    let page_to = |name: &str, proxy_url: &str| {
        let ws = proxy_url.replacen("http://", "ws://", 1);
        pages.add(name, page(proxy_url, &ws, ns, &pages.report_url(name)))
    };

    // kubectl proxy: the hole. CORS keeps fetch() from reading, but a WebSocket reads the Secret.
    let (_kc_proxy, kc_url) = kubectl_proxy(&ctx, &[&kc]);
    let seen = browse(
        &ctx,
        &pages,
        "kubectl-proxy",
        &page_to("kubectl-proxy", &kc_url),
    );
    assert_eq!(
        seen["ws_secret"], true,
        "kubectl proxy let the page read the Secret: {seen}"
    );
    assert!(seen.get("fetch_error").is_some(), "{seen}");

    // kproxy, default flags: both refused, by kproxy (its log names the page's origin).
    let (kp, kp_url) = kproxy(&ctx, &[&kc], &[]);
    let seen = browse(&ctx, &pages, "kproxy", &page_to("kproxy", &kp_url));
    assert_eq!(seen["ws_secret"], false, "{seen}");
    assert_ne!(seen["ws_open"], true, "{seen}");
    assert!(seen.get("fetch_error").is_some(), "{seen}");
    let log = kp.stderr_text();
    let refusal = format!(
        "refused a request from the web page at origin \"{}\"",
        pages.origin()
    );
    assert!(
        log.matches(&refusal).count() >= 2,
        "fetch and WebSocket refused:\n{log}"
    );
    drop(kp);

    // kproxy with the page's origin allowed: CORS for fetch(), the same list for the WebSocket.
    let allow = format!("--cors-allowed-origin={}", pages.origin());
    let (_kp, kp_url) = kproxy(&ctx, &[&kc, &allow], &[]);
    let seen = browse(
        &ctx,
        &pages,
        "kproxy-cors",
        &page_to("kproxy-cors", &kp_url),
    );
    assert_eq!(seen["fetch_status"], 200, "{seen}");
    assert_eq!(seen["fetch_secret"], true, "{seen}");
    assert_eq!(seen["ws_secret"], true, "{seen}");

    // A page served by kproxy itself (--www) is same-origin: it works with default flags.
    let www = ctx.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let (kp, kp_url) = {
        let www_flag = format!("--www={}", www.display());
        kproxy(&ctx, &[&kc, &www_flag], &[])
    };
    let own_ws = kp_url.replacen("http://", "ws://", 1);
    std::fs::write(
        www.join("index.html"),
        page("", &own_ws, ns, &pages.report_url("kproxy-www")),
    )
    .unwrap();
    let seen = browse(&ctx, &pages, "kproxy-www", &format!("{kp_url}/static/"));
    assert_eq!(seen["fetch_status"], 200, "{seen}");
    assert_eq!(seen["fetch_secret"], true, "{seen}");
    assert_eq!(seen["ws_secret"], true, "{seen}");
    assert!(!kp.stderr_text().contains("refused a request"));
}

/// The issue's own reproduction without a browser: a WebSocket handshake with `Origin:
/// https://evil.example` for a watch on Secrets. kubectl proxy upgrades and streams the Secret; kproxy
/// answers 403.
#[test]
#[ignore = "end-to-end: needs the real API server; run by tests/e2e.sh"]
fn a_websocket_from_another_origin_gets_secrets_only_through_kubectl_proxy() {
    let ctx = Ctx::new("ws-origin");
    let ns = ctx.ns.as_str();
    ctx.admin_apply(&secret(ns));
    let kc = format!("--kubeconfig={}", ctx.server.kubeconfig("admin").display());
    let (_kc_proxy, kc_url) = kubectl_proxy(&ctx, &[&kc]);
    let (_kp, kp_url) = kproxy(&ctx, &[&kc], &[]);
    let handshake = |url: &str| -> (String, Vec<u8>) {
        let addr = url.strip_prefix("http://").unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET /api/v1/namespaces/{ns}/secrets?watch=true HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://evil.example\r\n\r\n"
        )
        .unwrap();
        // Read until the Secret's value shows up, the server closes, or 20 s pass.
        let mut seen = Vec::new();
        let mut buf = [0u8; 8192];
        while !contains(&seen, SECRET_B64.as_bytes()) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if seen.starts_with(b"HTTP/1.1 403")
                && contains(&seen, b"\r\n\r\n")
                && contains(&seen, b"}")
            {
                break;
            }
        }
        let head_end = seen
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(seen.len(), |p| p + 4);
        (
            String::from_utf8_lossy(&seen[..head_end]).into_owned(),
            seen[head_end..].to_vec(),
        )
    };
    let (head, frames) = handshake(&kc_url);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        contains(&frames, SECRET_B64.as_bytes()),
        "kubectl proxy streamed the Secret"
    );
    let (head, body) = handshake(&kp_url);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(!contains(&body, SECRET_B64.as_bytes()));
    let _ = SECRET_VALUE;
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `--read-only` with kubectl: reads and watches pass, `auth can-i` / `whoami` and server-side dry
/// runs pass, apply, delete, exec and port-forward are refused with kproxy's reason, and nothing changed.
#[test]
#[ignore = "end-to-end: needs the real API server; run by tests/e2e.sh"]
fn read_only_serves_kubectl_reads_and_refuses_its_writes() {
    let ctx = Ctx::new("read-only");
    let ns = ctx.ns.as_str();
    ctx.admin(&[
        "-n",
        ns,
        "create",
        "configmap",
        "existing",
        "--from-literal=v=1",
    ])
    .ok();
    ctx.admin_apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"containers": [{"name": "main", "image": "registry.invalid/none:1"}]}
        })
        .to_string(),
    );
    // There is no kubelet: mark the Pod Running so that kubectl port-forward gets as far as the upgrade.
    ctx.admin(&[
        "-n",
        ns,
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ])
    .ok();
    let kc = format!("--kubeconfig={}", ctx.server.kubeconfig("admin").display());
    let (_kp, url) = kproxy(&ctx, &[&kc, "--read-only"], &[]);

    // Reads.
    let table = ctx
        .kubectl_via(&url, &["-n", ns, "get", "configmaps"], None)
        .ok();
    assert!(table.lines().any(|l| l.starts_with("existing ")), "{table}");
    let mut cmd = ctx.kubectl_cmd();
    cmd.args(["--kubeconfig=/dev/null", &format!("--server={url}")])
        .args([
            "-n",
            ns,
            "get",
            "configmaps",
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ]);
    let mut watch = Proc::spawn(&ctx, "kubectl-watch", cmd);
    watch.wait_for("the initial ADDED existing", |out| {
        events(&json_values(out))
            .contains(&("ADDED".into(), "existing".into()))
            .then_some(())
    });
    let can = ctx.kubectl_via(&url, &["auth", "can-i", "create", "pods", "-n", ns], None);
    assert_eq!(
        can.stdout.trim(),
        "yes",
        "SelfSubjectAccessReview passes: {can}"
    );
    let whoami = ctx
        .kubectl_via(&url, &["auth", "whoami", "-o", "json"], None)
        .ok();
    assert!(whoami.contains("SelfSubjectReview"), "{whoami}");

    // A server-side dry run passes; the object is not created.
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: new-one\n  namespace: {ns}\ndata:\n  v: \"1\"\n"
    );
    let out = ctx
        .kubectl_via(
            &url,
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&manifest),
        )
        .ok();
    assert_eq!(out.trim(), "configmap/new-one created (server dry run)");

    // Writes and upgrades are refused, with kproxy's reason.
    let refused = |args: &[&str], stdin: Option<&str>, rule: &str| {
        let out = ctx.kubectl_via(&url, args, stdin);
        assert_ne!(out.code, 0, "{args:?} passed\n{out}");
        assert!(
            out.stderr.contains("kproxy --read-only refused") && out.stderr.contains(rule),
            "{args:?}: {out}"
        );
    };
    refused(&["apply", "-f", "-"], Some(&manifest), "dryRun=All");
    refused(
        &["-n", ns, "delete", "configmap", "existing"],
        None,
        "dryRun=All",
    );
    refused(&["-n", ns, "exec", "web", "--", "true"], None, "upgrades");
    refused(
        &["-n", ns, "port-forward", "pod/web", "0:80"],
        None,
        "upgrades",
    );
    refused(
        &["-n", ns, "get", "configmaps", "--as=system:admin"],
        None,
        "Impersonate",
    );

    // Nothing changed.
    let missing = ctx.admin(&["-n", ns, "get", "configmap", "new-one"]);
    assert!(missing.stderr.contains("not found"), "{missing}");
    ctx.admin(&["-n", ns, "get", "configmap", "existing"]).ok();
}

/// `--auth-token-file`: the token is required, and it never reaches the API server (which would reject
/// it): kproxy's own credential takes its place, so requests run as the kubeconfig's user.
#[test]
#[ignore = "end-to-end: needs the real API server; run by tests/e2e.sh"]
fn the_inbound_token_is_replaced_by_kproxys_credential() {
    let ctx = Ctx::new("inbound-token");
    let token_file = ctx.write("token", "e2e-inbound-token-123\n");
    let kc = format!("--kubeconfig={}", ctx.server.kubeconfig("alice").display());
    let tf = format!("--auth-token-file={}", token_file.display());
    let (kp, url) = kproxy(&ctx, &[&kc, &tf], &[]);

    let r = ctx.curl(&format!("{url}/api"), &[]);
    assert_eq!(r.status, 401, "{r:?}");
    let r = ctx.curl(
        &format!("{url}/api"),
        &["-H", "Authorization: Bearer wrong-token"],
    );
    assert_eq!(r.status, 401, "{r:?}");

    let mut args = vec!["-H", "Authorization: Bearer e2e-inbound-token-123"];
    args.extend(crate::whoami_args());
    let r = ctx.curl(&format!("{url}{}", crate::WHOAMI), &args);
    let review = r.expect(201);
    assert_eq!(crate::user_of(&review).0, "alice", "{review}");

    // The Python client sends its api_key as `Authorization: Bearer` (over plain HTTP too).
    let script = r#"
import sys
from kubernetes import client
c = client.Configuration()
c.host = sys.argv[1]
c.api_key = {"authorization": sys.argv[2]}
c.api_key_prefix = {"authorization": "Bearer"}
review = client.AuthenticationV1Api(client.ApiClient(c)).create_self_subject_review(
    client.V1SelfSubjectReview())
print(review.status.user_info.username)
"#;
    let mut cmd = Command::new(required_env("KPROXY_E2E_PYTHON"));
    cmd.env_clear()
        .env("HOME", &ctx.home)
        .env("PATH", path_env())
        .args(["-c", script, &url, "e2e-inbound-token-123"]);
    assert_eq!(run(cmd, None).ok().trim(), "alice");

    // kubectl (client-go) never sends a bearer token to an http:// server, so it cannot present the
    // token (docs/security.md); what it gets is kproxy's 401 and its message.
    let out = ctx.kubectl_via(
        &url,
        &["--token=e2e-inbound-token-123", "auth", "whoami"],
        None,
    );
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("kproxy requires its token"), "{out}");

    let log = kp.stderr_text();
    assert!(
        !log.contains("e2e-inbound-token-123"),
        "the token was logged"
    );
    assert!(!log.contains("wrong-token"), "a rejected token was logged");
}

/// The Python client's WebSocket (exec) sends `Origin: http://127.0.0.1:PORT`: kproxy's own origin, so
/// it passes the check and gets the API server's own answer (the Pod has no node: 400), not a 403.
#[test]
#[ignore = "end-to-end: needs the real API server; run by tests/e2e.sh"]
fn the_python_clients_websocket_is_same_origin() {
    let ctx = Ctx::new("python-ws");
    let ns = ctx.ns.as_str();
    ctx.admin_apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"containers": [{"name": "main", "image": "registry.invalid/none:1"}]}
        })
        .to_string(),
    );
    let kc = format!("--kubeconfig={}", ctx.server.kubeconfig("admin").display());
    // Exec allowed past kubectl's default filter, so the request reaches the guard and beyond.
    let (kp, url) = kproxy(&ctx, &[&kc, "--reject-paths=^/nothing$"], &[]);
    let script = r#"
import sys
from kubernetes import client
from kubernetes.stream import stream
c = client.Configuration()
c.host = sys.argv[1]
api = client.CoreV1Api(client.ApiClient(c))
try:
    stream(api.connect_get_namespaced_pod_exec, "web", sys.argv[2], command=["true"],
           stderr=True, stdin=False, stdout=True, tty=False)
    print("no error")
except Exception as e:
    print(type(e).__name__, str(e).replace("\n", " ")[:400])
"#;
    let mut cmd = Command::new(required_env("KPROXY_E2E_PYTHON"));
    cmd.env_clear()
        .env("HOME", &ctx.home)
        .env("PATH", path_env())
        .args(["-c", script, &url, ns]);
    let out = run(cmd, None).ok();
    assert!(out.contains("400") && !out.contains("403"), "{out}");
    let log = kp.stderr_text();
    eprintln!("e2e: the Python client's exec through kproxy: {out}");
    assert!(
        log.contains(&format!(
            "Filter accepting GET /api/v1/namespaces/{ns}/pods/web/exec"
        )),
        "the handshake passed the guard:\n{log}"
    );
    assert!(!log.contains("refused a request"), "{log}");
}
