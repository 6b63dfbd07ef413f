//! Opus (WHIP ingest) → AAC-LC (RTMP destinations, AAC HLS).

use bytes::Bytes;
use fdk_aac::enc::{AudioObjectType, BitRate, ChannelMode, Encoder, EncoderParams, Transport};

use crate::media::codec::aac::parse_asc;
use crate::media::frame::{Frame, TrackKind, CLOCK_HZ};
use crate::media::track::{AacParams, OpusParams};

use super::libopus;
use super::resample::Resample;
use super::timeline::{Step, Timeline};
use super::{f32_to_i16, AacConfig, BridgeError, BridgeStats};

/// Samples per AAC-LC access unit.
const AU: usize = 1024;
/// Longest Opus packet: 120 ms at 48 kHz.
const MAX_OPUS_SAMPLES: usize = 5760;
/// Concealment granularity: libopus PLC/FEC take multiples of 2.5 ms.
const PLC_STEP: usize = 120;

/// Decodes Opus packets (48 kHz), resamples if configured, and encodes AAC-LC access units.
pub struct OpusToAac {
    config: AacConfig,
    input: OpusParams,
    decoder: libopus::Decoder,
    resampler: Option<Resample>,
    encoder: Encoder,
    params: AacParams,
    /// Samples between an access unit's nominal start and the first input sample it presents
    /// (encoder lookahead + the decoder's overlap), measured for fdk-aac AAC-LC.
    delay: i64,
    timeline: Timeline,
    stats: BridgeStats,
    decoded: Vec<f32>,
    resampled: Vec<f32>,
    /// Audio at the output rate waiting for a whole access unit.
    pending: Vec<i16>,
    au: Vec<u8>,
}

impl std::fmt::Debug for OpusToAac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusToAac")
            .field("config", &self.config)
            .field("params", &self.params)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl OpusToAac {
    pub fn new(input: &OpusParams, config: AacConfig) -> Result<Self, BridgeError> {
        if config.sample_rate != 48_000 && config.sample_rate != 44_100 {
            return Err(BridgeError::Config(format!(
                "AAC sample rate must be 44100 or 48000, not {}",
                config.sample_rate
            )));
        }
        if !(1..=2).contains(&config.channels) || !(32_000..=320_000).contains(&config.bitrate) {
            return Err(BridgeError::Config(format!(
                "AAC channels {} (1 or 2) / bitrate {} (32000..=320000)",
                config.channels, config.bitrate
            )));
        }
        let channels = if config.channels == 1 {
            libopus::Channels::Mono
        } else {
            libopus::Channels::Stereo
        };
        let decoder = libopus::Decoder::new(48_000, channels)
            .map_err(|e| BridgeError::Codec(format!("libopus: {e}")))?;
        let encoder = open_encoder(&config)?;
        let info = encoder
            .info()
            .map_err(|e| BridgeError::Codec(format!("fdk-aac: {e}")))?;
        let asc = &info.confBuf[..(info.confSize as usize).min(info.confBuf.len())];
        let params = parse_asc(Bytes::copy_from_slice(asc))
            .map_err(|e| BridgeError::Codec(format!("fdk-aac wrote a bad config: {e}")))?;
        let resampler = if config.sample_rate == 48_000 {
            None
        } else {
            Some(Resample::new(
                48_000,
                config.sample_rate,
                usize::from(config.channels),
            )?)
        };
        let ch = usize::from(config.channels);
        Ok(OpusToAac {
            config,
            input: input.clone(),
            decoder,
            resampler,
            encoder,
            params,
            delay: i64::from(info.nDelay),
            timeline: Timeline::new(48_000, config.sample_rate),
            stats: BridgeStats::default(),
            decoded: vec![0.0; MAX_OPUS_SAMPLES * ch],
            resampled: Vec::with_capacity(MAX_OPUS_SAMPLES * ch),
            pending: Vec::with_capacity(AU * ch * 4),
            au: vec![0; (info.maxOutBufBytes as usize).max(6144 * ch)],
        })
    }

    /// The AAC-LC output parameters, with the encoder's AudioSpecificConfig.
    pub fn params(&self) -> &AacParams {
        &self.params
    }

    pub fn stats(&self) -> BridgeStats {
        self.stats
    }

    /// Opus input is always decoded at 48 kHz to the configured channels, so a change in the
    /// announced parameters needs no new decoder; it is recorded.
    pub fn set_input(&mut self, input: &OpusParams) -> Result<(), BridgeError> {
        if *input != self.input {
            self.input = input.clone();
            self.stats.reconfigurations += 1;
        }
        Ok(())
    }

    pub fn push_into(&mut self, frame: &Frame, out: &mut Vec<Frame>) {
        if frame.kind != TrackKind::Audio {
            return;
        }
        self.stats.frames_in += 1;
        let samples = match libopus::packet::get_nb_samples(&frame.data, 48_000) {
            Ok(n) if (1..=MAX_OPUS_SAMPLES).contains(&n) && !frame.data.is_empty() => n,
            _ => {
                self.stats.decode_errors += 1;
                return;
            }
        };
        let step = self
            .timeline
            .classify(frame.pts, samples as i64 * CLOCK_HZ / 48_000);
        if step == Step::Jump {
            self.stats.discontinuities += 1;
            self.flush_into(out);
        }
        let ch = usize::from(self.config.channels);
        if let Step::Fill(n) = step {
            // Lost packets: conceal them (in-band FEC from this packet for the last ≤ 20 ms,
            // PLC before that) so the AAC output stays continuous.
            let n = (n + PLC_STEP / 2) / PLC_STEP * PLC_STEP;
            if n > 0 {
                self.stats.gaps_filled += 1;
                self.stats.filled_ms += n as u64 / 48;
                let fec = n.min(samples / PLC_STEP * PLC_STEP);
                let mut left = n - fec;
                while left > 0 {
                    let k = left.min(MAX_OPUS_SAMPLES);
                    left -= k;
                    let got = self
                        .decoder
                        .decode_float(&[], &mut self.decoded[..k * ch], false)
                        .unwrap_or(0);
                    self.conceal_or_silence(got, k, out);
                }
                if fec > 0 {
                    let got = self
                        .decoder
                        .decode_float(&frame.data, &mut self.decoded[..fec * ch], true)
                        .unwrap_or(0);
                    self.conceal_or_silence(got, fec, out);
                }
            }
        }
        let got = match self
            .decoder
            .decode_float(&frame.data, &mut self.decoded, false)
        {
            Ok(n) if n > 0 => n.min(MAX_OPUS_SAMPLES),
            _ => {
                self.stats.decode_errors += 1;
                return;
            }
        };
        self.timeline.note_input(frame.pts, frame.wallclock);
        let mut from = 0;
        match step {
            Step::Start | Step::Jump => self.timeline.anchor(frame.pts),
            Step::Trim(n) => {
                self.stats.overlaps_trimmed += 1;
                self.stats.trimmed_ms += n as u64 / 48;
                from = n.min(got);
            }
            _ => {}
        }
        self.timeline.advance_in(got - from);
        let decoded = std::mem::take(&mut self.decoded);
        self.feed(&decoded[from * ch..got * ch], out);
        self.decoded = decoded;
    }

    /// Emit what is pending (the encoder drained with silence) and start a new timeline.
    pub fn flush_into(&mut self, out: &mut Vec<Frame>) {
        if self.timeline.is_anchored() {
            let ch = usize::from(self.config.channels);
            if let Some(r) = self.resampler.as_mut() {
                self.resampled.clear();
                r.finish(&mut self.resampled);
                let resampled = std::mem::take(&mut self.resampled);
                self.pending
                    .extend(resampled.iter().map(|&s| f32_to_i16(s)));
                self.resampled = resampled;
            }
            // Pad to a whole access unit, then push the encoder's delay out with silence.
            let whole = self.pending.len().div_ceil(AU * ch) * AU * ch;
            let drain = (self.delay as usize).div_ceil(AU) * AU * ch;
            self.pending.resize(whole + drain, 0);
            self.encode_pending(out);
        }
        self.reset();
    }

    /// Drop what is pending; the next frame starts a new timeline.
    pub fn reset(&mut self) {
        self.pending.clear();
        if let Some(r) = self.resampler.as_mut() {
            r.reset();
        }
        let _ = self.decoder.reset_state();
        if let Ok(e) = open_encoder(&self.config) {
            self.encoder = e;
        }
        self.timeline.unanchor();
    }

    /// Concealment returned `got` of `want` samples (in `self.decoded`); feed `want` samples,
    /// silence where concealment gave none, and count them on the input timeline.
    fn conceal_or_silence(&mut self, got: usize, want: usize, out: &mut Vec<Frame>) {
        let ch = usize::from(self.config.channels);
        let got = got.min(want);
        self.decoded[got * ch..want * ch].fill(0.0);
        self.timeline.advance_in(want);
        let decoded = std::mem::take(&mut self.decoded);
        self.feed(&decoded[..want * ch], out);
        self.decoded = decoded;
    }

    fn feed(&mut self, audio: &[f32], out: &mut Vec<Frame>) {
        match self.resampler.as_mut() {
            Some(r) => {
                self.resampled.clear();
                r.push(audio, &mut self.resampled);
                self.pending
                    .extend(self.resampled.iter().map(|&s| f32_to_i16(s)));
            }
            None => self.pending.extend(audio.iter().map(|&s| f32_to_i16(s))),
        }
        self.encode_pending(out);
    }

    fn encode_pending(&mut self, out: &mut Vec<Frame>) {
        let step = AU * usize::from(self.config.channels);
        let mut start = 0;
        while self.pending.len() - start >= step {
            let input = &self.pending[start..start + step];
            let result = self.encoder.encode(input, &mut self.au);
            let (consumed, size) = match result {
                Ok(r) => (r.input_consumed, r.output_size),
                Err(_) => {
                    self.stats.encode_errors += 1;
                    (step, 0)
                }
            };
            if consumed == 0 && size == 0 {
                break;
            }
            start += consumed.min(step);
            if size == 0 {
                continue;
            }
            // This access unit presents input from `delay` samples before its nominal start.
            let pts = self.timeline.out_time(-self.delay);
            let end = self.timeline.out_time(AU as i64 - self.delay);
            let anchor = self.timeline.out_anchor();
            let min = self.timeline.floor().map_or(anchor, |f| f.max(anchor));
            if pts < min {
                // Encoder priming from before the first input sample of this timeline (or
                // before audio already sent): nothing a listener misses.
                self.timeline.advance_out(AU, None);
                continue;
            }
            self.timeline.advance_out(AU, Some(end));
            self.stats.frames_out += 1;
            out.push(Frame {
                kind: TrackKind::Audio,
                dts: pts,
                pts,
                keyframe: true,
                data: Bytes::copy_from_slice(&self.au[..size.min(self.au.len())]),
                wallclock: self.timeline.wallclock(pts),
            });
        }
        self.pending.drain(..start.min(self.pending.len()));
    }
}

fn open_encoder(config: &AacConfig) -> Result<Encoder, BridgeError> {
    Encoder::new(EncoderParams {
        bit_rate: BitRate::Cbr(config.bitrate),
        sample_rate: config.sample_rate,
        transport: Transport::Raw,
        channels: if config.channels == 1 {
            ChannelMode::Mono
        } else {
            ChannelMode::Stereo
        },
        audio_object_type: AudioObjectType::Mpeg4LowComplexity,
    })
    .map_err(|e| BridgeError::Codec(format!("fdk-aac encoder: {e}")))
}
