//! The README's first command, `bash examples/quickstart.sh`, as a newcomer runs it: it ends with kproxy
//! serving in front of the real API server (tests/apiserver), the seed's three curl commands answer as
//! the README says, and Ctrl-C (SIGINT to the terminal's foreground process group) stops everything,
//! leaving no process and no temporary file behind.
//!
//! `#[ignore]`d like the other end-to-end tests (it needs the real API server, which the first run
//! builds); `bash tests/e2e.sh` runs it, after the API server is built or found in the cache.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Up to the startup line: a cached API server starts in 3 to 8 s; the script allows it 180 s.
const START: Duration = Duration::from_secs(240);
/// One curl, or the script's whole stop (kproxy drains, the API server takes about 1.2 s).
const WAIT: Duration = Duration::from_secs(60);

/// The script in its own process group, as a shell runs a foreground job; its group is killed if the
/// test fails before the script has stopped.
struct Script {
    pgid: u32,
    exited: mpsc::Receiver<ExitStatus>,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Script {
    /// The next stdout line, or a failure after `within`.
    fn line(&mut self, within: Duration, what: &str) -> String {
        match self.lines.recv_timeout(within) {
            Ok(line) => line,
            Err(e) => {
                // Stdout closed: the script has exited or is exiting; its stderr says why.
                let stderr = match self.exited.recv_timeout(Duration::from_secs(5)) {
                    Ok(status) => format!(
                        "exited ({status}); stderr:\n{}",
                        self.stderr.take().unwrap().join().unwrap()
                    ),
                    Err(_) => "still running".to_owned(),
                };
                panic!("no {what} from the quickstart within {within:?} ({e}); {stderr}")
            }
        }
    }

    fn signal_group(&self, sig: &str) -> bool {
        Command::new("kill")
            .args([sig, "--", &format!("-{}", self.pgid)])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// What a terminal does on Ctrl-C: SIGINT to every process of the foreground process group.
    fn ctrl_c(&self) {
        assert!(self.signal_group("-INT"), "kill -INT failed");
    }

    /// The exit code and everything the script wrote on stderr.
    fn wait(&mut self, within: Duration) -> (i32, String) {
        let status = self
            .exited
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("the quickstart did not exit within {within:?} of Ctrl-C"));
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status.code().unwrap_or(-1), stderr)
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if self.stderr.is_some()
            && self.signal_group("-TERM")
            && self.exited.recv_timeout(WAIT).is_err()
        {
            self.signal_group("-KILL");
        }
    }
}

/// Processes whose environment holds `marker`: the script and everything it started, at any depth, in
/// whatever session or process group they put themselves.
fn processes_with(marker: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|v| v == marker.as_bytes()) {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.insert(format!("{name} {}", comm.trim()));
        }
    }
    found
}

fn curl(url: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", url])
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    assert_eq!(
        code,
        "200",
        "curl {url}: {}{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("curl {url}: not JSON ({e}): {body}"))
}

#[test]
#[ignore = "end-to-end: needs the real API server; run by tests/e2e.sh"]
fn quickstart_serves_the_seed_flow_and_ctrl_c_leaves_nothing_behind() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let marker = format!("KPROXY_QUICKSTART_TEST={}-{}", std::process::id(), line!());
    let (key, value) = marker.split_once('=').unwrap();
    let start = Instant::now();
    // `setpriv --pdeathsig TERM`: should this test process be killed outright (a CI timeout), the
    // script gets SIGTERM and stops what it started, as on Ctrl-C. `env --default-signal=INT`: started
    // from a non-interactive shell's background job (tests/e2e.sh runs the suite that way), this
    // process ignores SIGINT, and bash cannot trap a signal ignored on entry; a terminal's foreground
    // job never ignores it.
    let mut child = Command::new("setpriv")
        .args(["--pdeathsig", "TERM", "env", "--default-signal=INT"])
        .arg("bash")
        .arg(repo.join("examples/quickstart.sh"))
        // Port 8001 may be taken on a shared machine; the script passes flags on to kproxy.
        .arg("--port=0")
        .env("KPROXY", env!("CARGO_BIN_EXE_kproxy"))
        .env("TMPDIR", tmp.path())
        .env(key, value)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let pgid = child.id();
    let (exit_tx, exited) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = exit_tx.send(status);
        }
    });
    let mut script = Script {
        pgid,
        exited,
        lines,
        stderr: Some(stderr),
    };

    // The startup line, then the instructions, which end with how to stop.
    let first = script.line(START, "startup line");
    let addr = first
        .strip_prefix("Starting to serve on ")
        .unwrap_or_else(|| panic!("first stdout line: {first:?}"));
    let port = addr.rsplit(':').next().unwrap();
    let mut instructions = Vec::new();
    loop {
        let line = script.line(WAIT, "instructions");
        let end = line.starts_with("Ctrl-C stops");
        instructions.push(line);
        if end {
            break;
        }
    }
    eprintln!(
        "quickstart serving after {:?}: {first}\n{}",
        start.elapsed(),
        instructions.join("\n")
    );
    let base = format!("localhost:{port}");
    for path in [
        "/api/v1/pods",
        "/apis/batch/v1/namespaces/default/jobs/my-job",
        "/",
    ] {
        assert!(
            instructions.contains(&format!("  curl {base}{path}")),
            "the instructions do not name `curl {base}{path}`: {instructions:?}"
        );
    }

    // The seed's flow, from a "second terminal".
    let pods = curl(&format!("{base}/api/v1/pods"));
    assert_eq!(pods["kind"], "PodList", "{pods}");
    let pod = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["ownerReferences"][0]["name"] == "my-job")
        .unwrap_or_else(|| panic!("no Pod owned by my-job: {pods}"));
    assert_eq!(pod["metadata"]["namespace"], "default", "{pod}");
    assert_eq!(
        pod["metadata"]["ownerReferences"][0]["kind"], "Job",
        "{pod}"
    );
    let job = curl(&format!(
        "{base}/apis/batch/v1/namespaces/default/jobs/my-job"
    ));
    assert_eq!(job["kind"], "Job", "{job}");
    assert_eq!(job["metadata"]["name"], "my-job", "{job}");
    assert_eq!(
        pod["metadata"]["ownerReferences"][0]["uid"], job["metadata"]["uid"],
        "the Pod belongs to this Job"
    );
    let root = curl(&format!("{base}/"));
    let paths: Vec<&str> = root["paths"]
        .as_array()
        .unwrap_or_else(|| panic!("no paths: {root}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in ["/api", "/api/v1", "/apis/batch/v1", "/version", "/healthz"] {
        assert!(paths.contains(&want), "{want} not listed: {paths:?}");
    }

    // What Ctrl-C must clean up exists: the script, kproxy and the API server, and a temporary
    // directory (the API server's data, certificates, kubeconfigs).
    let running = processes_with(&marker);
    for comm in ["bash", "kproxy", "k8s-testenv"] {
        assert!(
            running.iter().any(|p| p.ends_with(&format!(" {comm}"))),
            "no {comm} among the quickstart's processes: {running:?}"
        );
    }
    let made: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(
        made.iter().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("kproxy-quickstart.")),
        "no temporary directory in {}: {made:?}",
        tmp.path().display()
    );

    let stop = Instant::now();
    script.ctrl_c();
    let (code, stderr) = script.wait(WAIT);
    eprintln!("Ctrl-C to exit: {:?}", stop.elapsed());
    assert_eq!(code, 0, "exit status after Ctrl-C; stderr:\n{stderr}");
    assert!(
        stderr.contains("quickstart: stopped kproxy and the API server"),
        "{stderr}"
    );
    let left = processes_with(&marker);
    assert!(left.is_empty(), "left running after Ctrl-C: {left:?}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in TMPDIR after Ctrl-C: {left:?}");
}
