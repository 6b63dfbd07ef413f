//! Sans-IO tests of the SFU core: real str0m clients (ICE, DTLS, SRTP) talk to a `WorkerCore`
//! through an in-memory network on a virtual clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use str0m::net::Protocol;
use str0m::{Event, Input};
use testkit::peer::{Peer, Role};

use super::packetizer::H264Packetizer;
use super::worker::{stun_local_ufrag, Timing, WorkerCore};
use super::*;
use crate::webrtc::offer::mids as offer_mids;

const SFU: &str = "10.0.0.1:8189";

fn cert() -> str0m::config::DtlsCert {
    str0m::crypto::from_feature_flags().install_process_default();
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .unwrap()
}

/// A viewer: testkit's str0m peer on an in-memory link, and what it received.
struct Client {
    peer: Peer,
    frames: Vec<(bool, Arc<[u8]>, Instant)>,
    connected_at: Option<Instant>,
    mid: str0m::media::Mid,
}

impl Client {
    /// Drain the peer: its transmits go to `to_sfu`, from its own address.
    fn poll(&mut self, now: Instant, to_sfu: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let (frames, connected_at) = (&mut self.frames, &mut self.connected_at);
        self.peer
            .poll(|_, e| match e {
                Event::Connected => *connected_at = Some(now),
                Event::MediaData(m) => frames.push((m.is_keyframe(), m.data.clone(), now)),
                _ => {}
            })
            .unwrap();
        let from = self.peer.local;
        to_sfu.extend(self.peer.take_outbox().into_iter().map(|(_, d)| (from, d)));
    }
}

/// Offer from a client, answered into a viewer on `core`.
fn join(
    core: &mut WorkerCore,
    cert: &str0m::config::DtlsCert,
    n: u16,
    stream: &str,
    now: Instant,
) -> (Client, u64) {
    let addr: SocketAddr = format!("10.0.0.2:{}", 5000 + n).parse().unwrap();
    let offered = Peer::offer_in_memory(&Role::viewer().video_only(), addr, now, None);
    let mid = str0m::media::Mid::from(offer_mids(&offered.sdp)[0].as_str());
    let id = 1000 + n as u64;
    let sfu = SFU.parse().unwrap();
    let answer = answer_in_process(core, cert, (id, stream), &offered.sdp, sfu, Some(0x42), now);
    let peer = offered.accept(&answer);
    (
        Client {
            peer,
            frames: Vec::new(),
            connected_at: None,
            mid,
        },
        id,
    )
}

/// Move datagrams both ways and advance virtual time by `step`.
fn step(core: &mut WorkerCore, clients: &mut [&mut Client], now: &mut Instant, step: Duration) {
    *now += step;
    let mut to_sfu = Vec::new();
    for c in clients.iter_mut() {
        c.peer.rtc.handle_input(Input::Timeout(*now)).unwrap();
        c.poll(*now, &mut to_sfu);
    }
    for (src, data) in to_sfu {
        core.on_datagram(src, &data, *now);
    }
    core.on_timers(*now);
    let out = std::mem::take(&mut core.out);
    for o in out {
        if let Some(c) = clients.iter_mut().find(|c| c.peer.local == o.dst) {
            c.peer.receive(*now, SFU.parse().unwrap(), &o.data);
            let mut back = Vec::new();
            c.poll(*now, &mut back);
            for (src, data) in back {
                core.on_datagram(src, &data, *now);
            }
        }
    }
}

fn avcc(nalus: &[&[u8]]) -> Bytes {
    let mut v = Vec::new();
    for n in nalus {
        v.extend_from_slice(&(n.len() as u32).to_be_bytes());
        v.extend_from_slice(n);
    }
    Bytes::from(v)
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
            pk: H264Packetizer::new(4, vec![sps], vec![pps], 1200).unwrap(),
            index: 0,
        }
    }
    fn frame(&mut self, key: bool, size: usize) -> Arc<SfuFrame> {
        let mut body = vec![if key { 0x65u8 } else { 0x41 }];
        body.extend((0..size).map(|i| (i % 200) as u8 + 1));
        let au = avcc(&[&body]);
        let mut packets = Vec::new();
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
            packets,
            wallclock: SystemTime::now(),
            bytes: au.len(),
        })
    }
}

fn core() -> WorkerCore {
    core_with(crate::media::Registry::new())
}

fn core_with(registry: Arc<crate::media::Registry>) -> WorkerCore {
    WorkerCore::new(
        0,
        vec![SFU.parse().unwrap()],
        Timing {
            idle: Duration::from_secs(5),
            connect: Duration::from_secs(5),
            keyframe_answer: Duration::from_millis(500),
            bwe_initial: 1_500_000,
        },
        Arc::new(WorkerShared::default()),
        Arc::new(SessionTable::default()),
        registry,
    )
}

#[test]
fn stun_username_is_found_and_garbage_is_not() {
    assert_eq!(stun_local_ufrag(b"garbage"), None);
    assert_eq!(stun_local_ufrag(&[0u8; 20]), None);
    let mut m = vec![0x00, 0x01, 0, 12, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[0; 12]);
    m.extend_from_slice(&[0x00, 0x06, 0, 7]);
    m.extend_from_slice(b"ab:cdef\0");
    assert_eq!(stun_local_ufrag(&m), Some("ab"));
    // attribute length past the buffer
    let mut bad = m.clone();
    bad[22] = 0x40;
    assert_eq!(stun_local_ufrag(&bad), None);
}

#[test]
fn viewers_connect_get_the_gop_at_once_and_share_payloads() {
    let cert = cert();
    let mut core = core();
    let mut now = Instant::now();
    let mut src = Source::new();
    // The stream runs before anyone watches: keyframe + 20 P frames in the cache.
    core.on_media(MediaMsg::Frame(src.frame(true, 5000)), now);
    for _ in 0..20 {
        core.on_media(MediaMsg::Frame(src.frame(false, 800)), now);
    }
    let (mut a, ida) = join(&mut core, &cert, 1, "show", now);
    let (mut b, _) = join(&mut core, &cert, 2, "show", now);
    let (mut c, _) = join(&mut core, &cert, 3, "show", now);
    let t0 = now;
    for _ in 0..400 {
        step(
            &mut core,
            &mut [&mut a, &mut b, &mut c],
            &mut now,
            Duration::from_millis(2),
        );
        if [&a, &b, &c].iter().all(|c| !c.frames.is_empty()) {
            break;
        }
    }
    for cl in [&a, &b, &c] {
        assert!(cl.connected_at.is_some(), "ICE + DTLS connected");
        let (key, data, at) = &cl.frames[0];
        assert!(*key, "first frame is the cached keyframe");
        // SPS + PPS + IDR in Annex B
        assert!(data.windows(5).any(|w| w == [0, 0, 0, 1, 0x67]));
        let ttff = at.duration_since(cl.connected_at.unwrap());
        assert!(
            ttff < Duration::from_millis(50),
            "first frame {ttff:?} after connect"
        );
    }
    assert_eq!(core.viewer_count(), 3);
    assert!(core.peer(ida).unwrap().connected());

    // Live frame: the same payload allocation goes to all three viewers (str0m keeps it for
    // NACK); no per-viewer copy before SRTP.
    for _ in 0..30 {
        step(
            &mut core,
            &mut [&mut a, &mut b, &mut c],
            &mut now,
            Duration::from_millis(5),
        );
    }
    let f = src.frame(false, 3000);
    let before: Vec<usize> = f
        .packets
        .iter()
        .map(|p| Arc::strong_count(&p.data))
        .collect();
    assert!(before.iter().all(|&n| n == 1));
    core.on_media(MediaMsg::Frame(f.clone()), now);
    let after: Vec<usize> = f
        .packets
        .iter()
        .map(|p| Arc::strong_count(&p.data))
        .collect();
    // 1 (ours) + 3 viewers' str0m send/NACK history, all pointing at one buffer.
    assert!(after.iter().all(|&n| n == 4), "strong counts {after:?}");
    // Each viewer's packets of the frame are consecutive, equal-size but the last: one UDP GSO
    // message per viewer (what the drivers' GSO grouping relies on).
    let mut runs = Vec::new();
    let mut i = 0;
    while i < core.out.len() {
        let n = crate::io::gso_run(&core.out[i..]);
        runs.push((core.out[i].dst, n));
        i += n;
    }
    let per_viewer = f.packets.len();
    assert!(per_viewer > 1);
    assert_eq!(
        runs,
        [&a, &b, &c].map(|c| (c.peer.local, per_viewer)),
        "{:?}",
        core.out
            .iter()
            .map(|o| (o.dst, o.data.len()))
            .collect::<Vec<_>>()
    );
    let n_before = a.frames.len();
    for _ in 0..20 {
        step(
            &mut core,
            &mut [&mut a, &mut b, &mut c],
            &mut now,
            Duration::from_millis(2),
        );
    }
    assert!(a.frames.len() > n_before, "live frame delivered");
    assert!(now.duration_since(t0) < Duration::from_secs(3));

    // A big frame to the three viewers: the outbox is handed to the driver every FLUSH_AT
    // datagrams instead of holding the whole fan-out.
    let big = src.frame(false, 250_000);
    let per_viewer = big.packets.len();
    assert!(3 * per_viewer > super::worker::FLUSH_AT);
    let mut flushes = Vec::new();
    core.on_media_flushing(MediaMsg::Frame(big), now, &mut |core| {
        flushes.push(core.out.len());
        core.out.clear();
    });
    assert!(
        !flushes.is_empty(),
        "no flush during a {per_viewer}-packet × 3 fan-out"
    );
    assert!(
        flushes
            .iter()
            .all(|&n| n >= super::worker::FLUSH_AT && n < super::worker::FLUSH_AT + per_viewer),
        "flush sizes {flushes:?}"
    );
    assert_eq!(
        flushes.iter().sum::<usize>() + core.out.len(),
        3 * per_viewer,
        "every datagram handed out once"
    );
}

#[test]
fn pli_is_answered_from_cache_rate_limited_and_viewers_time_out() {
    let cert = cert();
    let mut core = core();
    let mut now = Instant::now();
    let mut src = Source::new();
    let (mut a, ida) = join(&mut core, &cert, 1, "show", now);
    for _ in 0..200 {
        step(&mut core, &mut [&mut a], &mut now, Duration::from_millis(2));
        if a.connected_at.is_some() {
            break;
        }
    }
    assert!(a.connected_at.is_some());
    // No cache: the viewer waits for a keyframe; P frames are skipped.
    core.on_media(MediaMsg::Frame(src.frame(false, 500)), now);
    step(&mut core, &mut [&mut a], &mut now, Duration::from_millis(2));
    assert!(a.frames.is_empty());
    core.on_media(MediaMsg::Frame(src.frame(true, 3000)), now);
    core.on_media(MediaMsg::Frame(src.frame(false, 500)), now);
    for _ in 0..20 {
        step(&mut core, &mut [&mut a], &mut now, Duration::from_millis(2));
    }
    assert!(a.frames.first().is_some_and(|f| f.0));
    let got = a.frames.len();
    // Two PLIs in a row: one answer (the cached GOP again), the second waits for the interval.
    let mid = a.mid;
    for _ in 0..2 {
        a.peer
            .rtc
            .writer(mid)
            .unwrap()
            .request_keyframe(None, str0m::media::KeyframeRequestKind::Pli)
            .ok();
        for _ in 0..10 {
            step(&mut core, &mut [&mut a], &mut now, Duration::from_millis(2));
        }
    }
    let st = core.viewer(ida).unwrap().stats;
    assert_eq!(st.keyframe_answers, 1, "rate-limited PLI answers ({st:?})");
    assert!(a.frames.len() > got, "the cache was sent again");
    let pli_wait = st.keyframe_requests > st.keyframe_answers;
    for _ in 0..60 {
        step(
            &mut core,
            &mut [&mut a],
            &mut now,
            Duration::from_millis(10),
        );
    }
    if !pli_wait {
        // str0m's client throttled the second PLI; ask again after the interval.
        a.peer
            .rtc
            .writer(mid)
            .unwrap()
            .request_keyframe(None, str0m::media::KeyframeRequestKind::Pli)
            .ok();
        for _ in 0..10 {
            step(&mut core, &mut [&mut a], &mut now, Duration::from_millis(2));
        }
    }
    let st2 = core.viewer(ida).unwrap().stats;
    assert_eq!(
        st2.keyframe_answers,
        2,
        "{st:?} {st2:?} pending {}",
        core.viewer(ida).unwrap().keyframe_request_pending()
    );

    // The client goes silent: dropped after the idle timeout, its session removed.
    let later = now + Duration::from_secs(6);
    let sent = core.peer(ida).unwrap().link.bytes_out;
    assert!(sent > 0);
    core.on_timers(later);
    assert_eq!(core.viewer_count(), 0);
    // What it was sent is counted for /metrics (sfu_bytes_out) when it leaves.
    let out = core.shared_stats().bytes_out.load(Ordering::Relaxed);
    assert!(out >= sent, "bytes_out {out} < {sent}");
}

#[test]
fn garbage_and_bad_stun_disturb_no_one() {
    let cert = cert();
    let mut core = core();
    let mut now = Instant::now();
    let mut src = Source::new();
    core.on_media(MediaMsg::Frame(src.frame(true, 2000)), now);
    let (mut a, ida) = join(&mut core, &cert, 1, "show", now);
    for _ in 0..200 {
        step(&mut core, &mut [&mut a], &mut now, Duration::from_millis(2));
        if !a.frames.is_empty() {
            break;
        }
    }
    assert!(!a.frames.is_empty());
    let evil: SocketAddr = "10.0.0.66:6666".parse().unwrap();
    let ufrag = core.peer(ida).unwrap().link.local_ufrag.clone();
    // STUN with the right ufrag but a wrong MESSAGE-INTEGRITY.
    let mut stun = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    let user = format!("{ufrag}:evil");
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&[0x00, 0x06]);
    attrs.extend_from_slice(&(user.len() as u16).to_be_bytes());
    attrs.extend_from_slice(user.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    attrs.extend_from_slice(&[0x00, 0x08, 0, 20]);
    attrs.extend_from_slice(&[0xab; 20]);
    let l = attrs.len() as u16;
    stun[2..4].copy_from_slice(&l.to_be_bytes());
    stun.extend_from_slice(&attrs);
    let unknown_before = core_unknown(&core);
    core.on_datagram(evil, &stun, now);
    for junk in [
        &b""[..],
        &[0x80; 12],
        &[0x16, 0xfe, 0xfd, 0, 0],
        &[0xff; 1500],
        &[0x00, 0x01],
    ] {
        core.on_datagram(evil, junk, now);
        core.on_datagram(a.peer.local, junk, now); // junk from the viewer's own address
    }
    assert!(core_unknown(&core) >= unknown_before + 6);
    let n = a.frames.len();
    core.on_media(MediaMsg::Frame(src.frame(false, 1000)), now);
    for _ in 0..10 {
        step(&mut core, &mut [&mut a], &mut now, Duration::from_millis(2));
    }
    assert!(a.frames.len() > n, "viewer still served");
    assert!(core.peer(ida).unwrap().link.dead.is_none());
}

fn core_unknown(core: &WorkerCore) -> u64 {
    core.shared_stats()
        .datagrams_unknown
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn layer_choice_follows_the_estimate_with_upgrade_headroom() {
    use super::session::choose_layer;
    // Layers: 0 = 1.2 Mb/s, 1 = 400 kb/s, 2 = 120 kb/s.
    let rates = [1_200_000, 400_000, 120_000, 0];
    assert_eq!(choose_layer(0, 2_000_000, &rates), 0);
    assert_eq!(choose_layer(0, 1_000_000, &rates), 1);
    assert_eq!(choose_layer(1, 300_000, &rates), 2);
    // Nothing fits: the lowest layer present.
    assert_eq!(choose_layer(0, 50_000, &rates), 2);
    // Upgrades need 20 % headroom; staying needs none.
    assert_eq!(choose_layer(1, 1_300_000, &rates), 1);
    assert_eq!(choose_layer(1, 1_600_000, &rates), 0);
    assert_eq!(choose_layer(0, 1_250_000, &rates), 0);
    // A layer that stopped is skipped; with none present the current one stays.
    assert_eq!(choose_layer(0, 2_000_000, &[0, 400_000, 120_000, 0]), 1);
    assert_eq!(choose_layer(2, 2_000_000, &[0; 4]), 2);
}

/// [`step`] through the worker loop's entry: packets of sessions still connecting wait in the
/// handshake queue until `run_handshakes`.
fn step_prioritized(core: &mut WorkerCore, clients: &mut [&mut Client], now: &mut Instant) {
    *now += Duration::from_millis(10);
    let mut to_sfu = Vec::new();
    for c in clients.iter_mut() {
        c.peer.rtc.handle_input(Input::Timeout(*now)).unwrap();
        c.poll(*now, &mut to_sfu);
    }
    for (src, data) in to_sfu {
        core.on_packet_prioritized(Protocol::Udp, src, &data, *now, None);
    }
    core.on_timers(*now);
    core.run_handshakes(Duration::from_secs(1));
    for o in std::mem::take(&mut core.out) {
        if let Some(c) = clients.iter_mut().find(|c| c.peer.local == o.dst) {
            c.peer.receive(*now, SFU.parse().unwrap(), &o.data);
        }
    }
}

#[test]
fn joined_viewers_input_is_served_before_queued_handshakes() {
    let cert = cert();
    let mut core = core();
    let mut now = Instant::now();
    let (mut a, _) = join(&mut core, &cert, 1, "show", now);
    for _ in 0..400 {
        if a.connected_at.is_some() {
            break;
        }
        step_prioritized(&mut core, &mut [&mut a], &mut now);
    }
    assert!(
        a.connected_at.is_some(),
        "A connects through the prioritized path"
    );
    // Three joiners send their first checks: queued, nothing answered yet.
    let mut joiners: Vec<Client> = (2..5)
        .map(|n| join(&mut core, &cert, n, "show", now).0)
        .collect();
    let mut first = Vec::new();
    for j in joiners.iter_mut() {
        j.peer.rtc.handle_input(Input::Timeout(now)).unwrap();
        j.poll(now, &mut first);
    }
    assert!(!first.is_empty());
    core.out.clear();
    for (src, data) in &first {
        core.on_packet_prioritized(Protocol::Udp, *src, data, now, None);
    }
    let queued = core.handshakes_queued();
    assert_eq!(queued, first.len(), "joiners' packets wait");
    assert!(
        core.out.is_empty(),
        "nothing was answered for the joiners yet"
    );
    // A's next consent check is answered at once, ahead of them.
    let mut answered = false;
    for _ in 0..3000 {
        now += Duration::from_millis(10);
        a.peer.rtc.handle_input(Input::Timeout(now)).unwrap();
        let mut from_a = Vec::new();
        a.poll(now, &mut from_a);
        for (src, data) in from_a {
            let stun = stun_local_ufrag(&data).is_some();
            core.on_packet_prioritized(Protocol::Udp, src, &data, now, None);
            if stun {
                assert!(
                    core.out.iter().any(|o| o.dst == a.peer.local),
                    "A's binding request answered in the same call"
                );
                answered = true;
            }
        }
        core.out.retain(|o| o.dst != a.peer.local);
        if answered {
            break;
        }
    }
    assert!(answered, "A sent a consent check within 30 s");
    assert_eq!(core.handshakes_queued(), queued, "A's input never queued");
    // The handshake turn answers the joiners, and they all connect on the prioritized path.
    assert!(!core.run_handshakes(Duration::from_secs(1)));
    assert!(joiners
        .iter()
        .all(|j| core.out.iter().any(|o| o.dst == j.peer.local)));
    for _ in 0..400 {
        if joiners.iter().all(|j| j.connected_at.is_some()) {
            break;
        }
        let mut all: Vec<&mut Client> = joiners.iter_mut().collect();
        step_prioritized(&mut core, &mut all, &mut now);
    }
    assert!(joiners.iter().all(|j| j.connected_at.is_some()));
}

#[test]
fn admission_skips_busy_workers_and_refuses_when_every_worker_is_busy() {
    use crate::webrtc::admission::{Refusal, SlotKind};
    let cfg = crate::config::SfuConfig {
        workers: crate::config::Workers::Count(2),
        port_base: 0,
        ice_tcp_port_base: 0,
        bind_ip: "127.0.0.1".parse().unwrap(),
        admit_max_busy_pct: 80,
        ..Default::default()
    };
    let sfu = SfuHandle::start(&cfg, crate::media::Registry::new()).unwrap();
    // Stopped workers no longer publish their own measure over the values set here.
    sfu.shutdown();
    let ip = "192.0.2.1".parse().unwrap();
    sfu.workers[0].shared.load.set_busy_permille(950);
    let (slot, w) = sfu.admit(ip, SlotKind::Viewer).unwrap();
    assert_eq!(w.index, 1, "the busy worker is skipped");
    drop(slot);
    sfu.workers[1].shared.load.set_busy_permille(861);
    match sfu.admit(ip, SlotKind::Viewer) {
        Err(Refusal::Overloaded(87)) => {}
        Err(r) => panic!("expected Overloaded(87): {r:?}"),
        Ok((_, w)) => panic!("admitted on worker {}", w.index),
    }
    assert_eq!(
        sfu.admission.viewer_slots(),
        0,
        "the refused slot went back"
    );
    assert_eq!(sfu.admission.pending(), 0);
    // A publisher is placed anyway (refusing it would cut every viewer off).
    assert!(sfu.admit(ip, SlotKind::Publisher).is_ok());
    let msg = WhepError::Refused(Refusal::Overloaded(87)).to_string();
    assert!(msg.contains("87 %") && msg.contains("capacity"), "{msg}");
}

/// Publishers are peers of the same map as viewers: the core kicks one through its control
/// handle (its worker drops the peer, the stream goes idle), and one that never connects is
/// dropped by the timer path every peer shares.
#[test]
fn publishers_leave_by_a_kick_through_the_core_and_by_the_shared_connect_deadline() {
    use crate::ingest::whip::{build_publisher_rtc, WhipControl, WhipPublisher};
    use crate::media::StreamState;
    use crate::webrtc::peer::Peer;
    let reg = crate::media::Registry::new();
    let mut core = core_with(reg.clone());
    let cert = cert();
    let now = Instant::now();
    for (id, name) in [(1, "a"), (2, "b")] {
        let control = Arc::new(WhipControl::new(crate::io::Waker::new().unwrap()));
        let publisher = reg
            .begin_publish(name, "t".into(), control.clone())
            .unwrap();
        let (rtc, creds) = build_publisher_rtc(&cert, now);
        let role = WhipPublisher::new(publisher, control);
        core.add_publisher(
            Peer::new(id, Arc::from(name), rtc, creds.ufrag, role, now),
            now,
        );
    }
    assert_eq!(core.publisher_count(), 2);
    assert_eq!(core.viewer_count(), 0);
    // A keyframe request before the publisher connected waits; the publisher stays.
    assert!(reg.get("a").unwrap().request_keyframe(0));
    core.on_publisher_requests(now);
    assert_eq!(core.publisher_count(), 2);
    // The API's kick reaches the worker through the core.
    assert!(reg.get("a").unwrap().kick());
    core.on_publisher_requests(now);
    assert_eq!(core.publisher_count(), 1);
    assert!(core.peer(1).is_none());
    let a = reg.get("a").unwrap();
    assert_eq!(a.state(), StreamState::Idle);
    assert!(!a.kick(), "nobody is publishing any more");
    assert_eq!(a.status().last_error, None, "a kick is not an error");
    assert_eq!(reg.get("b").unwrap().state(), StreamState::Publishing);
    // "b" never connects: the connect deadline drops it like a viewer.
    core.on_timers(now + Duration::from_secs(6));
    assert_eq!(core.publisher_count(), 0);
    let b = reg.get("b").unwrap();
    assert_eq!(b.state(), StreamState::Idle);
    assert!(b
        .status()
        .last_error
        .is_some_and(|e| e.contains("connect-timeout") || e.contains("idle")));
}
