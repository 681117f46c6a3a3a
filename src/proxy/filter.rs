//! `kubectl proxy`'s request filter: regex lists over the request path, method and Host.
//!
//! Semantics follow kubectl `pkg/proxy/proxy_server.go`: each flag is split on `,` (so a regex cannot
//! contain a comma), every part is matched unanchored and case-sensitively, an empty flag is an empty list
//! that never matches, and a request is rejected when its path matches a reject-path or its method a
//! reject-method, else accepted only when its path matches an accept-path and its host an accept-host.
//! One deliberate fix: a bracketed IPv6 Host (`[::1]:8001`) is matched both with and without its brackets,
//! so the default `^\[::1\]$` accepts it (kubectl rejects it: kubernetes/kubernetes#77496).

use crate::base::echo::bounded;
use regex::Regex;

/// kubectl's default `--accept-hosts`.
pub const DEFAULT_ACCEPT_HOSTS: &str = r"^localhost$,^127\.0\.0\.1$,^\[::1\]$";
/// kubectl's default `--accept-paths`.
pub const DEFAULT_ACCEPT_PATHS: &str = "^.*";
/// kubectl's default `--reject-paths`: exec and attach on core pods.
pub const DEFAULT_REJECT_PATHS: &str = "^/api/.*/pods/.*/exec,^/api/.*/pods/.*/attach";
/// kubectl's default `--reject-methods`, which never matches.
pub const DEFAULT_REJECT_METHODS: &str = "^$";

/// A comma-separated list of regexes, as one filter flag holds them.
#[derive(Debug, Clone)]
pub struct RegexList {
    source: String,
    regexes: Vec<(Regex, Shortcut)>,
}

/// A way to answer `is_match` without running the regex, for the shapes kubectl's defaults have. Every
/// request runs six matches against the defaults; through the regex engine they were 1.2k of the ~58k
/// instructions of a proxied GET (callgrind, bench/README.md).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shortcut {
    /// `^.*` or `.*`: every string matches (the empty prefix does).
    Any,
    /// `^$`: only the empty string.
    Empty,
    /// `^text$` where `text` has no metacharacters, or only backslash-escaped punctuation: only `text`.
    Exact(String),
    /// Anything else runs the regex.
    None,
}

impl Shortcut {
    fn of(pattern: &str) -> Self {
        match pattern {
            "^.*" | ".*" => return Shortcut::Any,
            "^$" => return Shortcut::Empty,
            _ => {}
        }
        let Some(inner) = pattern
            .strip_prefix('^')
            .and_then(|p| p.strip_suffix('$'))
            .filter(|p| !p.ends_with('\\'))
        else {
            return Shortcut::None;
        };
        let mut text = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                // In RE2 and Rust's regex alike, a backslash before ASCII punctuation is that character.
                '\\' => match chars.next() {
                    Some(e) if e.is_ascii_punctuation() => text.push(e),
                    _ => return Shortcut::None,
                },
                '.' | '[' | ']' | '(' | ')' | '{' | '}' | '*' | '+' | '?' | '|' | '^' | '$' => {
                    return Shortcut::None
                }
                c => text.push(c),
            }
        }
        Shortcut::Exact(text)
    }
}

/// A regex in a filter flag that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid regex {regex:?} in --{flag}: {reason}")]
pub struct InvalidRegex {
    /// The flag that held it.
    pub flag: &'static str,
    /// The offending part.
    pub regex: String,
    /// Why it failed to compile, on one line.
    pub reason: String,
}

impl RegexList {
    /// Compiles a flag value: split on `,`; an empty value is an empty list.
    pub fn parse(flag: &'static str, value: &str) -> Result<Self, InvalidRegex> {
        let regexes = if value.is_empty() {
            Vec::new()
        } else {
            value
                .split(',')
                .map(|part| {
                    Regex::new(part)
                        .map(|re| (re, Shortcut::of(part)))
                        .map_err(|e| InvalidRegex {
                            flag,
                            regex: part.to_owned(),
                            // regex renders a multi-line caret diagram; its last line is the reason.
                            reason: e
                                .to_string()
                                .lines()
                                .last()
                                .unwrap_or("")
                                .trim_start_matches("error: ")
                                .to_owned(),
                        })
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            source: value.to_owned(),
            regexes,
        })
    }

    /// The first regex matching `s`, if any.
    pub fn find(&self, s: &str) -> Option<&Regex> {
        self.regexes
            .iter()
            .find(|(re, shortcut)| match shortcut {
                Shortcut::Any => true,
                Shortcut::Empty => s.is_empty(),
                Shortcut::Exact(text) => s == text,
                Shortcut::None => re.is_match(s),
            })
            .map(|(re, _)| re)
    }

    /// Whether the list was given as the empty string (and so never matches).
    pub fn is_empty(&self) -> bool {
        self.regexes.is_empty()
    }
}

/// The filter as configured by the four flags.
#[derive(Debug, Clone)]
pub struct Filter {
    accept_paths: RegexList,
    reject_paths: RegexList,
    accept_hosts: RegexList,
    reject_methods: RegexList,
}

/// Why a request was turned away; its `Display` is the message of the 403 `Status`. The client's
/// path, method and host in it are cut to [`crate::base::echo::ECHO_LIMIT`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The path matched one of `--reject-paths`.
    #[error("path {path:?} matches --reject-paths regex {regex:?}{hint}")]
    RejectedPath {
        /// The decoded request path.
        path: String,
        /// The matching regex.
        regex: String,
        /// Advice for exec/attach, the common case.
        hint: &'static str,
    },
    /// The method matched one of `--reject-methods`.
    #[error("method {method} matches --reject-methods regex {regex:?}")]
    RejectedMethod {
        /// The request method.
        method: String,
        /// The matching regex.
        regex: String,
    },
    /// No `--accept-paths` regex matched.
    #[error("path {path:?} matches no --accept-paths regex (--accept-paths={list})")]
    PathNotAccepted {
        /// The decoded request path.
        path: String,
        /// The flag value.
        list: String,
    },
    /// No `--accept-hosts` regex matched.
    #[error("host {host:?} matches no --accept-hosts regex (--accept-hosts={list}); this check protects against DNS rebinding, widen --accept-hosts to allow it")]
    HostNotAccepted {
        /// The Host the request named, port removed.
        host: String,
        /// The flag value.
        list: String,
    },
}

const EXEC_HINT: &str =
    "; exec and attach are rejected by default, as in kubectl proxy: pass --reject-paths='' (or a narrower list) to allow them";

impl Filter {
    /// Compiles the four flag values.
    pub fn new(
        accept_paths: &str,
        reject_paths: &str,
        accept_hosts: &str,
        reject_methods: &str,
    ) -> Result<Self, InvalidRegex> {
        Ok(Self {
            accept_paths: RegexList::parse("accept-paths", accept_paths)?,
            reject_paths: RegexList::parse("reject-paths", reject_paths)?,
            accept_hosts: RegexList::parse("accept-hosts", accept_hosts)?,
            reject_methods: RegexList::parse("reject-methods", reject_methods)?,
        })
    }

    /// Decides a request. `path` is the decoded path after the api-prefix is stripped; `host` is the
    /// raw Host (or absolute-form authority), port included.
    pub fn check(&self, method: &str, path: &str, host: &str) -> Result<(), Rejection> {
        if let Some(re) = self.reject_paths.find(path) {
            let hint = if path.contains("/exec") || path.contains("/attach") {
                EXEC_HINT
            } else {
                ""
            };
            return Err(Rejection::RejectedPath {
                path: bounded(path).into_owned(),
                regex: re.as_str().to_owned(),
                hint,
            });
        }
        if let Some(re) = self.reject_methods.find(method) {
            return Err(Rejection::RejectedMethod {
                method: bounded(method).into_owned(),
                regex: re.as_str().to_owned(),
            });
        }
        if self.accept_paths.find(path).is_none() {
            return Err(Rejection::PathNotAccepted {
                path: bounded(path).into_owned(),
                list: self.accept_paths.source.clone(),
            });
        }
        let (bracketed, bare) = host_without_port(host);
        let accepted = self.accept_hosts.find(bracketed).is_some()
            || (bare != bracketed && self.accept_hosts.find(bare).is_some());
        if !accepted {
            return Err(Rejection::HostNotAccepted {
                host: bounded(bracketed).into_owned(),
                list: self.accept_hosts.source.clone(),
            });
        }
        Ok(())
    }

    /// Whether any flag was relaxed to the empty string in a way that widens access (kubectl 1.37 warns).
    pub fn relaxed(&self) -> bool {
        self.reject_paths.is_empty() || self.reject_methods.is_empty()
    }
}

/// Splits the port off a Host value the way Go's `net.SplitHostPort` would, but keeps the brackets of an
/// IPv6 literal in the first form. Returns `(with brackets, without brackets)`; for names and IPv4 both
/// are the same. A value `SplitHostPort` cannot split is returned whole, as kubectl does.
pub fn host_without_port(host: &str) -> (&str, &str) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let after = &rest[end + 1..];
            if after.is_empty() || (after.starts_with(':') && !after[1..].contains(':')) {
                return (&host[..end + 2], &rest[..end]);
            }
        }
        return (host, host);
    }
    match host.rfind(':') {
        // More than one colon without brackets: Go's "too many colons"; kubectl keeps the raw value.
        Some(i) if !host[..i].contains(':') => (&host[..i], &host[..i]),
        _ => (host, host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default() -> Filter {
        Filter::new(
            DEFAULT_ACCEPT_PATHS,
            DEFAULT_REJECT_PATHS,
            DEFAULT_ACCEPT_HOSTS,
            DEFAULT_REJECT_METHODS,
        )
        .unwrap()
    }

    #[test]
    fn host_forms() {
        assert_eq!(
            host_without_port("localhost:8001"),
            ("localhost", "localhost")
        );
        assert_eq!(host_without_port("[::1]:8001"), ("[::1]", "::1"));
        assert_eq!(host_without_port("[::1]"), ("[::1]", "::1"));
        assert_eq!(host_without_port("::1"), ("::1", "::1"));
        assert_eq!(host_without_port(""), ("", ""));
    }

    #[test]
    fn kubectl_defaults() {
        let f = default();
        for host in [
            "localhost",
            "localhost:9",
            "127.0.0.1:8001",
            "[::1]:8001",
            "[::1]",
        ] {
            assert_eq!(f.check("GET", "/api/v1/pods", host), Ok(()), "{host}");
        }
        for host in ["LOCALHOST", "127.0.0.1.evil.com", "evil.com", ""] {
            assert!(f.check("GET", "/api", host).is_err(), "{host}");
        }
        assert!(matches!(
            f.check("POST", "/api/v1/namespaces/d/pods/p/exec", "localhost"),
            Err(Rejection::RejectedPath { .. })
        ));
        assert!(f
            .check("GET", "/api/v1/namespaces/d/pods/p/execfoo", "localhost")
            .is_err());
        assert!(f
            .check(
                "GET",
                "/api/v1/namespaces/d/pods/p/portforward",
                "localhost"
            )
            .is_ok());
        assert!(f
            .check("GET", "/apis/x/v1/pods/p/exec", "localhost")
            .is_ok());
    }

    #[test]
    fn empty_lists_and_methods() {
        let f = Filter::new("", "", "", "^$").unwrap();
        assert!(matches!(
            f.check("GET", "/", "localhost"),
            Err(Rejection::PathNotAccepted { .. })
        ));
        let f = Filter::new("^.*", "", ".*", "POST,PUT").unwrap();
        assert!(matches!(
            f.check("POST", "/", "x"),
            Err(Rejection::RejectedMethod { .. })
        ));
        assert!(f.check("post", "/", "x").is_ok());
        assert!(f.relaxed());
    }

    #[test]
    fn shortcuts_answer_as_the_regex_does() {
        let patterns = [
            "^.*",
            ".*",
            "^$",
            "^localhost$",
            r"^127\.0\.0\.1$",
            r"^\[::1\]$",
            "^a.b$",
            "^(?i)x$",
            r"^a\d$",
            "^a$|^b$",
            "^/api/.*/pods/.*/exec",
            "localhost",
        ];
        let inputs = [
            "",
            "\n",
            "localhost",
            "localhost\n",
            "xlocalhost",
            "127.0.0.1",
            "127x0x0x1",
            "[::1]",
            "::1",
            "a.b",
            "axb",
            "X",
            "a1",
            "b",
            "/api/v1/namespaces/d/pods/p/exec",
        ];
        for p in patterns {
            let re = Regex::new(p).unwrap();
            let list = RegexList::parse("test", p).unwrap();
            for i in inputs {
                assert_eq!(list.find(i).is_some(), re.is_match(i), "{p:?} on {i:?}");
            }
        }
        assert_eq!(
            Shortcut::of(r"^127\.0\.0\.1$"),
            Shortcut::Exact("127.0.0.1".into())
        );
        assert_eq!(Shortcut::of(r"^\[::1\]$"), Shortcut::Exact("[::1]".into()));
        assert_eq!(Shortcut::of("^a.b$"), Shortcut::None);
        assert_eq!(Shortcut::of(r"^a\d$"), Shortcut::None);
        assert_eq!(Shortcut::of(r"^a\$"), Shortcut::None);
    }

    #[test]
    fn comma_splits_and_bad_regex_is_reported() {
        let err = Filter::new("^/a{1,3}", "", ".*", "^$").unwrap_err();
        assert_eq!(err.flag, "accept-paths");
        assert_eq!(err.regex, "^/a{1");
    }
}
