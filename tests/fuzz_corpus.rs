//! Replays the fuzz corpus (fuzz/corpus/<target>/*) and a bounded number of mutations of it
//! through the same entry points the cargo-fuzz targets use. A panic anywhere fails the test.
//! Deterministic (fixed seed) and bounded in count, so CI time stays flat.

use std::path::Path;

use deltacast::fuzzing;

type Target = fn(&[u8]);

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                v.push(b);
            }
        }
    }
    assert!(
        !v.is_empty(),
        "fuzz corpus {} is empty or missing",
        dir.display()
    );
    v
}

/// xorshift: a fixed-seed generator, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..(1 + rng.next() % 8) {
        match rng.next() % 5 {
            0 if !v.is_empty() => {
                let i = (rng.next() as usize) % v.len();
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let i = (rng.next() as usize) % v.len();
                v.truncate(i);
            }
            2 => {
                let i = (rng.next() as usize) % (v.len() + 1);
                let n = (rng.next() % 16) as usize;
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, junk);
            }
            3 if v.len() > 4 => {
                // Interesting values for length fields.
                let i = (rng.next() as usize) % (v.len() - 4);
                let val: [u8; 4] = [[0xff; 4], [0; 4], [0x7f, 0xff, 0xff, 0xff], [0, 0, 0, 1]]
                    [(rng.next() % 4) as usize];
                v[i..i + 4].copy_from_slice(&val);
            }
            _ => {
                let n = (rng.next() % 64) as usize;
                v.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
    v
}

fn replay(name: &str, target: Target, mutations: usize) {
    let seeds = corpus(name);
    for s in &seeds {
        target(s);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    for i in 0..mutations {
        let seed = &seeds[i % seeds.len()];
        target(&mutate(&mut rng, seed));
    }
}

#[test]
fn rtmp_session_corpus() {
    replay("rtmp_session", fuzzing::rtmp_session, 3000);
}

#[test]
fn flv_tags_corpus() {
    replay("flv_tags", fuzzing::flv_tags, 5000);
}

#[test]
fn codec_config_corpus() {
    replay(
        "codec_config",
        |d| {
            fuzzing::avcc(d);
            fuzzing::asc(d);
            fuzzing::flv_file(d);
        },
        5000,
    );
}

#[test]
fn hls_request_corpus() {
    replay("hls_request", fuzzing::hls_request, 5000);
}

#[test]
fn webrtc_ingest_corpus() {
    replay("webrtc_ingest", fuzzing::webrtc_ingest, 3000);
}

#[test]
fn config_corpus() {
    replay("config", fuzzing::config, 2000);
}

/// Writes the seed corpus from real data (the demo clip, an in-memory RTMP publish between
/// rml_rtmp's client and server sessions). Run by hand when the formats change:
/// `cargo test --test fuzz_corpus -- --ignored regenerate`.
#[test]
#[ignore = "regenerates fuzz/corpus; run by hand"]
fn regenerate() {
    use bytes::Bytes;
    use deltacast::ingest::demo::demo_tags;
    use deltacast::media::TrackKind;
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionResult, PublishRequestType, ServerSession,
        ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
    };
    use rml_rtmp::time::RtmpTimestamp;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, data: &[u8]| {
        let d = root.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };
    let tags = demo_tags().unwrap();

    // FLV tag bodies: selector byte (even = video) + body, separated by 0xF7.
    let mut flv = Vec::new();
    for (i, t) in tags.iter().take(40).enumerate() {
        flv.push(if t.kind == TrackKind::Video { 2 } else { 3 });
        flv.extend_from_slice(&t.body);
        flv.push(0xF7);
        if i == 5 {
            write("flv_tags", "first-tags", &flv);
        }
    }
    write("flv_tags", "forty-tags", &flv);

    // Codec configs and a short FLV file.
    let vseq = tags
        .iter()
        .find(|t| t.kind == TrackKind::Video && t.is_sequence_header())
        .unwrap();
    let aseq = tags
        .iter()
        .find(|t| t.kind == TrackKind::Audio && t.is_sequence_header())
        .unwrap();
    write("codec_config", "avcc", &vseq.body[5..]);
    write("codec_config", "asc", &aseq.body[2..]);
    let file = deltacast::ingest::demo::DEMO_FLV;
    write("codec_config", "flv-head", &file[..file.len().min(4096)]);

    // RTMP: client → server bytes of connect + publish + media, after the handshake.
    let (mut client, init) = ClientSession::new(ClientSessionConfig::new()).unwrap();
    let (mut server, server_init) = ServerSession::new(ServerSessionConfig::new()).unwrap();
    for r in server_init {
        if let ServerSessionResult::OutboundResponse(p) = r {
            client.handle_input(&p.bytes).unwrap();
        }
    }
    let mut wire = Vec::new();
    let mut pump = |results: Vec<ClientSessionResult>,
                    client: &mut ClientSession,
                    wire: &mut Vec<u8>| {
        let mut pending = results;
        for _ in 0..20 {
            let mut next = Vec::new();
            for r in pending.drain(..) {
                if let ClientSessionResult::OutboundResponse(p) = r {
                    wire.extend_from_slice(&p.bytes);
                    for sr in server.handle_input(&p.bytes).unwrap() {
                        match sr {
                            ServerSessionResult::OutboundResponse(sp) => {
                                next.extend(client.handle_input(&sp.bytes).unwrap());
                            }
                            ServerSessionResult::RaisedEvent(
                                ServerSessionEvent::ConnectionRequested { request_id, .. }
                                | ServerSessionEvent::PublishStreamRequested { request_id, .. },
                            ) => {
                                for ar in server.accept_request(request_id).unwrap() {
                                    if let ServerSessionResult::OutboundResponse(sp) = ar {
                                        next.extend(client.handle_input(&sp.bytes).unwrap());
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            pending = next;
        }
    };
    pump(init, &mut client, &mut wire);
    let r = client.request_connection("live".into()).unwrap();
    pump(vec![r], &mut client, &mut wire);
    let r = client
        .request_publishing("demo".into(), PublishRequestType::Live)
        .unwrap();
    pump(vec![r], &mut client, &mut wire);
    write("rtmp_session", "connect-publish", &{
        let mut v = vec![17u8];
        v.extend_from_slice(&wire);
        v
    });
    for t in tags.iter().take(12) {
        let ts = RtmpTimestamp::new(t.timestamp_ms as u32);
        let body = Bytes::clone(&t.body);
        let p = match t.kind {
            TrackKind::Video => client.publish_video_data(body, ts, false).unwrap(),
            TrackKind::Audio => client.publish_audio_data(body, ts, false).unwrap(),
        };
        pump(vec![p], &mut client, &mut wire);
    }
    let mut v = vec![63u8];
    v.extend_from_slice(&wire);
    write("rtmp_session", "publish-media", &v);

    for (n, q) in [
        ("msn-part", "_HLS_msn=5&_HLS_part=2"),
        ("skip", "_HLS_msn=5&_HLS_skip=YES"),
        ("seg", "seg12.m4s"),
        ("part", "part3.4.m4s"),
        ("init", "init1.mp4"),
    ] {
        write("hls_request", n, q.as_bytes());
    }
    write(
        "config",
        "full",
        b"[server]\nhttp_listen = \"127.0.0.1:8080\"\nadmin_token = \"t\"\n[rtmp]\napp = \"live\"\n[hls]\npart_target_ms = 200\nsegment_target_ms = 2000\n[[streams]]\nname = \"town-hall\"\nkeys = [\"k1\"]\n",
    );
}
