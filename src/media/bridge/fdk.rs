//! A small safe wrapper over the fdk-aac *decoder* (`fdk-aac-sys`).
//!
//! The `fdk-aac` crate's own decoder wrapper cannot set parameters beyond the channel counts, and
//! fdk's defaults cost a live relay latency: the PCM limiter adds a 15 ms look-ahead (and changes
//! levels). Here the limiter is off, the decoder's remaining output delay is reported so the
//! caller can trim it, and a frame that fails is reported without leaving state behind.
//! The encoder side uses the `fdk-aac` crate as is.

use fdk_aac_sys as sys;

pub(crate) struct AacDecoder {
    handle: sys::HANDLE_AACDECODER,
}

// SAFETY: the handle is owned exclusively by this value and fdk keeps no thread-local state;
// moving it to another thread between calls is fine (the `fdk-aac` crate does the same).
unsafe impl Send for AacDecoder {}

/// What one decoded access unit produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub rate: u32,
    pub channels: usize,
    /// Samples per channel in the output buffer.
    pub samples: usize,
    /// Samples per channel by which the decoder's output lags its input.
    pub delay: usize,
}

impl AacDecoder {
    /// A decoder for raw access units described by `asc`, delivering `channels` (1 or 2)
    /// channels (fdk downmixes surround and upmixes mono itself).
    pub(crate) fn open(asc: &[u8], channels: u8) -> Result<Self, String> {
        // SAFETY: plain constructor; a null handle is checked below.
        let handle = unsafe { sys::aacDecoder_Open(sys::TRANSPORT_TYPE_TT_MP4_RAW, 1) };
        if handle.is_null() {
            return Err("aacDecoder_Open failed".into());
        }
        let d = AacDecoder { handle };
        let mut ptr = asc.as_ptr() as *mut u8;
        let len = asc.len() as u32;
        // SAFETY: fdk reads `len` bytes from `ptr` (it does not write through it) and copies them.
        let e = unsafe { sys::aacDecoder_ConfigRaw(d.handle, &mut ptr, &len) };
        if e != sys::AAC_DECODER_ERROR_AAC_DEC_OK {
            return Err(format!("AudioSpecificConfig refused (fdk error {e:#x})"));
        }
        for (param, value) in [
            (sys::AACDEC_PARAM_AAC_PCM_LIMITER_ENABLE, 0),
            (
                sys::AACDEC_PARAM_AAC_PCM_MAX_OUTPUT_CHANNELS,
                i32::from(channels),
            ),
            (
                sys::AACDEC_PARAM_AAC_PCM_MIN_OUTPUT_CHANNELS,
                i32::from(channels),
            ),
        ] {
            // SAFETY: valid handle; unknown values are refused by fdk with an error code. A
            // refusal is not fatal (the caller remixes whatever layout comes out).
            let _ = unsafe { sys::aacDecoder_SetParam(d.handle, param, value) };
        }
        Ok(d)
    }

    /// Decode one raw access unit into `pcm` (interleaved i16).
    pub(crate) fn decode(&mut self, au: &[u8], pcm: &mut [i16]) -> Result<Decoded, String> {
        let mut ptr = au.as_ptr() as *mut u8;
        let len = au.len() as u32;
        let mut valid = len;
        // SAFETY: fdk copies up to `len` bytes from `ptr` into its own buffer and updates `valid`
        // to what it did not take.
        let e = unsafe { sys::aacDecoder_Fill(self.handle, &mut ptr, &len, &mut valid) };
        if e != sys::AAC_DECODER_ERROR_AAC_DEC_OK || valid != 0 {
            return Err(format!("fill: fdk error {e:#x}, {valid} bytes not taken"));
        }
        // SAFETY: fdk writes at most `pcm.len()` samples into `pcm`.
        let e = unsafe {
            sys::aacDecoder_DecodeFrame(self.handle, pcm.as_mut_ptr(), pcm.len() as i32, 0)
        };
        if e != sys::AAC_DECODER_ERROR_AAC_DEC_OK {
            return Err(format!("decode: fdk error {e:#x}"));
        }
        // SAFETY: the stream info lives as long as the handle; we copy the fields out.
        let info = unsafe { &*sys::aacDecoder_GetStreamInfo(self.handle) };
        let (rate, channels, samples) = (info.sampleRate, info.numChannels, info.frameSize);
        if rate <= 0 || channels <= 0 || samples <= 0 || (channels * samples) as usize > pcm.len() {
            return Err(format!(
                "decoder reported {channels} channels × {samples} samples at {rate} Hz"
            ));
        }
        Ok(Decoded {
            rate: rate as u32,
            channels: channels as usize,
            samples: samples as usize,
            delay: info.outputDelay as usize,
        })
    }
}

impl Drop for AacDecoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from aacDecoder_Open and is closed once.
        unsafe { sys::aacDecoder_Close(self.handle) }
    }
}
