//! In-process tests of the push engine: a real `Registry` and `Publisher`, the engine's threads,
//! and destinations that are test RTMP servers built on rml_rtmp's `ServerSession` (plain and
//! behind a rustls terminator), some of which misbehave on purpose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::media::{AacParams, Codec, KickSignal, OpusParams, Publisher, TrackKind};

// ───────────────────────────── test RTMP server ─────────────────────────────

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Answer `publish` with NetStream.Publish.BadName ("already publishing").
    RejectPublish,
    /// Accept the publish, read this many media messages, then stop reading (keep the socket).
    StallAfter(usize),
    /// Drop the connection after this many media messages, on the first connection only.
    ResetFirstAfter(usize),
}

#[derive(Clone, Debug)]
struct Msg {
    conn: usize,
    kind: char, // 'v', 'a', 'm' (metadata)
    ts: u32,
    data: Bytes,
}

struct TestServer {
    addr: SocketAddr,
    msgs: Arc<Mutex<Vec<Msg>>>,
    conns: Arc<Mutex<usize>>,
    keys: Arc<Mutex<Vec<String>>>,
    _rt: tokio::runtime::Runtime,
}

impl TestServer {
    fn start(mode: Mode) -> TestServer {
        Self::start_inner(mode, None)
    }

    fn start_tls(mode: Mode) -> TestServer {
        Self::start_inner(mode, Some(testkit::faults::self_signed_acceptor()))
    }

    fn start_inner(mode: Mode, tls: Option<tokio_rustls::TlsAcceptor>) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(0usize));
        let keys = Arc::new(Mutex::new(Vec::new()));
        {
            let (msgs, conns, keys) = (msgs.clone(), conns.clone(), keys.clone());
            rt.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        return;
                    };
                    let conn = {
                        let mut c = conns.lock();
                        *c += 1;
                        *c
                    };
                    let (msgs, keys, tls) = (msgs.clone(), keys.clone(), tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            Some(acc) => {
                                if let Ok(s) = acc.accept(sock).await {
                                    let _ = serve_conn(s, mode, conn, msgs, keys).await;
                                }
                            }
                            None => {
                                let _ = serve_conn(sock, mode, conn, msgs, keys).await;
                            }
                        }
                    });
                }
            });
        }
        TestServer {
            addr,
            msgs,
            conns,
            keys,
            _rt: rt,
        }
    }

    fn url(&self, scheme: &str, key: &str) -> String {
        format!("{scheme}://{}/app/{key}", self.addr)
    }

    fn msgs(&self) -> Vec<Msg> {
        self.msgs.lock().clone()
    }

    fn media_count(&self) -> usize {
        self.msgs.lock().iter().filter(|m| m.kind != 'm').count()
    }
}

async fn serve_conn<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    mode: Mode,
    conn: usize,
    msgs: Arc<Mutex<Vec<Msg>>>,
    keys: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut hs = Handshake::new(PeerType::Server);
    let mut buf = vec![0u8; 64 * 1024];
    let rest = loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        match hs.process_bytes(&buf[..n]).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => {
                s.write_all(&response_bytes).await?
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                s.write_all(&response_bytes).await?;
                break remaining_bytes;
            }
        }
    };
    let (mut session, init) = ServerSession::new(ServerSessionConfig::new()).unwrap();
    let mut out = Vec::new();
    let mut media = 0usize;
    let mut pending = init;
    let mut input = rest;
    loop {
        let mut results = std::mem::take(&mut pending);
        if !input.is_empty() {
            results.extend(session.handle_input(&input).unwrap());
        }
        out.clear();
        let mut i = 0;
        while i < results.len() {
            match &results[i] {
                ServerSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
                ServerSessionResult::RaisedEvent(ev) => match ev {
                    ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                        let more = session.accept_request(*request_id).unwrap();
                        results.extend(more);
                    }
                    ServerSessionEvent::PublishStreamRequested {
                        request_id,
                        stream_key,
                        ..
                    } => {
                        keys.lock().push(stream_key.clone());
                        let more = if mode == Mode::RejectPublish {
                            session
                                .reject_request(
                                    *request_id,
                                    "NetStream.Publish.BadName",
                                    "already publishing",
                                )
                                .unwrap()
                        } else {
                            session.accept_request(*request_id).unwrap()
                        };
                        results.extend(more);
                    }
                    ServerSessionEvent::StreamMetadataChanged { .. } => msgs.lock().push(Msg {
                        conn,
                        kind: 'm',
                        ts: 0,
                        data: Bytes::new(),
                    }),
                    ServerSessionEvent::VideoDataReceived {
                        data, timestamp, ..
                    }
                    | ServerSessionEvent::AudioDataReceived {
                        data, timestamp, ..
                    } => {
                        let kind = if matches!(ev, ServerSessionEvent::VideoDataReceived { .. }) {
                            'v'
                        } else {
                            'a'
                        };
                        msgs.lock().push(Msg {
                            conn,
                            kind,
                            ts: timestamp.value,
                            data: data.clone(),
                        });
                        media += 1;
                    }
                    _ => {}
                },
                _ => {}
            }
            i += 1;
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
        match mode {
            Mode::StallAfter(n) if media >= n => {
                // Keep the socket open, never read again.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Mode::ResetFirstAfter(n) if conn == 1 && media >= n => return Ok(()),
            _ => {}
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        input = buf[..n].to_vec();
    }
}

// ───────────────────────────── publisher helpers ─────────────────────────────

const AVCC: &[u8] = &[
    0x01, 0x64, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41,
    0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99,
    0x60, 0x01, 0x00, 0x06, 0x68, 0xea, 0xe3, 0xcb, 0x22, 0xc0, 0xfd, 0xf8, 0xf8, 0x00,
];

fn h264() -> Codec {
    Codec::H264(crate::media::codec::h264::parse_avcc(Bytes::from_static(AVCC)).unwrap())
}

fn aac() -> Codec {
    Codec::Aac(AacParams {
        asc: Bytes::from_static(&[0x12, 0x10]),
        object_type: 2,
        sample_rate: 44100,
        channels: 2,
    })
}

/// A publisher that emits 30 fps video (GOP of 30) and ~43 fps audio on its own clock.
struct Feed {
    p: Publisher,
    v: i64,
    a: i64,
    frame_bytes: usize,
}

impl Feed {
    fn new(reg: &Arc<Registry>, name: &str, audio: Codec) -> Feed {
        let mut p = reg
            .begin_publish(name, "test".into(), Arc::new(KickSignal::default()))
            .unwrap();
        p.set_codec(h264());
        p.set_codec(audio);
        Feed {
            p,
            v: 0,
            a: 0,
            frame_bytes: 200,
        }
    }

    /// Push `secs` of media as fast as possible (`pace` sleeps between video frames).
    fn run(&mut self, video_frames: usize, pace: Duration) {
        for _ in 0..video_frames {
            let n = self.v / 3000;
            let key = n % 30 == 0;
            let mut data = vec![0u8; self.frame_bytes];
            data[..4].copy_from_slice(&((self.frame_bytes - 4) as u32).to_be_bytes());
            data[4] = if key { 0x65 } else { 0x41 };
            self.p.push(
                TrackKind::Video,
                self.v,
                self.v,
                key,
                Bytes::from(data),
                SystemTime::now(),
                Instant::now(),
            );
            self.v += 3000;
            while self.a < self.v {
                self.p.push(
                    TrackKind::Audio,
                    self.a,
                    self.a,
                    true,
                    Bytes::from_static(b"\x21\x10\x05"),
                    SystemTime::now(),
                    Instant::now(),
                );
                self.a += 2090;
            }
            if !pace.is_zero() {
                std::thread::sleep(pace);
            }
        }
    }
}

fn engine(reg: &Arc<Registry>) -> PushEngine {
    PushEngine::start(reg.clone(), &[], PushOptions::default()).unwrap()
}

fn new_dest(id: &str, url: &str) -> NewDestination {
    NewDestination {
        id: Some(id.into()),
        url: url.into(),
        tls_verify: true,
        max_retries: None,
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn state(e: &PushEngine, stream: &str, id: &str) -> DestState {
    e.get(stream, id).unwrap().state
}

/// Checks what one connection of a destination received: metadata and sequence headers before
/// any frame, a keyframe first, timestamps that never go back per track.
fn check_connection(msgs: &[Msg], conn: usize) -> (u32, u32) {
    let m: Vec<&Msg> = msgs.iter().filter(|m| m.conn == conn).collect();
    assert!(!m.is_empty(), "connection {conn} received nothing");
    let first_video = m.iter().position(|m| m.kind == 'v').unwrap();
    assert_eq!(
        m[first_video].data[1], 0,
        "first video message is the AVC sequence header"
    );
    assert_eq!(&m[first_video].data[5..], AVCC);
    let first_audio = m.iter().position(|m| m.kind == 'a').unwrap();
    assert_eq!(&m[first_audio].data[..], &[0xAF, 0x00, 0x12, 0x10]);
    let frames: Vec<&&Msg> = m
        .iter()
        .filter(|m| m.kind == 'v' && m.data[1] == 1)
        .collect();
    assert_eq!(
        frames[0].data[0], 0x17,
        "the first video frame is a keyframe"
    );
    let mut last = [0u32; 2];
    for x in &m {
        let i = match x.kind {
            'v' => 0,
            'a' => 1,
            _ => continue,
        };
        assert!(
            x.ts >= last[i],
            "timestamp went back on conn {conn}: {} < {}",
            x.ts,
            last[i]
        );
        last[i] = x.ts;
    }
    (
        m.iter()
            .filter(|m| m.kind != 'm')
            .map(|m| m.ts)
            .min()
            .unwrap(),
        last[0].max(last[1]),
    )
}

// ───────────────────────────── tests ─────────────────────────────

#[test]
fn pushes_headers_keyframe_first_and_all_frames_with_monotonic_time() {
    let reg = Registry::new();
    let srv = TestServer::start(Mode::Normal);
    let e = engine(&reg);
    let st = e
        .add(
            "show",
            new_dest("a", &srv.url("rtmp", "secret-key-012345")),
            Source::Api,
        )
        .unwrap();
    assert_eq!(st.url, format!("rtmp://{}/app/se…45", srv.addr));
    assert_eq!(st.state, DestState::Waiting);
    let mut src = Feed::new(&reg, "show", aac());
    src.run(1, Duration::ZERO);
    wait_until("live", Duration::from_secs(10), || {
        state(&e, "show", "a") == DestState::Live
    });
    src.run(90, Duration::from_millis(2));
    wait_until("all frames", Duration::from_secs(10), || {
        e.get("show", "a").unwrap().queue_frames == 0 && srv.media_count() >= 2 + 90 + 128
    });
    let msgs = srv.msgs();
    check_connection(&msgs, 1);
    assert_eq!(*srv.keys.lock(), vec!["secret-key-012345".to_string()]);
    assert!(msgs.iter().any(|m| m.kind == 'm'), "onMetaData sent");
    let st = e.get("show", "a").unwrap();
    assert!(st.frames_sent >= 90 + 128, "{st:?}");
    assert!(st.bytes_sent > 90 * 200, "{st:?}");
    assert_eq!(st.frames_dropped, 0);
    assert_eq!(st.reconnects, 0);
    let json = serde_json::to_string(&e.list("show")).unwrap();
    assert!(!json.contains("secret-key-012345"), "{json}");
}

#[test]
fn a_late_destination_starts_on_the_current_gop_with_headers() {
    let reg = Registry::new();
    let srv = TestServer::start(Mode::Normal);
    let e = engine(&reg);
    let mut src = Feed::new(&reg, "late", aac());
    src.run(45, Duration::ZERO); // GOP 2 started at frame 30
    e.add("late", new_dest("b", &srv.url("rtmp", "k")), Source::Api)
        .unwrap();
    wait_until("snapshot delivered", Duration::from_secs(10), || {
        srv.msgs().iter().filter(|m| m.kind == 'v').count() >= 16
    });
    src.run(30, Duration::from_millis(1));
    wait_until("live frames", Duration::from_secs(10), || {
        srv.msgs().iter().filter(|m| m.kind == 'v').count() >= 46
    });
    let msgs = srv.msgs();
    check_connection(&msgs, 1);
    let video: Vec<&Msg> = msgs
        .iter()
        .filter(|m| m.kind == 'v' && m.data[1] == 1)
        .collect();
    // Frames 30..75 exactly once each: the snapshot (30..45) then the live ones, no replay.
    assert_eq!(video.len(), 45, "{}", video.len());
    assert_eq!(video[0].ts, 0);
    assert!(video
        .windows(2)
        .all(|w| w[1].ts == w[0].ts + 33 || w[1].ts == w[0].ts + 34));
}

#[test]
fn a_reset_destination_backs_off_reconnects_and_keeps_time_monotonic() {
    let reg = Registry::new();
    let srv = TestServer::start(Mode::ResetFirstAfter(40));
    let e = engine(&reg);
    e.add("rs", new_dest("r", &srv.url("rtmp", "k")), Source::Api)
        .unwrap();
    let mut src = Feed::new(&reg, "rs", aac());
    let t0 = Instant::now();
    let mut saw_backoff = false;
    while *srv.conns.lock() < 2 || srv.msgs().iter().filter(|m| m.conn == 2).count() < 40 {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no second connection"
        );
        src.run(1, Duration::from_millis(10));
        saw_backoff |= matches!(
            state(&e, "rs", "r"),
            DestState::Backoff | DestState::Connecting
        );
    }
    assert!(saw_backoff);
    let st = e.get("rs", "r").unwrap();
    assert!(st.reconnects >= 1, "{st:?}");
    assert!(st.last_error.is_some(), "{st:?}");
    let msgs = srv.msgs();
    let (_, end1) = check_connection(&msgs, 1);
    let (start2, _) = check_connection(&msgs, 2);
    assert!(
        start2 >= end1,
        "second connection starts at {start2} ms, first ended at {end1} ms"
    );
}

#[test]
fn programs_rtmp_cannot_carry_are_refused_and_nothing_is_sent() {
    let reg = Registry::new();
    let srv = TestServer::start(Mode::Normal);
    let e = engine(&reg);
    e.add("op", new_dest("o", &srv.url("rtmp", "k")), Source::Api)
        .unwrap();
    // HE-AAC (SBR): platforms want AAC-LC, and a relay does not transcode AAC to AAC.
    let mut src = Feed::new(
        &reg,
        "op",
        Codec::Aac(AacParams {
            asc: Bytes::from_static(&[0x2b, 0x92, 0x08, 0x00]),
            object_type: 5,
            sample_rate: 24000,
            channels: 2,
        }),
    );
    src.run(30, Duration::ZERO);
    wait_until("refused", Duration::from_secs(5), || {
        state(&e, "op", "o") == DestState::Refused
    });
    let st = e.get("op", "o").unwrap();
    assert!(st.reason.is_some(), "{st:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(*srv.conns.lock(), 0, "never connected");
    // The publisher comes back with Opus (a WHIP program): bridged to AAC-LC, the destination
    // goes live.
    drop(src);
    let mut src = Feed::new(
        &reg,
        "op",
        Codec::Opus(OpusParams {
            channels: 2,
            sample_rate: 48000,
        }),
    );
    src.run(1, Duration::ZERO);
    wait_until(
        "live with Opus bridged to AAC",
        Duration::from_secs(10),
        || state(&e, "op", "o") == DestState::Live,
    );
}

#[test]
fn already_publishing_backs_off_and_max_retries_ends_in_failed() {
    let reg = Registry::new();
    let srv = TestServer::start(Mode::RejectPublish);
    let e = engine(&reg);
    let mut d = new_dest("x", &srv.url("rtmp", "k"));
    d.max_retries = Some(1);
    e.add("rej", d, Source::Api).unwrap();
    let _src = {
        let mut s = Feed::new(&reg, "rej", aac());
        s.run(1, Duration::ZERO);
        s
    };
    wait_until("failed", Duration::from_secs(10), || {
        state(&e, "rej", "x") == DestState::Failed
    });
    let st = e.get("rej", "x").unwrap();
    assert_eq!(*srv.conns.lock(), 2, "one try and one retry");
    assert!(
        st.last_error
            .as_deref()
            .unwrap()
            .contains("NetStream.Publish.BadName"),
        "{st:?}"
    );
    assert_eq!(st.reconnects, 2);
}

#[test]
fn a_stalled_destination_is_bounded_and_does_not_slow_a_healthy_one() {
    let reg = Registry::new();
    let stall = TestServer::start(Mode::StallAfter(10));
    let good = TestServer::start(Mode::Normal);
    let limits = QueueLimits {
        max_bytes: 1 << 20,
        max_frames: 1024,
    };
    let e = PushEngine::start(
        reg.clone(),
        &[],
        PushOptions {
            queue: limits,
            ..Default::default()
        },
    )
    .unwrap();
    e.add(
        "st",
        new_dest("stall", &stall.url("rtmp", "k")),
        Source::Api,
    )
    .unwrap();
    e.add("st", new_dest("good", &good.url("rtmp", "k")), Source::Api)
        .unwrap();
    let mut src = Feed::new(&reg, "st", aac());
    src.frame_bytes = 10_000;
    src.run(1, Duration::ZERO);
    wait_until("both live", Duration::from_secs(10), || {
        state(&e, "st", "stall") == DestState::Live && state(&e, "st", "good") == DestState::Live
    });
    // 1500 frames of 10 kB = 15 MB: far more than socket buffers plus the stalled queue.
    src.run(1500, Duration::from_millis(2));
    wait_until(
        "the healthy one got everything",
        Duration::from_secs(20),
        || good.msgs().iter().filter(|m| m.kind == 'v').count() >= 1502,
    );
    let s = e.get("st", "stall").unwrap();
    assert!(s.queue_bytes <= limits.max_bytes, "{s:?}");
    assert!(s.queue_frames <= limits.max_frames, "{s:?}");
    assert!(s.frames_dropped > 100, "{s:?}");
    let g = e.get("st", "good").unwrap();
    assert_eq!(g.frames_dropped, 0, "{g:?}");
    check_connection(&good.msgs(), 1);
}

#[test]
fn rtmps_with_and_without_certificate_verification() {
    let reg = Registry::new();
    let srv = TestServer::start_tls(Mode::Normal);
    let e = engine(&reg);
    let mut off = new_dest("noverify", &srv.url("rtmps", "tls-key"));
    off.tls_verify = false;
    e.add("tls", off, Source::Api).unwrap();
    e.add(
        "tls",
        new_dest("verify", &srv.url("rtmps", "tls-key")),
        Source::Api,
    )
    .unwrap();
    let mut src = Feed::new(&reg, "tls", aac());
    src.run(1, Duration::ZERO);
    wait_until("TLS destination live", Duration::from_secs(10), || {
        state(&e, "tls", "noverify") == DestState::Live
    });
    wait_until(
        "verifying destination refused",
        Duration::from_secs(10),
        || e.get("tls", "verify").unwrap().last_error.is_some(),
    );
    src.run(30, Duration::from_millis(1));
    wait_until("frames over TLS", Duration::from_secs(10), || {
        srv.msgs().iter().filter(|m| m.kind == 'v').count() >= 31
    });
    // The verifying destination's TCP connection may be accepted first (and then fail its TLS
    // handshake), so the media connection's number is read off the messages, not assumed.
    let msgs = srv.msgs();
    let media_conn = msgs.iter().find(|m| m.kind == 'v').unwrap().conn;
    check_connection(&msgs, media_conn);
    let v = e.get("tls", "verify").unwrap();
    let err = v.last_error.unwrap();
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(matches!(
        v.state,
        DestState::Backoff | DestState::Connecting
    ));
    assert!(e.get("tls", "noverify").unwrap().tls);
}

#[test]
fn add_list_remove_ids_and_limits() {
    let reg = Registry::new();
    let e = engine(&reg);
    let mk = |url: &str| NewDestination {
        id: None,
        url: url.into(),
        tls_verify: true,
        max_retries: None,
    };
    let a = e
        .add("s", mk("rtmp://127.0.0.1:9/app/k1"), Source::Api)
        .unwrap();
    let b = e
        .add("s", mk("rtmp://127.0.0.1:9/app/k2"), Source::Api)
        .unwrap();
    assert_eq!((a.id.as_str(), b.id.as_str()), ("127.0.0.1", "127.0.0.1-2"));
    assert_eq!(
        e.add("s", new_dest("127.0.0.1", "rtmp://h/a/k"), Source::Api)
            .err(),
        Some(PushError::Exists {
            stream: "s".into(),
            id: "127.0.0.1".into()
        })
    );
    assert!(matches!(
        e.add("s", mk("http://h/a/k"), Source::Api),
        Err(PushError::Invalid(_))
    ));
    assert!(matches!(
        e.add("bad name", mk("rtmp://h/a/k"), Source::Api),
        Err(PushError::Invalid(_))
    ));
    assert!(matches!(
        e.add("s", new_dest("no/slash", "rtmp://h/a/k"), Source::Api),
        Err(PushError::Invalid(_))
    ));
    assert_eq!(e.list("s").len(), 2);
    assert_eq!(e.list("other").len(), 0);
    e.remove("s", "127.0.0.1").unwrap();
    assert_eq!(e.list("s").len(), 1);
    assert!(matches!(
        e.remove("s", "127.0.0.1"),
        Err(PushError::NotFound { .. })
    ));
    for i in 0..MAX_DESTINATIONS_PER_STREAM - 1 {
        e.add("s", mk(&format!("rtmp://h{i}/a/k")), Source::Api)
            .unwrap();
    }
    assert_eq!(
        e.add("s", mk("rtmp://h/a/k"), Source::Api).err(),
        Some(PushError::TooMany(MAX_DESTINATIONS_PER_STREAM))
    );
    let mut r = PromRegistry::with_prefix("deltacast");
    e.encode_metrics(&mut r);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
    assert!(
        text.contains(
            "deltacast_push_destination_state{stream=\"s\",destination=\"h0\",state=\"waiting\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("deltacast_push_sent_bytes_total{stream=\"s\",destination=\"h0\"} 0"));
}

#[test]
fn a_destination_removed_while_live_ends_its_publish() {
    let reg = Registry::new();
    let srv = TestServer::start(Mode::Normal);
    let e = engine(&reg);
    e.add("rm", new_dest("d", &srv.url("rtmp", "k")), Source::Api)
        .unwrap();
    let mut src = Feed::new(&reg, "rm", aac());
    src.run(1, Duration::ZERO);
    wait_until("live", Duration::from_secs(10), || {
        state(&e, "rm", "d") == DestState::Live
    });
    e.remove("rm", "d").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = srv.media_count();
    src.run(30, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(srv.media_count(), before, "nothing sent after removal");
    assert!(e.list("rm").is_empty());
}

/// The `[[destinations]]` of a config, as `check-config` sees them: errors name the stream.
#[test]
fn check_config_rejects_bad_destinations_by_stream() {
    let dests = |text: &str| crate::config::Config::from_toml(text).unwrap().destinations;
    check_config(&dests(
        "[[destinations]]\nstream = \"show\"\nurl = \"rtmp://h/live2/k\"\n\n\
         [[destinations]]\nstream = \"show\"\nurl = \"rtmps://h/app/k\"\n",
    ))
    .unwrap();
    for (bad, word) in [
        (
            "[[destinations]]\nstream = \"show\"\nurl = \"http://h/a/k\"\n",
            "destinations (stream 'show'): url",
        ),
        (
            "[[destinations]]\nstream = \"show\"\nid = \"a b\"\nurl = \"rtmp://h/a/k\"\n",
            "destinations (stream 'show'): id",
        ),
    ] {
        let e = check_config(&dests(bad)).unwrap_err();
        assert!(e.contains(word), "{bad}: {e}");
    }
}
