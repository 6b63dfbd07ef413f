//! Sans-IO FLV tag-body demuxer: the bodies of FLV audio and video tags (what RTMP audio/video
//! messages carry, and what an FLV file's tags hold) → codec parameters and frames of the media
//! model.
//!
//! - Video: codec id 7 (AVC). AVCPacketType 0 carries the `avcC` (→ [`FlvOutput::Codec`]),
//!   1 one access unit with a signed 24-bit composition offset (→ [`FlvOutput::Frame`]), 2 end of
//!   sequence (ignored). The Enhanced RTMP header with FourCC `avc1` is accepted too. Any other
//!   video codec (Sorenson H.263, VP6, screen video, HEVC/AV1 via Enhanced RTMP, ...) is an
//!   [`FlvError`] naming it: the stream cannot be relayed.
//! - Audio: SoundFormat 10 (AAC): packet type 0 carries the AudioSpecificConfig, 1 one raw access
//!   unit. Any other audio format (MP3, Speex, Nellymoser, G.711, ...) gives one
//!   [`FlvOutput::TrackRefused`]: the stream goes on without audio.
//! - Payloads are slices of the tag body (`Bytes::slice`): no copy.
//! - Frames that arrive before their track's sequence header are dropped (a decoder could not use
//!   them), as are empty tags and malformed NAL framing; [`FlvDemuxer::stats`] counts them.
//! - A sequence header equal to the current one (encoders repeat it) gives no output; a different
//!   one gives a new `Codec`, so the publisher re-announces its tracks.
//! - RTMP/FLV timestamps are 32-bit milliseconds and wrap after ~49.7 days: each one is extended to
//!   i64 as the value closest to the previous tag's (audio and video share the reference, since
//!   they interleave within a few hundred milliseconds), then converted to 90 kHz ticks.

use std::time::{Instant, SystemTime};

use bytes::Bytes;

use crate::media::codec::{aac, h264};
use crate::media::frame::ms_to_ticks;
use crate::media::{Codec, Publisher, TrackKind};

/// What one tag body turns into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlvOutput {
    /// New or changed codec parameters for one track.
    Codec(Codec),
    /// One access unit. Times are on the publisher's clock, in 90 kHz ticks.
    Frame {
        kind: TrackKind,
        dts: i64,
        pts: i64,
        keyframe: bool,
        data: Bytes,
    },
    /// The track cannot be carried; the stream continues without it. Given once per codec.
    TrackRefused { kind: TrackKind, reason: String },
}

/// A problem with the video track that ends the publish.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("video codec {name} (FLV codec id {id}) is not supported; publish H.264")]
    UnsupportedVideoCodec { id: u8, name: &'static str },
    #[error("Enhanced RTMP video '{0}' is not supported; publish H.264")]
    UnsupportedFourCc(String),
    #[error("Enhanced RTMP video packet type {0} is not supported")]
    UnsupportedExPacketType(u8),
    #[error("invalid AVC sequence header: {0}")]
    BadAvcConfig(#[from] h264::H264Error),
}

/// Counters of what the demuxer dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlvStats {
    /// Empty or too short tags.
    pub empty: u64,
    /// Frames of a track whose sequence header had not arrived.
    pub before_config: u64,
    /// Video frames whose NAL unit framing was malformed, or that held parameter sets only.
    pub malformed: u64,
}

/// FLV VideoTagHeader codec ids.
fn video_codec_name(id: u8) -> &'static str {
    match id {
        1 => "JPEG",
        2 => "Sorenson H.263",
        3 => "Screen video",
        4 => "On2 VP6",
        5 => "On2 VP6 with alpha",
        6 => "Screen video v2",
        7 => "AVC",
        12 => "HEVC (non-standard FLV id 12)",
        13 => "AV1 (non-standard FLV id 13)",
        _ => "unknown",
    }
}

/// FLV AudioTagHeader SoundFormat values.
fn audio_format_name(format: u8) -> &'static str {
    match format {
        0 => "linear PCM (platform endian)",
        1 => "ADPCM",
        2 => "MP3",
        3 => "linear PCM (little endian)",
        4 => "Nellymoser 16 kHz",
        5 => "Nellymoser 8 kHz",
        6 => "Nellymoser",
        7 => "G.711 A-law",
        8 => "G.711 mu-law",
        9 => "Enhanced RTMP audio",
        10 => "AAC",
        11 => "Speex",
        14 => "MP3 8 kHz",
        15 => "device-specific sound",
        _ => "reserved",
    }
}

fn fourcc(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                char::from(c)
            } else {
                '?'
            }
        })
        .collect()
}

/// Extends 32-bit millisecond timestamps to i64.
#[derive(Clone, Copy, Debug, Default)]
struct TsExtender {
    last: Option<i64>,
}

impl TsExtender {
    fn extend(&mut self, ts: i64) -> i64 {
        let low = ts & 0xFFFF_FFFF;
        let out = match self.last {
            None => low,
            Some(last) => {
                // The value congruent to `low` mod 2^32 closest to the previous one: a wrap moves
                // on into the next 2^32 epoch; a small step back (audio behind video) stays one.
                let delta = (low.wrapping_sub(last) as u32) as i32;
                last + i64::from(delta)
            }
        };
        self.last = Some(out);
        out
    }
}

/// The demuxer state of one publisher session.
#[derive(Debug, Default)]
pub struct FlvDemuxer {
    ts: TsExtender,
    /// The current `avcC`, as received.
    avcc: Option<Bytes>,
    nalu_length_size: u8,
    /// The current AudioSpecificConfig, as received.
    asc: Option<Bytes>,
    /// Audio formats already refused (bit per SoundFormat), so the refusal is reported once.
    refused_audio: u16,
    /// A bad AudioSpecificConfig was reported; report the next one only if it differs.
    refused_asc: Option<Bytes>,
    stats: FlvStats,
}

impl FlvDemuxer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> FlvStats {
        self.stats
    }

    /// Whether video codec parameters have arrived.
    pub fn has_video_config(&self) -> bool {
        self.avcc.is_some()
    }

    /// Whether audio codec parameters have arrived.
    pub fn has_audio_config(&self) -> bool {
        self.asc.is_some()
    }

    /// Demux one video tag body. `timestamp_ms` is the tag's (RTMP message's) timestamp; only its
    /// low 32 bits are used (see the module doc on wrapping).
    pub fn video(&mut self, timestamp_ms: i64, body: Bytes) -> Result<Option<FlvOutput>, FlvError> {
        let Some(&first) = body.first() else {
            self.stats.empty += 1;
            return Ok(None);
        };
        let dts_ms = self.ts.extend(timestamp_ms);
        if first & 0x80 != 0 {
            return self.enhanced_video(dts_ms, body);
        }
        let frame_type = first >> 4;
        let codec_id = first & 0x0f;
        if codec_id != 7 {
            return Err(FlvError::UnsupportedVideoCodec {
                id: codec_id,
                name: video_codec_name(codec_id),
            });
        }
        if frame_type == 5 {
            // Video info / command frame: carries no picture.
            return Ok(None);
        }
        if body.len() < 5 {
            self.stats.empty += 1;
            return Ok(None);
        }
        let cts_ms = i64::from(i32::from_be_bytes([body[2], body[3], body[4], 0]) >> 8);
        match body[1] {
            0 => self.avc_config(body.slice(5..)),
            1 => Ok(self.avc_frame(dts_ms, cts_ms, frame_type == 1, body.slice(5..))),
            // End of sequence; other values are reserved.
            _ => Ok(None),
        }
    }

    /// Enhanced RTMP (v1/v2) ExVideoTagHeader: `1 frametype(3) packettype(4)` then a FourCC.
    fn enhanced_video(&mut self, dts_ms: i64, body: Bytes) -> Result<Option<FlvOutput>, FlvError> {
        if body.len() < 5 {
            self.stats.empty += 1;
            return Ok(None);
        }
        let frame_type = (body[0] >> 4) & 0x07;
        let packet_type = body[0] & 0x0f;
        let cc = &body[1..5];
        if cc != b"avc1" {
            return Err(FlvError::UnsupportedFourCc(fourcc(cc)));
        }
        if frame_type == 5 {
            return Ok(None);
        }
        match packet_type {
            // SequenceStart
            0 => self.avc_config(body.slice(5..)),
            // CodedFrames: SI24 composition time, then the access unit.
            1 => {
                if body.len() < 8 {
                    self.stats.empty += 1;
                    return Ok(None);
                }
                let cts = i64::from(i32::from_be_bytes([body[5], body[6], body[7], 0]) >> 8);
                Ok(self.avc_frame(dts_ms, cts, frame_type == 1, body.slice(8..)))
            }
            // CodedFramesX: composition time 0.
            3 => Ok(self.avc_frame(dts_ms, 0, frame_type == 1, body.slice(5..))),
            // SequenceEnd, Metadata (HDR info): nothing to relay.
            2 | 4 => Ok(None),
            other => Err(FlvError::UnsupportedExPacketType(other)),
        }
    }

    fn avc_config(&mut self, avcc: Bytes) -> Result<Option<FlvOutput>, FlvError> {
        if self.avcc.as_ref() == Some(&avcc) {
            return Ok(None);
        }
        let params = h264::parse_avcc(avcc.clone())?;
        self.nalu_length_size = params.nalu_length_size;
        self.avcc = Some(avcc);
        Ok(Some(FlvOutput::Codec(Codec::H264(params))))
    }

    fn avc_frame(
        &mut self,
        dts_ms: i64,
        cts_ms: i64,
        keyframe: bool,
        data: Bytes,
    ) -> Option<FlvOutput> {
        if self.avcc.is_none() {
            self.stats.before_config += 1;
            return None;
        }
        if data.is_empty() {
            self.stats.empty += 1;
            return None;
        }
        match h264::scan_nalus(&data, self.nalu_length_size) {
            Ok(s) if s.vcl => {}
            // Parameter sets / SEI alone, or broken framing: nothing a decoder can show.
            _ => {
                self.stats.malformed += 1;
                return None;
            }
        }
        let dts = ms_to_ticks(dts_ms);
        Some(FlvOutput::Frame {
            kind: TrackKind::Video,
            dts,
            pts: dts + ms_to_ticks(cts_ms),
            keyframe,
            data,
        })
    }

    /// Demux one audio tag body.
    pub fn audio(&mut self, timestamp_ms: i64, body: Bytes) -> Option<FlvOutput> {
        let Some(&first) = body.first() else {
            self.stats.empty += 1;
            return None;
        };
        let dts_ms = self.ts.extend(timestamp_ms);
        let format = first >> 4;
        if format != 10 {
            let bit = 1u16 << format;
            if self.refused_audio & bit != 0 {
                return None;
            }
            self.refused_audio |= bit;
            let name = if format == 9 && body.len() >= 5 {
                format!("Enhanced RTMP audio '{}'", fourcc(&body[1..5]))
            } else {
                audio_format_name(format).to_string()
            };
            return Some(FlvOutput::TrackRefused {
                kind: TrackKind::Audio,
                reason: format!(
                    "audio codec {name} (FLV sound format {format}) is not supported; \
                     the stream continues without audio (publish AAC)"
                ),
            });
        }
        if body.len() < 2 {
            self.stats.empty += 1;
            return None;
        }
        match body[1] {
            0 => {
                let asc = body.slice(2..);
                if self.asc.as_ref() == Some(&asc) {
                    return None;
                }
                match aac::parse_asc(asc.clone()) {
                    Ok(p) => {
                        self.asc = Some(asc);
                        self.refused_asc = None;
                        Some(FlvOutput::Codec(Codec::Aac(p)))
                    }
                    Err(e) => {
                        // Frames coded with a config we could not read must not go out under
                        // the previous one.
                        self.asc = None;
                        if self.refused_asc.as_ref() == Some(&asc) {
                            return None;
                        }
                        self.refused_asc = Some(asc);
                        Some(FlvOutput::TrackRefused {
                            kind: TrackKind::Audio,
                            reason: format!(
                                "invalid AAC sequence header ({e}); the stream continues \
                                 without audio"
                            ),
                        })
                    }
                }
            }
            1 => {
                if self.asc.is_none() {
                    self.stats.before_config += 1;
                    return None;
                }
                let data = body.slice(2..);
                if data.is_empty() {
                    self.stats.empty += 1;
                    return None;
                }
                let dts = ms_to_ticks(dts_ms);
                Some(FlvOutput::Frame {
                    kind: TrackKind::Audio,
                    dts,
                    pts: dts,
                    keyframe: true,
                    data,
                })
            }
            _ => None,
        }
    }
}

/// Apply one demuxer output to a publisher: codec parameters, a frame, or a track refusal (which
/// the API lists under the stream's track errors).
pub fn deliver(publisher: &mut Publisher, out: FlvOutput, wallclock: SystemTime, now: Instant) {
    match out {
        FlvOutput::Codec(c) => publisher.set_codec(c),
        FlvOutput::Frame {
            kind,
            dts,
            pts,
            keyframe,
            data,
        } => publisher.push(kind, dts, pts, keyframe, data, wallclock, now),
        FlvOutput::TrackRefused { reason, .. } => publisher.track_error(reason),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::codec::h264::FFMPEG_AVCC_640X360;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// FLV video tag body: AVC sequence header.
    pub(crate) fn avc_seq_header() -> Bytes {
        let mut v = vec![0x17, 0, 0, 0, 0];
        v.extend(hex(FFMPEG_AVCC_640X360));
        Bytes::from(v)
    }

    /// FLV video tag body: one AVC access unit (a fake slice NAL) with a composition offset.
    pub(crate) fn avc_frame(key: bool, cts: i32, nal_type: u8) -> Bytes {
        let c = cts.to_be_bytes();
        let mut v = vec![if key { 0x17 } else { 0x27 }, 1, c[1], c[2], c[3]];
        v.extend([0, 0, 0, 4, 0x60 | nal_type, 0x88, 0x84, 0x21]);
        Bytes::from(v)
    }

    pub(crate) fn aac_seq_header() -> Bytes {
        Bytes::from_static(&[0xaf, 0, 0x11, 0x90])
    }

    pub(crate) fn aac_frame() -> Bytes {
        Bytes::from_static(&[0xaf, 1, 0x21, 0x10, 0x04, 0x60])
    }

    fn frame(o: Option<FlvOutput>) -> (TrackKind, i64, i64, bool, Bytes) {
        match o {
            Some(FlvOutput::Frame {
                kind,
                dts,
                pts,
                keyframe,
                data,
            }) => (kind, dts, pts, keyframe, data),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn avc_and_aac_flow() {
        let mut d = FlvDemuxer::new();
        // Frames before the sequence header are dropped.
        assert_eq!(d.video(0, avc_frame(true, 0, 5)).unwrap(), None);
        assert_eq!(d.audio(0, aac_frame()), None);
        assert_eq!(d.stats().before_config, 2);

        let Some(FlvOutput::Codec(Codec::H264(p))) = d.video(0, avc_seq_header()).unwrap() else {
            panic!("expected H.264 parameters");
        };
        assert_eq!((p.width, p.height), (640, 360));
        let Some(FlvOutput::Codec(Codec::Aac(a))) = d.audio(0, aac_seq_header()) else {
            panic!("expected AAC parameters");
        };
        assert_eq!((a.sample_rate, a.channels), (48000, 2));

        let body = avc_frame(true, 66, 5);
        let (kind, dts, pts, key, data) = frame(d.video(1000, body.clone()).unwrap());
        assert_eq!(
            (kind, dts, pts, key),
            (TrackKind::Video, 90_000, 90_000 + 66 * 90, true)
        );
        // No copy: the payload is the tag body past its 5-byte header.
        assert_eq!(data.as_ptr(), body[5..].as_ptr());
        assert_eq!(data.len(), body.len() - 5);

        // Negative composition offsets are sign-extended.
        let (_, dts, pts, key, _) = frame(d.video(1033, avc_frame(false, -33, 1)).unwrap());
        assert_eq!((dts, pts, key), (1033 * 90, 1000 * 90, false));

        let (kind, dts, _, key, data) = frame(d.audio(1021, aac_frame()));
        assert_eq!((kind, dts, key), (TrackKind::Audio, 1021 * 90, true));
        assert_eq!(&data[..], &[0x21, 0x10, 0x04, 0x60]);

        // End of sequence: nothing.
        assert_eq!(
            d.video(1100, Bytes::from_static(&[0x17, 2, 0, 0, 0]))
                .unwrap(),
            None
        );
    }

    #[test]
    fn empty_and_short_tags_are_ignored() {
        let mut d = FlvDemuxer::new();
        assert_eq!(d.video(0, Bytes::new()).unwrap(), None);
        assert_eq!(d.audio(0, Bytes::new()), None);
        assert_eq!(d.video(0, Bytes::from_static(&[0x17])).unwrap(), None);
        assert_eq!(d.video(0, Bytes::from_static(&[0x17, 1, 0])).unwrap(), None);
        assert_eq!(d.audio(0, Bytes::from_static(&[0xaf])), None);
        assert_eq!(d.stats().empty, 5);
        d.video(0, avc_seq_header()).unwrap().unwrap();
        // A NALU packet with no payload.
        assert_eq!(
            d.video(0, Bytes::from_static(&[0x17, 1, 0, 0, 0])).unwrap(),
            None
        );
        // Video info frame.
        assert_eq!(d.video(0, Bytes::from_static(&[0x57, 0])).unwrap(), None);
    }

    #[test]
    fn sequence_header_only_and_repeats() {
        let mut d = FlvDemuxer::new();
        assert!(matches!(
            d.video(0, avc_seq_header()).unwrap(),
            Some(FlvOutput::Codec(_))
        ));
        // The same header again (encoders repeat it): no new Codec.
        assert_eq!(d.video(40, avc_seq_header()).unwrap(), None);
        assert!(matches!(
            d.audio(0, aac_seq_header()),
            Some(FlvOutput::Codec(_))
        ));
        assert_eq!(d.audio(40, aac_seq_header()), None);
        assert!(d.has_video_config() && d.has_audio_config());
    }

    #[test]
    fn codec_change_mid_stream() {
        let mut d = FlvDemuxer::new();
        d.video(0, avc_seq_header()).unwrap().unwrap();
        d.audio(0, aac_seq_header()).unwrap();
        // A different AAC config (44.1 kHz mono) → a new Codec.
        let Some(FlvOutput::Codec(Codec::Aac(a))) =
            d.audio(5000, Bytes::from_static(&[0xaf, 0, 0x12, 0x08]))
        else {
            panic!("expected new AAC parameters");
        };
        assert_eq!((a.sample_rate, a.channels), (44100, 1));
        // A different avcC (2-byte NAL lengths) → new parameters, and framing follows it.
        let mut avcc = hex(FFMPEG_AVCC_640X360);
        avcc[4] = 0xfd;
        let mut body = vec![0x17, 0, 0, 0, 0];
        body.extend(avcc);
        let Some(FlvOutput::Codec(Codec::H264(p))) = d.video(5000, Bytes::from(body)).unwrap()
        else {
            panic!("expected new H.264 parameters");
        };
        assert_eq!(p.nalu_length_size, 2);
        let f = Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 2, 0x65, 0x88]);
        assert!(matches!(
            d.video(5033, f).unwrap(),
            Some(FlvOutput::Frame { .. })
        ));
        // 4-byte framing no longer parses as 2-byte framing of the same buffer length.
        assert_eq!(d.video(5066, avc_frame(true, 0, 5)).unwrap(), None);
        assert_eq!(d.stats().malformed, 1);
    }

    #[test]
    fn avcc_without_nalus_is_an_error() {
        let mut d = FlvDemuxer::new();
        let e = d
            .video(
                0,
                Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x4d, 0x40, 0x1e, 0xff, 0xe0, 0]),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid AVC sequence header: avcC has no SPS"
        );
        let e = d
            .video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0]))
            .unwrap_err();
        assert!(matches!(e, FlvError::BadAvcConfig(_)), "{e}");
    }

    #[test]
    fn parameter_set_only_and_broken_frames_are_dropped() {
        let mut d = FlvDemuxer::new();
        d.video(0, avc_seq_header()).unwrap().unwrap();
        // In-band SPS only (type 7).
        assert_eq!(d.video(0, avc_frame(true, 0, 7)).unwrap(), None);
        // NAL length past the end.
        let f = Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 9, 0x65]);
        assert_eq!(d.video(0, f).unwrap(), None);
        assert_eq!(d.stats().malformed, 2);
    }

    #[test]
    fn unsupported_video_codecs_are_named() {
        for (byte, name) in [
            (0x12, "Sorenson H.263"),
            (0x14, "On2 VP6"),
            (0x15, "On2 VP6 with alpha"),
            (0x13, "Screen video"),
            (0x16, "Screen video v2"),
            (0x1c, "HEVC"),
        ] {
            let e = FlvDemuxer::new()
                .video(0, Bytes::from(vec![byte, 0, 0, 0, 0]))
                .unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
            assert!(e.to_string().contains("publish H.264"), "{e}");
        }
    }

    #[test]
    fn enhanced_rtmp() {
        // HEVC and AV1 through the Enhanced RTMP header: refused with the FourCC.
        for cc in [&b"hvc1"[..], b"av01", b"vp09"] {
            let mut body = vec![0x90];
            body.extend_from_slice(cc);
            let e = FlvDemuxer::new().video(0, Bytes::from(body)).unwrap_err();
            let s = e.to_string();
            assert!(
                s.contains(std::str::from_utf8(cc).unwrap()) && s.contains("not supported"),
                "{s}"
            );
        }
        // avc1 through the Enhanced header works like the legacy header.
        let mut d = FlvDemuxer::new();
        let mut sh = vec![0x90, b'a', b'v', b'c', b'1'];
        sh.extend(hex(FFMPEG_AVCC_640X360));
        assert!(matches!(
            d.video(0, Bytes::from(sh)).unwrap(),
            Some(FlvOutput::Codec(_))
        ));
        let f = Bytes::from_static(&[0x93, b'a', b'v', b'c', b'1', 0, 0, 0, 2, 0x65, 0x88]);
        let (_, dts, pts, key, data) = frame(d.video(40, f).unwrap());
        assert_eq!((dts, pts, key, data.len()), (40 * 90, 40 * 90, true, 6));
        let f = Bytes::from_static(&[
            0xa1, b'a', b'v', b'c', b'1', 0, 0, 10, 0, 0, 0, 2, 0x41, 0x88,
        ]);
        let (_, dts, pts, key, _) = frame(d.video(80, f).unwrap());
        assert_eq!((dts, pts, key), (80 * 90, 90 * 90, false));
        // Multitrack (6) is not supported.
        let f = Bytes::from_static(&[0x96, b'a', b'v', b'c', b'1']);
        assert_eq!(
            d.video(90, f).unwrap_err(),
            FlvError::UnsupportedExPacketType(6)
        );
    }

    #[test]
    fn unsupported_audio_is_refused_once_and_video_goes_on() {
        let mut d = FlvDemuxer::new();
        d.video(0, avc_seq_header()).unwrap().unwrap();
        let mp3 = Bytes::from_static(&[0x2f, 0xff, 0xfb, 0x90]);
        let Some(FlvOutput::TrackRefused { kind, reason }) = d.audio(0, mp3.clone()) else {
            panic!("expected a refusal");
        };
        assert_eq!(kind, TrackKind::Audio);
        assert!(
            reason.contains("MP3") && reason.contains("without audio"),
            "{reason}"
        );
        assert_eq!(d.audio(23, mp3), None);
        let speex = Bytes::from_static(&[0xb2, 0x01]);
        let Some(FlvOutput::TrackRefused { reason, .. }) = d.audio(40, speex) else {
            panic!("expected a refusal");
        };
        assert!(reason.contains("Speex"), "{reason}");
        assert!(matches!(
            d.video(40, avc_frame(true, 0, 5)).unwrap(),
            Some(FlvOutput::Frame { .. })
        ));
        // A bad AAC config refuses audio too, once.
        let bad = Bytes::from_static(&[0xaf, 0, 0x16, 0x90]);
        let Some(FlvOutput::TrackRefused { reason, .. }) = d.audio(50, bad.clone()) else {
            panic!("expected a refusal");
        };
        assert!(reason.contains("sampling frequency index 13"), "{reason}");
        assert_eq!(d.audio(60, bad), None);
    }

    #[test]
    fn timestamps_wrap_into_i64() {
        let mut d = FlvDemuxer::new();
        let near_wrap = (1i64 << 32) - 40;
        d.video(near_wrap - 100, avc_seq_header()).unwrap();
        let (_, a, ..) = frame(d.video(near_wrap, avc_frame(true, 0, 5)).unwrap());
        // Wrapped: 32-bit value 10 comes after 2^32 - 40.
        let (_, b, ..) = frame(d.video(10, avc_frame(false, 0, 1)).unwrap());
        assert_eq!(b - a, 50 * 90);
        // Audio slightly behind video across the wrap stays in the new epoch's neighborhood.
        d.audio(0, aac_seq_header()).unwrap();
        let (_, c, ..) = frame(d.audio(((1i64 << 32) - 5) & 0xFFFF_FFFF, aac_frame()));
        assert_eq!(c, ms_to_ticks((1i64 << 32) - 5));
        let (_, e, ..) = frame(d.video(43, avc_frame(false, 0, 1)).unwrap());
        assert_eq!(e, ms_to_ticks((1i64 << 32) + 43));
        // Callers that pass already-extended i64 values (the demo loop) get them back unchanged.
        let mut d = FlvDemuxer::new();
        d.video(0, avc_seq_header()).unwrap();
        let mut t = 0i64;
        while t < 5 << 32 {
            let (_, dts, ..) = frame(d.video(t, avc_frame(false, 0, 1)).unwrap());
            assert_eq!(dts, ms_to_ticks(t));
            t += (1 << 30) + 7; // steps under 2^31 ms
        }
    }

    #[test]
    fn random_bodies_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1935);
        let seeds = [
            avc_seq_header(),
            avc_frame(true, 0, 5),
            aac_seq_header(),
            aac_frame(),
        ];
        let mut d = FlvDemuxer::new();
        for i in 0..100_000u32 {
            let body: Vec<u8> = if i % 2 == 0 {
                let n = rng.random_range(0..64);
                (0..n).map(|_| rng.random()).collect()
            } else {
                // Mutate a valid body: flip bytes and cut.
                let mut v = seeds[rng.random_range(0..seeds.len())].to_vec();
                for _ in 0..rng.random_range(1..4) {
                    let j = rng.random_range(0..v.len());
                    v[j] = rng.random();
                }
                v.truncate(rng.random_range(0..=v.len()));
                v
            };
            let ts = rng.random::<u32>() as i64;
            if rng.random_bool(0.5) {
                if d.video(ts, Bytes::from(body)).is_err() && rng.random_bool(0.1) {
                    d = FlvDemuxer::new();
                }
            } else {
                let _ = d.audio(ts, Bytes::from(body));
            }
        }
    }
}
