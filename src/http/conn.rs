//! The HTTP listener's accept loop and connection policy: hyper's HTTP/1 server driven directly
//! (instead of `axum::serve`) so that every connection is bounded in time, count and memory.
//!
//! - **Caps.** A total cap (`server.max_connections`, never more than half the open-files limit,
//!   so HTTP cannot take the descriptors RTMP, the WebRTC sockets and files need) and a cap per
//!   client address (IPv6: per /64). Beyond a cap the connection gets a fixed 503 with
//!   `Retry-After`, written without blocking, and is closed: no task, no buffer.
//! - **Deadlines**, one per connection phase, enforced by a watchdog beside the hyper connection:
//!   the request head must arrive within `header_read_timeout_ms` (of accept, or of its first
//!   byte on a kept-alive connection); a kept-alive connection idles at most `idle_timeout_ms`;
//!   a response towards a client that stopped reading is dropped after `idle_timeout_ms` without
//!   progress; the body must arrive within `body_read_timeout_ms` (408). While a handler runs
//!   there is no connection deadline: blocking LL-HLS playlist and part requests keep their own
//!   rule (3 × target duration, in `hls.rs`).
//! - **Sizes.** The head is limited to `server.max_request_bytes` (hyper answers 431); a declared
//!   body above it gets 413 before any of it is read; a body is read into memory (it is at most
//!   that size) before the router sees it.
//!
//! Handlers keep using `ConnectInfo<SocketAddr>`: it is put into each request's extensions.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as PromRegistry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower_service::Service;

use crate::config::ServerConfig;
use crate::metrics::{counter, gauge, Metrics};

/// The effective limits of the listener (config plus the open-files ceiling).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub body_read: Duration,
    pub max_bytes: usize,
    /// Total connection cap after the open-files ceiling.
    pub total: usize,
    pub per_ip: usize,
}

impl Limits {
    /// `nofile`: the soft open-files limit (None: unlimited or unknown).
    pub fn new(cfg: &ServerConfig, nofile: Option<u64>) -> Limits {
        let ceiling = nofile.map_or(usize::MAX, |n| (n / 2).max(1) as usize);
        let total = cfg.max_connections.min(ceiling);
        Limits {
            header_read: Duration::from_millis(cfg.header_read_timeout_ms),
            idle: Duration::from_millis(cfg.idle_timeout_ms),
            body_read: Duration::from_millis(cfg.body_read_timeout_ms),
            max_bytes: cfg.max_request_bytes,
            total,
            per_ip: cfg.max_connections_per_ip.min(total),
        }
    }
}

/// The soft RLIMIT_NOFILE of this process; None when unlimited or unreadable.
pub fn open_files_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0 && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// Counters of the listener, rendered into /metrics.
#[derive(Default)]
pub struct HttpStats {
    accepted: AtomicU64,
    open: AtomicI64,
    limit: AtomicI64,
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
    timeout_header: AtomicU64,
    timeout_idle: AtomicU64,
    timeout_send: AtomicU64,
    timeout_body: AtomicU64,
    too_large_head: AtomicU64,
    too_large_body: AtomicU64,
    accept_errors: AtomicU64,
}

impl HttpStats {
    pub fn encode(&self, r: &mut PromRegistry) {
        let ld = |v: &AtomicU64| v.load(Ordering::Relaxed);
        r.register(
            "http_connections",
            "HTTP connections accepted",
            counter(ld(&self.accepted)),
        );
        r.register(
            "http_connections_open",
            "HTTP connections open now",
            gauge(self.open.load(Ordering::Relaxed)),
        );
        r.register(
            "http_connections_limit",
            "HTTP connection cap in force (max_connections, at most half the open-files limit)",
            gauge(self.limit.load(Ordering::Relaxed)),
        );
        let family = |label: &str, rows: &[(&str, &AtomicU64)]| {
            let f = Family::<Vec<(String, String)>, Counter>::default();
            for (v, n) in rows {
                f.get_or_create(&vec![(label.to_string(), v.to_string())])
                    .inc_by(ld(n));
            }
            f
        };
        r.register(
            "http_connections_refused",
            "HTTP connections refused at a cap (503 and closed)",
            family(
                "cap",
                &[
                    ("total", &self.refused_total),
                    ("per_ip", &self.refused_per_ip),
                ],
            ),
        );
        r.register(
            "http_timeouts",
            "HTTP connections closed (or requests answered 408) on a deadline",
            family(
                "phase",
                &[
                    ("header", &self.timeout_header),
                    ("idle", &self.timeout_idle),
                    ("send", &self.timeout_send),
                    ("body", &self.timeout_body),
                ],
            ),
        );
        r.register(
            "http_too_large",
            "HTTP requests refused for size (head: 431, body: 413)",
            family(
                "part",
                &[
                    ("head", &self.too_large_head),
                    ("body", &self.too_large_body),
                ],
            ),
        );
        r.register(
            "http_accept_errors",
            "Errors accepting HTTP connections (e.g. out of file descriptors)",
            counter(ld(&self.accept_errors)),
        );
    }
}

// ───────────────────────────── admission ─────────────────────────────

/// Open connections, in total and per client address.
struct Admission {
    total: usize,
    per_ip: usize,
    open: Mutex<(usize, HashMap<IpKey, usize>)>,
}

/// A client address as the per-IP cap counts it: IPv4 (also when mapped into IPv6) or an IPv6
/// /64, which is what one subscriber usually gets.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum IpKey {
    V4(u32),
    V6Prefix(u64),
}

impl IpKey {
    fn of(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(v4.into()),
            IpAddr::V6(v6) => IpKey::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

enum Refused {
    Total,
    PerIp,
}

/// One admitted connection; releases its place when dropped.
struct Slot {
    adm: Arc<Admission>,
    key: IpKey,
}

impl Admission {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let key = IpKey::of(ip);
        let mut g = self.open.lock();
        let (total, by_ip) = &mut *g;
        if *total >= self.total {
            return Err(Refused::Total);
        }
        let n = by_ip.entry(key).or_insert(0);
        if *n >= self.per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        *total += 1;
        Ok(Slot {
            adm: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.adm.open.lock();
        let (total, by_ip) = &mut *g;
        *total -= 1;
        if let Some(n) = by_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.key);
            }
        }
    }
}

/// Sent to a connection refused at a cap, without waiting for the socket.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Connection: close\r\nContent-Length: 0\r\n\r\n";

// ───────────────────────────── accept loop ─────────────────────────────

/// Accept and serve HTTP/1.1 connections until the process ends.
pub async fn serve(listener: TcpListener, app: Router, metrics: Arc<Metrics>, limits: Limits) {
    let adm = Arc::new(Admission {
        total: limits.total,
        per_ip: limits.per_ip,
        open: Mutex::new((0, HashMap::new())),
    });
    let stats = &metrics.http;
    stats.limit.store(limits.total as i64, Ordering::Relaxed);
    tracing::info!(
        max_connections = limits.total,
        per_ip = limits.per_ip,
        "HTTP connection caps"
    );
    let limits = Arc::new(limits);
    let mut last_error_log: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    continue;
                }
                // Out of descriptors (EMFILE/ENFILE) or memory: back off briefly; the listen
                // backlog holds the clients meanwhile. Logged at most every 10 s.
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("HTTP accept failed: {e}");
                    last_error_log = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match adm.admit(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                match why {
                    Refused::Total => &stats.refused_total,
                    Refused::PerIp => &stats.refused_per_ip,
                }
                .fetch_add(1, Ordering::Relaxed);
                // A fresh socket's send buffer is empty, so this never blocks; if it fails the
                // client just sees the close.
                let _ = stream.try_write(REFUSAL);
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            metrics.clone(),
            limits.clone(),
            slot,
        ));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    slot: Slot,
) {
    let clock = Arc::new(Clock::new(limits.header_read, limits.idle));
    let io = TokioIo::new(Watched {
        inner: stream,
        clock: clock.clone(),
    });
    let ctx = Arc::new(ConnCtx {
        peer,
        app,
        metrics: metrics.clone(),
        limits: limits.clone(),
        clock: clock.clone(),
    });
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(ctx.handle(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // Our watchdog owns every deadline; hyper's own would also cut idle keep-alive
        // connections at the header timeout.
        .header_read_timeout(None)
        .max_header_size(limits.max_bytes)
        .max_buf_size(limits.max_bytes.max(8 * 1024))
        .serve_connection(io, svc);
    let stats = &metrics.http;
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                if e.is_parse_too_large() {
                    stats.too_large_head.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        }
        phase = clock.expired() => {
            match phase {
                Phase::Head => &stats.timeout_header,
                Phase::Idle => &stats.timeout_idle,
                _ => &stats.timeout_send,
            }
            .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, ?phase, "HTTP connection timed out");
        }
    }
    stats.open.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
}

// ───────────────────────────── per-connection clock ─────────────────────────────

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head = 0,
    /// Between requests on a kept-alive connection.
    Idle = 1,
    /// A handler is running (reading the body has its own timeout inside).
    Handler = 2,
    /// Sending the response.
    Responding = 3,
}

const NO_DEADLINE: u64 = u64::MAX;

/// The connection's phase and the deadline that goes with it. Everything runs on the
/// connection's task (hyper polls the socket, the service and the body there), so the atomics
/// carry no contention; they only make the state shareable.
///
/// Phase changes never wake the watchdog: it wakes at least every `tick` (the shorter of the
/// header and idle timeouts), and every deadline a phase change sets is at least `tick` away, so
/// the watchdog is always awake before any deadline it has not seen yet.
struct Clock {
    base: Instant,
    header: Duration,
    idle: Duration,
    tick: Duration,
    phase: AtomicU8,
    /// Milliseconds after `base`; `NO_DEADLINE` while a handler runs.
    deadline_ms: AtomicU64,
}

impl Clock {
    fn new(header: Duration, idle: Duration) -> Clock {
        Clock {
            base: Instant::now(),
            header,
            idle,
            tick: header.min(idle),
            phase: AtomicU8::new(Phase::Head as u8),
            deadline_ms: AtomicU64::new(header.as_millis() as u64),
        }
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Head,
            1 => Phase::Idle,
            2 => Phase::Handler,
            _ => Phase::Responding,
        }
    }

    /// Milliseconds after `base`, rounded up so a deadline is never earlier than asked.
    fn ms_from_now(&self, d: Duration) -> u64 {
        (self.base.elapsed() + d).as_millis() as u64 + 1
    }

    fn enter(&self, phase: Phase) {
        let dl = match phase {
            Phase::Head => self.ms_from_now(self.header),
            Phase::Idle | Phase::Responding => self.ms_from_now(self.idle),
            Phase::Handler => NO_DEADLINE,
        };
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.deadline_ms.store(dl, Ordering::Relaxed);
    }

    /// Bytes arrived: the first byte of a new request starts its head deadline.
    fn on_read(&self) {
        if self.phase() == Phase::Idle {
            self.enter(Phase::Head);
        }
    }

    /// Bytes left: a response making progress pushes its deadline out.
    fn on_write(&self) {
        if self.phase() == Phase::Responding {
            self.deadline_ms
                .store(self.ms_from_now(self.idle), Ordering::Relaxed);
        }
    }

    /// Resolves with the phase whose deadline passed.
    async fn expired(&self) -> Phase {
        let sleep = tokio::time::sleep(self.tick);
        tokio::pin!(sleep);
        loop {
            let dl = self.deadline_ms.load(Ordering::Relaxed);
            let now = Instant::now();
            let mut wake = now + self.tick;
            if dl != NO_DEADLINE {
                let at = self.base + Duration::from_millis(dl);
                if now >= at {
                    return self.phase();
                }
                wake = wake.min(at);
            }
            sleep.as_mut().reset(wake);
            sleep.as_mut().await;
        }
    }
}

/// The socket, reporting traffic to the connection's clock.
struct Watched {
    inner: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.on_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.on_write();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that moves the connection to `Idle` once hyper is done with it (hyper drops
/// the body after its last frame, or when the connection goes away).
struct Tracked {
    inner: Body,
    clock: Arc<Clock>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.clock.enter(Phase::Idle);
    }
}

// ───────────────────────────── requests ─────────────────────────────

struct ConnCtx {
    peer: SocketAddr,
    app: Router,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    clock: Arc<Clock>,
}

impl ConnCtx {
    async fn handle(&self, req: Request<Incoming>) -> Response<Tracked> {
        self.clock.enter(Phase::Handler);
        let resp = match self.read_body(req).await {
            Ok(req) => match self.app.clone().call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            },
            Err(r) => r,
        };
        self.clock.enter(Phase::Responding);
        resp.map(|inner| Tracked {
            inner,
            clock: self.clock.clone(),
        })
    }

    /// The request with its body read in full (bounded in size and time), or the error answer.
    async fn read_body(&self, req: Request<Incoming>) -> Result<Request<Body>, Response<Body>> {
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        let stats = &self.metrics.http;
        let limit = self.limits.max_bytes;
        // A declared length over the limit is refused before a byte of the body is read (and
        // before hyper would send `100 Continue`).
        if body.size_hint().lower() > limit as u64 {
            stats.too_large_body.fetch_add(1, Ordering::Relaxed);
            return Err(closing(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ));
        }
        if body.is_end_stream() {
            return Ok(Request::from_parts(parts, Body::empty()));
        }
        match tokio::time::timeout(self.limits.body_read, Limited::new(body, limit).collect()).await
        {
            Ok(Ok(c)) => Ok(Request::from_parts(parts, Body::from(c.to_bytes()))),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                stats.too_large_body.fetch_add(1, Ordering::Relaxed);
                Err(closing(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                ))
            }
            Ok(Err(_)) => Err(closing(StatusCode::BAD_REQUEST, "bad request body")),
            Err(_) => {
                stats.timeout_body.fetch_add(1, Ordering::Relaxed);
                Err(closing(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body not received in time",
                ))
            }
        }
    }
}

/// A short plain-text answer that also closes the connection (the rest of the body, if any, is
/// never read).
fn closing(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("{msg}\n")));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize, per_ip: usize) -> ServerConfig {
        let mut c = crate::config::Config::default().server;
        c.max_connections = max;
        c.max_connections_per_ip = per_ip;
        c
    }

    #[test]
    fn cap_never_exceeds_half_the_open_files_limit() {
        let l = Limits::new(&cfg(10_000, 1_000), Some(1_100));
        assert_eq!(l.total, 550);
        assert_eq!(l.per_ip, 550);
        let l = Limits::new(&cfg(10_000, 1_000), Some(1 << 20));
        assert_eq!((l.total, l.per_ip), (10_000, 1_000));
        let l = Limits::new(&cfg(10_000, 1_000), None);
        assert_eq!(l.total, 10_000);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn ip_keys() {
        let k = |s: &str| IpKey::of(s.parse().unwrap());
        assert_eq!(k("10.0.0.1"), k("::ffff:10.0.0.1"));
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        // A v6 /64 never collides with an IPv4 address.
        assert_ne!(k("::1"), k("0.0.0.1"));
    }

    #[test]
    fn admission_counts_total_and_per_ip() {
        let adm = Arc::new(Admission {
            total: 3,
            per_ip: 2,
            open: Mutex::new((0, HashMap::new())),
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = adm.admit(a).ok().unwrap();
        let _s2 = adm.admit(a).ok().unwrap();
        assert!(matches!(adm.admit(a), Err(Refused::PerIp)));
        let _s3 = adm.admit(b).ok().unwrap();
        assert!(matches!(adm.admit(b), Err(Refused::Total)));
        drop(s1);
        assert!(adm.admit(a).is_ok());
        assert_eq!(adm.open.lock().0, 2, "the temporary slot was released");
    }
}
