//! The module graph keeps the layer order `src/lib.rs` documents: a module uses only modules listed
//! before it in [`ORDER`], so no import cycle can come back. Reads the `crate::` and `super::` paths in
//! the code of every file under `src/` (comments and `#[cfg(test)]` modules aside).

use std::path::{Path, PathBuf};

/// Every library module, leaves first; each may use only those before it. A new module goes where its
/// imports allow, and `src/lib.rs` says why in its layer list.
const ORDER: &[&str] = &[
    // base: no imports from the crate.
    "base::echo",
    "base::env",
    "base::error",
    "base::fd_limit",
    "base::host",
    "base::lease",
    "base::single_flight",
    "base",
    // wire: HTTP vocabulary.
    "wire::received",
    "wire::body",
    "wire::client_body",
    "wire::headers",
    "wire::status",
    "wire::replay",
    "wire",
    // telemetry: what operators see; code below reports into it through hooks.
    "telemetry::hooks",
    "telemetry::health",
    "telemetry::access_log",
    "telemetry::metrics",
    "telemetry::logging",
    "telemetry::observe",
    "telemetry",
    // kube: the kubeconfig, resolved, and its TLS material.
    "kube::kubeconfig_file",
    "kube::kubeconfig",
    "kube::tls",
    "kube",
    // upstream: connections to the API server.
    "upstream::egress",
    "upstream::dial",
    "upstream::shared",
    "upstream::lanes",
    "upstream",
    // auth: credentials and impersonation.
    "auth::credentials::credential",
    "auth::credentials::token_file",
    "auth::credentials::exec",
    "auth::credentials::oidc",
    "auth::credentials",
    "auth",
    // proxy: request handling.
    "proxy::filter",
    "proxy::guard",
    "proxy::error",
    "proxy::static_files",
    "proxy::upgrade",
    "proxy::forward",
    "proxy::router",
    "proxy",
    // cli, then app: the composition root.
    "cli",
    "app::error",
    "app::watch",
    "app::client_io",
    "app::config",
    "app::build",
    "app::clusters",
    "app::client_config",
    "app::reload",
    "app::server",
    "app::admin",
    "app",
    // after the root: it runs an App.
    "app::exec",
    "",
];

fn rank(module: &str) -> Option<usize> {
    ORDER.iter().position(|m| *m == module)
}

/// The listed module a path such as `upstream::egress::Route` names: its longest listed prefix.
fn owner(path: &str) -> &'static str {
    let segments: Vec<&str> = path.split("::").collect();
    (0..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find_map(|prefix| ORDER.iter().find(|m| **m == prefix).copied())
        .unwrap_or("")
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; `src/lib.rs` → the root (`""`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its trailing `#[cfg(test)]` module; inside other
/// inline modules (`mod process { use super::*; }`), `super` is the file itself, so it is dropped there.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut from = 0;
    while let Some(i) = inline_module(&code[from..]) {
        let start = from + i;
        let mut depth = 0;
        let mut end = code.len();
        for (j, c) in code[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = code[start..end].replace("super::", "");
        code.replace_range(start..end, &inner);
        from = start + inner.len();
    }
    code
}

/// Where the next inline module (`mod name {`, at the start of a line) begins.
fn inline_module(code: &str) -> Option<usize> {
    let mut at = 0;
    for line in code.split_inclusive('\n') {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or(t.strip_prefix("pub "))
            .unwrap_or(t);
        if t.starts_with("mod ") && t.trim_end().ends_with('{') {
            return Some(at);
        }
        at += line.len();
    }
    None
}

/// The module paths a file's code names: `crate::x::y…` as written, `super::y…` resolved.
fn references(module: &str, code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", String::new()),
        (
            "super::",
            module
                .rsplit_once("::")
                .map_or(String::new(), |(p, _)| p.to_owned()),
        ),
    ] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let preceded = rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            rest = &rest[i + prefix.len()..];
            if preceded {
                continue;
            }
            assert!(
                !rest.starts_with('{'),
                "{module}: `{prefix}{{..}}` groups are not checked; import each module on its own line"
            );
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':');
            out.push(if base.is_empty() {
                path.to_owned()
            } else {
                format!("{base}::{path}")
            });
        }
    }
    out
}

#[test]
fn modules_import_only_from_earlier_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    all.sort();
    let mut violations = Vec::new();
    for file in &all {
        if file.ends_with("main.rs") {
            continue;
        }
        let module = module_of(&src, file);
        let Some(own) = rank(&module) else {
            violations.push(format!(
                "{}: module `{module}` is not in tests/layers.rs ORDER; add it where its imports allow",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for path in references(&module, &code(&text)) {
            let target = owner(&path);
            if target == module {
                continue;
            }
            let theirs = rank(target).unwrap();
            if theirs >= own {
                violations.push(format!(
                    "{}: `{module}` uses `{path}`, but `{target}` comes after it in the layer order",
                    file.display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layer order (src/lib.rs):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_order_lists_each_module_once_and_the_check_sees_violations() {
    for (i, m) in ORDER.iter().enumerate() {
        assert_eq!(rank(m), Some(i), "{m} is listed twice");
    }
    // The checker itself: an upward import is found, a downward one is not.
    let upward = references("wire::body", "use crate::upstream::Lease;\n");
    assert_eq!(owner(&upward[0]), "upstream");
    assert!(rank("upstream") > rank("wire::body"));
    let parent = references("upstream::shared", "use super::POOL_IDLE_TIMEOUT;\n");
    assert_eq!(owner(&parent[0]), "upstream");
    assert!(rank("upstream") > rank("upstream::shared"));
    // Comments and test modules are not code.
    assert!(references(
        "wire",
        &code("// crate::app\n#[cfg(test)]\nmod tests { use crate::app; }")
    )
    .is_empty());
    assert!(references("wire::body", &code("mod inner {\n    use super::*;\n}\n")).is_empty());
}
