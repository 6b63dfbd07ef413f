//! Frames: one access unit of one track, with its payload in a shared, reference-counted buffer.
//!
//! Every egress receives the same `Arc<Frame>`; nobody copies `data` on the way through the core.

use bytes::Bytes;
use std::time::SystemTime;

/// The media clock used by every frame in the core: 90 kHz (the MPEG/RTP video clock).
/// Audio egress derives sample-accurate times from the sample count and uses this only to resync.
pub const CLOCK_HZ: i64 = 90_000;

/// Which track of a stream a frame belongs to. A stream carries at most one of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrackKind {
    Video,
    Audio,
}

/// One access unit.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: TrackKind,
    /// Decode time, in `CLOCK_HZ` ticks, on the stream's monotonic timeline (continues across
    /// publisher reconnects).
    pub dts: i64,
    /// Presentation time, same clock (pts >= dts for H.264 with B-frames).
    pub pts: i64,
    /// Video: an IDR / random access point. Audio: always true.
    pub keyframe: bool,
    /// H.264: AVCC (NAL units prefixed by `H264Params::nalu_length_size` bytes, as received).
    /// AAC: one raw access unit (no ADTS header). Opus: one packet.
    pub data: Bytes,
    /// Wall clock when the frame reached the ingest (drives PROGRAM-DATE-TIME).
    pub wallclock: SystemTime,
}

impl Frame {
    /// Composition offset (pts - dts) in ticks.
    pub fn cts(&self) -> i64 {
        self.pts - self.dts
    }
}

/// Convert milliseconds (RTMP/FLV time) to core ticks.
pub fn ms_to_ticks(ms: i64) -> i64 {
    ms * (CLOCK_HZ / 1000)
}

/// Convert core ticks to seconds.
pub fn ticks_to_secs(t: i64) -> f64 {
    t as f64 / CLOCK_HZ as f64
}
