//! Audio bridge: AAC ↔ Opus with real codec libraries, once per stream, on an egress core.
//!
//! GUIDE §3: an RTMP program carries AAC, WebRTC viewers need Opus; a WHIP program carries Opus,
//! RTMP destinations (and HLS where Opus is not wanted) need AAC-LC. Video is never transcoded.
//!
//! Sans-IO like the rest of the media core: a [`Bridge`] owns no thread, no socket and no clock.
//! The egress core that owns a stream feeds it the stream's audio [`Frame`]s and gets back audio
//! `Frame`s in the target codec, on the same 90 kHz timeline:
//!
//! ```ignore
//! let mut bridge = Bridge::for_webrtc(track_set.audio.as_ref().unwrap(), &BridgeConfig::default())?
//!     .expect("AAC needs a bridge; Opus goes as is");
//! let opus = bridge.params();                     // Codec::Opus(..) for the SDP / str0m
//! for f in bridge.push(&aac_frame) { /* packetize once, fan out */ }
//! bridge.set_input(new_audio_codec)?;             // MediaEvent::Tracks with changed parameters
//! let tail = bridge.flush();                      // MediaEvent::Idle / Ended
//! ```
//!
//! Pipeline per direction (all state per stream, nothing per viewer):
//!
//! - [`AacToOpus`]: fdk-aac decoder (AAC-LC, HE-AAC v1/v2, any channel layout; fdk's own
//!   downmix/upmix to the configured channel count) → rubato FFT resampler to 48 kHz when the AAC
//!   rate is not 48 kHz → libopus encoder, 20 ms frames (1800 ticks each, continuous).
//! - [`OpusToAac`]: libopus decoder (48 kHz, packet-loss concealment and in-band FEC for gaps) →
//!   rubato to 44.1 kHz if configured → fdk-aac AAC-LC encoder, 1024-sample access units, plus the
//!   AudioSpecificConfig as [`AacParams`].
//!
//! Timestamps: output times are counted in samples from an anchor, so they are exact and
//! continuous (no millisecond rounding from RTMP leaks into RTP timestamps). Each input frame is
//! checked against where the samples say it should be (`timeline.rs`): jitter within half a frame
//! is ignored; a gap up to [`MAX_FILL_MS`] is filled (silence for AAC input, Opus PLC/FEC for Opus
//! input) so the output stays continuous; an overlap up to that is trimmed; anything larger
//! (publisher restart, timestamp jump) flushes what is pending and re-anchors on the new time.
//! Output times never go backwards. Bad frames are skipped and counted ([`BridgeStats`]), never a
//! panic.

mod aac_to_opus;
mod fdk;
pub mod libopus;
mod opus_to_aac;
mod resample;
mod timeline;

#[cfg(test)]
mod tests;

use serde::Serialize;

pub use aac_to_opus::AacToOpus;
pub use opus_to_aac::OpusToAac;

use super::frame::Frame;
use super::track::{AacParams, Codec, OpusParams};

/// Largest timestamp gap (or overlap) that is bridged by filling (or trimming) samples; a larger
/// jump is a discontinuity: pending audio is flushed and the output re-anchors.
pub const MAX_FILL_MS: i64 = 1000;

/// The Opus side: what the AAC → Opus direction produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusConfig {
    /// 1 or 2. Browsers play either; WebRTC SDP always says `opus/48000/2`.
    pub channels: u8,
    /// Target bitrate, bits/s (libopus VBR).
    pub bitrate: u32,
    /// libopus complexity 0..=10 (10 is the best quality and the most CPU).
    pub complexity: u8,
}

impl Default for OpusConfig {
    fn default() -> Self {
        OpusConfig {
            channels: 2,
            bitrate: 96_000,
            complexity: 10,
        }
    }
}

/// The AAC side: what the Opus → AAC direction produces (AAC-LC, what RTMP platforms want).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AacConfig {
    /// 48000 (no resampling) or 44100.
    pub sample_rate: u32,
    /// 1 or 2.
    pub channels: u8,
    /// Constant bitrate, bits/s.
    pub bitrate: u32,
}

impl Default for AacConfig {
    fn default() -> Self {
        AacConfig {
            sample_rate: 48_000,
            channels: 2,
            bitrate: 128_000,
        }
    }
}

/// Both directions' settings; the stream's input codec picks which one applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BridgeConfig {
    pub opus: OpusConfig,
    pub aac: AacConfig,
}

/// Why a bridge could not be built or reconfigured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    #[error("audio bridge: input codec {0} is not audio")]
    NotAudio(&'static str),
    #[error("audio bridge: {input} input cannot feed this bridge (it takes {expected})")]
    WrongInput {
        input: &'static str,
        expected: &'static str,
    },
    #[error("audio bridge: unsupported input: {0}")]
    Unsupported(String),
    #[error("audio bridge: bad configuration: {0}")]
    Config(String),
    #[error("audio bridge: codec library error: {0}")]
    Codec(String),
}

/// Counters of one bridge (exported per stream in /metrics by the owner).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BridgeStats {
    /// Audio frames pushed in (frames of another kind are ignored and not counted).
    pub frames_in: u64,
    /// Frames produced.
    pub frames_out: u64,
    /// Input frames that failed to decode (skipped; the gap is filled from the next good one).
    pub decode_errors: u64,
    /// Encoder failures (the audio of that frame is lost).
    pub encode_errors: u64,
    /// Gaps in the input filled with silence / concealment, and how many ms in total.
    pub gaps_filled: u64,
    pub filled_ms: u64,
    /// Overlapping input trimmed, and how many ms in total.
    pub overlaps_trimmed: u64,
    pub trimmed_ms: u64,
    /// Timestamp jumps (or flushes) after which the output re-anchored.
    pub discontinuities: u64,
    /// Input parameter changes applied.
    pub reconfigurations: u64,
}

/// One stream's audio bridge, in whichever direction its input needs.
#[allow(clippy::large_enum_variant)]
pub enum Bridge {
    AacToOpus(AacToOpus),
    OpusToAac(OpusToAac),
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bridge::AacToOpus(_) => f.write_str("Bridge::AacToOpus"),
            Bridge::OpusToAac(_) => f.write_str("Bridge::OpusToAac"),
        }
    }
}

impl Bridge {
    /// The bridge that turns `input` into the other audio codec (AAC → Opus, Opus → AAC).
    pub fn new(input: &Codec, config: &BridgeConfig) -> Result<Bridge, BridgeError> {
        match input {
            Codec::Aac(p) => Ok(Bridge::AacToOpus(AacToOpus::new(p, config.opus)?)),
            Codec::Opus(p) => Ok(Bridge::OpusToAac(OpusToAac::new(p, config.aac)?)),
            other => Err(BridgeError::NotAudio(other.name())),
        }
    }

    /// What a WebRTC egress needs for this audio track: `None` when it goes as is (Opus),
    /// a bridge for AAC, an error for anything else.
    pub fn for_webrtc(input: &Codec, config: &BridgeConfig) -> Result<Option<Bridge>, BridgeError> {
        match input {
            Codec::Opus(_) => Ok(None),
            Codec::Aac(_) => Bridge::new(input, config).map(Some),
            other => Err(BridgeError::NotAudio(other.name())),
        }
    }

    /// What an RTMP destination (or an AAC-only HLS rendition) needs: `None` for AAC-LC, which
    /// goes as is; a bridge for Opus; an error for anything else.
    pub fn for_aac_egress(
        input: &Codec,
        config: &BridgeConfig,
    ) -> Result<Option<Bridge>, BridgeError> {
        match input {
            Codec::Aac(_) => Ok(None),
            Codec::Opus(_) => Bridge::new(input, config).map(Some),
            other => Err(BridgeError::NotAudio(other.name())),
        }
    }

    /// Push one input frame; returns the frames it completed (often none or one).
    pub fn push(&mut self, frame: &Frame) -> Vec<Frame> {
        let mut out = Vec::new();
        self.push_into(frame, &mut out);
        out
    }

    /// Like [`Bridge::push`], appending to a reused vector.
    pub fn push_into(&mut self, frame: &Frame, out: &mut Vec<Frame>) {
        match self {
            Bridge::AacToOpus(b) => b.push_into(frame, out),
            Bridge::OpusToAac(b) => b.push_into(frame, out),
        }
    }

    /// Emit what is pending (the last partial frame, padded with silence) and start a new
    /// timeline with the next frame. For `MediaEvent::Idle` / `Ended`.
    pub fn flush(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        match self {
            Bridge::AacToOpus(b) => b.flush_into(&mut out),
            Bridge::OpusToAac(b) => b.flush_into(&mut out),
        }
        out
    }

    /// Drop what is pending without emitting it; the next frame starts a new timeline.
    pub fn reset(&mut self) {
        match self {
            Bridge::AacToOpus(b) => b.reset(),
            Bridge::OpusToAac(b) => b.reset(),
        }
    }

    /// The input track's parameters changed (a new `TrackSet`). The output parameters stay the
    /// same, so downstream (SDP, FLV sequence header) need not change.
    pub fn set_input(&mut self, input: &Codec) -> Result<(), BridgeError> {
        match (self, input) {
            (Bridge::AacToOpus(b), Codec::Aac(p)) => b.set_input(p),
            (Bridge::OpusToAac(b), Codec::Opus(p)) => b.set_input(p),
            (Bridge::AacToOpus(_), c) => Err(BridgeError::WrongInput {
                input: c.name(),
                expected: "AAC",
            }),
            (Bridge::OpusToAac(_), c) => Err(BridgeError::WrongInput {
                input: c.name(),
                expected: "Opus",
            }),
        }
    }

    /// The output track's codec parameters.
    pub fn params(&self) -> Option<Codec> {
        match self {
            Bridge::AacToOpus(b) => Some(Codec::Opus(b.params().clone())),
            Bridge::OpusToAac(b) => Some(Codec::Aac(b.params().clone())),
        }
    }

    pub fn stats(&self) -> BridgeStats {
        match self {
            Bridge::AacToOpus(b) => b.stats(),
            Bridge::OpusToAac(b) => b.stats(),
        }
    }
}

/// The Opus parameters every Opus output of this module has.
fn opus_params(channels: u8) -> OpusParams {
    OpusParams {
        channels,
        sample_rate: 48_000,
    }
}

/// Check that `p` is something [`AacToOpus`] can take; the fdk decoder has the last word.
fn check_aac_input(p: &AacParams) -> Result<(), BridgeError> {
    if !(7350..=96_000).contains(&p.sample_rate) {
        return Err(BridgeError::Unsupported(format!(
            "AAC sample rate {} Hz",
            p.sample_rate
        )));
    }
    if p.channels == 0 || p.channels > 8 {
        return Err(BridgeError::Unsupported(format!(
            "AAC with {} channels",
            p.channels
        )));
    }
    let rate = if p.object_type == 5 || p.object_type == 29 {
        p.sample_rate * 2
    } else {
        p.sample_rate
    };
    if rate != 48_000 {
        resample::Resample::new(rate, 48_000, 1)?;
    }
    Ok(())
}

fn i16_to_f32(s: i16) -> f32 {
    f32::from(s) * (1.0 / 32768.0)
}

fn f32_to_i16(s: f32) -> i16 {
    (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Convert interleaved `input` with `from` channels to `to` (1 or 2) channels, appending.
/// Used only when the decoder did not already deliver the configured layout.
fn remix(input: &[f32], from: usize, to: usize, out: &mut Vec<f32>) {
    if from == to || from == 0 {
        out.extend_from_slice(input);
        return;
    }
    for frame in input.chunks_exact(from) {
        match (from, to) {
            (1, 2) => out.extend_from_slice(&[frame[0], frame[0]]),
            (_, 1) => out.push((frame[0] + frame[1]) * 0.5),
            // More than two channels to stereo: front left/right (fdk's WAV order puts them first).
            (_, _) => out.extend_from_slice(&frame[..2]),
        }
    }
}
