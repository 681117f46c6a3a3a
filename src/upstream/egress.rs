//! How connections to the API server leave kproxy: directly, through an HTTP or HTTPS proxy (a CONNECT
//! tunnel), or through a SOCKS5 proxy.
//!
//! The route is chosen once, at startup, because kproxy talks to one server: the cluster's `proxy-url`
//! when it is set (always used, even for loopback servers), else Go's `http.ProxyFromEnvironment` rules,
//! which client-go uses when `proxy-url` is empty (`transport/cache.go`): `HTTPS_PROXY` for `https://`
//! servers, `HTTP_PROXY` for `http://` servers (uppercase first, the first non-empty value wins),
//! `NO_PROXY`, and `localhost` / loopback servers are never proxied. Unlike curl (and hyper-util's
//! `Matcher`), Go ignores `ALL_PROXY`, gives a leading-dot `NO_PROXY` entry "subdomains only" meaning and
//! honours ports in `NO_PROXY` entries; this module follows Go (`golang.org/x/net/http/httpproxy`).
//!
//! The tunnels themselves are hyper-util's `Tunnel` (HTTP CONNECT) and `SocksV5` connectors. Every
//! target, `http://` included, is reached through CONNECT: the same path client-go's upgrade dialer
//! takes, so ordinary requests and upgrades behave alike (Go's `net/http` would forward plain-HTTP
//! requests in absolute form instead; see docs/credentials.md).
//!
//! As in Go's transport, the TLS session to an `https://` proxy uses the cluster's TLS settings (its CA
//! as the only root when one is configured) with the proxy's host name as the server name.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use crate::base::env::Env;
use crate::base::host::split_host_port;
use crate::wire::headers::basic_auth;

use crate::base::error::BoxError;

/// The proxy variables of the environment, read once (Go's `ProxyFromEnvironment` caches them too).
#[derive(Clone, Default)]
pub struct ProxyEnv {
    http: Option<String>,
    https: Option<String>,
    no_proxy: String,
    /// `REQUEST_METHOD` is set: a CGI process, where `HTTP_PROXY` may come from a request header
    /// (golang.org/s/cgihttpproxy), so Go refuses to use it.
    cgi: bool,
}

impl fmt::Debug for ProxyEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Proxy URLs may carry a password: show only whether each is set.
        f.debug_struct("ProxyEnv")
            .field("http", &self.http.is_some())
            .field("https", &self.https.is_some())
            .field("no_proxy", &self.no_proxy)
            .field("cgi", &self.cgi)
            .finish()
    }
}

impl ProxyEnv {
    /// Reads `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (or their lowercase forms) and `REQUEST_METHOD`.
    pub fn from_env(env: &dyn Env) -> Self {
        let any = |names: [&str; 2]| names.iter().find_map(|n| env.non_empty(n));
        Self {
            http: any(["HTTP_PROXY", "http_proxy"]),
            https: any(["HTTPS_PROXY", "https_proxy"]),
            no_proxy: any(["NO_PROXY", "no_proxy"]).unwrap_or_default(),
            cgi: env.non_empty("REQUEST_METHOD").is_some(),
        }
    }

    /// Go's `proxyForURL`: the proxy URL for `target`, if any.
    fn proxy_for(&self, target: &Uri) -> Result<Option<&str>, EgressError> {
        let proxy = match target.scheme_str() {
            Some("https") => self.https.as_deref(),
            Some("http") => {
                if self.http.is_some() && self.cgi {
                    return Err(EgressError(
                        "refusing to use HTTP_PROXY value in CGI environment; see golang.org/s/cgihttpproxy"
                            .to_owned(),
                    ));
                }
                self.http.as_deref()
            }
            _ => None,
        };
        let Some(proxy) = proxy else { return Ok(None) };
        let host = target.host().unwrap_or_default();
        let port = target
            .port_u16()
            .unwrap_or(if target.scheme() == Some(&Scheme::HTTPS) {
                443
            } else {
                80
            });
        Ok(use_proxy(&self.no_proxy, host, port).then_some(proxy))
    }
}

/// Go's `useProxy`: false for `localhost`, loopback addresses and `NO_PROXY` matches.
fn use_proxy(no_proxy: &str, host: &str, port: u16) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return true;
    }
    if host == "localhost" {
        return false;
    }
    let ip = host.parse::<IpAddr>().ok();
    if ip.is_some_and(|ip| ip.is_loopback()) {
        return false;
    }
    let port = port.to_string();
    for entry in no_proxy.split(',') {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            continue;
        }
        if entry == "*" {
            return false;
        }
        if let Some((net, bits)) = parse_cidr(&entry) {
            if ip.is_some_and(|ip| cidr_contains(net, bits, ip)) {
                return false;
            }
            continue;
        }
        let (phost, pport) = split_host_port(&entry);
        if phost.is_empty() {
            continue;
        }
        let port_ok = pport.is_none_or(|p| p == port);
        if let Ok(pip) = phost.parse::<IpAddr>() {
            if ip == Some(pip) && port_ok {
                return false;
            }
            continue;
        }
        if ip.is_some() {
            // Domain entries never match IP literals.
            continue;
        }
        // "foo.com" matches foo.com and its subdomains; ".foo.com" and "*.foo.com" only subdomains.
        let phost = phost.strip_prefix('*').unwrap_or(phost);
        let (suffix, match_host) = match phost.strip_prefix('.') {
            Some(_) => (phost.to_owned(), false),
            None => (format!(".{phost}"), true),
        };
        if (host.ends_with(&suffix) || (match_host && host == suffix[1..])) && port_ok {
            return false;
        }
    }
    true
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((addr, bits))
}

fn cidr_contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    fn masked(v: u128, bits: u8, width: u8) -> u128 {
        if bits == 0 {
            0
        } else {
            v >> (width - bits)
        }
    }
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            masked(u32::from(n) as u128, bits, 32) == masked(u32::from(i) as u128, bits, 32)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            masked(u128::from(n), bits, 128) == masked(u128::from(i), bits, 128)
        }
        _ => false,
    }
}

/// A proxy URL that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EgressError(String);

/// Where upstream connections go first.
#[derive(Clone, Default)]
pub enum Route {
    /// Straight to the API server.
    #[default]
    Direct,
    /// A CONNECT tunnel through an `http://` or `https://` proxy.
    Connect {
        /// `scheme://host:port/` of the proxy, without credentials.
        proxy: Uri,
        /// `Proxy-Authorization` from the URL's user information.
        auth: Option<HeaderValue>,
    },
    /// A SOCKS5 proxy; host names are resolved by the proxy, as Go's dialer does.
    Socks5 {
        /// `socks5://host:port/`, without credentials.
        proxy: Uri,
        /// User name and password from the URL.
        auth: Option<(String, String)>,
    },
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.describe() {
            None => f.write_str("Direct"),
            Some(p) => write!(f, "Proxy({p})"),
        }
    }
}

impl Route {
    /// Chooses the route to `target`: `proxy_url` (the cluster's `proxy-url`) when given, else the
    /// environment.
    pub fn select(
        proxy_url: Option<&str>,
        env: &ProxyEnv,
        target: &Uri,
    ) -> Result<Route, EgressError> {
        match proxy_url.filter(|p| !p.is_empty()) {
            Some(url) => Route::parse(url, "proxy-url"),
            None => match env.proxy_for(target)? {
                Some(url) => Route::parse(url, "proxy environment variable"),
                None => Ok(Route::Direct),
            },
        }
    }

    /// Parses a proxy URL. A value without a scheme is `http://` (Go's `parseProxy`).
    fn parse(raw: &str, what: &str) -> Result<Route, EgressError> {
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        // The raw value may hold a password: error messages quote only what is safe.
        let bad = |why: &str| EgressError(format!("{what} is not a usable proxy URL: {why}"));
        let uri: Uri = with_scheme.parse().map_err(|_| bad("cannot parse it"))?;
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
        let (userinfo, host_port) = match authority.as_str().rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority.as_str()),
        };
        let host_port: Authority = host_port.parse().map_err(|_| bad("bad host"))?;
        if host_port.host().is_empty() {
            return Err(bad("it has no host"));
        }
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            "socks5" | "socks5h" => 1080,
            other => {
                return Err(bad(&format!(
                    "scheme {other:?} is not supported (use http, https or socks5)"
                )))
            }
        };
        let port = host_port.port_u16().unwrap_or(default_port);
        let dial_scheme = if scheme == "https" { "https" } else { "http" };
        let proxy: Uri = format!("{dial_scheme}://{}:{port}/", host_port.host())
            .parse()
            .map_err(|_| bad("bad host"))?;
        let creds = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(user), dec(pass))
        });
        Ok(if scheme.starts_with("socks5") {
            Route::Socks5 { proxy, auth: creds }
        } else {
            let auth = creds
                .map(|(u, p)| basic_auth(&u, &p).ok_or_else(|| bad("bad credentials")))
                .transpose()?;
            Route::Connect { proxy, auth }
        })
    }

    /// `scheme://host:port` of the proxy for messages (never with credentials), `None` when direct.
    pub fn describe(&self) -> Option<String> {
        match self {
            Route::Direct => None,
            Route::Connect { proxy, .. } => {
                Some(proxy.to_string().trim_end_matches('/').to_owned())
            }
            Route::Socks5 { proxy, .. } => Some(format!(
                "socks5://{}",
                proxy.authority().map(|a| a.as_str()).unwrap_or_default()
            )),
        }
    }
}

/// A connector that dials the API server along a [`Route`]; TLS to the server is layered on top by
/// hyper-rustls.
#[derive(Clone)]
pub struct EgressConnector {
    route: Arc<Route>,
    tcp: HttpConnector,
    /// TLS to an `https://` proxy (HTTP/1.1 only: CONNECT is an HTTP/1.1 method here).
    proxy_tls: Option<HttpsConnector<HttpConnector>>,
}

impl EgressConnector {
    /// Dials along `route` with `tcp`; `proxy_tls` is needed only for `https://` proxies.
    pub fn new(
        route: Arc<Route>,
        tcp: HttpConnector,
        proxy_tls: Option<HttpsConnector<HttpConnector>>,
    ) -> Self {
        Self {
            route,
            tcp,
            proxy_tls,
        }
    }
}

/// `dst` with its default port written out: the tunnel connectors otherwise assume 443.
fn with_port(dst: &Uri) -> Uri {
    if dst.port().is_some() {
        return dst.clone();
    }
    let port = if dst.scheme() == Some(&Scheme::HTTP) {
        80
    } else {
        443
    };
    let host = dst.host().unwrap_or_default();
    format!("{}://{host}:{port}/", dst.scheme_str().unwrap_or("https"))
        .parse()
        .unwrap_or_else(|_| dst.clone())
}

/// A tunnel or SOCKS error with the proxy named.
#[derive(Debug)]
struct ViaProxy {
    proxy: String,
    source: BoxError,
}

impl fmt::Display for ViaProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "via proxy {}: {}", self.proxy, self.source)
    }
}

impl std::error::Error for ViaProxy {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl Service<Uri> for EgressConnector {
    type Response = EgressStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<EgressStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // HttpConnector is always ready; the tunnel connectors are built per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let route = self.route.clone();
        let mut tcp = self.tcp.clone();
        let proxy_tls = self.proxy_tls.clone();
        Box::pin(async move {
            let via = |e: BoxError| -> BoxError {
                Box::new(ViaProxy {
                    proxy: route.describe().unwrap_or_default(),
                    source: e,
                })
            };
            match &*route {
                Route::Direct => Ok(EgressStream::Tcp(tcp.call(dst).await?)),
                Route::Connect { proxy, auth } if proxy.scheme() == Some(&Scheme::HTTPS) => {
                    let tls = proxy_tls.ok_or_else(|| via("no TLS configuration".into()))?;
                    let mut tunnel = Tunnel::new(proxy.clone(), tls);
                    if let Some(a) = auth {
                        tunnel = tunnel.with_auth(a.clone());
                    }
                    let io = tunnel
                        .call(with_port(&dst))
                        .await
                        .map_err(|e| via(e.into()))?;
                    Ok(EgressStream::Tls(Box::new(io)))
                }
                Route::Connect { proxy, auth } => {
                    let mut tunnel = Tunnel::new(proxy.clone(), tcp);
                    if let Some(a) = auth {
                        tunnel = tunnel.with_auth(a.clone());
                    }
                    let io = tunnel
                        .call(with_port(&dst))
                        .await
                        .map_err(|e| via(e.into()))?;
                    Ok(EgressStream::Tcp(io))
                }
                Route::Socks5 { proxy, auth } => {
                    let mut socks = SocksV5::new(proxy.clone(), tcp);
                    if let Some((u, p)) = auth {
                        socks = socks.with_auth(u.clone(), p.clone());
                    }
                    let io = socks
                        .call(with_port(&dst))
                        .await
                        .map_err(|e| via(e.to_string().into()))?;
                    Ok(EgressStream::Tcp(io))
                }
            }
        })
    }
}

/// A connection made by [`EgressConnector`].
pub enum EgressStream {
    /// TCP, direct or tunnelled through a plain-TCP proxy connection.
    Tcp(TokioIo<TcpStream>),
    /// Tunnelled through a TLS connection to an `https://` proxy.
    Tls(Box<MaybeHttpsStream<TokioIo<TcpStream>>>),
}

impl Connection for EgressStream {
    fn connected(&self) -> Connected {
        match self {
            EgressStream::Tcp(s) => s.connected(),
            // The TLS session to the proxy says nothing about the protocol spoken to the API server.
            EgressStream::Tls(_) => Connected::new(),
        }
    }
}

impl Read for EgressStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EgressStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            EgressStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl Write for EgressStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            EgressStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            EgressStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EgressStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            EgressStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            EgressStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            EgressStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            EgressStream::Tcp(s) => s.is_write_vectored(),
            EgressStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            EgressStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            EgressStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::env::MapEnv;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        ProxyEnv::from_env(&MapEnv::new(vars.iter().copied()))
    }

    fn route(env: &ProxyEnv, target: &str) -> Option<String> {
        Route::select(None, env, &target.parse().unwrap())
            .unwrap()
            .describe()
    }

    #[test]
    fn https_proxy_applies_to_https_servers_only() {
        let e = env(&[("HTTPS_PROXY", "proxy.corp:3128")]);
        assert_eq!(
            route(&e, "https://api.example.com:6443").as_deref(),
            Some("http://proxy.corp:3128")
        );
        assert_eq!(route(&e, "http://api.example.com:8080"), None);
        let e = env(&[("http_proxy", "http://p:1"), ("ALL_PROXY", "http://all:1")]);
        assert_eq!(route(&e, "http://a.example").as_deref(), Some("http://p:1"));
        assert_eq!(
            route(&e, "https://a.example"),
            None,
            "ALL_PROXY is curl's, not Go's"
        );
    }

    #[test]
    fn loopback_is_never_proxied_from_the_environment() {
        let e = env(&[("HTTPS_PROXY", "http://p:1")]);
        for t in [
            "https://127.0.0.1:6443",
            "https://127.9.9.9",
            "https://[::1]:6443",
            "https://localhost:6443",
        ] {
            assert_eq!(route(&e, t), None, "{t}");
        }
        // An explicit proxy-url is always used.
        let r = Route::select(
            Some("http://p:1"),
            &e,
            &"https://127.0.0.1".parse().unwrap(),
        );
        assert!(r.unwrap().describe().is_some());
    }

    #[test]
    fn no_proxy_follows_go() {
        let np = "foo.com, .y.com, 10.0.0.0/8, 192.168.1.1, bar.org:8443, [2001:db8::1]:443";
        assert!(!use_proxy(np, "foo.com", 443));
        assert!(!use_proxy(np, "a.foo.com", 443));
        assert!(use_proxy(np, "notfoo.com", 443));
        assert!(!use_proxy(np, "x.y.com", 443));
        assert!(
            use_proxy(np, "y.com", 443),
            "a leading dot means subdomains only"
        );
        assert!(!use_proxy(np, "10.1.2.3", 443));
        assert!(use_proxy(np, "11.1.2.3", 443));
        assert!(!use_proxy(np, "192.168.1.1", 6443));
        assert!(!use_proxy(np, "bar.org", 8443));
        assert!(use_proxy(np, "bar.org", 443));
        assert!(!use_proxy(np, "[2001:db8::1]", 443));
        assert!(!use_proxy("*", "anything", 1));
        assert!(!use_proxy("*.z.com", "a.z.com", 1));
        assert!(use_proxy("", "a.z.com", 1));
    }

    #[test]
    fn cgi_refuses_http_proxy() {
        let e = env(&[("HTTP_PROXY", "http://p:1"), ("REQUEST_METHOD", "GET")]);
        assert!(Route::select(None, &e, &"http://a.example".parse().unwrap()).is_err());
    }

    #[test]
    fn proxy_urls_parse_with_credentials_kept_out_of_messages() {
        let r = Route::parse("http://us%40er:p%3Ass@proxy:3128", "proxy-url").unwrap();
        match &r {
            Route::Connect { auth: Some(a), .. } => {
                use base64::Engine as _;
                let expected = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
                assert_eq!(a.to_str().unwrap(), format!("Basic {expected}"));
                assert!(a.is_sensitive());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.describe().as_deref(), Some("http://proxy:3128"));
        assert!(!format!("{r:?}").contains("p:ss"));
        let r = Route::parse("socks5://u:pw@s", "proxy-url").unwrap();
        assert_eq!(r.describe().as_deref(), Some("socks5://s:1080"));
        assert!(matches!(r, Route::Socks5 { auth: Some(_), .. }));
        let r = Route::parse("https://tls-proxy", "proxy-url").unwrap();
        assert_eq!(r.describe().as_deref(), Some("https://tls-proxy:443"));
        let err = Route::parse("ftp://u:secret@p", "proxy-url").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
