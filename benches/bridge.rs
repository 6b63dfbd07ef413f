//! Audio bridge cost: CPU time per second of audio, AAC → Opus and Opus → AAC.
//!
//! Inputs are made here (no ffmpeg needed): a 440 Hz + 1 kHz stereo program encoded with the
//! same libraries the bridge uses (fdk-aac for AAC, libopus for Opus). Each iteration converts
//! 10 s of audio through a fresh bridge, so "time per iteration / 10" is the CPU cost of one
//! second of one stream's audio on one core.
//!
//!     cargo bench --bench bridge
//!
//! Besides criterion's report this prints "… ms of CPU per second of audio (… % of a core)".

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use deltacast::media::bridge::{libopus, AacConfig, Bridge, BridgeConfig, OpusConfig};
use deltacast::media::codec::aac::parse_asc;
use deltacast::media::{Codec, Frame, OpusParams, TrackKind};

const SECS: usize = 10;

fn program(rate: u32, n: usize) -> Vec<i16> {
    (0..n)
        .flat_map(|i| {
            let t = i as f32 / rate as f32;
            let l = (t * 440.0 * std::f32::consts::TAU).sin() * 0.3;
            let r = (t * 1000.0 * std::f32::consts::TAU).sin() * 0.2;
            [(l * 32767.0) as i16, (r * 32767.0) as i16]
        })
        .collect()
}

fn frame(pts: i64, data: Vec<u8>) -> Frame {
    Frame {
        kind: TrackKind::Audio,
        dts: pts,
        pts,
        keyframe: true,
        data: Bytes::from(data),
        wallclock: SystemTime::UNIX_EPOCH,
    }
}

/// `SECS` seconds of AAC-LC stereo at `rate`, as (AudioSpecificConfig params, frames).
fn aac_input(rate: u32) -> (Codec, Vec<Frame>) {
    use fdk_aac::enc::*;
    let enc = Encoder::new(EncoderParams {
        bit_rate: BitRate::Cbr(128_000),
        sample_rate: rate,
        transport: Transport::Raw,
        channels: ChannelMode::Stereo,
        audio_object_type: AudioObjectType::Mpeg4LowComplexity,
    })
    .unwrap();
    let info = enc.info().unwrap();
    let params = parse_asc(Bytes::copy_from_slice(
        &info.confBuf[..info.confSize as usize],
    ))
    .unwrap();
    let pcm = program(rate, rate as usize * SECS);
    let mut out = vec![0u8; 8192];
    let mut frames = Vec::new();
    for (i, chunk) in pcm.chunks_exact(2048).enumerate() {
        let r = enc.encode(chunk, &mut out).unwrap();
        if r.output_size > 0 {
            let pts = (i as i64 * 1024 * 90_000) / i64::from(rate);
            frames.push(frame(pts, out[..r.output_size].to_vec()));
        }
    }
    (Codec::Aac(params), frames)
}

/// `SECS` seconds of 20 ms Opus stereo packets (96 kbit/s, as a browser would send music).
fn opus_input() -> (Codec, Vec<Frame>) {
    let mut enc = libopus::Encoder::new(
        48_000,
        libopus::Channels::Stereo,
        libopus::Application::Audio,
    )
    .unwrap();
    enc.set_bitrate(96_000).unwrap();
    let pcm = program(48_000, 48_000 * SECS);
    let mut out = vec![0u8; 1500];
    let frames = pcm
        .chunks_exact(1920)
        .enumerate()
        .map(|(i, chunk)| {
            let n = enc.encode(chunk, &mut out).unwrap();
            frame(i as i64 * 1800, out[..n].to_vec())
        })
        .collect();
    (
        Codec::Opus(OpusParams {
            channels: 2,
            sample_rate: 48_000,
        }),
        frames,
    )
}

fn convert(input: &Codec, frames: &[Frame], config: &BridgeConfig) -> usize {
    let mut bridge = Bridge::new(input, config).unwrap();
    let mut out = Vec::with_capacity(1024);
    for f in frames {
        bridge.push_into(f, &mut out);
    }
    out.extend(bridge.flush());
    out.len()
}

/// One plain measurement, printed in the unit the design cares about.
fn report(name: &str, input: &Codec, frames: &[Frame], config: &BridgeConfig) {
    convert(input, frames, config); // warm up
    let runs = 3;
    let start = Instant::now();
    for _ in 0..runs {
        convert(input, frames, config);
    }
    let per_sec = start.elapsed() / (runs * SECS as u32);
    println!(
        "bridge {name}: {:.2} ms of CPU per second of audio ({:.2} % of a core)",
        per_sec.as_secs_f64() * 1e3,
        per_sec.as_secs_f64() * 100.0
    );
}

fn bench(c: &mut Criterion) {
    let default = BridgeConfig::default();
    let (aac44, aac44_frames) = aac_input(44_100);
    let (aac48, aac48_frames) = aac_input(48_000);
    let (opus, opus_frames) = opus_input();
    let low_complexity = BridgeConfig {
        opus: OpusConfig {
            complexity: 5,
            ..OpusConfig::default()
        },
        ..default
    };
    let aac44_out = BridgeConfig {
        aac: AacConfig {
            sample_rate: 44_100,
            ..AacConfig::default()
        },
        ..default
    };
    let cases: [(&str, &Codec, &[Frame], &BridgeConfig); 5] = [
        (
            "aac48k_to_opus (complexity 10)",
            &aac48,
            &aac48_frames,
            &default,
        ),
        (
            "aac44.1k_to_opus (resample, complexity 10)",
            &aac44,
            &aac44_frames,
            &default,
        ),
        (
            "aac44.1k_to_opus (resample, complexity 5)",
            &aac44,
            &aac44_frames,
            &low_complexity,
        ),
        ("opus_to_aac48k", &opus, &opus_frames, &default),
        (
            "opus_to_aac44.1k (resample)",
            &opus,
            &opus_frames,
            &aac44_out,
        ),
    ];
    for (name, input, frames, config) in cases {
        report(name, input, frames, config);
    }

    let mut g = c.benchmark_group("bridge_10s_stereo");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(SECS as u64));
    for (name, input, frames, config) in cases {
        g.bench_function(name, |b| b.iter(|| convert(input, frames, config)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
