//! The listener (TCP or unix socket), the accept loop, per-connection HTTP/1.1 serving, and graceful
//! shutdown: stop accepting, end long-running streams at once, let ordinary requests finish within the
//! grace period, then return.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::build::Lifecycle;
use crate::app::client_io::ClientIo;
use crate::app::config::Listen;
use crate::app::error::StartupError;
use crate::app::reload::Routers;
use crate::base::host::join_host_port;
use crate::telemetry::metrics::{Metrics, RefusalReason};

/// Client connections served at once; further connections wait in the kernel backlog. Sized for a
/// thousand watches over HTTP/1.1 (one connection each) with room to spare, and about 4 KiB of idle
/// state per connection.
pub const MAX_CONNECTIONS: usize = 4096;
/// Request headers accepted per request (hyper's default is 100; kubectl's Go server allows more).
pub const MAX_HEADERS: usize = 256;
/// Largest request head buffered; larger heads get 431.
pub const MAX_HEAD_BYTES: usize = 1024 * 1024;
/// The longest pause of the accept loop after a failed accept (out of file descriptors, out of
/// memory). The pause starts at [`ACCEPT_BACKOFF_MIN`] and doubles: Go's `http.Server` uses the same
/// 5 ms to 1 s schedule. Pending connections wait in the listen backlog meanwhile.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The first pause after a failed accept.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);

/// The time bounds of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long in-flight requests may take to finish once shutdown begins.
    pub grace: Duration,
    /// [`crate::app::client_io::HEADER_READ_TIMEOUT`], shortened by tests.
    pub header_read: Duration,
}
/// The listen backlog asked for: as Go does (so kubectl proxy), the kernel's `net.core.somaxconn`, to
/// which Linux silently caps any larger value (65,535 is Go's cap too). The standard library and mio
/// ask for 128, and a burst of more connections than that (a controller starting its informers) sees
/// dropped SYNs and one-second retransmits.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// A bound listener.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A unix socket, removed when the listener is dropped.
    Unix(UnixListener, SocketFile),
}

/// Removes the socket file on drop.
pub struct SocketFile(PathBuf, Peers);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Who may connect to the unix socket: the user that owns it (kproxy's own, as it created it) and
/// `--allow-uid`. Checked on every accepted connection with SO_PEERCRED (issue 13): the 0600 mode alone
/// still lets root in, and any process that inherits a connected descriptor.
#[derive(Debug, Clone, Default)]
struct Peers {
    owner: Option<u32>,
    allowed: Vec<u32>,
}

impl Peers {
    fn admits(&self, uid: u32) -> bool {
        self.owner == Some(uid) || self.allowed.contains(&uid)
    }
}

impl Listener {
    /// Binds what `listen` names.
    pub async fn bind(listen: &Listen) -> Result<Listener, StartupError> {
        match listen {
            Listen::Tcp { address, port } => bind_tcp(address, *port).await,
            Listen::Unix(path) => bind_unix(path).map_err(|source| StartupError::Bind {
                addr: format!("unix {}", path.display()),
                source,
            }),
        }
    }

    /// What the startup line prints: `127.0.0.1:8001`, `[::1]:8001`, or the socket path.
    pub fn display_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".to_owned()),
            Listener::Unix(_, f) => f.0.display().to_string(),
        }
    }

    /// With a unix socket, also accept connections from these user ids (`--allow-uid`); the socket's
    /// owner (kproxy's user) is always accepted.
    pub(crate) fn allow_uids(&mut self, uids: &[u32]) {
        if let Listener::Unix(_, SocketFile(_, peers)) = self {
            peers.allowed = uids.to_vec();
        }
    }

    /// The TCP address, when listening on TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }
}

async fn bind_tcp(address: &str, port: u16) -> Result<Listener, StartupError> {
    let host = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    let shown = join_host_port(host, port);
    let err = |source| StartupError::Bind {
        addr: format!("tcp {shown}"),
        source,
    };
    let addr: SocketAddr = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => {
            // Go listens on the first address a name resolves to, preferring IPv4 for `localhost`.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map_err(err)?
                .collect();
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .copied()
                .ok_or_else(|| err(std::io::Error::other("the name resolves to no address")))?
        }
    };
    listen_tcp(addr).map(Listener::Tcp).map_err(err)
}

/// `TcpListener::bind` with [`LISTEN_BACKLOG`] (and, like it, `SO_REUSEADDR`).
fn listen_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds a unix socket that only the owner can use. The socket is created inside a fresh 0700 directory
/// beside `path`, restricted to 0600 there, and renamed into place, so there is no moment when others
/// could connect. An existing socket file (stale or live) is replaced, as kubectl does; any other file is
/// left alone and reported.
fn bind_unix(path: &Path) -> std::io::Result<Listener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "address already in use (the path exists and is not a socket)",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(
        ".kproxy-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let result = (|| {
        let tmp = staging.join("s");
        let socket = tokio::net::UnixSocket::new_stream()?;
        socket.bind(&tmp)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        // Created by this process, so owned by its effective uid: the one peer always admitted.
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&tmp)?);
        std::fs::rename(&tmp, path)?;
        Ok((listener, owner))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result.map(|(l, owner)| {
        let peers = Peers {
            owner: Some(owner),
            allowed: Vec::new(),
        };
        Listener::Unix(l, SocketFile(path.to_owned(), peers))
    })
}

fn fastrand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// Serves until `shutdown` completes, then drains: long-running streams and tunnels end at once, other
/// in-flight requests get `grace` to finish. Returns when everything has finished or the grace ran out.
/// `router` is the swap cell hot reload replaces routers in; each request uses the one current when it
/// arrives.
pub async fn serve(
    listener: Listener,
    router: Arc<Routers>,
    lifecycle: Lifecycle,
    shutdown: impl Future<Output = ()>,
    timeouts: Timeouts,
) {
    let grace = timeouts.grace;
    let connections = TaskTracker::new();
    let drain = CancellationToken::new();
    // Fired when the grace period runs out: connections still open are dropped then, so that `serve`
    // returning means no request is still being served (which matters when kproxy is embedded and the
    // runtime outlives `serve`).
    let force = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    // Failed accepts in a row: the first is logged as a warning, the rest at debug level, and the
    // recovery once, so a process at its file limit does not fill the log.
    let mut failures: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = accept(&listener, &lifecycle.telemetry.metrics) => a,
        };
        match accepted {
            Ok((io, remote)) => {
                if failures > 0 {
                    tracing::warn!("accepting connections again after {failures} failed accept(s)");
                    failures = 0;
                }
                backoff = ACCEPT_BACKOFF_MIN;
                let router = router.clone();
                let drain = drain.clone();
                let force = force.clone();
                let header_read = timeouts.header_read;
                connections.spawn(async move {
                    serve_connection(io, remote, router, drain, force, header_read).await;
                    drop(permit);
                });
            }
            Err(e) if is_connection_error(&e) => {
                // That one connection went away before it was accepted: nothing to wait for.
                tracing::debug!(error = %e, "a connection closed before it was accepted");
            }
            Err(e) => {
                // Out of file descriptors and the like: pause accepting instead of spinning; the
                // connections waiting in the backlog are taken once descriptors are free again.
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        error = %e,
                        "accept failed; pausing accepts and retrying every {ACCEPT_BACKOFF_MIN:?} to \
                         {ACCEPT_BACKOFF_MAX:?} (further failures are logged at debug level)"
                    );
                } else {
                    tracing::debug!(error = %e, "accept failed again; retrying in {backoff:?}");
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    drop(listener);
    lifecycle.streams.cancel();
    drain.cancel();
    connections.close();
    lifecycle.tunnels.close();
    let drained = tokio::time::timeout(grace, async {
        connections.wait().await;
        lifecycle.tunnels.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "shutdown grace period of {grace:?} ended with {} connection(s) still open; closing them",
            connections.len()
        );
        force.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
    }
}

/// Errors that concern the one connection being accepted, not the listener: retried at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(
    listener: &Listener,
    metrics: &Metrics,
) -> std::io::Result<(Io, Option<SocketAddr>)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, a) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Io::Tcp(s), Some(a)))
        }
        Listener::Unix(l, SocketFile(_, peers)) => loop {
            let (s, _) = l.accept().await?;
            // issue 13 hook: only the owner's (and --allow-uid's) processes are served.
            match s.peer_cred() {
                Ok(cred) if peers.admits(cred.uid()) => return Ok((Io::Unix(s), None)),
                Ok(cred) => {
                    tracing::warn!(
                        uid = cred.uid(),
                        pid = cred.pid(),
                        "refused a unix-socket connection from another user (allow it with --allow-uid)"
                    );
                    metrics.refused(RefusalReason::PeerUid);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refused a unix-socket connection: cannot read its peer's credentials")
                }
            }
        },
    }
}

async fn serve_connection(
    io: Io,
    remote: Option<SocketAddr>,
    router: Arc<Routers>,
    drain: CancellationToken,
    force: CancellationToken,
    header_read: Duration,
) {
    match io {
        Io::Tcp(s) => serve_io(s, remote, router, drain, force, header_read).await,
        Io::Unix(s) => serve_io(s, remote, router, drain, force, header_read).await,
    }
}

async fn serve_io<S>(
    stream: S,
    remote: Option<SocketAddr>,
    router: Arc<Routers>,
    drain: CancellationToken,
    force: CancellationToken,
    header_read: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let router = router.clone();
        // Boxed: hyper allocates room for the service's future once per connection and keeps it for the
        // connection's life. Boxed, that room is one pointer, and the handler's state (about 2 KiB) is
        // freed as soon as the response head is returned, instead of staying with every idle keep-alive
        // connection and every open watch.
        Box::pin(async move { Ok::<_, Infallible>(router.handle(req, remote).await) })
    });
    let (stream, timer) = ClientIo::new(stream);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(timer)
        .header_read_timeout(header_read)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = drain.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = force.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}
