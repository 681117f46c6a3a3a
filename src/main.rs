//! The `kproxy` binary: parse → validate → bind → print the startup line → serve → drain.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kproxy::cli::Cli;
use kproxy::config::{self, Config, Lifecycle, EXIT_USAGE};
use kproxy::env::ProcessEnv;
use kproxy::server::{self, Listener};

/// mimalloc instead of the system allocator: each proxied request makes a few dozen short-lived
/// allocations (header maps, frames, futures), and glibc's malloc/free took about 16% of the
/// instructions per request; mimalloc takes about a third of that (see bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
    init_tracing(cli.verbosity);

    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let config = match Config::from_cli(&cli, &ProcessEnv) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let lifecycle = Lifecycle::default();
        let router = match config::build_router(&config, &lifecycle) {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        let listener = match Listener::bind(&config.listen).await {
            Ok(l) => l,
            Err(e) => return fail(e),
        };
        // Before the startup line: a script may signal as soon as it has read it.
        let shutdown = shutdown_signal();
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "Starting to serve on {}", listener.display_addr());
        let _ = stdout.flush();
        drop(stdout);
        server::serve(listener, router, lifecycle, shutdown, config.shutdown_grace).await;
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

/// kubectl's `-v` levels mapped onto tracing levels: 0–1 warnings, 2–3 info (filter rejections),
/// 4–5 debug (filter decisions, connection errors), 6+ trace. `RUST_LOG` wins when set; it takes
/// `target=level` lists (`kproxy=debug,warn`).
///
/// The filter is `Targets`, not `EnvFilter`: `EnvFilter` pulls in regex-automata's full-DFA builder,
/// and cargo's feature unification then made every `--accept-paths`/`--reject-paths` regex build a
/// dense DFA at startup, 60% of the instructions from exec to listening.
fn init_tracing(verbosity: u8) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let level = match verbosity {
        0..=1 => "warn",
        2..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| {
            format!("kproxy={level},warn")
                .parse()
                .unwrap_or_else(|_| Targets::new())
        });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .with(filter)
        .init();
}

/// Installs the SIGINT and SIGTERM handlers at once and returns a future that completes on the first
/// signal. The handlers must exist before the startup line is printed: until then either signal would
/// still kill the process (exit 143/130) instead of draining it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}
