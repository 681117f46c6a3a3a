//! Hop-by-hop header handling shared by the request and response paths.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection rather than the message, so a proxy must not forward them
/// (RFC 9110 §7.6.1, which names `Connection`, `Proxy-Connection`, `Keep-Alive`, `TE`,
/// `Transfer-Encoding` and `Upgrade`; plus `Trailer` and the `Proxy-Authenticate`/`Proxy-Authorization`
/// pair, which Go's `ReverseProxy` (and so `kubectl proxy`) also removes).
pub static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Bit `n` is set when a name in [`HOP_BY_HOP`] is `n` bytes long (all are shorter than 32).
const HOP_BY_HOP_LENGTHS: u32 = {
    let names = [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    let mut mask = 0;
    let mut i = 0;
    while i < names.len() {
        mask |= 1 << names[i].len();
        i += 1;
    }
    mask
};

/// Whether `name` is in [`HOP_BY_HOP`]. Nearly every other name fails the length test, which costs
/// less than comparing it with nine names.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let s = name.as_str();
    s.len() < 32 && HOP_BY_HOP_LENGTHS & (1 << s.len()) != 0 && HOP_BY_HOP.contains(name)
}

/// Removes the hop-by-hop headers and every header named in `Connection` (RFC 9110 §7.6.1).
///
/// `TE: trailers` survives, as in Go's `ReverseProxy`: it is how gRPC-style clients ask for trailers
/// end to end. Returns whether the message asked for a protocol upgrade, which the caller must know
/// before the evidence is gone.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // The common case: none present. One pass over the few names present, most rejected by their
    // length alone, where probing the map for each table entry would hash nine names.
    if !headers.keys().any(is_hop_by_hop) {
        return false;
    }
    let mut upgrade = false;
    // The common case (no Connection header) allocates nothing.
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .filter_map(|name| {
                if name.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                }
                HeaderName::from_bytes(name.as_bytes()).ok()
            })
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    let keep_te = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        if *name == header::TE && keep_te {
            continue;
        }
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    upgrade
}

/// An `Authorization: Basic` value for `user` and `password` (RFC 7617), marked sensitive so it is never
/// logged or indexed by HPACK; `None` when the result cannot be a header value.
pub fn basic_auth(user: &str, password: &str) -> Option<http::HeaderValue> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = http::HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_table_and_connection_listed_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!strip_hop_by_hop(&mut h));
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn the_length_mask_covers_the_table() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [header::ACCEPT, header::USER_AGENT, header::CONTENT_LENGTH] {
            assert!(!is_hop_by_hop(&name), "{name}");
        }
    }

    #[test]
    fn keeps_te_trailers_and_reports_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(strip_hop_by_hop(&mut h));
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(!h.contains_key(header::UPGRADE));
    }
}
