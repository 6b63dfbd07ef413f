//! The RTMP ingest server: a tokio driver around `rml_rtmp`'s sans-IO `Handshake` and
//! `ServerSession`. Only bytes move here; media goes through [`FlvDemuxer`] into a
//! [`Publisher`].
//!
//! Per connection:
//! - the handshake, `connect` and `publish` must complete within `rtmp.handshake_timeout_ms`
//!   (slowloris), and a peer may send at most [`PRE_PUBLISH_MAX_BYTES`] before it publishes;
//! - `connect` is accepted only for the application `rtmp.app`; the publish key is resolved with
//!   [`Config::lookup_key`] (keys are never logged in full); a name that already has a live
//!   publisher is refused with `NetStream.Publish.BadName` and the connection closed;
//! - a publisher that sends no audio/video for `rtmp.idle_timeout_ms` is dropped, as is one
//!   that the API kicks;
//! - reads go through one fixed 64 KiB buffer; `rtmp.max_connections` bounds the connections.
//!
//! `rml_rtmp` 0.8 trusts its input in a few places (it panics on an AMF0 command with fewer than
//! three values or a bare `@setDataFrame`, recurses without limit into nested AMF0 values, and
//! accepts any chunk size). So every byte first goes through an [`InputGuard`]: a second
//! `ChunkDeserializer` (the very same parser, fed the very same bytes, so it sees the same
//! messages) whose messages are checked before the session sees those bytes: chunk size within
//! 1..=16 MiB, AMF0 nesting at most [`MAX_AMF_DEPTH`], commands well-formed and at most
//! [`MAX_COMMANDS`]. Both parsers also run under `catch_unwind`, so a bug left in them closes one
//! connection instead of taking a worker thread down. The price is a second copy of each media
//! message into the guard's buffer, freed at once.
//!
//! Any protocol error ends the connection with one log line (`side="ingest"`, peer, stream when
//! known, the error); a fatal publish error is also recorded on the stream for the API.

use std::future::Future;
use std::io::Cursor;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rml_rtmp::chunk_io::ChunkDeserializer;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::MessagePayload;
use rml_rtmp::rml_amf0::{self, Amf0Value};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::flv::{self, FlvDemuxer, FlvOutput};
use crate::config::{Config, KeyLookup};
use crate::media::{Codec, KickSignal, PublishError, Publisher, Registry};

/// Size of the one read buffer of each connection.
pub const READ_BUF_BYTES: usize = 64 * 1024;
/// Bytes a peer may send after the handshake before its publish is accepted.
pub const PRE_PUBLISH_MAX_BYTES: u64 = 256 * 1024;
/// AMF0 commands (connect, createStream, publish, FCPublish, ...) allowed per connection.
pub const MAX_COMMANDS: u32 = 1_000;
/// Deepest nesting of AMF0 objects/arrays accepted (real clients use 2 or 3).
pub const MAX_AMF_DEPTH: usize = 32;
/// Largest chunk size accepted. The spec allows up to 0x7FFFFFFF, but no message is longer than
/// 0xFFFFFF bytes, so anything above that is equivalent and only sent by broken or hostile peers.
pub const MAX_CHUNK_SIZE: u32 = 0xFF_FFFF;
/// A peer that does not take our (small) responses within this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept RTMP connections forever, each on its own task.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    cfg: Arc<Config>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let max = cfg.rtmp.max_connections.min(Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(side = "ingest", "RTMP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(side = "ingest", %peer,
                    "RTMP connection refused: {max} connections open (rtmp.max_connections)");
                last_refusal_log = Some(Instant::now());
            }
            metrics.rtmp_rejected.fetch_add(1, Relaxed);
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let (registry, cfg, metrics) = (registry.clone(), cfg.clone(), metrics.clone());
        metrics.rtmp_connections.fetch_add(1, Relaxed);
        metrics.rtmp_connections_open.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            if Connection::new(sock, peer, registry, cfg).run().await {
                metrics.rtmp_errors.fetch_add(1, Relaxed);
            }
            metrics.rtmp_connections_open.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
}

/// How a connection ended.
enum End {
    PeerClosed,
    Kicked,
    Error(String),
}

impl From<String> for End {
    fn from(s: String) -> Self {
        End::Error(s)
    }
}

struct Publishing {
    publisher: Publisher,
    demux: FlvDemuxer,
}

struct Connection {
    sock: TcpStream,
    peer: SocketAddr,
    registry: Arc<Registry>,
    cfg: Arc<Config>,
    started: Instant,
    session: Option<ServerSession>,
    guard: InputGuard,
    publishing: Option<Publishing>,
    /// The stream name once a publish key resolved to one (for logs and error records).
    name: Option<String>,
    /// Bytes received after the handshake.
    bytes_in: u64,
    last_media: Instant,
    /// A publisher has been accepted on this connection at some point.
    published: bool,
    out: Vec<u8>,
    /// Resolves when the API kicks the current publisher.
    kicked: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Connection {
    fn new(sock: TcpStream, peer: SocketAddr, registry: Arc<Registry>, cfg: Arc<Config>) -> Self {
        let now = Instant::now();
        Self {
            sock,
            peer,
            registry,
            cfg,
            started: now,
            session: None,
            guard: InputGuard::default(),
            publishing: None,
            name: None,
            bytes_in: 0,
            last_media: now,
            published: false,
            out: Vec::new(),
            kicked: Box::pin(std::future::pending()),
        }
    }

    fn stream_label(&self) -> &str {
        self.name.as_deref().unwrap_or("-")
    }

    /// Drive the connection to its end; true when it ended on an error.
    async fn run(mut self) -> bool {
        tracing::debug!(side = "ingest", peer = %self.peer, "RTMP connection");
        let end = self.drive().await;
        let failed = matches!(end, End::Error(_));
        let (peer, stream) = (self.peer, self.stream_label().to_string());
        match end {
            End::PeerClosed if self.published => {
                tracing::info!(side = "ingest", %peer, %stream, "RTMP connection closed by peer")
            }
            // Port scans, health checks, clients that gave up: not worth an info line.
            End::PeerClosed => {
                tracing::debug!(side = "ingest", %peer, "RTMP connection closed before publishing")
            }
            End::Kicked => {
                tracing::info!(side = "ingest", %peer, %stream, "RTMP publisher disconnected by request")
            }
            End::Error(msg) => {
                tracing::warn!(side = "ingest", %peer, %stream, "RTMP connection closed: {msg}");
                let record = format!("RTMP ingest from {peer}: {msg}");
                if let Some(p) = &self.publishing {
                    p.publisher.fail(record);
                } else if let Some(name) = &self.name {
                    self.registry.record_error(name, record);
                }
            }
        }
        // Dropping the publisher returns the stream to idle.
        self.publishing = None;
        let _ = self.sock.shutdown().await;
        failed
    }

    async fn drive(&mut self) -> End {
        let remaining = match self.handshake().await {
            Ok(Some(r)) => r,
            Ok(None) => return End::PeerClosed,
            Err(e) => return End::Error(e),
        };
        let (session, initial) = match ServerSession::new(ServerSessionConfig::new()) {
            Ok(x) => x,
            Err(e) => return End::Error(format!("RTMP session setup failed: {e}")),
        };
        self.session = Some(session);
        let r = self.handle_results(initial);
        if let Err(e) = self.flush().await {
            return End::Error(e);
        }
        if let Err(e) = r {
            return e;
        }
        if let Err(e) = self.input(&remaining).await {
            return e;
        }
        let mut buf = vec![0u8; READ_BUF_BYTES].into_boxed_slice();
        loop {
            let deadline = self.deadline();
            let n = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.sock.read(&mut buf)) => match r {
                    Err(_) => return End::Error(self.timeout_message()),
                    Ok(Ok(0)) => return End::PeerClosed,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return End::Error(format!("read failed: {e}")),
                },
                _ = &mut self.kicked => return End::Kicked,
            };
            if let Err(e) = self.input(&buf[..n]).await {
                return e;
            }
        }
    }

    /// Until a publish is accepted: the handshake deadline. Then: the idle deadline.
    fn deadline(&self) -> Instant {
        if self.published {
            after(self.last_media, self.cfg.rtmp.idle_timeout_ms)
        } else {
            after(self.started, self.cfg.rtmp.handshake_timeout_ms)
        }
    }

    fn timeout_message(&self) -> String {
        if self.published {
            format!(
                "no audio or video for {} ms (rtmp.idle_timeout_ms)",
                self.cfg.rtmp.idle_timeout_ms
            )
        } else {
            format!(
                "handshake, connect and publish not done within {} ms (rtmp.handshake_timeout_ms)",
                self.cfg.rtmp.handshake_timeout_ms
            )
        }
    }

    /// Returns the bytes that followed the handshake, or None if the peer closed.
    async fn handshake(&mut self) -> Result<Option<Vec<u8>>, String> {
        let mut hs = Handshake::new(PeerType::Server);
        let deadline = after(self.started, self.cfg.rtmp.handshake_timeout_ms);
        let mut buf = [0u8; 4096];
        loop {
            let n = match tokio::time::timeout_at(deadline, self.sock.read(&mut buf)).await {
                Err(_) => return Err(self.timeout_message()),
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("read failed: {e}")),
            };
            let r = catch_unwind(AssertUnwindSafe(|| hs.process_bytes(&buf[..n])))
                .map_err(|_| "RTMP handshake parser failed on malformed input".to_string())?
                .map_err(|e| format!("RTMP handshake failed: {e}"))?;
            match r {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.out.extend_from_slice(&response_bytes);
                    self.flush().await?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    self.out.extend_from_slice(&response_bytes);
                    self.flush().await?;
                    return Ok(Some(remaining_bytes));
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        match tokio::time::timeout(WRITE_TIMEOUT, self.sock.write_all(&out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err("peer does not read our responses".into()),
        }
    }

    /// Feed received bytes through the guard and the session; send what they answer.
    async fn input(&mut self, bytes: &[u8]) -> Result<(), End> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.bytes_in += bytes.len() as u64;
        if !self.published && self.bytes_in > PRE_PUBLISH_MAX_BYTES {
            return Err(End::Error(format!(
                "sent more than {PRE_PUBLISH_MAX_BYTES} bytes without publishing"
            )));
        }
        self.guard.check(bytes)?;
        let Some(session) = self.session.as_mut() else {
            return Err(End::Error("no RTMP session".into()));
        };
        let results = catch_unwind(AssertUnwindSafe(|| session.handle_input(bytes)))
            .map_err(|_| End::Error("RTMP session failed on malformed input".into()))?
            .map_err(|e| End::Error(format!("RTMP protocol error: {e}")))?;
        let r = self.handle_results(results);
        // Send what was produced (a refusal included) before reporting any error.
        self.flush().await?;
        r
    }

    fn handle_results(&mut self, results: Vec<ServerSessionResult>) -> Result<(), End> {
        for r in results {
            match r {
                ServerSessionResult::OutboundResponse(p) => self.out.extend_from_slice(&p.bytes),
                ServerSessionResult::RaisedEvent(ev) => self.handle_event(ev)?,
                ServerSessionResult::UnhandleableMessageReceived(p) => {
                    tracing::trace!(side = "ingest", peer = %self.peer, type_id = p.type_id,
                        "ignored RTMP message");
                }
            }
        }
        Ok(())
    }

    fn session(&mut self) -> Result<&mut ServerSession, End> {
        self.session
            .as_mut()
            .ok_or_else(|| End::Error("no RTMP session".into()))
    }

    fn accept(&mut self, request_id: u32) -> Result<(), End> {
        let results = self
            .session()?
            .accept_request(request_id)
            .map_err(|e| End::Error(format!("RTMP session error: {e}")))?;
        self.handle_results(results)
    }

    /// Send a refusal for the request and end the connection with `log` as the reason.
    fn refuse(
        &mut self,
        request_id: u32,
        code: &str,
        description: &str,
        log: String,
    ) -> Result<(), End> {
        let results = self
            .session()?
            .reject_request(request_id, code, description)
            .map_err(|e| End::Error(format!("RTMP session error: {e}")))?;
        self.handle_results(results)?;
        Err(End::Error(log))
    }

    fn handle_event(&mut self, ev: ServerSessionEvent) -> Result<(), End> {
        match ev {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                let app = app_name
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('/');
                if app != self.cfg.rtmp.app {
                    let shown = printable(app, 64);
                    let description = format!(
                        "unknown application '{shown}': publish to rtmp://HOST/{}/STREAM_KEY",
                        self.cfg.rtmp.app
                    );
                    return self.refuse(
                        request_id,
                        "NetConnection.Connect.Rejected",
                        &description,
                        format!("connect refused: unknown application '{shown}'"),
                    );
                }
                self.accept(request_id)
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => self.publish_requested(request_id, stream_key),
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => self.refuse(
                request_id,
                "NetStream.Play.Failed",
                "this server takes RTMP publishers only; watch over HLS",
                "play request refused: RTMP ingest only".into(),
            ),
            ServerSessionEvent::PublishStreamFinished { .. } => {
                if let Some(p) = self.publishing.take() {
                    tracing::info!(side = "ingest", peer = %self.peer, stream = %p.publisher.name(),
                        "RTMP publisher finished");
                }
                self.kicked = Box::pin(std::future::pending());
                self.last_media = Instant::now();
                Ok(())
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                self.last_media = Instant::now();
                let Some(p) = self.publishing.as_mut() else {
                    return Ok(());
                };
                match p.demux.video(i64::from(timestamp.value), data) {
                    Ok(Some(out)) => {
                        Self::deliver(self.peer, p, out);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(End::Error(e.to_string())),
                }
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                self.last_media = Instant::now();
                if let Some(p) = self.publishing.as_mut() {
                    if let Some(out) = p.demux.audio(i64::from(timestamp.value), data) {
                        Self::deliver(self.peer, p, out);
                    }
                }
                Ok(())
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                tracing::debug!(side = "ingest", peer = %self.peer, stream = %self.stream_label(),
                    encoder = ?metadata.encoder, "stream metadata");
                Ok(())
            }
            ServerSessionEvent::UnhandleableAmf0Command { command_name, .. } => {
                // FCPublish, releaseStream, FCUnpublish, ...: nothing to answer.
                tracing::trace!(side = "ingest", peer = %self.peer,
                    command = %printable(&command_name, 32), "ignored RTMP command");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn deliver(peer: SocketAddr, p: &mut Publishing, out: FlvOutput) {
        if let FlvOutput::Codec(c) = &out {
            let detail = match c {
                Codec::H264(h) => format!("{} {}x{}", h.codec_string(), h.width, h.height),
                Codec::Aac(a) => format!(
                    "{} {} Hz {} ch",
                    a.codec_string(),
                    a.sample_rate,
                    a.channels
                ),
                Codec::Opus(_) => "opus".into(),
            };
            tracing::info!(side = "ingest", %peer, stream = %p.publisher.name(), "track: {detail}");
        }
        flv::deliver(
            &mut p.publisher,
            out,
            SystemTime::now(),
            std::time::Instant::now(),
        );
    }

    fn publish_requested(&mut self, request_id: u32, key: String) -> Result<(), End> {
        const BAD_NAME: &str = "NetStream.Publish.BadName";
        if self.publishing.is_some() {
            return self.refuse(
                request_id,
                BAD_NAME,
                "this connection is already publishing",
                "second publish on one connection refused".into(),
            );
        }
        let name = match self.cfg.lookup_key(&key) {
            KeyLookup::Stream(name) => name.to_string(),
            KeyLookup::Open => key.clone(),
            KeyLookup::Unknown => {
                return self.refuse(
                    request_id,
                    BAD_NAME,
                    "unknown stream key",
                    format!("publish refused: unknown stream key '{}'", redact_key(&key)),
                );
            }
        };
        let control = Arc::new(KickSignal::default());
        match self
            .registry
            .begin_publish(&name, self.peer.to_string(), control.clone())
        {
            Ok(publisher) => {
                self.name = Some(name.clone());
                self.kicked = Box::pin(async move { control.kicked().await });
                self.publishing = Some(Publishing {
                    publisher,
                    demux: FlvDemuxer::new(),
                });
                self.published = true;
                self.last_media = Instant::now();
                tracing::info!(side = "ingest", peer = %self.peer, stream = %name, "RTMP publish started");
                self.accept(request_id)
            }
            Err(PublishError::AlreadyPublishing(_)) => {
                self.name = Some(name.clone());
                self.refuse(
                    request_id,
                    BAD_NAME,
                    &format!("stream '{name}' already has a live publisher"),
                    format!("publish refused: stream '{name}' already has a live publisher"),
                )
            }
            Err(PublishError::BadName(_)) => {
                let shown = printable(&name, 64);
                self.refuse(
                    request_id,
                    BAD_NAME,
                    "invalid stream name: use letters, digits, '-', '_' and '.'",
                    format!("publish refused: invalid stream name '{shown}'"),
                )
            }
            Err(PublishError::UnknownKey) => self.refuse(
                request_id,
                BAD_NAME,
                "unknown stream key",
                format!("publish refused: unknown stream key '{}'", redact_key(&key)),
            ),
        }
    }
}

/// `t` plus `ms` milliseconds, saturating (a huge configured timeout means "practically never").
fn after(t: Instant, ms: u64) -> Instant {
    t.checked_add(Duration::from_millis(ms))
        .unwrap_or_else(|| t + Duration::from_secs(100 * 365 * 86_400))
}

/// The first two characters of a key and an ellipsis: enough to tell keys apart in a log,
/// not enough to publish with.
fn redact_key(key: &str) -> String {
    let head: String = key.chars().take(2).filter(|c| !c.is_control()).collect();
    format!("{head}…")
}

/// Peer-supplied text for a log line: control characters escaped, length capped.
fn printable(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).flat_map(char::escape_debug).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// Checks the chunk stream before `ServerSession` parses it (see the module doc).
struct InputGuard {
    deser: ChunkDeserializer,
    commands: u32,
}

impl Default for InputGuard {
    fn default() -> Self {
        Self {
            deser: ChunkDeserializer::new(),
            commands: 0,
        }
    }
}

impl InputGuard {
    fn check(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut input = bytes;
        loop {
            let deser = &mut self.deser;
            let next = catch_unwind(AssertUnwindSafe(|| deser.get_next_message(input)))
                .map_err(|_| "malformed RTMP chunk stream".to_string())?
                .map_err(|e| format!("RTMP chunk error: {e}"))?;
            input = &[];
            match next {
                None => return Ok(()),
                Some(msg) => self.inspect(&msg)?,
            }
        }
    }

    fn inspect(&mut self, msg: &MessagePayload) -> Result<(), String> {
        match msg.type_id {
            // Set Chunk Size: applies to the peer's following chunks.
            1 if msg.data.len() >= 4 => {
                let size = u32::from_be_bytes([msg.data[0], msg.data[1], msg.data[2], msg.data[3]]);
                if size == 0 || size > MAX_CHUNK_SIZE {
                    return Err(format!(
                        "invalid RTMP chunk size {size} (accepted: 1..={MAX_CHUNK_SIZE})"
                    ));
                }
                self.deser
                    .set_max_chunk_size(size as usize)
                    .map_err(|e| format!("RTMP chunk error: {e}"))
            }
            // AMF0 (and AMF3-flagged, which rml_rtmp reads as AMF0) commands and data.
            15 | 17 | 18 | 20 => {
                let data = if msg.type_id == 17 && msg.data.first() == Some(&0) {
                    &msg.data[1..]
                } else {
                    &msg.data[..]
                };
                if amf0_depth_exceeds(data, MAX_AMF_DEPTH) {
                    return Err(format!(
                        "AMF0 values nested deeper than {MAX_AMF_DEPTH} levels"
                    ));
                }
                // Not deep, so safe to decode; undecodable input is left to the session, which
                // reports it as an error.
                let Ok(values) = rml_amf0::deserialize(&mut Cursor::new(data)) else {
                    return Ok(());
                };
                if matches!(msg.type_id, 17 | 20) {
                    self.commands += 1;
                    if self.commands > MAX_COMMANDS {
                        return Err(format!("more than {MAX_COMMANDS} RTMP commands"));
                    }
                    if values.len() < 3 {
                        return Err("malformed RTMP command (fewer than 3 AMF0 values)".into());
                    }
                } else if matches!(values.first(), Some(Amf0Value::Utf8String(s)) if s == "@setDataFrame")
                    && values.len() < 3
                {
                    return Err("malformed @setDataFrame message".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Whether AMF0 values in `data`, read the way `rml_amf0` reads them, nest containers deeper than
/// `limit`. Iterative, so hostile input cannot exhaust the stack here. Wherever `rml_amf0` would
/// stop with an error, the scan stops too; it never stops earlier, so its depth is an upper
/// bound of the recursion depth `rml_amf0` reaches.
fn amf0_depth_exceeds(data: &[u8], limit: usize) -> bool {
    enum Ctx {
        Object,
        Array(u32),
    }
    let mut stack: Vec<Ctx> = Vec::new();
    let mut p = 0usize;
    let be_u16 = |p: usize| {
        data.get(p..p + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let be_u32 = |p: usize| {
        data.get(p..p + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    loop {
        // Read one value marker where the grammar expects a value.
        let marker = match stack.last_mut() {
            None => match data.get(p) {
                None | Some(0x09) => return false,
                Some(&m) => m,
            },
            Some(Ctx::Object) => {
                let Some(label) = be_u16(p) else { return false };
                p += 2;
                if label == 0 {
                    // Object end: 00 00 09.
                    if data.get(p) != Some(&0x09) {
                        return false;
                    }
                    p += 1;
                    stack.pop();
                    continue;
                }
                p = (p + label).min(data.len());
                match data.get(p) {
                    None | Some(0x09) => return false,
                    Some(&m) => m,
                }
            }
            Some(Ctx::Array(n)) => {
                if *n == 0 {
                    stack.pop();
                    continue;
                }
                *n -= 1;
                match data.get(p) {
                    None | Some(0x09) => {
                        // rml_amf0 ends the array here.
                        p += usize::from(data.get(p).is_some());
                        stack.pop();
                        continue;
                    }
                    Some(&m) => m,
                }
            }
        };
        p += 1;
        match marker {
            0x00 => {
                if p + 8 > data.len() {
                    return false;
                }
                p += 8;
            }
            0x01 => {
                if p >= data.len() {
                    return false;
                }
                p += 1;
            }
            0x02 => {
                let Some(len) = be_u16(p) else { return false };
                p = (p + 2 + len).min(data.len());
            }
            0x05 | 0x06 => {}
            0x03 => stack.push(Ctx::Object),
            0x08 => {
                if be_u32(p).is_none() {
                    return false;
                }
                p += 4;
                stack.push(Ctx::Object);
            }
            0x0a => {
                let Some(n) = be_u32(p) else { return false };
                p += 4;
                stack.push(Ctx::Array(n));
            }
            // Unknown to rml_amf0: it stops with an error.
            _ => return false,
        }
        if stack.len() > limit {
            return true;
        }
    }
}

/// Fuzzing entry point: run post-handshake bytes through the input guard and an RTMP server
/// session exactly as a connection does (no socket). The first byte picks how the rest is split
/// into reads. Must never panic or abort.
#[doc(hidden)]
pub fn fuzz_session_input(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let step = (split as usize % 64) + 1;
    let mut guard = InputGuard::default();
    let Ok((mut session, _)) = ServerSession::new(ServerSessionConfig::new()) else {
        return;
    };
    for chunk in rest.chunks(step) {
        if guard.check(chunk).is_err() {
            return;
        }
        match catch_unwind(AssertUnwindSafe(|| session.handle_input(chunk))) {
            Ok(Ok(results)) => {
                for r in results {
                    if let ServerSessionResult::RaisedEvent(
                        ServerSessionEvent::PublishStreamRequested { request_id, .. },
                    ) = r
                    {
                        let _ = session.accept_request(request_id);
                    }
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::flv::tests::{aac_frame, aac_seq_header, avc_frame, avc_seq_header};
    use crate::media::{MediaEvent, StreamState, TrackKind};
    use bytes::Bytes;
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType,
    };
    use rml_rtmp::time::RtmpTimestamp;

    const STEP: Duration = Duration::from_secs(5);

    async fn start(cfg: Config) -> (SocketAddr, Arc<Registry>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reg = Registry::new();
        tokio::spawn(serve(
            listener,
            reg.clone(),
            Arc::new(cfg),
            Default::default(),
        ));
        (addr, reg)
    }

    fn cfg() -> Config {
        let mut c = Config::default();
        c.rtmp.handshake_timeout_ms = 2_000;
        c.rtmp.idle_timeout_ms = 2_000;
        c
    }

    /// A TCP connection that completed the RTMP handshake with rml_rtmp's client side.
    async fn handshaken(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let mut hs = Handshake::new(PeerType::Client);
        sock.write_all(&hs.generate_outbound_p0_and_p1().unwrap())
            .await
            .unwrap();
        let mut buf = vec![0u8; 8192];
        loop {
            let n = tokio::time::timeout(STEP, sock.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "server closed during the handshake");
            match hs.process_bytes(&buf[..n]).unwrap() {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    sock.write_all(&response_bytes).await.unwrap();
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    sock.write_all(&response_bytes).await.unwrap();
                    return (sock, remaining_bytes);
                }
            }
        }
    }

    /// Wait until the server closes the connection (reads, discarding, until EOF or reset).
    async fn closed_by_server(sock: &mut TcpStream) -> bool {
        let mut buf = vec![0u8; 8192];
        loop {
            match tokio::time::timeout(STEP, sock.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    struct Client {
        sock: TcpStream,
        session: ClientSession,
    }

    impl Client {
        async fn connect(addr: SocketAddr, app: &str) -> Result<Self, String> {
            let (sock, rest) = handshaken(addr).await;
            let (session, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
            let mut c = Client { sock, session };
            c.feed(&rest).await?;
            let r = c.session.request_connection(app.into()).unwrap();
            c.send(r).await;
            c.wait(|e| matches!(e, ClientSessionEvent::ConnectionRequestAccepted))
                .await?;
            Ok(c)
        }

        async fn publish(&mut self, key: &str) -> Result<(), String> {
            let r = self
                .session
                .request_publishing(key.into(), PublishRequestType::Live)
                .unwrap();
            self.send(r).await;
            self.wait(|e| matches!(e, ClientSessionEvent::PublishRequestAccepted))
                .await
        }

        async fn send(&mut self, r: ClientSessionResult) {
            if let ClientSessionResult::OutboundResponse(p) = r {
                let _ = self.sock.write_all(&p.bytes).await;
            }
        }

        async fn feed(&mut self, bytes: &[u8]) -> Result<Vec<ClientSessionEvent>, String> {
            let mut events = Vec::new();
            for r in self
                .session
                .handle_input(bytes)
                .map_err(|e| e.to_string())?
            {
                match r {
                    ClientSessionResult::RaisedEvent(e) => events.push(e),
                    other => self.send(other).await,
                }
            }
            Ok(events)
        }

        /// Read until an event matches; a refusal or a close is an error with its description.
        async fn wait(&mut self, want: impl Fn(&ClientSessionEvent) -> bool) -> Result<(), String> {
            let mut buf = vec![0u8; 8192];
            loop {
                let n = match tokio::time::timeout(STEP, self.sock.read(&mut buf)).await {
                    Err(_) => return Err("timeout".into()),
                    Ok(Ok(0)) | Ok(Err(_)) => return Err("closed".into()),
                    Ok(Ok(n)) => n,
                };
                for e in self.feed(&buf[..n]).await? {
                    if want(&e) {
                        return Ok(());
                    }
                    match e {
                        ClientSessionEvent::ConnectionRequestRejected { description } => {
                            return Err(description)
                        }
                        ClientSessionEvent::UnknownTransactionResultReceived {
                            additional_values,
                            ..
                        } => {
                            for v in additional_values {
                                if let Some(mut p) = v.get_object_properties() {
                                    if let Some(Amf0Value::Utf8String(d)) = p.remove("description")
                                    {
                                        return Err(d);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }

        async fn video(&mut self, ts: u32, body: Bytes) {
            let r = self
                .session
                .publish_video_data(body, RtmpTimestamp::new(ts), false)
                .unwrap();
            self.send(r).await;
        }

        async fn audio(&mut self, ts: u32, body: Bytes) {
            let r = self
                .session
                .publish_audio_data(body, RtmpTimestamp::new(ts), false)
                .unwrap();
            self.send(r).await;
        }

        /// Sequence headers, then a keyframe and two more frames.
        async fn send_media(&mut self) {
            self.video(0, avc_seq_header()).await;
            self.audio(0, aac_seq_header()).await;
            self.video(0, avc_frame(true, 0, 5)).await;
            self.audio(10, aac_frame()).await;
            self.video(33, avc_frame(false, 0, 1)).await;
            self.audio(31, aac_frame()).await;
            self.video(66, avc_frame(false, 0, 1)).await;
        }
    }

    async fn frames_arrive(
        rx: &crossbeam_channel::Receiver<crate::media::Envelope>,
        stream: &str,
        n: usize,
    ) -> bool {
        let until = Instant::now() + STEP;
        let mut seen = 0;
        while Instant::now() < until {
            for e in rx.try_iter() {
                if &*e.stream == stream && matches!(e.event, MediaEvent::Frame(_)) {
                    seen += 1;
                }
            }
            if seen >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// A good publisher after a bad one: the server and the registry are unharmed.
    async fn good_publisher_works(addr: SocketAddr, reg: &Arc<Registry>, key: &str) -> Client {
        let rx = reg.add_sink("test", 1024);
        let mut c = Client::connect(addr, "live").await.unwrap();
        c.publish(key).await.unwrap();
        c.send_media().await;
        assert!(
            frames_arrive(&rx, key, 5).await,
            "no frames from the good publisher"
        );
        let st = reg.get(key).unwrap().status();
        assert_eq!(st.state, StreamState::Publishing);
        assert_eq!(st.tracks.len(), 2, "{st:?}");
        c
    }

    #[tokio::test]
    async fn publishes_frames_into_the_registry() {
        let (addr, reg) = start(cfg()).await;
        let rx = reg.add_sink("test", 1024);
        let mut c = Client::connect(addr, "live").await.unwrap();
        c.publish("show").await.unwrap();
        c.send_media().await;
        assert!(frames_arrive(&rx, "show", 5).await);
        let (tracks, gop) = reg.get("show").unwrap().gop_snapshot();
        let tracks = tracks.unwrap();
        assert_eq!(tracks.h264().unwrap().width, 640);
        assert_eq!(tracks.aac().unwrap().sample_rate, 48000);
        assert!(gop[0].keyframe && gop[0].kind == TrackKind::Video);
        // Leaving returns the stream to idle.
        drop(c);
        let until = Instant::now() + STEP;
        while reg.get("show").unwrap().state() != StreamState::Idle && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(reg.get("show").unwrap().state(), StreamState::Idle);
    }

    #[tokio::test]
    async fn garbage_after_handshake_closes_only_that_connection() {
        let (addr, reg) = start(cfg()).await;
        let (mut sock, _) = handshaken(addr).await;
        // A type-3 chunk on a chunk stream that never had a type-0 header, then noise.
        sock.write_all(&[0xc5, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x13, 0x37])
            .await
            .unwrap();
        assert!(closed_by_server(&mut sock).await);
        good_publisher_works(addr, &reg, "after-garbage").await;
    }

    /// A Set Chunk Size message (type 1) on chunk stream 2.
    fn set_chunk_size(size: u32) -> Vec<u8> {
        let mut v = vec![0x02, 0, 0, 0, 0, 0, 4, 0x01, 0, 0, 0, 0];
        v.extend(size.to_be_bytes());
        v
    }

    #[tokio::test]
    async fn absurd_chunk_sizes_are_refused() {
        let (addr, reg) = start(cfg()).await;
        for size in [0u32, 0x7FFF_FFFF, 0x1000_0000] {
            let (mut sock, _) = handshaken(addr).await;
            sock.write_all(&set_chunk_size(size)).await.unwrap();
            // Then a message that would be read with that chunk size.
            sock.write_all(&[0x03, 0, 0, 0, 0, 0, 200, 20, 0, 0, 0, 0])
                .await
                .unwrap();
            sock.write_all(&[0x41; 200]).await.unwrap();
            assert!(closed_by_server(&mut sock).await, "chunk size {size}");
        }
        // A sane one is fine.
        assert_eq!(InputGuard::default().check(&set_chunk_size(4096)), Ok(()));
        good_publisher_works(addr, &reg, "after-chunk-size").await;
    }

    #[tokio::test]
    async fn truncated_chunk_then_eof() {
        let (addr, reg) = start(cfg()).await;
        let (mut sock, _) = handshaken(addr).await;
        // Header of a 1000-byte AMF0 command, 10 bytes of it, then EOF.
        sock.write_all(&[0x03, 0, 0, 0, 0, 0x03, 0xe8, 20, 0, 0, 0, 0])
            .await
            .unwrap();
        sock.write_all(&[0x02; 10]).await.unwrap();
        sock.shutdown().await.unwrap();
        assert!(closed_by_server(&mut sock).await);
        good_publisher_works(addr, &reg, "after-truncation").await;
    }

    /// An AMF0 command message (type 20) on chunk stream 3, in chunks of 128 bytes (the initial
    /// chunk size): a type-0 header, then type-3 continuation headers.
    fn amf_command(payload: &[u8]) -> Vec<u8> {
        let l = payload.len() as u32;
        let mut v = vec![
            0x03,
            0,
            0,
            0,
            (l >> 16) as u8,
            (l >> 8) as u8,
            l as u8,
            20,
            0,
            0,
            0,
            0,
        ];
        for (i, c) in payload.chunks(128).enumerate() {
            if i > 0 {
                v.push(0xc3);
            }
            v.extend_from_slice(c);
        }
        v
    }

    #[tokio::test]
    async fn inputs_that_crash_rml_rtmp_are_refused() {
        let (addr, reg) = start(cfg()).await;
        // A command with a single AMF0 value (rml_rtmp would panic on `drain(..3)`).
        let (mut sock, _) = handshaken(addr).await;
        sock.write_all(&amf_command(&[
            0x02, 0, 7, b'c', b'o', b'n', b'n', b'e', b'c', b't',
        ]))
        .await
        .unwrap();
        assert!(closed_by_server(&mut sock).await);
        // "@setDataFrame" alone (rml_rtmp would index past its argument list).
        let (mut sock, _) = handshaken(addr).await;
        let mut data = vec![0x02, 0, 13];
        data.extend_from_slice(b"@setDataFrame");
        let mut msg = amf_command(&data);
        msg[7] = 18;
        sock.write_all(&msg).await.unwrap();
        assert!(closed_by_server(&mut sock).await);
        // Deep nesting (rml_amf0 would recurse 20,000 levels deep and overflow the stack).
        let depth = 20_000usize;
        let mut payload = Vec::new();
        for _ in 0..depth {
            payload.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        let (mut sock, _) = handshaken(addr).await;
        let _ = sock.write_all(&amf_command(&payload)).await;
        assert!(closed_by_server(&mut sock).await);
        good_publisher_works(addr, &reg, "after-crashers").await;
    }

    #[test]
    fn guard_names_what_it_refuses() {
        let err = |bytes: &[u8]| InputGuard::default().check(bytes).unwrap_err();
        assert_eq!(
            err(&set_chunk_size(0)),
            "invalid RTMP chunk size 0 (accepted: 1..=16777215)"
        );
        assert!(err(&set_chunk_size(0x7FFF_FFFF)).contains("2147483647"));
        assert!(err(&[0xc5, 1, 2, 3]).contains("non-zero chunk type"));
        let connect_only = amf_command(&[0x02, 0, 7, b'c', b'o', b'n', b'n', b'e', b'c', b't']);
        assert!(err(&connect_only).contains("fewer than 3"));
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        assert!(err(&amf_command(&deep)).contains("nested deeper"));
        // Chunk size changes apply to the guard's own parser: a 200-byte message in one chunk.
        let mut g = InputGuard::default();
        g.check(&set_chunk_size(4096)).unwrap();
        let mut big = vec![0x03, 0, 0, 0, 0, 0, 200, 9, 1, 0, 0, 0];
        big.extend([0x17; 200]);
        g.check(&big).unwrap();
        // Command limit.
        let mut g = InputGuard::default();
        let mut cmd = vec![0x02, 0, 1, b'x', 0x00];
        cmd.extend_from_slice(&1f64.to_be_bytes());
        cmd.push(0x05);
        let one = amf_command(&cmd);
        for _ in 0..MAX_COMMANDS {
            g.check(&one).unwrap();
        }
        assert!(g.check(&one).unwrap_err().contains("more than 1000"));
    }

    #[test]
    fn amf_depth_scan() {
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend_from_slice(&[0x03, 0, 1, b'k']);
        }
        assert!(amf0_depth_exceeds(&deep, 32));
        assert!(!amf0_depth_exceeds(&deep, 40));
        // connect-like command: string, number, object {app: "live"}, end.
        let mut cmd = vec![0x02, 0, 7];
        cmd.extend_from_slice(b"connect");
        cmd.push(0x00);
        cmd.extend_from_slice(&1f64.to_be_bytes());
        cmd.extend_from_slice(&[
            0x03, 0, 3, b'a', b'p', b'p', 0x02, 0, 4, b'l', b'i', b'v', b'e', 0, 0, 9,
        ]);
        assert!(!amf0_depth_exceeds(&cmd, 1));
        // ECMA arrays and strict arrays nest too; an array ends at its count.
        let arrays = [
            0x0a, 0, 0, 0, 1, 0x0a, 0, 0, 0, 1, 0x08, 0, 0, 0, 0, 0, 1, b'x', 0x05, 0, 0, 9,
        ];
        assert!(amf0_depth_exceeds(&arrays, 2));
        assert!(!amf0_depth_exceeds(&arrays, 3));
        let siblings = [0x0a, 0, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0];
        assert!(!amf0_depth_exceeds(&siblings, 2));
        // Random input: no panic, and bounded.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..20_000 {
            let v: Vec<u8> = (0..rng.random_range(0..64))
                .map(|_| {
                    [0x00, 0x01, 0x02, 0x03, 0x05, 0x08, 0x09, 0x0a, rng.random()]
                        [rng.random_range(0..9)]
                })
                .collect();
            let _ = amf0_depth_exceeds(&v, 8);
        }
    }

    #[tokio::test]
    async fn wrong_app_and_unknown_key_are_refused() {
        let mut c = cfg();
        c.streams = vec![crate::config::StreamConfig {
            name: "town-hall".into(),
            keys: vec!["s3cret-key".into()],
            provider: None,
            pull: None,
        }];
        let (addr, reg) = start(c).await;
        let e = Client::connect(addr, "other").await.err().unwrap();
        assert!(e.contains("unknown application 'other'"), "{e}");
        let mut cl = Client::connect(addr, "live").await.unwrap();
        let e = cl.publish("town-hall").await.unwrap_err();
        assert_eq!(e, "unknown stream key");
        assert!(closed_by_server(&mut cl.sock).await);
        assert!(reg.get("town-hall").is_none());
        // The configured key publishes under the public name.
        let rx = reg.add_sink("t", 1024);
        let mut cl = Client::connect(addr, "live/").await.unwrap();
        cl.publish("s3cret-key").await.unwrap();
        cl.send_media().await;
        assert!(frames_arrive(&rx, "town-hall", 5).await);
        assert_eq!(redact_key("s3cret-key"), "s3…");
    }

    #[tokio::test]
    async fn second_publisher_is_refused_and_recorded() {
        let (addr, reg) = start(cfg()).await;
        let _first = good_publisher_works(addr, &reg, "dup").await;
        let mut second = Client::connect(addr, "live").await.unwrap();
        let e = second.publish("dup").await.unwrap_err();
        assert!(e.contains("already has a live publisher"), "{e}");
        assert!(closed_by_server(&mut second.sock).await);
        let st = reg.get("dup").unwrap().status();
        assert_eq!(st.state, StreamState::Publishing);
        assert!(st
            .last_error
            .unwrap()
            .contains("already has a live publisher"));
    }

    #[tokio::test]
    async fn unsupported_video_codec_fails_the_publish() {
        let (addr, reg) = start(cfg()).await;
        let mut c = Client::connect(addr, "live").await.unwrap();
        c.publish("vp6").await.unwrap();
        c.video(0, Bytes::from_static(&[0x14, 0, 0, 0, 0])).await;
        assert!(closed_by_server(&mut c.sock).await);
        let st = reg.get("vp6").unwrap().status();
        assert!(st.last_error.unwrap().contains("On2 VP6"));
        assert_eq!(st.state, StreamState::Idle);
        // MP3 audio: refused as a track, video goes on.
        let rx = reg.add_sink("t", 1024);
        let mut c = Client::connect(addr, "live").await.unwrap();
        c.publish("mp3").await.unwrap();
        c.video(0, avc_seq_header()).await;
        c.audio(0, Bytes::from_static(&[0x2f, 0xff, 0xfb])).await;
        c.video(0, avc_frame(true, 0, 5)).await;
        c.video(33, avc_frame(false, 0, 1)).await;
        assert!(frames_arrive(&rx, "mp3", 2).await);
        let st = reg.get("mp3").unwrap().status();
        assert!(st.track_errors[0].contains("MP3"), "{st:?}");
    }

    #[tokio::test]
    async fn connection_limit() {
        let mut c = cfg();
        c.rtmp.handshake_timeout_ms = 10_000;
        c.rtmp.max_connections = 2;
        let (addr, reg) = start(c).await;
        // Two held (silent), the third is closed at once, long before any timeout.
        let a = TcpStream::connect(addr).await.unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        assert!(closed_by_server(&mut third).await);
        assert!(t.elapsed() < Duration::from_secs(2));
        // Slots come back when connections end.
        drop((a, b));
        tokio::time::sleep(Duration::from_millis(200)).await;
        good_publisher_works(addr, &reg, "after-limit").await;
    }

    #[tokio::test]
    async fn timeouts_and_kicks() {
        let mut c = cfg();
        c.rtmp.handshake_timeout_ms = 200;
        c.rtmp.idle_timeout_ms = 300;
        let (addr, reg) = start(c).await;
        // Slowloris: connects and sends one byte.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(&[3]).await.unwrap();
        let t = Instant::now();
        assert!(closed_by_server(&mut slow).await);
        assert!(t.elapsed() < Duration::from_secs(2));
        // Idle publisher: publishes, sends nothing.
        let mut idle = Client::connect(addr, "live").await.unwrap();
        idle.publish("quiet").await.unwrap();
        assert!(closed_by_server(&mut idle.sock).await);
        let st = reg.get("quiet").unwrap().status();
        assert_eq!(st.state, StreamState::Idle);
        assert!(st.last_error.unwrap().contains("idle_timeout_ms"));
        // Kick: the API asks the publisher to leave.
        let mut k = Client::connect(addr, "live").await.unwrap();
        k.publish("kickme").await.unwrap();
        k.video(0, avc_seq_header()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        reg.get("kickme").unwrap().kick();
        assert!(closed_by_server(&mut k.sock).await);
        assert_eq!(reg.get("kickme").unwrap().state(), StreamState::Idle);
    }

    /// A real encoder: ffmpeg publishes the demo clip (skipped where ffmpeg is not installed).
    #[tokio::test]
    async fn ffmpeg_publishes() {
        if std::process::Command::new("ffmpeg")
            .arg("-version")
            .output()
            .is_err()
        {
            eprintln!("ffmpeg not installed; skipping");
            return;
        }
        let (addr, reg) = start(cfg()).await;
        let rx = reg.add_sink("t", 4096);
        let clip = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.flv");
        let url = format!("rtmp://{addr}/live/from-ffmpeg");
        let run = tokio::task::spawn_blocking(move || {
            std::process::Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-re", "-i", clip])
                .args(["-t", "1.5", "-c", "copy", "-f", "flv", &url])
                .status()
        });
        let status = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(status.success(), "ffmpeg failed: {status}");
        let frames: Vec<_> = rx
            .try_iter()
            .filter_map(|e| match e.event {
                MediaEvent::Frame(f) => Some(f),
                _ => None,
            })
            .collect();
        let video = frames.iter().filter(|f| f.kind == TrackKind::Video).count();
        let audio = frames.len() - video;
        assert!(video >= 40 && audio >= 60, "video {video} audio {audio}");
        let tracks = reg.get("from-ffmpeg").unwrap().tracks().unwrap();
        assert_eq!(
            (tracks.h264().unwrap().width, tracks.h264().unwrap().height),
            (640, 360)
        );
    }
}
