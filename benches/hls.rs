//! Criterion benches for the LL-HLS path: CMAF part mux (per frame), segmenter throughput, and
//! playlist rendering. See docs/BENCHMARKS.md for the command and recorded numbers.

use std::sync::Arc;
use std::time::SystemTime;

mod common;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use deltacast::egress::hls::cmaf::{self, Sample, TrackFragment, VIDEO_TRACK_ID};
use deltacast::egress::hls::segmenter::{Segmenter, SegmenterConfig};
use deltacast::egress::hls::store::{HlsStore, StoreConfig};
use deltacast::media::{Frame, MediaEvent, TrackKind};

fn bench_cmaf(c: &mut Criterion) {
    // A 200 ms part at 30 fps and ~4 Mbit/s: 6 frames of ~16 KB.
    let samples: Vec<Sample> = (0..6)
        .map(|i| Sample {
            duration: 3000,
            cts: 0,
            keyframe: i == 0,
            data: Bytes::from(vec![0x41u8; 16_000]),
        })
        .collect();
    let mut g = c.benchmark_group("cmaf");
    g.throughput(Throughput::Elements(samples.len() as u64));
    g.bench_function("part_6_frames_16k", |b| {
        b.iter(|| {
            let t = [TrackFragment {
                track_id: VIDEO_TRACK_ID,
                base_decode_time: 90_000,
                samples: &samples,
            }];
            black_box(cmaf::fragment(1, &t).unwrap())
        })
    });
    g.finish();
}

fn bench_segmenter(c: &mut Criterion) {
    let t = common::tracks();
    let payload = Bytes::from(vec![0u8; 16_000]);
    let frames: Vec<MediaEvent> = (0..300)
        .map(|i| {
            MediaEvent::Frame(Arc::new(Frame {
                kind: TrackKind::Video,
                dts: i * 3000,
                pts: i * 3000,
                keyframe: i % 30 == 0,
                data: payload.clone(),
                wallclock: SystemTime::now(),
            }))
        })
        .collect();
    let mut g = c.benchmark_group("segmenter");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("10s_video_30fps", |b| {
        b.iter(|| {
            let mut s = Segmenter::new(SegmenterConfig::from_ms(200, 2000));
            let mut out = Vec::new();
            s.handle(&MediaEvent::Tracks(t.clone()), &mut out);
            for f in &frames {
                s.handle(f, &mut out);
            }
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_playlist(c: &mut Criterion) {
    let store = HlsStore::new(StoreConfig {
        part_target_secs: 0.2,
        segment_target_secs: 2.0,
        window_segments: 6,
        retain_segments: 4,
    });
    let hs = store.get_or_create(&Arc::from("bench"));
    let t = common::tracks();
    let mut s = Segmenter::new(SegmenterConfig::from_ms(200, 2000));
    let mut out = Vec::new();
    s.handle(&MediaEvent::Tracks(t), &mut out);
    for i in 0..600 {
        s.handle(
            &MediaEvent::Frame(Arc::new(Frame {
                kind: TrackKind::Video,
                dts: i * 3000,
                pts: i * 3000,
                keyframe: i % 30 == 0,
                data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
                wallclock: SystemTime::now(),
            })),
            &mut out,
        );
    }
    hs.apply(&out);
    c.bench_function("playlist/render_6_segments_full_and_delta", |b| {
        b.iter(|| {
            let mut w = hs.window.write();
            w.render();
            black_box(w.playlist(false).len())
        })
    });
}

criterion_group!(benches, bench_cmaf, bench_segmenter, bench_playlist);
criterion_main!(benches);
