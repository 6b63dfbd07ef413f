//! Sans-IO LL-HLS segmenter for one stream: media events in, fMP4 parts and segment boundaries
//! out. A part closes before the frame that would take it past the part target, and always before
//! a video keyframe (so every keyframe starts an independent part); a segment closes at the first
//! keyframe at or after the segment target. Audio-only streams are cut on audio time.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::cmaf::{self, Sample, TrackFragment, AUDIO_TRACK_ID, VIDEO_TRACK_ID};
use crate::media::{Frame, MediaEvent, TrackKind, TrackSet, CLOCK_HZ};

/// What the segmenter produces, in order.
#[derive(Clone, Debug)]
pub enum Output {
    /// A new initialization segment; later parts refer to it.
    Init { version: u32, data: Bytes },
    /// A complete part. `segment_start` marks the first part of a new segment.
    Part(PartOut),
    /// The segment the last part belongs to is complete.
    SegmentEnd,
    /// The publisher left; the current segment (if any) has been closed.
    Idle,
    /// The stream was removed.
    Ended,
}

#[derive(Clone, Debug)]
pub struct PartOut {
    pub data: Bytes,
    /// Seconds.
    pub duration: f64,
    pub independent: bool,
    pub segment_start: bool,
    /// The segment this part starts follows a discontinuity (new publisher session / codecs).
    pub discontinuity: bool,
    pub init_version: u32,
    /// Wall clock at ingest of the part's first frame.
    pub wallclock: SystemTime,
}

#[derive(Clone, Copy, Debug)]
pub struct SegmenterConfig {
    /// The longest a part may be, in ticks: the configured target plus a small tolerance,
    /// because RTMP's millisecond timestamps make 30 fps frames 33 or 34 ms long and six of
    /// them may add up to 201 ms. This is what the playlist advertises as PART-TARGET.
    pub part_target: i64,
    pub segment_target: i64,
}

impl SegmenterConfig {
    pub fn from_ms(part_ms: u64, segment_ms: u64) -> Self {
        let tolerance_ms = (part_ms / 50).max(2);
        Self {
            part_target: (part_ms + tolerance_ms) as i64 * CLOCK_HZ / 1000,
            segment_target: segment_ms as i64 * CLOCK_HZ / 1000,
        }
    }

    /// PART-TARGET as written in the playlist, in seconds.
    pub fn part_target_secs(&self) -> f64 {
        self.part_target as f64 / CLOCK_HZ as f64
    }
}

pub struct Segmenter {
    cfg: SegmenterConfig,
    tracks: Option<Arc<TrackSet>>,
    init: Option<Bytes>,
    init_version: u32,
    /// Waiting for a keyframe to start (after start, a discontinuity or an error).
    need_keyframe: bool,
    pending_video: Option<Arc<Frame>>,
    last_video_duration: i64,
    video: Vec<Sample>,
    video_base: Option<i64>,
    video_dur: i64,
    audio: Vec<Sample>,
    audio_base: Option<u64>,
    /// Next audio decode time, in audio samples (sample-accurate, resynced on drift).
    audio_next: Option<u64>,
    audio_rate: u32,
    audio_frame: u32,
    /// Stream-clock time where the open part and segment started.
    part_start: Option<i64>,
    part_wallclock: Option<SystemTime>,
    part_independent: bool,
    segment_start: Option<i64>,
    /// The next part emitted starts a segment.
    next_starts_segment: bool,
    next_discontinuity: bool,
    /// At least one part was emitted in the open segment.
    segment_open: bool,
    sequence: u32,
    errors: u64,
}

impl Segmenter {
    pub fn new(cfg: SegmenterConfig) -> Self {
        Self {
            cfg,
            tracks: None,
            init: None,
            init_version: 0,
            need_keyframe: true,
            pending_video: None,
            last_video_duration: CLOCK_HZ / 30,
            video: Vec::new(),
            video_base: None,
            video_dur: 0,
            audio: Vec::new(),
            audio_base: None,
            audio_next: None,
            audio_rate: 48_000,
            audio_frame: 1024,
            part_start: None,
            part_wallclock: None,
            part_independent: false,
            segment_start: None,
            next_starts_segment: true,
            next_discontinuity: false,
            segment_open: false,
            sequence: 0,
            errors: 0,
        }
    }

    /// fMP4 errors seen (a frame or part that could not be written).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    pub fn handle(&mut self, ev: &MediaEvent, out: &mut Vec<Output>) {
        match ev {
            MediaEvent::Tracks(t) => self.on_tracks(t.clone(), out),
            MediaEvent::Frame(f) => self.on_frame(f, out),
            MediaEvent::Idle => {
                self.close_all(out);
                out.push(Output::Idle);
            }
            MediaEvent::Ended => {
                self.close_all(out);
                out.push(Output::Ended);
            }
            // One rendition: lower simulcast layers are for WebRTC viewers only.
            MediaEvent::Layer(_) => {}
        }
    }

    fn has_video(&self) -> bool {
        self.tracks.as_ref().is_some_and(|t| t.video.is_some())
    }

    fn on_tracks(&mut self, t: Arc<TrackSet>, out: &mut Vec<Output>) {
        if self.tracks.as_deref() == Some(&*t) {
            return;
        }
        let first = self.tracks.is_none();
        self.close_all(out);
        match cmaf::init_segment(&t) {
            Ok(init) => {
                if self.init.as_ref() != Some(&init) {
                    self.init_version += 1;
                    self.init = Some(init.clone());
                    out.push(Output::Init {
                        version: self.init_version,
                        data: init,
                    });
                }
            }
            Err(e) => {
                self.errors += 1;
                tracing::error!(
                    side = "egress",
                    path = "hls",
                    "cannot write init segment: {e}"
                );
                self.init = None;
            }
        }
        if let Some(crate::media::Codec::Aac(a)) = &t.audio {
            self.audio_rate = a.sample_rate.max(1);
            self.audio_frame = a.samples_per_frame();
        } else if let Some(crate::media::Codec::Opus(o)) = &t.audio {
            self.audio_rate = o.sample_rate.max(1);
            self.audio_frame = 960;
        }
        self.audio_next = None;
        self.tracks = Some(t);
        self.need_keyframe = true;
        self.next_starts_segment = true;
        self.next_discontinuity = !first;
    }

    fn on_frame(&mut self, f: &Arc<Frame>, out: &mut Vec<Output>) {
        if self.init.is_none() {
            return;
        }
        let has_video = self.has_video();
        match f.kind {
            TrackKind::Video => {
                if !has_video {
                    return;
                }
                if self.need_keyframe {
                    if !f.keyframe {
                        return;
                    }
                    self.need_keyframe = false;
                }
                if let Some(p) = self.pending_video.take() {
                    let mut d = f.dts - p.dts;
                    if d <= 0 || d > 10 * CLOCK_HZ {
                        d = self.last_video_duration;
                    }
                    self.last_video_duration = d;
                    self.add_video(&p, d);
                    // Close before `f` if it is a keyframe or would overflow the part.
                    if f.keyframe || self.video_dur + d > self.cfg.part_target {
                        let seg_len = self.segment_start.map_or(0, |s| f.dts - s);
                        let end_segment = f.keyframe && seg_len + d / 2 >= self.cfg.segment_target;
                        self.emit_part(out);
                        if end_segment {
                            self.end_segment(out);
                        }
                    }
                }
                self.pending_video = Some(f.clone());
            }
            TrackKind::Audio => {
                if has_video && (self.need_keyframe || self.part_start.is_none()) {
                    // Parts start on video; audio before the first keyframe is dropped.
                    if self.pending_video.is_none() {
                        return;
                    }
                }
                self.add_audio(f);
                if !has_video {
                    let dur = self.audio_dur_ticks();
                    let frame = self.audio_frame as i64 * CLOCK_HZ / self.audio_rate as i64;
                    if dur + frame > self.cfg.part_target {
                        let seg_len = self.segment_start.map_or(0, |s| f.dts + frame - s);
                        self.emit_part(out);
                        if seg_len + frame > self.cfg.segment_target {
                            self.end_segment(out);
                        }
                    }
                }
            }
        }
    }

    fn audio_dur_ticks(&self) -> i64 {
        self.audio.iter().map(|s| s.duration as i64).sum::<i64>() * CLOCK_HZ
            / self.audio_rate as i64
    }

    fn mark_part_start(&mut self, dts: i64, wallclock: SystemTime, independent: bool) {
        if self.part_start.is_none() {
            self.part_start = Some(dts);
            self.part_wallclock = Some(wallclock);
            self.part_independent = independent;
            if self.next_starts_segment {
                self.segment_start = Some(dts);
            }
        }
    }

    fn add_video(&mut self, f: &Frame, duration: i64) {
        self.mark_part_start(f.dts, f.wallclock, f.keyframe);
        if self.video_base.is_none() {
            self.video_base = Some(f.dts);
        }
        self.video.push(Sample {
            duration: duration as u32,
            cts: f.cts().clamp(0, i32::MAX as i64) as i32,
            keyframe: f.keyframe,
            data: f.data.clone(),
        });
        self.video_dur += duration;
    }

    fn add_audio(&mut self, f: &Frame) {
        let rate = self.audio_rate as i64;
        let actual = (f.dts.max(0) as i128 * rate as i128 / CLOCK_HZ as i128) as u64;
        let next = match self.audio_next {
            Some(n) if (n as i64 - actual as i64).abs() <= self.audio_frame as i64 => n,
            _ => actual,
        };
        if !self.has_video() {
            self.mark_part_start(f.dts, f.wallclock, true);
        }
        match self.audio_base {
            None => self.audio_base = Some(next),
            Some(base) => {
                // A gap or overlap in the audio: keep the run contiguous by stretching (or
                // shrinking) the previous sample so the next one lands at its real time.
                let expected = base + self.audio.iter().map(|s| s.duration as u64).sum::<u64>();
                if expected != next {
                    if let Some(last) = self.audio.last_mut() {
                        let diff = next as i64 - expected as i64;
                        last.duration = (last.duration as i64 + diff).max(1) as u32;
                    }
                }
            }
        }
        self.audio.push(Sample {
            duration: self.audio_frame,
            cts: 0,
            keyframe: true,
            data: f.data.clone(),
        });
        self.audio_next = Some(next + self.audio_frame as u64);
    }

    fn emit_part(&mut self, out: &mut Vec<Output>) {
        if self.video.is_empty() && self.audio.is_empty() {
            return;
        }
        let mut trafs = Vec::with_capacity(2);
        if !self.video.is_empty() {
            trafs.push(TrackFragment {
                track_id: VIDEO_TRACK_ID,
                base_decode_time: self.video_base.unwrap_or(0).max(0) as u64,
                samples: &self.video,
            });
        }
        if !self.audio.is_empty() {
            trafs.push(TrackFragment {
                track_id: AUDIO_TRACK_ID,
                base_decode_time: self.audio_base.unwrap_or(0),
                samples: &self.audio,
            });
        }
        self.sequence = self.sequence.wrapping_add(1);
        let duration = if self.has_video() {
            self.video_dur as f64 / CLOCK_HZ as f64
        } else {
            self.audio_dur_ticks() as f64 / CLOCK_HZ as f64
        };
        match cmaf::fragment(self.sequence, &trafs) {
            Ok(data) => {
                out.push(Output::Part(PartOut {
                    data,
                    duration,
                    independent: self.part_independent,
                    segment_start: self.next_starts_segment,
                    discontinuity: self.next_starts_segment && self.next_discontinuity,
                    init_version: self.init_version,
                    wallclock: self.part_wallclock.unwrap_or_else(SystemTime::now),
                }));
                if self.next_starts_segment {
                    self.next_discontinuity = false;
                }
                self.next_starts_segment = false;
                self.segment_open = true;
            }
            Err(e) => {
                self.errors += 1;
                tracing::error!(side = "egress", path = "hls", "cannot write part: {e}");
            }
        }
        self.video.clear();
        self.audio.clear();
        self.video_base = None;
        self.audio_base = None;
        self.video_dur = 0;
        self.part_start = None;
        self.part_wallclock = None;
    }

    fn end_segment(&mut self, out: &mut Vec<Output>) {
        if self.segment_open {
            out.push(Output::SegmentEnd);
        }
        self.segment_open = false;
        self.next_starts_segment = true;
        self.segment_start = None;
    }

    /// Flush everything buffered (publisher left, tracks changed).
    fn close_all(&mut self, out: &mut Vec<Output>) {
        if let Some(p) = self.pending_video.take() {
            let d = self.last_video_duration;
            self.add_video(&p, d);
        }
        self.emit_part(out);
        self.end_segment(out);
        self.audio_next = None;
        self.need_keyframe = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{AacParams, Codec, H264Params};
    use bytes::Bytes;

    fn tracks(session: u64, video: bool) -> Arc<TrackSet> {
        let sps = Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x47, 0xfe, 0xc8]);
        let pps = Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]);
        Arc::new(TrackSet {
            session,
            video: video.then(|| {
                Codec::H264(H264Params {
                    avcc: Bytes::new(),
                    sps: vec![sps],
                    pps: vec![pps],
                    profile_idc: 0x42,
                    constraint_flags: 0xc0,
                    level_idc: 0x1e,
                    width: 320,
                    height: 240,
                    nalu_length_size: 4,
                })
            }),
            audio: Some(Codec::Aac(AacParams {
                asc: Bytes::from_static(&[0x11, 0x90]),
                object_type: 2,
                sample_rate: 48_000,
                channels: 2,
            })),
        })
    }

    fn frame(kind: TrackKind, dts: i64, key: bool) -> MediaEvent {
        MediaEvent::Frame(Arc::new(Frame {
            kind,
            dts,
            pts: dts,
            keyframe: key,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
            wallclock: SystemTime::now(),
        }))
    }

    /// 30 fps video with a 1 s GOP and 48 kHz AAC, interleaved by time.
    fn feed_av(s: &mut Segmenter, out: &mut Vec<Output>, secs: i64, start: i64) {
        let mut a = 0i64;
        for i in 0..secs * 30 {
            let vdts = start + i * 3000;
            while start + a * 1920 <= vdts {
                s.handle(&frame(TrackKind::Audio, start + a * 1920, true), out);
                a += 1;
            }
            s.handle(&frame(TrackKind::Video, vdts, i % 30 == 0), out);
        }
    }

    #[test]
    fn parts_respect_target_and_segments_cut_on_keyframes() {
        let mut s = Segmenter::new(SegmenterConfig::from_ms(200, 2000));
        let mut out = Vec::new();
        s.handle(&MediaEvent::Tracks(tracks(1, true)), &mut out);
        feed_av(&mut s, &mut out, 7, 0);
        assert!(matches!(out[0], Output::Init { version: 1, .. }));
        let parts: Vec<&PartOut> = out
            .iter()
            .filter_map(|o| match o {
                Output::Part(p) => Some(p),
                _ => None,
            })
            .collect();
        let target = SegmenterConfig::from_ms(200, 2000).part_target_secs();
        assert!((target - 0.204).abs() < 1e-9);
        assert!(
            parts.iter().all(|p| p.duration <= target + 1e-9),
            "part over target"
        );
        assert!(
            parts.iter().all(|p| (p.duration - 0.2).abs() < 1e-6),
            "30 fps: 6 frames a part"
        );
        // A segment starts only on an independent part, every 2 s (60 frames = 10 parts).
        let starts: Vec<usize> = parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.segment_start)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(starts, vec![0, 10, 20, 30]);
        assert!(starts.iter().all(|&i| parts[i].independent));
        assert_eq!(
            out.iter()
                .filter(|o| matches!(o, Output::SegmentEnd))
                .count(),
            3
        );
        assert_eq!(s.errors(), 0);
    }

    #[test]
    fn new_session_flushes_and_marks_discontinuity() {
        let mut s = Segmenter::new(SegmenterConfig::from_ms(200, 2000));
        let mut out = Vec::new();
        s.handle(&MediaEvent::Tracks(tracks(1, true)), &mut out);
        feed_av(&mut s, &mut out, 3, 0);
        s.handle(&MediaEvent::Idle, &mut out);
        let n = out.len();
        s.handle(&MediaEvent::Tracks(tracks(2, true)), &mut out);
        // Audio before the first keyframe of the new session is dropped; video starts on a key.
        s.handle(&frame(TrackKind::Audio, 900_000, true), &mut out);
        feed_av(&mut s, &mut out, 1, 900_000);
        let first_new = out[n..].iter().find_map(|o| match o {
            Output::Part(p) => Some(p),
            _ => None,
        });
        let p = first_new.expect("parts after resume");
        assert!(p.segment_start && p.discontinuity && p.independent);
    }

    /// The first video sample's flags in a part's moof (None: no video in it).
    fn first_video_flags(part: &[u8]) -> Option<u32> {
        use mp4_atom::{Decode, Moof, TrunSamples};
        let mut buf = part;
        let moof = Moof::decode(&mut buf).unwrap();
        let traf = moof
            .traf
            .iter()
            .find(|t| t.tfhd.track_id == VIDEO_TRACK_ID)?;
        let TrunSamples::Explicit(e) = &traf.trun[0].samples else {
            panic!("trun without per-sample fields");
        };
        e[0].flags
    }

    #[test]
    fn every_segment_starts_on_a_sync_sample_after_the_init() {
        let mut s = Segmenter::new(SegmenterConfig::from_ms(200, 2000));
        let mut out = Vec::new();
        // Frames before any track set are dropped (no init to refer to).
        s.handle(&frame(TrackKind::Video, 0, true), &mut out);
        assert!(out.is_empty());
        s.handle(&MediaEvent::Tracks(tracks(1, true)), &mut out);
        // A stream that starts mid-GOP (P frames, audio) and is replaced mid-GOP by a new
        // session that also starts with P frames.
        for i in 1..10 {
            s.handle(&frame(TrackKind::Audio, i * 1920, true), &mut out);
            s.handle(&frame(TrackKind::Video, i * 3000, false), &mut out);
        }
        feed_av(&mut s, &mut out, 5, 30_000);
        s.handle(&MediaEvent::Tracks(tracks(2, true)), &mut out);
        for i in 0..10 {
            s.handle(
                &frame(TrackKind::Video, 500_000 + i * 3000, false),
                &mut out,
            );
        }
        feed_av(&mut s, &mut out, 3, 530_000);
        assert!(matches!(out[0], Output::Init { version: 1, .. }));
        let mut segments = 0;
        for o in &out {
            if let Output::Part(p) = o {
                if p.segment_start {
                    segments += 1;
                    assert!(p.independent);
                    assert_eq!(
                        first_video_flags(&p.data),
                        Some(0x0200_0000),
                        "segment {segments} starts on a sync sample"
                    );
                }
            }
        }
        assert!(segments >= 4, "{segments}");
        assert_eq!(s.errors(), 0);
    }

    #[test]
    fn audio_only_stream_makes_parts() {
        let mut s = Segmenter::new(SegmenterConfig::from_ms(200, 2000));
        let mut out = Vec::new();
        s.handle(&MediaEvent::Tracks(tracks(1, false)), &mut out);
        for a in 0..500 {
            s.handle(&frame(TrackKind::Audio, a * 1920, true), &mut out);
        }
        let parts = out.iter().filter(|o| matches!(o, Output::Part(_))).count();
        let segs = out
            .iter()
            .filter(|o| matches!(o, Output::SegmentEnd))
            .count();
        assert!(parts >= 45, "{parts}");
        assert!(segs >= 4, "{segs}");
    }
}
