//! Bridge tests with a real peer: ffmpeg encodes a 440 Hz sine into AAC (ADTS) and Opus (Ogg),
//! the bridge converts it, and ffmpeg decodes the result again (ADTS for AAC out, Ogg Opus for
//! Opus out), where duration and pitch are measured.

use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::*;
use crate::media::codec::aac::parse_asc;
use crate::media::frame::{Frame, TrackKind, CLOCK_HZ};

const TONE: f64 = 440.0;
/// Where the test programs start on the stream timeline (not 0, to catch anchor mistakes).
const BASE: i64 = 7 * CLOCK_HZ;

fn ffmpeg() -> &'static str {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "ffmpeg is not installed: the audio bridge tests need it (Debian: apt-get install ffmpeg)"
    );
    "ffmpeg"
}

fn run_ffmpeg(args: &[&str]) -> Vec<u8> {
    let out = Command::new(ffmpeg())
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn audio_frame(pts: i64, data: impl Into<Bytes>) -> Frame {
    Frame {
        kind: TrackKind::Audio,
        dts: pts,
        pts,
        keyframe: true,
        data: data.into(),
        wallclock: SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_700_000_000)
            + Duration::from_micros(pts.clamp(0, 1 << 40) as u64 * 100 / 9),
    }
}

// ---------------------------------------------------------------------------------------------
// AAC input: ffmpeg → ADTS → (AudioSpecificConfig, raw access units)

fn sine_aac(dir: &Path, rate: u32, channels: u8, secs: f64) -> (AacParams, Vec<Bytes>) {
    let file = dir.join(format!("in-{rate}-{channels}.aac"));
    run_ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("sine=frequency={TONE}:sample_rate={rate}:duration={secs}"),
        "-ac",
        &channels.to_string(),
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-f",
        "adts",
        "-y",
        file.to_str().unwrap(),
    ]);
    parse_adts(&std::fs::read(file).unwrap())
}

fn parse_adts(mut b: &[u8]) -> (AacParams, Vec<Bytes>) {
    let mut asc = None;
    let mut aus = Vec::new();
    while b.len() >= 7 {
        assert_eq!((b[0], b[1] & 0xf0), (0xff, 0xf0), "ADTS sync");
        let protection_absent = b[1] & 1 == 1;
        let aot = (b[2] >> 6) + 1;
        let sfi = (b[2] >> 2) & 0x0f;
        let chcfg = ((b[2] & 1) << 2) | (b[3] >> 6);
        let len = (usize::from(b[3] & 3) << 11) | (usize::from(b[4]) << 3) | usize::from(b[5] >> 5);
        let header = if protection_absent { 7 } else { 9 };
        asc.get_or_insert([(aot << 3) | (sfi >> 1), ((sfi & 1) << 7) | (chcfg << 3)]);
        aus.push(Bytes::copy_from_slice(&b[header..len]));
        b = &b[len..];
    }
    let params = parse_asc(Bytes::copy_from_slice(&asc.expect("no ADTS frames"))).unwrap();
    (params, aus)
}

fn write_adts(p: &AacParams, frames: &[Frame]) -> Vec<u8> {
    let sfi = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ]
    .iter()
    .position(|&r| r == p.sample_rate)
    .unwrap() as u8;
    let mut out = Vec::new();
    for f in frames {
        let len = f.data.len() + 7;
        out.extend_from_slice(&[
            0xff,
            0xf1,
            ((p.object_type - 1) << 6) | (sfi << 2) | (p.channels >> 2),
            ((p.channels & 3) << 6) | ((len >> 11) as u8 & 3),
            (len >> 3) as u8,
            (((len & 7) << 5) as u8) | 0x1f,
            0xfc,
        ]);
        out.extend_from_slice(&f.data);
    }
    out
}

/// Access units stamped the way an RTMP ingest stamps them: milliseconds, rounded.
fn rtmp_times(aus: &[Bytes], rate: u32, base: i64) -> Vec<Frame> {
    aus.iter()
        .enumerate()
        .map(|(i, au)| {
            let ms = (i as f64 * 1024.0 * 1000.0 / f64::from(rate)).round() as i64;
            audio_frame(base + ms * 90, au.clone())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Opus input: ffmpeg → Ogg → packets

fn sine_opus(dir: &Path, channels: u8, secs: f64) -> Vec<Bytes> {
    let file = dir.join(format!("in-{channels}.opus"));
    run_ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("sine=frequency={TONE}:sample_rate=48000:duration={secs}"),
        "-ac",
        &channels.to_string(),
        "-c:a",
        "libopus",
        "-b:a",
        "96k",
        "-frame_duration",
        "20",
        "-f",
        "ogg",
        "-y",
        file.to_str().unwrap(),
    ]);
    let mut r = ogg::PacketReader::new(Cursor::new(std::fs::read(file).unwrap()));
    let mut packets = Vec::new();
    while let Some(p) = r.read_packet().unwrap() {
        packets.push(Bytes::from(p.data));
    }
    assert!(packets[0].starts_with(b"OpusHead") && packets[1].starts_with(b"OpusTags"));
    packets.split_off(2)
}

/// Packets stamped the way a WHIP ingest stamps them: RTP (48 kHz) → 90 kHz.
fn rtp_times(packets: &[Bytes], base: i64) -> Vec<Frame> {
    let mut t = 0i64;
    packets
        .iter()
        .map(|p| {
            let f = audio_frame(base + t * 90_000 / 48_000, p.clone());
            t += libopus::packet::get_nb_samples(p, 48_000).unwrap() as i64;
            f
        })
        .collect()
}

fn write_ogg_opus(channels: u8, frames: &[Frame]) -> Vec<u8> {
    const SERIAL: u32 = 0x0de1_7aca;
    const PRE_SKIP: u16 = 312;
    let mut out = Vec::new();
    let mut w = ogg::PacketWriter::new(&mut out);
    let mut head = b"OpusHead".to_vec();
    head.push(1);
    head.push(channels);
    head.extend_from_slice(&PRE_SKIP.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes());
    head.extend_from_slice(&[0, 0, 0]);
    w.write_packet(head, SERIAL, ogg::PacketWriteEndInfo::EndPage, 0)
        .unwrap();
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&9u32.to_le_bytes());
    tags.extend_from_slice(b"deltacast");
    tags.extend_from_slice(&0u32.to_le_bytes());
    w.write_packet(tags, SERIAL, ogg::PacketWriteEndInfo::EndPage, 0)
        .unwrap();
    let mut granule = u64::from(PRE_SKIP);
    for (i, f) in frames.iter().enumerate() {
        granule += libopus::packet::get_nb_samples(&f.data, 48_000).unwrap() as u64;
        let end = if i + 1 == frames.len() {
            ogg::PacketWriteEndInfo::EndStream
        } else if i % 50 == 49 {
            ogg::PacketWriteEndInfo::EndPage
        } else {
            ogg::PacketWriteEndInfo::NormalPacket
        };
        w.write_packet(f.data.to_vec(), SERIAL, end, granule)
            .unwrap();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Measuring what ffmpeg decodes

/// Decode `bytes` (a file of `format`) with ffmpeg to mono f32 at `rate`.
fn ffmpeg_decode(dir: &Path, name: &str, bytes: &[u8], rate: u32) -> Vec<f32> {
    let file = dir.join(name);
    std::fs::write(&file, bytes).unwrap();
    let pcm = run_ffmpeg(&[
        "-i",
        file.to_str().unwrap(),
        "-f",
        "s16le",
        "-ac",
        "1",
        "-ar",
        &rate.to_string(),
        "-",
    ]);
    pcm.chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// Goertzel power of `hz` in `x`, normalised by length.
fn goertzel(x: &[f32], rate: u32, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2) / (x.len() as f64).powi(2)
}

/// Check that `pcm` is about `secs` long and is a clean 440 Hz tone.
fn assert_tone(pcm: &[f32], rate: u32, secs: f64, what: &str) {
    let dur = pcm.len() as f64 / f64::from(rate);
    assert!(
        (dur - secs).abs() < 0.12,
        "{what}: decoded {dur:.3} s, want {secs:.3} s"
    );
    // Skip the first and last 100 ms (codec ramps).
    let body = &pcm[rate as usize / 10..pcm.len() - rate as usize / 10];
    let tone = goertzel(body, rate, TONE);
    for other in [220.0, 330.0, 550.0, 880.0, 1000.0, 2000.0, 5000.0] {
        let p = goertzel(body, rate, other);
        assert!(
            tone > 1000.0 * p,
            "{what}: 440 Hz power {tone:e} not dominant over {other} Hz ({p:e})"
        );
    }
    // Pitch from zero crossings.
    let crossings = body
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    let hz = crossings as f64 / 2.0 / (body.len() as f64 / f64::from(rate));
    assert!((hz - TONE).abs() < 3.0, "{what}: pitch {hz:.1} Hz");
    let rms = (body.iter().map(|v| f64::from(v * v)).sum::<f64>() / body.len() as f64).sqrt();
    // ffmpeg's sine source is at 1/8 full scale (RMS 0.088).
    assert!((0.05..0.15).contains(&rms), "{what}: level {rms:.3}");
}

fn run(bridge: &mut Bridge, frames: &[Frame]) -> Vec<Frame> {
    let mut out = Vec::new();
    for f in frames {
        bridge.push_into(f, &mut out);
    }
    out.extend(bridge.flush());
    out
}

/// Output frames are audio, keyframes, dts == pts, and spaced by exactly `step` ticks
/// (or `step_alt` for rates whose frame is not a whole number of ticks).
fn assert_continuous(out: &[Frame], steps: &[i64]) {
    for w in out.windows(2) {
        let d = w[1].pts - w[0].pts;
        assert!(steps.contains(&d), "step {d} at pts {}", w[0].pts);
    }
    for f in out {
        assert_eq!((f.kind, f.dts, f.keyframe), (TrackKind::Audio, f.pts, true));
        assert!(!f.data.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// AAC → Opus

#[test]
fn aac_44100_stereo_to_opus_decodes_as_the_same_tone() {
    let dir = tempfile::tempdir().unwrap();
    let secs = 3.0;
    let (params, aus) = sine_aac(dir.path(), 44_100, 2, secs);
    assert_eq!((params.sample_rate, params.channels), (44_100, 2));
    let frames = rtmp_times(&aus, 44_100, BASE);
    let mut bridge = Bridge::for_webrtc(&Codec::Aac(params), &BridgeConfig::default())
        .unwrap()
        .expect("AAC needs a bridge");
    assert_eq!(
        bridge.params(),
        Some(Codec::Opus(OpusParams {
            channels: 2,
            sample_rate: 48_000
        }))
    );
    let out = run(&mut bridge, &frames);
    let s = bridge.stats();
    assert_eq!(s.frames_in, aus.len() as u64);
    assert_eq!(
        (s.decode_errors, s.gaps_filled, s.discontinuities),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.frames_out, out.len() as u64);
    // 20 ms frames, exactly 1800 ticks apart, starting where the AAC started.
    assert_continuous(&out, &[1800]);
    assert_eq!(out[0].pts, BASE);
    let input_secs = aus.len() as f64 * 1024.0 / 44_100.0;
    let output_secs = out.len() as f64 * 0.02;
    assert!(
        (output_secs - input_secs).abs() < 0.05,
        "{output_secs} vs {input_secs}"
    );
    // Wall clocks follow the input's.
    assert_eq!(out[0].wallclock, frames[0].wallclock);

    let pcm = ffmpeg_decode(dir.path(), "out.opus", &write_ogg_opus(2, &out), 48_000);
    assert_tone(&pcm, 48_000, input_secs, "AAC 44.1k stereo → Opus");
}

#[test]
fn aac_48000_mono_to_opus_stereo_and_mono() {
    let dir = tempfile::tempdir().unwrap();
    let (params, aus) = sine_aac(dir.path(), 48_000, 1, 2.0);
    assert_eq!((params.sample_rate, params.channels), (48_000, 1));
    let frames = rtmp_times(&aus, 48_000, BASE);
    let input_secs = aus.len() as f64 * 1024.0 / 48_000.0;
    for channels in [2u8, 1] {
        let config = BridgeConfig {
            opus: OpusConfig {
                channels,
                bitrate: 64_000,
                complexity: 5,
            },
            ..BridgeConfig::default()
        };
        let mut bridge = Bridge::new(&Codec::Aac(params.clone()), &config).unwrap();
        let out = run(&mut bridge, &frames);
        assert_continuous(&out, &[1800]);
        assert_eq!(bridge.stats().decode_errors, 0);
        for f in &out {
            let n = libopus::packet::get_nb_channels(&f.data).unwrap() as u8;
            assert_eq!(n, channels);
        }
        let pcm = ffmpeg_decode(
            dir.path(),
            &format!("out{channels}.opus"),
            &write_ogg_opus(channels, &out),
            48_000,
        );
        assert_tone(
            &pcm,
            48_000,
            input_secs,
            &format!("AAC 48k mono → Opus {channels} ch"),
        );
    }
}

#[test]
fn aac_gaps_jumps_and_parameter_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (p44, aus44) = sine_aac(dir.path(), 44_100, 2, 2.0);
    let (p48, aus48) = sine_aac(dir.path(), 48_000, 1, 1.0);
    let mut bridge = Bridge::new(&Codec::Aac(p44.clone()), &BridgeConfig::default()).unwrap();
    let mut frames = rtmp_times(&aus44, 44_100, BASE);
    // Lose two access units in the middle (an encoder hiccup): filled, output stays continuous.
    frames.drain(40..42);
    let mut out = Vec::new();
    for f in &frames {
        bridge.push_into(f, &mut out);
    }
    let s = bridge.stats();
    assert_eq!((s.gaps_filled, s.discontinuities), (1, 0), "{s:?}");
    assert!((40..=50).contains(&s.filled_ms), "{s:?}");
    assert_continuous(&out, &[1800]);

    // The publisher switches to 48 kHz mono, continuing the timeline: new decoder, no
    // re-anchor, Opus parameters unchanged.
    let params_before = bridge.params();
    bridge.set_input(&Codec::Aac(p48.clone())).unwrap();
    assert_eq!(bridge.params(), params_before);
    let end = frames.last().unwrap().pts + 1024 * 90_000 / 44_100;
    for f in rtmp_times(&aus48, 48_000, end) {
        bridge.push_into(&f, &mut out);
    }
    let s = bridge.stats();
    assert_eq!((s.reconfigurations, s.discontinuities), (1, 0), "{s:?}");
    assert_continuous(&out, &[1800]);

    // A jump forward (publisher restart): pending audio flushed, output re-anchored on the new
    // time; a jump backwards re-anchors without the output going back.
    let before = out.len();
    let later = out.last().unwrap().pts + 60 * CLOCK_HZ;
    for f in rtmp_times(&aus48[..20], 48_000, later) {
        bridge.push_into(&f, &mut out);
    }
    assert_eq!(bridge.stats().discontinuities, 1);
    let jumped = out[before..].iter().position(|f| f.pts >= later).unwrap() + before;
    assert_eq!(out[jumped].pts, later);
    assert_continuous(&out[jumped..], &[1800]);
    let floor = out.last().unwrap().pts + 1800;
    let back = out.len();
    for f in rtmp_times(&aus48[..20], 48_000, BASE) {
        bridge.push_into(&f, &mut out);
    }
    assert_eq!(bridge.stats().discontinuities, 2);
    assert_eq!(out[back].pts, floor);
    for w in out.windows(2) {
        assert!(w[1].pts > w[0].pts, "output went back at {}", w[0].pts);
    }
    // Wrong input kind for this bridge.
    assert!(matches!(
        bridge.set_input(&Codec::Opus(OpusParams {
            channels: 2,
            sample_rate: 48_000
        })),
        Err(BridgeError::WrongInput { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Opus → AAC

#[test]
fn opus_to_aac_48000_decodes_as_the_same_tone() {
    let dir = tempfile::tempdir().unwrap();
    let secs = 3.0;
    let packets = sine_opus(dir.path(), 2, secs);
    let frames = rtp_times(&packets, BASE);
    let input = Codec::Opus(OpusParams {
        channels: 2,
        sample_rate: 48_000,
    });
    let mut bridge = Bridge::for_aac_egress(&input, &BridgeConfig::default())
        .unwrap()
        .expect("Opus needs a bridge");
    let Some(Codec::Aac(params)) = bridge.params() else {
        panic!("AAC out")
    };
    assert_eq!(
        (params.object_type, params.sample_rate, params.channels),
        (2, 48_000, 2)
    );
    assert_eq!(&params.asc[..], &[0x11, 0x90]);
    let out = run(&mut bridge, &frames);
    let s = bridge.stats();
    assert_eq!(
        (s.decode_errors, s.gaps_filled, s.discontinuities),
        (0, 0, 0),
        "{s:?}"
    );
    // 1024 samples at 48 kHz = 1920 ticks; the first access unit presents the first sample.
    assert_continuous(&out, &[1920]);
    assert_eq!(out[0].pts, BASE);
    let pcm = ffmpeg_decode(dir.path(), "out.aac", &write_adts(&params, &out), 48_000);
    // ADTS has no way to say "skip the encoder delay": ffmpeg decodes 2048 samples more.
    let input_secs = packets.len() as f64 * 0.02;
    assert_tone(
        &pcm,
        48_000,
        input_secs + 2048.0 / 48_000.0,
        "Opus → AAC 48k",
    );
    // ffprobe agrees on the stream.
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,profile,sample_rate,channels",
            "-of",
            "compact",
        ])
        .arg(dir.path().join("out.aac"))
        .output()
        .expect("ffprobe");
    let probe = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.contains("codec_name=aac")
            && probe.contains("profile=LC")
            && probe.contains("sample_rate=48000")
            && probe.contains("channels=2"),
        "{probe}"
    );
}

#[test]
fn opus_to_aac_44100_mono_source() {
    let dir = tempfile::tempdir().unwrap();
    let packets = sine_opus(dir.path(), 1, 2.0);
    let frames = rtp_times(&packets, BASE);
    let config = BridgeConfig {
        aac: AacConfig {
            sample_rate: 44_100,
            channels: 2,
            bitrate: 96_000,
        },
        ..BridgeConfig::default()
    };
    let input = Codec::Opus(OpusParams {
        channels: 1,
        sample_rate: 48_000,
    });
    let mut bridge = Bridge::new(&input, &config).unwrap();
    let Some(Codec::Aac(params)) = bridge.params() else {
        panic!("AAC out")
    };
    assert_eq!(&params.asc[..], &[0x12, 0x10]);
    let out = run(&mut bridge, &frames);
    // 1024 / 44100 s = 2089.8 ticks: the sample count keeps the steps exact on average.
    assert_continuous(&out, &[2089, 2090]);
    let span = out.last().unwrap().pts - out[0].pts;
    assert_eq!(span, (out.len() as i64 - 1) * 1024 * 90_000 / 44_100);
    let pcm = ffmpeg_decode(dir.path(), "out.aac", &write_adts(&params, &out), 44_100);
    let input_secs = packets.len() as f64 * 0.02;
    assert_tone(
        &pcm,
        44_100,
        input_secs + 2048.0 / 44_100.0,
        "Opus → AAC 44.1k",
    );
}

#[test]
fn opus_packet_loss_is_concealed_and_jumps_reanchor() {
    let dir = tempfile::tempdir().unwrap();
    let packets = sine_opus(dir.path(), 2, 3.0);
    let mut frames = rtp_times(&packets, BASE);
    // Lose one packet, then a 100 ms burst.
    frames.remove(30);
    frames.drain(60..65);
    let mut bridge = Bridge::new(
        &Codec::Opus(OpusParams {
            channels: 2,
            sample_rate: 48_000,
        }),
        &BridgeConfig::default(),
    )
    .unwrap();
    let mut out = Vec::new();
    for f in &frames {
        bridge.push_into(f, &mut out);
    }
    let s = bridge.stats();
    assert_eq!(
        (s.gaps_filled, s.filled_ms, s.discontinuities),
        (2, 120, 0),
        "{s:?}"
    );
    assert_continuous(&out, &[1920]);
    // The concealed output still decodes as the tone over its full length.
    let mut all = out.clone();
    all.extend(bridge.flush());
    let Some(Codec::Aac(params)) = bridge.params() else {
        panic!()
    };
    let pcm = ffmpeg_decode(dir.path(), "lossy.aac", &write_adts(&params, &all), 48_000);
    assert_tone(
        &pcm,
        48_000,
        3.0 + 2048.0 / 48_000.0,
        "Opus with loss → AAC",
    );

    // A publisher restart 30 s later: re-anchored there, continuous after.
    let later = all.last().unwrap().pts + 30 * CLOCK_HZ;
    let mut out = Vec::new();
    for f in rtp_times(&packets[..50], later) {
        bridge.push_into(&f, &mut out);
    }
    assert_eq!(out[0].pts, later);
    assert_continuous(&out, &[1920]);
    // An overlap (packets repeated 60 ms back) is trimmed, not played twice.
    let t = out.last().unwrap().pts;
    let n = out.len();
    let resend = rtp_times(&packets[50..60], later + 47 * 1800);
    for f in &resend {
        bridge.push_into(f, &mut out);
    }
    assert!(bridge.stats().overlaps_trimmed >= 1);
    assert!(out[n..].iter().all(|f| f.pts > t));
    assert_continuous(&out, &[1920]);
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn bad_frames_are_counted_and_skipped() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let (params, aus) = sine_aac(dir.path(), 48_000, 2, 1.0);
    let packets = sine_opus(dir.path(), 2, 1.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let garbage = |rng: &mut rand::rngs::StdRng| -> Bytes {
        let n = match rng.random_range(0..4) {
            0 => 0,
            1 => rng.random_range(1..8),
            2 => rng.random_range(8..1500),
            _ => 100_000,
        };
        (0..n)
            .map(|_| rng.random::<u8>())
            .collect::<Vec<u8>>()
            .into()
    };
    for (input, frames) in [
        (Codec::Aac(params), rtmp_times(&aus, 48_000, BASE)),
        (
            Codec::Opus(OpusParams {
                channels: 2,
                sample_rate: 48_000,
            }),
            rtp_times(&packets, BASE),
        ),
    ] {
        let mut bridge = Bridge::new(&input, &BridgeConfig::default()).unwrap();
        let mut out = Vec::new();
        let mut bad = 0;
        for (i, f) in frames.iter().enumerate() {
            if i % 7 == 3 {
                // A damaged frame in place of a good one.
                let mut g = f.clone();
                g.data = garbage(&mut rng);
                bridge.push_into(&g, &mut out);
                bad += 1;
            } else {
                bridge.push_into(f, &mut out);
            }
            // Video frames and junk with wild timestamps never disturb the audio.
            let mut v = f.clone();
            v.kind = TrackKind::Video;
            bridge.push_into(&v, &mut out);
        }
        let s = bridge.stats();
        assert!(s.decode_errors > 0 && s.decode_errors <= bad, "{s:?}");
        assert_eq!(
            s.frames_in,
            frames.len() as u64,
            "video frames are not counted"
        );
        assert!(!out.is_empty());
        for w in out.windows(2) {
            assert!(w[1].pts > w[0].pts);
        }
        // Pure garbage at extreme times.
        for t in [i64::MIN, -1, 0, i64::MAX / 2, i64::MAX] {
            for _ in 0..20 {
                let g = audio_frame(t, garbage(&mut rng));
                bridge.push_into(&g, &mut out);
            }
        }
        let _ = bridge.flush();
        bridge.reset();
    }
}

#[test]
fn bridges_move_between_threads() {
    fn send<T: Send>() {}
    send::<Bridge>();
}

#[test]
fn construction_refuses_what_it_cannot_do() {
    let h264 = Codec::H264(crate::media::H264Params {
        avcc: Bytes::new(),
        sps: vec![],
        pps: vec![],
        profile_idc: 66,
        constraint_flags: 0,
        level_idc: 30,
        width: 2,
        height: 2,
        nalu_length_size: 4,
    });
    let cfg = BridgeConfig::default();
    assert!(matches!(
        Bridge::new(&h264, &cfg),
        Err(BridgeError::NotAudio("H264"))
    ));
    let opus = Codec::Opus(OpusParams {
        channels: 2,
        sample_rate: 48_000,
    });
    assert!(Bridge::for_webrtc(&opus, &cfg).unwrap().is_none());
    let aac = parse_asc(Bytes::from_static(&[0x12, 0x10])).unwrap();
    assert!(Bridge::for_aac_egress(&Codec::Aac(aac.clone()), &cfg)
        .unwrap()
        .is_none());
    // AAC Main (object type 1) parses but fdk has no Main-profile decoder.
    let main = parse_asc(Bytes::from_static(&[0x0a, 0x10])).unwrap();
    assert!(matches!(
        Bridge::new(&Codec::Aac(main), &cfg),
        Err(BridgeError::Unsupported(_))
    ));
    // An explicit rate no resampler chunk fits.
    let mut odd = aac.clone();
    odd.sample_rate = 44_101;
    assert!(Bridge::new(&Codec::Aac(odd), &cfg).is_err());
    // Bad configurations.
    let mut c = cfg;
    c.opus.channels = 3;
    assert!(matches!(
        Bridge::new(&Codec::Aac(aac), &c),
        Err(BridgeError::Config(_))
    ));
    // Mono AAC out.
    let mut c = cfg;
    c.aac.channels = 1;
    let Some(Codec::Aac(mono)) = Bridge::new(&opus, &c).unwrap().params() else {
        panic!("AAC out")
    };
    assert_eq!((mono.sample_rate, mono.channels), (48_000, 1));
    let mut c = cfg;
    c.aac.sample_rate = 32_000;
    assert!(matches!(
        Bridge::new(&opus, &c),
        Err(BridgeError::Config(_))
    ));
    assert!(BridgeError::NotAudio("H264")
        .to_string()
        .contains("not audio"));
}

/// HE-AAC (v1: SBR, v2: SBR + parametric stereo), which encoders such as OBS can be set to send:
/// ffmpeg has no HE-AAC encoder, so fdk-aac's encoder makes the input here.
#[test]
fn he_aac_v1_and_v2_to_opus() {
    use fdk_aac::enc::{AudioObjectType, BitRate, ChannelMode, Encoder, EncoderParams, Transport};
    let dir = tempfile::tempdir().unwrap();
    let secs = 2.0;
    let pcm: Vec<i16> = (0..(48_000.0 * secs) as usize)
        .flat_map(|i| {
            let v = (2.0 * std::f64::consts::PI * TONE * i as f64 / 48_000.0).sin() * 0.125;
            let s = (v * 32767.0) as i16;
            [s, s]
        })
        .collect();
    for (aot, want) in [
        (AudioObjectType::Mpeg4HeAac, 5),
        (AudioObjectType::Mpeg4HeAacV2, 29),
    ] {
        let enc = Encoder::new(EncoderParams {
            bit_rate: BitRate::Cbr(64_000),
            sample_rate: 48_000,
            transport: Transport::Raw,
            channels: ChannelMode::Stereo,
            audio_object_type: aot,
        })
        .unwrap();
        let info = enc.info().unwrap();
        let params = parse_asc(Bytes::copy_from_slice(
            &info.confBuf[..info.confSize as usize],
        ))
        .unwrap();
        assert_eq!((params.object_type, params.sample_rate), (want, 24_000));
        let mut buf = vec![0u8; 8192];
        let mut frames = Vec::new();
        for chunk in pcm.chunks_exact(4096) {
            let r = enc.encode(chunk, &mut buf).unwrap();
            if r.output_size > 0 {
                // 2048 output samples at 48 kHz (1024 core samples at 24 kHz) per access unit.
                let pts = BASE + frames.len() as i64 * 3840;
                frames.push(audio_frame(pts, buf[..r.output_size].to_vec()));
            }
        }
        let mut bridge = Bridge::new(&Codec::Aac(params), &BridgeConfig::default()).unwrap();
        let out = run(&mut bridge, &frames);
        let s = bridge.stats();
        assert_eq!(
            (s.decode_errors, s.gaps_filled, s.discontinuities),
            (0, 0, 0),
            "{s:?}"
        );
        assert_continuous(&out, &[1800]);
        assert_eq!(out[0].pts, BASE);
        let pcm = ffmpeg_decode(
            dir.path(),
            &format!("he{want}.opus"),
            &write_ogg_opus(2, &out),
            48_000,
        );
        let input_secs = frames.len() as f64 * 2048.0 / 48_000.0;
        // The encoder's own delay (about 0.1 s of silence) is part of the stream.
        assert_tone(
            &pcm[5058..],
            48_000,
            input_secs - 5058.0 / 48_000.0,
            &format!("HE-AAC ({want}) → Opus"),
        );
    }
}
