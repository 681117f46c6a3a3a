//! Diagnostics through `tracing`, on stderr, with kubectl's `-v` levels where they mean something to
//! kubectl users. `RUST_LOG` (a `target=level` list such as `kproxy=debug,warn`) wins when set.
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
//!
//! The filter is `Targets`, not `EnvFilter`: `EnvFilter` pulls in regex-automata's full-DFA builder, and
//! cargo's feature unification then made every `--accept-paths`/`--reject-paths` regex build a dense DFA
//! at startup, 60% of the instructions from exec to listening (bench/README.md).

use tracing_subscriber::filter::Targets;

/// The filter directives for a `-v` level.
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
/// to a log shipper, where escape codes are noise. `rust_log` is `$RUST_LOG`, passed in so the caller
/// decides where the environment comes from.
pub fn init(verbosity: u8, rust_log: Option<&str>) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = rust_log
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| directives(verbosity).parse().unwrap_or_default());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .with(filter)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_parses() {
        for v in 0..=10 {
            directives(v).parse::<Targets>().unwrap();
        }
    }
}
