//! Safe handles over libopus for the audio bridge: one encoder, one decoder, packet queries.
//!
//! The codec is `unsafe-libopus`: libopus 1.3.1 translated to Rust by c2rust, so the build needs
//! no cmake and no C toolchain for Opus (docs/ARCHITECTURE.md, "Audio bridge"). Its API is the C
//! API (raw pointers, `opus_*_ctl` requests); this module owns those pointers and exposes only
//! what the bridge uses, with lengths checked here so a bad packet is an error, never UB.

use std::fmt;

use unsafe_libopus as unsafe_ffi;

/// A libopus error code with libopus's own text for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error(pub i32);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(unsafe_ffi::opus_strerror(self.0))
    }
}

impl std::error::Error for Error {}

/// The empty argument list of a ctl request that takes none (the crate's macro for this case
/// does not expand outside the crate).
fn no_args() -> unsafe_ffi::varargs::VarArgs<'static> {
    unsafe_ffi::varargs::VarArgs(Vec::new())
}

fn check(code: i32) -> Result<usize, Error> {
    if code < 0 {
        Err(Error(code))
    } else {
        Ok(code as usize)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    Mono = 1,
    Stereo = 2,
}

/// The only application the bridge uses: full-band music/speech (not VoIP tuning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Application {
    Audio,
}

pub struct Encoder {
    st: *mut unsafe_ffi::OpusEncoder,
    channels: usize,
}

// SAFETY: the encoder state is a plain heap block with no thread affinity; `&mut self` on every
// call that touches it serialises access.
unsafe impl Send for Encoder {}

impl Encoder {
    pub fn new(rate: u32, channels: Channels, app: Application) -> Result<Self, Error> {
        let app = match app {
            Application::Audio => unsafe_ffi::OPUS_APPLICATION_AUDIO,
        };
        let mut err = 0;
        // SAFETY: arguments are validated by libopus; a null return comes with an error code.
        let st =
            unsafe { unsafe_ffi::opus_encoder_create(rate as i32, channels as i32, app, &mut err) };
        if st.is_null() || err != unsafe_ffi::OPUS_OK {
            return Err(Error(if err == 0 { -7 } else { err }));
        }
        Ok(Encoder {
            st,
            channels: channels as usize,
        })
    }

    fn ctl(&mut self, request: i32, value: i32) -> Result<(), Error> {
        // SAFETY: `st` is live; these requests take one i32 by value.
        check(unsafe { unsafe_ffi::opus_encoder_ctl!(self.st, request, value) }).map(drop)
    }

    pub fn set_bitrate(&mut self, bits_per_second: i32) -> Result<(), Error> {
        self.ctl(unsafe_ffi::OPUS_SET_BITRATE_REQUEST, bits_per_second)
    }

    pub fn set_complexity(&mut self, complexity: i32) -> Result<(), Error> {
        self.ctl(unsafe_ffi::OPUS_SET_COMPLEXITY_REQUEST, complexity)
    }

    pub fn reset_state(&mut self) -> Result<(), Error> {
        // SAFETY: `st` is live; OPUS_RESET_STATE takes no argument.
        check(unsafe {
            unsafe_ffi::opus_encoder_ctl_impl(self.st, unsafe_ffi::OPUS_RESET_STATE, no_args())
        })
        .map(drop)
    }

    /// Samples per channel in `pcm` and the room in `out`, as libopus takes them.
    fn sizes(&self, samples: usize, out: &[u8]) -> Result<(i32, i32), Error> {
        if !samples.is_multiple_of(self.channels) || out.is_empty() {
            return Err(Error(unsafe_ffi::OPUS_BAD_ARG));
        }
        let frame = (samples / self.channels).min(i32::MAX as usize) as i32;
        Ok((frame, out.len().min(i32::MAX as usize) as i32))
    }

    /// As [`Encoder::encode_float`], for 16-bit samples.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, Error> {
        let (frame, cap) = self.sizes(pcm.len(), out)?;
        // SAFETY: `pcm` holds `frame * channels` samples and `out` `cap` bytes.
        check(unsafe {
            unsafe_ffi::opus_encode(self.st, pcm.as_ptr(), frame, out.as_mut_ptr(), cap)
        })
    }

    /// Encode one frame of interleaved samples (2.5–60 ms at 48 kHz) into `out`; returns its size.
    pub fn encode_float(&mut self, pcm: &[f32], out: &mut [u8]) -> Result<usize, Error> {
        let (frame, cap) = self.sizes(pcm.len(), out)?;
        // SAFETY: `pcm` holds `frame * channels` samples and `out` `cap` bytes.
        check(unsafe {
            unsafe_ffi::opus_encode_float(self.st, pcm.as_ptr(), frame, out.as_mut_ptr(), cap)
        })
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create, destroyed once.
        unsafe { unsafe_ffi::opus_encoder_destroy(self.st) }
    }
}

pub struct Decoder {
    st: *mut unsafe_ffi::OpusDecoder,
    channels: usize,
}

// SAFETY: as for `Encoder`.
unsafe impl Send for Decoder {}

impl Decoder {
    pub fn new(rate: u32, channels: Channels) -> Result<Self, Error> {
        let mut err = 0;
        // SAFETY: arguments are validated by libopus; a null return comes with an error code.
        let st = unsafe { unsafe_ffi::opus_decoder_create(rate as i32, channels as i32, &mut err) };
        if st.is_null() || err != unsafe_ffi::OPUS_OK {
            return Err(Error(if err == 0 { -7 } else { err }));
        }
        Ok(Decoder {
            st,
            channels: channels as usize,
        })
    }

    /// Decode `packet` into interleaved `out` (sized for the samples wanted); an empty packet asks
    /// for concealment (PLC), `fec` decodes the in-band redundancy of the packet before this one.
    /// Returns the samples per channel written.
    pub fn decode_float(
        &mut self,
        packet: &[u8],
        out: &mut [f32],
        fec: bool,
    ) -> Result<usize, Error> {
        let frame = (out.len() / self.channels).min(i32::MAX as usize) as i32;
        if frame == 0 || packet.len() > i32::MAX as usize {
            return Err(Error(unsafe_ffi::OPUS_BAD_ARG));
        }
        let data = if packet.is_empty() {
            std::ptr::null()
        } else {
            packet.as_ptr()
        };
        // SAFETY: `data` is null (PLC) or `packet.len()` bytes; `out` holds `frame * channels`.
        check(unsafe {
            unsafe_ffi::opus_decode_float(
                self.st,
                data,
                packet.len() as i32,
                out.as_mut_ptr(),
                frame,
                i32::from(fec),
            )
        })
    }

    pub fn reset_state(&mut self) -> Result<(), Error> {
        // SAFETY: `st` is live; OPUS_RESET_STATE takes no argument.
        check(unsafe {
            unsafe_ffi::opus_decoder_ctl_impl(self.st, unsafe_ffi::OPUS_RESET_STATE, no_args())
        })
        .map(drop)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create, destroyed once.
        unsafe { unsafe_ffi::opus_decoder_destroy(self.st) }
    }
}

/// Queries on an Opus packet's TOC, without decoding.
pub mod packet {
    use super::{check, unsafe_ffi, Error};

    /// Samples per channel the packet decodes to at `rate`.
    pub fn get_nb_samples(packet: &[u8], rate: u32) -> Result<usize, Error> {
        if packet.is_empty() || packet.len() > i32::MAX as usize {
            return Err(Error(unsafe_ffi::OPUS_BAD_ARG));
        }
        // SAFETY: reads at most `packet.len()` bytes.
        check(unsafe {
            unsafe_ffi::opus_packet_get_nb_samples(
                packet.as_ptr(),
                packet.len() as i32,
                rate as i32,
            )
        })
    }

    pub fn get_nb_channels(packet: &[u8]) -> Result<usize, Error> {
        if packet.is_empty() {
            return Err(Error(unsafe_ffi::OPUS_BAD_ARG));
        }
        // SAFETY: reads the first byte only, which exists.
        check(unsafe { unsafe_ffi::opus_packet_get_nb_channels(packet.as_ptr()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_a_tone() {
        let mut enc = Encoder::new(48_000, Channels::Stereo, Application::Audio).unwrap();
        enc.set_bitrate(96_000).unwrap();
        enc.set_complexity(10).unwrap();
        let mut dec = Decoder::new(48_000, Channels::Stereo).unwrap();
        let mut pkt = vec![0u8; 4000];
        let mut out = vec![0f32; 960 * 2];
        let mut energy = 0.0f32;
        for i in 0..50 {
            let pcm: Vec<f32> = (0..960)
                .flat_map(|n| {
                    let t = (i * 960 + n) as f32 / 48_000.0;
                    let s = (t * 440.0 * std::f32::consts::TAU).sin() * 0.5;
                    [s, s]
                })
                .collect();
            let n = enc.encode_float(&pcm, &mut pkt).unwrap();
            assert_eq!(packet::get_nb_samples(&pkt[..n], 48_000).unwrap(), 960);
            assert_eq!(packet::get_nb_channels(&pkt[..n]).unwrap(), 2);
            assert_eq!(dec.decode_float(&pkt[..n], &mut out, false).unwrap(), 960);
            if i > 10 {
                energy += out.iter().map(|s| s * s).sum::<f32>();
            }
        }
        // A 0.5-amplitude sine carries 0.125 mean power per sample.
        let mean = energy / (39.0 * 1920.0);
        assert!((0.09..0.16).contains(&mean), "decoded power {mean}");
        // Concealment of a lost packet and garbage input are values, not crashes.
        assert_eq!(dec.decode_float(&[], &mut out, false).unwrap(), 960);
        assert!(packet::get_nb_samples(&[], 48_000).is_err());
        let _ = dec.decode_float(&[0xff; 3], &mut out, false);
    }
}
