//! The `kproxy` binary: parse → validate → bind → print the startup line → serve → drain.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kproxy::app::error::EXIT_USAGE;
use kproxy::cli::Cli;
use kproxy::env::ProcessEnv;
use kproxy::{App, Config};

/// mimalloc instead of the system allocator: each proxied request makes a few dozen short-lived
/// allocations (header maps, frames, futures), and glibc's malloc/free took about 16% of the
/// instructions per request; mimalloc takes about a third of that (see bench/README.md). Version 2:
/// it returns freed pages to the system after 10 ms where version 3 waits a second, and only when
/// the allocator is next busy, so an idle proxy kept what a burst had freed (about 2 KiB per open
/// watch in the bench).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `kproxy kubeconfig [FLAGS]`: print the kubeconfig the proxy those flags start would give.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let print_kubeconfig = args.get(1).is_some_and(|a| a == "kubeconfig");
    if print_kubeconfig {
        args.remove(1);
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    kproxy::logging::init(cli.verbosity, std::env::var("RUST_LOG").ok().as_deref());
    // As every Go program (so kubectl proxy) does at start: a login shell's soft limit of 1,024 open
    // files would otherwise cap kproxy at about a thousand client connections.
    match kproxy::fd_limit::raise_soft_to_hard() {
        Ok(l) => tracing::debug!(
            "open-file limit: soft {} (was {}), hard {}",
            l.soft,
            l.before,
            l.hard
        ),
        Err(e) => tracing::debug!(error = %e, "cannot raise the open-file limit"),
    }

    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cli = cli;
    if cli.exec == cli.command.is_empty() {
        eprintln!(
            "error: {}",
            if cli.exec {
                "--exec needs a command after `--`: e.g. kproxy --exec -- kubectl get ns"
            } else {
                "unexpected arguments after `--`: add --exec to run them against the proxy"
            }
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if cli.exec && cli.port == kproxy::cli::DEFAULT_PORT {
        // --exec picks a free port unless one is given.
        cli.port = 0;
    }
    runtime.block_on(async move {
        let config = match Config::from_cli(&cli, &ProcessEnv) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        if print_kubeconfig {
            return match kproxy::app::client_kubeconfig(&config) {
                Ok(text) => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(text.as_bytes());
                    let _ = stdout.flush();
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            };
        }
        let app = match App::build(config).await {
            Ok(app) => app,
            Err(e) => return fail(e),
        };
        if let Some(path) = &cli.write_kubeconfig {
            let Some(text) = app.client_kubeconfig() else {
                return fail(kproxy::StartupError::Usage(
                    "--write-kubeconfig cannot point at a unix socket: drop --unix-socket"
                        .to_owned(),
                ));
            };
            if let Err(e) = kproxy::app::client_config::write_private(path, &text) {
                eprintln!(
                    "error: cannot write --write-kubeconfig {}: {e}",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        }
        if cli.exec {
            let code = kproxy::app::exec::run(app, &cli.command, cli.ready_file.as_deref()).await;
            return ExitCode::from(code);
        }
        // Registered before the startup line: once a script has read it, SIGTERM must be handled.
        let shutdown = shutdown_signal();
        if let Some(path) = &cli.ready_file {
            let url = app
                .url()
                .unwrap_or_else(|| format!("unix:{}", app.display_addr()));
            if let Err(e) = kproxy::app::client_config::write_private(path, &format!("{url}\n")) {
                eprintln!("error: cannot write --ready-file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "Starting to serve on {}", app.display_addr());
        let _ = stdout.flush();
        drop(stdout);
        app.serve(shutdown).await;
        if let Some(path) = &cli.ready_file {
            let _ = std::fs::remove_file(path);
        }
        ExitCode::SUCCESS
    })
}

fn fail(e: kproxy::StartupError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code())
}

/// One thread by default: a local proxy is I/O-bound, and one thread costs the least CPU per request and
/// memory. `KPROXY_WORKER_THREADS=N` (N > 1) uses a multi-threaded runtime instead.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let threads = std::env::var("KPROXY_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1);
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// SIGTERM or SIGINT. The handlers are registered when this is called (not when first polled), so no
/// signal between the startup line and serving falls through to the default action.
///
/// A second signal during the drain exits at once, with the shell's code for a signal death (130 for
/// SIGINT, 143 for SIGTERM): whoever presses Ctrl-C twice does not want to wait for `--shutdown-grace`.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tokio::spawn(async move {
            let code = tokio::select! {
                _ = term.recv() => 143,
                _ = int.recv() => 130,
            };
            eprintln!(
                "error: second signal during shutdown: exiting without waiting for open requests"
            );
            std::process::exit(code);
        });
    }
}
