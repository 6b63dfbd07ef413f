//! Criterion benches for the RTMP push path: the per-frame cost of fanning one frame out to N
//! destinations (N = 1, 5, 20), without sockets.
//!
//! - `push_fanout/queue/N`: FLV tag built once (the one copy per stream), then pushed by reference
//!   into N destination queues (lock, bound checks, wake) and popped again, as the fan-out thread
//!   and the connection tasks do.
//! - `push_fanout/chunk/N`: the same, plus what each connection does with the tag: its own RTMP
//!   message header in front of the shared, already chunked body (no copy per destination).
//! - `push_fanout/rml_serialize/N`: for comparison, chunking each destination's copy through
//!   rml_rtmp's `ClientSession` serializer (what a naive per-session relay does).
//!
//! The program is ~4 Mb/s: 30 fps video with a 2 s GOP (60 KB keyframes, ~15 KB others) and
//! 48 kHz AAC (~47 frames/s of 370 bytes); one iteration is one frame, in stream order.
//! Run: `cargo bench --bench push`. Sockets, TLS and the kernel are measured end to end by
//! `loadtest/bench-push.sh`.

use std::sync::Arc;
use std::time::SystemTime;

mod common;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use deltacast::egress::push::chunk::Segments;
use deltacast::egress::push::{
    detached_destination, drain_detached, Fanout, FanoutStats, QueueLimits,
};
use deltacast::media::{Envelope, Frame, MediaEvent, TrackKind};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, ServerSession, ServerSessionConfig, ServerSessionEvent,
    ServerSessionResult,
};
use rml_rtmp::time::RtmpTimestamp;

/// An endless 4 Mb/s program: video and audio frames interleaved in dts order.
struct Program {
    key: Bytes,
    inter: Bytes,
    audio: Bytes,
    v: i64,
    a: i64,
    n: u64,
}

impl Program {
    fn new() -> Self {
        let payload = |len: usize, nal: u8| {
            let mut d = vec![0x5au8; len];
            d[..4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
            d[4] = nal;
            Bytes::from(d)
        };
        Program {
            key: payload(60_000, 0x65),
            inter: payload(15_000, 0x41),
            audio: Bytes::from(vec![0x21u8; 370]),
            v: 0,
            a: 0,
            n: 0,
        }
    }

    fn next(&mut self) -> Arc<Frame> {
        let f = if self.a < self.v {
            let f = Frame {
                kind: TrackKind::Audio,
                dts: self.a,
                pts: self.a,
                keyframe: true,
                data: self.audio.clone(),
                wallclock: SystemTime::UNIX_EPOCH,
            };
            self.a += 1920; // 1024 samples at 48 kHz in 90 kHz ticks
            f
        } else {
            let key = self.n == 0;
            self.n = (self.n + 1) % 60;
            let f = Frame {
                kind: TrackKind::Video,
                dts: self.v,
                pts: self.v,
                keyframe: key,
                data: if key {
                    self.key.clone()
                } else {
                    self.inter.clone()
                },
                wallclock: SystemTime::UNIX_EPOCH,
            };
            self.v += 3000;
            f
        };
        Arc::new(f)
    }
}

fn env(stream: &Arc<str>, event: MediaEvent) -> Envelope {
    Envelope {
        stream: stream.clone(),
        event,
    }
}

/// A client session in the publishing state, driven against an in-memory server session.
fn publishing_session() -> ClientSession {
    let mut cfg = ClientSessionConfig::new();
    cfg.chunk_size = 4096;
    let (mut client, _) = ClientSession::new(cfg).unwrap();
    let (mut server, init) = ServerSession::new(ServerSessionConfig::new()).unwrap();
    let mut to_client: Vec<u8> = outbound_s(init);
    let mut to_server: Vec<u8> = outbound_c(vec![client.request_connection("app".into()).unwrap()]);
    for _ in 0..20 {
        if !to_server.is_empty() {
            let res = server
                .handle_input(&std::mem::take(&mut to_server))
                .unwrap();
            for r in res {
                match r {
                    ServerSessionResult::OutboundResponse(p) => to_client.extend(p.bytes),
                    ServerSessionResult::RaisedEvent(
                        ServerSessionEvent::ConnectionRequested { request_id, .. }
                        | ServerSessionEvent::PublishStreamRequested { request_id, .. },
                    ) => to_client.extend(outbound_s(server.accept_request(request_id).unwrap())),
                    _ => {}
                }
            }
        }
        if !to_client.is_empty() {
            let res = client
                .handle_input(&std::mem::take(&mut to_client))
                .unwrap();
            for r in res {
                match r {
                    ClientSessionResult::OutboundResponse(p) => to_server.extend(p.bytes),
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::ConnectionRequestAccepted,
                    ) => to_server.extend(outbound_c(vec![client
                        .request_publishing("key".into(), PublishRequestType::Live)
                        .unwrap()])),
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::PublishRequestAccepted,
                    ) => return client,
                    _ => {}
                }
            }
        }
    }
    panic!("the in-memory session did not reach publishing");
}

fn outbound_s(r: Vec<ServerSessionResult>) -> Vec<u8> {
    r.into_iter()
        .filter_map(|r| match r {
            ServerSessionResult::OutboundResponse(p) => Some(p.bytes),
            _ => None,
        })
        .flatten()
        .collect()
}

fn outbound_c(r: Vec<ClientSessionResult>) -> Vec<u8> {
    r.into_iter()
        .filter_map(|r| match r {
            ClientSessionResult::OutboundResponse(p) => Some(p.bytes),
            _ => None,
        })
        .flatten()
        .collect()
}

fn bench_fanout(c: &mut Criterion) {
    let stream: Arc<str> = Arc::from("bench");
    let mut g = c.benchmark_group("push_fanout");
    g.throughput(Throughput::Elements(1));
    for n in [1usize, 5, 20] {
        // Queue only.
        let mut fan = Fanout::new(Arc::new(FanoutStats::default()));
        let dests: Vec<_> = (0..n)
            .map(|i| detached_destination("bench", &format!("d{i}"), QueueLimits::default()))
            .collect();
        for d in &dests {
            fan.attach(d.clone(), true, None);
        }
        fan.on_event(env(&stream, MediaEvent::Tracks(common::tracks())));
        let mut prog = Program::new();
        g.bench_with_input(BenchmarkId::new("queue", n), &n, |b, _| {
            b.iter(|| {
                fan.on_event(env(&stream, MediaEvent::Frame(prog.next())));
                for d in &dests {
                    black_box(drain_detached(d));
                }
            })
        });

        // Queue + per-destination RTMP message headers in front of the shared chunked bodies.
        let mut segs: Vec<Segments> = (0..n).map(|_| Segments::default()).collect();
        let mut ts = 0u32;
        g.bench_with_input(BenchmarkId::new("chunk", n), &n, |b, _| {
            b.iter(|| {
                fan.on_event(env(&stream, MediaEvent::Frame(prog.next())));
                ts = ts.wrapping_add(13);
                for (d, s) in dests.iter().zip(segs.iter_mut()) {
                    s.clear();
                    for tag in drain_detached(d) {
                        s.message(1, ts, &tag.body);
                    }
                    black_box(s.bytes);
                }
            })
        });

        // The same with rml_rtmp's own serializer (one copy per destination), for comparison.
        let mut sessions: Vec<ClientSession> = (0..n).map(|_| publishing_session()).collect();
        let mut sink = Vec::with_capacity(1 << 20);
        g.bench_with_input(BenchmarkId::new("rml_serialize", n), &n, |b, _| {
            b.iter(|| {
                fan.on_event(env(&stream, MediaEvent::Frame(prog.next())));
                for (d, s) in dests.iter().zip(sessions.iter_mut()) {
                    for tag in drain_detached(d) {
                        let ts = RtmpTimestamp::new(tag.ms() as u32);
                        let body = tag.body.payload();
                        let r = match tag.kind {
                            TrackKind::Video => s.publish_video_data(body, ts, false),
                            TrackKind::Audio => s.publish_audio_data(body, ts, false),
                        }
                        .unwrap();
                        if let ClientSessionResult::OutboundResponse(p) = r {
                            sink.clear();
                            sink.extend_from_slice(&p.bytes);
                        }
                    }
                }
                black_box(&sink);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_fanout);
criterion_main!(benches);
