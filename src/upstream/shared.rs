//! One HTTP/2 connection shared by every request sent through it, driven with the `h2` crate
//! directly instead of through hyper-util's pool and hyper's HTTP/2 client.
//!
//! Measured with callgrind on the benchmark's small GET (bench/README.md), each layer cost:
//! - hyper-util's `legacy::Client`, a general pool: a SipHash of the pool key, checkout and check-in
//!   under a lock, several layers of moved futures: about 4.8k of 62.6k instructions per request;
//! - hyper's HTTP/2 client: a channel to a dispatch task, a task spawned per request to await the
//!   response, a oneshot back: about 4k more, and two extra task wake-ups per request.
//!
//! [`Shared`] keeps the connection's `h2::client::SendRequest` and starts each stream from the
//! request's own task; the connection task only moves frames. It also dials once when a burst of
//! requests arrives before the first connection exists (hyper-util cannot know before ALPN that a
//! connection will be HTTP/2, so each of those requests dialled its own).
//!
//! What hyper's client did and this module does too: flow control (received data is released as the
//! client reads it, so a slow client holds the server back instead of kproxy buffering), request
//! bodies streamed with backpressure, trailers both ways, `content-length` from an exact body size (by
//! Go's rule, which differs from hyper's for empty bodies), keep-alive pings ([`H2_PING_INTERVAL`],
//! [`H2_PING_TIMEOUT`], as client-go's HTTP/2 health check).
//! The windows are fixed, as Go's are ([`STREAM_WINDOW`], [`CONNECTION_WINDOW`]), where hyper grew
//! them from 64 KiB by measuring; large reads mostly go over HTTP/1.1 anyway
//! ([`super::BULK_CONNECTIONS`]).
//!
//! When the server does not negotiate HTTP/2 (an `http://` server, `DISABLE_HTTP2`, a server without
//! ALPN), [`Shared`] hands every request to an HTTP/1.1 keep-alive pool instead: hyper-util's, which is
//! the right tool for many connections. The connection that found out is not wasted: [`Handoff`] gives
//! it to that pool as its first.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::ServiceExt as _;

use crate::base::error::BoxError;
use crate::base::single_flight::{Begin, SingleFlight};
use crate::upstream::dial::{
    bounded_dial, Connector, Liveness, POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST,
};
use crate::wire::body::Body;
use crate::wire::received::{H2Body, Received, Stalled, Watched};
use crate::wire::replay::Replay;

/// HTTP/2 receive window per stream: what one response may have in flight unread. hyper's fixed
/// default; Go's is 4 MiB. A client that stops reading holds at most this much in kproxy per stream.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// HTTP/2 receive window per connection, shared by its streams: Go's 1 GiB. It is credit, not memory:
/// what kproxy holds is bounded by [`STREAM_WINDOW`] per stream. A connection window of only a few
/// stream windows (hyper's 5 MiB, or its adaptive window, which grows both to the same size) lets a few
/// clients that stop reading large responses stall every other request on the connection
/// (`tests/streaming.rs`).
pub const CONNECTION_WINDOW: u32 = 1 << 30;
/// Largest response header block accepted (Go: 10 MB; hyper: 16 KiB).
pub const MAX_HEADER_LIST_SIZE: u32 = 1024 * 1024;
/// Bytes of request body queued per stream before the sender waits (hyper's default).
pub const MAX_SEND_BUFFER_SIZE: usize = 1024 * 1024;

/// The HTTP/1.1 keep-alive pool (bulk reads, and servers without HTTP/2).
pub type UpstreamClient = Client<Handoff, Body>;

/// An HTTP/1.1 keep-alive pool dialling with `connector` (its connections never speak HTTP/2, so
/// none of hyper-util's HTTP/2 settings apply).
fn pooled_client(connector: Handoff) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(connector)
}

/// A connection as [`Connector`] makes it.
type Io = <Connector as tower::Service<Uri>>::Response;

/// A dialler that first hands out a connection parked by [`Shared`] (one that turned out to speak
/// HTTP/1.1), then dials.
#[derive(Clone)]
pub struct Handoff {
    inner: Connector,
    dial_timeout: Duration,
    parked: Arc<Mutex<Option<Io>>>,
}

impl Handoff {
    /// Dials with `inner`, each dial bounded by `dial_timeout`.
    fn new(inner: Connector, dial_timeout: Duration) -> Self {
        Self {
            inner,
            dial_timeout,
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
            None => Box::pin(bounded_dial(self.dial_timeout, self.inner.call(uri))),
        }
    }
}

/// Why a request got no response from the API server.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection could not be made (TCP, TLS, egress proxy).
    #[error("client error (Connect)")]
    Connect(#[source] BoxError),
    /// The HTTP/2 handshake or the request's stream failed.
    #[error("client error (HTTP/2)")]
    Http2(#[source] h2::Error),
    /// An upgrade tunnel's connection could not be made.
    #[error(transparent)]
    Tunnel(BoxError),
    /// An error from the HTTP/1.1 pool.
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
    /// The connection stopped delivering before the response head came (see [`Liveness`]).
    #[error(transparent)]
    Stalled(#[from] Stalled),
}

impl SendError {
    /// Whether the server refused the request's stream unprocessed (see [`Shared::request`]).
    pub fn is_refused(&self) -> bool {
        matches!(self, SendError::Http2(e) if unprocessed(e))
    }

    /// Whether no connection to the API server could be made at all.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) | SendError::Tunnel(_) => true,
            SendError::Pooled(e) => e.is_connect(),
            SendError::Http2(_) | SendError::Stalled(_) => false,
        }
    }
}

/// One HTTP/2 connection to the API server, dialled on first use and again after it closes, or an
/// HTTP/1.1 pool when the server does not speak HTTP/2 (see the module doc).
pub struct Shared {
    connector: Connector,
    /// The bound on each dial ([`bounded_dial`]).
    dial_timeout: Duration,
    /// How a dead connection is noticed: HTTP/2 pings, and for HTTP/1.1 requests the stall bound.
    liveness: Liveness,
    /// Whether this carries long-running requests (a lane): then HTTP/1.1 requests are not failed for
    /// silence, which is how a quiet watch looks.
    long_running: bool,
    builder: h2::client::Builder,
    /// Requests go here when the server chose HTTP/1.1, or when HTTP/2 is off.
    http1: UpstreamClient,
    /// `http1`'s dialler, to give it the connection that found out.
    handoff: Handoff,
    state: Mutex<State>,
    /// One dial at a time, so a burst of first requests makes one connection; the requests that
    /// waited on a failed dial share its failure.
    dialling: SingleFlight<DialFailed>,
    /// Numbers connections, so that a failed request retires the connection it failed on and not a
    /// newer one.
    next_id: AtomicU64,
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS` as last seen with a response (0: not yet).
    stream_limit: AtomicUsize,
}

enum State {
    /// No connection yet, or the last one closed.
    Idle,
    Ready {
        id: u64,
        sender: h2::client::SendRequest<Bytes>,
        /// Set when the connection task ends.
        closed: Arc<AtomicBool>,
        /// Set when the connection was closed because a ping went unanswered.
        stalled: Arc<AtomicBool>,
        /// When the last request was sent on it.
        used: Instant,
    },
    /// HTTP/2 is off, or the server did not negotiate it: every request uses the HTTP/1.1 pool.
    Http1,
}

enum Route {
    Http2 {
        id: u64,
        sender: h2::client::SendRequest<Bytes>,
        stalled: Arc<AtomicBool>,
    },
    Http1,
}

impl Shared {
    /// A shared connection dialled by `connector`. With `http2: false`, or when the server does not
    /// negotiate HTTP/2, requests go through an HTTP/1.1 pool that dials with `http1`.
    pub fn new(
        connector: Connector,
        http1: Connector,
        http2: bool,
        dial_timeout: Duration,
        liveness: Liveness,
        long_running: bool,
    ) -> Self {
        let handoff = Handoff::new(http1, dial_timeout);
        let http1 = pooled_client(handoff.clone());
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
            // Until the server's SETTINGS arrive, at most 100 streams (hyper's choice; RFC 9113 §6.5.2
            // recommends servers allow at least that many).
            .initial_max_send_streams(100)
            .enable_push(false);
        Self {
            connector,
            dial_timeout,
            liveness,
            long_running,
            builder,
            http1,
            handoff,
            state: Mutex::new(if http2 { State::Idle } else { State::Http1 }),
            dialling: SingleFlight::default(),
            next_id: AtomicU64::new(0),
            stream_limit: AtomicUsize::new(0),
        }
    }

    /// Sends `req` (absolute URI) and returns the response head.
    ///
    /// Two failures are retried, because the server has not seen the request:
    /// - the connection was closing when the request was handed to it: sent again (once) on a new
    ///   connection, as hyper-util's pool does;
    /// - the server refused the stream unprocessed (`REFUSED_STREAM`, or a `GOAWAY` whose last stream
    ///   is below it: RFC 9113 §8.7): a request without a body, whatever its method, is sent again, up
    ///   to [`UNPROCESSED_RETRIES`] times, each on a new connection after a `GOAWAY`, as Go's transport
    ///   (and so kubectl proxy) does. A request with a body is not: kproxy streams bodies and keeps
    ///   none, and Go cannot rewind a proxied body either. An API server with `--goaway-chance` sends such GOAWAYs to
    ///   rebalance clients, and a request that raced one would otherwise fail with a 502. The copy of
    ///   the head kept for this costs a header map clone per such request.
    pub async fn request(&self, req: Request<Body>) -> Result<Response<Received>, SendError> {
        let template = req.body().is_end_stream().then(|| Replay::of(&req));
        let mut used = None;
        let answer = self.request_once(req, &mut used).await;
        match template {
            Some(template) if matches!(&answer, Err(SendError::Http2(e)) if unprocessed(e)) => {
                // Boxed: a second attempt's future and the back-off timer, kept out of every request's
                // future (which is moved, whole, through each layer above) for what seldom happens.
                Box::pin(self.resend(answer, template, used)).await
            }
            _ => answer,
        }
    }

    /// Sends `template` again after `answer`, a refusal of the request unprocessed, on connection `used`.
    async fn resend(
        &self,
        mut answer: Result<Response<Received>, SendError>,
        template: Replay,
        mut used: Option<u64>,
    ) -> Result<Response<Received>, SendError> {
        for retry in 0..UNPROCESSED_RETRIES {
            let e = match &answer {
                Err(SendError::Http2(e)) if unprocessed(e) => e,
                _ => break,
            };
            if e.is_go_away() {
                // The connection is draining: the next request must not be handed to it.
                if let Some(id) = used {
                    self.retire(id);
                }
            }
            tracing::debug!(error = %e, "the API server refused the stream unprocessed: sending the request again");
            if retry > 0 {
                // As Go's transport: the first retry at once, then backing off.
                tokio::time::sleep(Duration::from_millis(10 << retry)).await;
            }
            answer = self.request_once(template.request(), &mut used).await;
        }
        answer
    }

    /// One attempt; `used` is set to the HTTP/2 connection it went to.
    async fn request_once(
        &self,
        req: Request<Body>,
        used: &mut Option<u64>,
    ) -> Result<Response<Received>, SendError> {
        let mut retried = false;
        let sender = loop {
            let route = match self.route() {
                Some(route) => route,
                // Boxed: once per connection, and the dial's future (TLS connector, timeout, 3.7 KB)
                // would otherwise be carried, and copied, by every request's future.
                None => Box::pin(self.dial(req.uri())).await?,
            };
            let (id, sender, stalled) = match route {
                Route::Http2 {
                    id,
                    sender,
                    stalled,
                } => (id, sender, stalled),
                Route::Http1 => {
                    let stall = (!self.long_running).then(|| self.liveness.stall());
                    return http1_request(&self.http1, req, stall).await;
                }
            };
            match sender.ready().await {
                Ok(sender) => {
                    *used = Some(id);
                    break (sender, stalled);
                }
                Err(_) if !retried => {
                    self.retire(id);
                    retried = true;
                }
                Err(e) => return Err(SendError::Http2(e)),
            }
        };
        let (mut sender, stalled) = sender;
        let resp = send(&mut sender, req).await.map_err(|e| {
            // The connection was closed for an unanswered ping: say so, rather than "broken pipe".
            if stalled.load(Ordering::Acquire) {
                SendError::Stalled(Stalled(self.liveness.stall()))
            } else {
                e
            }
        })?;
        // A response means the server's SETTINGS, its first frame, have been applied, so the limit
        // read now is the server's (before, it may still be the initial 100).
        let limit = sender.current_max_send_streams().max(1);
        if self.stream_limit.load(Ordering::Relaxed) != limit {
            self.stream_limit.store(limit, Ordering::Relaxed);
        }
        Ok(resp)
    }

    /// The HTTP/1.1 pool (bulk reads use it too).
    pub fn http1(&self) -> &UpstreamClient {
        &self.http1
    }

    /// How many concurrent streams the server allows on this connection, once a response has shown
    /// it (`usize::MAX` when the server sets no limit); `None` before that, or over HTTP/1.1.
    pub fn stream_limit(&self) -> Option<usize> {
        match self.stream_limit.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
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
            State::Ready {
                id,
                sender,
                closed,
                stalled,
                used,
            } if !closed.load(Ordering::Acquire) => {
                let now = Instant::now();
                if now.duration_since(*used) > POOL_IDLE_TIMEOUT {
                    *state = State::Idle;
                    return None;
                }
                *used = now;
                Some(Route::Http2 {
                    id: *id,
                    sender: sender.clone(),
                    stalled: stalled.clone(),
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

    /// Dials the API server, one dial at a time. A request that waited for a dial gets what it made: the
    /// connection, or its failure. Go's transport shares an in-flight dial's outcome the same way;
    /// dialling again in turn instead would keep the Nth request waiting on a hung server for N bounds.
    async fn dial(&self, uri: &Uri) -> Result<Route, SendError> {
        let ticket = self.dialling.ticket();
        let flight = match self.dialling.begin(ticket, || self.route()).await {
            Begin::Cached(route) => return Ok(route),
            Begin::Failed(failed) => return Err(SendError::Connect(Box::new(failed))),
            Begin::Refresh(flight) => flight,
        };
        match self.connect(uri).await {
            Err(SendError::Connect(e)) => {
                let failed = DialFailed(Arc::new(e));
                flight.finish(Some(failed.clone()));
                Err(SendError::Connect(Box::new(failed)))
            }
            other => {
                flight.finish(None);
                other
            }
        }
    }

    /// Makes the connection (TCP, TLS, the HTTP/2 handshake) and records it as the current one.
    async fn connect(&self, uri: &Uri) -> Result<Route, SendError> {
        if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
            // No TLS, no ALPN: hyper speaks HTTP/1.1 to `http://` servers, as Go does.
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::Http1;
            return Ok(Route::Http1);
        }
        let io = bounded_dial(
            self.dial_timeout,
            self.connector.clone().oneshot(uri.clone()),
        )
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
        let (sender, mut connection) = self
            .builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Http2)?;
        let closed = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let pings = connection.ping_pong();
        tokio::spawn(drive(
            connection,
            pings,
            closed.clone(),
            stalled.clone(),
            self.liveness,
        ));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::Ready {
            id,
            sender: sender.clone(),
            closed,
            stalled: stalled.clone(),
            used: Instant::now(),
        };
        Ok(Route::Http2 {
            id,
            sender,
            stalled,
        })
    }
}

/// A dial's failure, shared by the requests that waited for that dial. It reads as the original (its
/// message, and the original as its source, so TLS causes are still found and named).
#[derive(Debug, Clone)]
struct DialFailed(Arc<BoxError>);

impl std::fmt::Display for DialFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DialFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

/// How many times a refused, unprocessed request is sent again: at once, then after 20, 40, 80 and
/// 160 ms (Go's transport: 6 times, backing off from 1 s; a refusal by GOAWAY is answered by the next
/// connection at once, so kproxy starts sooner).
const UNPROCESSED_RETRIES: u32 = 5;

/// Whether the server refused a stream without processing it (RFC 9113 §8.7): reset with
/// `REFUSED_STREAM`, or above the last stream of the server's `GOAWAY`.
fn unprocessed(e: &h2::Error) -> bool {
    e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// Starts `req`'s stream on a ready connection and waits for the response head. A request body is
/// streamed by a task of its own, so the response can arrive (and be relayed) before the body ends.
async fn send(
    sender: &mut h2::client::SendRequest<Bytes>,
    req: Request<Body>,
) -> Result<Response<Received>, SendError> {
    let (parts, body) = req.into_parts();
    let mut head = Request::from_parts(parts, ());
    let end = body.is_end_stream();
    if let Some(len) = body.size_hint().exact() {
        // Go's rule (`shouldSendReqContentLength`), so kubectl proxy and kproxy send the same: a length
        // for any body, and `0` for an empty POST, PUT or PATCH only.
        let sends_empty = matches!(
            *head.method(),
            http::Method::POST | http::Method::PUT | http::Method::PATCH
        );
        if len > 0 || sends_empty {
            head.headers_mut()
                .entry(http::header::CONTENT_LENGTH)
                .or_insert_with(|| http::HeaderValue::from(len));
        }
    }
    let (response, stream) = sender.send_request(head, end).map_err(SendError::Http2)?;
    if !end {
        tokio::spawn(pipe(body, stream));
    }
    let (parts, recv) = response.await.map_err(SendError::Http2)?.into_parts();
    let body = H2Body::new(recv, &parts.headers);
    Ok(Response::from_parts(parts, Received::Http2(body)))
}

/// Sends `req` over the HTTP/1.1 pool. With `stall` (requests other than long-running ones), a
/// request without a body that receives no response head within `stall`, or a response body that then
/// receives nothing for `stall`, fails: the connection has stopped delivering ([`Liveness`]), and
/// dropping the request closes it. Requests with a body are not bounded before their head (a slow
/// upload is not a dead connection); their response body is.
pub(crate) async fn http1_request(
    client: &UpstreamClient,
    req: Request<Body>,
    stall: Option<Duration>,
) -> Result<Response<Received>, SendError> {
    let Some(stall) = stall else {
        return Ok(client.request(req).await?.map(Received::Hyper));
    };
    let resp = if req.body().is_end_stream() {
        tokio::time::timeout(stall, client.request(req))
            .await
            .map_err(|_| Stalled(stall))??
    } else {
        client.request(req).await?
    };
    Ok(resp.map(|body| Received::Watched(Watched::new(body, stall))))
}

/// Copies a request body into its stream, sending each chunk as the peer's window allows.
async fn pipe(mut body: Body, mut stream: h2::SendStream<Bytes>) {
    use http_body_util::BodyExt as _;
    loop {
        // Stop early when the server resets the stream (it answered without reading the body).
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body failed: resetting the upstream stream");
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    while !data.is_empty() {
                        stream.reserve_capacity(data.len());
                        let granted =
                            match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                                Some(Ok(n)) => n,
                                // The stream was reset or the connection closed.
                                _ => return,
                            };
                        let chunk = data.split_to(granted.min(data.len()));
                        if stream.send_data(chunk, false).is_err() {
                            return;
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                        return;
                    }
                }
            },
        }
    }
}

/// Runs an HTTP/2 connection until it ends, pinging the server every `ping_interval` and closing
/// the connection when a pong does not come within `ping_timeout` (client-go's health check: a
/// connection to a vanished server fails its requests instead of hanging them; see [`Liveness`]).
/// Dropping the connection fails its open streams: requests waiting for a head get an error, bodies
/// being relayed are cut.
async fn drive<T>(
    connection: h2::client::Connection<T, Bytes>,
    pings: Option<h2::PingPong>,
    closed: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    liveness: Liveness,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::pin!(connection);
    let ended = async {
        let Some(mut pings) = pings else {
            return connection.as_mut().await;
        };
        loop {
            tokio::select! {
                r = connection.as_mut() => return r,
                _ = tokio::time::sleep(liveness.ping_interval) => {}
            }
            let pong = tokio::time::timeout(liveness.ping_timeout, pings.ping(h2::Ping::opaque()));
            tokio::select! {
                r = connection.as_mut() => return r,
                answered = pong => {
                    if !matches!(answered, Ok(Ok(_))) {
                        tracing::debug!("upstream HTTP/2 connection did not answer a ping: closing it");
                        stalled.store(true, Ordering::Release);
                        return Ok(());
                    }
                }
            }
        }
    };
    if let Err(e) = ended.await {
        tracing::debug!(error = %crate::base::error::chain(&e), "upstream HTTP/2 connection ended");
    }
    closed.store(true, Ordering::Release);
}
