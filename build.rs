//! Release links place the binary's functions in the order of `link/symbol-order.txt`: the code that
//! runs from exec to the startup line first, then the code that serves requests. The kernel maps a
//! binary's code in blocks of 64 KiB (fault-around, large page-cache folios), and that code was spread
//! over most of the 5.8 MB of text, so most of the text became resident at startup; grouped, it fills a
//! few blocks, and idle RSS drops by about 3 MiB (bench/README.md). Regenerate the file with
//! `bench/link-order.sh` before a release, not in ordinary commits; names it lists that no longer exist
//! are ignored, so a stale file only costs memory (`build/static.sh` prints how many still resolve).
//! `KPROXY_LINK_ORDER=off` turns this off.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=KPROXY_LINK_ORDER");
    if env::var("KPROXY_LINK_ORDER").as_deref() == Ok("off")
        || env::var("PROFILE").as_deref() != Ok("release")
        || !linker_is_rust_lld()
    {
        return;
    }
    let Ok(dir) = env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = std::path::Path::new(&dir).join("link/symbol-order.txt");
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Only lld takes `--symbol-ordering-file` (GNU ld would fail the link). rustc links with its bundled
/// lld by default on x86_64 Linux since 1.90, unless a linker (or linker flavour or features) is configured.
fn linker_is_rust_lld() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("RUSTC_LINKER").is_some()
        || env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("linker"))
    {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
