//! Track descriptions: codec and codec parameters that every egress needs before the first frame
//! (H.264 SPS/PPS with what they say about the picture, AAC AudioSpecificConfig, Opus head).

use bytes::Bytes;

use super::frame::TrackKind;

/// A video track's codec parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H264Params {
    /// The AVCDecoderConfigurationRecord exactly as received (FLV/MP4 `avcC` payload).
    pub avcc: Bytes,
    /// Sequence parameter sets (NAL units without start code or length prefix).
    pub sps: Vec<Bytes>,
    /// Picture parameter sets.
    pub pps: Vec<Bytes>,
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub width: u32,
    pub height: u32,
    /// Length of the NALU length prefix in frames (1, 2 or 4); frames keep it as received.
    pub nalu_length_size: u8,
}

impl H264Params {
    /// RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile_idc, self.constraint_flags, self.level_idc
        )
    }
}

/// An audio track's codec parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AacParams {
    /// AudioSpecificConfig bytes as received.
    pub asc: Bytes,
    /// Audio object type (2 = AAC-LC, 5 = HE-AAC/SBR, 29 = HE-AACv2).
    pub object_type: u8,
    pub sample_rate: u32,
    pub channels: u8,
}

impl AacParams {
    pub fn codec_string(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }
    /// Samples per access unit (AAC-LC core frame).
    pub fn samples_per_frame(&self) -> u32 {
        1024
    }
}

/// Opus parameters (WHIP ingest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpusParams {
    pub channels: u8,
    pub sample_rate: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Codec {
    H264(H264Params),
    Aac(AacParams),
    Opus(OpusParams),
}

impl Codec {
    pub fn kind(&self) -> TrackKind {
        match self {
            Codec::H264(_) => TrackKind::Video,
            Codec::Aac(_) | Codec::Opus(_) => TrackKind::Audio,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Codec::H264(_) => "H264",
            Codec::Aac(_) => "AAC",
            Codec::Opus(_) => "Opus",
        }
    }
    pub fn codec_string(&self) -> String {
        match self {
            Codec::H264(p) => p.codec_string(),
            Codec::Aac(p) => p.codec_string(),
            Codec::Opus(_) => "opus".into(),
        }
    }
}

/// The tracks of one publisher session. A new `TrackSet` is announced whenever a publisher
/// (re)starts or a codec's parameters change; egress compares `session` to spot discontinuities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackSet {
    /// Increments for each publisher session of the stream (and on mid-stream parameter changes).
    pub session: u64,
    pub video: Option<Codec>,
    pub audio: Option<Codec>,
}

impl TrackSet {
    pub fn get(&self, kind: TrackKind) -> Option<&Codec> {
        match kind {
            TrackKind::Video => self.video.as_ref(),
            TrackKind::Audio => self.audio.as_ref(),
        }
    }
    pub fn h264(&self) -> Option<&H264Params> {
        match &self.video {
            Some(Codec::H264(p)) => Some(p),
            _ => None,
        }
    }
    pub fn aac(&self) -> Option<&AacParams> {
        match &self.audio {
            Some(Codec::Aac(p)) => Some(p),
            _ => None,
        }
    }
}
