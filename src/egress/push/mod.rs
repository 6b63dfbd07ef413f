//! RTMP/RTMPS push: one program, many platforms. FLV is repackaged once per stream and fanned out
//! by reference to every destination of that stream; each destination has its own RTMP client
//! session, queue, backoff and counters, so one dead or slow destination never delays the others,
//! the ingest or HLS.
//!
//! ```text
//!  media::Registry ──sink "rtmp-push"──► fan-out thread ──Arc<FlvTag>──► Destination queue ─┐
//!  (bounded, drop-to-keyframe)           (FLV tags built once             (bounded, drop-to- │
//!                                         per frame per stream)            keyframe)         ▼
//!                                                               push I/O thread (tokio current-thread):
//!                                                               one task per destination, rml_rtmp
//!                                                               ClientSession over TCP or rustls
//! ```
//!
//! - [`flv`]: sans-IO FLV tag bodies and sequence headers; codec fit (H.264 + AAC-LC only).
//! - [`chunk`]: sans-IO RTMP chunk layout shared by all destinations (per-destination headers).
//! - [`queue`]: sans-IO per-destination queue (bounds, drop-to-keyframe, keyframe starts,
//!   timestamps that never go back).
//! - [`destination`]: the state machine and the connection task.
//! - [`url`]: `rtmp[s]://host[:port]/app/key` parsing and key masking.
//! - [`tls`]: rustls client configurations.
//!
//! Threads: the fan-out runs on its own OS thread (it blocks on the sink channel and the control
//! channel); all connections run on a second OS thread with a current-thread tokio runtime. Both can
//! be pinned to one core. The HTTP API talks to them through [`PushEngine`].

pub mod chunk;
pub mod destination;
pub mod flv;
pub mod queue;
pub mod tls;
pub mod url;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;
use serde::Deserialize;

use crate::config::DestinationConfig;
use crate::media::{Envelope, MediaEvent, Registry, StreamState, TrackKind, TrackSet};
pub use destination::{DestState, Destination, DestinationSpec, DestinationStatus, Source};
use flv::{FlvMuxer, Headers};
pub use queue::QueueLimits;
use tls::TlsConfigs;
use url::PushUrl;

/// Capacity of the push engine's sink (events of all streams).
pub const SINK_CAPACITY: usize = 4096;
/// Destinations one stream may have.
pub const MAX_DESTINATIONS_PER_STREAM: usize = 32;
/// Destinations in all.
pub const MAX_DESTINATIONS: usize = 1024;

/// Engine settings.
#[derive(Clone, Debug)]
pub struct PushOptions {
    pub sink_capacity: usize,
    pub queue: QueueLimits,
    /// Core to pin both push threads to.
    pub pin_core: Option<usize>,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            sink_capacity: SINK_CAPACITY,
            queue: QueueLimits::default(),
            pin_core: None,
        }
    }
}

/// A destination to add (API body, or one `[[destinations]]` entry).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDestination {
    /// Unique within the stream; derived from the host when absent.
    #[serde(default)]
    pub id: Option<String>,
    pub url: String,
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// Give up (state `failed`) after this many consecutive failures; absent: retry forever.
    #[serde(default)]
    pub max_retries: Option<u32>,
}

fn yes() -> bool {
    true
}

impl From<&DestinationConfig> for NewDestination {
    fn from(c: &DestinationConfig) -> Self {
        Self {
            id: c.id.clone(),
            url: c.url.clone(),
            tls_verify: c.tls_verify,
            max_retries: c.max_retries,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("{0}")]
    Invalid(String),
    #[error("stream '{stream}' already has a destination '{id}'")]
    Exists { stream: String, id: String },
    #[error("stream '{stream}' has no destination '{id}'")]
    NotFound { stream: String, id: String },
    #[error("too many destinations: at most {0}")]
    TooMany(usize),
}

/// Valid destination ids: 1–64 of `[A-Za-z0-9._-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Check one destination as written (config or API), without adding it.
pub fn validate(stream: &str, d: &NewDestination) -> Result<PushUrl, PushError> {
    if !crate::media::stream::valid_stream_name(stream) {
        return Err(PushError::Invalid(format!(
            "'{stream}' is not a valid stream name"
        )));
    }
    if let Some(id) = &d.id {
        if !valid_id(id) {
            return Err(PushError::Invalid(
                "id must be 1-64 characters of A-Z a-z 0-9 . _ -".into(),
            ));
        }
    }
    PushUrl::parse(&d.url).map_err(|e| PushError::Invalid(format!("url: {e}")))
}

/// Check the `[[destinations]]` of a config without adding them. Errors name the stream.
pub fn check_config(destinations: &[DestinationConfig]) -> Result<(), String> {
    for d in destinations {
        validate(&d.stream, &d.into())
            .map_err(|e| format!("config: destinations (stream '{}'): {e}", d.stream))?;
    }
    Ok(())
}

enum Ctl {
    Add(Arc<Destination>),
    Remove(Arc<Destination>),
}

/// Counters of the fan-out thread.
#[derive(Default, Debug)]
pub struct FanoutStats {
    /// Media events taken from the sink.
    pub events: AtomicU64,
    /// FLV tags built (once per frame of a stream with at least one live destination).
    pub tags: AtomicU64,
}

struct Shared {
    registry: Arc<Registry>,
    dests: Mutex<Vec<Arc<Destination>>>,
    ctl: Sender<Ctl>,
    rt: tokio::runtime::Handle,
    tls: TlsConfigs,
    limits: QueueLimits,
    stats: Arc<FanoutStats>,
    /// Dropping it stops the I/O runtime (and with it every connection task).
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The handle the rest of the process uses: add, remove and list destinations, read metrics.
/// Cheap to clone; the engine's threads stop when the last clone is dropped.
#[derive(Clone)]
pub struct PushEngine {
    inner: Arc<Shared>,
}

impl PushEngine {
    /// Start the engine's threads and the destinations of the config.
    pub fn start(
        registry: Arc<Registry>,
        destinations: &[DestinationConfig],
        opts: PushOptions,
    ) -> anyhow::Result<PushEngine> {
        let tls = TlsConfigs::new().map_err(anyhow::Error::msg)?;
        let sink = registry.add_sink("rtmp-push", opts.sink_capacity);
        let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let pin = opts.pin_core;
        std::thread::Builder::new()
            .name("rtmp-push-io".into())
            .spawn(move || {
                if let Some(c) = pin {
                    crate::affinity::pin_current_thread(c, "RTMP push I/O");
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .context("starting the RTMP push I/O thread")?;
        let rt = handle_rx
            .recv()
            .context("the RTMP push I/O thread did not start")?
            .context("building the RTMP push runtime")?;
        let stats = Arc::new(FanoutStats::default());
        {
            let registry = registry.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("rtmp-push-fanout".into())
                .spawn(move || {
                    if let Some(c) = pin {
                        crate::affinity::pin_current_thread(c, "RTMP push fan-out");
                    }
                    fanout_thread(sink, ctl_rx, registry, stats)
                })
                .context("starting the RTMP push fan-out thread")?;
        }
        let engine = PushEngine {
            inner: Arc::new(Shared {
                registry,
                dests: Mutex::new(Vec::new()),
                ctl: ctl_tx,
                rt,
                tls,
                limits: opts.queue,
                stats,
                _stop: stop_tx,
            }),
        };
        for c in destinations {
            engine
                .add(&c.stream, NewDestination::from(c), Source::Config)
                .map_err(|e| anyhow::anyhow!("config: destinations: stream '{}': {e}", c.stream))?;
        }
        Ok(engine)
    }

    /// Add a destination to a stream (which need not exist yet: the destination waits for it).
    pub fn add(
        &self,
        stream: &str,
        req: NewDestination,
        source: Source,
    ) -> Result<DestinationStatus, PushError> {
        let url = validate(stream, &req)?;
        let mut dests = self.inner.dests.lock();
        if dests.len() >= MAX_DESTINATIONS {
            return Err(PushError::TooMany(MAX_DESTINATIONS));
        }
        let of_stream: Vec<&Arc<Destination>> =
            dests.iter().filter(|d| &*d.stream == stream).collect();
        if of_stream.len() >= MAX_DESTINATIONS_PER_STREAM {
            return Err(PushError::TooMany(MAX_DESTINATIONS_PER_STREAM));
        }
        let taken = |id: &str| of_stream.iter().any(|d| d.id == id);
        let id = match req.id {
            Some(id) if taken(&id) => {
                return Err(PushError::Exists {
                    stream: stream.into(),
                    id,
                })
            }
            Some(id) => id,
            None => {
                let base: String = url
                    .host
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .take(56)
                    .collect();
                let base = if base.is_empty() {
                    "dest".to_string()
                } else {
                    base
                };
                (1..)
                    .map(|n| {
                        if n == 1 {
                            base.clone()
                        } else {
                            format!("{base}-{n}")
                        }
                    })
                    .find(|c| !taken(c))
                    .expect("an unused id exists")
            }
        };
        let d = Arc::new(Destination::new(
            Arc::from(stream),
            DestinationSpec {
                id,
                url,
                tls_verify: req.tls_verify,
                max_retries: req.max_retries,
                source,
            },
            self.inner.limits,
        ));
        dests.push(d.clone());
        drop(dests);
        tracing::info!(side = "egress", path = "rtmp", stream = %stream, destination = %d.id,
            url = %d.url.masked(), tls_verify = d.tls_verify, source = ?source,
            "push destination added");
        // The fan-out first (it sets the stream's state), then the connection task.
        let _ = self.inner.ctl.send(Ctl::Add(d.clone()));
        self.inner.rt.spawn(destination::run(
            d.clone(),
            self.inner.registry.clone(),
            self.inner.tls.clone(),
        ));
        Ok(d.status())
    }

    /// Remove a destination; its connection is closed (publish ended cleanly when it was live).
    pub fn remove(&self, stream: &str, id: &str) -> Result<DestinationStatus, PushError> {
        let d = {
            let mut dests = self.inner.dests.lock();
            let Some(pos) = dests
                .iter()
                .position(|d| &*d.stream == stream && d.id == id)
            else {
                return Err(PushError::NotFound {
                    stream: stream.into(),
                    id: id.into(),
                });
            };
            dests.remove(pos)
        };
        let status = d.status();
        d.remove();
        let _ = self.inner.ctl.send(Ctl::Remove(d));
        Ok(status)
    }

    /// Statuses of one stream's destinations.
    pub fn list(&self, stream: &str) -> Vec<DestinationStatus> {
        self.destinations()
            .iter()
            .filter(|d| &*d.stream == stream)
            .map(|d| d.status())
            .collect()
    }

    /// Statuses of every destination.
    pub fn list_all(&self) -> Vec<DestinationStatus> {
        self.destinations().iter().map(|d| d.status()).collect()
    }

    pub fn get(&self, stream: &str, id: &str) -> Option<DestinationStatus> {
        self.destinations()
            .iter()
            .find(|d| &*d.stream == stream && d.id == id)
            .map(|d| d.status())
    }

    fn destinations(&self) -> Vec<Arc<Destination>> {
        self.inner.dests.lock().clone()
    }

    pub fn stats(&self) -> &FanoutStats {
        &self.inner.stats
    }

    /// Append the per-destination families to a Prometheus registry (names get the registry's
    /// prefix): state, bytes, frames sent and dropped, reconnects, RTT, queue depth.
    pub fn encode_metrics(&self, r: &mut PromRegistry) {
        type Labels = Vec<(String, String)>;
        let state = Family::<Labels, Gauge>::default();
        let bytes = Family::<Labels, Counter>::default();
        let frames = Family::<Labels, Counter>::default();
        let dropped = Family::<Labels, Counter>::default();
        let reconnects = Family::<Labels, Counter>::default();
        let rtt = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let queue = Family::<Labels, Gauge>::default();
        for s in self.list_all() {
            let l = vec![
                ("stream".to_string(), s.stream.clone()),
                ("destination".to_string(), s.id.clone()),
            ];
            for st in DestState::ALL {
                let mut ls = l.clone();
                ls.push(("state".into(), st.as_str().into()));
                state.get_or_create(&ls).set((s.state == st) as i64);
            }
            bytes.get_or_create(&l).inc_by(s.bytes_sent);
            frames.get_or_create(&l).inc_by(s.frames_sent);
            dropped.get_or_create(&l).inc_by(s.frames_dropped);
            reconnects.get_or_create(&l).inc_by(s.reconnects);
            if let Some(ms) = s.rtt_ms {
                rtt.get_or_create(&l).set(ms / 1000.0);
            }
            queue.get_or_create(&l).set(s.queue_bytes as i64);
        }
        r.register(
            "push_destination_state",
            "1 for the RTMP push destination's current state",
            state,
        );
        r.register(
            "push_sent_bytes",
            "Bytes written to the push destination",
            bytes,
        );
        r.register(
            "push_sent_frames",
            "Frames sent to the push destination",
            frames,
        );
        r.register(
            "push_dropped_frames",
            "Frames a push destination lost because it was slower than the stream",
            dropped,
        );
        r.register(
            "push_reconnects",
            "Failed connection attempts and lost connections of a push destination",
            reconnects,
        );
        r.register(
            "push_rtt_seconds",
            "Round trip of the last RTMP ping to the push destination",
            rtt,
        );
        r.register(
            "push_queue_bytes",
            "Bytes queued for the push destination",
            queue,
        );
        let events: Counter = Counter::default();
        events.inc_by(self.inner.stats.events.load(Ordering::Relaxed));
        r.register(
            "push_fanout_events",
            "Media events processed by the RTMP push fan-out",
            events,
        );
    }
}

fn fanout_thread(
    sink: Receiver<Envelope>,
    ctl: Receiver<Ctl>,
    registry: Arc<Registry>,
    stats: Arc<FanoutStats>,
) {
    let mut fan = Fanout::new(stats);
    loop {
        crossbeam_channel::select! {
            recv(ctl) -> m => match m {
                Ok(Ctl::Add(d)) => {
                    let (live, headers) = match registry.get(&d.stream) {
                        Some(s) => {
                            let tracks = s.tracks();
                            (
                                s.state() == StreamState::Publishing && tracks.is_some(),
                                tracks.map(|t| Arc::new(Headers::from_tracks(&rtmp_tracks(&t).0))),
                            )
                        }
                        None => (false, None),
                    };
                    fan.attach(d, live, headers);
                }
                Ok(Ctl::Remove(d)) => fan.detach(&d),
                Err(_) => break,
            },
            recv(sink) -> m => match m {
                Ok(env) => fan.on_event(env),
                Err(_) => break,
            },
        }
    }
    tracing::debug!("RTMP push fan-out stopped");
}

#[derive(Default)]
struct StreamFan {
    headers: Option<Arc<Headers>>,
    muxer: FlvMuxer,
    live: bool,
    dests: Vec<Arc<Destination>>,
    /// Opus audio (from WHIP) bridged to AAC-LC once per stream for every destination.
    bridge: Option<Box<crate::media::bridge::Bridge>>,
    /// The bridge's output buffer, reused frame after frame.
    bridge_out: Vec<crate::media::Frame>,
}

/// The tracks as RTMP destinations see them: Opus audio replaced by the AAC-LC the bridge makes.
/// Returns the bridge to use, if one is needed.
pub(crate) fn rtmp_tracks(t: &TrackSet) -> (TrackSet, Option<Box<crate::media::bridge::Bridge>>) {
    use crate::media::bridge::{Bridge, BridgeConfig};
    let mut out = t.clone();
    let mut bridge = None;
    if let Some(a) = &t.audio {
        match Bridge::for_aac_egress(a, &BridgeConfig::default()) {
            Ok(Some(b)) => {
                out.audio = b.params();
                bridge = Some(Box::new(b));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(side = "egress", path = "rtmp", "audio bridge: {e}"),
        }
    }
    (out, bridge)
}

/// The fan-out: media events in, shared FLV tags into every destination queue of the stream.
/// Public for the benchmark; the engine runs it on its own thread.
pub struct Fanout {
    streams: HashMap<Arc<str>, StreamFan>,
    stats: Arc<FanoutStats>,
}

impl Fanout {
    pub fn new(stats: Arc<FanoutStats>) -> Self {
        Self {
            streams: HashMap::new(),
            stats,
        }
    }

    /// Start feeding a destination. `live` / `headers` are the registry's view of the stream at
    /// this moment (the fan-out's own view may be behind it, or absent for a new stream).
    pub fn attach(&mut self, d: Arc<Destination>, live: bool, headers: Option<Arc<Headers>>) {
        let f = self.streams.entry(d.stream.clone()).or_default();
        {
            let mut i = d.inbox.lock();
            i.live = live;
            if let Some(h) = headers.or_else(|| f.headers.clone()) {
                i.queue.on_headers(h);
            }
        }
        f.dests.push(d.clone());
        d.wake.notify_one();
    }

    pub fn detach(&mut self, d: &Arc<Destination>) {
        if let Some(f) = self.streams.get_mut(&d.stream) {
            f.dests.retain(|x| !Arc::ptr_eq(x, d));
        }
    }

    pub fn on_event(&mut self, env: Envelope) {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let f = self.streams.entry(env.stream.clone()).or_default();
        match env.event {
            MediaEvent::Tracks(t) => {
                let (t, bridge) = rtmp_tracks(&t);
                f.bridge = bridge;
                f.muxer.set_tracks(&t);
                let h = Arc::new(Headers::from_tracks(&t));
                f.headers = Some(h.clone());
                f.live = true;
                for d in &f.dests {
                    {
                        let mut i = d.inbox.lock();
                        i.live = true;
                        i.queue.on_headers(h.clone());
                    }
                    d.wake.notify_one();
                }
            }
            MediaEvent::Frame(frame) => {
                if frame.kind == TrackKind::Audio {
                    if let Some(b) = f.bridge.as_mut() {
                        let mut aac = std::mem::take(&mut f.bridge_out);
                        b.push_into(&frame, &mut aac);
                        for a in aac.drain(..) {
                            Self::fan_frame(&self.stats, f, &Arc::new(a));
                        }
                        f.bridge_out = aac;
                        return;
                    }
                }
                Self::fan_frame(&self.stats, f, &frame);
            }
            MediaEvent::Idle | MediaEvent::Ended => {
                if let Some(b) = f.bridge.as_mut() {
                    b.reset();
                }
                f.live = false;
                for d in &f.dests {
                    d.inbox.lock().live = false;
                    d.wake.notify_one();
                }
                if f.dests.is_empty() {
                    self.streams.remove(&env.stream);
                }
            }
            // Platforms get the primary layer; lower simulcast layers are WebRTC-only.
            MediaEvent::Layer(_) => {}
        }
    }

    /// Hand one frame (as one shared FLV tag) to every destination queue of the stream.
    fn fan_frame(stats: &FanoutStats, f: &mut StreamFan, frame: &Arc<crate::media::Frame>) {
        let mut tag = None;
        for d in &f.dests {
            let queued = {
                let mut i = d.inbox.lock();
                if !i.queue.accepting() {
                    continue;
                }
                let t = tag.get_or_insert_with(|| {
                    stats.tags.fetch_add(1, Ordering::Relaxed);
                    f.muxer.tag(frame)
                });
                i.queue.push(t.clone()) == queue::Pushed::Queued
            };
            if queued {
                d.wake.notify_one();
            }
        }
    }
}

#[doc(hidden)]
/// Benchmark support: a destination with no connection, whose queue accepts frames as if it were
/// live; [`drain_detached`] empties it the way a connection would.
pub fn detached_destination(stream: &str, id: &str, limits: QueueLimits) -> Arc<Destination> {
    let d = Arc::new(Destination::new(
        Arc::from(stream),
        DestinationSpec {
            id: id.into(),
            url: PushUrl::parse("rtmp://127.0.0.1/app/key").expect("static URL"),
            tls_verify: true,
            max_retries: None,
            source: Source::Api,
        },
        limits,
    ));
    d.inbox.lock().queue.start(None, Vec::new());
    d
}

#[doc(hidden)]
/// Pop everything queued for a detached destination (the tags, by reference).
pub fn drain_detached(d: &Destination) -> Vec<Arc<flv::FlvTag>> {
    let mut i = d.inbox.lock();
    let mut tags = Vec::new();
    while let Some(it) = i.queue.pop() {
        if let queue::Item::Tag(t) = it {
            tags.push(t);
        }
    }
    tags
}

#[cfg(test)]
mod tests;
