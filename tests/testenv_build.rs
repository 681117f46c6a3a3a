//! `tests/apiserver/build.sh`, which a newcomer's first `bash examples/quickstart.sh` runs for 5 to 20
//! minutes: it must say what it builds and how long that usually takes, print a progress line at every
//! interval, report a wait on another build's lock the same way, and leave nothing behind when
//! interrupted. Driven with a stand-in `go` (the `GO` variable) whose build takes a few seconds, and
//! `KPROXY_TESTENV_PROGRESS=1` instead of the default 15 s, so the test needs no Go toolchain.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
/// Packages the stand-in `go list -deps` reports.
const PACKAGES: usize = 40;

/// A stand-in `go`: `list` names PACKAGES packages; `build` is silent for FAKE_GO_SILENT seconds (a
/// cold module cache: go downloads before it compiles), names FAKE_GO_BUILT packages on stderr,
/// FAKE_GO_PAUSE seconds apart (as `go build -v` does), then writes the output binary; every call is
/// appended to FAKE_GO_CALLS.
const FAKE_GO: &str = r#"#!/usr/bin/env bash
echo "$1" >>"$FAKE_GO_CALLS"
case $1 in
  version) echo "go version go0.0-standin linux/amd64" ;;
  list) for i in $(seq 40); do echo "example.com/pkg$i"; done ;;
  build)
    out=
    while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
    sleep "$FAKE_GO_SILENT"
    for i in $(seq "$FAKE_GO_BUILT"); do echo "example.com/pkg$i" >&2; sleep "$FAKE_GO_PAUSE"; done
    printf '#!/bin/sh\necho standin\n' >"$out"
    chmod +x "$out" ;;
  *) exit 2 ;;
esac
"#;

struct Bed {
    dir: tempfile::TempDir,
    marker: String,
}

impl Bed {
    fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go");
        std::fs::write(&go, FAKE_GO).unwrap();
        std::fs::set_permissions(&go, std::fs::Permissions::from_mode(0o755)).unwrap();
        let marker = format!("KPROXY_BUILD_TEST={}-{}", std::process::id(), go.display());
        Bed { dir, marker }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The one directory build.sh builds into (named by the hash of go.mod, go.sum and main.go).
    fn out_dir(&self) -> PathBuf {
        let mut dirs: Vec<_> = std::fs::read_dir(self.cache())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs.pop().unwrap()
    }

    fn files_in_out_dir(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.out_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn go_calls(&self, verb: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == verb)
            .count()
    }

    /// build.sh in a process group of its own, its stderr read line by line.
    fn start(&self, built: usize, pause: &str) -> Run {
        self.start_after_silence("0", built, pause)
    }

    /// [`Bed::start`] with a stand-in build that names no package for its first `silent` seconds.
    fn start_after_silence(&self, silent: &str, built: usize, pause: &str) -> Run {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apiserver/build.sh");
        let (key, value) = self.marker.split_once('=').unwrap();
        // `env --default-signal=INT`: a test process started from a shell's background job ignores
        // SIGINT, and bash cannot trap a signal ignored on entry; an interactive terminal never does.
        let mut child = Command::new("env")
            .arg("--default-signal=INT")
            .arg("bash")
            .arg(script)
            .env("GO", self.dir.path().join("go"))
            .env("KPROXY_TESTENV_CACHE", self.cache())
            .env("KPROXY_TESTENV_PROGRESS", "1")
            .env("FAKE_GO_CALLS", self.dir.path().join("calls"))
            .env("FAKE_GO_BUILT", built.to_string())
            .env("FAKE_GO_PAUSE", pause)
            .env("FAKE_GO_SILENT", silent)
            .env(key, value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        Run {
            child: Some(child),
            lines,
            stdout: Some(stdout),
            seen: Vec::new(),
        }
    }

    /// Processes whose environment carries this bed's marker: build.sh and all it started.
    fn processes(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ
                .split(|&b| b == 0)
                .any(|v| v == self.marker.as_bytes())
            {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                found.insert(format!("{name} {}", comm.trim()));
            }
        }
        found
    }
}

struct Run {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
    /// Every stderr line with when it arrived.
    seen: Vec<(Instant, String)>,
}

impl Run {
    /// Reads stderr until a line contains `what`; returns that line.
    fn until(&mut self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push((Instant::now(), line.clone()));
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no stderr line with {what:?} ({e}); so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    fn pgid(&self) -> String {
        format!("-{}", self.child.as_ref().unwrap().id())
    }

    /// Waits for the exit (bounded), reads the rest of stderr; returns the status and stdout.
    fn finish(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let pid = child.id();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            panic!("build.sh did not exit within {WAIT:?}")
        });
        for line in self.lines.iter() {
            self.seen.push((Instant::now(), line));
        }
        (status.unwrap(), self.stdout.take().unwrap().join().unwrap())
    }

    fn stderr(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, l)| l.as_str()).collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }
}

/// `(elapsed seconds, packages compiled)` of a progress line.
fn progress(line: &str) -> Option<(u64, usize)> {
    let rest = line.strip_prefix("build.sh: building k8s-testenv: ")?;
    let (time, rest) = rest.split_once(" elapsed, ")?;
    let (m, s) = time.split_once('m')?;
    let secs = m.parse::<u64>().ok()? * 60 + s.trim_end_matches('s').parse::<u64>().ok()?;
    let (count, rest) = rest.split_once(" of ")?;
    assert!(
        rest.starts_with(&format!("{PACKAGES} packages compiled")),
        "{line}"
    );
    Some((secs, count.parse().ok()?))
}

#[test]
fn a_first_build_says_what_and_how_long_prints_progress_each_interval_then_reuses() {
    let bed = Bed::new();
    // Six packages 0.8 s apart: about 5 s, so about four progress lines at 1 s intervals.
    let mut run = bed.start(6, "0.8");
    run.until("build.sh: building k8s-testenv: kube-apiserver v1.37");
    run.until("a first build takes 5 to 20 minutes");
    let (status, stdout) = run.finish();
    let stderr = run.stderr();
    assert!(status.success(), "{status}: {stderr:#?}");
    let bin = stdout.lines().last().unwrap_or_default();
    assert_eq!(
        Path::new(bin),
        bed.out_dir().join("k8s-testenv"),
        "{stdout}"
    );
    let out = Command::new(bin).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "standin\n");

    let lines: Vec<(Instant, (u64, usize))> = run
        .seen
        .iter()
        .filter_map(|(at, l)| progress(l).map(|p| (*at, p)))
        .collect();
    assert!(lines.len() >= 3, "too few progress lines: {stderr:#?}");
    for pair in lines.windows(2) {
        let ((at0, (secs0, n0)), (at1, (secs1, n1))) = (pair[0], pair[1]);
        assert!(secs1 > secs0 && n1 >= n0, "not advancing: {stderr:#?}");
        // The interval is 1 s; 3 s of slack for a loaded machine.
        assert!(
            at1 - at0 < Duration::from_secs(4),
            "{:?} between progress lines: {stderr:#?}",
            at1 - at0
        );
    }
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("(latest: example.com/pkg")),
        "{stderr:#?}"
    );
    assert!(stderr.last().unwrap().contains("built "), "{stderr:#?}");
    // Only the binary and the lock remain: no partial binary, build log or package list.
    assert_eq!(
        bed.files_in_out_dir(),
        BTreeSet::from(["k8s-testenv".to_owned(), ".lock".to_owned()])
    );

    // A second run reuses it without building.
    let mut again = bed.start(6, "0.8");
    let (status, stdout) = again.finish();
    assert!(status.success());
    assert_eq!(stdout.lines().last(), Some(bin));
    assert!(
        again.stderr()[0].contains("reusing"),
        "{:?}",
        again.stderr()
    );
    assert_eq!(bed.go_calls("build"), 1);
}

#[test]
fn progress_before_the_first_compiled_package_is_reported_not_fatal() {
    // A cold Go module cache: go downloads for minutes before it names a package. The progress tick
    // then found nothing to report and, under `set -e -o pipefail`, ended the build silently (exit 1,
    // no message) — what the full suite met on a fresh machine.
    let bed = Bed::new();
    let mut run = bed.start_after_silence("2.5", 2, "0.2");
    let (status, stdout) = run.finish();
    let stderr = run.stderr();
    assert!(status.success(), "{status}: {stderr:#?}");
    assert_eq!(
        Path::new(stdout.lines().last().unwrap_or_default()),
        bed.out_dir().join("k8s-testenv")
    );
    assert!(
        stderr
            .iter()
            .filter_map(|l| progress(l))
            .any(|(_, compiled)| compiled == 0),
        "no progress line while nothing was compiled yet: {stderr:#?}"
    );
}

#[test]
fn a_build_waiting_on_another_says_so_each_interval_then_reuses_its_binary() {
    let bed = Bed::new();
    let mut first = bed.start(5, "0.8");
    // The first holds the lock once it says it is building.
    first.until("progress every 1 s");
    let mut second = bed.start(5, "0.8");
    let waiting = second.until("waiting for another build of k8s-testenv");
    assert!(waiting.contains("a first build takes"), "{waiting}");
    let (status, stdout) = second.finish();
    assert!(status.success(), "{:#?}", second.stderr());
    assert!(
        second
            .stderr()
            .last()
            .unwrap()
            .contains("built concurrently"),
        "{:#?}",
        second.stderr()
    );
    let (first_status, first_stdout) = first.finish();
    assert!(first_status.success());
    assert_eq!(stdout.lines().last(), first_stdout.lines().last());
    assert_eq!(bed.go_calls("build"), 1, "the second run must not build");
}

#[test]
fn an_interrupted_build_leaves_no_process_and_no_file() {
    let bed = Bed::new();
    // A build that would take 100 s.
    let mut run = bed.start(100, "1");
    run.until("packages compiled");
    let running = bed.processes();
    assert!(
        running.iter().any(|p| p.ends_with(" sleep")),
        "the stand-in build is not among the marked processes: {running:?}"
    );
    // Ctrl-C: SIGINT to the foreground process group.
    let ok = Command::new("kill")
        .args(["-INT", "--", &run.pgid()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let (status, stdout) = run.finish();
    assert_eq!(status.code(), Some(130), "{:#?}", run.stderr());
    assert!(stdout.is_empty(), "{stdout}");
    let left = bed.processes();
    assert!(left.is_empty(), "left running: {left:?}");
    assert_eq!(
        bed.files_in_out_dir(),
        BTreeSet::from([".lock".to_owned()]),
        "partial files left"
    );
}
