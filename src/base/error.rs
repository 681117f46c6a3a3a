//! Error plumbing shared by every layer: the boxed error type of connectors and bodies, and how an
//! error chain is rendered in one line.

/// The error type of connectors, bodies and other `tower`/`http-body` plumbing.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Renders an error and its sources as `a: b: c`, skipping a source whose text the parent already shows.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
