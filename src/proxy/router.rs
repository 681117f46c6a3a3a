//! Request routing, as kubectl's `http.ServeMux` does it: unclean paths are redirected to their clean
//! form (so `//` or `..` cannot slip past the filter), the longest of `--api-prefix` and `--www-prefix`
//! wins, the API prefix is stripped (except kubectl's `/api*` quirk), the filter runs, and the request is
//! proxied. Static files are never filtered.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::ops::ControlFlow;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::base::echo::bounded;
use crate::proxy::error::ProxyError;
use crate::proxy::filter::Filter;
use crate::proxy::forward::Proxy;
use crate::proxy::guard::{self, Guard, Screened};
use crate::proxy::static_files::StaticFiles;
use crate::wire::body::Body;

/// Routes each request to the API proxy or the static files.
pub struct Router {
    /// With trailing `/`.
    api_prefix: String,
    /// kubectl strips the prefix only when it does not start with `/api`.
    strip_api_prefix: bool,
    /// `--www-prefix` (with trailing `/`) and its handler.
    www: Option<(String, StaticFiles)>,
    /// `None` with `--disable-filter`.
    filter: Option<Filter>,
    proxy: Proxy,
    /// Origin checks, CORS, the inbound token and `--read-only` (issue 13); `None` checks nothing.
    guard: Option<Guard>,
}

impl Router {
    /// A router over the given parts. Prefixes must start and end with `/`.
    pub fn new(
        api_prefix: String,
        www: Option<(String, StaticFiles)>,
        filter: Option<Filter>,
        proxy: Proxy,
    ) -> Self {
        Self {
            strip_api_prefix: !api_prefix.starts_with("/api"),
            api_prefix,
            www,
            filter,
            proxy,
            guard: None,
        }
    }

    /// The router with `guard` checking its requests.
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// The proxy behind the API prefix.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Answers one request. Never fails: errors become `Status` responses.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        remote: Option<SocketAddr>,
    ) -> Response<Body> {
        let cors = match self.screen(&req) {
            ControlFlow::Continue(cors) => cors,
            ControlFlow::Break(answer) => return answer,
        };
        let mut resp = match self.route(req, remote).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, "answered by kproxy");
                e.into_response()
            }
        };
        guard::decorate(resp.headers_mut(), cors);
        resp
    }

    /// The Origin check and CORS preflights, which come first, for every route: the CORS headers the
    /// answer gets, or kproxy's own answer (a refusal, or the preflight's).
    fn screen<B>(&self, req: &Request<B>) -> ControlFlow<Response<Body>, guard::Cors> {
        match self.guard.as_ref().map(|g| g.screen(req)) {
            None => ControlFlow::Continue(guard::Cors::None),
            Some(Ok(Screened::Pass(cors))) => ControlFlow::Continue(cors),
            Some(Ok(Screened::Preflight(resp))) => ControlFlow::Break(resp),
            Some(Err(refusal)) => ControlFlow::Break(ProxyError::from(refusal).into_response()),
        }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        remote: Option<SocketAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        check_host(&req)?;
        // The asterisk form asks about the server, not a resource: Go's server answers `OPTIONS *` itself
        // with an empty 200, and the mux any other method with 400. It must never reach the API server.
        if req.uri() == "*" {
            if req.method() == http::Method::OPTIONS {
                let mut resp = Response::new(Body::empty());
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                return Ok(resp);
            }
            return Err(ProxyError::BadRequest(
                "the asterisk request target is only for OPTIONS".to_owned(),
            ));
        }
        let raw_path = req.uri().path();
        let decoded = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy();
        let clean = clean_path(&decoded);
        if clean != decoded && req.method() != http::Method::CONNECT {
            return Ok(redirect(&clean, req.uri().query()));
        }

        // `/custom` for prefix `/custom/` redirects, as ServeMux does for a subtree root named without its
        // slash, even when a shorter prefix (`/`) would match it.
        let is_root_of = |prefix: &str| prefix.strip_suffix('/') == Some(&*decoded);
        if is_root_of(&self.api_prefix) || self.www.as_ref().is_some_and(|(p, _)| is_root_of(p)) {
            return Ok(redirect(&format!("{decoded}/"), req.uri().query()));
        }

        let www_len = self
            .www
            .as_ref()
            .filter(|(p, _)| decoded.starts_with(p.as_str()))
            .map(|(p, _)| p.len());
        let api_match = decoded.starts_with(self.api_prefix.as_str());
        match (www_len, api_match) {
            (Some(len), api) if !api || len > self.api_prefix.len() => {
                let (prefix, files) = self.www.as_ref().expect("matched above");
                let rest = strip_raw(raw_path, &decoded, prefix);
                // Boxed: this rare path's future is large, and hyper keeps room for the handler's
                // future in every connection for as long as the connection lives.
                return Ok(Box::pin(files.serve(&req, &rest)).await);
            }
            (_, true) => {}
            _ => return Err(ProxyError::NotFound(bounded(&decoded).into_owned())),
        }

        let (forward_path, filter_path) = if self.strip_api_prefix {
            (
                strip_raw(raw_path, &decoded, &self.api_prefix),
                // The prefix ends with `/`, so what follows it, with that `/`, is the path.
                Cow::Borrowed(&decoded[self.api_prefix.len() - 1..]),
            )
        } else {
            (Cow::Borrowed(raw_path), Cow::Borrowed(&*decoded))
        };

        // issue 13 hook: the inbound token (removed here, before the upstream credential is added) and
        // `--read-only`, on the API only.
        let accepted = match &self.guard {
            Some(guard) => {
                let accepted = guard.authenticate(req.headers())?;
                guard.check_read_only(&req, &filter_path)?;
                accepted
            }
            None => guard::Accepted::Open,
        };
        if let Some(filter) = &self.filter {
            let host = guard::request_host(&req);
            if let Err(rejection) = filter.check(req.method().as_str(), &filter_path, host) {
                tracing::info!(
                    "Filter rejecting {} {} {}",
                    bounded(req.method().as_str()),
                    bounded(&filter_path),
                    bounded(host)
                );
                return Err(ProxyError::Filtered {
                    method: bounded(req.method().as_str()).into_owned(),
                    path: bounded(&filter_path).into_owned(),
                    rejection,
                });
            }
            tracing::debug!(
                "Filter accepting {} {} {}",
                bounded(req.method().as_str()),
                bounded(&filter_path),
                bounded(host)
            );
        }
        let forward_path = forward_path.into_owned();
        let mut req = req;
        accepted.strip(req.headers_mut());
        self.proxy
            .forward(req, &forward_path, remote.map(|a| a.ip()))
            .await
    }
}

impl Router {
    /// Answers a request for `path` that kproxy serves itself beside the API (`GET /clusters`) with
    /// `answer`, after the checks an API request passes: the Origin check and CORS, the Host rules, the
    /// inbound token and the filter. Without them a page in the browser, or another local user without
    /// the token, could list the contexts and servers that the API routes refuse to show them.
    pub fn answer_beside<B>(
        &self,
        req: &Request<B>,
        path: &str,
        answer: impl FnOnce() -> Response<Body>,
    ) -> Response<Body> {
        let cors = match self.screen(req) {
            ControlFlow::Continue(cors) => cors,
            ControlFlow::Break(answer) => return answer,
        };
        let mut resp = match self.admit(req, path) {
            Ok(()) => answer(),
            Err(e) => e.into_response(),
        };
        guard::decorate(resp.headers_mut(), cors);
        resp
    }

    fn admit<B>(&self, req: &Request<B>, path: &str) -> Result<(), ProxyError> {
        check_host(req)?;
        if let Some(guard) = &self.guard {
            guard.authenticate(req.headers())?;
        }
        let Some(filter) = &self.filter else {
            return Ok(());
        };
        filter
            .check(req.method().as_str(), path, guard::request_host(req))
            .map_err(|rejection| ProxyError::Filtered {
                method: req.method().to_string(),
                path: path.to_owned(),
                rejection,
            })
    }
}

/// Rejects what Go's server (and so kubectl proxy) rejects before routing: an HTTP/1.1 request without a
/// `Host` header, even in absolute form, and a request with more than one (RFC 9112 §3.2 requires a 400 for
/// both). hyper accepts them, and the filter would then read the first `Host` or none.
fn check_host<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(ProxyError::BadRequest("too many Host headers".to_owned())),
        (None, None) if req.version() >= http::Version::HTTP_11 => Err(ProxyError::BadRequest(
            "missing required Host header".to_owned(),
        )),
        _ => Ok(()),
    }
}

/// The raw (still encoded) path after `prefix`, with a leading `/` (kubectl's `stripLeaveSlash`). When
/// the raw path spells the prefix with escapes, the decoded remainder is re-encoded instead. `prefix`
/// ends with `/`, which becomes the leading `/` of the result, so the common case borrows.
fn strip_raw<'a>(raw: &'a str, decoded: &str, prefix: &str) -> Cow<'a, str> {
    match raw.strip_prefix(prefix) {
        Some(_) => Cow::Borrowed(&raw[prefix.len() - 1..]),
        None => {
            let rest = &decoded[prefix.len()..];
            let encoded = percent_encoding::utf8_percent_encode(rest, PATH_ESCAPE);
            Cow::Owned(format!("/{encoded}"))
        }
    }
}

/// Characters escaped when a decoded path is written back into a URL.
const PATH_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Go's `http.Redirect` with 301, as ServeMux answers unclean paths.
fn redirect(path: &str, query: Option<&str>) -> Response<Body> {
    let mut location = percent_encoding::utf8_percent_encode(path, PATH_ESCAPE).to_string();
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    let body = format!(
        "<a href=\"{}\">Moved Permanently</a>.\n\n",
        html_escape(&location)
    );
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// Go's `cleanPath` from net/http: `path.Clean` (collapse `//`, drop `.`, resolve `..`), keeping a
/// trailing slash.
pub fn clean_path(p: &str) -> Cow<'_, str> {
    if p.is_empty() {
        return Cow::Borrowed("/");
    }
    let needs_work = !p.starts_with('/')
        || p.contains("//")
        || p.split('/').any(|seg| seg == "." || seg == "..");
    if !needs_work {
        return Cow::Borrowed(p);
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut cleaned = String::with_capacity(p.len());
    for seg in &out {
        cleaned.push('/');
        cleaned.push_str(seg);
    }
    if cleaned.is_empty() || (p.ends_with('/') && !out.is_empty()) {
        cleaned.push('/');
    }
    Cow::Owned(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths_like_go() {
        for (input, want) in [
            ("/", "/"),
            ("/api/v1", "/api/v1"),
            ("/api/v1/", "/api/v1/"),
            ("//api/v1", "/api/v1"),
            ("/a/../b", "/b"),
            ("/a/./b/", "/a/b/"),
            ("/..", "/"),
            ("/a/b/..", "/a"),
            ("api", "/api"),
        ] {
            assert_eq!(clean_path(input), want, "{input}");
        }
    }
}
