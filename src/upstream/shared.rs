//! One HTTP/2 connection shared by every request sent through it, held by hand instead of by
//! hyper-util's pool.
//!
//! hyper-util's `legacy::Client` is a general pool: each request hashes a pool key (SipHash), checks a
//! connection out and back in under a lock, and moves its request through several layers of futures.
//! For an HTTP/2 connection, where every request goes to the same place, that work is pure overhead:
//! measured with callgrind it was about 4.8k of the 62.6k instructions of a proxied small GET
//! (bench/README.md). [`Shared`] keeps the connection's `SendRequest` and clones it per request.
//!
//! It also dials once when a burst of requests arrives before the first connection exists: hyper-util
//! cannot know before ALPN that a connection will be HTTP/2, so each of those requests dialled its own.
//!
//! When the server does not negotiate HTTP/2 (an `http://` server, `DISABLE_HTTP2`, a server without
//! ALPN), [`Shared`] hands every request to an HTTP/1.1 keep-alive pool instead: hyper-util's, which is
//! the right tool for many connections. The connection that found out is not wasted: [`Handoff`] gives
//! it to that pool as its first.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt as _;

use super::{UpstreamClient, H2_PING_INTERVAL, H2_PING_TIMEOUT, POOL_IDLE_TIMEOUT};
use crate::body::Body;
use crate::metrics::CountConnections;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The dialler [`Shared`] makes its connection with: TLS with ALPN over the egress route, counted.
pub type Connector = CountConnections<hyper_rustls::HttpsConnector<super::egress::EgressConnector>>;

/// A connection as [`Connector`] makes it.
type Io = <Connector as tower::Service<Uri>>::Response;

/// A dialler that first hands out a connection parked by [`Shared`] (one that turned out to speak
/// HTTP/1.1), then dials.
#[derive(Clone)]
pub struct Handoff {
    inner: Connector,
    parked: Arc<Mutex<Option<Io>>>,
}

impl Handoff {
    /// Dials with `inner`.
    pub fn new(inner: Connector) -> Self {
        Self {
            inner,
            parked: Arc::new(Mutex::new(None)),
        }
    }

    fn park(&self, io: Io) {
        *self.parked.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);
    }
}

impl tower::Service<Uri> for Handoff {
    type Response = Io;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Io, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        match self.parked.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(io) => Box::pin(std::future::ready(Ok(io))),
            None => self.inner.call(uri),
        }
    }
}

/// Why a request got no response from the API server.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection could not be made (TCP, TLS, egress proxy).
    #[error("client error (Connect)")]
    Connect(#[source] BoxError),
    /// The connection was made but the HTTP/2 handshake failed.
    #[error("client error (HTTP/2 handshake)")]
    Handshake(#[source] hyper::Error),
    /// The request failed on an established connection.
    #[error("client error (SendRequest)")]
    Request(#[source] hyper::Error),
    /// An error from the HTTP/1.1 pool.
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// Whether no connection to the API server could be made at all.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Pooled(e) => e.is_connect(),
            SendError::Handshake(_) | SendError::Request(_) => false,
        }
    }
}

/// One HTTP/2 connection to the API server, dialled on first use and again after it closes, or an
/// HTTP/1.1 pool when the server does not speak HTTP/2 (see the module doc).
pub struct Shared {
    connector: Connector,
    builder: http2::Builder<TokioExecutor>,
    /// Requests go here when the server chose HTTP/1.1, or when HTTP/2 is off.
    http1: UpstreamClient,
    /// `http1`'s dialler, to give it the connection that found out.
    handoff: Handoff,
    state: Mutex<State>,
    /// Held while dialling, so a burst of first requests makes one connection.
    dialling: tokio::sync::Mutex<()>,
    /// Numbers connections, so that a failed request retires the connection it failed on and not a
    /// newer one.
    next_id: AtomicU64,
}

enum State {
    /// No connection yet, or the last one closed.
    Idle,
    Ready {
        id: u64,
        sender: http2::SendRequest<Body>,
        /// When the last request was sent on it.
        used: Instant,
    },
    /// HTTP/2 is off, or the server did not negotiate it: every request uses the HTTP/1.1 pool.
    Http1,
}

enum Route {
    Http2 {
        id: u64,
        sender: http2::SendRequest<Body>,
    },
    Http1,
}

impl Shared {
    /// A shared connection dialled by `connector`; `http2: false` (or a server that does not negotiate
    /// HTTP/2) sends everything through `http1`, a pool that dials with `handoff`.
    pub fn new(connector: Connector, http1: UpstreamClient, handoff: Handoff, http2: bool) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .keep_alive_while_idle(false)
            // Large LISTs and downloads need more than HTTP/2's 64 KiB default window to run at line
            // rate.
            .adaptive_window(true);
        Self {
            connector,
            builder,
            http1,
            handoff,
            state: Mutex::new(if http2 { State::Idle } else { State::Http1 }),
            dialling: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Sends `req` (absolute URI) and returns the response head. A request the connection refused
    /// before sending anything (it had just closed) is sent once more on a new connection, as
    /// hyper-util's pool does.
    pub async fn request(&self, mut req: Request<Body>) -> Result<Response<Incoming>, SendError> {
        let mut retried = false;
        loop {
            let route = match self.route() {
                Some(route) => route,
                None => self.dial(req.uri()).await?,
            };
            let (id, mut sender) = match route {
                Route::Http2 { id, sender } => (id, sender),
                Route::Http1 => return Ok(self.http1.request(req).await?),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(back) if !retried => {
                        self.retire(id);
                        retried = true;
                        req = back;
                    }
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// The open connection, or what to use instead; `None` when a connection must be dialled.
    ///
    /// A connection unused for [`POOL_IDLE_TIMEOUT`] is not used again, as hyper-util's pool and Go's
    /// transport (`IdleConnTimeout`) would have closed it by then: a connection silently dropped by a
    /// NAT or load balancer while idle would otherwise hold the next request until the HTTP/2 ping
    /// timed out. Dropping kproxy's handle closes it once the streams still on it end.
    fn route(&self) -> Option<Route> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            State::Ready { id, sender, used } if !sender.is_closed() => {
                let now = Instant::now();
                if now.duration_since(*used) > POOL_IDLE_TIMEOUT {
                    *state = State::Idle;
                    return None;
                }
                *used = now;
                Some(Route::Http2 {
                    id: *id,
                    sender: sender.clone(),
                })
            }
            State::Http1 => Some(Route::Http1),
            State::Idle | State::Ready { .. } => None,
        }
    }

    /// Forgets connection `id`, if it is still the current one.
    fn retire(&self, id: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(&*state, State::Ready { id: current, .. } if *current == id) {
            *state = State::Idle;
        }
    }

    /// Dials the API server (one dial at a time; a request that waited uses what the dial made).
    async fn dial(&self, uri: &Uri) -> Result<Route, SendError> {
        let _one = self.dialling.lock().await;
        if let Some(route) = self.route() {
            return Ok(route);
        }
        if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
            // No TLS, no ALPN: hyper speaks HTTP/1.1 to `http://` servers, as Go does.
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::Http1;
            return Ok(Route::Http1);
        }
        let io = self
            .connector
            .clone()
            .oneshot(uri.clone())
            .await
            .map_err(SendError::Connect)?;
        if !io.connected().is_negotiated_h2() {
            // The server chose HTTP/1.1. The HTTP/1.1 pool gets this connection as its first, and the
            // question is not asked again until the TLS material (and with it this value) is rebuilt.
            tracing::debug!("the API server did not negotiate HTTP/2: using HTTP/1.1 connections");
            self.handoff.park(io);
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::Http1;
            return Ok(Route::Http1);
        }
        let (sender, connection) = self
            .builder
            .handshake(io)
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %crate::error::chain(&e), "upstream HTTP/2 connection ended");
            }
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::Ready {
            id,
            sender: sender.clone(),
            used: Instant::now(),
        };
        Ok(Route::Http2 { id, sender })
    }
}
