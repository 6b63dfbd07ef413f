//! Criterion benches for the WebRTC SFU's per-packet fan-out path, in process, on a virtual clock
//! (no sockets, no kernel):
//!
//! - `sfu_fanout/<profile>/<viewers>`: one live video frame (10 RTP payloads of 1,200 bytes,
//!   packetized once, shared `Arc<[u8]>`) handed to a `WorkerCore` whose viewers are real str0m
//!   `Rtc`s (ICE-lite, RTP mode, built by `build_viewer_rtc`) connected over ICE + DTLS to str0m
//!   clients. Per viewer and packet that is what the worker does live: `RtpWrite` → str0m header
//!   write + SRTP encryption → `poll_output` → the datagram moved into the worker's send batch.
//!   One iteration = one frame to every viewer; the throughput is SRTP packets, so criterion's
//!   "thrpt" is packets/s on one core and time / (10 × viewers) is ns per packet.
//! - `<profile>`: `aes256gcm` is what str0m 0.25 / dimpl 0.9 negotiates with every client that
//!   offers it (str0m clients and browsers do: dimpl's server picks AES-256-GCM, AES-128-GCM,
//!   AES-CM-HMAC-SHA1-80 in that order, and neither side can be configured to offer less).
//!   `aes128gcm` and `aes128cm_sha1_80` are forced here by a DTLS provider wrapper that relabels
//!   the exported keying material on both peers (same bytes on both sides, so SRTP works; the key
//!   split is not RFC 5764's for those two, which does not change the cipher's cost).
//! - `sfu_memory` (printed, not timed): heap bytes held per connected viewer by the worker (str0m
//!   `Rtc` + session state), measured with a counting allocator: live bytes with N viewers that
//!   have streamed 5 s (virtual) of 1 Mb/s-like video, minus live bytes after dropping the worker.
//! - `sfu_packetize/*`: the router's one-per-stream step, one H.264 access unit → RTP payloads
//!   (AVCC → single NAL / FU-A / STAP-A, one copy into the shared payloads), per frame.
//!
//! Run: `cargo bench --bench sfu`. Sockets, the UDP drivers (epoll, io_uring), ICE/DTLS set-up and
//! loss/latency under load are measured end to end by `loadtest/bench-sfu.sh`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use deltacast::egress::sfu::packetizer::{H264Packetizer, RtpPayload};
use deltacast::egress::sfu::worker::{Timing, WorkerCore};
use deltacast::egress::sfu::{answer_in_process, MediaMsg, SessionTable, SfuFrame, WorkerShared};
use deltacast::media::TrackKind;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, KeyingMaterial,
    ProtocolVersion, SrtpProfile,
};
use str0m::crypto::{CryptoError, CryptoProvider};
use str0m::{Event, Input};
use testkit::peer::{Peer, Role};

/// Counts live heap bytes (for `sfu_memory`); otherwise the system allocator.
struct Counting;
static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only adds bookkeeping.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        std::alloc::System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        std::alloc::System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        std::alloc::System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        std::alloc::System.realloc(p, l, n)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SFU: &str = "10.0.0.1:8189";
const PAYLOAD: usize = 1200;
const PACKETS_PER_FRAME: usize = 10;

// ───────────── SRTP profile forcing (both peers of a pair are built under the same setting) ─────────────

/// 0: leave dimpl's choice (AES-256-GCM); 1: AES-128-GCM; 2: AES-128-CM-HMAC-SHA1-80.
static FORCE: AtomicU8 = AtomicU8::new(0);

fn forced() -> Option<SrtpProfile> {
    match FORCE.load(Ordering::Relaxed) {
        1 => Some(SrtpProfile::AEAD_AES_128_GCM),
        2 => Some(SrtpProfile::AES128_CM_SHA1_80),
        _ => None,
    }
}

#[derive(Debug)]
struct ForcingDtls(&'static dyn DtlsProvider);

#[derive(Debug)]
struct ForcingInstance {
    inner: Box<dyn DtlsInstance>,
    profile: Option<SrtpProfile>,
}

impl DtlsProvider for ForcingDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.0.generate_certificate()
    }
    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        v: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        Ok(Box::new(ForcingInstance {
            inner: self.0.new_dtls(cert, now, v, mtu)?,
            profile: forced(),
        }))
    }
}

impl DtlsInstance for ForcingInstance {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active)
    }
    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }
    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        match (self.inner.poll_output(buf), self.profile) {
            (DtlsOutput::KeyingMaterial(km, _), Some(p)) => {
                let len = if p == SrtpProfile::AES128_CM_SHA1_80 {
                    16 * 2 + 14 * 2
                } else {
                    16 * 2 + 12 * 2
                };
                DtlsOutput::KeyingMaterial(KeyingMaterial::new(&km[..len]), p)
            }
            (o, _) => o,
        }
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }
    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }
    fn is_active(&self) -> bool {
        self.inner.is_active()
    }
    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }
    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

fn provider() -> CryptoProvider {
    let base = str0m::crypto::from_feature_flags();
    let dtls: &'static ForcingDtls = Box::leak(Box::new(ForcingDtls(base.dtls_provider)));
    CryptoProvider {
        dtls_provider: dtls,
        ..base
    }
}

// ───────────── in-process peers (as src/egress/sfu/tests.rs) ─────────────

/// A viewer: the shared test peer on an in-memory link, and what it has seen.
struct Client {
    peer: Peer,
    connected: bool,
    media: usize,
}

impl Client {
    fn poll(&mut self, to_sfu: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let (connected, media) = (&mut self.connected, &mut self.media);
        self.peer
            .poll(|_, e| match e {
                Event::Connected => *connected = true,
                Event::MediaData(_) => *media += 1,
                _ => {}
            })
            .expect("client rtc");
        let from = self.peer.local;
        to_sfu.extend(self.peer.take_outbox().into_iter().map(|(_, d)| (from, d)));
    }
}

fn join(core: &mut WorkerCore, cert: &DtlsCert, n: u32, now: Instant) -> Client {
    let addr: SocketAddr = format!("10.0.{}.{}:{}", 1 + n / 250, 2 + n % 250, 5000 + n)
        .parse()
        .unwrap();
    let offered = Peer::offer_in_memory(&Role::viewer().video_only(), addr, now, None);
    let stream = (1000 + n as u64, "show");
    let sfu = SFU.parse().unwrap();
    let answer = answer_in_process(core, cert, stream, &offered.sdp, sfu, Some(0x42), now);
    let peer = offered.accept(&answer);
    Client {
        peer,
        connected: false,
        media: 0,
    }
}

/// Move datagrams both ways (clients ↔ core) and advance the virtual clock. Media the core sends
/// is decrypted by the clients (used while connecting).
fn step(core: &mut WorkerCore, clients: &mut [Client], now: &mut Instant, dt: Duration) {
    *now += dt;
    let mut to_sfu = Vec::new();
    for c in clients.iter_mut() {
        c.peer.rtc.handle_input(Input::Timeout(*now)).unwrap();
        c.poll(&mut to_sfu);
    }
    for (src, data) in to_sfu.drain(..) {
        core.on_datagram(src, &data, *now);
    }
    core.on_timers(*now);
    for _ in 0..4 {
        let out = std::mem::take(&mut core.out);
        if out.is_empty() {
            break;
        }
        for o in out {
            if let Ok(i) = clients.binary_search_by_key(&o.dst, |c| c.peer.local) {
                let c = &mut clients[i];
                c.peer.receive(*now, SFU.parse().unwrap(), &o.data);
                c.poll(&mut to_sfu);
            }
        }
        for (src, data) in to_sfu.drain(..) {
            core.on_datagram(src, &data, *now);
        }
    }
}

struct Source {
    pk: H264Packetizer,
    index: u64,
}

impl Source {
    fn new() -> Self {
        let sps = Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8]);
        let pps = Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]);
        Self {
            pk: H264Packetizer::new(4, vec![sps], vec![pps], PAYLOAD).unwrap(),
            index: 0,
        }
    }

    /// A frame of exactly `PACKETS_PER_FRAME` payloads (the keyframe adds an SPS/PPS STAP-A).
    fn frame(&mut self, key: bool) -> Arc<SfuFrame> {
        self.frame_n(key, PACKETS_PER_FRAME)
    }

    /// A frame of `n` ≥ 2 full payloads (FU-A), plus the STAP-A for a keyframe.
    fn frame_n(&mut self, key: bool, n: usize) -> Arc<SfuFrame> {
        let body_len = n * (PAYLOAD - 2) - 1;
        let mut body = vec![if key { 0x65u8 } else { 0x41 }];
        body.extend((0..body_len).map(|i| (i % 251) as u8 + 1));
        let mut au = (body.len() as u32).to_be_bytes().to_vec();
        au.extend_from_slice(&body);
        let mut packets: Vec<RtpPayload> = Vec::new();
        self.pk.packetize(&au, key, &mut packets).unwrap();
        self.index += 1;
        Arc::new(SfuFrame {
            stream: Arc::from("show"),
            epoch: 1,
            index: self.index,
            kind: TrackKind::Video,
            layer: 0,
            pts: self.index as i64 * 3000,
            keyframe: key,
            bytes: au.len(),
            packets,
            wallclock: SystemTime::now(),
        })
    }
}

/// A worker core with `n` connected viewers, each with its client, under the current profile.
fn setup(cert: &DtlsCert, n: u32) -> (WorkerCore, Vec<Client>, Source, Instant) {
    let mut core = WorkerCore::new(
        0,
        vec![SFU.parse().unwrap()],
        Timing {
            idle: Duration::from_secs(3600),
            connect: Duration::from_secs(3600),
            keyframe_answer: Duration::from_secs(1),
            bwe_initial: 1_500_000,
        },
        Arc::new(WorkerShared::default()),
        Arc::new(SessionTable::default()),
        deltacast::media::Registry::new(),
    );
    let mut now = Instant::now();
    let mut src = Source::new();
    core.on_media(MediaMsg::Frame(src.frame(true)), now);
    let mut clients: Vec<Client> = (0..n).map(|i| join(&mut core, cert, i, now)).collect();
    clients.sort_by_key(|c| c.peer.local);
    for _ in 0..500 {
        step(&mut core, &mut clients, &mut now, Duration::from_millis(2));
        if clients.iter().all(|c| c.connected && c.media > 0) {
            break;
        }
    }
    assert!(
        clients.iter().all(|c| c.connected && c.media > 0),
        "all viewers connected and got the cached keyframe"
    );
    (core, clients, src, now)
}

fn bench_fanout(c: &mut Criterion) {
    // Both peers of every pair (client and `build_viewer_rtc`) take the process default.
    provider().install_process_default();
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .unwrap();
    let mut g = c.benchmark_group("sfu_fanout");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (force, name) in [
        (0u8, "aes256gcm"),
        (1, "aes128gcm"),
        (2, "aes128cm_sha1_80"),
    ] {
        for viewers in [1u32, 50] {
            FORCE.store(force, Ordering::Relaxed);
            let (mut core, mut clients, mut src, mut now) = setup(&cert, viewers);
            // One frame's packets to each viewer.
            let per_iter = (PACKETS_PER_FRAME as u64) * viewers as u64;
            g.throughput(Throughput::Elements(per_iter));
            g.bench_function(BenchmarkId::new(name, viewers), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let f = src.frame(false);
                        assert_eq!(f.packets.len(), PACKETS_PER_FRAME);
                        now += Duration::from_millis(33);
                        let t = Instant::now();
                        core.on_media(MediaMsg::Frame(f), now);
                        let out = black_box(std::mem::take(&mut core.out));
                        total += t.elapsed();
                        assert!(out.len() >= PACKETS_PER_FRAME * viewers as usize);
                        drop(out);
                        // Keep ICE consent and RTCP flowing (untimed), once a virtual second.
                        if i % 30 == 29 {
                            step(&mut core, &mut clients, &mut now, Duration::from_millis(1));
                        }
                    }
                    total
                })
            });
        }
    }
    FORCE.store(0, Ordering::Relaxed);
    g.finish();
}

/// Heap held per viewer by the worker, after connecting and after 5 s of streaming.
fn report_memory(_c: &mut Criterion) {
    // Only when benchmarking (`cargo bench`), not in `cargo test --all-targets`' quick pass.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    provider().install_process_default();
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .unwrap();
    FORCE.store(0, Ordering::Relaxed);
    let n = 100u32;
    let live = || LIVE.load(Ordering::Relaxed);
    // Just connected (ICE + DTLS done, the cached keyframe sent).
    let (core, clients, _, _) = setup(&cert, n);
    drop(clients);
    let with_core = live();
    drop(core);
    let at_connect = (with_core - live()) as f64 / n as f64;
    let (mut core, mut clients, mut src, mut now) = setup(&cert, n);
    let mut frames = Vec::new();
    // 5 s at 30 fps of ~1 Mb/s (a 30-packet keyframe every 2 s, 3-packet frames between: ~105
    // packets/s); the frames stay alive (as the GOP cache / NACK history would hold them) so
    // payloads are not counted per viewer.
    for i in 0..150u32 {
        let key = i % 60 == 0;
        let f = src.frame_n(key, if key { 30 } else { 3 });
        frames.push(f.clone());
        now += Duration::from_millis(33);
        core.on_media(MediaMsg::Frame(f), now);
        core.out.clear();
        if i % 30 == 29 {
            step(&mut core, &mut clients, &mut now, Duration::from_millis(1));
        }
    }
    core.out = Vec::new();
    drop(clients);
    let with_core = live();
    drop(core);
    let without = live();
    let per_viewer = (with_core - without) as f64 / n as f64;
    println!(
        "sfu_memory: heap per viewer in the worker (str0m Rtc + session; shared payloads not \
         counted), {n} viewers: {:.1} KB just connected, {:.1} KB after 5 s at ~1 Mb/s",
        at_connect / 1024.0,
        per_viewer / 1024.0
    );
    println!(
        "sfu_memory: size_of::<Rtc>() = {} B, size_of::<str0m::rtp::RtpPacket>() = {} B (one NACK-history entry)",
        std::mem::size_of::<str0m::Rtc>(),
        std::mem::size_of::<str0m::rtp::RtpPacket>()
    );
    drop(frames);
}

fn bench_packetize(c: &mut Criterion) {
    let sps = Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8]);
    let pps = Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]);
    let pk = H264Packetizer::new(4, vec![sps], vec![pps], PAYLOAD).unwrap();
    let mut g = c.benchmark_group("sfu_packetize");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    // ~1 Mb/s at 30 fps with a 2 s GOP: a 30 KB IDR and 3.7 KB P frames (AUD + slice each).
    for (name, key, size) in [("idr_30k", true, 30_000usize), ("p_3k7", false, 3_700)] {
        let mut au = vec![0, 0, 0, 2, 0x09, 0xf0];
        let mut body = vec![if key { 0x65u8 } else { 0x41 }];
        body.extend((0..size - 1).map(|i| (i % 251) as u8 + 1));
        au.extend_from_slice(&(body.len() as u32).to_be_bytes());
        au.extend_from_slice(&body);
        g.throughput(Throughput::Bytes(au.len() as u64));
        let mut out = Vec::with_capacity(64);
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                pk.packetize(black_box(&au), key, &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, report_memory, bench_fanout, bench_packetize);
criterion_main!(benches);
