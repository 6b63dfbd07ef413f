//! The H.264 toolbox, the one place that reads and writes H.264 framing for every protocol:
//!
//! - [`Nalus`]: the NAL units of a buffer, in AVCC framing (length prefixes, as FLV, MP4 and the
//!   media core carry them) or Annex-B framing (start codes, as WebRTC depacketizes them), as
//!   slices of the buffer: no allocation, no copy.
//! - [`parse_avcc`]: the AVCDecoderConfigurationRecord (`avcC`, ISO/IEC 14496-15 §5.3.3.1) that
//!   FLV and MP4 carry, with the picture size from its SPS (via `h264-reader`).
//! - [`write_avcc`]: the one avcC writer (WHIP ingest, RTMP push and CMAF use it), with one policy
//!   for the High-profile fields; [`avcc_record`] is what an egress sends.
//! - [`scan_nalus`]: a check of a frame's AVCC framing and what it holds.
//!
//! Everything here faces the network: every length is checked against the buffer before it is
//! used, and a malformed record is an [`H264Error`], never a panic.

use bytes::Bytes;
use h264_reader::avcc::AvcDecoderConfigurationRecord;
use h264_reader::nal::sps::{ChromaFormat, SeqParameterSet};
use h264_reader::nal::{Nal, RefNal};

use crate::media::H264Params;

/// NAL unit types (ITU-T H.264 Table 7-1) this crate cares about.
pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;
pub const NAL_FILLER: u8 = 12;

/// The `nal_unit_type` of a NAL unit (its first byte's low five bits). The units [`Nalus`] yields
/// are never empty.
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// Why an `avcC`, an SPS or a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H264Error {
    #[error("avcC is truncated: {0}")]
    Truncated(&'static str),
    #[error("avcC configurationVersion {0} is not supported (expected 1)")]
    Version(u8),
    #[error("avcC has no SPS")]
    NoSps,
    #[error("avcC has no PPS")]
    NoPps,
    #[error("avcC contains an empty {0}")]
    EmptyParamSet(&'static str),
    #[error("avcC {what} has NAL unit type {nal_type}, expected {expected}")]
    WrongNalType {
        what: &'static str,
        nal_type: u8,
        expected: u8,
    },
    #[error(
        "avcC lengthSizeMinusOne {0} is not allowed (NAL length prefixes must be 1, 2 or 4 bytes)"
    )]
    LengthSize(u8),
    #[error("bad SPS: {0}")]
    BadSps(String),
    #[error("bad NAL framing: {0}")]
    BadFraming(&'static str),
    #[error("too many parameter sets for an avcC: {0}")]
    TooManyParamSets(&'static str),
    #[error("an H.264 parameter set is longer than 65535 bytes")]
    ParamSetTooLong,
}

/// The NAL units of one buffer, as slices of it (no allocation). Build with [`Nalus::avcc`] or
/// [`Nalus::annexb`]; the units it yields are never empty.
///
/// - AVCC: each unit is prefixed by its big-endian length (1, 2 or 4 bytes) and the units fill
///   the buffer exactly. A truncated prefix, a zero length or a unit that runs past the end is an
///   error, after which the iterator ends.
/// - Annex-B: units are separated by 3- or 4-byte start codes; bytes before the first start code
///   are one unit (a bare NAL unit), and zero bytes at the end of a unit belong to the next start
///   code (or are trailing_zero_8bits) and are dropped. Annex-B never fails.
#[derive(Clone, Debug)]
pub struct Nalus<'a> {
    rest: &'a [u8],
    /// AVCC length-prefix size, or 0 for Annex-B.
    length_size: usize,
}

impl<'a> Nalus<'a> {
    /// AVCC framing with `length_size`-byte prefixes (1, 2 or 4).
    pub fn avcc(data: &'a [u8], length_size: u8) -> Result<Self, H264Error> {
        if !matches!(length_size, 1 | 2 | 4) {
            return Err(H264Error::LengthSize(length_size.wrapping_sub(1)));
        }
        Ok(Self {
            rest: data,
            length_size: usize::from(length_size),
        })
    }

    /// Annex-B framing (start codes).
    pub fn annexb(data: &'a [u8]) -> Self {
        Self {
            rest: data,
            length_size: 0,
        }
    }

    fn next_avcc(&mut self) -> Result<&'a [u8], H264Error> {
        let ls = self.length_size;
        let Some((prefix, rest)) = self.rest.split_at_checked(ls) else {
            return Err(H264Error::BadFraming("truncated NAL length prefix"));
        };
        let len = prefix
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len == 0 {
            return Err(H264Error::BadFraming("zero-length NAL unit"));
        }
        let Some((nal, rest)) = rest.split_at_checked(len) else {
            return Err(H264Error::BadFraming(
                "NAL unit runs past the end of the frame",
            ));
        };
        self.rest = rest;
        Ok(nal)
    }

    fn next_annexb(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let (mut nal, rest) = match find_start_code(self.rest) {
                Some(at) => (&self.rest[..at], &self.rest[at + 3..]),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            while let [head @ .., 0] = nal {
                nal = head;
            }
            if !nal.is_empty() {
                return Some(nal);
            }
        }
        None
    }
}

impl<'a> Iterator for Nalus<'a> {
    type Item = Result<&'a [u8], H264Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.length_size == 0 {
            return self.next_annexb().map(Ok);
        }
        if self.rest.is_empty() {
            return None;
        }
        let r = self.next_avcc();
        if r.is_err() {
            self.rest = &[];
        }
        Some(r)
    }
}

/// Offset of the first `00 00 01` in `d`.
fn find_start_code(d: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 2 < d.len() {
        if d[i + 2] > 1 {
            // No start code can begin at i, i + 1 or i + 2.
            i += 3;
        } else if d[i] == 0 && d[i + 1] == 0 && d[i + 2] == 1 {
            return Some(i);
        } else {
            i += 1;
        }
    }
    None
}

/// Parse an AVCDecoderConfigurationRecord into codec parameters. The SPS/PPS in the result are
/// slices of `avcc` (no copy).
pub fn parse_avcc(avcc: Bytes) -> Result<H264Params, H264Error> {
    // Walk the record ourselves first: it yields the parameter-set byte ranges as slices of the
    // shared buffer, and it refuses zero-length parameter sets, on which h264-reader's iterators
    // would index out of bounds.
    let d = &avcc[..];
    if d.len() < 6 {
        return Err(H264Error::Truncated("shorter than its 6-byte header"));
    }
    if d[0] != 1 {
        return Err(H264Error::Version(d[0]));
    }
    let length_size = match d[4] & 0b11 {
        0 => 1,
        1 => 2,
        3 => 4,
        other => return Err(H264Error::LengthSize(other)),
    };
    let mut pos = 6;
    let num_sps = usize::from(d[5] & 0b1_1111);
    let sps = read_param_sets(&avcc, &mut pos, num_sps, "SPS", NAL_SPS)?;
    let num_pps = match d.get(pos) {
        Some(n) => usize::from(*n),
        None => {
            return Err(H264Error::Truncated(
                "ends before numOfPictureParameterSets",
            ))
        }
    };
    pos += 1;
    let pps = read_param_sets(&avcc, &mut pos, num_pps, "PPS", NAL_PPS)?;
    if sps.is_empty() {
        return Err(H264Error::NoSps);
    }
    if pps.is_empty() {
        return Err(H264Error::NoPps);
    }
    // h264-reader's own structural check (including the High-profile extension fields).
    AvcDecoderConfigurationRecord::try_from(d)
        .map_err(|e| H264Error::BadSps(format!("avcC: {e:?}")))?;
    let (width, height) = sps_picture_size(&sps[0])?;
    Ok(H264Params {
        profile_idc: d[1],
        constraint_flags: d[2],
        level_idc: d[3],
        width,
        height,
        nalu_length_size: length_size,
        sps,
        pps,
        avcc,
    })
}

fn read_param_sets(
    avcc: &Bytes,
    pos: &mut usize,
    count: usize,
    what: &'static str,
    expected: u8,
) -> Result<Vec<Bytes>, H264Error> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let Some(len) = avcc.get(*pos..*pos + 2) else {
            return Err(H264Error::Truncated("ends inside a parameter-set length"));
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        *pos += 2;
        if len == 0 {
            return Err(H264Error::EmptyParamSet(what));
        }
        if avcc.len() < *pos + len {
            return Err(H264Error::Truncated("a parameter set runs past the end"));
        }
        let nal = avcc.slice(*pos..*pos + len);
        *pos += len;
        let nal_type = nal[0] & 0x1f;
        if nal_type != expected {
            return Err(H264Error::WrongNalType {
                what,
                nal_type,
                expected,
            });
        }
        out.push(nal);
    }
    Ok(out)
}

/// Parse one SPS NAL unit (header byte included, emulation prevention bytes still in place).
fn parse_sps(sps: &[u8]) -> Result<SeqParameterSet, H264Error> {
    if sps.len() < 4 {
        return Err(H264Error::BadSps("shorter than 4 bytes".into()));
    }
    // h264-reader is fuzzed upstream; the guard only keeps an unknown bug in it from taking
    // down the connection task with a panic.
    std::panic::catch_unwind(|| {
        let nal = RefNal::new(sps, &[], true);
        SeqParameterSet::from_bits(nal.rbsp_bits()).map_err(|e| H264Error::BadSps(format!("{e:?}")))
    })
    .map_err(|_| H264Error::BadSps("SPS parser failed".into()))?
}

/// Width and height in pixels (after frame cropping) from one SPS NAL unit (header byte included,
/// emulation prevention bytes still in place).
pub fn sps_picture_size(sps: &[u8]) -> Result<(u32, u32), H264Error> {
    let parsed = parse_sps(sps)?;
    let (w, h) = parsed
        .pixel_dimensions()
        .map_err(|e| H264Error::BadSps(format!("{e:?}")))?;
    if w == 0 || h == 0 {
        return Err(H264Error::BadSps(format!("picture size {w}x{h}")));
    }
    Ok((w, h))
}

/// Profiles whose avcC carries the chroma format, bit depths and SPS-extension count after the
/// PPS array (ISO/IEC 14496-15 §5.3.3.1.2: High, High 10, High 4:2:2, High 4:4:4 Predictive).
const PROFILES_WITH_AVCC_EXT: [u8; 4] = [100, 110, 122, 244];

/// Write an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1) for these parameter sets
/// (NAL units with their header byte, no start code or length prefix) and frames whose NAL length
/// prefixes are `nalu_length_size` bytes.
///
/// The one policy: profile, compatibility flags and level are the first SPS's own bytes; for the
/// profiles in [`PROFILES_WITH_AVCC_EXT`] the record ends with the chroma format and luma/chroma
/// bit depths that SPS codes (parsed with h264-reader, so a 4:2:2 10-bit stream is described as
/// such, not as 4:2:0 8-bit) and `numOfSequenceParameterSetExt = 0` (the media model carries no
/// SPS-extension NAL units). Other profiles get no extension. Every input the record cannot
/// describe is an error, never a truncated record.
pub fn write_avcc<S: AsRef<[u8]>, P: AsRef<[u8]>>(
    sps: &[S],
    pps: &[P],
    nalu_length_size: u8,
) -> Result<Bytes, H264Error> {
    let length_minus_one = match nalu_length_size {
        1 => 0u8,
        2 => 1,
        4 => 3,
        other => return Err(H264Error::LengthSize(other.wrapping_sub(1))),
    };
    let Some(first) = sps.first() else {
        return Err(H264Error::NoSps);
    };
    if pps.is_empty() {
        return Err(H264Error::NoPps);
    }
    if sps.len() > 31 {
        return Err(H264Error::TooManyParamSets("more than 31 SPS"));
    }
    if pps.len() > 255 {
        return Err(H264Error::TooManyParamSets("more than 255 PPS"));
    }
    let first = first.as_ref();
    if first.len() < 4 {
        return Err(H264Error::BadSps("shorter than 4 bytes".into()));
    }
    let ext = if PROFILES_WITH_AVCC_EXT.contains(&first[1]) {
        let parsed = parse_sps(first)?;
        let c = &parsed.chroma_info;
        let chroma = match c.chroma_format {
            ChromaFormat::Monochrome => 0,
            ChromaFormat::YUV420 => 1,
            ChromaFormat::YUV422 => 2,
            ChromaFormat::YUV444 => 3,
            ChromaFormat::Invalid(v) => {
                return Err(H264Error::BadSps(format!("chroma_format_idc {v}")))
            }
        };
        Some([
            0xfc | chroma,
            0xf8 | (c.bit_depth_luma_minus8 & 7),
            0xf8 | (c.bit_depth_chroma_minus8 & 7),
            0,
        ])
    } else {
        None
    };
    let sets = sps.iter().map(|s| (s.as_ref(), "SPS", NAL_SPS));
    let sets = sets.chain(pps.iter().map(|p| (p.as_ref(), "PPS", NAL_PPS)));
    let mut size = 7 + ext.map_or(0, |e| e.len());
    for (nal, what, expected) in sets.clone() {
        if nal.is_empty() {
            return Err(H264Error::EmptyParamSet(what));
        }
        if nal_type(nal) != expected {
            return Err(H264Error::WrongNalType {
                what,
                nal_type: nal_type(nal),
                expected,
            });
        }
        if nal.len() > usize::from(u16::MAX) {
            return Err(H264Error::ParamSetTooLong);
        }
        size += 2 + nal.len();
    }
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(&[1, first[1], first[2], first[3], 0xfc | length_minus_one]);
    b.push(0xe0 | sps.len() as u8);
    for (i, (nal, _, _)) in sets.enumerate() {
        if i == sps.len() {
            b.push(pps.len() as u8);
        }
        b.extend_from_slice(&(nal.len() as u16).to_be_bytes());
        b.extend_from_slice(nal);
    }
    if let Some(ext) = ext {
        b.extend_from_slice(&ext);
    }
    debug_assert_eq!(b.len(), size);
    Ok(Bytes::from(b))
}

/// The avcC an egress sends for a track: the publisher's own record (already checked by
/// [`parse_avcc`]; passed on unchanged, as ffmpeg does), or, for parameters that came without
/// one, the record [`write_avcc`] writes from their parameter sets.
pub fn avcc_record(p: &H264Params) -> Result<Bytes, H264Error> {
    if p.avcc.is_empty() {
        write_avcc(&p.sps, &p.pps, p.nalu_length_size)
    } else {
        Ok(p.avcc.clone())
    }
}

/// What a length-prefixed access unit contains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NaluSummary {
    pub count: usize,
    /// Contains an IDR slice.
    pub idr: bool,
    /// Contains at least one coded slice (types 1..=5).
    pub vcl: bool,
}

/// Check that `data` is a sequence of NAL units each prefixed by a big-endian length of
/// `length_size` bytes that exactly fills the buffer, and summarize what it holds.
pub fn scan_nalus(data: &[u8], length_size: u8) -> Result<NaluSummary, H264Error> {
    let mut s = NaluSummary::default();
    for nal in Nalus::avcc(data, length_size)? {
        let t = nal_type(nal?);
        s.count += 1;
        s.vcl |= (NAL_SLICE..=NAL_IDR).contains(&t);
        s.idr |= t == NAL_IDR;
    }
    Ok(s)
}

/// avcC written by ffmpeg 5.1 / libx264 (Main profile, level 3.0, 640x360: coded as 640x368
/// with 8 lines of bottom cropping), as in assets/demo.flv.
#[cfg(test)]
pub(crate) const FFMPEG_AVCC_640X360: &str =
    "014d401effe10019674d401ed900a02ff970110000030001000003003c8f162e4801000468ebccb2";

/// Real H.264 from ffmpeg/libx264 for the tests of every module that reads or writes it.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::Path;
    use std::process::{Command, Output};

    use bytes::Bytes;

    use super::{nal_type, Nalus, NAL_AUD, NAL_IDR, NAL_PPS, NAL_SPS};

    /// Run a command that must succeed (ffmpeg, ffprobe).
    pub(crate) fn run(cmd: &mut Command) -> Output {
        let name = cmd.get_program().to_string_lossy().into_owned();
        let out = cmd.output().unwrap_or_else(|e| {
            panic!(
                "could not run `{name}` ({e}): this test needs ffmpeg and ffprobe with libx264 \
                 on PATH (e.g. apt-get install ffmpeg)"
            )
        });
        assert!(
            out.status.success(),
            "`{name}` failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `dir/in.h264`: `seconds` of 320x240 30 fps test pattern in `pix_fmt` (which picks the
    /// profile: yuv420p → High, yuv422p10le → High 4:2:2, ...), Annex-B with an AUD per access
    /// unit, an IDR every 30 frames, no B-frames.
    pub(crate) fn x264_annexb(dir: &Path, pix_fmt: &str, seconds: u32) -> Vec<u8> {
        let path = dir.join("in.h264");
        run(Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc=size=320x240:rate=30")
            .args([
                "-t",
                &seconds.to_string(),
                "-pix_fmt",
                pix_fmt,
                "-c:v",
                "libx264",
            ])
            .args(["-g", "30", "-bf", "0", "-x264-params", "aud=1"])
            .args(["-bsf:v", "h264_mp4toannexb", "-f", "h264"])
            .arg(&path));
        std::fs::read(path).unwrap()
    }

    /// The avcC ffmpeg's own MP4 muxer writes for `dir/in.h264` (remuxed, not re-encoded).
    pub(crate) fn ffmpeg_avcc(dir: &Path) -> Vec<u8> {
        let mp4 = dir.join("ffmpeg.mp4");
        run(Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-f", "h264", "-i"])
            .arg(dir.join("in.h264"))
            .args(["-c", "copy", "-f", "mp4"])
            .arg(&mp4));
        let file = std::fs::read(mp4).unwrap();
        let at = file
            .windows(4)
            .position(|w| w == b"avcC")
            .expect("no avcC box in ffmpeg's MP4");
        let size = u32::from_be_bytes(file[at - 4..at].try_into().unwrap()) as usize;
        file[at + 4..at - 4 + size].to_vec()
    }

    /// ffprobe's stream entries (codec, profile, pixel format, decoded frame count) for `file`;
    /// ffprobe must report no error.
    pub(crate) fn ffprobe_streams(file: &Path) -> serde_json::Value {
        let probe = run(Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-show_entries"])
            .arg("stream=codec_name,profile,pix_fmt,nb_read_frames")
            .args(["-of", "json"])
            .arg(file));
        let stderr = String::from_utf8_lossy(&probe.stderr);
        assert!(
            stderr.trim().is_empty(),
            "ffprobe reported errors:\n{stderr}"
        );
        serde_json::from_slice(&probe.stdout).unwrap()
    }

    /// One access unit in AVCC framing (4-byte lengths), without AUD, SPS and PPS.
    pub(crate) struct AccessUnit {
        pub avcc: Bytes,
        pub keyframe: bool,
    }

    /// Split an Annex-B stream on its AUDs into access units; returns its first SPS and PPS too.
    pub(crate) fn access_units(annexb: &[u8]) -> (Bytes, Bytes, Vec<AccessUnit>) {
        let (mut sps, mut pps) = (None, None);
        let mut aus: Vec<(Vec<u8>, bool)> = Vec::new();
        for nal in Nalus::annexb(annexb) {
            let nal = nal.unwrap();
            match nal_type(nal) {
                NAL_AUD => aus.push((Vec::new(), false)),
                NAL_SPS => {
                    sps.get_or_insert_with(|| Bytes::copy_from_slice(nal));
                }
                NAL_PPS => {
                    pps.get_or_insert_with(|| Bytes::copy_from_slice(nal));
                }
                t => {
                    let (buf, key) = aus.last_mut().expect("NAL unit before the first AUD");
                    *key |= t == NAL_IDR;
                    buf.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    buf.extend_from_slice(nal);
                }
            }
        }
        let aus = aus
            .into_iter()
            .map(|(buf, keyframe)| AccessUnit {
                avcc: Bytes::from(buf),
                keyframe,
            })
            .collect();
        (sps.expect("no SPS"), pps.expect("no PPS"), aus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        Bytes::from(
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>(),
        )
    }

    #[test]
    fn parses_ffmpeg_avcc_with_cropping() {
        let avcc = hex(FFMPEG_AVCC_640X360);
        let p = parse_avcc(avcc.clone()).unwrap();
        assert_eq!(
            (p.profile_idc, p.constraint_flags, p.level_idc),
            (77, 0x40, 30)
        );
        assert_eq!((p.width, p.height), (640, 360));
        assert_eq!(p.nalu_length_size, 4);
        assert_eq!(p.sps.len(), 1);
        assert_eq!(p.pps.len(), 1);
        assert_eq!(p.sps[0][0] & 0x1f, NAL_SPS);
        assert_eq!(&p.pps[0][..], &[0x68, 0xeb, 0xcc, 0xb2]);
        assert_eq!(p.codec_string(), "avc1.4d401e");
        assert_eq!(p.avcc, avcc);
        // Zero copy: the SPS is a view into the record.
        assert_eq!(p.sps[0].as_ptr(), avcc[8..].as_ptr());
    }

    #[test]
    fn refuses_records_without_parameter_sets() {
        // Header only, 0 SPS, 0 PPS.
        let e = parse_avcc(hex("014d401effe000")).unwrap_err();
        assert_eq!(e, H264Error::NoSps);
        assert!(e.to_string().contains("no SPS"));
        // An SPS but no PPS.
        let full = FFMPEG_AVCC_640X360;
        let no_pps = format!("{}00", &full[..full.len() - 14]);
        assert_eq!(parse_avcc(hex(&no_pps)).unwrap_err(), H264Error::NoPps);
    }

    #[test]
    fn refuses_truncated_and_malformed_records() {
        let full = hex(FFMPEG_AVCC_640X360);
        for cut in 0..full.len() {
            let e = parse_avcc(full.slice(..cut)).unwrap_err();
            assert!(matches!(e, H264Error::Truncated(_)), "cut at {cut}: {e:?}");
        }
        let mut v = full.to_vec();
        v[0] = 2;
        assert_eq!(
            parse_avcc(Bytes::from(v)).unwrap_err(),
            H264Error::Version(2)
        );
        let mut v = full.to_vec();
        v[4] = 0xfe; // lengthSizeMinusOne = 2 (3-byte prefixes) is not allowed
        assert_eq!(
            parse_avcc(Bytes::from(v)).unwrap_err(),
            H264Error::LengthSize(2)
        );
        // Zero-length PPS at the very end (h264-reader alone would index past the buffer).
        let zero_pps = format!(
            "{}010000",
            &FFMPEG_AVCC_640X360[..FFMPEG_AVCC_640X360.len() - 14]
        );
        assert_eq!(
            parse_avcc(hex(&zero_pps)).unwrap_err(),
            H264Error::EmptyParamSet("PPS")
        );
        // A PPS where the SPS should be.
        let swapped = "014d401effe1000468ebccb201000468ebccb2";
        assert!(matches!(
            parse_avcc(hex(swapped)).unwrap_err(),
            H264Error::WrongNalType {
                what: "SPS",
                nal_type: 8,
                ..
            }
        ));
    }

    #[test]
    fn bad_sps_is_a_clear_error() {
        // Valid framing, SPS body is garbage (exp-Golomb runs off the end).
        let e = parse_avcc(hex("014d401effe10005674d401e0001000468ebccb2")).unwrap_err();
        assert!(matches!(e, H264Error::BadSps(_)), "{e:?}");
        assert!(e.to_string().starts_with("bad SPS"));
    }

    #[test]
    fn random_records_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let base = hex(FFMPEG_AVCC_640X360).to_vec();
        for _ in 0..20_000 {
            let mut v = base.clone();
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            v.truncate(rng.random_range(0..=v.len()));
            let _ = parse_avcc(Bytes::from(v));
        }
    }

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, n) in nals.iter().enumerate() {
            v.extend_from_slice(if i % 2 == 0 {
                &[0, 0, 0, 1][..]
            } else {
                &[0, 0, 1]
            });
            v.extend_from_slice(n);
        }
        v
    }

    fn units(n: Nalus<'_>) -> Vec<&[u8]> {
        n.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn splits_annexb_without_copies() {
        let sps = &[0x67, 0x42, 0, 0x1e][..];
        let pps = &[0x68, 0xce, 0x3c, 0x80][..];
        let d = annexb(&[&[9, 0xf0], sps, pps, &[0x65, 1, 2, 3, 0]]);
        let n = units(Nalus::annexb(&d));
        assert_eq!(n, [&[9, 0xf0][..], sps, pps, &[0x65, 1, 2, 3]]);
        // Slices of the input.
        assert_eq!(n[1].as_ptr(), d[9..].as_ptr());
        assert!(units(Nalus::annexb(&[])).is_empty());
        // A bare NAL unit, data before the first start code, empty units between start codes.
        assert_eq!(units(Nalus::annexb(&[0x41, 1])), [&[0x41, 1][..]]);
        assert_eq!(
            units(Nalus::annexb(&[0x41, 1, 0, 0, 1, 0x65, 7])),
            [&[0x41, 1][..], &[0x65, 7]]
        );
        assert!(units(Nalus::annexb(&[0, 0, 1])).is_empty());
        assert!(units(Nalus::annexb(&[0, 0, 0, 1, 0, 0, 1, 0, 0])).is_empty());
        assert_eq!(
            units(Nalus::annexb(&[
                0, 0, 1, 0x41, 0, 0, 0, 1, 0x41, 2, 0, 0, 1
            ])),
            [&[0x41][..], &[0x41, 2]]
        );
        // 00 00 02 and 00 00 03 are not start codes.
        assert_eq!(
            units(Nalus::annexb(&[0, 0, 1, 0x41, 0, 0, 3, 1, 0, 0, 2])).len(),
            1
        );
    }

    #[test]
    fn splits_avcc_and_refuses_bad_framing() {
        for ls in [1u8, 2, 4] {
            let mut d = Vec::new();
            for n in [&[0x67u8, 1, 2][..], &[0x65, 9]] {
                d.extend_from_slice(&(n.len() as u32).to_be_bytes()[4 - usize::from(ls)..]);
                d.extend_from_slice(n);
            }
            assert_eq!(
                units(Nalus::avcc(&d, ls).unwrap()),
                [&[0x67, 1, 2][..], &[0x65, 9]]
            );
            // Cut anywhere inside: an error, then the iterator ends.
            for cut in 1..d.len() {
                if cut == 3 + usize::from(ls) {
                    continue; // a whole first unit
                }
                let mut it = Nalus::avcc(&d[..cut], ls).unwrap();
                assert!(it.by_ref().any(|r| r.is_err()), "ls {ls} cut {cut}");
                assert!(it.next().is_none());
            }
        }
        assert_eq!(
            Nalus::avcc(&[0, 0, 0, 0, 0, 0, 0, 1, 0x41], 4)
                .unwrap()
                .next(),
            Some(Err(H264Error::BadFraming("zero-length NAL unit")))
        );
        assert_eq!(Nalus::avcc(&[], 3).unwrap_err(), H264Error::LengthSize(2));
    }

    // x264 320x240 High (profile 100, 4:2:0 8-bit) SPS and PPS.
    const HIGH_SPS: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60,
    ];
    const HIGH_PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];

    #[test]
    fn writes_avcc_with_the_high_profile_fields_only_for_high_profiles() {
        let r = write_avcc(&[HIGH_SPS], &[HIGH_PPS], 4).unwrap();
        assert_eq!(&r[..6], &[1, 0x64, 0, 0x0d, 0xff, 0xe1]);
        // 4:2:0, 8-bit luma and chroma, no SPS extensions.
        assert_eq!(&r[r.len() - 4..], &[0xfd, 0xf8, 0xf8, 0]);
        assert_eq!(r.len(), 6 + 2 + HIGH_SPS.len() + 1 + 2 + HIGH_PPS.len() + 4);
        let p = parse_avcc(r.clone()).unwrap();
        assert_eq!((p.width, p.height, p.nalu_length_size), (320, 240, 4));
        assert_eq!(write_avcc(&p.sps, &p.pps, 4).unwrap(), r);
        // Main profile: no extension; the record round-trips through the parser.
        let main = parse_avcc(Bytes::from(hex(FFMPEG_AVCC_640X360).to_vec())).unwrap();
        let w = write_avcc(&main.sps, &main.pps, 4).unwrap();
        assert_eq!(w, main.avcc);
        assert_eq!(w[4], 0xff);
        assert_eq!(write_avcc(&main.sps, &main.pps, 2).unwrap()[4], 0xfd);
    }

    #[test]
    fn avcc_writer_refuses_what_a_record_cannot_say() {
        let no: [&[u8]; 0] = [];
        assert_eq!(write_avcc(&no, &[HIGH_PPS], 4), Err(H264Error::NoSps));
        assert_eq!(write_avcc(&[HIGH_SPS], &no, 4), Err(H264Error::NoPps));
        assert_eq!(
            write_avcc(&[HIGH_SPS], &[HIGH_PPS], 3),
            Err(H264Error::LengthSize(2))
        );
        assert!(matches!(
            write_avcc(&[HIGH_PPS], &[HIGH_PPS], 4),
            Err(H264Error::BadSps(_) | H264Error::WrongNalType { .. })
        ));
        assert_eq!(
            write_avcc(&[HIGH_SPS], &[HIGH_SPS], 4),
            Err(H264Error::WrongNalType {
                what: "PPS",
                nal_type: 7,
                expected: 8
            })
        );
        assert_eq!(
            write_avcc(&[HIGH_SPS], &[&[][..]], 4),
            Err(H264Error::EmptyParamSet("PPS"))
        );
        let long = [&[0x68u8; 70_000][..]];
        assert_eq!(
            write_avcc(&[HIGH_SPS], &long, 4),
            Err(H264Error::ParamSetTooLong)
        );
        assert!(matches!(
            write_avcc(&[HIGH_SPS; 32], &[HIGH_PPS], 4),
            Err(H264Error::TooManyParamSets(_))
        ));
        assert!(write_avcc(&[HIGH_SPS; 31], &[HIGH_PPS], 4).is_ok());
        assert!(matches!(
            write_avcc(&[&HIGH_SPS[..3]], &[HIGH_PPS], 4),
            Err(H264Error::BadSps(_))
        ));
    }

    /// For each High profile x264 makes, the record written from the stream's in-band SPS/PPS is
    /// byte for byte the one ffmpeg's MP4 muxer writes, High-profile fields included.
    #[test]
    fn avcc_matches_ffmpegs_for_every_high_profile() {
        for (pix_fmt, profile, ext) in [
            ("yuv420p", 100, [0xfd, 0xf8, 0xf8, 0]),
            ("yuv420p10le", 110, [0xfd, 0xfa, 0xfa, 0]),
            ("yuv422p10le", 122, [0xfe, 0xfa, 0xfa, 0]),
            ("yuv444p", 244, [0xff, 0xf8, 0xf8, 0]),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let stream = fixtures::x264_annexb(dir.path(), pix_fmt, 1);
            let (sps, pps, _) = fixtures::access_units(&stream);
            let ours = write_avcc(&[&sps], &[&pps], 4).unwrap();
            assert_eq!(ours[1], profile, "{pix_fmt}");
            assert_eq!(&ours[ours.len() - 4..], &ext, "{pix_fmt}");
            assert_eq!(&ours[..], fixtures::ffmpeg_avcc(dir.path()), "{pix_fmt}");
            assert_eq!(parse_avcc(ours).unwrap().width, 320);
        }
    }

    #[test]
    fn scans_nal_framing() {
        let idr = [0, 0, 0, 3, 0x65, 0x88, 0x84, 0, 0, 0, 2, 0x06, 0x05];
        let s = scan_nalus(&idr, 4).unwrap();
        assert_eq!(
            s,
            NaluSummary {
                count: 2,
                idr: true,
                vcl: true
            }
        );
        let ps_only = [0, 2, 0x67, 0x4d, 0, 2, 0x68, 0xeb];
        let s = scan_nalus(&ps_only, 2).unwrap();
        assert!(!s.vcl && s.count == 2);
        assert!(scan_nalus(&[0, 0, 0, 9, 0x41], 4).is_err());
        assert!(scan_nalus(&[0, 0, 0], 4).is_err());
        assert!(scan_nalus(&[0, 0, 0, 0], 4).is_err());
        assert!(scan_nalus(&[1, 0x41], 1).unwrap().vcl);
        assert!(scan_nalus(&[1, 0x41], 3).is_err());
    }
}
