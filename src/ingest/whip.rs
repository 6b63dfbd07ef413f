//! WHIP ingest (RFC 9725): a WebRTC publisher's H.264 + Opus into the media model.
//!
//! ```text
//!  HTTP POST /whip/{stream} ─ key check, begin_publish, build Rtc (ICE-lite, frame mode) ─┐
//!                                                                                          ▼
//!  publisher UDP ─► SFU worker (least loaded) ─► WhipPublisher: str0m depacketizes RTP into
//!                   MediaData (Annex-B H.264 AU / Opus packet) ─► H264Assembler (AVCC, avcC
//!                   from in-band SPS/PPS) ─► media::Publisher::push (90 kHz) ─► every egress
//! ```
//!
//! - [`WhipPublisher`] is the publisher role of a [`crate::webrtc::peer::Peer`]: the peer (input,
//!   timeouts, liveness) is the viewers' one. Its `Rtc` runs in str0m's frame mode (viewers'
//!   run in RTP mode); it lives on an SFU worker next to the viewers, driven by the same loop.
//!   The POST that places it is [`crate::egress::sfu::publish`]: this module never imports the
//!   SFU.
//! - [`H264Assembler`] is sans-IO: Annex-B access units in, AVCC (4-byte lengths) out, with SPS,
//!   PPS and AUD moved out of the frames into an `avcC` built from what was seen in-band.
//! - Start: a session's first frames are held ([`StartGate`], at most [`START_WAIT`]) until both
//!   offered tracks have started (video: in-band SPS/PPS and an IDR), so the first track set
//!   egress sees has both, and LL-HLS starts its timeline with one init and a segment that begins
//!   on that IDR (no one-track segment and discontinuity first).
//! - Timestamps: each track's RTP clock is anchored to the arrival time of its first frame on
//!   one session clock, then advances with the RTP timestamps (90 kHz video, 48 kHz Opus →
//!   90 kHz), so audio and video stay aligned without waiting for RTCP sender reports.
//! - The core reaches the publisher through its [`WhipControl`] (given to the registry when
//!   publishing begins): viewers' keyframe requests per layer and API kicks are flags its worker
//!   takes; PLIs are paced by [`crate::media::control::KeyframeRequests`].
//! - Dropping the peer (DELETE, kick, ICE timeout, idle) drops the `Publisher`: the stream goes
//!   idle.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use str0m::format::Codec as RtcCodec;
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::{Event, IceCreds, Rtc};

use super::simulcast::{LayerSet, Placement};
use crate::io::Waker;
use crate::media::codec::h264::{
    nal_type, parse_avcc, write_avcc, H264Error, Nalus, NAL_AUD, NAL_FILLER, NAL_IDR, NAL_PPS,
    NAL_SPS,
};
use crate::media::{
    Codec, H264Params, OpusParams, PublishError, Publisher, PublisherControl, TrackKind,
};
use crate::webrtc::offer::OfferError;
use crate::webrtc::peer::{DropReason, Link, PeerRole};

/// Largest access unit accepted from a publisher (a bigger one is dropped).
const MAX_AU_BYTES: usize = 8 << 20;

/// How long the first track of an offer that negotiated both video and audio waits for the
/// other one to start before it is published alone (a camera or microphone that is off, say).
const START_WAIT: Duration = Duration::from_secs(3);

/// Most bytes a session holds back while its tracks start (then it publishes what it has).
const START_HELD_BYTES: usize = 16 << 20;

/// Why a WHIP request failed; the HTTP layer maps these to status codes.
#[derive(Debug, thiserror::Error)]
pub enum WhipError {
    #[error("malformed SDP offer: {0}")]
    BadSdp(String),
    #[error("{0}")]
    Unsupported(String),
    /// The offer asks for a setup this server does not do (direction, fingerprint hash).
    #[error("{0}")]
    Setup(String),
    #[error("stream '{0}' already has a live publisher")]
    AlreadyPublishing(String),
    #[error("stream name '{0}' is not valid")]
    BadName(String),
    #[error("WebRTC is disabled on this server")]
    Disabled,
    #[error("publisher limit reached")]
    Full,
    #[error("{0}")]
    Refused(crate::webrtc::admission::Refusal),
    #[error("session not found")]
    NoSession,
    #[error("internal: {0}")]
    Internal(String),
}

impl From<OfferError> for WhipError {
    fn from(e: OfferError) -> Self {
        match e {
            OfferError::Malformed(m) => WhipError::BadSdp(m),
            OfferError::UnsupportedMedia(m) => WhipError::Unsupported(m),
            OfferError::UnsupportedSetup(m) => WhipError::Setup(m),
        }
    }
}

impl From<PublishError> for WhipError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::AlreadyPublishing(n) => WhipError::AlreadyPublishing(n),
            PublishError::BadName(n) => WhipError::BadName(n),
            PublishError::UnknownKey => WhipError::Internal("unknown key".into()),
        }
    }
}

/// A publisher's `Rtc`: ICE-lite, frame mode (str0m depacketizes), the node's DTLS certificate,
/// H.264 and Opus only.
pub fn build_publisher_rtc(cert: &str0m::config::DtlsCert, now: Instant) -> (Rtc, IceCreds) {
    let creds = IceCreds::new();
    let rtc = Rtc::builder()
        .set_ice_lite(true)
        .set_dtls_cert(cert.clone())
        .set_local_ice_credentials(creds.clone())
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_stats_interval(None)
        .build(now);
    (rtc, creds)
}

/// One access unit for the media core.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    /// AVCC framing, 4-byte lengths, without SPS/PPS/AUD (those are in the avcC).
    pub data: Bytes,
    pub keyframe: bool,
    /// New codec parameters to announce before this frame (first frame, or SPS/PPS changed).
    pub params: Option<H264Params>,
}

/// Sans-IO: Annex-B access units (as str0m depacketizes them) → AVCC access units + avcC.
#[derive(Default)]
pub struct H264Assembler {
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    params: Option<H264Params>,
    params_dirty: bool,
    /// Drop frames until the next IDR (start, or after a loss).
    waiting_key: bool,
    started: bool,
    pub frames_dropped: u64,
}

impl H264Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn params(&self) -> Option<&H264Params> {
        self.params.as_ref()
    }

    /// Frames are missing before the next one: drop until an IDR.
    pub fn lost(&mut self) {
        self.waiting_key = true;
    }

    /// True while frames are dropped for want of a keyframe (ask the publisher for one).
    pub fn wants_keyframe(&self) -> bool {
        self.waiting_key || !self.started
    }

    /// Feed one Annex-B access unit. `Ok(None)`: nothing to publish yet (no SPS/PPS/IDR so far,
    /// or only parameter sets).
    pub fn push(&mut self, annexb: &[u8]) -> Result<Option<AccessUnit>, H264Error> {
        if annexb.len() > MAX_AU_BYTES {
            self.frames_dropped += 1;
            self.waiting_key = true;
            return Err(H264Error::BadFraming("access unit larger than 8 MiB"));
        }
        let nalus = Nalus::annexb(annexb);
        let mut sps_changed = false;
        let mut keyframe = false;
        let mut size = 0;
        for n in nalus.clone() {
            let n = n?;
            match nal_type(n) {
                NAL_SPS => {
                    if self.sps.as_deref() != Some(n) {
                        self.sps = Some(Bytes::copy_from_slice(n));
                        sps_changed = true;
                    }
                }
                NAL_PPS => {
                    if self.pps.as_deref() != Some(n) {
                        self.pps = Some(Bytes::copy_from_slice(n));
                        sps_changed = true;
                    }
                }
                NAL_AUD | NAL_FILLER => {}
                t => {
                    if t == NAL_IDR {
                        keyframe = true;
                    }
                    size += 4 + n.len();
                }
            }
            if n[0] & 0x80 != 0 {
                return Err(H264Error::BadFraming("forbidden_zero_bit set"));
            }
        }
        if sps_changed {
            if let (Some(sps), Some(pps)) = (&self.sps, &self.pps) {
                let avcc = write_avcc(&[sps], &[pps], 4)?;
                let p = parse_avcc(avcc)?;
                if self.params.as_ref() != Some(&p) {
                    self.params = Some(p);
                    self.params_dirty = true;
                }
            }
        }
        if size == 0 || self.params.is_none() {
            return Ok(None);
        }
        if (self.waiting_key || !self.started) && !keyframe {
            self.frames_dropped += 1;
            return Ok(None);
        }
        self.waiting_key = false;
        self.started = true;
        let mut b = BytesMut::with_capacity(size);
        for n in nalus {
            let n = n?;
            if matches!(nal_type(n), NAL_SPS | NAL_PPS | NAL_AUD | NAL_FILLER) {
                continue;
            }
            b.put_u32(n.len() as u32);
            b.put_slice(n);
        }
        let params = if std::mem::take(&mut self.params_dirty) {
            self.params.clone()
        } else {
            None
        };
        Ok(Some(AccessUnit {
            data: b.freeze(),
            keyframe,
            params,
        }))
    }
}

/// A frame on its way to [`Publisher::push`], with the codec to set just before it.
#[derive(Debug)]
pub struct StartFrame {
    pub kind: TrackKind,
    pub ts: i64,
    pub keyframe: bool,
    pub data: Bytes,
    pub wallclock: SystemTime,
    /// New codec parameters for the frame's track (its first frame, or a change).
    pub codec: Option<Codec>,
}

/// Sans-IO: holds a session's first frames until every track its offer negotiated has started
/// (video: SPS/PPS and a first IDR; audio: a first Opus packet), so that egress sees one track
/// set with both tracks from the start. Published one at a time, a WebRTC publisher's tracks
/// would each announce a track set: LL-HLS would start its timeline with a one-track init and a
/// segment of a frame or two, then a discontinuity and a second init (a player or recording
/// that starts there gets no video from it, and MSE cannot add a source buffer later). The
/// frames held are released in arrival order; after [`START_WAIT`], or past
/// [`START_HELD_BYTES`], the tracks that started are published alone.
#[derive(Debug)]
pub struct StartGate {
    open: bool,
    need_video: bool,
    need_audio: bool,
    wait: Duration,
    held_bytes_max: usize,
    since: Option<Instant>,
    held: Vec<StartFrame>,
    held_bytes: usize,
}

impl StartGate {
    /// A gate for an offer with these tracks (open at once unless both are there).
    pub fn new(video: bool, audio: bool, wait: Duration, held_bytes_max: usize) -> Self {
        Self {
            open: !(video && audio),
            need_video: video,
            need_audio: audio,
            wait,
            held_bytes_max,
            since: None,
            held: Vec::new(),
            held_bytes: 0,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Hold `f` (arriving at `now`) while the gate is closed. Returns every frame held, in
    /// arrival order, when this one opens the gate (`f` itself when it was open already), with
    /// the first codec of each track taken out of its frame: set them all before the first push,
    /// so the stream announces one track set with every track that started.
    pub fn pass(&mut self, f: StartFrame, now: Instant) -> (Vec<Codec>, Vec<StartFrame>) {
        if self.open {
            return (Vec::new(), vec![f]);
        }
        match f.kind {
            TrackKind::Video => self.need_video = false,
            TrackKind::Audio => self.need_audio = false,
        }
        let since = *self.since.get_or_insert(now);
        self.held_bytes += f.data.len();
        self.held.push(f);
        let late = now.saturating_duration_since(since) >= self.wait;
        if (!self.need_video && !self.need_audio) || late || self.held_bytes > self.held_bytes_max {
            self.open = true;
            self.held_bytes = 0;
            let mut frames = std::mem::take(&mut self.held);
            let mut codecs = Vec::with_capacity(2);
            for kind in [TrackKind::Video, TrackKind::Audio] {
                if let Some(c) = frames.iter_mut().find(|f| f.kind == kind) {
                    codecs.extend(c.codec.take());
                }
            }
            return (codecs, frames);
        }
        (Vec::new(), Vec::new())
    }

    /// The track that had not started when the gate opened, if any.
    pub fn missing(&self) -> Option<TrackKind> {
        if self.need_video {
            Some(TrackKind::Video)
        } else if self.need_audio {
            Some(TrackKind::Audio)
        } else {
            None
        }
    }
}

/// One track's RTP clock mapped onto the session clock (90 kHz ticks since the first frame).
#[derive(Clone, Copy, Debug)]
pub struct TrackClock {
    base_rtp: u64,
    base_ticks: i64,
    rate: u64,
    last: i64,
}

impl TrackClock {
    pub fn map(&mut self, rtp: u64) -> i64 {
        let d = rtp as i128 - self.base_rtp as i128;
        let t = self.base_ticks as i128 + d * 90_000 / self.rate as i128;
        let t = t.clamp(i64::MIN as i128 / 2, i64::MAX as i128 / 2) as i64;
        // Never step back (a rewrite of RTP timestamps by the sender, say): one tick forward.
        let t = if t <= self.last { self.last + 1 } else { t };
        self.last = t;
        t
    }
}

/// How the core reaches a WHIP publisher ([`PublisherControl`]): a kick and keyframe requests
/// (one bit per simulcast layer; bit 0: the stream's video track) are flags its worker takes,
/// woken through the worker's waker. Whoever asks never waits for the worker.
pub struct WhipControl {
    layers: AtomicU32,
    kicked: AtomicBool,
    waker: Waker,
}

impl WhipControl {
    /// `waker`: of the worker that hosts the publisher.
    pub fn new(waker: Waker) -> Self {
        Self {
            layers: AtomicU32::new(0),
            kicked: AtomicBool::new(false),
            waker,
        }
    }

    /// The layers asked for since the last call.
    fn take_keyframes(&self) -> u32 {
        self.layers.swap(0, Ordering::AcqRel)
    }

    fn keyframes_pending(&self) -> bool {
        self.layers.load(Ordering::Acquire) != 0
    }

    pub fn kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }
}

impl PublisherControl for WhipControl {
    fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn request_keyframe(&self, layer: u8) {
        self.layers
            .fetch_or(1 << (layer as u32).min(31), Ordering::AcqRel);
        self.waker.wake();
    }
}

/// Per-session counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct WhipStats {
    pub video_frames: u64,
    pub audio_frames: u64,
    pub bytes: u64,
    pub keyframe_requests: u64,
    pub bad_frames: u64,
}

/// The publisher role of a WebRTC peer ([`crate::webrtc::peer`]): the `Publisher` a WHIP
/// session feeds, and the depacketized media on its way there.
pub struct WhipPublisher {
    pub stream: Arc<str>,
    publisher: Publisher,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    /// Video per rid (one slot without simulcast): assemblers, clocks, layer ranking.
    video: LayerSet,
    opus_set: bool,
    /// The first frames wait until both offered tracks have started (see [`StartGate`]).
    start: StartGate,
    t0: Option<Instant>,
    audio_clock: Option<TrackClock>,
    control: Arc<WhipControl>,
    pub stats: WhipStats,
}

impl PeerRole for WhipPublisher {
    fn kind(&self) -> &'static str {
        "publisher"
    }

    fn on_event(&mut self, link: &mut Link, e: Event, now: Instant) {
        match e {
            Event::Connected => {
                tracing::info!(publisher = link.id, stream = %self.stream, side = "ingest",
                    "WHIP publisher connected");
            }
            Event::MediaData(m) => self.on_media(m, now),
            _ => {}
        }
    }
}

impl WhipPublisher {
    /// `control`: the handle the stream was given when `publisher` began.
    pub fn new(publisher: Publisher, control: Arc<WhipControl>) -> Self {
        Self {
            stream: Arc::from(publisher.name()),
            publisher,
            video_mid: None,
            audio_mid: None,
            video: LayerSet::new(0, None),
            opus_set: false,
            start: StartGate::new(false, false, START_WAIT, START_HELD_BYTES),
            t0: None,
            audio_clock: None,
            control,
            stats: WhipStats::default(),
        }
    }

    /// Act on the core's requests: a kick marks the peer dead; keyframes that viewers (by
    /// layer), lost frames or the schedule (by rid) want are asked for, paced by
    /// [`crate::media::control::KeyframeRequests`]. True when a request was written (the caller
    /// drains the peer).
    pub fn on_control(&mut self, link: &mut Link, now: Instant) -> bool {
        if self.control.kicked() {
            link.kill(DropReason::Kicked);
            return false;
        }
        if !link.connected() {
            // Taken once connected (the keyframe_retry_at deadline says when).
            return false;
        }
        let mask = self.control.take_keyframes();
        self.video.want_keyframes(mask, now);
        let Some(mid) = self.video_mid else {
            return false;
        };
        let rids = self.video.due_requests(now);
        if rids.is_empty() {
            return false;
        }
        let Some(mut w) = link.rtc.writer(mid) else {
            return false;
        };
        let mut sent = false;
        for rid in rids {
            if w.request_keyframe(rid, KeyframeRequestKind::Pli).is_ok() {
                self.stats.keyframe_requests += 1;
                sent = true;
            }
        }
        sent
    }

    /// When a pending keyframe request may go out.
    pub fn keyframe_retry_at(&self, link: &Link) -> Option<Instant> {
        if !link.connected() {
            return None;
        }
        if self.control.keyframes_pending() {
            return Some(link.created);
        }
        self.video.next_request_at(link.created)
    }

    /// `slot`: the video rid's slot in [`LayerSet`] (None for audio).
    fn clock_for(&mut self, kind: TrackKind, slot: Option<usize>, m: &MediaData) -> i64 {
        let t0 = *self.t0.get_or_insert(m.network_time);
        let rate = m.time.frequency().get() as u64;
        let slot = match (kind, slot) {
            (TrackKind::Video, Some(i)) => &mut self.video.layer_mut(i).clock,
            _ => &mut self.audio_clock,
        };
        let c = slot.get_or_insert_with(|| {
            let since = m.network_time.saturating_duration_since(t0);
            TrackClock {
                base_rtp: m.time.numer(),
                base_ticks: (since.as_micros() as i64) * 9 / 100,
                rate: rate.max(1),
                last: i64::MIN / 2,
            }
        });
        c.map(m.time.numer())
    }

    fn on_media(&mut self, m: MediaData, now: Instant) {
        let wallclock = SystemTime::now();
        if Some(m.mid) == self.video_mid {
            if m.params.spec().codec != RtcCodec::H264 {
                return;
            }
            let Some(slot) = self.video.slot(m.rid) else {
                return;
            };
            if !m.contiguous {
                self.video.layer_mut(slot).h264.lost();
            }
            let ts = self.clock_for(TrackKind::Video, Some(slot), &m);
            match self.video.layer_mut(slot).h264.push(&m.data) {
                Ok(Some(au)) => {
                    if let Some(p) = &au.params {
                        tracing::info!(stream = %self.stream, side = "ingest", path = "whip",
                            rid = ?m.rid, codec = %p.codec_string(), width = p.width,
                            height = p.height, "WHIP video track");
                    }
                    self.stats.video_frames += 1;
                    self.stats.bytes += au.data.len() as u64;
                    match self.video.place(slot, &au, now) {
                        Placement::Primary { codec } => self.publish(
                            StartFrame {
                                kind: TrackKind::Video,
                                ts,
                                keyframe: au.keyframe,
                                data: au.data,
                                wallclock,
                                codec,
                            },
                            now,
                        ),
                        Placement::Layer(n, codec) => self.publisher.push_layer(
                            n,
                            &codec,
                            ts,
                            ts,
                            au.keyframe,
                            au.data,
                            wallclock,
                        ),
                        Placement::Drop => {}
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.stats.bad_frames += 1;
                    self.video.layer_mut(slot).h264.lost();
                    tracing::debug!(stream = %self.stream, side = "ingest", "WHIP H.264: {e}");
                }
            }
        } else if Some(m.mid) == self.audio_mid {
            if m.params.spec().codec != RtcCodec::Opus || m.data.is_empty() {
                return;
            }
            let codec = (!self.opus_set).then(|| {
                self.opus_set = true;
                Codec::Opus(OpusParams {
                    channels: m.params.spec().channels.unwrap_or(2).clamp(1, 2),
                    sample_rate: 48_000,
                })
            });
            let ts = self.clock_for(TrackKind::Audio, None, &m);
            self.stats.audio_frames += 1;
            self.stats.bytes += m.data.len() as u64;
            let f = StartFrame {
                kind: TrackKind::Audio,
                ts,
                keyframe: true,
                // The depacketized packet, shared as it is (no copy).
                data: Bytes::from_owner(m.data.clone()),
                wallclock,
                codec,
            };
            self.publish(f, now);
        }
    }

    /// Through the start gate to the stream: a frame's codec is set just before it.
    fn publish(&mut self, f: StartFrame, now: Instant) {
        if self.start.is_open() {
            return self.push_now(f, now);
        }
        let (codecs, frames) = self.start.pass(f, now);
        if self.start.is_open() {
            if let Some(kind) = self.start.missing() {
                tracing::info!(stream = %self.stream, side = "ingest", path = "whip",
                    missing = ?kind, held = frames.len(),
                    "WHIP track did not start in time; publishing without it");
            }
        }
        for c in codecs {
            self.publisher.set_codec(c);
        }
        for f in frames {
            self.push_now(f, now);
        }
    }

    fn push_now(&mut self, f: StartFrame, now: Instant) {
        if let Some(c) = f.codec {
            self.publisher.set_codec(c);
        }
        self.publisher
            .push(f.kind, f.ts, f.ts, f.keyframe, f.data, f.wallclock, now);
    }

    /// Record why the session ended on the stream (shown by the API) before it is dropped.
    pub fn end(&mut self, why: DropReason) {
        if !matches!(
            why,
            DropReason::Deleted | DropReason::Shutdown | DropReason::Kicked
        ) {
            self.publisher
                .fail(format!("WHIP publisher dropped: {}", why.as_str()));
        }
    }
}

/// How many rids the first `a=simulcast:send` line of an offer lists (alternatives count once).
pub fn simulcast_rids(offer: &str) -> usize {
    offer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=simulcast:send "))
        .map(|rest| {
            let list = rest.split_whitespace().next().unwrap_or("");
            list.split(';').filter(|r| !r.is_empty()).count()
        })
        .unwrap_or(0)
        .min(crate::media::MAX_LAYERS)
}

/// Find the video and audio m-lines of an accepted offer.
pub fn media_mids(rtc: &Rtc, mids: &[String]) -> (Option<Mid>, Option<Mid>) {
    let mut v = None;
    let mut a = None;
    for m in mids {
        let mid = Mid::from(m.as_str());
        let Some(media) = rtc.media(mid) else {
            continue;
        };
        if media.disabled() {
            continue;
        }
        match media.kind() {
            MediaKind::Video if v.is_none() => v = Some(mid),
            MediaKind::Audio if a.is_none() => a = Some(mid),
            _ => {}
        }
    }
    (v, a)
}

impl WhipPublisher {
    /// Set the m-lines found in the offer (see [`media_mids`]).
    pub fn set_mids(&mut self, video: Option<Mid>, audio: Option<Mid>) {
        self.video_mid = video;
        self.audio_mid = audio;
        self.start = StartGate::new(
            video.is_some(),
            audio.is_some(),
            START_WAIT,
            START_HELD_BYTES,
        );
    }

    /// Video set-up from the offer: how many simulcast rids it announced (0: none), and how
    /// long without a keyframe before the publisher is asked for one (0: only when needed).
    pub fn set_video(&mut self, rids: usize, keyframe_interval_ms: u64) {
        self.video = LayerSet::new(rids, Some(Duration::from_millis(keyframe_interval_ms)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // libx264 baseline 320x240.
    const SPS: &[u8] = &[
        0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
    ];
    const PPS: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, n) in nals.iter().enumerate() {
            if i % 2 == 0 {
                v.extend_from_slice(&[0, 0, 0, 1]);
            } else {
                v.extend_from_slice(&[0, 0, 1]);
            }
            v.extend_from_slice(n);
        }
        v
    }

    #[test]
    fn assembler_builds_avcc_and_waits_for_idr() {
        let mut a = H264Assembler::new();
        // P frame before anything: dropped.
        assert!(a.push(&annexb(&[&[0x41, 9, 9]])).unwrap().is_none());
        // IDR with SPS/PPS in band.
        let au = a
            .push(&annexb(&[&[9, 0x10], SPS, PPS, &[0x65, 1, 2, 3]]))
            .unwrap()
            .expect("access unit");
        assert!(au.keyframe);
        let p = au.params.expect("params announced with the first frame");
        assert_eq!(p.nalu_length_size, 4);
        assert_eq!((p.width, p.height), (320, 240));
        assert_eq!(&p.sps[0][..], SPS);
        assert_eq!(&au.data[..], &[0, 0, 0, 4, 0x65, 1, 2, 3]);
        let p2 = parse_avcc(p.avcc.clone()).unwrap();
        assert_eq!(p2, p);
        // P frame: no params, not a keyframe.
        let au = a.push(&annexb(&[&[0x41, 7]])).unwrap().unwrap();
        assert!(!au.keyframe && au.params.is_none());
        // Same SPS/PPS again: no new params.
        let au = a.push(&annexb(&[SPS, PPS, &[0x65, 4]])).unwrap().unwrap();
        assert!(au.keyframe && au.params.is_none());
        // Loss: wait for the next IDR.
        a.lost();
        assert!(a.wants_keyframe());
        assert!(a.push(&annexb(&[&[0x41, 7]])).unwrap().is_none());
        assert!(a.push(&annexb(&[&[0x65, 7]])).unwrap().is_some());
        // Garbage never panics.
        for junk in [
            &[0u8; 0][..],
            &[0, 0, 1],
            &[0, 0, 1, 0x67],
            &[0, 0, 1, 0x67, 0x42],
        ] {
            let _ = a.push(junk);
        }
    }

    #[test]
    fn hostile_access_units_never_panic() {
        let mut a = H264Assembler::new();
        a.push(&annexb(&[SPS, PPS, &[0x65, 1]])).unwrap();
        let mut seed = 0x1234_5678_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..5_000 {
            let len = (next() % 300) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Sprinkle start codes and parameter-set headers in.
            for k in (0..d.len()).step_by(17) {
                if next() % 3 == 0 && k + 4 < d.len() {
                    d[k..k + 4].copy_from_slice(&[0, 0, 1, [0x67, 0x68, 0x65, 0x41][i % 4]]);
                }
            }
            let _ = a.push(&d);
        }
        // Still works afterwards.
        let mut b = H264Assembler::new();
        assert!(b.push(&annexb(&[SPS, PPS, &[0x65, 1]])).unwrap().is_some());
    }

    fn sf(kind: TrackKind, ts: i64, bytes: usize) -> StartFrame {
        let codec = match (kind, ts) {
            (TrackKind::Audio, 0) => Some(Codec::Opus(OpusParams {
                channels: 2,
                sample_rate: 48_000,
            })),
            (TrackKind::Video, 0) => Some(Codec::H264(
                H264Assembler::new()
                    .push(&annexb(&[SPS, PPS, &[0x65, 1]]))
                    .unwrap()
                    .unwrap()
                    .params
                    .unwrap(),
            )),
            _ => None,
        };
        StartFrame {
            kind,
            ts,
            keyframe: true,
            data: Bytes::from(vec![0u8; bytes]),
            wallclock: SystemTime::now(),
            codec,
        }
    }

    #[test]
    fn start_gate_holds_the_first_track_until_the_other_starts() {
        use TrackKind::{Audio, Video};
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let ts = |(_, v): &(Vec<Codec>, Vec<StartFrame>)| {
            v.iter().map(|f| (f.kind, f.ts)).collect::<Vec<_>>()
        };
        let kinds = |(c, v): &(Vec<Codec>, Vec<StartFrame>)| {
            assert!(
                v.iter().all(|f| f.codec.is_none()),
                "codecs are set up front"
            );
            c.iter().map(|c| c.kind()).collect::<Vec<_>>()
        };
        // Video first (as in a WebRTC publisher whose IDR beats its Opus): held until the
        // audio starts, then everything in arrival order, then frame by frame.
        let mut g = StartGate::new(true, true, Duration::from_secs(3), 1 << 20);
        assert!(!g.is_open());
        assert!(ts(&g.pass(sf(Video, 0, 100), ms(0))).is_empty());
        assert!(ts(&g.pass(sf(Video, 3000, 100), ms(33))).is_empty());
        let out = g.pass(sf(Audio, 0, 10), ms(40));
        assert_eq!(ts(&out), [(Video, 0), (Video, 3000), (Audio, 0)]);
        assert_eq!(kinds(&out), [Video, Audio]);
        assert!(g.is_open() && g.missing().is_none());
        assert_eq!(ts(&g.pass(sf(Video, 6000, 100), ms(66))), [(Video, 6000)]);
        // Audio first, the same.
        let mut g = StartGate::new(true, true, Duration::from_secs(3), 1 << 20);
        assert!(ts(&g.pass(sf(Audio, 0, 10), ms(0))).is_empty());
        let out = g.pass(sf(Video, 0, 100), ms(5));
        assert_eq!(ts(&out), [(Audio, 0), (Video, 0)]);
        assert_eq!(kinds(&out), [Video, Audio]);
        // A track that never starts: the other is published alone after the wait.
        let mut g = StartGate::new(true, true, Duration::from_secs(3), 1 << 20);
        assert!(ts(&g.pass(sf(Audio, 0, 10), ms(100))).is_empty());
        assert!(ts(&g.pass(sf(Audio, 1, 10), ms(3_099))).is_empty());
        let out = g.pass(sf(Audio, 2, 10), ms(3_100));
        assert_eq!(ts(&out).len(), 3);
        assert_eq!(kinds(&out), [Audio]);
        assert_eq!(g.missing(), Some(Video));
        // Held bytes are bounded: past the limit the gate opens.
        let mut g = StartGate::new(true, true, Duration::from_secs(3), 250);
        assert!(ts(&g.pass(sf(Video, 0, 200), ms(0))).is_empty());
        assert_eq!(ts(&g.pass(sf(Video, 1, 200), ms(1))).len(), 2);
        // One-track offers never wait.
        for (v, a) in [(true, false), (false, true)] {
            let mut g = StartGate::new(v, a, Duration::from_secs(3), 1 << 20);
            assert_eq!(ts(&g.pass(sf(Audio, 0, 10), ms(0))).len(), 1);
        }
    }

    #[test]
    fn clocks_map_to_90k_and_never_go_back() {
        let mut c = TrackClock {
            base_rtp: 1000,
            base_ticks: 500,
            rate: 48_000,
            last: i64::MIN / 2,
        };
        assert_eq!(c.map(1000), 500);
        assert_eq!(c.map(1960), 500 + 1800);
        assert_eq!(c.map(1000), 500 + 1801);
    }
}
