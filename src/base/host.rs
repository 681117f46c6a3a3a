//! Host and port text as Go's `net` package reads and writes it: IPv6 literals in brackets.

/// `host`, `host:port` or `[v6]:port` → (host without brackets, port). A bare IPv6 address (several
/// colons, no brackets) has no port.
pub fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

/// `host:port`, with an IPv6 `host` in brackets (Go's `net.JoinHostPort`). A host already in brackets
/// is kept as it is.
pub fn join_host_port(host: &str, port: impl std::fmt::Display) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_joins_like_go() {
        assert_eq!(split_host_port("example.com"), ("example.com", None));
        assert_eq!(
            split_host_port("example.com:443"),
            ("example.com", Some("443"))
        );
        assert_eq!(split_host_port("[::1]:8001"), ("::1", Some("8001")));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port("[::1"), ("[::1", None));
        assert_eq!(join_host_port("10.0.0.1", 443), "10.0.0.1:443");
        assert_eq!(join_host_port("fd00::1", 443), "[fd00::1]:443");
        assert_eq!(join_host_port("[fd00::1]", 443), "[fd00::1]:443");
    }
}
