//! CMAF / fragmented MP4 for LL-HLS: the init segment (`ftyp` + `moov`, one per `TrackSet`) and
//! the media fragments (`moof` + `mdat`, one per LL-HLS part).
//!
//! Sans-IO: plain functions from codec parameters and samples to `Bytes`. Every box is encoded by
//! `mp4-atom`; this module only fills in the structs and computes the `trun` data offsets. The
//! `mdat` payload is the only place the media bytes are copied on the way to HTTP: `fragment`
//! sizes its output once, allocates once and copies each sample into it exactly once.
//!
//! Track layout: video (if any) is track 1 on a 90 kHz timescale; audio (if any) is track 2 on a
//! timescale equal to its sample rate, so one AAC frame lasts exactly 1024 ticks.

use bytes::{Bytes, BytesMut};
use mp4_atom::esds::{DecoderConfig, DecoderSpecific, EsDescriptor, SLConfig};
use mp4_atom::{
    Atom, Audio, Avc1, Avcc, Codec as SampleEntry, Dinf, Dops, Dref, DrefEntry, Encode, Esds,
    FourCC, Ftyp, Hdlr, Header, Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mp4a, Mvex, Mvhd, Opus, Smhd,
    Stbl, Stco, Stsc, Stsd, Stsz, Stts, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, Url,
    Visual, Vmhd,
};

use crate::media::codec::h264::{avcc_record, write_avcc};
use crate::media::{AacParams, Codec, H264Params, OpusParams, TrackSet};

/// Track id of the video track in every init segment and fragment.
pub const VIDEO_TRACK_ID: u32 = 1;
/// Track id of the audio track in every init segment and fragment.
pub const AUDIO_TRACK_ID: u32 = 2;

/// Timescale of the video track (the core's media clock).
const VIDEO_TIMESCALE: u32 = 90_000;
/// Movie header timescale; nothing in a fragmented file is expressed in it.
const MOVIE_TIMESCALE: u32 = 1_000;

/// ISO/IEC 14496-12 sample_flags for a sync sample: sample_depends_on = 2 (does not depend on
/// others), sample_is_non_sync_sample = 0.
const SYNC_SAMPLE_FLAGS: u32 = 2 << 24;
/// sample_flags for a non-sync sample: sample_depends_on = 1, sample_is_non_sync_sample = 1.
const NON_SYNC_SAMPLE_FLAGS: u32 = (1 << 24) | (1 << 16);

/// Sampling frequencies by AAC `samplingFrequencyIndex` (ISO/IEC 14496-3 table 1.18).
const AAC_SAMPLE_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

#[derive(Debug, thiserror::Error)]
pub enum CmafError {
    #[error("the track set has no tracks: an init segment needs at least one")]
    NoTracks,
    #[error("{codec} cannot be packaged as CMAF: {reason}")]
    Unsupported { codec: &'static str, reason: String },
    #[error("invalid {codec} parameters: {reason}")]
    InvalidParams { codec: &'static str, reason: String },
    #[error("a fragment needs at least one sample; every track fragment was empty")]
    EmptyFragment,
    #[error("invalid track fragment: {0}")]
    InvalidFragment(String),
    #[error("fragment too large: {0}")]
    TooLarge(String),
    #[error("mp4-atom could not encode a box: {0}")]
    Encode(#[from] mp4_atom::Error),
}

/// One sample (access unit) of one track, with times in that track's timescale.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Duration in the track's timescale (the next sample's dts minus this one's).
    pub duration: u32,
    /// Composition offset (pts - dts) in the track's timescale; may be negative.
    pub cts: i32,
    /// A sync sample (IDR for H.264; every audio frame).
    pub keyframe: bool,
    /// H.264: AVCC (length-prefixed NAL units, length size as in the avcC). AAC: one raw access
    /// unit. Opus: one packet.
    pub data: Bytes,
}

/// The samples of one track that go into one fragment.
pub struct TrackFragment<'a> {
    pub track_id: u32,
    /// Decode time of the first sample, in the track's timescale (written to `tfdt`).
    pub base_decode_time: u64,
    pub samples: &'a [Sample],
}

/// The timescale of a track carrying `codec`: 90 kHz for video, the sample rate for audio.
pub fn timescale(codec: &Codec) -> u32 {
    match codec {
        Codec::H264(_) => VIDEO_TIMESCALE,
        Codec::Aac(p) => p.sample_rate,
        Codec::Opus(p) => p.sample_rate,
    }
}

/// The init segment for `tracks`: `ftyp` (iso6 with the cmfc brand) and a `moov` holding one
/// `trak` per track present (video id 1, audio id 2) and an `mvex` with one `trex` per track.
pub fn init_segment(tracks: &TrackSet) -> Result<Bytes, CmafError> {
    let mut traks = Vec::with_capacity(2);
    let mut trexs = Vec::with_capacity(2);

    if let Some(codec) = &tracks.video {
        let Codec::H264(params) = codec else {
            return Err(CmafError::InvalidParams {
                codec: codec.name(),
                reason: "an audio codec is in the video slot of the track set".into(),
            });
        };
        traks.push(video_trak(params)?);
        trexs.push(trex(VIDEO_TRACK_ID));
    }
    if let Some(codec) = &tracks.audio {
        let entry = match codec {
            Codec::Aac(p) => aac_sample_entry(p)?,
            Codec::Opus(p) => opus_sample_entry(p)?,
            Codec::H264(_) => {
                return Err(CmafError::InvalidParams {
                    codec: codec.name(),
                    reason: "a video codec is in the audio slot of the track set".into(),
                })
            }
        };
        traks.push(audio_trak(timescale(codec), entry));
        trexs.push(trex(AUDIO_TRACK_ID));
    }
    if traks.is_empty() {
        return Err(CmafError::NoTracks);
    }

    let ftyp = Ftyp {
        major_brand: FourCC::new(b"iso6"),
        minor_version: 0,
        compatible_brands: vec![
            FourCC::new(b"iso6"),
            FourCC::new(b"cmfc"),
            FourCC::new(b"mp41"),
        ],
    };
    let moov = Moov {
        mvhd: Mvhd {
            timescale: MOVIE_TIMESCALE,
            duration: 0,
            rate: 1u16.into(),
            volume: 1u8.into(),
            next_track_id: AUDIO_TRACK_ID + 1,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: trexs,
        }),
        trak: traks,
        ..Default::default()
    };

    let mut out = Vec::with_capacity(1024);
    ftyp.encode(&mut out)?;
    moov.encode(&mut out)?;
    Ok(Bytes::from(out))
}

/// One fragment: a `moof` (mfhd with `sequence`, then one `traf` per non-empty track in the
/// order given) followed by one `mdat` holding those tracks' samples in the same order.
///
/// Every `traf` has a `tfhd` with default-base-is-moof, a version 1 `tfdt` and a version 1
/// `trun` with a data offset and per-sample duration, size, flags and (signed) composition
/// offset.
pub fn fragment(sequence: u32, tracks: &[TrackFragment<'_>]) -> Result<Bytes, CmafError> {
    let present: Vec<&TrackFragment<'_>> =
        tracks.iter().filter(|t| !t.samples.is_empty()).collect();
    if present.is_empty() {
        return Err(CmafError::EmptyFragment);
    }
    for (i, t) in present.iter().enumerate() {
        if t.track_id == 0 {
            return Err(CmafError::InvalidFragment("track id 0 is reserved".into()));
        }
        if present[..i].iter().any(|o| o.track_id == t.track_id) {
            return Err(CmafError::InvalidFragment(format!(
                "track {} appears more than once",
                t.track_id
            )));
        }
    }

    // Build the moof with placeholder data offsets: their values do not change the box sizes.
    let mut payload_len: u64 = 0;
    let mut traf_payload_start = Vec::with_capacity(present.len());
    let mut trafs = Vec::with_capacity(present.len());
    for t in &present {
        traf_payload_start.push(payload_len);
        let mut entries = Vec::with_capacity(t.samples.len());
        for s in t.samples {
            let size = u32::try_from(s.data.len()).map_err(|_| {
                CmafError::TooLarge(format!(
                    "a sample of track {} is {} bytes (at most 4 GiB fits a trun)",
                    t.track_id,
                    s.data.len()
                ))
            })?;
            payload_len += u64::from(size);
            entries.push(TrunEntry {
                duration: Some(s.duration),
                size: Some(size),
                flags: Some(if s.keyframe {
                    SYNC_SAMPLE_FLAGS
                } else {
                    NON_SYNC_SAMPLE_FLAGS
                }),
                cts: Some(i64::from(s.cts)),
            });
        }
        trafs.push(Traf {
            tfhd: Tfhd {
                track_id: t.track_id,
                default_base_is_moof: true,
                ..Default::default()
            },
            tfdt: Some(Tfdt {
                base_media_decode_time: t.base_decode_time,
            }),
            trun: vec![Trun {
                data_offset: Some(0),
                samples: entries.into(),
            }],
            ..Default::default()
        });
    }
    let mut moof = Moof {
        mfhd: Mfhd {
            sequence_number: sequence,
        },
        traf: trafs,
    };

    let payload_len = usize::try_from(payload_len)
        .map_err(|_| CmafError::TooLarge(format!("{payload_len} bytes of samples")))?;
    let mdat_header = Header {
        kind: FourCC::new(b"mdat"),
        size: Some(payload_len),
    };
    let moof_len = encoded_len(&moof)?;
    let mdat_header_len = encoded_len(&mdat_header)?;

    // With default-base-is-moof, a trun data offset counts from the first byte of the moof.
    for (traf, start) in moof.traf.iter_mut().zip(&traf_payload_start) {
        let offset = (moof_len + mdat_header_len) as u64 + start;
        let offset = i32::try_from(offset).map_err(|_| {
            CmafError::TooLarge(format!(
                "track {} starts {offset} bytes after the moof (a trun data offset is an i32)",
                traf.tfhd.track_id
            ))
        })?;
        traf.trun[0].data_offset = Some(offset);
    }

    let total = moof_len + mdat_header_len + payload_len;
    let mut out = BytesMut::with_capacity(total);
    moof.encode(&mut out)?;
    mdat_header.encode(&mut out)?;
    for t in &present {
        for s in t.samples {
            out.extend_from_slice(&s.data);
        }
    }
    debug_assert_eq!(out.len(), total, "fragment size was computed wrongly");
    Ok(out.freeze())
}

/// A `BufMut` that only counts, to size a box before encoding it for real.
struct Counter(usize);

impl mp4_atom::BufMut for Counter {
    fn len(&self) -> usize {
        self.0
    }
    fn append_slice(&mut self, val: &[u8]) {
        self.0 += val.len();
    }
    fn set_slice(&mut self, _pos: usize, _val: &[u8]) {}
}

fn encoded_len<T: mp4_atom::Encode>(atom: &T) -> Result<usize, CmafError> {
    let mut counter = Counter(0);
    atom.encode(&mut counter)?;
    Ok(counter.0)
}

fn trex(track_id: u32) -> Trex {
    // Every trun carries every per-sample field, so the defaults are never used.
    Trex {
        track_id,
        default_sample_description_index: 1,
        ..Default::default()
    }
}

/// A `trak` for a fragmented track: empty sample tables, one sample entry.
fn trak(tkhd: Tkhd, timescale: u32, handler: &[u8; 4], name: &str, minf_header: Minf) -> Trak {
    Trak {
        tkhd,
        mdia: Mdia {
            mdhd: Mdhd {
                timescale,
                duration: 0,
                language: "und".into(),
                ..Default::default()
            },
            hdlr: Hdlr {
                handler: FourCC::new(handler),
                name: name.into(),
            },
            minf: minf_header,
        },
        ..Default::default()
    }
}

fn minf(vmhd: Option<Vmhd>, smhd: Option<Smhd>, entry: SampleEntry) -> Minf {
    Minf {
        vmhd,
        smhd,
        dinf: Dinf {
            dref: Dref {
                // An empty location means "in this file" (self-contained flag).
                entries: vec![DrefEntry::Url(Url::default())],
            },
        },
        stbl: Stbl {
            stsd: Stsd {
                codecs: vec![entry],
            },
            stts: Stts::default(),
            stsc: Stsc::default(),
            stsz: Stsz::default(),
            stco: Some(Stco::default()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn video_trak(p: &H264Params) -> Result<Trak, CmafError> {
    let invalid = |reason: String| CmafError::InvalidParams {
        codec: "H264",
        reason,
    };
    let width = u16::try_from(p.width)
        .map_err(|_| invalid(format!("width {} does not fit a sample entry", p.width)))?;
    let height = u16::try_from(p.height)
        .map_err(|_| invalid(format!("height {} does not fit a sample entry", p.height)))?;
    if width == 0 || height == 0 {
        return Err(invalid(format!(
            "picture size {}x{} is unknown",
            p.width, p.height
        )));
    }
    let entry = Avc1 {
        visual: Visual {
            data_reference_index: 1,
            width,
            height,
            ..Default::default()
        },
        avcc: avcc(p)?,
        ..Default::default()
    };
    let tkhd = Tkhd {
        track_id: VIDEO_TRACK_ID,
        enabled: true,
        in_movie: true,
        width: width.into(),
        height: height.into(),
        ..Default::default()
    };
    Ok(trak(
        tkhd,
        VIDEO_TIMESCALE,
        b"vide",
        "VideoHandler",
        minf(Some(Vmhd::default()), None, entry.into()),
    ))
}

/// The avcC: the toolbox's [`avcc_record`] (the record as received, or one written from the
/// parameter sets). A received record that mp4-atom cannot read (it takes any bytes after the PPS
/// array for the High-profile extension) is written again from its parameter sets. The samples
/// go into the mdat as they are, so the record's NALU length size is the frames' own.
fn avcc(p: &H264Params) -> Result<Avcc, CmafError> {
    let invalid = |reason: String| CmafError::InvalidParams {
        codec: "H264",
        reason,
    };
    let decode = |record: &[u8]| {
        let mut record = record;
        Avcc::decode_body(&mut record).ok().filter(|a| {
            !a.sequence_parameter_sets.is_empty() && !a.picture_parameter_sets.is_empty()
        })
    };
    let record = avcc_record(p).map_err(|e| invalid(e.to_string()))?;
    if let Some(avcc) = decode(&record) {
        return Ok(avcc);
    }
    let record =
        write_avcc(&p.sps, &p.pps, p.nalu_length_size).map_err(|e| invalid(e.to_string()))?;
    decode(&record).ok_or_else(|| invalid("mp4-atom cannot read the avcC".into()))
}

fn audio_trak(timescale: u32, entry: SampleEntry) -> Trak {
    let tkhd = Tkhd {
        track_id: AUDIO_TRACK_ID,
        enabled: true,
        in_movie: true,
        alternate_group: 1,
        volume: 1u8.into(),
        ..Default::default()
    };
    trak(
        tkhd,
        timescale,
        b"soun",
        "SoundHandler",
        minf(None, Some(Smhd::default()), entry),
    )
}

fn audio_fields(codec: &'static str, channels: u8, sample_rate: u32) -> Result<Audio, CmafError> {
    if channels == 0 || sample_rate == 0 {
        return Err(CmafError::InvalidParams {
            codec,
            reason: format!("{channels} channels at {sample_rate} Hz"),
        });
    }
    Ok(Audio {
        data_reference_index: 1,
        channel_count: u16::from(channels),
        sample_size: 16,
        // A 16.16 field: rates above 65535 Hz do not fit and are written as 0 (the decoder
        // configuration carries the real rate).
        sample_rate: u16::try_from(sample_rate).unwrap_or(0).into(),
    })
}

fn aac_sample_entry(p: &AacParams) -> Result<SampleEntry, CmafError> {
    let audio = audio_fields("AAC", p.channels, p.sample_rate)?;
    let freq_index = AAC_SAMPLE_RATES
        .iter()
        .position(|&r| r == p.sample_rate)
        .map(|i| i as u8);
    if p.asc.is_empty() && (freq_index.is_none() || p.channels > 7) {
        return Err(CmafError::InvalidParams {
            codec: "AAC",
            reason: format!(
                "no AudioSpecificConfig, and {} channels at {} Hz cannot be described without one",
                p.channels, p.sample_rate
            ),
        });
    }
    let esds = Esds {
        es_desc: EsDescriptor {
            es_id: AUDIO_TRACK_ID as u16,
            dec_config: DecoderConfig {
                object_type_indication: 0x40, // MPEG-4 Audio
                stream_type: 0x05,            // AudioStream
                dec_specific: Some(DecoderSpecific {
                    // Only used by mp4-atom when `raw` is empty (it then writes a 2-byte ASC).
                    profile: p.object_type,
                    freq_index: freq_index.unwrap_or(0),
                    chan_conf: p.channels,
                    raw: p.asc.to_vec(),
                }),
                ..Default::default()
            },
            sl_config: SLConfig {},
            ..Default::default()
        },
    };
    Ok(Mp4a {
        audio,
        esds,
        btrt: None,
        taic: None,
    }
    .into())
}

fn opus_sample_entry(p: &OpusParams) -> Result<SampleEntry, CmafError> {
    if p.channels > 2 {
        return Err(CmafError::Unsupported {
            codec: "Opus",
            reason: format!(
                "{} channels need a channel mapping table, which the track does not carry",
                p.channels
            ),
        });
    }
    let audio = audio_fields("Opus", p.channels, p.sample_rate)?;
    Ok(Opus {
        audio,
        dops: Dops {
            output_channel_count: p.channels,
            // WebRTC carries no OpusHead, so there is no encoder pre-skip to report; a live
            // stream is joined mid-way anyway.
            pre_skip: 0,
            input_sample_rate: p.sample_rate,
            output_gain: 0,
            channel_mapping: None,
        },
        btrt: None,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::h264::fixtures;
    use mp4_atom::{Decode, Mdat, TrunSamples};
    use std::path::Path;
    use std::process::Command;

    // A real x264 320x240 High-profile SPS and its PPS.
    const SPS: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
    ];
    const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];

    fn h264(sps: &[u8], pps: &[u8], width: u32, height: u32) -> Codec {
        Codec::H264(H264Params {
            avcc: write_avcc(&[sps], &[pps], 4).unwrap(),
            sps: vec![Bytes::copy_from_slice(sps)],
            pps: vec![Bytes::copy_from_slice(pps)],
            profile_idc: sps[1],
            constraint_flags: sps[2],
            level_idc: sps[3],
            width,
            height,
            nalu_length_size: 4,
        })
    }

    fn aac(asc: &[u8], sample_rate: u32, channels: u8) -> Codec {
        Codec::Aac(AacParams {
            asc: Bytes::copy_from_slice(asc),
            object_type: asc[0] >> 3,
            sample_rate,
            channels,
        })
    }

    fn sample(duration: u32, cts: i32, keyframe: bool, fill: u8, len: usize) -> Sample {
        Sample {
            duration,
            cts,
            keyframe,
            data: Bytes::from(vec![fill; len]),
        }
    }

    #[test]
    fn init_segment_has_both_tracks() {
        let tracks = TrackSet {
            session: 1,
            video: Some(h264(SPS, PPS, 320, 240)),
            audio: Some(aac(&[0x11, 0x90], 48_000, 2)),
        };
        let init = init_segment(&tracks).unwrap();
        let mut buf: &[u8] = &init;
        let ftyp = Ftyp::decode(&mut buf).unwrap();
        assert_eq!(ftyp.major_brand, FourCC::new(b"iso6"));
        assert!(ftyp.compatible_brands.contains(&FourCC::new(b"cmfc")));
        let moov = Moov::decode(&mut buf).unwrap();
        assert!(buf.is_empty(), "trailing bytes after moov");

        let trex: Vec<u32> = moov
            .mvex
            .as_ref()
            .unwrap()
            .trex
            .iter()
            .map(|t| t.track_id)
            .collect();
        assert_eq!(trex, [VIDEO_TRACK_ID, AUDIO_TRACK_ID]);
        assert_eq!(moov.trak.len(), 2);

        let video = &moov.trak[0];
        assert_eq!(video.tkhd.track_id, VIDEO_TRACK_ID);
        assert_eq!(video.mdia.mdhd.timescale, 90_000);
        assert_eq!(video.mdia.hdlr.handler, FourCC::new(b"vide"));
        let SampleEntry::Avc1(avc1) = &video.mdia.minf.stbl.stsd.codecs[0] else {
            panic!("video sample entry is not avc1");
        };
        assert_eq!((avc1.visual.width, avc1.visual.height), (320, 240));
        assert_eq!(avc1.avcc.sequence_parameter_sets, [SPS.to_vec()]);
        assert_eq!(avc1.avcc.picture_parameter_sets, [PPS.to_vec()]);
        assert_eq!(avc1.avcc.length_size, 4);
        assert_eq!(avc1.avcc.avc_profile_indication, 0x64);

        let audio = &moov.trak[1];
        assert_eq!(audio.tkhd.track_id, AUDIO_TRACK_ID);
        assert_eq!(audio.mdia.mdhd.timescale, 48_000);
        assert_eq!(audio.mdia.hdlr.handler, FourCC::new(b"soun"));
        let SampleEntry::Mp4a(mp4a) = &audio.mdia.minf.stbl.stsd.codecs[0] else {
            panic!("audio sample entry is not mp4a");
        };
        assert_eq!(mp4a.audio.channel_count, 2);
        assert_eq!(mp4a.audio.sample_rate.integer(), 48_000);
        let dsi = mp4a.esds.es_desc.dec_config.dec_specific.as_ref().unwrap();
        assert_eq!(dsi.raw, [0x11, 0x90]);
        assert_eq!(mp4a.esds.es_desc.dec_config.object_type_indication, 0x40);
    }

    #[test]
    fn init_segment_audio_only_and_video_only() {
        let audio_only = TrackSet {
            session: 1,
            video: None,
            audio: Some(aac(&[0x12, 0x10], 44_100, 2)),
        };
        let moov = decode_init(&init_segment(&audio_only).unwrap());
        assert_eq!(moov.trak.len(), 1);
        assert_eq!(moov.trak[0].tkhd.track_id, AUDIO_TRACK_ID);
        assert_eq!(moov.trak[0].mdia.mdhd.timescale, 44_100);

        let video_only = TrackSet {
            session: 1,
            video: Some(h264(SPS, PPS, 320, 240)),
            audio: None,
        };
        let moov = decode_init(&init_segment(&video_only).unwrap());
        assert_eq!(moov.trak.len(), 1);
        assert_eq!(moov.trak[0].tkhd.track_id, VIDEO_TRACK_ID);
        assert_eq!(moov.mvex.unwrap().trex.len(), 1);

        let empty = TrackSet {
            session: 1,
            video: None,
            audio: None,
        };
        assert!(matches!(init_segment(&empty), Err(CmafError::NoTracks)));
    }

    #[test]
    fn init_segment_builds_avcc_from_parameter_sets() {
        let Codec::H264(mut p) = h264(SPS, PPS, 320, 240) else {
            unreachable!()
        };
        p.avcc = Bytes::new();
        let tracks = TrackSet {
            session: 1,
            video: Some(Codec::H264(p)),
            audio: None,
        };
        let moov = decode_init(&init_segment(&tracks).unwrap());
        let SampleEntry::Avc1(avc1) = &moov.trak[0].mdia.minf.stbl.stsd.codecs[0] else {
            panic!("not avc1");
        };
        assert_eq!(avc1.avcc.sequence_parameter_sets, [SPS.to_vec()]);
        assert_eq!(avc1.avcc.avc_level_indication, 0x0d);
        // High profile: the record says 4:2:0 8-bit, as the SPS does.
        assert_eq!(avc1.avcc.ext, Some(mp4_atom::AvccExt::default()));
    }

    #[test]
    fn init_segment_opus() {
        let tracks = TrackSet {
            session: 1,
            video: None,
            audio: Some(Codec::Opus(OpusParams {
                channels: 2,
                sample_rate: 48_000,
            })),
        };
        let moov = decode_init(&init_segment(&tracks).unwrap());
        assert_eq!(moov.trak[0].mdia.mdhd.timescale, 48_000);
        let SampleEntry::Opus(opus) = &moov.trak[0].mdia.minf.stbl.stsd.codecs[0] else {
            panic!("not Opus");
        };
        assert_eq!(opus.dops.output_channel_count, 2);
        assert_eq!(opus.dops.input_sample_rate, 48_000);

        let surround = TrackSet {
            session: 1,
            video: None,
            audio: Some(Codec::Opus(OpusParams {
                channels: 6,
                sample_rate: 48_000,
            })),
        };
        assert!(matches!(
            init_segment(&surround),
            Err(CmafError::Unsupported { codec: "Opus", .. })
        ));
    }

    fn decode_init(init: &[u8]) -> Moov {
        let mut buf = init;
        Ftyp::decode(&mut buf).unwrap();
        let moov = Moov::decode(&mut buf).unwrap();
        assert!(buf.is_empty());
        moov
    }

    #[test]
    fn fragment_round_trip() {
        let video = [
            sample(3000, 3000, true, 0xa1, 1000),
            sample(3000, -3000, false, 0xa2, 17),
            sample(3000, 0, false, 0xa3, 250),
        ];
        let audio = [
            sample(1024, 0, true, 0xb1, 300),
            sample(1024, 0, true, 0xb2, 301),
            sample(1024, 0, true, 0xb3, 302),
            sample(1024, 0, true, 0xb4, 303),
        ];
        let tracks = [
            TrackFragment {
                track_id: VIDEO_TRACK_ID,
                base_decode_time: 5_000_000_000, // past 32 bits: needs tfdt v1
                samples: &video,
            },
            TrackFragment {
                track_id: AUDIO_TRACK_ID,
                base_decode_time: 96_000,
                samples: &audio,
            },
        ];
        let frag = fragment(7, &tracks).unwrap();

        let mut buf: &[u8] = &frag;
        let moof = Moof::decode(&mut buf).unwrap();
        let moof_len = frag.len() - buf.len();
        let mdat = Mdat::decode(&mut buf).unwrap();
        assert!(buf.is_empty(), "trailing bytes after mdat");
        let payload: usize = video.iter().chain(&audio).map(|s| s.data.len()).sum();
        assert_eq!(mdat.data.len(), payload);
        assert_eq!(frag.len(), moof_len + 8 + payload);

        assert_eq!(moof.mfhd.sequence_number, 7);
        assert_eq!(moof.traf.len(), 2);
        for (traf, t) in moof.traf.iter().zip(&tracks) {
            assert_eq!(traf.tfhd.track_id, t.track_id);
            assert!(traf.tfhd.default_base_is_moof);
            assert_eq!(traf.tfhd.base_data_offset, None);
            assert_eq!(
                traf.tfdt.as_ref().unwrap().base_media_decode_time,
                t.base_decode_time
            );
            assert_eq!(traf.trun.len(), 1);
            let trun = &traf.trun[0];
            assert_eq!(trun.samples.len(), t.samples.len());
            let TrunSamples::Explicit(entries) = &trun.samples else {
                panic!("trun without per-sample fields");
            };
            // The data offset is relative to the moof, which starts the fragment.
            let mut at = trun.data_offset.unwrap() as usize;
            for (e, s) in entries.iter().zip(t.samples) {
                assert_eq!(e.duration, Some(s.duration));
                assert_eq!(e.cts, Some(i64::from(s.cts)));
                let expect_flags = if s.keyframe { 0x0200_0000 } else { 0x0101_0000 };
                assert_eq!(e.flags, Some(expect_flags));
                let size = e.size.unwrap() as usize;
                assert_eq!(&frag[at..at + size], &s.data[..]);
                at += size;
            }
        }

        // Version 1 trun (signed composition offsets) and version 1 tfdt, checked on the bytes.
        let trun_at = find_box(&frag, b"trun");
        assert_eq!(frag[trun_at + 8], 1, "trun version");
        let tfdt_at = find_box(&frag, b"tfdt");
        assert_eq!(frag[tfdt_at + 8], 1, "tfdt version");
    }

    /// Offset of the first box of `kind` (its size field), found by scanning the bytes.
    fn find_box(data: &[u8], kind: &[u8; 4]) -> usize {
        data.windows(4)
            .position(|w| w == kind)
            .expect("box not found")
            - 4
    }

    #[test]
    fn fragment_skips_empty_tracks_and_rejects_bad_input() {
        let audio = [sample(1024, 0, true, 1, 10), sample(1024, 0, true, 2, 11)];
        let frag = fragment(
            1,
            &[
                TrackFragment {
                    track_id: VIDEO_TRACK_ID,
                    base_decode_time: 0,
                    samples: &[],
                },
                TrackFragment {
                    track_id: AUDIO_TRACK_ID,
                    base_decode_time: 2048,
                    samples: &audio,
                },
            ],
        )
        .unwrap();
        let mut buf: &[u8] = &frag;
        let moof = Moof::decode(&mut buf).unwrap();
        assert_eq!(moof.traf.len(), 1);
        assert_eq!(moof.traf[0].tfhd.track_id, AUDIO_TRACK_ID);
        let offset = moof.traf[0].trun[0].data_offset.unwrap() as usize;
        assert_eq!(&frag[offset..offset + 10], &[1; 10]);
        assert_eq!(&frag[offset + 10..], &[2; 11]);

        let empty = TrackFragment {
            track_id: VIDEO_TRACK_ID,
            base_decode_time: 0,
            samples: &[],
        };
        assert!(matches!(
            fragment(1, &[empty]),
            Err(CmafError::EmptyFragment)
        ));
        assert!(matches!(fragment(1, &[]), Err(CmafError::EmptyFragment)));
        let twice = [
            TrackFragment {
                track_id: AUDIO_TRACK_ID,
                base_decode_time: 0,
                samples: &audio,
            },
            TrackFragment {
                track_id: AUDIO_TRACK_ID,
                base_decode_time: 0,
                samples: &audio,
            },
        ];
        assert!(matches!(
            fragment(1, &twice),
            Err(CmafError::InvalidFragment(_))
        ));
    }

    #[test]
    fn timescales() {
        assert_eq!(timescale(&h264(SPS, PPS, 320, 240)), 90_000);
        assert_eq!(timescale(&aac(&[0x12, 0x10], 44_100, 2)), 44_100);
        let opus = Codec::Opus(OpusParams {
            channels: 2,
            sample_rate: 48_000,
        });
        assert_eq!(timescale(&opus), 48_000);
    }

    // ---- real decoder: ffmpeg encodes, we package, ffprobe decodes ----

    /// Raw AAC frames of an ADTS stream, plus a 2-byte AudioSpecificConfig and the sample rate
    /// and channel count from the first header.
    fn adts_frames(data: &[u8]) -> (Vec<Bytes>, [u8; 2], u32, u8) {
        let mut frames = Vec::new();
        let mut config = None;
        let mut i = 0;
        while i + 7 <= data.len() {
            let h = &data[i..];
            assert!(h[0] == 0xff && h[1] & 0xf6 == 0xf0, "lost ADTS sync at {i}");
            let protection_absent = h[1] & 1 == 1;
            let object_type = (h[2] >> 6) + 1;
            let sf_index = (h[2] >> 2) & 0x0f;
            let channels = ((h[2] & 1) << 2) | (h[3] >> 6);
            let frame_len =
                (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
            let header_len = if protection_absent { 7 } else { 9 };
            assert!(frame_len > header_len && i + frame_len <= data.len());
            frames.push(Bytes::copy_from_slice(&data[i + header_len..i + frame_len]));
            config.get_or_insert((object_type, sf_index, channels));
            i += frame_len;
        }
        let (ot, sfi, ch) = config.expect("no ADTS frames");
        let asc = [(ot << 3) | (sfi >> 1), ((sfi & 1) << 7) | (ch << 3)];
        (frames, asc, AAC_SAMPLE_RATES[sfi as usize], ch)
    }

    /// 2 s of `pix_fmt` H.264 (Annex-B) and of 48 kHz stereo AAC (ADTS).
    fn write_fixtures(dir: &Path, pix_fmt: &str) -> (Vec<u8>, Vec<u8>) {
        let h264 = fixtures::x264_annexb(dir, pix_fmt, 2);
        let aac = dir.join("in.aac");
        fixtures::run(
            Command::new("ffmpeg")
                .args([
                    "-nostdin",
                    "-v",
                    "error",
                    "-y",
                    "-f",
                    "lavfi",
                    "-i",
                    "sine=frequency=440:sample_rate=48000",
                    "-t",
                    "2",
                    "-ac",
                    "2",
                    "-c:a",
                    "aac",
                    "-f",
                    "adts",
                ])
                .arg(&aac),
        );
        (h264, std::fs::read(aac).unwrap())
    }

    /// ffmpeg encodes 2 s of `pix_fmt` video and AAC, we package an init segment and 200 ms
    /// fragments, ffprobe decodes the file: its stream entries, and the number of AAC frames.
    fn package_and_probe(pix_fmt: &str) -> (serde_json::Value, usize) {
        let dir = tempfile::tempdir().unwrap();
        let (h264_data, aac_data) = write_fixtures(dir.path(), pix_fmt);

        let (sps, pps, aus) = fixtures::access_units(&h264_data);
        assert_eq!(aus.len(), 60, "expected 2 s of 30 fps video");
        assert!(aus[0].keyframe && aus[30].keyframe);
        let (aac_frames, asc, sample_rate, channels) = adts_frames(&aac_data);
        assert_eq!(sample_rate, 48_000);

        let tracks = TrackSet {
            session: 1,
            video: Some(h264(&sps, &pps, 320, 240)),
            audio: Some(aac(&asc, sample_rate, channels)),
        };
        let mut file = init_segment(&tracks).unwrap().to_vec();

        let video: Vec<Sample> = aus
            .iter()
            .map(|au| Sample {
                duration: 3000,
                cts: 0,
                keyframe: au.keyframe,
                data: au.avcc.clone(),
            })
            .collect();
        let audio: Vec<Sample> = aac_frames
            .iter()
            .map(|f| Sample {
                duration: 1024,
                cts: 0,
                keyframe: true,
                data: f.clone(),
            })
            .collect();

        // One fragment per 6 video frames (200 ms); audio frames that start before the
        // fragment's end go with it, the last fragment takes whatever audio remains.
        let mut audio_next = 0usize;
        let chunks = video.len().div_ceil(6);
        for (k, chunk) in video.chunks(6).enumerate() {
            let first_video = k * 6;
            let end_frame = (first_video + chunk.len()) as u64;
            let audio_end = if k + 1 == chunks {
                audio.len()
            } else {
                // i * 1024 / 48000 < end_frame / 30
                let mut end = audio_next;
                while end < audio.len()
                    && (end as u64) * 1024 * 30 < end_frame * u64::from(sample_rate)
                {
                    end += 1;
                }
                end
            };
            let frag = fragment(
                k as u32 + 1,
                &[
                    TrackFragment {
                        track_id: VIDEO_TRACK_ID,
                        base_decode_time: first_video as u64 * 3000,
                        samples: chunk,
                    },
                    TrackFragment {
                        track_id: AUDIO_TRACK_ID,
                        base_decode_time: audio_next as u64 * 1024,
                        samples: &audio[audio_next..audio_end],
                    },
                ],
            )
            .unwrap();
            file.extend_from_slice(&frag);
            audio_next = audio_end;
        }
        assert_eq!(audio_next, audio.len());

        let out = dir.path().join("out.mp4");
        std::fs::write(&out, &file).unwrap();
        (fixtures::ffprobe_streams(&out), aac_frames.len())
    }

    fn stream<'a>(json: &'a serde_json::Value, codec: &str) -> &'a serde_json::Value {
        json["streams"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["codec_name"] == codec))
            .unwrap_or_else(|| panic!("no {codec} stream in {json}"))
    }

    #[test]
    fn ffprobe_decodes_init_and_fragments() {
        let (json, aac_frames) = package_and_probe("yuv420p");
        let frames = |codec: &str| stream(&json, codec)["nb_read_frames"].as_str().unwrap();
        assert_eq!(frames("h264"), "60", "{json}");
        assert_eq!(frames("aac"), aac_frames.to_string(), "{json}");
        assert_eq!(json["streams"].as_array().unwrap().len(), 2, "{json}");
    }

    /// High 4:2:2 10-bit: the init segment's avcC says so (the toolbox's writer), and ffprobe
    /// decodes every frame as that profile and pixel format.
    #[test]
    fn ffprobe_decodes_high_422_10bit() {
        let (json, _) = package_and_probe("yuv422p10le");
        let video = stream(&json, "h264");
        assert_eq!(video["profile"], "High 4:2:2", "{json}");
        assert_eq!(video["pix_fmt"], "yuv422p10le", "{json}");
        assert_eq!(video["nb_read_frames"], "60", "{json}");
    }
}
