//! Support for `tests/e2e_real_apiserver.rs`: the shared real API server, processes that are always
//! killed, curl and kubectl runners, stream readers, and the JSON normalisation used to compare kproxy
//! with `kubectl proxy`.
//!
//! Everything here blocks (std threads and processes): the clients under test are separate programs, so
//! an async runtime would add nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for one client command or one wait. Generous: the machine may be shared and loaded.
pub const WAIT: Duration = Duration::from_secs(90);
/// Upper bound for the API server to print its ready line (its own limit for /readyz is 180 s).
const SERVER_START: Duration = Duration::from_secs(240);

/// A required setting from `tests/e2e.sh`. Panics (fails the test) when it is missing: the suite never
/// passes without the real server and clients.
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: this end-to-end test needs the real API server and clients; \
             run it with `bash tests/e2e.sh`"
        ),
    }
}

/// The caller's `PATH`, for the clients started with an otherwise cleared environment.
pub fn path_env() -> std::ffi::OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into())
}

pub fn kubectl_bin() -> String {
    let bin = required_env("KPROXY_E2E_KUBECTL");
    assert!(
        Path::new(&bin).exists(),
        "KPROXY_E2E_KUBECTL={bin} does not exist"
    );
    bin
}

pub fn kproxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kproxy")
}

/// The directory for this run's files: `KPROXY_E2E_WORKDIR` (created and removed by e2e.sh), else a
/// new directory under the system temp dir.
fn workdir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match std::env::var("KPROXY_E2E_WORKDIR") {
            Ok(d) if !d.is_empty() => PathBuf::from(d),
            _ => std::env::temp_dir().join(format!("kproxy-e2e-{}", std::process::id())),
        }
        // One subdirectory per test binary: each starts its own API server in it.
        .join(env!("CARGO_CRATE_NAME"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

// ---------------------------------------------------------------------------------------------------
// The API server

/// The k8s-testenv process shared by every test of the run (see tests/apiserver/README.md).
pub struct ApiServer {
    /// Its `TESTENV_DIR`: certificates, kubeconfigs, `testenv.log`.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    pub port: u16,
    pub pid: u32,
    /// Held open for the life of the test process: the server runs with `TESTENV_STDIN_EOF_EXIT=1`, so
    /// it shuts itself down when this process exits, however it exits (statics are never dropped).
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

impl ApiServer {
    /// The shared server, started on first use. A failed start is remembered, so later tests fail at
    /// once with the same message instead of waiting for another start.
    pub fn get() -> &'static ApiServer {
        static SERVER: OnceLock<Result<ApiServer, String>> = OnceLock::new();
        match SERVER.get_or_init(ApiServer::start) {
            Ok(s) => s,
            Err(e) => panic!("the API server did not start: {e}"),
        }
    }

    fn start() -> Result<ApiServer, String> {
        let bin = required_env("KPROXY_E2E_APISERVER");
        let mut errors = Vec::new();
        // With automatic ports there is a small race between choosing and binding: try twice.
        for attempt in 1..=2 {
            let dir = workdir().join(format!("apiserver-{attempt}"));
            match ApiServer::start_once(&bin, &dir) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    eprintln!("e2e: API server start attempt {attempt} failed: {e}");
                    errors.push(e);
                }
            }
        }
        Err(errors.join("; "))
    }

    /// A server of the test's own, with extra kube-apiserver `flags`, in `dir`; it stops when dropped
    /// (its stdin closes).
    pub fn start_own(dir: &Path, flags: &[&str]) -> Result<ApiServer, String> {
        ApiServer::start_once_with(&required_env("KPROXY_E2E_APISERVER"), dir, flags)
    }

    fn start_once(bin: &str, dir: &Path) -> Result<ApiServer, String> {
        ApiServer::start_once_with(bin, dir, &[])
    }

    fn start_once_with(bin: &str, dir: &Path, flags: &[&str]) -> Result<ApiServer, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let stderr_path = dir.join("stderr.txt");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(kubelet_flags())
            .args(flags)
            .env("TESTENV_DIR", dir)
            .env("TESTENV_STDIN_EOF_EXIT", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run {bin}: {e}"))?;
        let stdin = child.stdin.take().unwrap();
        let lines = line_channel(child.stdout.take().unwrap());
        let line = match lines.recv_timeout(SERVER_START) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no ready line within {SERVER_START:?}\nstderr:\n{}\ntestenv.log (tail):\n{}",
                    tail(&stderr_path, 30),
                    tail(&dir.join("testenv.log"), 30)
                ));
            }
        };
        let url = line
            .strip_prefix("ready ")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?
            .to_owned();
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        eprintln!(
            "e2e: API server ready at {url} after {:.1}s (TESTENV_DIR={})",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        Ok(ApiServer {
            dir: dir.to_owned(),
            url,
            port,
            pid: child.id(),
            _stdin: Mutex::new(stdin),
            _child: Mutex::new(child),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.path(&format!("{user}.kubeconfig"))
    }
}

/// Reads lines from `r` on a thread; the first one is sent, the rest are drained (so the writer never
/// blocks or gets EPIPE).
fn line_channel(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = String::new();
        while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
            let _ = tx.send(line.trim_end().to_owned());
            line.clear();
        }
    });
    rx
}

/// The last `n` lines of a file (for failure reports).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

// ---------------------------------------------------------------------------------------------------
// One test's context

/// One test: its own namespace and scratch directory. On failure (panic) it prints the tail of the API
/// server's log.
pub struct Ctx {
    pub server: &'static ApiServer,
    pub ns: String,
    pub dir: PathBuf,
    /// Empty `HOME` for every client process (kubectl's cache, no stray kubeconfig).
    pub home: PathBuf,
    counter: AtomicUsize,
}

impl Ctx {
    /// Starts (or reuses) the server and creates the namespace `e2e-<name>`.
    pub fn new(name: &str) -> Ctx {
        let server = ApiServer::get();
        let ns = format!("e2e-{name}");
        let dir = workdir().join(&ns);
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let ctx = Ctx {
            server,
            ns,
            dir,
            home,
            counter: AtomicUsize::new(0),
        };
        ctx.admin(&["create", "namespace", &ctx.ns]).ok();
        ctx
    }

    /// A fresh file name in this test's directory.
    pub fn file(&self, stem: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{stem}-{n}"))
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// `kubectl` with a clean environment and no kubeconfig of its own.
    pub fn kubectl_cmd(&self) -> Command {
        let mut cmd = Command::new(kubectl_bin());
        cmd.env_clear()
            .env("HOME", &self.home)
            .env("PATH", path_env())
            .arg(format!(
                "--cache-dir={}",
                self.home.join("kube-cache").display()
            ))
            .arg("--request-timeout=60s");
        cmd
    }

    /// `kubectl` as admin, straight to the API server (setup and checks, not under test).
    pub fn admin(&self, args: &[&str]) -> Out {
        let mut cmd = self.kubectl_cmd();
        cmd.arg(format!(
            "--kubeconfig={}",
            self.server.kubeconfig("admin").display()
        ))
        .args(args);
        run(cmd, None)
    }

    /// `kubectl` pointed at a proxy URL only (`--server`, no kubeconfig, no credentials).
    pub fn kubectl_via(&self, proxy_url: &str, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = self.kubectl_cmd();
        cmd.arg("--kubeconfig=/dev/null")
            .arg(format!("--server={proxy_url}"))
            .args(args);
        run(cmd, stdin)
    }

    /// `kubectl apply -f -` as admin, straight to the API server.
    pub fn admin_apply(&self, yaml: &str) {
        let mut cmd = self.kubectl_cmd();
        cmd.arg(format!(
            "--kubeconfig={}",
            self.server.kubeconfig("admin").display()
        ))
        .args(["apply", "-f", "-"]);
        run(cmd, Some(yaml)).ok();
    }

    /// curl to the API server itself with `auth` (e.g. `["-H", "Authorization: Bearer bob-token"]`),
    /// trusting its CA: the reference answer for what kproxy must relay.
    pub fn direct(&self, auth: &[&str], method: &str, path: &str, extra: &[&str]) -> Resp {
        let ca = self.server.path("ca.crt");
        let mut args = vec!["--cacert", ca.to_str().unwrap(), "-X", method];
        args.extend_from_slice(auth);
        args.extend_from_slice(extra);
        self.curl(&format!("{}{path}", self.server.url), &args)
    }

    /// curl with a clean environment (no `*_proxy` variables, no `~/.curlrc`).
    pub fn curl_cmd(&self) -> Command {
        let mut cmd = Command::new("curl");
        cmd.env_clear()
            .env("HOME", &self.home)
            .env("PATH", path_env())
            .arg("-q");
        cmd
    }

    /// One request with curl: `args` come before the URL. Bounded by `--max-time`.
    pub fn curl(&self, url: &str, args: &[&str]) -> Resp {
        let headers = self.file("headers");
        let body = self.file("body");
        let mut cmd = self.curl_cmd();
        cmd.args(["-sS", "--max-time", "60", "-o"])
            .arg(&body)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(url);
        let out = run(cmd, None);
        let status: u16 = out.stdout.trim().parse().unwrap_or_else(|_| {
            panic!("curl {args:?} {url}: no status\n{out}");
        });
        assert!(out.code == 0, "curl {args:?} {url} failed\n{out}");
        let body = std::fs::read(&body).unwrap_or_default();
        Resp {
            status,
            headers: parse_headers(&std::fs::read_to_string(&headers).unwrap_or_default()),
            body,
            what: format!("{args:?} {url}"),
        }
    }

    /// A JSON request through curl: `method` with `content_type` and `body` (none for `""`).
    pub fn request(
        &self,
        base: &str,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Resp {
        let mut args = vec!["-X", method];
        let ct = format!("Content-Type: {content_type}");
        let data = format!("@{}", self.file("request").display());
        if !body.is_empty() {
            std::fs::write(&data[1..], body).unwrap();
            args.extend_from_slice(&["-H", &ct, "--data-binary", &data]);
        }
        self.curl(&format!("{base}{path}"), &args)
    }

    /// Polls `f` every 200 ms until it returns `Some` or `within` passes.
    pub fn eventually<T>(
        &self,
        what: &str,
        within: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                start.elapsed() < within,
                "timed out after {within:?}: {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- e2e {}: API server log, last 40 lines ({}):\n{}\n---- API server stderr:\n{}",
                self.ns,
                self.server.path("testenv.log").display(),
                tail(&self.server.path("testenv.log"), 40),
                tail(&self.server.path("stderr.txt"), 20),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Running commands

/// The outcome of a finished command.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "command failed\n{self}");
        self.stdout
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion within [`WAIT`] (killed and failed otherwise).
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Out {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let what = shorten(&format!("{cmd:?}"), 600);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = collector(child.stdout.take().unwrap());
    let stderr = collector(child.stderr.take().unwrap());
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        // A client that exits early closes its stdin; its output tells why.
        let _ = w.write_all(data.as_bytes());
    }
    let status = wait_bounded(&mut child, WAIT)
        .unwrap_or_else(|| panic!("{what} did not finish within {WAIT:?}"));
    let text = |c: &Collector| {
        c.finish();
        String::from_utf8_lossy(&c.bytes()).into_owned()
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: text(&stdout),
        stderr: text(&stderr),
    }
}

/// Waits for `child` up to `within`; kills it and returns `None` on timeout.
fn wait_bounded(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Collects everything a pipe yields, on a thread.
#[derive(Clone)]
pub struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

pub fn collector(mut r: impl Read + Send + 'static) -> Collector {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    Collector {
        buf,
        done: Arc::new(Mutex::new(Some(handle))),
    }
}

impl Collector {
    pub fn bytes(&self) -> Vec<u8> {
        self.buf.lock().unwrap().clone()
    }
    /// Waits for the pipe to close (after the process exited).
    fn finish(&self) {
        if let Some(h) = self.done.lock().unwrap().take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Long-running processes

/// A background process (kproxy, kubectl proxy, a watch) that is killed when dropped, also when the
/// test fails; on failure its stderr is printed.
pub struct Proc {
    pub name: String,
    child: Child,
    stderr_path: PathBuf,
    /// Its stdout, for stream readers.
    pub stdout: Collector,
}

impl Proc {
    /// Spawns `cmd` with stdout collected and stderr in a file.
    pub fn spawn(ctx: &Ctx, name: &str, mut cmd: Command) -> Proc {
        let stderr_path = ctx.file(&format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = collector(child.stdout.take().unwrap());
        Proc {
            name: name.to_owned(),
            child,
            stderr_path,
            stdout,
        }
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.bytes()).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until `f(stdout so far)` returns `Some`, failing after [`WAIT`] or when the process exits
    /// without producing it.
    #[track_caller]
    pub fn wait_for<T>(&mut self, what: &str, f: impl FnMut(&[u8]) -> Option<T>) -> T {
        self.wait_for_every(Duration::from_millis(50), what, f)
    }

    /// [`Proc::wait_for`], looking every `poll` (for measuring when something arrived).
    #[track_caller]
    pub fn wait_for_every<T>(
        &mut self,
        poll: Duration,
        what: &str,
        mut f: impl FnMut(&[u8]) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f(&self.stdout.bytes()) {
                return v;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                if let Some(v) = f(&self.stdout.bytes()) {
                    return v;
                }
                panic!(
                    "{} exited ({status}) before {what}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout_text(),
                    self.stderr_text()
                );
            }
            assert!(
                start.elapsed() < WAIT,
                "{}: no {what} within {WAIT:?}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.stdout_text(),
                self.stderr_text()
            );
            std::thread::sleep(poll);
        }
    }

    /// Waits for the `Starting to serve on 127.0.0.1:PORT` line and returns `http://127.0.0.1:PORT`.
    pub fn wait_serving(&mut self) -> String {
        let line = self.wait_for("its startup line", |out| {
            let text = String::from_utf8_lossy(out);
            text.lines()
                .find(|l| l.starts_with("Starting to serve on "))
                .map(str::to_owned)
        });
        let addr = line.trim_start_matches("Starting to serve on ").trim();
        format!("http://{addr}")
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} stderr ({}), last 40 lines:\n{}",
                self.name,
                self.stderr_path.display(),
                tail(&self.stderr_path, 40)
            );
        }
    }
}

/// kproxy (the binary under test) on 127.0.0.1:0 with exactly `args` and `env` (plus an empty HOME and
/// PATH), and its URL.
pub fn kproxy(ctx: &Ctx, args: &[&str], env: &[(&str, &str)]) -> (Proc, String) {
    let mut cmd = Command::new(kproxy_bin());
    cmd.env_clear()
        .env("HOME", &ctx.home)
        .env("PATH", path_env())
        .envs(env.iter().copied())
        .args(["--port=0", "-v=4"])
        .args(args);
    let mut p = Proc::spawn(ctx, "kproxy", cmd);
    let url = p.wait_serving();
    (p, url)
}

/// `kubectl proxy` (the reference) on 127.0.0.1:0 with `args`, and its URL.
pub fn kubectl_proxy(ctx: &Ctx, args: &[&str]) -> (Proc, String) {
    let mut cmd = ctx.kubectl_cmd();
    cmd.args(["proxy", "--port=0"]).args(args);
    let mut p = Proc::spawn(ctx, "kubectl-proxy", cmd);
    let url = p.wait_serving();
    (p, url)
}

// ---------------------------------------------------------------------------------------------------
// Responses

/// One HTTP response as curl saw it.
#[derive(Clone)]
pub struct Resp {
    pub status: u16,
    /// Lower-case names; a repeated header keeps its last value.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The request, for messages.
    pub what: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.what, self.text()))
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}: {}", self.what, self.text());
        self.json()
    }

    /// Asserts a Kubernetes `Status` failure with `code` and `reason`; returns its message.
    #[track_caller]
    pub fn expect_status(&self, code: u16, reason: &str) -> String {
        let v = self.expect(code);
        assert_eq!(v["kind"], "Status", "{}: {v}", self.what);
        assert_eq!(v["code"], code, "{}: {v}", self.what);
        assert_eq!(v["reason"], reason, "{}: {v}", self.what);
        v["message"].as_str().unwrap_or_default().to_owned()
    }
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} {:?} {}",
            self.what,
            self.status,
            self.headers,
            shorten(&self.text(), 2000)
        )
    }
}

/// `s`, cut to about `max` bytes for messages.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// Parses curl's `-D` dump; with several header blocks (`100 Continue`) the last one counts.
fn parse_headers(dump: &str) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    for line in dump.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            headers.clear();
        } else if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    headers
}

/// Removes what differs between two identical requests made one after the other: resource versions,
/// UIDs, timestamps, managed fields, generations. Applied to both answers before comparing them.
pub fn normalize(v: &mut Value) {
    const VOLATILE: &[&str] = &[
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "managedFields",
        "generation",
        "selfLink",
    ];
    match v {
        Value::Object(map) => {
            for key in VOLATILE {
                map.remove(*key);
            }
            for (_, child) in map.iter_mut() {
                normalize(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// The body for comparison: normalised JSON when it parses, the text otherwise.
pub fn comparable_body(r: &Resp) -> Value {
    match serde_json::from_slice::<Value>(&r.body) {
        Ok(mut v) => {
            normalize(&mut v);
            v
        }
        Err(_) => Value::String(r.text()),
    }
}

/// Splits a byte stream of concatenated JSON values (a watch, `kubectl get -w -o json`) into the
/// complete values so far.
pub fn json_values(bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut it = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    while let Some(Ok(v)) = it.next() {
        out.push(v);
    }
    out
}

/// `(type, metadata.name)` of each watch event.
pub fn events(values: &[Value]) -> Vec<(String, String)> {
    values
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// kproxy next to kubectl proxy

/// kproxy and `kubectl proxy` started with the same kubeconfig and flags, for sending the same
/// requests through both.
pub struct Pair {
    pub kproxy: Proc,
    /// kproxy's URL.
    pub kp: String,
    pub reference: Proc,
    /// kubectl proxy's URL.
    pub kc: String,
}

impl Pair {
    pub fn start(ctx: &Ctx, kubeconfig: &Path, flags: &[&str]) -> Pair {
        let kc_flag = format!("--kubeconfig={}", kubeconfig.display());
        let mut args = vec![kc_flag.as_str()];
        args.extend_from_slice(flags);
        let (kproxy, kp) = kproxy(ctx, &args, &[]);
        let (reference, kc) = kubectl_proxy(ctx, &args);
        Pair {
            kproxy,
            kp,
            reference,
            kc,
        }
    }

    /// The same request through both: (kproxy's answer, kubectl proxy's answer). `args` go to curl.
    pub fn both(&self, ctx: &Ctx, path: &str, args: &[&str]) -> (Resp, Resp) {
        let ours = ctx.curl(&format!("{}{path}", self.kp), args);
        let theirs = ctx.curl(&format!("{}{path}", self.kc), args);
        (ours, theirs)
    }

    /// The same request through both; asserts equal answers (see [`assert_same`]) and returns kproxy's.
    #[track_caller]
    pub fn same(&self, ctx: &Ctx, path: &str, args: &[&str]) -> Resp {
        let (ours, theirs) = self.both(ctx, path, args);
        assert_same(&ours, &theirs);
        ours
    }
}

/// Headers that only frame the message on one hop: Go's transparent gunzip in kubectl proxy turns a sized
/// body into a chunked one, so these may differ without the client seeing a difference.
const FRAMING: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
];
/// Headers whose values must match (the rest, such as `date` and `audit-id`, differ per request).
const STABLE: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-range",
    "cache-control",
    "vary",
    "etag",
    "accept-ranges",
    "location",
    "warning",
    "x-content-type-options",
];

/// kproxy's answer equals kubectl proxy's: status, the same header names (except framing), the same
/// values for [`STABLE`] headers, and the same body after [`normalize`].
#[track_caller]
pub fn assert_same(ours: &Resp, theirs: &Resp) {
    fn view(r: &Resp) -> (u16, Vec<&str>, Vec<(&str, &str)>, Value) {
        let names = r
            .headers
            .keys()
            .map(String::as_str)
            .filter(|n| !FRAMING.contains(n))
            .collect();
        let stable = STABLE
            .iter()
            .filter_map(|n| r.header(n).map(|v| (*n, v)))
            .collect();
        (r.status, names, stable, comparable_body(r))
    }
    // Documented deviation (README): with no client Accept-Encoding, kubectl proxy asks for gzip itself
    // and inflates, so the API server marks large answers (over 128 KiB) `Vary: Accept-Encoding`; kproxy
    // forwards the client's (absent) Accept-Encoding, and the API server sends no Vary.
    let mut theirs = theirs.clone();
    if ours.header("vary").is_none() && theirs.header("vary") == Some("Accept-Encoding") {
        theirs.headers.remove("vary");
    }
    let theirs = &theirs;
    let (a, b) = (view(ours), view(theirs));
    if a == b {
        return;
    }
    let mut diffs = Vec::new();
    if a.0 != b.0 {
        diffs.push(format!("status: {} vs {}", a.0, b.0));
    }
    if a.1 != b.1 {
        diffs.push(format!("header names: {:?} vs {:?}", a.1, b.1));
    }
    if a.2 != b.2 {
        diffs.push(format!("header values: {:?} vs {:?}", a.2, b.2));
    }
    if a.3 != b.3 {
        diffs.push(format!(
            "normalised body:\n  {}\nvs\n  {}",
            shorten(&a.3.to_string(), 3000),
            shorten(&b.3.to_string(), 3000)
        ));
    }
    panic!(
        "kproxy and kubectl proxy differ for {} (kproxy first):\n{}",
        ours.what,
        diffs.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------------
// The kubelet: kwok (tests/kwok)

/// The kubelet PKI of the run, made before the API server starts (it needs the files as flags): a CA,
/// the serving certificate kwok presents (IP SAN 127.0.0.1, the node's InternalIP) and the client
/// certificate the API server presents to kubelets. kwok does not check client certificates; the API
/// server does check kwok's serving certificate against the CA.
fn kubelet_pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let dir = workdir().join("kubelet-pki");
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kwok-kubelet-ca");
        ca.distinguished_name = dn;
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        write("ca.crt", ca.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::from_params(&ca, &ca_key);
        let issue = |name: &str, mut params: CertificateParams, cn: &str| {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            params.distinguished_name = dn;
            let key = KeyPair::generate().unwrap();
            write(
                &format!("{name}.crt"),
                params.signed_by(&key, &issuer).unwrap().pem(),
            );
            write(&format!("{name}.key"), key.serialize_pem());
        };
        let mut serving = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        issue("kubelet", serving, "kwok-kubelet");
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        issue(
            "apiserver-kubelet-client",
            client,
            "kube-apiserver-kubelet-client",
        );
        dir
    })
}

/// The kube-apiserver flags for reaching kwok's kubelet endpoint over verified TLS on loopback.
fn kubelet_flags() -> Vec<String> {
    let pki = kubelet_pki();
    let p = |n: &str| pki.join(n).display().to_string();
    vec![
        format!("--kubelet-certificate-authority={}", p("ca.crt")),
        format!(
            "--kubelet-client-certificate={}",
            p("apiserver-kubelet-client.crt")
        ),
        format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
        "--kubelet-preferred-address-types=InternalIP".to_owned(),
    ]
}

/// A free port on 127.0.0.1 (closed again: a small race with other processes, as with the API server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a test's kwok answers on its kubelet endpoint.
pub struct KubeletRules {
    /// Port-forwards to any pod port go to `127.0.0.1:<this>`.
    pub forward_to: Option<u16>,
}

/// kwok for one test: it manages the test's own node `kwok-<namespace>` and serves that node's kubelet
/// endpoint on 127.0.0.1. Exec runs commands on this machine in [`Kwok::root`], logs come from the CRI
/// log file [`Kwok::logs`], attach follows [`Kwok::attach_log`], port-forward dials the test's server.
pub struct Kwok {
    pub node: String,
    pub port: u16,
    /// The exec working directory (the "container's" file system, as far as the tests care).
    pub root: PathBuf,
    /// CRI-format log file served as every container's log.
    pub logs: PathBuf,
    /// CRI-format log file that attach follows.
    pub attach_log: PathBuf,
    pub proc: Proc,
}

impl Kwok {
    pub fn start(ctx: &Ctx, rules: KubeletRules) -> Kwok {
        let bin = required_env("KPROXY_E2E_KWOK");
        let stages = Path::new(&bin).with_file_name("stages.yaml");
        let dir = ctx.dir.join("kwok");
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let logs = dir.join("main.log");
        let attach_log = dir.join("attach.log");
        std::fs::write(&logs, "").unwrap();
        std::fs::write(&attach_log, "").unwrap();
        let forward = match rules.forward_to {
            Some(port) => format!(
                "---\nkind: ClusterPortForward\napiVersion: kwok.x-k8s.io/v1alpha1\n\
                 metadata: {{name: forward}}\nspec:\n  forwards:\n  - target: {{port: {port}, address: 127.0.0.1}}\n"
            ),
            None => String::new(),
        };
        let config = format!(
            "kind: ClusterExec\napiVersion: kwok.x-k8s.io/v1alpha1\nmetadata: {{name: exec}}\n\
             spec:\n  execs:\n  - local:\n      workDir: {root}\n\
             ---\nkind: ClusterLogs\napiVersion: kwok.x-k8s.io/v1alpha1\nmetadata: {{name: logs}}\n\
             spec:\n  logs:\n  - logsFile: {logs}\n\
             ---\nkind: ClusterAttach\napiVersion: kwok.x-k8s.io/v1alpha1\nmetadata: {{name: attach}}\n\
             spec:\n  attaches:\n  - logsFile: {attach}\n{forward}",
            root = root.display(),
            logs = logs.display(),
            attach = attach_log.display(),
        );
        let rules_path = dir.join("rules.yaml");
        std::fs::write(&rules_path, config).unwrap();
        let node = format!("kwok-{}", ctx.ns);
        let pki = kubelet_pki();
        let port = free_port();
        // tests/kwok/bin first: its `tar` ends extraction at the end of the archive, which kwok's
        // never-closed stdin would otherwise prevent (see that file).
        let shims = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kwok/bin");
        let mut path = std::ffi::OsString::from(shims);
        path.push(":");
        path.push(path_env());
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("HOME", &ctx.home)
            .env("PATH", path)
            .arg(format!("--config={}", stages.display()))
            .arg(format!("--config={}", rules_path.display()))
            .arg(format!(
                "--kubeconfig={}",
                ctx.server.kubeconfig("admin").display()
            ))
            .arg(format!("--manage-single-node={node}"))
            .arg("--node-ip=127.0.0.1")
            .arg(format!("--node-port={port}"))
            .arg(format!("--server-address=127.0.0.1:{port}"))
            .arg(format!(
                "--tls-cert-file={}",
                pki.join("kubelet.crt").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.join("kubelet.key").display()
            ));
        let started = Instant::now();
        let proc = Proc::spawn(ctx, "kwok", cmd);
        ctx.admin_apply(
            &serde_json::json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node, "annotations": {"kwok.x-k8s.io/node": "fake"}},
            })
            .to_string(),
        );
        let kwok = Kwok {
            node,
            port,
            root,
            logs,
            attach_log,
            proc,
        };
        // Ready when the node carries the kubelet port (kwok's node-initialize stage) and the kubelet
        // endpoint answers /healthz over TLS with the certificate the API server will check.
        let want = port.to_string();
        ctx.eventually("kwok's node to get its kubelet endpoint", WAIT, || {
            let out = ctx.admin(&[
                "get",
                "node",
                &kwok.node,
                "-o",
                "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
            ]);
            (out.stdout.trim() == want).then_some(())
        });
        let ca = pki.join("ca.crt");
        let url = format!("https://127.0.0.1:{port}/healthz");
        ctx.eventually("kwok's kubelet endpoint to answer /healthz", WAIT, || {
            let mut cmd = ctx.curl_cmd();
            cmd.args(["-sS", "--max-time", "5", "--cacert"])
                .arg(&ca)
                .arg(&url);
            (run(cmd, None).stdout.trim() == "ok").then_some(())
        });
        eprintln!(
            "e2e: kwok for node {} ready after {:.1}s",
            kwok.node,
            started.elapsed().as_secs_f64()
        );
        kwok
    }

    /// Creates pod `name` (one container `main`) bound to this node and waits until kwok reports it
    /// Running.
    pub fn running_pod(&self, ctx: &Ctx, name: &str) {
        ctx.admin_apply(
            &serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ctx.ns},
                "spec": {
                    "nodeName": self.node,
                    "containers": [{"name": "main", "image": "registry.invalid/none:1"}],
                },
            })
            .to_string(),
        );
        ctx.eventually(&format!("pod {name} to be Running"), WAIT, || {
            let out = ctx.admin(&[
                "-n",
                &ctx.ns,
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.status.phase}",
            ]);
            (out.stdout.trim() == "Running").then_some(())
        });
    }
}

/// One line of a CRI log file (what kwok reads for logs and attach): `<RFC 3339 time> stdout F <text>`.
pub fn cri_log_line(text: &str) -> String {
    format!("2026-01-01T00:00:00.000000000Z stdout F {text}\n")
}

/// Appends `text` to `path` (opened, written and closed: one write, one fsnotify event).
pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
