//! A client connection's byte stream as hyper sees it, and the timer of its header-read timeout.
//!
//! - **Idle connections stay open.** hyper starts its header-read timeout when it starts waiting for a
//!   request head, so an idle keep-alive connection was closed after [`HEADER_READ_TIMEOUT`],
//!   racing a client that reuses it. kubectl proxy (Go's `http.Server` with no timeouts) keeps idle
//!   connections open. Here the timeout's clock starts only once a byte of the next request has
//!   arrived: [`HeadTimer`]'s sleeps do not run until [`ClientIo`] has read something since the sleep
//!   was set. A slow or stalled request head is still cut after the timeout.
//! - **An HTTP/2 connection preface gets an answer.** hyper's HTTP/1 server drops a connection that
//!   starts with `PRI * HTTP/2.0` without a word; Go's server (so kubectl proxy) answers 400. kproxy
//!   answers a 400 `Status` naming the problem and closes.
//!
//! The cost on the request path is one relaxed atomic increment and one branch per read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a client may take to send a request head, counted from its first byte, before its
/// connection is closed (a slowloris bound). An idle keep-alive connection, with no request begun, stays
/// open as long as the client keeps it, as with kubectl proxy (see this module's doc).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP/2 connection preface's first line (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// What a connection that opens with the HTTP/2 preface gets.
fn h2_answer() -> Vec<u8> {
    let body = crate::wire::status::status_json(
        http::StatusCode::BAD_REQUEST,
        "BadRequest",
        "kproxy serves HTTP/1.1 only: the HTTP/2 connection preface (prior knowledge) is not accepted; \
         use HTTP/1.1 (curl without --http2-prior-knowledge)",
    );
    let mut out = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Wraps a client stream: counts reads that delivered bytes (for [`HeadTimer`]) and answers an HTTP/2
/// preface.
pub struct ClientIo<S> {
    inner: S,
    reads: Arc<AtomicU64>,
    preface: Preface,
}

enum Preface {
    /// Nothing read yet.
    Unknown,
    /// HTTP/1: plain passthrough.
    Http1,
    /// The connection opened with the HTTP/2 preface; writing this answer, then end of stream.
    Answering(Vec<u8>, usize),
    /// The answer is written: hyper sees the end of the stream and closes.
    Done,
}

impl<S> ClientIo<S> {
    /// Wraps `inner`, with the timer that goes with it.
    pub fn new(inner: S) -> (Self, HeadTimer) {
        let reads = Arc::new(AtomicU64::new(0));
        let timer = HeadTimer {
            reads: reads.clone(),
        };
        (
            ClientIo {
                inner,
                reads,
                preface: Preface::Unknown,
            },
            timer,
        )
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.preface {
                Preface::Http1 => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    if buf.filled().len() > before {
                        this.reads.fetch_add(1, Ordering::Relaxed);
                    }
                    return Poll::Ready(Ok(()));
                }
                Preface::Unknown => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    let got = &buf.filled()[before..];
                    if got.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    this.reads.fetch_add(1, Ordering::Relaxed);
                    // Four bytes decide it (`PRI ` starts no HTTP/1 request kproxy could serve); a first
                    // read shorter than that is taken as HTTP/1, and hyper closes on a preface then.
                    let n = got.len().min(H2_PREFACE.len());
                    if n >= 4 && got[..n] == H2_PREFACE[..n] {
                        buf.set_filled(before);
                        this.preface = Preface::Answering(h2_answer(), 0);
                        continue;
                    }
                    this.preface = Preface::Http1;
                    return Poll::Ready(Ok(()));
                }
                Preface::Answering(answer, written) => {
                    while *written < answer.len() {
                        let n =
                            ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]))?;
                        if n == 0 {
                            break;
                        }
                        *written += n;
                    }
                    ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                    this.preface = Preface::Done;
                    return Poll::Ready(Ok(()));
                }
                Preface::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// hyper's timer for one client connection. hyper uses a server connection's timer only for the
/// header-read timeout; the sleeps made here start counting once [`ClientIo`] has read bytes after the
/// sleep was set, that is once the request's first byte has arrived.
#[derive(Clone)]
pub struct HeadTimer {
    reads: Arc<AtomicU64>,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            reads: self.reads.clone(),
            seen: self.reads.load(Ordering::Relaxed),
            timeout: duration,
            armed: None,
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(s) => {
                let s = s.get_mut();
                s.seen = self.reads.load(Ordering::Relaxed);
                s.timeout = new_deadline.saturating_duration_since(Instant::now());
                s.armed = None;
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// A sleep that is not running until the connection has delivered bytes since it was set.
struct HeadSleep {
    reads: Arc<AtomicU64>,
    /// The read count when the sleep was set.
    seen: u64,
    timeout: Duration,
    /// The running clock, from the first poll after bytes arrived.
    armed: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.armed.is_none() {
            // No byte yet: the connection is idle. hyper polls this sleep again whenever the connection
            // is woken by bytes (it polls the sleep after every read attempt), so no waker is needed.
            if this.reads.load(Ordering::Relaxed) == this.seen {
                return Poll::Pending;
            }
            this.armed = Some(Box::pin(tokio::time::sleep(this.timeout)));
        }
        this.armed.as_mut().expect("armed above").as_mut().poll(cx)
    }
}

impl Sleep for HeadSleep {}
