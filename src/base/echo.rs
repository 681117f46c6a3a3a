//! Client-supplied text repeated back in answers and logs (a rejected `Host`, a path that is not
//! served) is cut to [`ECHO_LIMIT`] bytes, so a hostile or buggy client cannot make kproxy write
//! megabytes into a 403 body or a log line. kubectl proxy echoes them whole.

use std::borrow::Cow;

/// The most bytes of one client-supplied value repeated back: long enough for any real path or host
/// (Kubernetes names are at most 253 characters), short enough to keep a log line a line.
pub const ECHO_LIMIT: usize = 512;

/// `s` when it fits in [`ECHO_LIMIT`] bytes; else its first bytes (cut at a character boundary)
/// followed by `…(N more bytes)`.
pub fn bounded(s: &str) -> Cow<'_, str> {
    if s.len() <= ECHO_LIMIT {
        return Cow::Borrowed(s);
    }
    let mut end = ECHO_LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…({} more bytes)", &s[..end], s.len() - end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_pass_long_ones_are_cut_on_a_char_boundary() {
        assert_eq!(bounded("localhost"), "localhost");
        let exact = "a".repeat(ECHO_LIMIT);
        assert_eq!(bounded(&exact), exact);
        let long = "é".repeat(ECHO_LIMIT); // two bytes each
        let cut = bounded(&long);
        assert!(cut.starts_with(&"é".repeat(ECHO_LIMIT / 2)));
        assert!(
            cut.ends_with(&format!("…({} more bytes)", ECHO_LIMIT)),
            "{cut}"
        );
        let odd = format!("a{}", "é".repeat(ECHO_LIMIT));
        let cut = bounded(&odd);
        assert!(cut.starts_with('a') && cut.contains('…'));
        assert!(cut.len() < ECHO_LIMIT + 32);
    }
}
