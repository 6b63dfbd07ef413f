//! AAC parameters: the AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1) that FLV and MP4 carry.
//!
//! Hand-written: the maintained Rust parsers either parse only the first two bytes (no escape
//! object types, no explicit rates, no program config element) or come inside much larger
//! media frameworks; the syntax needed here is a few dozen lines of bit reading.
//!
//! Parsed: audioObjectType (incl. the escape value 31), samplingFrequencyIndex or the explicit
//! 24-bit rate, channelConfiguration (incl. channel configuration 0, where the channel count comes
//! from the program_config_element of the GASpecificConfig), and explicit SBR/PS signalling
//! (object types 5 and 29), where `sample_rate` is the core (AAC-LC) rate: one access unit is
//! always 1024 core samples.

use bytes::Bytes;

use crate::media::AacParams;

/// ISO/IEC 14496-3 Table 1.18.
const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Why an AudioSpecificConfig was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AacError {
    #[error("AudioSpecificConfig is truncated")]
    Truncated,
    #[error("AudioSpecificConfig: audio object type {0} is not AAC")]
    ObjectType(u8),
    #[error("AudioSpecificConfig: reserved sampling frequency index {0}")]
    SampleRateIndex(u8),
    #[error("AudioSpecificConfig: sample rate 0")]
    ZeroSampleRate,
    #[error("AudioSpecificConfig: reserved channel configuration {0}")]
    ChannelConfig(u8),
    #[error("AudioSpecificConfig: program config element declares no channels")]
    NoChannels,
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: usize) -> Result<u32, AacError> {
        debug_assert!(n <= 32);
        if self.pos + n > self.data.len() * 8 {
            return Err(AacError::Truncated);
        }
        let mut v = 0u32;
        for _ in 0..n {
            let bit = (self.data[self.pos / 8] >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }

    fn object_type(&mut self) -> Result<u8, AacError> {
        let t = self.read(5)? as u8;
        Ok(if t == 31 { 32 + self.read(6)? as u8 } else { t })
    }

    fn sample_rate(&mut self) -> Result<u32, AacError> {
        let rate = match self.read(4)? as u8 {
            15 => self.read(24)?,
            i => *SAMPLE_RATES
                .get(usize::from(i))
                .ok_or(AacError::SampleRateIndex(i))?,
        };
        if rate == 0 {
            return Err(AacError::ZeroSampleRate);
        }
        Ok(rate)
    }
}

/// Object types whose decoder-specific part is a GASpecificConfig (Table 1.15).
fn is_ga(object_type: u8) -> bool {
    matches!(object_type, 1..=4 | 6 | 7 | 17 | 19..=23)
}

/// Parse an AudioSpecificConfig. `asc` is kept in the result as received.
pub fn parse_asc(asc: Bytes) -> Result<AacParams, AacError> {
    let mut r = Bits { data: &asc, pos: 0 };
    let object_type = r.object_type()?;
    let sample_rate = r.sample_rate()?;
    let channel_config = r.read(4)? as u8;
    // Explicit hierarchical SBR / PS signalling: the extension rate, then the core object type.
    let mut core_type = object_type;
    if object_type == 5 || object_type == 29 {
        let _extension_rate = r.sample_rate()?;
        core_type = r.object_type()?;
    }
    if !is_ga(core_type) {
        return Err(AacError::ObjectType(core_type));
    }
    let channels = match channel_config {
        0 => pce_channels(&mut r)?,
        1..=6 => channel_config,
        7 | 12 | 14 => 8,
        11 => 7,
        13 => 24,
        other => return Err(AacError::ChannelConfig(other)),
    };
    Ok(AacParams {
        asc,
        object_type,
        sample_rate,
        channels,
    })
}

/// Skip the rest of GASpecificConfig up to its program_config_element and count the channels
/// that the PCE declares (§4.4.1.1, Table 4.2).
fn pce_channels(r: &mut Bits<'_>) -> Result<u8, AacError> {
    let _frame_length_flag = r.read(1)?;
    if r.read(1)? == 1 {
        let _core_coder_delay = r.read(14)?;
    }
    let _extension_flag = r.read(1)?;
    let _element_instance_tag = r.read(4)?;
    let _object_type = r.read(2)?;
    let _sampling_frequency_index = r.read(4)?;
    let front = r.read(4)?;
    let side = r.read(4)?;
    let back = r.read(4)?;
    let lfe = r.read(2)?;
    let _assoc_data = r.read(3)?;
    let _valid_cc = r.read(4)?;
    for _ in 0..3 {
        // mono_mixdown (4), stereo_mixdown (4), matrix_mixdown (2 + 1)
        if r.read(1)? == 1 {
            r.read(4)?;
        }
    }
    let mut channels = 0u32;
    for _ in 0..front + side + back {
        let is_cpe = r.read(1)?;
        let _tag = r.read(4)?;
        channels += 1 + is_cpe;
    }
    for _ in 0..lfe {
        let _tag = r.read(4)?;
        channels += 1;
    }
    match channels {
        0 => Err(AacError::NoChannels),
        n => Ok(n.min(u32::from(u8::MAX)) as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asc(b: &[u8]) -> Result<AacParams, AacError> {
        parse_asc(Bytes::copy_from_slice(b))
    }

    #[test]
    fn aac_lc_from_ffmpeg() {
        // ffmpeg's native encoder, 48 kHz stereo, with the trailing SBR sync extension.
        let p = asc(&[0x11, 0x90, 0x56, 0xe5, 0x00]).unwrap();
        assert_eq!((p.object_type, p.sample_rate, p.channels), (2, 48000, 2));
        assert_eq!(p.codec_string(), "mp4a.40.2");
        assert_eq!(&p.asc[..], &[0x11, 0x90, 0x56, 0xe5, 0x00]);
        let p = asc(&[0x12, 0x10]).unwrap();
        assert_eq!((p.object_type, p.sample_rate, p.channels), (2, 44100, 2));
        let p = asc(&[0x13, 0x88]).unwrap(); // 22050 Hz mono
        assert_eq!((p.sample_rate, p.channels), (22050, 1));
    }

    #[test]
    fn escape_object_type_and_explicit_rate() {
        // AOT 31 + 6 bits 001010 → 32 + 10 = 42 (USAC, not GA): parsed, then refused by number.
        assert_eq!(
            asc(&[0xf9, 0x40, 0x00]).unwrap_err(),
            AacError::ObjectType(42)
        );
        assert_eq!(
            asc(&pack(concat!("11111", "000000", "0011", "0001", "000"))).unwrap_err(),
            AacError::ObjectType(32)
        );
        // AOT 2, index 15 → explicit 24-bit rate 0x00BB80 = 48000, channel configuration 1.
        let bits = concat!("00010", "1111", "000000001011101110000000", "0001", "000");
        let p = asc(&pack(bits)).unwrap();
        assert_eq!((p.object_type, p.sample_rate, p.channels), (2, 48000, 1));
        // Explicit rate 0.
        let bits = concat!("00010", "1111", "000000000000000000000000", "0010", "000");
        assert_eq!(asc(&pack(bits)).unwrap_err(), AacError::ZeroSampleRate);
    }

    #[test]
    fn he_aac_explicit_signalling() {
        // AOT 5 (SBR), core rate index 6 (24000), stereo, extension index 3 (48000), core AOT 2.
        let p = asc(&pack(concat!(
            "00101", "0110", "0010", "0011", "00010", "000"
        )))
        .unwrap();
        assert_eq!((p.object_type, p.sample_rate, p.channels), (5, 24000, 2));
        assert_eq!(p.codec_string(), "mp4a.40.5");
        // HE-AACv2 (29), mono core.
        let p = asc(&pack(concat!(
            "11101", "0110", "0001", "0011", "00010", "000"
        )))
        .unwrap();
        assert_eq!((p.object_type, p.sample_rate, p.channels), (29, 24000, 1));
        // SBR whose core is not AAC.
        let e = asc(&pack(concat!(
            "00101", "0110", "0010", "0011", "01000", "000"
        )))
        .unwrap_err();
        assert_eq!(e, AacError::ObjectType(8));
    }

    #[test]
    fn channel_configurations() {
        // 7 → 7.1 (8 channels); 8 is reserved.
        assert_eq!(
            asc(&pack(concat!("00010", "0011", "0111", "000")))
                .unwrap()
                .channels,
            8
        );
        assert_eq!(
            asc(&pack(concat!("00010", "0011", "1000", "000"))).unwrap_err(),
            AacError::ChannelConfig(8)
        );
        // Channel configuration 0 with a PCE: 1 front CPE + 1 front SCE + 1 LFE = 4 channels.
        let pce = concat!(
            "00010", "0011", "0000", // AOT 2, 48 kHz, config 0
            "000",  // frameLength, dependsOnCoreCoder, extension
            "0000", "01", "0011", // tag, profile, sf index
            "0010", "0000", "0000", "01", "000", "0000", // 2 front, 0 side, 0 back, 1 lfe
            "0", "0", "0", // no mixdowns
            "10000", "00001", // front: CPE tag 0, SCE tag 1
            "0000"   // lfe tag 0
        );
        assert_eq!(asc(&pack(pce)).unwrap().channels, 4);
        // A PCE cut short.
        assert_eq!(asc(&pack(&pce[..40])).unwrap_err(), AacError::Truncated);
    }

    #[test]
    fn errors_are_clear() {
        assert_eq!(asc(&[]).unwrap_err(), AacError::Truncated);
        assert_eq!(asc(&[0x12]).unwrap_err(), AacError::Truncated);
        assert_eq!(
            asc(&[0x16, 0x90]).unwrap_err(),
            AacError::SampleRateIndex(13)
        );
        let e = asc(&[0x02, 0x10]).unwrap_err();
        assert_eq!(e, AacError::ObjectType(0));
        assert_eq!(
            e.to_string(),
            "AudioSpecificConfig: audio object type 0 is not AAC"
        );
    }

    #[test]
    fn random_configs_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..50_000 {
            let n = rng.random_range(0..12);
            let v: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            let _ = parse_asc(Bytes::from(v));
        }
    }

    fn pack(bits: &str) -> Vec<u8> {
        let bits: Vec<u8> = bits.bytes().map(|b| b - b'0').collect();
        bits.chunks(8)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u8, |acc, (i, b)| acc | (b << (7 - i)))
            })
            .collect()
    }
}
