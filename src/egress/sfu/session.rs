//! The viewer role of a WebRTC peer ([`crate::webrtc::peer`]): what the SFU keeps next to a
//! WHEP viewer's `Rtc` (ICE-lite, RTP mode): sequence numbers, the timestamp mapping, keyframe
//! and simulcast-layer state. Sans-IO: frames and time come in as arguments; the RTP written
//! here leaves when the worker drains the peer.
//!
//! Per packet the viewer does only what must differ per viewer: `RtpWrite` with its own sequence
//! number, timestamp and payload type, pointing at the shared payload (`Arc<[u8]>`, no copy);
//! str0m copies it into its send buffer, then writes the header and SRTP-encrypts into a new
//! datagram, which moves into the send batch without another copy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::RtpWrite;
use str0m::{Event, Rtc};

use super::SfuFrame;
use crate::media::TrackKind;
use crate::webrtc::peer::{DropReason, Link, PeerRole};

/// Spacing of the re-timestamped GOP-cache frames a new viewer gets at once (1 ms at 90 kHz): the
/// decoder runs through them immediately and shows the newest, instead of playing the cached
/// seconds back in real time.
const FAST_START_STEP: i64 = 90;

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

/// Per-viewer counters (bytes sent: [`Link::bytes_out`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ViewerStats {
    pub packets: u64,
    pub frames: u64,
    pub frames_skipped: u64,
    pub keyframe_requests: u64,
    pub keyframe_answers: u64,
    /// Simulcast layer changes (at a keyframe of the new layer).
    pub layer_switches: u64,
}

/// The viewer role: what is sent to one WHEP viewer, and how.
pub struct Viewer {
    /// Another node's edge pull: its keyframe requests go to the publisher and are never
    /// answered from the GOP cache (a replay there repeats frames and moves its video clock
    /// against audio). Its first frames still come from the cache (fast start).
    pub relay: bool,
    video: VideoOut,
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
}

impl PeerRole for Viewer {
    fn kind(&self) -> &'static str {
        "viewer"
    }

    fn on_event(&mut self, link: &mut Link, e: Event, _now: Instant) {
        match e {
            Event::Connected => self.needs_start = true,
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
                tracing::trace!(viewer = link.id, kind = ?r.kind, "keyframe request");
                self.pending_keyframe_request = true;
            }
            _ => {}
        }
    }
}

impl Viewer {
    pub fn new(video: VideoOut, audio: Option<AudioOut>, bwe: bool) -> Self {
        Self {
            relay: false,
            video,
            needs_start: false,
            need_keyframe: true,
            seq: 1 + (rand::random::<u16>() as u64 & 0x3fff),
            ts_offset: rand::random::<u32>() as i64,
            last_ts: None,
            last_index: None,
            last_epoch: 0,
            last_key_answer: None,
            pending_keyframe_request: false,
            stats: ViewerStats::default(),
            audio: audio.map(|out| AudioState {
                out,
                seq: 1 + (rand::random::<u16>() as u64 & 0x3fff),
                offset: None,
                last_ts: None,
                epoch: 0,
            }),
            layer: 0,
            target_layer: 0,
            estimate: None,
            estimate_fresh: false,
            reported_layer: 0,
            bwe,
        }
    }

    /// Write one Opus packet. Audio starts once video has started, on the same clock origin.
    fn send_audio(&mut self, link: &mut Link, f: &SfuFrame, now: Instant) -> bool {
        let Some(last_video) = self.last_ts else {
            return false;
        };
        let video_offset = self.ts_offset;
        let Some(a) = self.audio.as_mut() else {
            return false;
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
        let mut direct = link.rtc.direct_api();
        let Some(tx) = direct.stream_tx_by_mid(mid, None) else {
            return false;
        };
        for (i, p) in f.packets.iter().enumerate() {
            tx.write_rtp(
                RtpWrite::new(pt, (seq + i as u64).into(), ts as u32, now, p.data.clone())
                    .marker(p.marker)
                    .nackable(false),
            );
            self.stats.packets += 1;
        }
        true
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
    pub fn set_bwe_bitrates(&mut self, link: &mut Link, minimum: u64, desired: u64) {
        use str0m::bwe::Bitrate;
        link.rtc
            .bwe()
            .set_bitrate(Bitrate::bps(minimum), Bitrate::bps(desired.max(minimum)));
    }

    pub fn keyframe_request_pending(&self) -> bool {
        self.pending_keyframe_request
    }

    /// When a rate-limited keyframe request may be answered (`created`: the peer's start).
    pub fn keyframe_retry_at(&self, created: Instant, interval: Duration) -> Option<Instant> {
        if !self.pending_keyframe_request {
            return None;
        }
        Some(self.last_key_answer.map_or(created, |t| t + interval))
    }

    /// A keyframe request waits here until `take_keyframe_request` allows an answer.
    pub fn take_keyframe_request(
        &mut self,
        link: &Link,
        now: Instant,
        min_interval: Duration,
    ) -> bool {
        if !self.pending_keyframe_request || !link.connected() {
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
    /// With no usable cache the viewer waits for the next keyframe. True when RTP was written
    /// (the caller drains the peer).
    pub fn start_from_gop(&mut self, link: &mut Link, gop: &[Arc<SfuFrame>], now: Instant) -> bool {
        self.needs_start = false;
        let video: Vec<&Arc<SfuFrame>> =
            gop.iter().filter(|f| f.kind == TrackKind::Video).collect();
        if video.first().is_none_or(|f| !f.keyframe) {
            self.need_keyframe = true;
            return false;
        }
        let base = match self.last_ts {
            Some(t) => t + 3000, // one 30 fps frame after the last sent
            None => rand::random::<u32>() as i64,
        };
        for (i, f) in video.iter().enumerate() {
            let ts = base + i as i64 * FAST_START_STEP;
            self.write_frame_at(link, f, ts, now);
            if link.dead.is_some() {
                return false;
            }
        }
        let last = video[video.len() - 1];
        self.ts_offset = base + (video.len() as i64 - 1) * FAST_START_STEP - last.pts;
        self.last_index = Some(last.index);
        self.last_epoch = last.epoch;
        self.need_keyframe = false;
        true
    }

    /// Write one live frame (shared payloads). True when RTP was written (the caller drains the
    /// peer).
    pub fn send_frame(&mut self, link: &mut Link, f: &SfuFrame, now: Instant) -> bool {
        if !link.connected() || self.needs_start {
            return false;
        }
        if f.kind == TrackKind::Audio {
            return self.send_audio(link, f, now);
        }
        let mut switched = false;
        if f.layer != self.layer {
            // Another simulcast layer: taken only at its keyframe, when it is the target.
            if f.layer != self.target_layer || !f.keyframe {
                return false;
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
            return false;
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
        self.write_frame_at(link, f, ts, now);
        true
    }

    /// Write a frame's packets into str0m (no I/O yet).
    fn write_frame_at(&mut self, link: &mut Link, f: &SfuFrame, ts: i64, now: Instant) {
        let pt = self.video.pt;
        let mut direct = link.rtc.direct_api();
        let Some(tx) = direct.stream_tx_by_mid(self.video.mid, None) else {
            link.kill(DropReason::RtcError);
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
