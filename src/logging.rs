//! Diagnostics through `tracing`, on stderr, with kubectl's `-v` levels where they mean something to
//! kubectl users. `RUST_LOG` (an `EnvFilter` directive list) wins when set.
//!
//! | `-v` | shows |
//! |---|---|
//! | 0–1 | warnings and errors (kubectl's default) |
//! | 2 | + informational lines: configuration reloads |
//! | 3 | + filter decisions, `Filter accepting GET /api/v1/pods localhost` (kubectl: `-v=3`) |
//! | 4–5 | + debug lines: answers kproxy gives itself, connection errors |
//! | 6 | + one line per upstream request, `GET https://host/api/v1/pods 200 in 1 milliseconds` (kubectl: `-v=6`) |
//! | 7+ | + everything kproxy traces |
//!
//! The access log (`--access-log`) is separate: it is not filtered by `-v`.

/// The `EnvFilter` directives for a `-v` level.
pub fn directives(verbosity: u8) -> &'static str {
    match verbosity {
        0..=1 => "kproxy=warn,warn",
        2 => "kproxy=info,warn",
        3 => "kproxy=info,kproxy::router=debug,warn",
        4..=5 => "kproxy=debug,kproxy::round_trip=info,warn",
        6 => "kproxy=debug,warn",
        _ => "kproxy=trace,warn",
    }
}

/// Installs the global subscriber writing to stderr. Colours only on a terminal: a sidecar's stderr goes
/// to a log shipper, where escape codes are noise.
pub fn init(verbosity: u8) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives(verbosity)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_parses() {
        for v in 0..=10 {
            tracing_subscriber::EnvFilter::try_new(directives(v)).unwrap();
        }
    }
}
