//! `--www`: static files under `--www-prefix`, served by tower-http's `ServeDir`, which rejects `..` and
//! handles ranges, conditional requests and index files. On top of it, every file is resolved through
//! symlinks first and refused when it lands outside the directory (Go's `http.FileServer`, which kubectl
//! uses, follows such links).

use std::path::{Component, Path, PathBuf};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use tower::ServiceExt;
use tower_http::services::ServeDir;

use crate::wire::body::Body;

/// The static file handler.
pub struct StaticFiles {
    /// The directory, canonicalised at startup so prefix checks compare like with like.
    root: PathBuf,
    /// The URL prefix, with trailing `/`, for rewriting redirects.
    prefix: String,
    dir: ServeDir,
}

impl StaticFiles {
    /// Serves `root` under `prefix`. A missing or non-directory `root` only warns, as in kubectl; its
    /// requests then answer 404.
    pub fn new(root: &Path, prefix: &str) -> Self {
        match std::fs::metadata(root) {
            Err(e) => tracing::warn!(
                "Failed to stat static file directory {}: {e}",
                root.display()
            ),
            Ok(m) if !m.is_dir() => tracing::warn!(
                "Static file directory {} is not a directory",
                root.display()
            ),
            Ok(_) => {}
        }
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
        Self {
            dir: ServeDir::new(&root).append_index_html_on_directories(true),
            root,
            prefix: prefix.to_owned(),
        }
    }

    /// Serves `rest`: the request path (raw) after the prefix, starting with `/`.
    pub async fn serve<B>(&self, req: &Request<B>, rest: &str) -> Response<Body> {
        if !self.inside_root(rest).await {
            return not_found();
        }
        let mut inner = Request::builder()
            .method(req.method().clone())
            .uri(rest)
            .body(http_body_util::Empty::<bytes::Bytes>::new());
        if let Ok(r) = inner.as_mut() {
            for name in [
                header::RANGE,
                header::IF_MODIFIED_SINCE,
                header::IF_UNMODIFIED_SINCE,
                header::IF_NONE_MATCH,
                header::IF_MATCH,
                header::IF_RANGE,
                header::ACCEPT_ENCODING,
            ] {
                if let Some(v) = req.headers().get(&name) {
                    r.headers_mut().insert(name, v.clone());
                }
            }
        }
        let Ok(inner) = inner else { return not_found() };
        let resp = match self.dir.clone().oneshot(inner).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let (mut parts, body) = resp.into_parts();
        if parts.status == StatusCode::NOT_FOUND {
            return not_found();
        }
        // ServeDir redirects `/dir` to `/dir/` relative to the path it saw; put the prefix back.
        if let Some(loc) = parts
            .headers
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
        {
            if loc.starts_with('/') {
                let full = format!("{}{loc}", self.prefix.trim_end_matches('/'));
                if let Ok(v) = HeaderValue::try_from(full) {
                    parts.headers.insert(header::LOCATION, v);
                }
            }
        }
        Response::from_parts(parts, Body::boxed(body))
    }

    /// Whether the file `rest` names, after following symlinks, is inside the root. A path that does not
    /// exist passes (ServeDir answers 404 for it).
    async fn inside_root(&self, rest: &str) -> bool {
        let decoded = percent_encoding::percent_decode_str(rest).decode_utf8_lossy();
        let rel = Path::new(decoded.trim_start_matches('/'));
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return false;
        }
        let candidate = self.root.join(rel);
        match tokio::fs::canonicalize(&candidate).await {
            Ok(real) => real.starts_with(&self.root),
            Err(_) => true,
        }
    }
}

/// Go's `http.NotFound` answer, which kubectl's file server gives.
fn not_found() -> Response<Body> {
    let mut resp = Response::new(Body::full("404 page not found\n"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
