//! H.264 parameters: the AVCDecoderConfigurationRecord (`avcC`, ISO/IEC 14496-15 §5.3.3.1) that
//! FLV and MP4 carry, the SPS it contains (picture size, via `h264-reader`), and a check of the
//! length-prefixed NAL unit framing of frames ("AVCC" framing).
//!
//! Everything here faces the network: every length is checked against the buffer before it is
//! used, and a malformed record is an [`H264Error`], never a panic.

use bytes::Bytes;
use h264_reader::avcc::AvcDecoderConfigurationRecord;
use h264_reader::nal::sps::SeqParameterSet;
use h264_reader::nal::{Nal, RefNal};

use crate::media::H264Params;

/// NAL unit types (ITU-T H.264 Table 7-1) this crate cares about.
pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

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

/// Width and height in pixels (after frame cropping) from one SPS NAL unit (header byte included,
/// emulation prevention bytes still in place).
pub fn sps_picture_size(sps: &[u8]) -> Result<(u32, u32), H264Error> {
    if sps.len() < 4 {
        return Err(H264Error::BadSps("shorter than 4 bytes".into()));
    }
    // h264-reader is fuzzed upstream; the guard only keeps an unknown bug in it from taking
    // down the connection task with a panic.
    let parsed = std::panic::catch_unwind(|| {
        let nal = RefNal::new(sps, &[], true);
        let sps = SeqParameterSet::from_bits(nal.rbsp_bits())
            .map_err(|e| H264Error::BadSps(format!("{e:?}")))?;
        sps.pixel_dimensions()
            .map_err(|e| H264Error::BadSps(format!("{e:?}")))
    });
    let (w, h) = parsed.map_err(|_| H264Error::BadSps("SPS parser failed".into()))??;
    if w == 0 || h == 0 {
        return Err(H264Error::BadSps(format!("picture size {w}x{h}")));
    }
    Ok((w, h))
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
    let ls = usize::from(length_size);
    if !matches!(ls, 1 | 2 | 4) {
        return Err(H264Error::LengthSize(length_size.wrapping_sub(1)));
    }
    let mut s = NaluSummary::default();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < ls {
            return Err(H264Error::BadFraming("truncated NAL length prefix"));
        }
        let len = rest[..ls]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[ls..];
        if len == 0 {
            return Err(H264Error::BadFraming("zero-length NAL unit"));
        }
        if len > rest.len() {
            return Err(H264Error::BadFraming(
                "NAL unit runs past the end of the frame",
            ));
        }
        let t = rest[0] & 0x1f;
        s.count += 1;
        s.vcl |= (NAL_SLICE..=NAL_IDR).contains(&t);
        s.idr |= t == NAL_IDR;
        rest = &rest[len..];
    }
    Ok(s)
}

/// avcC written by ffmpeg 5.1 / libx264 (Main profile, level 3.0, 640x360: coded as 640x368
/// with 8 lines of bottom cropping), as in assets/demo.flv.
#[cfg(test)]
pub(crate) const FFMPEG_AVCC_640X360: &str =
    "014d401effe10019674d401ed900a02ff970110000030001000003003c8f162e4801000468ebccb2";

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
