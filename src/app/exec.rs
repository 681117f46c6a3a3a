//! `kproxy --exec -- CMD [ARGS]`: serve, run the command against the proxy, and exit with its status.
//!
//! The child gets a 0600 kubeconfig in a fresh 0700 directory (one context per proxied context,
//! pointing at the proxy, no credentials) as `KUBECONFIG`, the proxy's URL as `KPROXY_URL`, and the
//! loopback names added to `NO_PROXY`/`no_proxy` so an HTTP proxy in the environment is not asked to
//! reach `127.0.0.1`. `KUBERNETES_SERVICE_HOST` is never set. SIGINT and SIGTERM are forwarded to the
//! child instead of stopping the proxy, which keeps serving until the child exits; then the proxy
//! drains, the directory is removed, and kproxy exits with the child's code (128+N when a signal N
//! ended it).

use std::path::{Path, PathBuf};

use tokio::signal::unix::{signal, SignalKind};

use crate::app::App;

/// The loopback names added to `NO_PROXY`.
const LOOPBACK: &str = "127.0.0.1,localhost,::1";

/// The exit code when the command cannot be started (as a shell: 127 not found, 126 otherwise).
fn spawn_failure_code(e: &std::io::Error) -> u8 {
    if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// Removes the directory on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last = None;
        for attempt in 0..16u32 {
            let dir = base.join(format!(
                "kproxy-exec-{}-{:08x}",
                std::process::id(),
                nanos.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no temporary directory")))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `NO_PROXY` with the loopback names appended.
fn with_loopback(current: Option<String>) -> String {
    match current.filter(|v| !v.trim().is_empty()) {
        Some(v) => format!("{v},{LOOPBACK}"),
        None => LOOPBACK.to_owned(),
    }
}

/// Serves `app` while `command` runs; returns the exit code for kproxy. `ready_file` is written once
/// the proxy serves (before the command starts) and removed at the end.
pub async fn run(app: App, command: &[String], ready_file: Option<&Path>) -> u8 {
    let Some(url) = app.url() else {
        eprintln!("error: --exec needs a TCP listener: drop --unix-socket");
        return crate::app::error::EXIT_USAGE;
    };
    let Some(program) = command.first() else {
        eprintln!("error: --exec needs a command after `--`: e.g. kproxy --exec -- kubectl get ns");
        return crate::app::error::EXIT_USAGE;
    };
    let kubeconfig = app.client_kubeconfig().unwrap_or_default();
    let dir = match PrivateDir::create() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --exec cannot create a temporary directory: {e}; set TMPDIR to a writable directory");
            return crate::app::error::EXIT_FAILURE;
        }
    };
    let path = dir.0.join("kubeconfig");
    if let Err(e) = crate::app::client_config::write_private(&path, &kubeconfig) {
        eprintln!(
            "error: --exec cannot write {}: {e}; set TMPDIR to a writable directory",
            path.display()
        );
        return crate::app::error::EXIT_FAILURE;
    }

    // Registered before the child starts, so a signal meant for it is never lost (nor kills kproxy).
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("error: --exec cannot handle SIGINT/SIGTERM");
        return crate::app::error::EXIT_FAILURE;
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(async move {
        let _ = stop_rx.await;
    }));
    if let Some(ready) = ready_file {
        if let Err(e) = crate::app::client_config::write_private(ready, &format!("{url}\n")) {
            tracing::warn!("cannot write --ready-file {}: {e}", ready.display());
        }
    }

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&command[1..])
        .env("KUBECONFIG", &path)
        .env("KPROXY_URL", &url)
        .env("NO_PROXY", with_loopback(std::env::var("NO_PROXY").ok()))
        .env("no_proxy", with_loopback(std::env::var("no_proxy").ok()));
    let code = match cmd.spawn() {
        Err(e) => {
            eprintln!("error: --exec cannot run {program:?}: {e}");
            spawn_failure_code(&e)
        }
        Ok(mut child) => {
            let pid = child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw);
            let status = loop {
                let forward = tokio::select! {
                    status = child.wait() => break status,
                    _ = term.recv() => rustix::process::Signal::TERM,
                    _ = int.recv() => rustix::process::Signal::INT,
                };
                if let Some(pid) = pid {
                    let _ = rustix::process::kill_process(pid, forward);
                }
            };
            match status {
                Ok(status) => exit_code(status),
                Err(e) => {
                    eprintln!("error: --exec lost track of {program:?}: {e}");
                    crate::app::error::EXIT_FAILURE
                }
            }
        }
    };
    let _ = stop_tx.send(());
    let _ = server.await;
    if let Some(ready) = ready_file {
        let _ = std::fs::remove_file(ready);
    }
    drop(dir);
    code
}

/// The child's exit code, or 128+N when signal N ended it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from((128 + sig) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_gets_loopback() {
        assert_eq!(with_loopback(None), LOOPBACK);
        assert_eq!(with_loopback(Some(" ".into())), LOOPBACK);
        assert_eq!(
            with_loopback(Some("corp.example".into())),
            format!("corp.example,{LOOPBACK}")
        );
    }
}
