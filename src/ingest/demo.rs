//! The built-in looping program (`deltacast serve --demo`): an 8-second FLV clip embedded in the
//! binary (`assets/demo.flv`, made by `tuning/make-demo-asset.sh`), or an FLV file of the
//! operator's (`[demo] file`, e.g. the 1 Mbit/s clip of a load test on a node without an encoder),
//! published in real time forever, its timestamps advancing by the clip's length each lap so the
//! stream clock never goes back.
//!
//! Only the FLV *file* framing (header, tags, back-pointers) is read here; the tag bodies go
//! through [`FlvDemuxer`], the same path as RTMP.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

use super::flv::{self, FlvDemuxer};
use crate::media::{KickSignal, PublishError, Publisher, Registry, TrackKind};

/// The embedded clip: 640x360 30 fps H.264 + 48 kHz stereo AAC-LC, exactly 8.000 s.
pub static DEMO_FLV: &[u8] = include_bytes!("../../assets/demo.flv");

/// Length of one lap of the embedded clip.
pub const LOOP_MS: i64 = 8_000;

/// Largest `[demo] file` read into memory.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// One audio or video tag of an FLV file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlvTag {
    pub kind: TrackKind,
    pub timestamp_ms: i64,
    /// The tag body (what an RTMP audio/video message would carry); a slice of the file.
    pub body: Bytes,
}

impl FlvTag {
    /// AVC/AAC sequence headers (codec parameters rather than media).
    pub fn is_sequence_header(&self) -> bool {
        self.body.len() >= 2
            && self.body[1] == 0
            && match self.kind {
                TrackKind::Video => self.body[0] & 0x0f == 7,
                TrackKind::Audio => self.body[0] >> 4 == 10,
            }
    }
}

/// Read the audio and video tags of an FLV file (script tags are skipped). Bodies are slices
/// of `file`.
pub fn read_flv(file: Bytes) -> Result<Vec<FlvTag>, String> {
    if file.len() < 9 || &file[..3] != b"FLV" {
        return Err("not an FLV file".into());
    }
    if file[3] != 1 {
        return Err(format!("FLV version {} is not supported", file[3]));
    }
    let header_len = u32::from_be_bytes([file[5], file[6], file[7], file[8]]) as usize;
    if header_len < 9 || header_len > file.len() {
        return Err(format!("FLV header size {header_len} is invalid"));
    }
    // Skip the header and PreviousTagSize0.
    let mut pos = header_len + 4;
    let mut tags = Vec::new();
    while pos < file.len() {
        let Some(h) = file.get(pos..pos + 11) else {
            return Err(format!("truncated tag header at byte {pos}"));
        };
        let tag_type = h[0] & 0x1f;
        let filtered = h[0] & 0x20 != 0;
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let ts = i64::from(u32::from_be_bytes([h[7], h[4], h[5], h[6]]));
        let body_start = pos + 11;
        let body_end = body_start + size;
        if body_end + 4 > file.len() {
            return Err(format!("truncated tag at byte {pos}"));
        }
        let kind = match tag_type {
            8 => Some(TrackKind::Audio),
            9 => Some(TrackKind::Video),
            _ => None,
        };
        if let (Some(kind), false) = (kind, filtered) {
            tags.push(FlvTag {
                kind,
                timestamp_ms: ts,
                body: file.slice(body_start..body_end),
            });
        }
        pos = body_end + 4;
    }
    Ok(tags)
}

/// A clip ready to loop: its tags on a timeline starting at 0 and the length of one lap.
#[derive(Clone, Debug)]
pub struct Program {
    pub tags: Vec<FlvTag>,
    pub loop_ms: i64,
}

impl Program {
    /// The embedded clip.
    pub fn embedded() -> Result<Self, String> {
        Self::from_flv(Bytes::from_static(DEMO_FLV))
    }

    /// `[demo] file`: empty means the embedded clip.
    pub fn load(file: &str) -> Result<Self, String> {
        if file.is_empty() {
            return Self::embedded();
        }
        let size = std::fs::metadata(file)
            .map_err(|e| format!("demo file {file}: {e}"))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(format!(
                "demo file {file}: {size} bytes, more than the {MAX_FILE_BYTES} allowed"
            ));
        }
        let bytes = std::fs::read(file).map_err(|e| format!("demo file {file}: {e}"))?;
        Self::from_flv(Bytes::from(bytes)).map_err(|e| format!("demo file {file}: {e}"))
    }

    /// An FLV file's tags on a loop-ready timeline: rebased so the first video frame is at 0,
    /// media tags outside one lap (the AAC encoder's priming frame, audio past the last video
    /// frame) and end-of-sequence tags dropped, sequence headers first. One lap lasts as long as
    /// the video frames with one more frame interval (the mean, so a constant frame rate loops
    /// exactly); the clip must start with a keyframe, or every lap would start undecodable.
    pub fn from_flv(file: Bytes) -> Result<Self, String> {
        let mut tags = read_flv(file)?;
        let is_frame = |t: &FlvTag| t.body.len() >= 2 && t.body[1] == 1;
        let mut video = tags
            .iter()
            .filter(|t| t.kind == TrackKind::Video && is_frame(t));
        let first = video.next().ok_or("the clip has no video frames")?;
        if first.body[0] >> 4 != 1 {
            return Err("the clip's first video frame is not a keyframe".into());
        }
        let base = first.timestamp_ms;
        let (frames, last) = video.fold((1i64, base), |(n, _), t| (n + 1, t.timestamp_ms));
        if frames < 2 || last <= base {
            return Err("the clip needs at least two video frames, in time order".into());
        }
        let span = last - base;
        // span·n/(n−1): the last frame's time plus the mean frame interval.
        let loop_ms = (span * frames + (frames - 1) / 2) / (frames - 1);
        tags.retain_mut(|t| {
            t.timestamp_ms -= base;
            if t.is_sequence_header() {
                t.timestamp_ms = 0;
                true
            } else {
                // Media packets only (AVC end-of-sequence would cut every lap).
                is_frame(t) && (0..loop_ms).contains(&t.timestamp_ms)
            }
        });
        // Stable: sequence headers (now at 0) stay ahead of the media at 0.
        tags.sort_by_key(|t| (t.timestamp_ms, !t.is_sequence_header()));
        Ok(Self { tags, loop_ms })
    }
}

/// The embedded clip's tags, on a loop-ready timeline of [`LOOP_MS`].
pub fn demo_tags() -> Result<Vec<FlvTag>, String> {
    Program::embedded().map(|p| p.tags)
}

/// Publish `program` as stream `name` forever. If the name is taken, retry every second; if
/// the publisher is kicked, start again a second later.
pub async fn run(registry: Arc<Registry>, name: String, program: Program) {
    let mut waiting_logged = false;
    loop {
        let control = Arc::new(KickSignal::default());
        match registry.begin_publish(&name, "demo".into(), control.clone()) {
            Ok(publisher) => {
                waiting_logged = false;
                tracing::info!(side = "ingest", stream = %name, "demo program publishing");
                if let Err(e) = play(publisher, &control, &program).await {
                    tracing::error!(side = "ingest", stream = %name, "demo stopped: {e}");
                    return;
                }
            }
            Err(PublishError::AlreadyPublishing(_)) => {
                if !waiting_logged {
                    tracing::info!(side = "ingest", stream = %name,
                        "demo waits: the stream name has another publisher");
                    waiting_logged = true;
                }
            }
            Err(e) => {
                tracing::error!(side = "ingest", stream = %name, "demo cannot publish: {e}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Play the tags in real time, lap after lap, until the publisher is kicked.
async fn play(
    mut publisher: Publisher,
    control: &KickSignal,
    program: &Program,
) -> Result<(), String> {
    let kicked = control.kicked();
    tokio::pin!(kicked);
    let mut demux = FlvDemuxer::new();
    let start = Instant::now();
    for lap in 0i64.. {
        for tag in &program.tags {
            let ts = tag.timestamp_ms + lap * program.loop_ms;
            let due = start + Duration::from_millis(ts.max(0) as u64);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = &mut kicked => {
                    tracing::info!(side = "ingest", stream = %publisher.name(), "demo publisher kicked");
                    return Ok(());
                }
            }
            let out = match tag.kind {
                TrackKind::Video => demux
                    .video(ts, tag.body.clone())
                    .map_err(|e| e.to_string())?,
                TrackKind::Audio => demux.audio(ts, tag.body.clone()),
            };
            if let Some(out) = out {
                flv::deliver(
                    &mut publisher,
                    out,
                    SystemTime::now(),
                    std::time::Instant::now(),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{Codec, MediaEvent};

    #[test]
    fn embedded_clip_loops_exactly() {
        let tags = demo_tags().unwrap();
        assert!(tags[0].is_sequence_header() && tags[1].is_sequence_header());
        let video: Vec<_> = tags
            .iter()
            .filter(|t| t.kind == TrackKind::Video && !t.is_sequence_header())
            .collect();
        let audio: Vec<_> = tags
            .iter()
            .filter(|t| t.kind == TrackKind::Audio && !t.is_sequence_header())
            .collect();
        assert_eq!(video.len(), 240);
        assert_eq!(audio.len(), 375);
        assert_eq!(video[0].timestamp_ms, 0);
        assert_eq!(audio[0].timestamp_ms, 0);
        // Each track ends one frame before the loop point (±1 ms of FLV rounding).
        assert!((LOOP_MS - video[239].timestamp_ms - 33).abs() <= 1);
        assert!((LOOP_MS - audio[374].timestamp_ms - 21).abs() <= 1);
        assert!(tags
            .windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
        // Keyframe every second (30 frames), first frame a keyframe.
        let keys: Vec<usize> = video
            .iter()
            .enumerate()
            .filter(|(_, t)| t.body[0] >> 4 == 1)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(keys, (0..8).map(|k| k * 30).collect::<Vec<_>>());
        assert!(DEMO_FLV.len() < 400 * 1024);
    }

    /// An FLV file of `(kind, timestamp, body)` tags.
    fn flv_file(tags: &[(TrackKind, i64, Vec<u8>)]) -> Bytes {
        let mut f = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        for (kind, ts, body) in tags {
            let ts = *ts as u32;
            f.push(if *kind == TrackKind::Video { 9 } else { 8 });
            f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(&ts.to_be_bytes()[1..]);
            f.push((ts >> 24) as u8);
            f.extend_from_slice(&[0, 0, 0]);
            f.extend_from_slice(body);
            f.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
        }
        Bytes::from(f)
    }

    #[test]
    fn embedded_program_laps_at_eight_seconds() {
        assert_eq!(Program::embedded().unwrap().loop_ms, LOOP_MS);
    }

    #[test]
    fn a_file_of_ours_loops_at_its_own_length() {
        let (v, a) = (TrackKind::Video, TrackKind::Audio);
        let key = |t| (v, t, vec![0x17, 1, 0, 0, 0, 0xaa]);
        let inter = |t| (v, t, vec![0x27, 1, 0, 0, 0, 0xbb]);
        // 25 fps from 1000 ms; audio before the first frame and past the lap is dropped.
        let file = flv_file(&[
            (a, 990, vec![0xaf, 1, 1]),
            key(1000),
            (a, 1000, vec![0xaf, 1, 2]),
            inter(1040),
            inter(1080),
            (a, 1115, vec![0xaf, 1, 3]),
            inter(1120),
            (a, 1165, vec![0xaf, 1, 4]),
        ]);
        let p = Program::from_flv(file).unwrap();
        assert_eq!(p.loop_ms, 160);
        let times: Vec<_> = p.tags.iter().map(|t| (t.kind, t.timestamp_ms)).collect();
        assert_eq!(
            times,
            [(v, 0), (a, 0), (v, 40), (v, 80), (a, 115), (v, 120)]
        );

        // Written to disk and named in `[demo] file`: the same program.
        let path = std::env::temp_dir().join(format!("demo-file-{}.flv", std::process::id()));
        std::fs::write(&path, flv_file(&[key(0), inter(40)])).unwrap();
        let p = Program::load(path.to_str().unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!((p.tags.len(), p.loop_ms), (2, 80));
        assert_eq!(Program::load("").unwrap().loop_ms, LOOP_MS);
    }

    #[test]
    fn files_that_cannot_loop_are_refused_by_name() {
        let v = TrackKind::Video;
        let e = Program::from_flv(flv_file(&[(v, 0, vec![0x27, 1, 0, 0, 0, 1])])).unwrap_err();
        assert!(e.contains("not a keyframe"), "{e}");
        let e = Program::from_flv(flv_file(&[(v, 0, vec![0x17, 1, 0, 0, 0, 1])])).unwrap_err();
        assert!(e.contains("at least two video frames"), "{e}");
        let e = Program::from_flv(flv_file(&[(TrackKind::Audio, 0, vec![0xaf, 1])])).unwrap_err();
        assert!(e.contains("no video frames"), "{e}");
        let e = Program::load("/nonexistent/clip.flv").unwrap_err();
        assert!(e.contains("/nonexistent/clip.flv"), "{e}");
    }

    #[test]
    fn clip_goes_through_the_flv_demuxer() {
        let mut d = FlvDemuxer::new();
        let (mut frames, mut codecs) = (0, Vec::new());
        for t in demo_tags().unwrap() {
            let out = match t.kind {
                TrackKind::Video => d.video(t.timestamp_ms, t.body).unwrap(),
                TrackKind::Audio => d.audio(t.timestamp_ms, t.body),
            };
            match out {
                Some(flv::FlvOutput::Codec(c)) => codecs.push(c),
                Some(flv::FlvOutput::Frame { .. }) => frames += 1,
                other => assert!(other.is_none(), "{other:?}"),
            }
        }
        assert_eq!(frames, 240 + 375);
        assert_eq!(d.stats(), Default::default());
        let Codec::H264(v) = &codecs[0] else { panic!() };
        assert_eq!((v.width, v.height, v.profile_idc), (640, 360, 77));
        let Codec::Aac(a) = &codecs[1] else { panic!() };
        assert_eq!((a.object_type, a.sample_rate, a.channels), (2, 48000, 2));
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        assert!(read_flv(Bytes::from_static(b"")).is_err());
        assert!(read_flv(Bytes::from_static(b"FLV\x01\x05\x00\x00\x00\x09"))
            .unwrap()
            .is_empty());
        assert!(read_flv(Bytes::from_static(b"FLV\x01\x05\xff\xff\xff\xff")).is_err());
        let file = Bytes::from_static(DEMO_FLV);
        for cut in (0..4096).chain((4096..file.len()).step_by(997)) {
            let _ = read_flv(file.slice(..cut));
        }
        assert!(read_flv(file.slice(..2000)).is_err());
    }

    #[tokio::test]
    async fn publishes_in_real_time_and_waits_for_a_taken_name() {
        let reg = Registry::new();
        let rx = reg.add_sink("test", 4096);
        // Someone else holds the name: the demo waits.
        let other = reg
            .begin_publish("demo", "someone".into(), Arc::new(KickSignal::default()))
            .unwrap();
        let task = tokio::spawn(run(
            reg.clone(),
            "demo".into(),
            Program::embedded().unwrap(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(rx
            .try_iter()
            .all(|e| !matches!(e.event, MediaEvent::Frame(_))));
        drop(other);
        // Retries every second; then frames flow at the clip's pace.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let frames: Vec<_> = rx
            .try_iter()
            .filter_map(|e| match e.event {
                MediaEvent::Frame(f) => Some(f),
                _ => None,
            })
            .collect();
        let video: Vec<_> = frames
            .iter()
            .filter(|f| f.kind == TrackKind::Video)
            .collect();
        assert!(
            video.len() >= 8 && video.len() <= 40,
            "{} video frames",
            video.len()
        );
        assert!(video[0].keyframe);
        assert!(video.windows(2).all(|w| w[1].dts > w[0].dts));
        assert_eq!(
            reg.get("demo").unwrap().status().publisher.as_deref(),
            Some("demo")
        );
        // A kick makes it start over a second later.
        reg.get("demo").unwrap().kick();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            reg.get("demo").unwrap().state(),
            crate::media::StreamState::Idle
        );
        task.abort();
    }
}
