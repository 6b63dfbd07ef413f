//! One push destination: its URL, its state machine, its queue and counters, and the task that
//! drives one rml_rtmp `ClientSession` over TCP or TLS to it.
//!
//! ```text
//!   waiting ──(stream has media)──► connecting ──(publish accepted)──► live
//!      ▲  ▲                             │  ▲                             │
//!      │  └───(publisher gone 10 s)─────┼──┼─────────────────────────────┤
//!      │                                ▼  │ (timer)                     │ (error, stall, reset)
//!   refused ◄─(codec RTMP can't carry)  backoff ◄─────────────────────────┘
//!                                       │
//!                                       └─(max_retries consecutive failures)─► failed
//! ```
//!
//! - **Isolation**: each destination has its own task, queue and socket; the fan-out only ever
//!   `try`s into the queue (a mutex held for a push), so a dead or slow destination costs the
//!   others nothing.
//! - **Backoff**: 1 s doubling to 30 s, each delay drawn in [½, 1] of its step (jitter), reset once
//!   a connection stayed live for 10 s. A destination that answers "already publishing" (the
//!   platform has not noticed our last connection die yet) simply goes through the same backoff.
//! - **Stalls**: a write that makes no progress for 10 s ends the connection ("the destination
//!   stopped reading"); until then the queue drops to the next keyframe, so memory stays bounded
//!   by the queue limits plus the kernel's socket buffers.
//! - **Timestamps**: milliseconds from the destination's first frame on the stream clock; they
//!   never decrease, not even across reconnects (see [`super::queue`]).
//! - **Secrets**: the stream key only ever leaves this module inside the RTMP `publish` command;
//!   the log and the status show [`PushUrl::masked`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::chunk::{Segments, CHUNK_SIZE};
use super::flv::{FlvMuxer, FlvTag, Headers};
use super::queue::{Item, QueueLimits, SendQueue};
use super::tls::{server_name, TlsConfigs};
use super::url::PushUrl;
use crate::media::{Registry, StreamState, TrackKind};

/// TCP connect + TLS + RTMP handshake + connect + publish must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that makes no progress this long means the destination stopped reading.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// RTMP ping cadence (gives the RTT).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A live connection is kept this long after the publisher left (it may come back).
pub const IDLE_GRACE: Duration = Duration::from_secs(10);
/// A connection live at least this long resets the backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
const WAITING: &str = "waiting for the stream to be published";
/// After a write, frames are gathered until the next tick of this grid before the next one
/// (unless a full batch is queued): a few frames per write instead of one, and all destinations on
/// the same tick, so the I/O thread costs a few tens of wake-ups per second however many
/// destinations it serves. Platforms buffer seconds; 40 ms is invisible.
pub const WRITE_COALESCE: Duration = Duration::from_millis(40);
/// Most bytes serialized into one socket write.
const BATCH_BYTES: usize = 256 * 1024;

/// Where a destination came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Api,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DestState {
    /// The stream has no media to send (no publisher yet, or it left).
    Waiting,
    Connecting,
    Live,
    /// Waiting to retry after a failure.
    Backoff,
    /// Gave up after `max_retries` consecutive failures.
    Failed,
    /// The program has a codec RTMP destinations cannot play.
    Refused,
}

impl DestState {
    pub const ALL: [DestState; 6] = [
        DestState::Waiting,
        DestState::Connecting,
        DestState::Live,
        DestState::Backoff,
        DestState::Failed,
        DestState::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DestState::Waiting => "waiting",
            DestState::Connecting => "connecting",
            DestState::Live => "live",
            DestState::Backoff => "backoff",
            DestState::Failed => "failed",
            DestState::Refused => "refused",
        }
    }
}

/// What a destination is asked to be.
#[derive(Clone, Debug)]
pub struct DestinationSpec {
    pub id: String,
    pub url: PushUrl,
    pub tls_verify: bool,
    pub max_retries: Option<u32>,
    pub source: Source,
}

/// A destination's status as the API and metrics show it (stream key masked).
#[derive(Clone, Debug, Serialize)]
pub struct DestinationStatus {
    pub id: String,
    pub stream: String,
    /// The URL with the stream key masked.
    pub url: String,
    pub tls: bool,
    pub tls_verify: bool,
    pub source: Source,
    pub state: DestState,
    /// Seconds in the current state.
    pub state_secs: f64,
    /// Why the destination is in this state (waiting, refused, backoff, failed).
    pub reason: Option<String>,
    pub last_error: Option<String>,
    pub last_error_secs_ago: Option<f64>,
    /// Unix time (seconds) the current connection went live.
    pub connected_since: Option<f64>,
    pub uptime_secs: Option<f64>,
    /// Bytes written to the destination's socket (RTMP framing included).
    pub bytes_sent: u64,
    pub frames_sent: u64,
    /// Frames lost because the destination was slower than the stream.
    pub frames_dropped: u64,
    /// Connection attempts that failed or connections that were lost.
    pub reconnects: u64,
    /// Consecutive failures since the last healthy connection.
    pub attempts: u32,
    pub max_retries: Option<u32>,
    /// Seconds until the next attempt (backoff).
    pub retry_in_secs: Option<f64>,
    /// Round trip of the last RTMP ping (includes our socket send queue).
    pub rtt_ms: Option<f64>,
    pub queue_frames: usize,
    pub queue_bytes: usize,
}

struct StatusInner {
    state: DestState,
    since: Instant,
    reason: Option<String>,
    last_error: Option<(String, Instant)>,
    connected: Option<(Instant, SystemTime)>,
    rtt: Option<Duration>,
    attempts: u32,
    retry_at: Option<Instant>,
}

/// What the fan-out thread and the connection task share.
pub(super) struct Inbox {
    pub queue: SendQueue,
    /// The stream is publishing (there is media to send).
    pub live: bool,
}

/// One destination, shared by the engine (API), the fan-out thread and its connection task.
pub struct Destination {
    pub id: String,
    pub stream: Arc<str>,
    pub url: PushUrl,
    pub tls_verify: bool,
    pub max_retries: Option<u32>,
    pub source: Source,
    pub(super) inbox: Mutex<Inbox>,
    /// Wakes the connection task: media queued, stream state changed, removal.
    pub(super) wake: Notify,
    removed: AtomicBool,
    status: Mutex<StatusInner>,
    bytes_sent: AtomicU64,
    frames_sent: AtomicU64,
    reconnects: AtomicU64,
}

impl Destination {
    pub(super) fn new(stream: Arc<str>, spec: DestinationSpec, limits: QueueLimits) -> Self {
        Self {
            id: spec.id,
            stream,
            url: spec.url,
            tls_verify: spec.tls_verify,
            max_retries: spec.max_retries,
            source: spec.source,
            inbox: Mutex::new(Inbox {
                queue: SendQueue::new(limits),
                live: false,
            }),
            wake: Notify::new(),
            removed: AtomicBool::new(false),
            status: Mutex::new(StatusInner {
                state: DestState::Waiting,
                since: Instant::now(),
                reason: Some(WAITING.into()),
                last_error: None,
                connected: None,
                rtt: None,
                attempts: 0,
                retry_at: None,
            }),
            bytes_sent: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> DestState {
        self.status.lock().state
    }

    pub(super) fn remove(&self) {
        self.removed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn status(&self) -> DestinationStatus {
        let now = Instant::now();
        let (frames_dropped, queue_frames, queue_bytes) = {
            let i = self.inbox.lock();
            (i.queue.dropped(), i.queue.len_frames(), i.queue.len_bytes())
        };
        let s = self.status.lock();
        DestinationStatus {
            id: self.id.clone(),
            stream: self.stream.to_string(),
            url: self.url.masked(),
            tls: self.url.tls,
            tls_verify: self.tls_verify,
            source: self.source,
            state: s.state,
            state_secs: now.duration_since(s.since).as_secs_f64(),
            reason: s.reason.clone(),
            last_error: s.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_secs_ago: s
                .last_error
                .as_ref()
                .map(|(_, t)| now.duration_since(*t).as_secs_f64()),
            connected_since: s.connected.map(|(_, w)| {
                w.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0)
            }),
            uptime_secs: s
                .connected
                .map(|(t, _)| now.duration_since(t).as_secs_f64()),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            frames_dropped,
            reconnects: self.reconnects.load(Ordering::Relaxed),
            attempts: s.attempts,
            max_retries: self.max_retries,
            retry_in_secs: s
                .retry_at
                .filter(|_| s.state == DestState::Backoff)
                .map(|t| t.saturating_duration_since(now).as_secs_f64()),
            rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1000.0),
            queue_frames,
            queue_bytes,
        }
    }

    fn set_state(&self, state: DestState, reason: Option<String>) {
        let mut s = self.status.lock();
        if s.state == state && s.reason == reason {
            return;
        }
        let from = s.state;
        s.state = state;
        s.since = Instant::now();
        s.reason = reason.clone();
        if state != DestState::Live {
            s.connected = None;
        }
        if state != DestState::Backoff {
            s.retry_at = None;
        }
        let attempts = s.attempts;
        drop(s);
        let reason = reason.as_deref().unwrap_or("");
        match state {
            DestState::Backoff | DestState::Failed | DestState::Refused => tracing::warn!(
                side = "egress", path = "rtmp", stream = %self.stream, destination = %self.id,
                url = %self.url.masked(), from = from.as_str(), to = state.as_str(), attempts,
                "push destination {}: {reason}", state.as_str()
            ),
            _ => tracing::info!(
                side = "egress", path = "rtmp", stream = %self.stream, destination = %self.id,
                url = %self.url.masked(), from = from.as_str(), to = state.as_str(),
                "push destination {}{}{reason}", state.as_str(),
                if reason.is_empty() { "" } else { ": " }
            ),
        }
    }

    fn set_live(&self) {
        self.set_state(DestState::Live, None);
        let mut s = self.status.lock();
        s.connected = Some((Instant::now(), SystemTime::now()));
        s.rtt = None;
    }

    fn set_rtt(&self, rtt: Duration) {
        self.status.lock().rtt = Some(rtt);
    }

    fn record_failure(&self, err: &str, attempts: u32) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        let mut s = self.status.lock();
        s.last_error = Some((err.to_string(), Instant::now()));
        s.attempts = attempts;
    }

    fn set_attempts(&self, attempts: u32) {
        self.status.lock().attempts = attempts;
    }
}

/// The delay before retry number `attempt` (1-based): 1 s doubling to 30 s, jittered to [½, 1].
pub fn backoff_delay(attempt: u32, unit_random: f64) -> Duration {
    let step = BACKOFF_INITIAL
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    step.mul_f64(0.5 + 0.5 * unit_random.clamp(0.0, 1.0))
}

/// Something we can speak RTMP over: a TCP stream or a TLS stream on top of one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// Millisecond timestamps of one destination: from its first frame, never decreasing per track,
/// across reconnects.
#[derive(Default, Debug)]
pub(super) struct TsMap {
    origin: Option<i64>,
    last: [i64; 2],
}

impl TsMap {
    pub fn map(&mut self, t: &FlvTag) -> RtmpTimestamp {
        let ms = t.ms();
        let origin = *self.origin.get_or_insert(ms);
        let i = match t.kind {
            TrackKind::Video => 0,
            TrackKind::Audio => 1,
        };
        let out = (ms - origin).max(self.last[i]).max(0);
        self.last[i] = out;
        RtmpTimestamp::new(out as u32)
    }

    /// Timestamp for sequence headers / metadata: not before anything already sent.
    pub fn now(&self) -> RtmpTimestamp {
        RtmpTimestamp::new(self.last[0].max(self.last[1]) as u32)
    }
}

/// The connection task of one destination: runs until the destination is removed.
pub(super) async fn run(d: Arc<Destination>, registry: Arc<Registry>, tls: TlsConfigs) {
    let mut ts = TsMap::default();
    let mut attempts: u32 = 0;
    loop {
        if d.is_removed() {
            break;
        }
        let (live, refusal) = {
            let i = d.inbox.lock();
            let h = i.queue.headers();
            // Live means a publisher with announced tracks: nothing to send before that.
            (i.live && h.is_some(), h.and_then(|h| h.refusal.clone()))
        };
        if let Some(reason) = refusal {
            d.set_state(DestState::Refused, Some(reason));
            d.wake.notified().await;
            continue;
        }
        if !live {
            d.set_state(DestState::Waiting, Some(WAITING.into()));
            d.wake.notified().await;
            continue;
        }
        d.set_state(DestState::Connecting, None);
        let err = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&d, &tls)).await {
            Err(_) => format!(
                "no answer within {} s (TCP, TLS, RTMP handshake, connect or publish)",
                CONNECT_TIMEOUT.as_secs()
            ),
            Ok(Err(e)) => e,
            Ok(Ok((io, session, stream_id))) => {
                d.set_live();
                let started = Instant::now();
                let r = run_live(&d, io, session, stream_id, &registry, &mut ts).await;
                d.inbox.lock().queue.stop();
                if started.elapsed() >= HEALTHY_AFTER {
                    attempts = 0;
                    d.set_attempts(0);
                }
                match r {
                    Ok(Exit::Removed) => break,
                    Ok(Exit::Idle) | Ok(Exit::Refused) => {
                        attempts = 0;
                        d.set_attempts(0);
                        continue;
                    }
                    Err(e) => e,
                }
            }
        };
        attempts = attempts.saturating_add(1);
        d.record_failure(&err, attempts);
        if let Some(max) = d.max_retries {
            if attempts > max {
                d.set_state(
                    DestState::Failed,
                    Some(format!(
                        "gave up after {attempts} consecutive failures; last: {err}"
                    )),
                );
                while !d.is_removed() {
                    d.wake.notified().await;
                }
                break;
            }
        }
        let delay = backoff_delay(attempts, rand::random::<f64>());
        let until = Instant::now() + delay;
        d.status.lock().retry_at = Some(until);
        d.set_state(
            DestState::Backoff,
            Some(format!(
                "{err}; retry {} in {:.1} s",
                attempts,
                delay.as_secs_f64()
            )),
        );
        // Sleep, but wake for removal (other wake-ups are ignored until the timer).
        let deadline = tokio::time::Instant::from_std(until);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = d.wake.notified() => {
                    if d.is_removed() {
                        break;
                    }
                }
            }
        }
    }
    d.inbox.lock().queue.stop();
    tracing::info!(side = "egress", path = "rtmp", stream = %d.stream, destination = %d.id,
        url = %d.url.masked(), "push destination removed");
}

/// Why a live connection ended without an error.
enum Exit {
    Removed,
    /// The publisher left and did not come back within the grace period.
    Idle,
    /// The program changed to a codec RTMP cannot carry.
    Refused,
}

fn io_err(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

/// onStatus codes that end a publish.
fn is_error_status(code: &str) -> bool {
    [
        "BadName",
        "Denied",
        "Rejected",
        "Failed",
        "Error",
        "Closed",
        "Unauthorized",
        "Invalid",
        "Unpublish",
    ]
    .iter()
    .any(|w| code.contains(w))
}

/// The error an event carries, if any: an `onStatus` error code, or an `_error` answer
/// (rml_rtmp reports the latter as a result to an unknown transaction, since `publish` carries
/// transaction id 0).
fn error_code(ev: &ClientSessionEvent) -> Option<String> {
    match ev {
        ClientSessionEvent::UnhandleableOnStatusCode { code } if is_error_status(code) => {
            Some(code.clone())
        }
        ClientSessionEvent::UnknownTransactionResultReceived {
            additional_values, ..
        } => {
            let Some(rml_rtmp::rml_amf0::Amf0Value::Object(props)) = additional_values.first()
            else {
                return None;
            };
            let code = match props.get("code") {
                Some(rml_rtmp::rml_amf0::Amf0Value::Utf8String(c)) => c.clone(),
                _ => return None,
            };
            let level_error = matches!(props.get("level"),
                Some(rml_rtmp::rml_amf0::Amf0Value::Utf8String(l)) if l == "error" || l == "_error");
            (level_error || is_error_status(&code)).then(|| match props.get("description") {
                Some(rml_rtmp::rml_amf0::Amf0Value::Utf8String(d)) if !d.is_empty() => {
                    format!("{code} ({d})")
                }
                _ => code,
            })
        }
        _ => None,
    }
}

/// The message stream id the server gave our publish (from `createStream`), which rml_rtmp keeps
/// to itself: read from the full header of a metadata message it serializes for us (never sent;
/// chunk stream 3 is not used for anything else).
fn publish_stream_id(session: &mut ClientSession) -> u32 {
    match session.publish_metadata(&StreamMetadata::new()) {
        Ok(ClientSessionResult::OutboundResponse(p)) => stream_id_of(&p.bytes).unwrap_or(1),
        _ => 1,
    }
}

/// A connection that is publishing: the socket, the session, the message stream id.
type Connected = (BoxIo, ClientSession, u32);

/// TCP (+ TLS) + RTMP handshake + connect + publish.
async fn connect(d: &Destination, tls: &TlsConfigs) -> Result<Connected, String> {
    let (host, port) = d.url.connect_addr();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| io_err(&format!("TCP connect to {host}:{port}"), e))?;
    let _ = tcp.set_nodelay(true);
    let mut io: BoxIo = if d.url.tls {
        let name = server_name(&host)?;
        let s = tls
            .connector(d.tls_verify)
            .connect(name, tcp)
            .await
            .map_err(|e| io_err(&format!("TLS handshake with {host}:{port}"), e))?;
        Box::new(s)
    } else {
        Box::new(tcp)
    };

    let mut hs = Handshake::new(PeerType::Client);
    let p0p1 = hs
        .generate_outbound_p0_and_p1()
        .map_err(|e| format!("RTMP handshake: {e}"))?;
    write_flush(&mut io, &p0p1).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let leftover = loop {
        let n = io
            .read(&mut buf)
            .await
            .map_err(|e| io_err("RTMP handshake", e))?;
        if n == 0 {
            return Err("the destination closed the connection during the RTMP handshake".into());
        }
        match hs
            .process_bytes(&buf[..n])
            .map_err(|e| format!("RTMP handshake: {e}"))?
        {
            HandshakeProcessResult::InProgress { response_bytes } => {
                if !response_bytes.is_empty() {
                    write_flush(&mut io, &response_bytes).await?;
                }
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                if !response_bytes.is_empty() {
                    write_flush(&mut io, &response_bytes).await?;
                }
                break remaining_bytes;
            }
        }
    };

    let mut cfg = ClientSessionConfig::new();
    cfg.chunk_size = CHUNK_SIZE as u32;
    cfg.tc_url = Some(d.url.tc_url());
    cfg.flash_version = "FMLE/3.0 (compatible; deltacast)".into();
    let rtmp_err = |e: rml_rtmp::sessions::ClientSessionError| format!("RTMP: {e}");
    let (mut session, initial) = ClientSession::new(cfg).map_err(rtmp_err)?;
    let mut out = Vec::new();
    collect(&mut out, initial);
    collect(
        &mut out,
        vec![session
            .request_connection(d.url.app.clone())
            .map_err(rtmp_err)?],
    );
    write_flush(&mut io, &out).await?;
    let mut input = leftover;
    let mut phase = "connect";
    loop {
        out.clear();
        let mut published = false;
        if !input.is_empty() {
            for r in session.handle_input(&input).map_err(rtmp_err)? {
                match r {
                    ClientSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
                    ClientSessionResult::RaisedEvent(ev) => match ev {
                        ClientSessionEvent::ConnectionRequestAccepted => {
                            phase = "publish";
                            collect(
                                &mut out,
                                vec![session
                                    .request_publishing(d.url.key.clone(), PublishRequestType::Live)
                                    .map_err(rtmp_err)?],
                            );
                        }
                        ClientSessionEvent::ConnectionRequestRejected { description } => {
                            return Err(format!(
                                "the destination refused RTMP connect to app '{}': {description}",
                                d.url.app
                            ));
                        }
                        ClientSessionEvent::PublishRequestAccepted => published = true,
                        ev => {
                            if let Some(code) = error_code(&ev) {
                                return Err(format!(
                                    "the destination refused RTMP {phase}: {code}"
                                ));
                            }
                        }
                    },
                    ClientSessionResult::UnhandleableMessageReceived(_) => {}
                }
            }
        }
        if !out.is_empty() {
            write_flush(&mut io, &out).await?;
        }
        if published {
            let sid = publish_stream_id(&mut session);
            return Ok((io, session, sid));
        }
        let n = io
            .read(&mut buf)
            .await
            .map_err(|e| io_err(&format!("RTMP {phase}"), e))?;
        if n == 0 {
            return Err(format!(
                "the destination closed the connection during RTMP {phase}"
            ));
        }
        input = buf[..n].to_vec();
    }
}

fn collect(out: &mut Vec<u8>, results: Vec<ClientSessionResult>) {
    for r in results {
        if let ClientSessionResult::OutboundResponse(p) = r {
            out.extend_from_slice(&p.bytes);
        }
    }
}

async fn write_flush<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, buf: &[u8]) -> Result<(), String> {
    w.write_all(buf).await.map_err(|e| io_err("write", e))?;
    w.flush().await.map_err(|e| io_err("write", e))
}

/// The stream's current GOP, as tags, for a connection that just went live.
fn start_queue(d: &Destination, registry: &Registry) {
    let mut inbox = d.inbox.lock();
    // Taken under the inbox lock: frames the fan-out pushes after this are either in the
    // snapshot (then stale for the queue) or newer (then queued after it).
    let (tracks, frames) = match registry.get(&d.stream) {
        Some(s) if s.state() == StreamState::Publishing => s.gop_snapshot(),
        _ => (None, Vec::new()),
    };
    // As the fan-out sees it: Opus audio bridged to AAC-LC (a fresh bridge for the cached GOP).
    let (tracks, mut bridge) = match tracks {
        Some(t) => {
            let (t, b) = super::rtmp_tracks(&t);
            (Some(t), b)
        }
        None => (None, None),
    };
    let headers = tracks.as_ref().map(|t| Arc::new(Headers::from_tracks(t)));
    let mut mux = FlvMuxer::new();
    if let Some(t) = &tracks {
        mux.set_tracks(t);
    }
    let mut tags = Vec::with_capacity(frames.len());
    for f in &frames {
        match bridge.as_mut() {
            Some(b) if f.kind == TrackKind::Audio => {
                tags.extend(b.push(f).iter().map(|a| mux.tag(a)));
            }
            _ => tags.push(mux.tag(f)),
        }
    }
    inbox.queue.start(headers, tags);
}

/// Shared between the reader and the writer of one live connection.
struct LiveShared {
    session: Mutex<ClientSession>,
    /// Bytes the session produced while reading (acks, pongs); written before anything
    /// serialized later (both sides serialize under the `session` lock).
    ctl: Mutex<Vec<u8>>,
    ping: Mutex<Option<(u32, Instant)>>,
}

async fn run_live(
    d: &Arc<Destination>,
    io: BoxIo,
    session: ClientSession,
    stream_id: u32,
    registry: &Registry,
    ts: &mut TsMap,
) -> Result<Exit, String> {
    start_queue(d, registry);
    let shared = LiveShared {
        session: Mutex::new(session),
        ctl: Mutex::new(Vec::new()),
        ping: Mutex::new(None),
    };
    let (mut rd, mut wr) = tokio::io::split(io);
    let r = {
        let reader = read_loop(d, &shared, &mut rd);
        let writer = write_loop(d, &shared, &mut wr, stream_id, ts);
        tokio::pin!(reader, writer);
        tokio::select! {
            e = &mut reader => Err(e),
            r = &mut writer => r,
        }
    };
    if let Ok(exit) = &r {
        // A clean end: tell the destination the publish is over (best effort).
        let packets = shared.session.lock().stop_publishing().unwrap_or_default();
        let mut out = std::mem::take(&mut *shared.ctl.lock());
        collect(&mut out, packets);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
        })
        .await;
        let why = match exit {
            Exit::Removed => "removed",
            Exit::Idle => "the publisher left",
            Exit::Refused => "the program's codecs changed",
        };
        tracing::info!(side = "egress", path = "rtmp", stream = %d.stream, destination = %d.id,
            "push connection closed: {why}");
    }
    r
}

/// Reads until the connection fails; returns why.
async fn read_loop<R: AsyncRead + Unpin>(
    d: &Destination,
    shared: &LiveShared,
    rd: &mut R,
) -> String {
    match read_until_error(d, shared, rd).await {
        Err(e) => e,
    }
}

async fn read_until_error<R: AsyncRead + Unpin>(
    d: &Destination,
    shared: &LiveShared,
    rd: &mut R,
) -> Result<std::convert::Infallible, String> {
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = rd.read(&mut buf).await.map_err(|e| io_err("read", e))?;
        if n == 0 {
            return Err("the destination closed the connection".into());
        }
        let results = {
            let mut s = shared.session.lock();
            let results = s
                .handle_input(&buf[..n])
                .map_err(|e| format!("RTMP from the destination: {e}"))?;
            let mut ctl = shared.ctl.lock();
            let before = ctl.len();
            for r in &results {
                if let ClientSessionResult::OutboundResponse(p) = r {
                    ctl.extend_from_slice(&p.bytes);
                }
            }
            if ctl.len() > before {
                d.wake.notify_one();
            }
            results
        };
        for r in results {
            match r {
                ClientSessionResult::RaisedEvent(ClientSessionEvent::PingResponseReceived {
                    timestamp,
                }) => {
                    let mut p = shared.ping.lock();
                    if let Some((sent_ts, at)) = *p {
                        if sent_ts == timestamp.value {
                            d.set_rtt(at.elapsed());
                            *p = None;
                        }
                    }
                }
                ClientSessionResult::RaisedEvent(ev) => {
                    if let Some(code) = error_code(&ev) {
                        return Err(format!("the destination ended the publish: {code}"));
                    }
                }
                _ => {}
            }
        }
    }
}

/// `@setDataFrame onMetaData` for the program, as one RTMP data message at timestamp 0.
///
/// Not through `ClientSession::publish_metadata`: that stamps the message with the session's
/// wall-clock epoch, and ffmpeg-based receivers (ffmpeg, and platform ingests built on it) read a
/// metadata tag with a non-zero timestamp as a *data stream*, then wait their whole probe time for
/// its packets. The message goes out on chunk stream 3, which the session only uses for
/// `publish_metadata` (never called), through a serializer of its own with the same chunk size;
/// a fresh serializer always writes a full (type 0) chunk header, so the peer's view of the chunk
/// streams the session uses is untouched.
fn metadata_packet(h: &Headers, stream_id: u32) -> Option<Vec<u8>> {
    use rml_rtmp::rml_amf0::Amf0Value;
    use std::collections::HashMap;
    let mut p = HashMap::new();
    let mut num = |k: &str, v: f64| {
        p.insert(k.to_string(), Amf0Value::Number(v));
    };
    if let Some(w) = h.metadata.width {
        num("width", f64::from(w));
    }
    if let Some(v) = h.metadata.height {
        num("height", f64::from(v));
    }
    if h.video.is_some() {
        num("videocodecid", 7.0);
    }
    if h.audio.is_some() {
        num("audiocodecid", 10.0);
    }
    if let Some(r) = h.metadata.audio_sample_rate {
        num("audiosamplerate", f64::from(r));
    }
    if let Some(c) = h.metadata.audio_channels {
        num("audiochannels", f64::from(c));
        p.insert("stereo".into(), Amf0Value::Boolean(c >= 2));
    }
    p.insert(
        "encoder".into(),
        Amf0Value::Utf8String(concat!("deltacast ", env!("CARGO_PKG_VERSION")).into()),
    );
    let msg = rml_rtmp::messages::RtmpMessage::Amf0Data {
        values: vec![
            Amf0Value::Utf8String("@setDataFrame".into()),
            Amf0Value::Utf8String("onMetaData".into()),
            Amf0Value::Object(p),
        ],
    };
    let payload = msg
        .into_message_payload(RtmpTimestamp::new(0), stream_id)
        .ok()?;
    let mut ser = rml_rtmp::chunk_io::ChunkSerializer::new();
    ser.set_max_chunk_size(CHUNK_SIZE as u32, RtmpTimestamp::new(0))
        .ok()?;
    ser.serialize(&payload, true, false).ok().map(|p| p.bytes)
}

/// The message stream id in a full (type 0) chunk header with a one-byte basic header, as the
/// session writes for the first message of a chunk stream.
fn stream_id_of(packet: &[u8]) -> Option<u32> {
    if packet.len() >= 12 && packet[0] >> 6 == 0 && packet[0] & 0x3f >= 2 {
        Some(u32::from_le_bytes([
            packet[8], packet[9], packet[10], packet[11],
        ]))
    } else {
        None
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    d: &Destination,
    shared: &LiveShared,
    wr: &mut W,
    stream_id: u32,
    ts: &mut TsMap,
) -> Result<Exit, String> {
    let rtmp_err = |e: rml_rtmp::sessions::ClientSessionError| format!("RTMP: {e}");
    let mut segs = Segments::default();
    let mut items: Vec<Item> = Vec::with_capacity(64);
    let mut sent_headers: Option<Arc<Headers>> = None;
    let mut next_ping = Instant::now() + PING_INTERVAL;
    let mut idle_since: Option<Instant> = None;
    let mut gather_until: Option<Instant> = None;
    loop {
        if d.is_removed() {
            return Ok(Exit::Removed);
        }
        if let Some(t) = gather_until.take() {
            if Instant::now() < t && d.inbox.lock().queue.len_bytes() < BATCH_BYTES {
                tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
                continue;
            }
        }
        let now = Instant::now();
        {
            let mut inbox = d.inbox.lock();
            if inbox.queue.headers().is_some_and(|h| h.refusal.is_some()) {
                return Ok(Exit::Refused);
            }
            if inbox.live {
                idle_since = None;
            } else if now.duration_since(*idle_since.get_or_insert(now)) >= IDLE_GRACE {
                return Ok(Exit::Idle);
            }
            let mut budget = 0usize;
            while budget < BATCH_BYTES {
                match inbox.queue.pop() {
                    Some(it) => {
                        if let Item::Tag(t) = &it {
                            budget += t.len();
                        }
                        items.push(it);
                    }
                    None => break,
                }
            }
        }
        segs.clear();
        let mut frames = 0u64;
        {
            // Control bytes the reader produced were serialized before anything below: they go
            // first (both sides serialize under the session lock).
            let mut s = shared.session.lock();
            segs.push_owned(std::mem::take(&mut *shared.ctl.lock()));
            for it in items.drain(..) {
                match it {
                    Item::Headers(h) => {
                        if sent_headers.as_ref().is_some_and(|c| c.same_codecs(&h)) {
                            continue;
                        }
                        if let Some(m) = metadata_packet(&h, stream_id) {
                            segs.push_owned(m);
                        }
                        let at = ts.now().value;
                        if let Some(v) = &h.video {
                            segs.message(stream_id, at, v);
                        }
                        if let Some(a) = &h.audio {
                            segs.message(stream_id, at, a);
                        }
                        sent_headers = Some(h);
                    }
                    Item::Tag(t) => {
                        segs.message(stream_id, ts.map(&t).value, &t.body);
                        frames += 1;
                    }
                }
            }
            if now >= next_ping {
                let (p, stamp) = s.send_ping_request().map_err(rtmp_err)?;
                segs.push_owned(p.bytes);
                *shared.ping.lock() = Some((stamp.value, now));
                next_ping = now + PING_INTERVAL;
            }
        }
        if segs.is_empty() {
            let mut deadline = next_ping;
            if let Some(t) = idle_since {
                deadline = deadline.min(t + IDLE_GRACE);
            }
            tokio::select! {
                _ = d.wake.notified() => {}
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
            }
            continue;
        }
        write_segments(wr, &segs.parts).await?;
        d.bytes_sent.fetch_add(segs.bytes as u64, Ordering::Relaxed);
        d.frames_sent.fetch_add(frames, Ordering::Relaxed);
        gather_until = Some(next_tick(Instant::now()));
    }
}

/// The next [`WRITE_COALESCE`] boundary on a process-wide grid: every destination that is
/// gathering wakes at the same instant, so the I/O thread wakes once per tick for all of them
/// rather than once per destination.
fn next_tick(now: Instant) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let step = WRITE_COALESCE.as_nanos();
    let k = now.saturating_duration_since(epoch).as_nanos() / step + 1;
    epoch + Duration::from_nanos((k * step) as u64)
}

/// Write `parts` in order with vectored writes (shared bodies are never copied here), failing
/// when no byte is accepted for [`STALL_TIMEOUT`].
async fn write_segments<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    parts: &[bytes::Bytes],
) -> Result<(), String> {
    let stalled = || {
        format!(
            "the destination stopped reading (no progress for {} s)",
            STALL_TIMEOUT.as_secs()
        )
    };
    let (mut idx, mut off) = (0usize, 0usize);
    while idx < parts.len() {
        let slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&parts[idx][off..])
            .chain(parts[idx + 1..].iter().map(|b| &b[..]))
            .take(64)
            .map(std::io::IoSlice::new)
            .collect();
        let mut n = match tokio::time::timeout(STALL_TIMEOUT, w.write_vectored(&slices)).await {
            Err(_) => return Err(stalled()),
            Ok(Ok(0)) => return Err("the destination closed the connection".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(io_err("write", e)),
        };
        while n > 0 && idx < parts.len() {
            let rest = parts[idx].len() - off;
            if n >= rest {
                n -= rest;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    match tokio::time::timeout(STALL_TIMEOUT, w.flush()).await {
        Err(_) => Err(stalled()),
        Ok(r) => r.map_err(|e| io_err("write", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        assert_eq!(backoff_delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff_delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff_delay(6, 1.0), BACKOFF_MAX);
        assert_eq!(backoff_delay(1000, 1.0), BACKOFF_MAX);
        assert_eq!(backoff_delay(1000, 0.0), BACKOFF_MAX / 2);
        let d = backoff_delay(3, 0.5);
        assert!(d > Duration::from_secs(2) && d < Duration::from_secs(4));
    }

    fn tag(kind: TrackKind, ms: i64) -> FlvTag {
        FlvTag {
            kind,
            dts: ms * 90,
            keyframe: false,
            body: crate::egress::push::chunk::ChunkedBody::new(kind, &[]),
        }
    }

    #[test]
    fn timestamps_start_at_zero_and_never_go_back() {
        let mut m = TsMap::default();
        assert_eq!(m.map(&tag(TrackKind::Video, 5000)).value, 0);
        assert_eq!(m.map(&tag(TrackKind::Audio, 4990)).value, 0);
        assert_eq!(m.map(&tag(TrackKind::Audio, 5013)).value, 13);
        assert_eq!(m.map(&tag(TrackKind::Video, 5033)).value, 33);
        // A reconnect that starts later keeps the origin.
        assert_eq!(m.map(&tag(TrackKind::Video, 9000)).value, 4000);
        assert_eq!(m.map(&tag(TrackKind::Video, 8000)).value, 4000);
        assert_eq!(m.now().value, 4000);
    }

    #[test]
    fn error_statuses() {
        assert!(is_error_status("NetStream.Publish.BadName"));
        assert!(is_error_status("NetStream.Publish.Denied"));
        assert!(!is_error_status("NetStream.Publish.Start"));
        assert!(!is_error_status("NetStream.Play.Reset"));
    }
}
