//! The access log (`--access-log=off|text|json`): one line per finished request on stderr (stdout
//! carries only the startup line that scripts parse).
//!
//! A line holds the time, method, request target, status, body bytes in and out, duration and the
//! protocol spoken to the API server, and nothing taken from a header: no `Authorization`, no
//! `Impersonate-*`, no cookie. Query parameters whose name suggests a secret (`token`, `password`,
//! `secret`) have their values replaced by `REDACTED`.
//!
//! Text: `2025-01-02T03:04:05.678Z GET /api/v1/pods?limit=5 200 0 1234 1.234 h2`
//! (`time method target status bytes_in bytes_out duration_ms proto`; `-` for an unknown request body
//! length and for requests that did not reach the API server).
//!
//! JSON: `{"time":"…","method":"GET","path":"/api/v1/pods?limit=5","status":200,"bytes_in":0,
//! "bytes_out":1234,"duration_ms":1.234,"proto":"h2","upstream":"https://…","cluster":null}` (`null`
//! for unknowns; `cluster` is the `/clusters/<key>/` key, `null` at `/`). The text line's target is
//! the path as received, so a request under a prefix shows its key there.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Uri};

/// `--access-log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// No access log (the default).
    #[default]
    Off,
    /// Space-separated fields.
    Text,
    /// One JSON object per line.
    Json,
}

/// What one access-log line says.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target as received.
    pub uri: &'a Uri,
    /// The status sent (499: the client went away before an answer).
    pub status: u16,
    /// The request body length, when declared.
    pub bytes_in: Option<u64>,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// From the request's headers to the end of the response.
    pub duration: Duration,
    /// `h2` or `http/1.1` when the API server answered; `None` otherwise.
    pub proto: Option<&'static str>,
    /// The API server URL, when the request was for one.
    pub upstream: Option<&'a str>,
    /// The `/clusters/<key>/` key the request came in under; `None` at `/`.
    pub cluster: Option<&'a str>,
}

thread_local! {
    /// Reused per thread, so logging does not allocate per line once warmed up.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// Writes `entry` to stderr in `format` as a single write.
pub fn write(format: Format, entry: &Entry<'_>) {
    if format == Format::Off {
        return;
    }
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        format_line(&mut line, format, entry, SystemTime::now());
        // One write per line keeps lines whole when several writers share stderr. A full pipe blocks
        // the writer, as it does for every other log line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    });
}

/// Formats one line, newline included. Numbers are written digit by digit rather than through
/// `fmt`, which made a line several times cheaper.
pub fn format_line(out: &mut String, format: Format, e: &Entry<'_>, now: SystemTime) {
    match format {
        Format::Off => {}
        Format::Text => {
            rfc3339(out, now);
            out.push(' ');
            out.push_str(e.method.as_str());
            out.push(' ');
            target(out, e.uri, false);
            out.push(' ');
            push_uint(out, u64::from(e.status), 1);
            out.push(' ');
            match e.bytes_in {
                Some(n) => push_uint(out, n, 1),
                None => out.push('-'),
            }
            out.push(' ');
            push_uint(out, e.bytes_out, 1);
            out.push(' ');
            push_millis(out, e.duration);
            out.push(' ');
            out.push_str(e.proto.unwrap_or("-"));
            out.push('\n');
        }
        Format::Json => {
            out.push_str("{\"time\":\"");
            rfc3339(out, now);
            out.push_str("\",\"method\":");
            json_str(out, e.method.as_str());
            out.push_str(",\"path\":\"");
            target(out, e.uri, true);
            out.push_str("\",\"status\":");
            push_uint(out, u64::from(e.status), 1);
            out.push_str(",\"bytes_in\":");
            match e.bytes_in {
                Some(n) => push_uint(out, n, 1),
                None => out.push_str("null"),
            }
            out.push_str(",\"bytes_out\":");
            push_uint(out, e.bytes_out, 1);
            out.push_str(",\"duration_ms\":");
            push_millis(out, e.duration);
            out.push_str(",\"proto\":");
            match e.proto {
                Some(p) => json_str(out, p),
                None => out.push_str("null"),
            }
            out.push_str(",\"upstream\":");
            match e.upstream {
                Some(u) => json_str(out, u),
                None => out.push_str("null"),
            }
            out.push_str(",\"cluster\":");
            match e.cluster {
                Some(c) => json_str(out, c),
                None => out.push_str("null"),
            }
            out.push_str("}\n");
        }
    }
}

/// Query parameter names whose values are never logged.
fn is_secret_param(name: &str) -> bool {
    let lower = |needle: &str| {
        name.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    };
    lower("token") || lower("password") || lower("secret")
}

/// The request target (path and query), with secret-looking query values redacted. URIs hold no
/// spaces or control characters (the parser rejects them), so only JSON escaping is needed.
pub fn target(out: &mut String, uri: &Uri, json: bool) {
    let push = |out: &mut String, s: &str| {
        if json {
            json_inner(out, s)
        } else {
            out.push_str(s)
        }
    };
    push(out, uri.path());
    let Some(query) = uri.query() else { return };
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => {
                push(out, name);
                out.push_str("=REDACTED");
            }
            _ => push(out, pair),
        }
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    json_inner(out, s);
    out.push('"');
}

fn json_inner(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Appends `v` in decimal, zero-padded to at least `width` digits.
fn push_uint(out: &mut String, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while v > 0 || buf.len() - i < width.max(1) {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// Appends a duration in milliseconds with three decimals (microsecond resolution): `12.345`.
fn push_millis(out: &mut String, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_uint(out, us / 1000, 1);
    out.push('.');
    push_uint(out, us % 1000, 3);
}

/// `2025-01-02T03:04:05.678Z`, computed without a date library (days-to-civil from H. Hinnant's
/// `chrono`-compatible algorithms).
pub fn rfc3339(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    push_uint(out, year.max(0) as u64, 4);
    out.push('-');
    push_uint(out, month as u64, 2);
    out.push('-');
    push_uint(out, day as u64, 2);
    out.push('T');
    push_uint(out, rem / 3600, 2);
    out.push(':');
    push_uint(out, rem / 60 % 60, 2);
    out.push(':');
    push_uint(out, rem % 60, 2);
    out.push('.');
    push_uint(out, u64::from(d.subsec_millis()), 3);
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(method: &'a Method, uri: &'a Uri) -> Entry<'a> {
        Entry {
            method,
            uri,
            status: 200,
            bytes_in: Some(0),
            bytes_out: 1234,
            duration: Duration::from_micros(1234),
            proto: Some("h2"),
            upstream: Some("https://10.0.0.1:6443"),
            cluster: None,
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let mut s = String::new();
        rfc3339(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        );
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        s.clear();
        rfc3339(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn numbers_are_written_digit_by_digit() {
        let mut s = String::new();
        push_uint(&mut s, 0, 1);
        s.push(' ');
        push_uint(&mut s, 7, 3);
        s.push(' ');
        push_uint(&mut s, u64::MAX, 1);
        s.push(' ');
        push_millis(&mut s, Duration::from_micros(12_005));
        s.push(' ');
        push_millis(&mut s, Duration::from_nanos(999));
        assert_eq!(s, "0 007 18446744073709551615 12.005 0.000");
    }

    #[test]
    fn text_line() {
        let m = Method::GET;
        let u: Uri = "/api/v1/pods?limit=5".parse().unwrap();
        let mut s = String::new();
        format_line(&mut s, Format::Text, &entry(&m, &u), UNIX_EPOCH);
        assert_eq!(
            s,
            "1970-01-01T00:00:00.000Z GET /api/v1/pods?limit=5 200 0 1234 1.234 h2\n"
        );
    }

    #[test]
    fn json_line_is_valid_json() {
        let m = Method::POST;
        let u: Uri = "/api/v1/namespaces/a%22b/pods".parse().unwrap();
        let mut e = entry(&m, &u);
        e.bytes_in = None;
        e.proto = None;
        let mut s = String::new();
        format_line(&mut s, Format::Json, &e, UNIX_EPOCH);
        assert!(s.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/api/v1/namespaces/a%22b/pods");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_in"], serde_json::Value::Null);
        assert_eq!(v["bytes_out"], 1234);
        assert_eq!(v["proto"], serde_json::Value::Null);
        assert_eq!(v["upstream"], "https://10.0.0.1:6443");
        assert_eq!(v["cluster"], serde_json::Value::Null);
        e.cluster = Some("prod");
        s.clear();
        format_line(&mut s, Format::Json, &e, UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["cluster"], "prod");
    }

    #[test]
    fn secret_query_values_are_redacted() {
        let u: Uri = "/x?watch=1&access_token=abc&Password=p&idToken=t&name=token"
            .parse()
            .unwrap();
        let mut s = String::new();
        target(&mut s, &u, false);
        assert_eq!(
            s,
            "/x?watch=1&access_token=REDACTED&Password=REDACTED&idToken=REDACTED&name=token"
        );
    }
}
