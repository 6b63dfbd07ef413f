//! The stream registry: named live programs, their lifecycle, their monotonic timeline, their GOP
//! cache, and the fan-out of media events to every egress engine ("sink").
//!
//! Ingest drivers hold a [`Publisher`]; egress engines hold a sink receiver. A sink is a bounded
//! channel: when an egress falls behind it loses frames (for that stream, up to the next keyframe),
//! never stalls the publisher and never grows memory. Control events (track changes, idle, ended)
//! use a reserve at the top of each channel so they are not lost to a full queue of frames.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use super::control::PublisherControl;
use super::frame::{Frame, TrackKind, CLOCK_HZ};
use super::track::{Codec, TrackSet};

/// Slots at the top of every sink channel kept for control events.
const CONTROL_RESERVE: usize = 16;
/// Most bytes a GOP cache holds; a longer GOP is not cached (late joiners wait for a keyframe).
const GOP_CACHE_MAX_BYTES: usize = 24 << 20;
/// Audio kept for late joiners of an audio-only stream.
const AUDIO_ONLY_CACHE: usize = 64;
/// A forward timestamp jump larger than this is treated as a source discontinuity.
const MAX_FORWARD_JUMP: i64 = 10 * CLOCK_HZ;
/// Gap left between the end of one publisher session and the start of the next.
const RESUME_GAP: i64 = CLOCK_HZ / 30;

/// What travels from the media core to an egress engine.
#[derive(Clone, Debug)]
pub enum MediaEvent {
    /// A publisher session started or its codec parameters changed. Comes before its frames.
    Tracks(Arc<TrackSet>),
    Frame(Arc<Frame>),
    /// The publisher left; the stream may resume with the same name.
    Idle,
    /// The stream was removed.
    Ended,
    /// A frame of a lower simulcast layer of the video track (the stream's own video track is
    /// layer 0, the best one). Only sinks registered with [`Registry::add_layered_sink`] get these.
    Layer(Arc<LayerFrame>),
}

/// A frame of simulcast layer `layer` (≥ 1), on the stream clock like layer 0's frames.
#[derive(Debug)]
pub struct LayerFrame {
    pub layer: u8,
    /// The publisher session (`TrackSet::session`) it belongs to.
    pub session: u64,
    /// The layer's codec parameters (the same `Arc` until they change).
    pub codec: Arc<Codec>,
    pub frame: Frame,
}

/// A media event tagged with its stream.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub stream: Arc<str>,
    pub event: MediaEvent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamState {
    Publishing,
    Idle,
    Ended,
}

/// Why a publish was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("stream '{0}' already has a live publisher")]
    AlreadyPublishing(String),
    #[error("unknown stream key")]
    UnknownKey,
    #[error("stream name '{0}' is not valid")]
    BadName(String),
}

struct SinkEntry {
    id: usize,
    name: &'static str,
    tx: Sender<Envelope>,
    capacity: usize,
    /// Wants [`MediaEvent::Layer`] events (simulcast layers below the primary).
    layers: bool,
}

/// Per stream, per sink delivery state.
#[derive(Default, Clone, Copy)]
struct SinkLag {
    /// Dropping frames until the next keyframe.
    lagging: bool,
    /// The sink missed a `Tracks` event and must get the current one before its next frame.
    need_tracks: bool,
}

#[derive(Default)]
struct Timeline {
    /// Offset from the publisher's clock to the stream clock for this session.
    offset: Option<i64>,
    last_dts: [Option<i64>; 2],
    /// Largest end time seen on the stream clock (dts + an estimated duration).
    max_end: i64,
    last_delta: [i64; 2],
}

fn idx(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

impl Timeline {
    /// Map a publisher timestamp to the stream timeline, keeping it monotonic per track and
    /// rebasing on backward jumps, wraps and large forward jumps.
    fn map(&mut self, kind: TrackKind, dts: i64) -> i64 {
        let i = idx(kind);
        let offset = match self.offset {
            Some(o) => o,
            None => {
                let o = self.max_end - dts;
                self.offset = Some(o);
                o
            }
        };
        let mut out = dts + offset;
        if let Some(last) = self.last_dts[i] {
            if out < last || out > self.max_end + MAX_FORWARD_JUMP {
                let step = self.last_delta[i].clamp(1, CLOCK_HZ / 10);
                let target = last + step;
                self.offset = Some(target - dts);
                out = target;
            } else if out > last {
                self.last_delta[i] = out - last;
            }
        }
        self.last_dts[i] = Some(out);
        let est = if self.last_delta[i] > 0 {
            self.last_delta[i]
        } else {
            CLOCK_HZ / 50
        };
        self.max_end = self.max_end.max(out + est);
        out
    }

    fn new_session(&mut self) {
        self.offset = None;
        self.last_dts = [None, None];
        self.max_end += RESUME_GAP;
    }
}

/// Public statistics of a stream, as served by the API.
#[derive(Clone, Debug, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub state: StreamState,
    pub tracks: Vec<TrackStatus>,
    pub publisher: Option<String>,
    pub sessions: u64,
    pub uptime_secs: Option<f64>,
    pub bitrate_bps: u64,
    pub bytes_in: u64,
    pub frames_in: u64,
    pub last_error: Option<String>,
    pub track_errors: Vec<String>,
    /// Simulcast layers of the video track seen in this session (1 without simulcast).
    pub video_layers: u8,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrackStatus {
    pub kind: &'static str,
    pub codec: &'static str,
    pub codec_string: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
}

impl TrackStatus {
    fn of(c: &Codec) -> Self {
        let mut t = TrackStatus {
            kind: match c.kind() {
                TrackKind::Video => "video",
                TrackKind::Audio => "audio",
            },
            codec: c.name(),
            codec_string: c.codec_string(),
            width: None,
            height: None,
            sample_rate: None,
            channels: None,
        };
        match c {
            Codec::H264(p) => {
                t.width = Some(p.width);
                t.height = Some(p.height);
            }
            Codec::Aac(p) => {
                t.sample_rate = Some(p.sample_rate);
                t.channels = Some(p.channels);
            }
            Codec::Opus(p) => {
                t.sample_rate = Some(p.sample_rate);
                t.channels = Some(p.channels);
            }
        }
        t
    }
}

struct Inner {
    state: StreamState,
    tracks: Option<Arc<TrackSet>>,
    sessions: u64,
    /// Counts announced `TrackSet`s over the stream's life.
    track_epoch: u64,
    publisher: Option<String>,
    publishing_since: Option<Instant>,
    timeline: Timeline,
    gop: Vec<Arc<Frame>>,
    gop_bytes: usize,
    /// Frames are being cached (false after the cache overflowed, until the next keyframe).
    gop_valid: bool,
    lag: HashMap<usize, SinkLag>,
    last_error: Option<String>,
    track_errors: Vec<String>,
    rate_bucket_start: Option<Instant>,
    rate_bucket_bytes: u64,
    bitrate_bps: u64,
    /// The current publisher's control handle (see [`crate::media::control`]).
    control: Option<Arc<dyn PublisherControl>>,
}

/// One named live program.
pub struct Stream {
    name: Arc<str>,
    inner: Mutex<Inner>,
    bytes_in: AtomicU64,
    frames_in: AtomicU64,
    /// Highest simulcast layer seen this session + 1 (1: no simulcast).
    layers: AtomicU8,
}

impl Stream {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> StreamState {
        self.inner.lock().state
    }

    pub fn tracks(&self) -> Option<Arc<TrackSet>> {
        self.inner.lock().tracks.clone()
    }

    /// The codec parameters and frames from the last keyframe on, for a late joiner.
    pub fn gop_snapshot(&self) -> (Option<Arc<TrackSet>>, Vec<Arc<Frame>>) {
        let g = self.inner.lock();
        let frames = if g.gop_valid {
            g.gop.clone()
        } else {
            Vec::new()
        };
        (g.tracks.clone(), frames)
    }

    /// The current publisher's control handle, if one is publishing.
    fn control(&self) -> Option<Arc<dyn PublisherControl>> {
        self.inner.lock().control.clone()
    }

    /// Ask the current publisher (if any) to disconnect; false when none is publishing.
    pub fn kick(&self) -> bool {
        // Called outside the stream lock: the publisher's leaving takes it.
        self.control().map(|c| c.kick()).is_some()
    }

    /// Ask the current publisher (if any) for a keyframe of simulcast layer `layer` (0: the
    /// video track); it paces the requests it sends. False when none is publishing.
    pub fn request_keyframe(&self, layer: u8) -> bool {
        self.control().map(|c| c.request_keyframe(layer)).is_some()
    }

    /// Simulcast layers of the video track this session (1 without simulcast).
    pub fn simulcast_layers(&self) -> u8 {
        self.layers.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> StreamStatus {
        let g = self.inner.lock();
        let mut tracks = Vec::new();
        if let Some(t) = &g.tracks {
            tracks.extend(t.video.iter().map(TrackStatus::of));
            tracks.extend(t.audio.iter().map(TrackStatus::of));
        }
        StreamStatus {
            name: self.name.to_string(),
            state: g.state,
            tracks,
            publisher: g.publisher.clone(),
            sessions: g.sessions,
            uptime_secs: g.publishing_since.map(|t| t.elapsed().as_secs_f64()),
            bitrate_bps: if g.state == StreamState::Publishing {
                g.bitrate_bps
            } else {
                0
            },
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            last_error: g.last_error.clone(),
            track_errors: g.track_errors.clone(),
            video_layers: self.simulcast_layers(),
        }
    }
}

/// All streams of this node and all egress sinks.
pub struct Registry {
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    sinks: RwLock<Vec<SinkEntry>>,
    next_sink: AtomicU64,
    /// Frames dropped because a sink was full, by sink name.
    dropped: Mutex<HashMap<&'static str, u64>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            streams: RwLock::new(HashMap::new()),
            sinks: RwLock::new(Vec::new()),
            next_sink: AtomicU64::new(0),
            dropped: Mutex::new(HashMap::new()),
        }
    }
}

/// Stream names are public and appear in URLs: keep them to a safe alphabet.
pub fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Register an egress engine. Every later event of every stream is offered to it.
    pub fn add_sink(&self, name: &'static str, capacity: usize) -> Receiver<Envelope> {
        self.add_sink_inner(name, capacity, false)
    }

    /// [`Registry::add_sink`] for an egress that also forwards the lower simulcast layers.
    pub fn add_layered_sink(&self, name: &'static str, capacity: usize) -> Receiver<Envelope> {
        self.add_sink_inner(name, capacity, true)
    }

    fn add_sink_inner(
        &self,
        name: &'static str,
        capacity: usize,
        layers: bool,
    ) -> Receiver<Envelope> {
        let capacity = capacity.max(CONTROL_RESERVE * 2);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let id = self.next_sink.fetch_add(1, Ordering::Relaxed) as usize;
        self.sinks.write().push(SinkEntry {
            id,
            name,
            tx,
            capacity,
            layers,
        });
        rx
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self.streams.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Frames dropped per sink because it was too slow.
    pub fn dropped_by_sink(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self.dropped.lock().iter().map(|(k, v)| (*k, *v)).collect();
        v.sort();
        v
    }

    /// Note an ingest error against a stream name (creates nothing if unknown).
    pub fn record_error(&self, name: &str, err: String) {
        if let Some(s) = self.get(name) {
            s.inner.lock().last_error = Some(err);
        }
    }

    /// Start publishing `name`. A stream that went idle resumes (same timeline, new session);
    /// a stream with a live publisher refuses. `control` is how the core reaches this publisher
    /// (kick, keyframe requests) until it leaves.
    pub fn begin_publish(
        self: &Arc<Self>,
        name: &str,
        peer: String,
        control: Arc<dyn PublisherControl>,
    ) -> Result<Publisher, PublishError> {
        if !valid_stream_name(name) {
            return Err(PublishError::BadName(name.into()));
        }
        let stream = {
            let mut map = self.streams.write();
            map.entry(name.to_string())
                .or_insert_with(|| {
                    Arc::new(Stream {
                        name: Arc::from(name),
                        inner: Mutex::new(Inner {
                            state: StreamState::Idle,
                            tracks: None,
                            sessions: 0,
                            track_epoch: 0,
                            publisher: None,
                            publishing_since: None,
                            timeline: Timeline::default(),
                            gop: Vec::new(),
                            gop_bytes: 0,
                            gop_valid: false,
                            lag: HashMap::new(),
                            last_error: None,
                            track_errors: Vec::new(),
                            rate_bucket_start: None,
                            rate_bucket_bytes: 0,
                            bitrate_bps: 0,
                            control: None,
                        }),
                        bytes_in: AtomicU64::new(0),
                        frames_in: AtomicU64::new(0),
                        layers: AtomicU8::new(1),
                    })
                })
                .clone()
        };
        {
            let mut g = stream.inner.lock();
            if g.state == StreamState::Publishing {
                return Err(PublishError::AlreadyPublishing(name.into()));
            }
            g.state = StreamState::Publishing;
            g.control = Some(control);
            stream.layers.store(1, Ordering::Relaxed);
            g.sessions += 1;
            g.publisher = Some(peer);
            g.publishing_since = Some(Instant::now());
            g.timeline.new_session();
            g.gop.clear();
            g.gop_bytes = 0;
            g.gop_valid = false;
            g.last_error = None;
            g.track_errors.clear();
            g.tracks = None;
        }
        Ok(Publisher {
            registry: self.clone(),
            stream,
            video: None,
            audio: None,
            announced: false,
            layer_last: [i64::MIN; MAX_LAYERS],
        })
    }

    /// Remove a stream that has no publisher; egress engines get `Ended`.
    pub fn remove(&self, name: &str) -> bool {
        let Some(stream) = self.streams.write().remove(name) else {
            return false;
        };
        stream.kick();
        let mut g = stream.inner.lock();
        g.state = StreamState::Ended;
        self.deliver(&stream, &mut g, MediaEvent::Ended);
        true
    }

    /// Offer one event to every sink, with per-sink drop-to-keyframe on overflow.
    fn deliver(&self, stream: &Stream, g: &mut Inner, ev: MediaEvent) {
        let sinks = self.sinks.read();
        for sink in sinks.iter() {
            let lag = g.lag.entry(sink.id).or_default();
            let env = |event| Envelope {
                stream: stream.name.clone(),
                event,
            };
            match &ev {
                MediaEvent::Layer(_) => {
                    // Lower layers are a best-effort extra: a full queue loses the frame (the
                    // SFU notices the gap and waits for that layer's next keyframe).
                    if !sink.layers {
                        continue;
                    }
                    if sink.tx.len() + CONTROL_RESERVE >= sink.capacity
                        || sink.tx.try_send(env(ev.clone())).is_err()
                    {
                        *self.dropped.lock().entry(sink.name).or_default() += 1;
                    }
                }
                MediaEvent::Frame(f) => {
                    let resync_point = f.keyframe
                        && (f.kind == TrackKind::Video
                            || g.tracks.as_ref().is_some_and(|t| t.video.is_none()));
                    if lag.lagging && !resync_point {
                        *self.dropped.lock().entry(sink.name).or_default() += 1;
                        continue;
                    }
                    if sink.tx.len() + CONTROL_RESERVE >= sink.capacity {
                        if !lag.lagging {
                            tracing::warn!(stream = %stream.name, sink = sink.name,
                                "egress is behind; dropping frames until the next keyframe");
                        }
                        lag.lagging = true;
                        *self.dropped.lock().entry(sink.name).or_default() += 1;
                        continue;
                    }
                    if lag.need_tracks {
                        if let Some(t) = &g.tracks {
                            if sink
                                .tx
                                .try_send(env(MediaEvent::Tracks(t.clone())))
                                .is_err()
                            {
                                continue;
                            }
                        }
                        lag.need_tracks = false;
                    }
                    match sink.tx.try_send(env(ev.clone())) {
                        Ok(()) => lag.lagging = false,
                        Err(TrySendError::Full(_)) => {
                            lag.lagging = true;
                            *self.dropped.lock().entry(sink.name).or_default() += 1;
                        }
                        Err(TrySendError::Disconnected(_)) => {}
                    }
                }
                other => {
                    if let Err(TrySendError::Full(_)) = sink.tx.try_send(env(other.clone())) {
                        tracing::error!(stream = %stream.name, sink = sink.name,
                            "egress control queue full; event deferred");
                        lag.need_tracks = true;
                        lag.lagging = true;
                    }
                }
            }
        }
    }
}

/// The right to publish one stream. Dropping it returns the stream to `Idle`.
pub struct Publisher {
    registry: Arc<Registry>,
    stream: Arc<Stream>,
    video: Option<Codec>,
    audio: Option<Codec>,
    announced: bool,
    /// Last stream-clock dts written per lower simulcast layer (kept monotonic per layer).
    layer_last: [i64; MAX_LAYERS],
}

/// Most simulcast layers of one video track (layer 0 included).
pub const MAX_LAYERS: usize = 4;

impl Publisher {
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    pub fn name(&self) -> &str {
        &self.stream.name
    }

    /// Set or change a track's codec parameters. Egress sees a new `TrackSet` before the next
    /// frame when anything changed.
    pub fn set_codec(&mut self, codec: Codec) {
        let slot = match codec.kind() {
            TrackKind::Video => &mut self.video,
            TrackKind::Audio => &mut self.audio,
        };
        if slot.as_ref() != Some(&codec) {
            *slot = Some(codec);
            self.announced = false;
        }
    }

    pub fn codec(&self, kind: TrackKind) -> Option<&Codec> {
        match kind {
            TrackKind::Video => self.video.as_ref(),
            TrackKind::Audio => self.audio.as_ref(),
        }
    }

    /// Record a problem with one track that the stream survives (e.g. an unsupported audio codec).
    pub fn track_error(&self, msg: String) {
        let mut g = self.stream.inner.lock();
        if !g.track_errors.contains(&msg) {
            tracing::warn!(stream = %self.stream.name, side = "ingest", "{msg}");
            g.track_errors.push(msg);
        }
    }

    /// Record the error that ends this publisher session.
    pub fn fail(&self, msg: String) {
        self.stream.inner.lock().last_error = Some(msg);
    }

    /// Publish one frame. `dts`/`pts` are on the publisher's own clock in 90 kHz ticks; the
    /// stream maps them onto its monotonic timeline. Frames of a track without codec parameters
    /// are dropped (a decoder could not use them).
    #[allow(clippy::too_many_arguments)] // one call site per ingest; a struct would only rename them
    pub fn push(
        &mut self,
        kind: TrackKind,
        dts: i64,
        pts: i64,
        keyframe: bool,
        data: Bytes,
        wallclock: SystemTime,
        now: Instant,
    ) {
        if self.codec(kind).is_none() || data.is_empty() {
            return;
        }
        let stream = self.stream.clone();
        let mut g = stream.inner.lock();
        if !self.announced {
            g.track_epoch += 1;
            let session = g.track_epoch;
            let ts = Arc::new(TrackSet {
                session,
                video: self.video.clone(),
                audio: self.audio.clone(),
            });
            g.tracks = Some(ts.clone());
            g.gop.clear();
            g.gop_bytes = 0;
            g.gop_valid = false;
            self.registry
                .deliver(&stream, &mut g, MediaEvent::Tracks(ts));
            self.announced = true;
        }
        let out_dts = g.timeline.map(kind, dts);
        let cts = (pts - dts).clamp(0, 10 * CLOCK_HZ);
        let frame = Arc::new(Frame {
            kind,
            dts: out_dts,
            pts: out_dts + cts,
            keyframe,
            data,
            wallclock,
        });
        let len = frame.data.len();
        self.stream
            .bytes_in
            .fetch_add(len as u64, Ordering::Relaxed);
        self.stream.frames_in.fetch_add(1, Ordering::Relaxed);

        // Bitrate over one-second buckets.
        match g.rate_bucket_start {
            Some(t0) if now.duration_since(t0).as_millis() < 1000 => {
                g.rate_bucket_bytes += len as u64
            }
            Some(t0) => {
                let secs = now.duration_since(t0).as_secs_f64().max(1e-3);
                g.bitrate_bps = (g.rate_bucket_bytes as f64 * 8.0 / secs) as u64;
                g.rate_bucket_start = Some(now);
                g.rate_bucket_bytes = len as u64;
            }
            None => {
                g.rate_bucket_start = Some(now);
                g.rate_bucket_bytes = len as u64;
            }
        }

        // GOP cache: restart on a video keyframe; audio-only streams keep a short tail.
        let has_video = self.video.is_some();
        if kind == TrackKind::Video && keyframe {
            g.gop.clear();
            g.gop_bytes = 0;
            g.gop_valid = true;
        } else if !has_video {
            g.gop_valid = true;
            if g.gop.len() >= AUDIO_ONLY_CACHE {
                let f = g.gop.remove(0);
                g.gop_bytes -= f.data.len();
            }
        }
        if g.gop_valid {
            if g.gop_bytes + len > GOP_CACHE_MAX_BYTES {
                g.gop.clear();
                g.gop_bytes = 0;
                g.gop_valid = false;
            } else {
                g.gop.push(frame.clone());
                g.gop_bytes += len;
            }
        }
        self.registry
            .deliver(&stream, &mut g, MediaEvent::Frame(frame));
    }
}

impl Publisher {
    /// Publish a frame of lower simulcast layer `layer` (1..MAX_LAYERS). `dts`/`pts` are on the
    /// publisher's clock like [`Publisher::push`]'s; the frame is mapped with the primary's
    /// current offset, so it is dropped until the primary (layer 0) has started. Only layered
    /// sinks (the SFU) receive it; the GOP cache, HLS and RTMP see layer 0 only.
    #[allow(clippy::too_many_arguments)]
    pub fn push_layer(
        &mut self,
        layer: u8,
        codec: &Arc<Codec>,
        dts: i64,
        pts: i64,
        keyframe: bool,
        data: Bytes,
        wallclock: SystemTime,
    ) {
        let l = layer as usize;
        if l == 0 || l >= MAX_LAYERS || data.is_empty() || !self.announced {
            return;
        }
        let stream = self.stream.clone();
        let mut g = stream.inner.lock();
        let (Some(offset), Some(t)) = (g.timeline.offset, g.tracks.as_ref()) else {
            return;
        };
        let session = t.session;
        self.stream.layers.fetch_max(layer + 1, Ordering::Relaxed);
        let mut out_dts = dts + offset;
        if out_dts <= self.layer_last[l] {
            out_dts = self.layer_last[l] + 1;
        }
        self.layer_last[l] = out_dts;
        let cts = (pts - dts).clamp(0, 10 * CLOCK_HZ);
        self.stream
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let lf = Arc::new(LayerFrame {
            layer,
            session,
            codec: codec.clone(),
            frame: Frame {
                kind: TrackKind::Video,
                dts: out_dts,
                pts: out_dts + cts,
                keyframe,
                data,
                wallclock,
            },
        });
        self.registry
            .deliver(&stream, &mut g, MediaEvent::Layer(lf));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let stream = self.stream.clone();
        let mut g = stream.inner.lock();
        if g.state == StreamState::Publishing {
            g.state = StreamState::Idle;
        }
        g.publisher = None;
        g.publishing_since = None;
        g.control = None;
        self.registry.deliver(&stream, &mut g, MediaEvent::Idle);
        tracing::info!(stream = %self.stream.name, "publisher left; stream idle");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::track::AacParams;
    use crate::media::KickSignal;

    /// A control that records what the core asked.
    #[derive(Default)]
    struct Recorder {
        kicks: AtomicU64,
        layers: Mutex<Vec<u8>>,
    }

    impl PublisherControl for Recorder {
        fn kick(&self) {
            self.kicks.fetch_add(1, Ordering::Relaxed);
        }
        fn request_keyframe(&self, layer: u8) {
            self.layers.lock().push(layer);
        }
    }

    #[test]
    fn the_core_reaches_the_current_publisher_through_its_control_only_while_it_publishes() {
        let reg = Registry::new();
        let first = Arc::new(Recorder::default());
        let p = reg.begin_publish("c", "a".into(), first.clone()).unwrap();
        let s = reg.get("c").unwrap();
        assert!(s.request_keyframe(2));
        assert!(s.kick());
        assert_eq!(*first.layers.lock(), vec![2]);
        assert_eq!(first.kicks.load(Ordering::Relaxed), 1);
        drop(p);
        // Gone: nothing reaches the old publisher's handle any more.
        assert!(!s.kick());
        assert!(!s.request_keyframe(0));
        assert_eq!(first.kicks.load(Ordering::Relaxed), 1);
        // The next publisher brings its own handle.
        let second = Arc::new(Recorder::default());
        let _p = reg.begin_publish("c", "b".into(), second.clone()).unwrap();
        assert!(s.request_keyframe(0));
        assert_eq!(*second.layers.lock(), vec![0]);
        assert_eq!(first.layers.lock().len(), 1);
    }

    fn aac() -> Codec {
        Codec::Aac(AacParams {
            asc: Bytes::from_static(&[0x12, 0x10]),
            object_type: 2,
            sample_rate: 44100,
            channels: 2,
        })
    }

    #[test]
    fn second_publisher_refused_and_resume_keeps_timeline_monotonic() {
        let reg = Registry::new();
        let rx = reg.add_sink("test", 256);
        let mut p = reg
            .begin_publish("show", "a".into(), Arc::new(KickSignal::default()))
            .unwrap();
        assert_eq!(
            reg.begin_publish("show", "b".into(), Arc::new(KickSignal::default()))
                .err(),
            Some(PublishError::AlreadyPublishing("show".into()))
        );
        p.set_codec(aac());
        let now = Instant::now();
        for i in 0..10 {
            p.push(
                TrackKind::Audio,
                1_000_000 + i * 1920,
                0,
                true,
                Bytes::from_static(b"x"),
                SystemTime::now(),
                now,
            );
        }
        drop(p);
        assert_eq!(reg.get("show").unwrap().state(), StreamState::Idle);
        let mut p = reg
            .begin_publish("show", "a".into(), Arc::new(KickSignal::default()))
            .unwrap();
        p.set_codec(aac());
        p.push(
            TrackKind::Audio,
            5,
            5,
            true,
            Bytes::from_static(b"y"),
            SystemTime::now(),
            now,
        );
        let evs: Vec<_> = rx.try_iter().map(|e| e.event).collect();
        let dts: Vec<i64> = evs
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Frame(f) => Some(f.dts),
                _ => None,
            })
            .collect();
        assert_eq!(dts.len(), 11);
        assert!(dts.windows(2).all(|w| w[1] > w[0]), "{dts:?}");
        let sessions: Vec<u64> = evs
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Tracks(t) => Some(t.session),
                _ => None,
            })
            .collect();
        assert_eq!(sessions, vec![1, 2]);
        assert!(evs.iter().any(|e| matches!(e, MediaEvent::Idle)));
    }

    #[test]
    fn slow_sink_drops_and_memory_stays_bounded() {
        let reg = Registry::new();
        let rx = reg.add_sink("slow", 64);
        let mut p = reg
            .begin_publish("s", "a".into(), Arc::new(KickSignal::default()))
            .unwrap();
        p.set_codec(aac());
        let now = Instant::now();
        for i in 0..10_000 {
            p.push(
                TrackKind::Audio,
                i * 1920,
                i * 1920,
                true,
                Bytes::from_static(b"z"),
                SystemTime::now(),
                now,
            );
        }
        assert!(rx.len() <= 64);
        assert!(reg.dropped_by_sink()[0].1 > 9000);
    }

    #[test]
    fn backward_timestamps_stay_monotonic() {
        let mut t = Timeline::default();
        let a = t.map(TrackKind::Video, 90_000);
        let b = t.map(TrackKind::Video, 93_000);
        let c = t.map(TrackKind::Video, 10); // went back
        let d = t.map(TrackKind::Video, 3010);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
    }
}
