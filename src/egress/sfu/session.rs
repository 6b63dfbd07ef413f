//! One WHEP viewer: its str0m `Rtc` (ICE-lite, RTP mode) and what the SFU keeps next to it
//! (sequence numbers, the timestamp mapping, keyframe state). Sans-IO: datagrams, frames and time
//! come in as arguments; datagrams to send go out into the caller's outbox.
//!
//! Per packet the viewer does only what must differ per viewer: `RtpWrite` with its own sequence
//! number, timestamp and payload type, pointing at the shared payload (`Arc<[u8]>`, no copy);
//! str0m writes the header and SRTP-encrypts into the datagram it hands back (the one per-viewer
//! copy), which moves into the send batch without another copy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Event, IceConnectionState, Input, Output, Rtc, RtcError};

use super::SfuFrame;
use crate::io::Outgoing;
use crate::media::TrackKind;

/// Spacing of the re-timestamped GOP-cache frames a new viewer gets at once (1 ms at 90 kHz): the
/// decoder runs through them immediately and shows the newest, instead of playing the cached
/// seconds back in real time.
const FAST_START_STEP: i64 = 90;

/// Why a viewer was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Deleted,
    IceDisconnected,
    Idle,
    ConnectTimeout,
    StreamEnded,
    RtcError,
    Shutdown,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Deleted => "deleted",
            DropReason::IceDisconnected => "ice-disconnected",
            DropReason::Idle => "idle",
            DropReason::ConnectTimeout => "connect-timeout",
            DropReason::StreamEnded => "stream-ended",
            DropReason::RtcError => "rtc-error",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Video output of a viewer: the negotiated m-line and payload type.
#[derive(Clone, Copy, Debug)]
pub struct VideoOut {
    pub mid: Mid,
    pub pt: Pt,
}

/// Audio output of a viewer: the negotiated Opus m-line and payload type.
#[derive(Clone, Copy, Debug)]
pub struct AudioOut {
    pub mid: Mid,
    pub pt: Pt,
}

/// Per-viewer audio state (Opus on a 48 kHz RTP clock).
struct AudioState {
    out: AudioOut,
    seq: u64,
    /// RTP timestamp = pts × 48/90 + offset; set from the video offset so A/V stay aligned.
    offset: Option<i64>,
    last_ts: Option<i64>,
    epoch: u64,
}

/// Per-viewer counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct ViewerStats {
    pub packets: u64,
    pub bytes: u64,
    pub frames: u64,
    pub frames_skipped: u64,
    pub keyframe_requests: u64,
    pub keyframe_answers: u64,
    /// Simulcast layer changes (at a keyframe of the new layer).
    pub layer_switches: u64,
}

pub struct Viewer {
    pub id: u64,
    pub stream: Arc<str>,
    pub local_ufrag: String,
    rtc: Rtc,
    video: VideoOut,
    connected: bool,
    /// Just connected: the worker sends the GOP cache before the next live frame.
    pub needs_start: bool,
    /// Waiting for a keyframe (joined without a cache, or missed frames).
    need_keyframe: bool,
    /// Next RTP sequence number (extended; starts below 2^15 so the ROC stays 0).
    seq: u64,
    /// RTP timestamp = pts + ts_offset (mod 2^32).
    ts_offset: i64,
    last_ts: Option<i64>,
    /// The stream's frame index of the last frame written (gap ⇒ wait for a keyframe).
    last_index: Option<u64>,
    last_epoch: u64,
    last_key_answer: Option<Instant>,
    pending_keyframe_request: bool,
    pub next_timeout: Instant,
    pub last_rx: Instant,
    pub created: Instant,
    /// Where this viewer's media goes (the ICE-nominated remote address).
    pub remote: Option<SocketAddr>,
    pub dead: Option<DropReason>,
    pub stats: ViewerStats,
    audio: Option<AudioState>,
    /// Simulcast layer being sent (0 = best), and the one to move to at its next keyframe.
    layer: u8,
    target_layer: u8,
    /// Latest send-side bandwidth estimate (TWCC, or REMB from the viewer), bits/s.
    estimate: Option<u64>,
    estimate_fresh: bool,
    /// The layer last reported to the session table (API).
    pub reported_layer: u8,
    /// str0m's bandwidth estimation runs for this viewer.
    pub bwe: bool,
    /// Admission slot: pending until ICE + DTLS complete, given back when the viewer is dropped.
    slot: Option<super::admission::Slot>,
}

impl Viewer {
    /// Send the stream's (Opus) audio on this m-line too.
    pub fn set_audio(&mut self, out: Option<AudioOut>) {
        self.audio = out.map(|out| AudioState {
            out,
            seq: 1 + (rand::random::<u16>() as u64 & 0x3fff),
            offset: None,
            last_ts: None,
            epoch: 0,
        });
    }

    /// Write one Opus packet. Audio starts once video has started, on the same clock origin.
    fn send_audio(&mut self, f: &SfuFrame, now: Instant, out: &mut Vec<Outgoing>) {
        let Some(last_video) = self.last_ts else {
            return;
        };
        let video_offset = self.ts_offset;
        let Some(a) = self.audio.as_mut() else {
            return;
        };
        let to48 = |t: i64| t * 48 / 90;
        let mut offset = *a.offset.get_or_insert(to48(video_offset));
        if a.epoch != f.epoch {
            // New publisher session: continue from the video's current position.
            offset = to48(last_video) - to48(f.pts);
            a.epoch = f.epoch;
        }
        let mut ts = to48(f.pts) + offset;
        if let Some(l) = a.last_ts {
            if ts <= l || ts > l + 48_000 * 5 {
                offset += l + 960 - ts;
                ts = l + 960;
            }
        }
        a.offset = Some(offset);
        a.last_ts = Some(ts);
        let (mid, pt) = (a.out.mid, a.out.pt);
        let seq = a.seq;
        a.seq += f.packets.len() as u64;
        let mut direct = self.rtc.direct_api();
        let Some(tx) = direct.stream_tx_by_mid(mid, None) else {
            return;
        };
        for (i, p) in f.packets.iter().enumerate() {
            tx.write_rtp(
                RtpWrite::new(pt, (seq + i as u64).into(), ts as u32, now, p.data.clone())
                    .marker(p.marker)
                    .nackable(false),
            );
            self.stats.packets += 1;
        }
        self.tick(now, out);
    }

    pub fn new(
        id: u64,
        stream: Arc<str>,
        rtc: Rtc,
        video: VideoOut,
        local_ufrag: String,
        now: Instant,
    ) -> Self {
        Self {
            id,
            stream,
            local_ufrag,
            rtc,
            video,
            connected: false,
            needs_start: false,
            need_keyframe: true,
            seq: 1 + (rand::random::<u16>() as u64 & 0x3fff),
            ts_offset: rand::random::<u32>() as i64,
            last_ts: None,
            last_index: None,
            last_epoch: 0,
            last_key_answer: None,
            pending_keyframe_request: false,
            next_timeout: now,
            last_rx: now,
            created: now,
            remote: None,
            dead: None,
            stats: ViewerStats::default(),
            audio: None,
            layer: 0,
            target_layer: 0,
            estimate: None,
            estimate_fresh: false,
            reported_layer: 0,
            bwe: false,
            slot: None,
        }
    }

    /// Hold the viewer's admission slot (see [`super::admission`]).
    pub fn set_slot(&mut self, slot: Option<super::admission::Slot>) {
        self.slot = slot;
    }

    /// The simulcast layer being sent.
    pub fn layer(&self) -> u8 {
        self.layer
    }

    pub fn target_layer(&self) -> u8 {
        self.target_layer
    }

    /// Layer to start on (before the first frame).
    pub fn set_start_layer(&mut self, layer: u8) {
        self.layer = layer;
        self.target_layer = layer;
    }

    /// Move to `layer` at its next keyframe (the caller asks the publisher for one). Returns
    /// true when that is a change of plan.
    pub fn set_target_layer(&mut self, layer: u8) -> bool {
        let changed = self.target_layer != layer;
        self.target_layer = layer;
        changed
    }

    /// The bandwidth estimate, when it changed since the last call.
    pub fn take_estimate(&mut self) -> Option<u64> {
        std::mem::take(&mut self.estimate_fresh)
            .then_some(self.estimate)
            .flatten()
    }

    pub fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// Tell str0m's BWE what to sustain (the layer being sent) and what to probe for (the best
    /// layer), so the estimate can grow back after congestion.
    pub fn set_bwe_bitrates(&mut self, minimum: u64, desired: u64) {
        use str0m::bwe::Bitrate;
        self.rtc
            .bwe()
            .set_bitrate(Bitrate::bps(minimum), Bitrate::bps(desired.max(minimum)));
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    pub fn rtc(&mut self) -> &mut Rtc {
        &mut self.rtc
    }

    /// Does this datagram belong to this viewer (STUN integrity, or a known peer address)?
    pub fn accepts(&self, now: Instant, src: SocketAddr, dst: SocketAddr, data: &[u8]) -> bool {
        self.accepts_proto(now, Protocol::Udp, src, dst, data)
    }

    /// [`Viewer::accepts`] for a packet that came over `proto` (UDP, or ICE-TCP).
    pub fn accepts_proto(
        &self,
        now: Instant,
        proto: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) -> bool {
        match Receive::new(proto, src, dst, data) {
            Ok(r) => self.rtc.accepts(&Input::Receive(now, r)),
            Err(_) => false,
        }
    }

    /// Feed one datagram. Malformed input is dropped (str0m rejects it without state change).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
        out: &mut Vec<Outgoing>,
    ) {
        self.handle_packet(now, Protocol::Udp, src, dst, data, out)
    }

    /// [`Viewer::handle_datagram`] for a packet that came over `proto` (UDP, or ICE-TCP).
    pub fn handle_packet(
        &mut self,
        now: Instant,
        proto: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
        out: &mut Vec<Outgoing>,
    ) {
        let Ok(r) = Receive::new(proto, src, dst, data) else {
            return;
        };
        self.last_rx = now;
        if let Err(e) = self.rtc.handle_input(Input::Receive(now, r)) {
            tracing::debug!(viewer = self.id, "rtc input: {e}");
        }
        self.drain(now, out);
    }

    /// Drive timers (ICE consent, RTCP reports, DTLS retransmits).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(viewer = self.id, "rtc timeout: {e}");
        }
        self.drain(now, out);
    }

    /// Drain str0m's output until it returns a timeout.
    pub fn drain(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    // Never spin: str0m may ask for "now".
                    self.next_timeout = t.max(now + Duration::from_micros(500));
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    self.remote = Some(t.destination);
                    let data: Vec<u8> = t.contents.into();
                    self.stats.bytes += data.len() as u64;
                    out.push(Outgoing {
                        dst: t.destination,
                        data,
                    });
                }
                Ok(Output::Event(e)) => self.on_event(e),
                Err(e) => {
                    self.fail(e);
                    return;
                }
            }
        }
    }

    fn fail(&mut self, e: RtcError) {
        tracing::info!(viewer = self.id, stream = %self.stream, "rtc error: {e}");
        self.dead.get_or_insert(DropReason::RtcError);
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Connected => {
                self.connected = true;
                self.needs_start = true;
                if let Some(s) = self.slot.as_mut() {
                    s.connected();
                }
                tracing::debug!(viewer = self.id, stream = %self.stream, "viewer connected");
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.dead.get_or_insert(DropReason::IceDisconnected);
            }
            Event::EgressBitrateEstimate(k) => {
                let bps = match k {
                    str0m::bwe::BweKind::Twcc { estimate, .. } => estimate.as_u64(),
                    str0m::bwe::BweKind::Remb { estimate, .. } => estimate.as_u64(),
                    _ => return,
                };
                self.estimate = Some(bps);
                self.estimate_fresh = true;
            }
            Event::KeyframeRequest(r) if r.mid == self.video.mid => {
                self.stats.keyframe_requests += 1;
                tracing::trace!(viewer = self.id, kind = ?r.kind, "keyframe request");
                self.pending_keyframe_request = true;
            }
            _ => {}
        }
    }

    pub fn keyframe_request_pending(&self) -> bool {
        self.pending_keyframe_request
    }

    /// When a rate-limited keyframe request may be answered.
    pub fn keyframe_retry_at(&self, interval: Duration) -> Option<Instant> {
        if !self.pending_keyframe_request {
            return None;
        }
        Some(self.last_key_answer.map_or(self.created, |t| t + interval))
    }

    /// A keyframe request waits here until `take_keyframe_request` allows an answer.
    pub fn take_keyframe_request(&mut self, now: Instant, min_interval: Duration) -> bool {
        if !self.pending_keyframe_request || !self.connected {
            return false;
        }
        if let Some(t) = self.last_key_answer {
            if now.duration_since(t) < min_interval {
                return false;
            }
        }
        self.pending_keyframe_request = false;
        self.last_key_answer = Some(now);
        self.stats.keyframe_answers += 1;
        true
    }

    /// Start (or restart, for a keyframe request) from a GOP cache: the cached frames go out at
    /// once with timestamps 1 ms apart after the last one sent; live frames continue from there.
    /// With no usable cache the viewer waits for the next keyframe.
    pub fn start_from_gop(&mut self, gop: &[Arc<SfuFrame>], now: Instant, out: &mut Vec<Outgoing>) {
        self.needs_start = false;
        let video: Vec<&Arc<SfuFrame>> =
            gop.iter().filter(|f| f.kind == TrackKind::Video).collect();
        if video.first().is_none_or(|f| !f.keyframe) {
            self.need_keyframe = true;
            return;
        }
        let base = match self.last_ts {
            Some(t) => t + 3000, // one 30 fps frame after the last sent
            None => rand::random::<u32>() as i64,
        };
        for (i, f) in video.iter().enumerate() {
            let ts = base + i as i64 * FAST_START_STEP;
            self.write_frame_at(f, ts, now);
            if self.dead.is_some() {
                return;
            }
        }
        let last = video[video.len() - 1];
        self.ts_offset = base + (video.len() as i64 - 1) * FAST_START_STEP - last.pts;
        self.last_index = Some(last.index);
        self.last_epoch = last.epoch;
        self.need_keyframe = false;
        self.tick(now, out);
    }

    /// Write one live frame (shared payloads) and flush what str0m sends for it.
    pub fn send_frame(&mut self, f: &SfuFrame, now: Instant, out: &mut Vec<Outgoing>) {
        if !self.connected || self.needs_start {
            return;
        }
        if f.kind == TrackKind::Audio {
            self.send_audio(f, now, out);
            return;
        }
        let mut switched = false;
        if f.layer != self.layer {
            // Another simulcast layer: taken only at its keyframe, when it is the target.
            if f.layer != self.target_layer || !f.keyframe {
                return;
            }
            self.layer = f.layer;
            self.last_index = None;
            self.stats.layer_switches += 1;
            switched = true;
        }
        let gap = match self.last_index {
            Some(i) => f.epoch != self.last_epoch || f.index != i + 1,
            None => true,
        };
        if gap && !f.keyframe {
            self.need_keyframe = true;
        }
        if self.need_keyframe && !f.keyframe {
            self.stats.frames_skipped += 1;
            return;
        }
        self.need_keyframe = false;
        let mut ts = f.pts + self.ts_offset;
        if let Some(last) = self.last_ts {
            // A new publisher session (or a rebased timeline) must not step back or leap far.
            if f.epoch != self.last_epoch || ts < last - 90_000 || ts > last + 900_000 {
                self.ts_offset = last + 3000 - f.pts;
                ts = last + 3000;
            } else if switched && ts <= last {
                // Layers' clocks differ by the publisher's per-rid arrival jitter: never step
                // back at a switch.
                self.ts_offset += last + 1 - ts;
                ts = last + 1;
            }
        }
        self.last_index = Some(f.index);
        self.last_epoch = f.epoch;
        self.write_frame_at(f, ts, now);
        self.tick(now, out);
    }

    /// Write a frame's packets into str0m (no I/O yet).
    fn write_frame_at(&mut self, f: &SfuFrame, ts: i64, now: Instant) {
        let pt = self.video.pt;
        let mut direct = self.rtc.direct_api();
        let Some(tx) = direct.stream_tx_by_mid(self.video.mid, None) else {
            self.dead.get_or_insert(DropReason::RtcError);
            return;
        };
        for p in f.packets.iter() {
            tx.write_rtp(
                RtpWrite::new(pt, self.seq.into(), ts as u32, now, p.data.clone())
                    .marker(p.marker)
                    .nackable(true),
            );
            self.seq += 1;
            self.stats.packets += 1;
        }
        self.stats.frames += 1;
        self.last_ts = Some(ts);
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        self.handle_timeout(now, out);
    }
}

/// Headroom an upgrade needs: a better layer is taken when its rate fits in this share of the
/// estimate (the current one is kept while it fits the whole estimate), so a viewer does not flap
/// between two layers near the boundary.
const UPGRADE_SHARE: f64 = 0.8;

/// The simulcast layer a viewer should get: the best one (lowest index) whose measured rate fits
/// the bandwidth estimate; the lowest-quality layer present when none fits. `rates[l]` is 0 when
/// layer `l` is not being received. With no layer present the current one stays.
pub fn choose_layer(current: u8, estimate: u64, rates: &[u64]) -> u8 {
    let mut lowest = None;
    for (l, &r) in rates.iter().enumerate() {
        if r == 0 {
            continue;
        }
        lowest = Some(l as u8);
        let budget = if (l as u8) < current {
            estimate as f64 * UPGRADE_SHARE
        } else {
            estimate as f64
        };
        if r as f64 <= budget {
            return l as u8;
        }
    }
    lowest.unwrap_or(current)
}

/// Pick the H.264 payload type for the stream from what the offer negotiated: packetization-mode
/// 1, the stream's profile if offered (else any; `level-asymmetry-allowed` decoders take it).
/// `mids` are the offer's m-line ids (see [`crate::webrtc::offer::mids`]).
pub fn choose_video(rtc: &Rtc, mids: &[String], profile_idc: Option<u8>) -> Option<VideoOut> {
    use str0m::format::Codec;
    let mut best: Option<(u8, VideoOut)> = None;
    for m in mids {
        let mid = Mid::from(m.as_str());
        let Some(media) = rtc.media(mid) else {
            continue;
        };
        if media.kind() != MediaKind::Video || media.disabled() {
            continue;
        }
        for pt in media.remote_pts() {
            let Some(p) = rtc.codec_config().iter().find(|p| p.pt() == *pt) else {
                continue;
            };
            let spec = p.spec();
            if spec.codec != Codec::H264 || spec.format.packetization_mode != Some(1) {
                continue;
            }
            let plid = spec.format.profile_level_id.unwrap_or(0x42e01f);
            let offered_profile = (plid >> 16) as u8;
            let score = match profile_idc {
                Some(want) if want == offered_profile => 3,
                Some(0x42) | Some(0x4d) if offered_profile == 0x42 => 2,
                _ => 1,
            };
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, VideoOut { mid, pt: *pt }));
            }
        }
    }
    best.map(|(_, v)| v)
}

/// Pick the Opus payload type from the offer's audio m-lines, if any.
pub fn choose_audio(rtc: &Rtc, mids: &[String]) -> Option<AudioOut> {
    use str0m::format::Codec;
    for m in mids {
        let mid = Mid::from(m.as_str());
        let Some(media) = rtc.media(mid) else {
            continue;
        };
        if media.kind() != MediaKind::Audio || media.disabled() {
            continue;
        }
        for pt in media.remote_pts() {
            if let Some(p) = rtc.codec_config().iter().find(|p| p.pt() == *pt) {
                if p.spec().codec == Codec::Opus {
                    return Some(AudioOut { mid, pt: *pt });
                }
            }
        }
    }
    None
}
