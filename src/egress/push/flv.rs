//! Sans-IO FLV repackaging for RTMP push: the media model (`TrackSet`, `Frame`) → FLV audio/video
//! tag bodies, the payload of RTMP audio (8) and video (9) messages.
//!
//! Everything here is built **once per stream** and handed to every destination by reference
//! (`Arc<FlvTag>`, whose body is a `Bytes` already laid out in RTMP chunks, see [`super::chunk`]):
//! N destinations cost N reference-count increments, not N copies. The one copy on this path is
//! made here, once per frame per stream: the 5-byte (video) / 2-byte (audio) FLV tag header and
//! the frame's payload are written into one buffer with the chunk continuation bytes in place.
//! Each destination then only writes a 12-byte message header of its own in front of it.
//!
//! - Video: `AVCPacketType 0` carries the `AVCDecoderConfigurationRecord` (the ingest's `avcC` as
//!   received, or one built from SPS/PPS when the source had none, e.g. WHIP); `AVCPacketType 1`
//!   one access unit in AVCC framing with a signed 24-bit composition time offset.
//! - Audio: `SoundFormat 10` (AAC), packet type 0 = AudioSpecificConfig, 1 = one raw AU.
//! - Times: the core's 90 kHz stream clock, monotonic per track across publisher reconnects, is
//!   turned into milliseconds by flooring; the composition offset is the difference of the floored
//!   pts and dts, so `dts_ms + cts_ms` is exactly `floor(pts / 90)`.
//!
//! Codec fit: RTMP destinations get H.264 and AAC-LC only. Any other codec in the program (Opus
//! audio from WHIP, HE-AAC, ...) makes [`Headers::refusal`] say why; the engine then refuses the
//! destination instead of sending something the platform cannot play.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::chunk::ChunkedBody;

use crate::media::codec::h264::{avcc_record, H264Error};
use crate::media::{AacParams, Codec, Frame, H264Params, TrackKind, TrackSet, CLOCK_HZ};

/// FLV video tag: frame type 1 (key frame) / 2 (inter frame) in the high nibble, codec 7 (AVC).
const AVC_KEY: u8 = 0x17;
const AVC_INTER: u8 = 0x27;
/// AAC audio tag first byte: format 10, rate index 3 (44 kHz: always 3 for AAC), 16-bit,
/// stereo/mono bit from the channel count (decoders read the real layout from the ASC).
const AAC_STEREO: u8 = 0xAF;
const AAC_MONO: u8 = 0xAE;

/// Audio object type of AAC-LC in an AudioSpecificConfig.
pub const AOT_AAC_LC: u8 = 2;

/// Milliseconds (floored) of a time on the 90 kHz core clock.
pub fn ticks_to_ms(ticks: i64) -> i64 {
    ticks.div_euclid(CLOCK_HZ / 1000)
}

/// One FLV tag body ready to be sent to any number of destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlvTag {
    pub kind: TrackKind,
    /// Decode time on the stream's 90 kHz clock (monotonic per track). Destinations order, filter
    /// and time-stamp by it.
    pub dts: i64,
    /// A video IDR (audio: false). Destinations (re)start on these.
    pub keyframe: bool,
    /// The tag body (FLV audio/video tag header + payload), laid out in RTMP chunks.
    pub body: ChunkedBody,
}

impl FlvTag {
    /// Bytes of payload (what queues are bounded by).
    pub fn len(&self) -> usize {
        self.body.len
    }

    pub fn is_empty(&self) -> bool {
        self.body.len == 0
    }

    /// RTMP timestamp in milliseconds on the stream clock.
    pub fn ms(&self) -> i64 {
        ticks_to_ms(self.dts)
    }
}

/// What a destination must send before the frames of one publisher session (or after a codec
/// change): sequence headers and `onMetaData` values, built once per `TrackSet`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headers {
    /// `TrackSet::session` these were built from.
    pub session: u64,
    /// AVC sequence header tag body, when the program has H.264 video.
    pub video: Option<ChunkedBody>,
    /// AAC sequence header tag body, when the program has AAC-LC audio.
    pub audio: Option<ChunkedBody>,
    pub metadata: Metadata,
    /// Why this program cannot go to an RTMP destination (a codec RTMP/FLV platforms cannot
    /// play). `None`: everything in the program is pushable.
    pub refusal: Option<String>,
}

/// The `onMetaData` values we announce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub audio_sample_rate: Option<u32>,
    pub audio_channels: Option<u8>,
}

impl Headers {
    /// Build the sequence headers of a track set and decide whether it fits RTMP.
    pub fn from_tracks(tracks: &TrackSet) -> Headers {
        let mut h = Headers {
            session: tracks.session,
            video: None,
            audio: None,
            metadata: Metadata::default(),
            refusal: None,
        };
        let mut refusals = Vec::new();
        match &tracks.video {
            Some(Codec::H264(p)) => match avc_sequence_header(p) {
                Ok(b) => {
                    h.video = Some(ChunkedBody::new(TrackKind::Video, &[&b]));
                    h.metadata.width = Some(p.width);
                    h.metadata.height = Some(p.height);
                }
                Err(e) => refusals.push(format!("video: {e}")),
            },
            Some(other) => refusals.push(format!(
                "video codec {} cannot be pushed over RTMP (H.264 only)",
                other.name()
            )),
            None => {}
        }
        match &tracks.audio {
            Some(Codec::Aac(p)) if p.object_type == AOT_AAC_LC && !p.asc.is_empty() => {
                h.audio = Some(ChunkedBody::new(
                    TrackKind::Audio,
                    &[&aac_sequence_header(p)],
                ));
                h.metadata.audio_sample_rate = Some(p.sample_rate);
                h.metadata.audio_channels = Some(p.channels);
            }
            Some(Codec::Aac(p)) if p.asc.is_empty() => {
                refusals.push("audio: AAC without an AudioSpecificConfig".to_string())
            }
            Some(Codec::Aac(p)) => refusals.push(format!(
                "audio is {} (AAC object type {}); RTMP destinations get AAC-LC only \
                 (publish AAC-LC; HE-AAC is not bridged yet)",
                aac_profile_name(p.object_type),
                p.object_type
            )),
            Some(Codec::Opus(_)) => refusals.push(
                "audio is Opus; RTMP destinations need AAC-LC (the Opus→AAC bridge is not \
                 available yet)"
                    .to_string(),
            ),
            Some(other) => refusals.push(format!(
                "audio codec {} cannot be pushed over RTMP (AAC-LC only)",
                other.name()
            )),
            None => {}
        }
        if tracks.video.is_none() && tracks.audio.is_none() {
            refusals.push("the program has no tracks".to_string());
        }
        if !refusals.is_empty() {
            h.refusal = Some(refusals.join("; "));
        }
        h
    }

    pub fn has_video(&self) -> bool {
        self.video.is_some()
    }

    /// Same bytes on the wire (a publisher that came back with identical parameters).
    pub fn same_codecs(&self, other: &Headers) -> bool {
        self.video == other.video && self.audio == other.audio
    }
}

fn aac_profile_name(aot: u8) -> &'static str {
    match aot {
        1 => "AAC Main",
        2 => "AAC-LC",
        3 => "AAC SSR",
        4 => "AAC LTP",
        5 => "HE-AAC (SBR)",
        29 => "HE-AACv2 (PS)",
        23 => "AAC-LD",
        39 => "AAC-ELD",
        _ => "an AAC profile other than LC",
    }
}

/// The AVC sequence header tag body: `17 00 000000` + avcC (the toolbox's [`avcc_record`]).
pub fn avc_sequence_header(p: &H264Params) -> Result<Bytes, H264Error> {
    let avcc = avcc_record(p)?;
    let mut b = BytesMut::with_capacity(5 + avcc.len());
    b.put_slice(&[AVC_KEY, 0, 0, 0, 0]);
    b.put_slice(&avcc);
    Ok(b.freeze())
}

/// The AAC sequence header tag body: `AF 00` + AudioSpecificConfig.
pub fn aac_sequence_header(p: &AacParams) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + p.asc.len());
    b.put_u8(aac_flags(p.channels));
    b.put_u8(0);
    b.put_slice(&p.asc);
    b.freeze()
}

fn aac_flags(channels: u8) -> u8 {
    if channels == 1 {
        AAC_MONO
    } else {
        AAC_STEREO
    }
}

/// Turns frames into tag bodies for one stream. Holds the per-stream state a tag needs (the AAC
/// channel flag); built once per stream and shared by all its destinations.
#[derive(Clone, Debug, Default)]
pub struct FlvMuxer {
    aac_flags: Option<u8>,
}

impl FlvMuxer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new track set began: remember what tags need from it.
    pub fn set_tracks(&mut self, tracks: &TrackSet) {
        self.aac_flags = tracks.aac().map(|p| aac_flags(p.channels));
    }

    /// One frame → one tag body (a copy of the payload behind the FLV tag header, laid out in
    /// RTMP chunks).
    pub fn tag(&self, f: &Frame) -> Arc<FlvTag> {
        let body = match f.kind {
            TrackKind::Video => {
                let cts = ticks_to_ms(f.pts) - ticks_to_ms(f.dts);
                let cts = cts.clamp(-(1 << 23), (1 << 23) - 1) as i32;
                let c = cts.to_be_bytes();
                let head = [
                    if f.keyframe { AVC_KEY } else { AVC_INTER },
                    1,
                    c[1],
                    c[2],
                    c[3],
                ];
                ChunkedBody::new(TrackKind::Video, &[&head, &f.data])
            }
            TrackKind::Audio => {
                let head = [self.aac_flags.unwrap_or(AAC_STEREO), 1];
                ChunkedBody::new(TrackKind::Audio, &[&head, &f.data])
            }
        };
        Arc::new(FlvTag {
            kind: f.kind,
            dts: f.dts,
            keyframe: f.kind == TrackKind::Video && f.keyframe,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::OpusParams;
    use std::time::SystemTime;

    // A real 320x240 High-profile avcC (x264), as the ingest would receive it.
    const AVCC: &[u8] = &[
        0x01, 0x64, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41,
        0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1,
        0x42, 0x99, 0x60, 0x01, 0x00, 0x06, 0x68, 0xea, 0xe3, 0xcb, 0x22, 0xc0, 0xfd, 0xf8, 0xf8,
        0x00,
    ];

    fn h264(avcc: Bytes) -> H264Params {
        let sps = Bytes::from_static(&AVCC[8..8 + 0x19]);
        let pps = Bytes::from_static(&AVCC[8 + 0x19 + 3..8 + 0x19 + 3 + 6]);
        H264Params {
            avcc,
            sps: vec![sps],
            pps: vec![pps],
            profile_idc: 0x64,
            constraint_flags: 0,
            level_idc: 0x0d,
            width: 320,
            height: 240,
            nalu_length_size: 4,
        }
    }

    fn aac(aot: u8, channels: u8) -> AacParams {
        AacParams {
            asc: Bytes::from_static(&[0x12, 0x10]),
            object_type: aot,
            sample_rate: 44100,
            channels,
        }
    }

    fn tracks(video: Option<Codec>, audio: Option<Codec>) -> TrackSet {
        TrackSet {
            session: 7,
            video,
            audio,
        }
    }

    #[test]
    fn sequence_headers_use_the_received_avcc_and_asc() {
        let h = Headers::from_tracks(&tracks(
            Some(Codec::H264(h264(Bytes::from_static(AVCC)))),
            Some(Codec::Aac(aac(2, 2))),
        ));
        assert_eq!(h.refusal, None);
        assert_eq!(h.session, 7);
        let v = h.video.unwrap().payload();
        assert_eq!(&v[..5], &[0x17, 0, 0, 0, 0]);
        assert_eq!(&v[5..], AVCC);
        assert_eq!(&h.audio.unwrap().payload()[..], &[0xAF, 0x00, 0x12, 0x10]);
        assert_eq!(h.metadata.width, Some(320));
    }

    #[test]
    fn avcc_built_from_parameter_sets_matches_the_encoders() {
        let built = avcc_record(&h264(Bytes::new())).unwrap();
        // x264 writes the same record (its High-profile trailer included).
        assert_eq!(&built[..], AVCC);
        let parsed = crate::media::codec::h264::parse_avcc(built).unwrap();
        assert_eq!((parsed.width, parsed.height), (320, 240));
        let h = Headers::from_tracks(&tracks(Some(Codec::H264(h264(Bytes::new()))), None));
        assert_eq!(&h.video.unwrap().payload()[5..], AVCC);
        let mut none = h264(Bytes::new());
        none.sps.clear();
        assert_eq!(avcc_record(&none), Err(H264Error::NoSps));
        let h = Headers::from_tracks(&tracks(Some(Codec::H264(none)), None));
        assert!(h.refusal.unwrap().contains("no SPS"));
    }

    /// An FLV file of what a destination receives for a WHIP-like source (parameter sets, no
    /// received avcC) in High 4:2:2 10-bit: the toolbox writes the record, ffprobe decodes it all.
    #[test]
    fn ffprobe_decodes_flv_with_a_high_422_10bit_avcc() {
        use crate::media::codec::h264::fixtures;
        let dir = tempfile::tempdir().unwrap();
        let stream = fixtures::x264_annexb(dir.path(), "yuv422p10le", 1);
        let (sps, pps, aus) = fixtures::access_units(&stream);
        let p = H264Params {
            avcc: Bytes::new(),
            profile_idc: sps[1],
            constraint_flags: sps[2],
            level_idc: sps[3],
            sps: vec![sps],
            pps: vec![pps],
            width: 320,
            height: 240,
            nalu_length_size: 4,
        };
        let h = Headers::from_tracks(&tracks(Some(Codec::H264(p)), None));
        assert_eq!(h.refusal, None);
        let seq = h.video.unwrap().payload();
        // chroma_format_idc 2, 10-bit luma and chroma, no SPS extensions.
        assert_eq!(&seq[seq.len() - 4..], &[0xfe, 0xfa, 0xfa, 0]);

        // FLV header (video only), then each tag and its PreviousTagSize.
        let mut file = b"FLV\x01\x01\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        let mut put = |body: &[u8], ms: u32| {
            let (len, ts) = ((body.len() as u32).to_be_bytes(), ms.to_be_bytes());
            file.extend_from_slice(&[9, len[1], len[2], len[3], ts[1], ts[2], ts[3], ts[0]]);
            file.extend_from_slice(&[0, 0, 0]);
            file.extend_from_slice(body);
            file.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
        };
        put(&seq, 0);
        let m = FlvMuxer::new();
        for (i, au) in aus.iter().enumerate() {
            let t = m.tag(&Frame {
                kind: TrackKind::Video,
                dts: i as i64 * 3000,
                pts: i as i64 * 3000,
                keyframe: au.keyframe,
                data: au.avcc.clone(),
                wallclock: SystemTime::now(),
            });
            put(&t.body.payload(), t.ms() as u32);
        }
        let path = dir.path().join("out.flv");
        std::fs::write(&path, &file).unwrap();
        let json = fixtures::ffprobe_streams(&path);
        let video = &json["streams"][0];
        assert_eq!(video["codec_name"], "h264", "{json}");
        assert_eq!(video["profile"], "High 4:2:2", "{json}");
        assert_eq!(video["pix_fmt"], "yuv422p10le", "{json}");
        assert_eq!(video["nb_read_frames"], aus.len().to_string(), "{json}");
    }

    #[test]
    fn codecs_rtmp_cannot_carry_are_refused_with_a_reason() {
        let opus = Codec::Opus(OpusParams {
            channels: 2,
            sample_rate: 48000,
        });
        let h = Headers::from_tracks(&tracks(
            Some(Codec::H264(h264(Bytes::from_static(AVCC)))),
            Some(opus),
        ));
        assert!(h.refusal.as_deref().unwrap().contains("Opus"), "{h:?}");
        let h = Headers::from_tracks(&tracks(None, Some(Codec::Aac(aac(5, 2)))));
        let r = h.refusal.unwrap();
        assert!(r.contains("HE-AAC") && r.contains("AAC-LC"), "{r}");
        // Audio-only and video-only programs are fine.
        assert_eq!(
            Headers::from_tracks(&tracks(None, Some(Codec::Aac(aac(2, 1))))).refusal,
            None
        );
        assert_eq!(
            Headers::from_tracks(&tracks(
                Some(Codec::H264(h264(Bytes::from_static(AVCC)))),
                None
            ))
            .refusal,
            None
        );
        assert!(Headers::from_tracks(&tracks(None, None)).refusal.is_some());
    }

    #[test]
    fn frame_tags_carry_flags_and_composition_time() {
        let mut m = FlvMuxer::new();
        m.set_tracks(&tracks(None, Some(Codec::Aac(aac(2, 1)))));
        let data = Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]);
        let f = Frame {
            kind: TrackKind::Video,
            dts: 90 * 1000 + 45, // 1000.5 ms
            pts: 90 * 1040 + 10, // 1040.1 ms
            keyframe: true,
            data: data.clone(),
            wallclock: SystemTime::now(),
        };
        let t = m.tag(&f);
        assert_eq!(t.ms(), 1000);
        assert!(t.keyframe);
        let b = t.body.payload();
        assert_eq!(&b[..5], &[0x17, 0x01, 0x00, 0x00, 40]);
        assert_eq!(&b[5..], &data[..]);
        let f = Frame {
            keyframe: false,
            pts: f.dts,
            ..f
        };
        assert_eq!(&m.tag(&f).body.payload()[..5], &[0x27, 0x01, 0, 0, 0]);
        let a = Frame {
            kind: TrackKind::Audio,
            dts: 0,
            pts: 0,
            keyframe: true,
            data: Bytes::from_static(b"\x21\x00"),
            wallclock: SystemTime::now(),
        };
        let t = m.tag(&a);
        assert!(!t.keyframe, "audio never counts as a video keyframe");
        assert_eq!(&t.body.payload()[..], &[0xAE, 0x01, 0x21, 0x00]);
        assert_eq!(ticks_to_ms(-1), -1);
    }
}
