//! Criterion bench for the ingest path: FLV tag body → Frame (demux + publish into the registry
//! with one sink), over the built-in demo clip. See docs/BENCHMARKS.md.

use std::time::{Instant, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use deltacast::ingest::demo::demo_tags;
use deltacast::ingest::flv::{self, FlvDemuxer};
use deltacast::media::{Registry, TrackKind};

fn bench_flv(c: &mut Criterion) {
    let tags = demo_tags().expect("demo clip");
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(tags.len() as u64));
    g.bench_function("flv_tag_to_frame_demux_only", |b| {
        b.iter(|| {
            let mut d = FlvDemuxer::new();
            let mut n = 0usize;
            for t in &tags {
                let out = match t.kind {
                    TrackKind::Video => d.video(t.timestamp_ms, t.body.clone()).ok().flatten(),
                    TrackKind::Audio => d.audio(t.timestamp_ms, t.body.clone()),
                };
                n += out.is_some() as usize;
            }
            black_box(n)
        })
    });
    g.bench_function("flv_tag_to_frame_into_registry", |b| {
        let reg = Registry::new();
        let rx = reg.add_sink("bench", 1 << 16);
        let mut round = 0u64;
        b.iter(|| {
            round += 1;
            let mut p = reg
                .begin_publish(
                    &format!("bench{}", round % 4),
                    "bench".into(),
                    std::sync::Arc::new(deltacast::media::KickSignal::default()),
                )
                .unwrap();
            let mut d = FlvDemuxer::new();
            let now = Instant::now();
            let wall = SystemTime::now();
            for t in &tags {
                let out = match t.kind {
                    TrackKind::Video => d.video(t.timestamp_ms, t.body.clone()).ok().flatten(),
                    TrackKind::Audio => d.audio(t.timestamp_ms, t.body.clone()),
                };
                if let Some(o) = out {
                    flv::deliver(&mut p, o, wall, now);
                }
            }
            drop(p);
            // Drain so the sink never fills (measures the publish path, not drops).
            black_box(rx.try_iter().count())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_flv);
criterion_main!(benches);
