//! Fixed-ratio resampling (rubato's FFT resampler) over interleaved f32, pushed in any sizes.
//!
//! The resampler works on fixed chunks of about 10 ms; its filter delay is trimmed from the start
//! of the output so that output sample n lines up with input sample n / ratio, and `finish`
//! pushes the remainder through so that exactly `input × ratio` samples come out in total.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use super::BridgeError;

pub(crate) struct Resample {
    inner: Fft<f32>,
    channels: usize,
    in_rate: u32,
    out_rate: u32,
    chunk_in: usize,
    /// Interleaved input not yet resampled (less than one chunk after each push).
    pending: Vec<f32>,
    /// Scratch for one output chunk.
    scratch: Vec<f32>,
    /// Output frames still to drop (the filter delay).
    trim: usize,
    total_in: u64,
    total_out: u64,
}

impl Resample {
    pub(crate) fn new(in_rate: u32, out_rate: u32, channels: usize) -> Result<Self, BridgeError> {
        let gcd = gcd(in_rate, out_rate);
        // Fixed-ratio FFT sizes are multiples of in_rate / gcd: refuse rates whose smallest chunk
        // is longer than 100 ms (odd explicit rates in an AudioSpecificConfig), which would cost
        // latency and memory.
        if !(1..=192_000).contains(&in_rate)
            || !(1..=192_000).contains(&out_rate)
            || in_rate / gcd > in_rate / 10
        {
            return Err(BridgeError::Unsupported(format!(
                "resampling {in_rate} Hz to {out_rate} Hz"
            )));
        }
        let chunk = (in_rate / 100).max(1) as usize;
        let inner = Fft::<f32>::new(
            in_rate as usize,
            out_rate as usize,
            chunk,
            channels,
            FixedSync::Both,
        )
        .map_err(|e| BridgeError::Unsupported(format!("resampler: {e}")))?;
        let chunk_in = inner.input_frames_next();
        let scratch = vec![0.0; inner.output_frames_max() * channels];
        let trim = inner.output_delay();
        Ok(Resample {
            inner,
            channels,
            in_rate,
            out_rate,
            chunk_in,
            pending: Vec::with_capacity(chunk_in * channels * 2),
            scratch,
            trim,
            total_in: 0,
            total_out: 0,
        })
    }

    pub(crate) fn in_rate(&self) -> u32 {
        self.in_rate
    }

    /// Resample interleaved `input`, appending whatever is complete to `out`.
    pub(crate) fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.total_in += (input.len() / self.channels) as u64;
        self.pending.extend_from_slice(input);
        let step = self.chunk_in * self.channels;
        let mut start = 0;
        while self.pending.len() - start >= step {
            self.run(start, None, out);
            start += step;
        }
        self.pending.drain(..start);
    }

    /// Push the remaining input through (padded with silence), append exactly the output that
    /// belongs to the input, and start over.
    pub(crate) fn finish(&mut self, out: &mut Vec<f32>) {
        let expected =
            (self.total_in as u128 * self.out_rate as u128).div_ceil(self.in_rate as u128) as u64;
        let mut rounds = 0;
        while self.total_out < expected && rounds < 64 {
            let have = self.pending.len() / self.channels;
            self.pending.resize(self.chunk_in * self.channels, 0.0);
            let before = out.len();
            self.run(0, Some(have.min(self.chunk_in)), out);
            self.pending.clear();
            let over = self.total_out.saturating_sub(expected) as usize;
            out.truncate(out.len() - (over * self.channels).min(out.len() - before));
            rounds += 1;
        }
        self.reset();
    }

    /// Drop everything buffered and start over.
    pub(crate) fn reset(&mut self) {
        self.inner.reset();
        self.pending.clear();
        self.trim = self.inner.output_delay();
        self.total_in = 0;
        self.total_out = 0;
    }

    fn run(&mut self, start: usize, partial: Option<usize>, out: &mut Vec<f32>) {
        let ch = self.channels;
        let frames_out = self.inner.output_frames_next();
        let input = &self.pending[start..start + self.chunk_in * ch];
        let (Ok(input), Ok(mut output)) = (
            InterleavedSlice::new(input, ch, self.chunk_in),
            InterleavedSlice::new_mut(&mut self.scratch[..frames_out * ch], ch, frames_out),
        ) else {
            return;
        };
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        let Ok((_, produced)) =
            self.inner
                .process_into_buffer(&input, &mut output, indexing.as_ref())
        else {
            return;
        };
        let skip = self.trim.min(produced);
        self.trim -= skip;
        out.extend_from_slice(&self.scratch[skip * ch..produced * ch]);
        self.total_out += (produced - skip) as u64;
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    #[test]
    fn lengths_and_alignment() {
        let mut r = Resample::new(44_100, 48_000, 1).unwrap();
        let input = sine(44_100, 440.0, 44_100);
        let mut out = Vec::new();
        for c in input.chunks(1024) {
            r.push(c, &mut out);
        }
        r.finish(&mut out);
        assert_eq!(out.len(), 48_000);
        // Same phase as a 440 Hz sine generated at 48 kHz (delay trimmed): compare mid-signal.
        let want = sine(48_000, 440.0, 48_000);
        let err: f32 = (10_000..38_000)
            .map(|i| (out[i] - want[i]).abs())
            .fold(0.0, f32::max);
        // Within a sample (a one-sample shift of this sine is an error of 0.029).
        assert!(err < 0.02, "max error {err}");
    }

    #[test]
    fn stereo_and_reset() {
        let mut r = Resample::new(32_000, 48_000, 2).unwrap();
        let mut out = Vec::new();
        r.push(&vec![0.25; 2 * 3200], &mut out);
        assert!(out.len() % 2 == 0 && out.len() <= 2 * 4800);
        r.finish(&mut out);
        assert_eq!(out.len(), 2 * 4800);
        out.clear();
        r.push(&vec![0.25; 2 * 320], &mut out);
        r.finish(&mut out);
        assert_eq!(out.len(), 2 * 480);
    }

    #[test]
    fn odd_rates_refused() {
        assert!(Resample::new(44_101, 48_000, 2).is_err());
        assert!(Resample::new(16_777_215, 48_000, 2).is_err());
        assert!(Resample::new(7_350, 48_000, 2).is_ok());
        assert!(Resample::new(11_025, 48_000, 2).is_ok());
        assert!(Resample::new(88_200, 48_000, 2).is_ok());
    }
}
