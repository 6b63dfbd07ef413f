//! Sample-counted timelines for the bridge: where the next input frame should start, what to do
//! when it does not, and the exact 90 kHz time of each output frame.
//!
//! Input side: `in_anchor` (ticks) + decoded samples / input rate = where the next input frame
//! should be. Output side: `out_anchor` + produced samples / output rate. Both are reset together
//! on a discontinuity; the output anchor never goes below the end of the last emitted frame, so
//! output times are monotonic whatever the input does.

use std::time::{Duration, SystemTime};

use crate::media::frame::CLOCK_HZ;

use super::MAX_FILL_MS;

/// What to do with the next input frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// First frame after a reset: anchor on it.
    Start,
    /// Where expected (within half a frame).
    InSync,
    /// It starts this many input samples (per channel) late: fill them first.
    Fill(usize),
    /// It starts this many input samples early: drop that many of its first samples.
    Trim(usize),
    /// Too far off: flush, then anchor on it.
    Jump,
}

#[derive(Debug)]
pub(crate) struct Timeline {
    in_anchor: Option<i64>,
    in_samples: u64,
    in_rate: u32,
    out_anchor: i64,
    out_samples: u64,
    out_rate: u32,
    /// End of the last emitted output frame: the lowest time the next one may have.
    floor: Option<i64>,
    /// The latest input frame's (pts, wall clock), to stamp output frames' wall clocks.
    wall: Option<(i64, SystemTime)>,
}

fn samples_to_ticks(samples: u64, rate: u32) -> i64 {
    (u128::from(samples) * CLOCK_HZ as u128 / u128::from(rate.max(1))) as i64
}

fn ticks_to_samples(ticks: i64, rate: u32) -> usize {
    ((ticks.unsigned_abs() as u128 * u128::from(rate) + CLOCK_HZ as u128 / 2) / CLOCK_HZ as u128)
        as usize
}

impl Timeline {
    pub(crate) fn new(in_rate: u32, out_rate: u32) -> Self {
        Timeline {
            in_anchor: None,
            in_samples: 0,
            in_rate,
            out_anchor: 0,
            out_samples: 0,
            out_rate,
            floor: None,
            wall: None,
        }
    }

    pub(crate) fn in_rate(&self) -> u32 {
        self.in_rate
    }

    /// Where the next input frame should start, if anchored.
    pub(crate) fn expected_in(&self) -> Option<i64> {
        self.in_anchor
            .map(|a| a.saturating_add(samples_to_ticks(self.in_samples, self.in_rate)))
    }

    /// Classify an input frame starting at `pts` that is about `frame_ticks` long.
    pub(crate) fn classify(&self, pts: i64, frame_ticks: i64) -> Step {
        let Some(expected) = self.expected_in() else {
            return Step::Start;
        };
        let d = pts.saturating_sub(expected);
        let tolerance = (frame_ticks / 2).max(CLOCK_HZ / 1000).unsigned_abs();
        let max = (MAX_FILL_MS * (CLOCK_HZ / 1000)).unsigned_abs();
        if d.unsigned_abs() <= tolerance {
            Step::InSync
        } else if d.unsigned_abs() > max {
            Step::Jump
        } else if d > 0 {
            Step::Fill(ticks_to_samples(d, self.in_rate))
        } else {
            Step::Trim(ticks_to_samples(d, self.in_rate))
        }
    }

    /// Anchor both sides on an input frame at `pts` (after `Start` or `Jump`).
    pub(crate) fn anchor(&mut self, pts: i64) {
        self.in_anchor = Some(pts);
        self.in_samples = 0;
        self.out_anchor = self.floor.map_or(pts, |f| f.max(pts));
        self.out_samples = 0;
    }

    /// Forget the anchors: the next frame is a `Start`. Monotonic output is kept.
    pub(crate) fn unanchor(&mut self) {
        self.in_anchor = None;
    }

    pub(crate) fn is_anchored(&self) -> bool {
        self.in_anchor.is_some()
    }

    /// `samples` input samples (per channel) were consumed (decoded or filled).
    pub(crate) fn advance_in(&mut self, samples: usize) {
        self.in_samples += samples as u64;
    }

    /// The input rate changed (e.g. implicit SBR found by the decoder): fold the samples counted
    /// so far into the anchor so the expected time stays right.
    pub(crate) fn set_in_rate(&mut self, rate: u32) {
        if rate == self.in_rate || rate == 0 {
            return;
        }
        if let Some(a) = self.in_anchor.as_mut() {
            *a = a.saturating_add(samples_to_ticks(self.in_samples, self.in_rate));
        }
        self.in_samples = 0;
        self.in_rate = rate;
    }

    /// Remember the latest input frame's times (for output wall clocks).
    pub(crate) fn note_input(&mut self, pts: i64, wallclock: SystemTime) {
        self.wall = Some((pts, wallclock));
    }

    /// The time of the output sample `offset` samples after those produced so far (may be
    /// negative to account for codec delay).
    pub(crate) fn out_time(&self, offset: i64) -> i64 {
        let n = self.out_samples as i64 + offset;
        let t = if n >= 0 {
            samples_to_ticks(n as u64, self.out_rate)
        } else {
            -samples_to_ticks(n.unsigned_abs(), self.out_rate)
        };
        self.out_anchor.saturating_add(t)
    }

    /// Time of the first output sample since the last anchor.
    pub(crate) fn out_anchor(&self) -> i64 {
        self.out_anchor
    }

    /// Lowest time the next output frame may have.
    pub(crate) fn floor(&self) -> Option<i64> {
        self.floor
    }

    /// `samples` output samples were produced; a frame ending at `end` was emitted (or `None`
    /// when the samples were dropped).
    pub(crate) fn advance_out(&mut self, samples: usize, end: Option<i64>) {
        self.out_samples += samples as u64;
        if let Some(end) = end {
            self.floor = Some(self.floor.map_or(end, |f| f.max(end)));
        }
    }

    /// Wall clock for an output frame at `pts`: the latest input's wall clock, shifted.
    pub(crate) fn wallclock(&self, pts: i64) -> SystemTime {
        let Some((in_pts, wall)) = self.wall else {
            return SystemTime::UNIX_EPOCH;
        };
        let d = pts.saturating_sub(in_pts);
        let dur = Duration::from_micros((d.unsigned_abs() as u128 * 1_000_000 / 90_000) as u64);
        if d >= 0 {
            wall.checked_add(dur).unwrap_or(wall)
        } else {
            wall.checked_sub(dur).unwrap_or(wall)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_jitter_gaps_overlaps_and_jumps() {
        let mut t = Timeline::new(48_000, 48_000);
        assert_eq!(t.classify(1000, 1920), Step::Start);
        t.anchor(1000);
        t.advance_in(1024);
        // 1024 samples at 48 kHz = 1920 ticks.
        assert_eq!(t.expected_in(), Some(2920));
        assert_eq!(t.classify(2920, 1920), Step::InSync);
        assert_eq!(t.classify(2920 + 90, 1920), Step::InSync); // 1 ms (RTMP rounding)
        assert_eq!(t.classify(2920 + 1920, 1920), Step::Fill(1024)); // one frame lost
        assert_eq!(t.classify(2920 - 1920, 1920), Step::Trim(1024));
        assert_eq!(t.classify(2920 + 2 * 90_000, 1920), Step::Jump);
        assert_eq!(t.classify(2920 - 2 * 90_000, 1920), Step::Jump);
        assert_eq!(t.classify(i64::MIN, 1920), Step::Jump);
        assert_eq!(t.classify(i64::MAX, 1920), Step::Jump);
    }

    #[test]
    fn output_is_exact_and_monotonic() {
        let mut t = Timeline::new(44_100, 48_000);
        t.anchor(90_000);
        assert_eq!(t.out_time(0), 90_000);
        for k in 0..100u64 {
            assert_eq!(t.out_time(0), 90_000 + k as i64 * 1800);
            let end = t.out_time(960);
            t.advance_out(960, Some(end));
        }
        // A restart whose time went backwards does not move the output backwards.
        let floor = t.floor().unwrap();
        assert_eq!(floor, 90_000 + 100 * 1800);
        t.anchor(0);
        assert_eq!(t.out_time(0), floor);
        // Forward restarts follow the input (lip sync with video).
        t.anchor(floor + 900_000);
        assert_eq!(t.out_time(0), floor + 900_000);
        assert_eq!(t.out_time(-960), floor + 900_000 - 1800);
    }

    #[test]
    fn rate_change_keeps_the_expected_time() {
        let mut t = Timeline::new(24_000, 48_000);
        t.anchor(0);
        t.advance_in(1024); // 1024 at 24 kHz = 3840 ticks
        t.set_in_rate(48_000);
        assert_eq!(t.expected_in(), Some(3840));
        t.advance_in(2048);
        assert_eq!(t.expected_in(), Some(3840 + 3840));
    }

    #[test]
    fn wallclock_follows_input() {
        let mut t = Timeline::new(48_000, 48_000);
        let w = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        t.note_input(90_000, w);
        assert_eq!(t.wallclock(180_000), w + Duration::from_secs(1));
        assert_eq!(t.wallclock(45_000), w - Duration::from_millis(500));
    }
}
