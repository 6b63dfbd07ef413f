//! AAC (RTMP ingest) → Opus (WebRTC egress).

use bytes::Bytes;

use crate::media::frame::{Frame, TrackKind, CLOCK_HZ};
use crate::media::track::{AacParams, OpusParams};

use super::fdk::AacDecoder;
use super::libopus;
use super::resample::Resample;
use super::timeline::{Step, Timeline};
use super::{
    check_aac_input, i16_to_f32, opus_params, remix, BridgeError, BridgeStats, OpusConfig,
};

/// Opus frame: 20 ms at 48 kHz.
const OPUS_FRAME: usize = 960;
/// Largest Opus packet we let the encoder write (RFC 6716 allows up to 1275 bytes per frame).
const MAX_PACKET: usize = 1500;
/// Largest raw AAC access unit accepted: 6144 bits per channel × 8 channels.
const MAX_AU: usize = 6144;
/// Decoder output buffer: 2048 samples (HE-AAC) × 8 channels.
const PCM_CAP: usize = 2048 * 8;

/// Decodes AAC access units, resamples to 48 kHz, remixes, and encodes 20 ms Opus packets.
pub struct AacToOpus {
    config: OpusConfig,
    input: AacParams,
    decoder: AacDecoder,
    /// Decoder output still to drop: the decoder's own delay, after it was (re)opened.
    /// `None` until a fresh decoder reports it with its first frame.
    skip: Option<usize>,
    /// Resampler to 48 kHz when the decoder's output rate is not 48 kHz.
    resampler: Option<Resample>,
    encoder: libopus::Encoder,
    params: OpusParams,
    timeline: Timeline,
    stats: BridgeStats,
    pcm: Vec<i16>,
    /// Decoded audio in f32 at the configured channel count, at the decoder's rate.
    decoded: Vec<f32>,
    remixed: Vec<f32>,
    /// 48 kHz audio waiting for a whole Opus frame.
    pending: Vec<f32>,
    packet: Vec<u8>,
}

impl std::fmt::Debug for AacToOpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AacToOpus")
            .field("input", &self.input)
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn open_decoder(p: &AacParams, channels: u8) -> Result<AacDecoder, BridgeError> {
    AacDecoder::open(&p.asc, channels).map_err(|e| {
        BridgeError::Unsupported(format!("AAC AudioSpecificConfig {:02x?}: {e}", &p.asc[..]))
    })
}

impl AacToOpus {
    pub fn new(input: &AacParams, config: OpusConfig) -> Result<Self, BridgeError> {
        if !(1..=2).contains(&config.channels) {
            return Err(BridgeError::Config(format!(
                "Opus channels must be 1 or 2, not {}",
                config.channels
            )));
        }
        if !(6_000..=510_000).contains(&config.bitrate) || config.complexity > 10 {
            return Err(BridgeError::Config(format!(
                "Opus bitrate {} (6000..=510000) / complexity {} (0..=10)",
                config.bitrate, config.complexity
            )));
        }
        check_aac_input(input)?;
        let decoder = open_decoder(input, config.channels)?;
        let channels = if config.channels == 1 {
            libopus::Channels::Mono
        } else {
            libopus::Channels::Stereo
        };
        let codec = |e: libopus::Error| BridgeError::Codec(format!("libopus: {e}"));
        let mut encoder =
            libopus::Encoder::new(48_000, channels, libopus::Application::Audio).map_err(codec)?;
        encoder.set_bitrate(config.bitrate as i32).map_err(codec)?;
        encoder
            .set_complexity(i32::from(config.complexity))
            .map_err(codec)?;
        let in_rate = decoded_rate(input);
        Ok(AacToOpus {
            config,
            input: input.clone(),
            decoder,
            skip: None,
            resampler: None,
            encoder,
            params: opus_params(config.channels),
            timeline: Timeline::new(in_rate, 48_000),
            stats: BridgeStats::default(),
            pcm: vec![0; PCM_CAP],
            decoded: Vec::with_capacity(PCM_CAP),
            remixed: Vec::with_capacity(PCM_CAP),
            pending: Vec::with_capacity(OPUS_FRAME * 4),
            packet: vec![0; MAX_PACKET],
        })
    }

    pub fn params(&self) -> &OpusParams {
        &self.params
    }

    pub fn input(&self) -> &AacParams {
        &self.input
    }

    pub fn stats(&self) -> BridgeStats {
        self.stats
    }

    /// New input parameters (e.g. a publisher switched sample rate). The Opus side is unchanged;
    /// the next frame's time decides whether the output continues or re-anchors.
    pub fn set_input(&mut self, input: &AacParams) -> Result<(), BridgeError> {
        if input.asc == self.input.asc {
            return Ok(());
        }
        check_aac_input(input)?;
        self.decoder = open_decoder(input, self.config.channels)?;
        self.skip = None;
        self.input = input.clone();
        self.timeline.set_in_rate(decoded_rate(input));
        self.stats.reconfigurations += 1;
        Ok(())
    }

    pub fn push_into(&mut self, frame: &Frame, out: &mut Vec<Frame>) {
        if frame.kind != TrackKind::Audio {
            return;
        }
        self.stats.frames_in += 1;
        let au_ticks = 1024 * CLOCK_HZ / i64::from(self.input.sample_rate.max(1));
        let step = self.timeline.classify(frame.pts, au_ticks);
        if step == Step::Jump {
            self.stats.discontinuities += 1;
            self.flush_into(out);
        }
        // Decode first: a bad frame must not move the timeline (the next good frame fills).
        let Some((channels, rate)) = self.decode(&frame.data) else {
            self.stats.decode_errors += 1;
            return;
        };
        self.timeline.note_input(frame.pts, frame.wallclock);
        let ch = usize::from(self.config.channels);
        match step {
            Step::Start | Step::Jump => {
                self.set_rate(rate);
                self.timeline.anchor(frame.pts);
            }
            _ if rate != self.timeline.in_rate() => {
                // The decoder found a different output rate (implicit SBR, new config): finish
                // the old rate's audio, continue at the new one.
                self.drain_resampler(out);
                self.set_rate(rate);
                self.timeline.set_in_rate(rate);
            }
            _ => {}
        }
        // Remix into the configured channel count.
        self.remixed.clear();
        remix(&self.decoded, channels, ch, &mut self.remixed);
        let mut audio = std::mem::take(&mut self.remixed);
        match step {
            Step::Fill(n) => {
                self.stats.gaps_filled += 1;
                self.stats.filled_ms += (n as u64 * 1000) / u64::from(rate.max(1));
                self.timeline.advance_in(n);
                let silence = vec![0.0; n * ch];
                self.feed(&silence, out);
            }
            Step::Trim(n) => {
                self.stats.overlaps_trimmed += 1;
                self.stats.trimmed_ms += (n as u64 * 1000) / u64::from(rate.max(1));
                let drop = (n * ch).min(audio.len());
                audio.drain(..drop);
            }
            _ => {}
        }
        self.timeline.advance_in(audio.len() / ch);
        // A fresh decoder's first output is its own delay (silence): drop it so the audio keeps
        // its place on the timeline.
        if let Some(skip) = self.skip.as_mut() {
            let n = (*skip * ch).min(audio.len());
            audio.drain(..n);
            *skip -= n / ch;
        }
        self.feed(&audio, out);
        self.remixed = audio;
    }

    /// Emit what is pending (padded to a whole Opus frame) and start a new timeline.
    pub fn flush_into(&mut self, out: &mut Vec<Frame>) {
        if self.timeline.is_anchored() {
            self.drain_resampler(out);
            if !self.pending.is_empty() {
                let ch = usize::from(self.config.channels);
                self.pending.resize(OPUS_FRAME * ch, 0.0);
                self.encode_pending(out);
            }
        }
        self.reset();
    }

    /// Drop what is pending; the next frame starts a new timeline.
    pub fn reset(&mut self) {
        self.pending.clear();
        if let Some(r) = self.resampler.as_mut() {
            r.reset();
        }
        let _ = self.encoder.reset_state();
        self.reopen();
        self.timeline.unanchor();
    }

    fn reopen(&mut self) {
        if let Ok(d) = open_decoder(&self.input, self.config.channels) {
            self.decoder = d;
            self.skip = None;
        }
    }

    /// Decode one access unit into `self.decoded` (f32, interleaved); returns its channel count
    /// and rate.
    fn decode(&mut self, au: &[u8]) -> Option<(usize, u32)> {
        if au.is_empty() || au.len() > MAX_AU {
            return None;
        }
        match self.decoder.decode(au, &mut self.pcm) {
            Ok(d) => {
                if self.skip.is_none() {
                    self.skip = Some(d.delay);
                }
                self.decoded.clear();
                self.decoded.extend(
                    self.pcm[..d.samples * d.channels]
                        .iter()
                        .map(|&s| i16_to_f32(s)),
                );
                Some((d.channels, d.rate))
            }
            Err(_) => {
                // Whatever is left in the decoder belongs to the bad frame: start clean.
                self.reopen();
                None
            }
        }
    }

    fn set_rate(&mut self, rate: u32) {
        let ch = usize::from(self.config.channels);
        if rate == 48_000 || rate == 0 {
            self.resampler = None;
        } else if self.resampler.as_ref().map(|r| r.in_rate()) != Some(rate) {
            self.resampler = Resample::new(rate, 48_000, ch).ok();
        } else if let Some(r) = self.resampler.as_mut() {
            r.reset();
        }
        if rate != 0 {
            self.timeline.set_in_rate(rate);
        }
    }

    fn drain_resampler(&mut self, out: &mut Vec<Frame>) {
        if let Some(r) = self.resampler.as_mut() {
            r.finish(&mut self.pending);
            self.encode_pending(out);
        }
    }

    /// Resample (if needed) and encode every whole frame.
    fn feed(&mut self, audio: &[f32], out: &mut Vec<Frame>) {
        match self.resampler.as_mut() {
            Some(r) => r.push(audio, &mut self.pending),
            None => {
                if self.timeline.in_rate() != 48_000 {
                    // A rate the resampler refused: nothing sensible to send.
                    return;
                }
                self.pending.extend_from_slice(audio)
            }
        }
        self.encode_pending(out);
    }

    fn encode_pending(&mut self, out: &mut Vec<Frame>) {
        let step = OPUS_FRAME * usize::from(self.config.channels);
        let mut start = 0;
        while self.pending.len() - start >= step {
            let pcm = &self.pending[start..start + step];
            start += step;
            let pts = self.timeline.out_time(0);
            let end = self.timeline.out_time(OPUS_FRAME as i64);
            match self.encoder.encode_float(pcm, &mut self.packet) {
                Ok(n) if n > 0 => {
                    self.timeline.advance_out(OPUS_FRAME, Some(end));
                    self.stats.frames_out += 1;
                    out.push(Frame {
                        kind: TrackKind::Audio,
                        dts: pts,
                        pts,
                        keyframe: true,
                        data: Bytes::copy_from_slice(&self.packet[..n]),
                        wallclock: self.timeline.wallclock(pts),
                    });
                }
                _ => {
                    self.stats.encode_errors += 1;
                    self.timeline.advance_out(OPUS_FRAME, None);
                }
            }
        }
        self.pending.drain(..start);
    }
}

/// The decoder's output rate as far as the AudioSpecificConfig tells (SBR doubles it); the
/// decoder's stream info corrects it after the first frame.
fn decoded_rate(p: &AacParams) -> u32 {
    if p.object_type == 5 || p.object_type == 29 {
        p.sample_rate * 2
    } else {
        p.sample_rate
    }
}
