//! One SFU worker: a pinned thread that owns a UDP driver, its viewers and a per-stream GOP cache
//! of shared frames. [`WorkerCore`] is the sans-IO part (viewers, routing of datagrams, timers);
//! [`Worker::run`] connects it to the driver and the channels.
//!
//! Joined viewers come first: in the loop, packets of connected sessions (STUN consent, RTCP,
//! NACKs) are handled as they arrive, while packets of sessions still in ICE + DTLS (and the GOP
//! burst that follows their connection) wait in a bounded queue served last in each turn, within
//! [`HANDSHAKE_BUDGET`]. A burst of joiners therefore slows the joiners, never the viewers already
//! watching. The loop also measures itself (CPU busy share, longest stretch; [`LoadMeter`]) for
//! admission and /metrics.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::session::{choose_layer, Viewer};
use super::tcp::ConnMark;
use super::{ControlMsg, MediaMsg, NewViewer, SessionTable, SfuFrame, WorkerShared};
use crate::config::SfuConfig;
use crate::ingest::whep_pull::UpstreamSubscriber;
use crate::ingest::whip::WhipPublisher;
use crate::io::{Outgoing, UdpDriver};
use crate::media::{Registry, TrackKind, MAX_LAYERS};
use crate::webrtc::admission::{thread_cpu_time, LoadMeter};
use crate::webrtc::peer::{Deadlines, DropReason, Link, Peer, PeerRole};
use str0m::net::Protocol;

/// Most frames / bytes a worker's GOP cache keeps per stream (a longer GOP is not cached; late
/// joiners then wait for the next keyframe).
const GOP_MAX_FRAMES: usize = 900;
const GOP_MAX_BYTES: usize = 24 << 20;
/// Datagrams the outbox may hold during a fan-out before they are sent.
pub const FLUSH_AT: usize = 512;
/// Messages handled per loop turn before the socket is served again.
const MSGS_PER_TURN: usize = 256;
/// Packets of not-yet-connected sessions waiting for their turn (beyond: dropped; ICE and DTLS
/// retransmit).
pub const HANDSHAKE_QUEUE: usize = 2048;
/// Time per loop turn spent on handshake packets once everything else is served.
pub const HANDSHAKE_BUDGET: Duration = Duration::from_millis(2);

/// A packet of a session that is not connected yet, waiting behind connected sessions' input.
struct Deferred {
    id: u64,
    proto: Protocol,
    src: SocketAddr,
    data: Vec<u8>,
    mark: Option<Arc<ConnMark>>,
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub idle: Duration,
    pub connect: Duration,
    pub keyframe_answer: Duration,
    /// Assumed bandwidth of a simulcast viewer before BWE reports (bits/s).
    pub bwe_initial: u64,
}

impl Timing {
    pub fn from_cfg(c: &SfuConfig) -> Self {
        Self {
            idle: Duration::from_millis(c.idle_timeout_ms),
            connect: Duration::from_millis(c.connect_timeout_ms),
            keyframe_answer: Duration::from_millis(c.keyframe_answer_interval_ms),
            bwe_initial: c.bwe_initial_kbps.saturating_mul(1000),
        }
    }

    pub fn deadlines(&self) -> Deadlines {
        Deadlines {
            connect: self.connect,
            idle: self.idle,
        }
    }
}

/// One layer's GOP cache: the frames since its last keyframe, shared `Arc`s.
#[derive(Default)]
struct Gop {
    frames: Vec<Arc<SfuFrame>>,
    bytes: usize,
    /// The cache holds a whole GOP from its keyframe.
    valid: bool,
}

impl Gop {
    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.valid = false;
    }

    fn push(&mut self, f: &Arc<SfuFrame>) {
        if f.keyframe {
            self.clear();
            self.valid = true;
        } else if let Some(last) = self.frames.last() {
            if last.epoch != f.epoch || f.index != last.index + 1 {
                self.valid = false;
            }
        }
        if !self.valid {
            self.clear();
            return;
        }
        if self.frames.len() >= GOP_MAX_FRAMES || self.bytes + f.bytes > GOP_MAX_BYTES {
            self.clear();
            return;
        }
        self.bytes += f.bytes;
        self.frames.push(f.clone());
    }
}

/// A layer's received bitrate over one-second windows (what layer choice compares estimates
/// with).
#[derive(Default, Clone, Copy)]
struct LayerRate {
    start: Option<Instant>,
    bytes: u64,
    bps: u64,
    last: Option<Instant>,
}

/// A layer that sent nothing for this long counts as absent.
const LAYER_GONE: Duration = Duration::from_millis(1500);

impl LayerRate {
    fn add(&mut self, bytes: usize, now: Instant) {
        let start = *self.start.get_or_insert(now);
        self.bytes += bytes as u64;
        self.last = Some(now);
        let el = now.saturating_duration_since(start);
        if el >= Duration::from_secs(1) {
            self.bps = (self.bytes as f64 * 8.0 / el.as_secs_f64()) as u64;
            self.start = Some(now);
            self.bytes = 0;
        }
    }

    /// Bits/s, 0 when the layer is absent.
    fn bps(&self, now: Instant) -> u64 {
        let (Some(last), Some(start)) = (self.last, self.start) else {
            return 0;
        };
        if now.saturating_duration_since(last) > LAYER_GONE {
            return 0;
        }
        if self.bps > 0 {
            return self.bps;
        }
        // First second: what arrived so far.
        let el = now
            .saturating_duration_since(start)
            .max(Duration::from_millis(100));
        ((self.bytes as f64 * 8.0 / el.as_secs_f64()) as u64).max(1)
    }
}

#[derive(Default)]
struct StreamCache {
    /// Per simulcast layer (0 = the stream's video track).
    gops: [Gop; MAX_LAYERS],
    rates: [LayerRate; MAX_LAYERS],
    viewers: Vec<u64>,
}

impl StreamCache {
    fn push(&mut self, f: &Arc<SfuFrame>, now: Instant) {
        if f.kind != TrackKind::Video || f.layer as usize >= MAX_LAYERS {
            return;
        }
        self.rates[f.layer as usize].add(f.bytes, now);
        self.gops[f.layer as usize].push(f);
    }

    fn rates(&self, now: Instant) -> [u64; MAX_LAYERS] {
        std::array::from_fn(|l| self.rates[l].bps(now))
    }

    /// More than one layer is being received.
    fn simulcast(&self, now: Instant) -> bool {
        self.rates(now).iter().filter(|&&r| r > 0).count() > 1
    }
}

/// The roles a peer on a worker can have: viewers (RTP out), WHIP publishers and upstream
/// subscribers (an edge pulling a stream from another WHEP server: frames in like a
/// publisher, placed by [`crate::ingest::whep_pull`]).
// The viewer stays inline: it is on the per-packet path, and there are thousands of them.
#[allow(clippy::large_enum_variant)]
pub enum SfuRole {
    Viewer(Viewer),
    /// Boxed: viewers are the many, and each should cost only its own size.
    Publisher(Box<WhipPublisher>),
    Upstream(Box<UpstreamSubscriber>),
}

impl PeerRole for SfuRole {
    fn kind(&self) -> &'static str {
        match self {
            SfuRole::Viewer(v) => v.kind(),
            SfuRole::Publisher(p) => p.kind(),
            SfuRole::Upstream(u) => u.kind(),
        }
    }

    fn on_event(&mut self, link: &mut Link, e: str0m::Event, now: Instant) {
        match self {
            SfuRole::Viewer(v) => v.on_event(link, e, now),
            SfuRole::Publisher(p) => p.on_event(link, e, now),
            SfuRole::Upstream(u) => u.on_event(link, e, now),
        }
    }
}

/// A peer hosted by a worker.
pub type SfuPeer = Peer<SfuRole>;

/// Re-choose a viewer's simulcast layer from a bandwidth estimate and the layers' measured
/// rates; a new target gets a keyframe request to the publisher (the switch happens at that
/// layer's keyframe), and str0m's BWE is told what to sustain and what to probe for.
fn select_layer(
    link: &mut Link,
    v: &mut Viewer,
    c: &StreamCache,
    estimate: u64,
    now: Instant,
    registry: &Registry,
) {
    let rates = c.rates(now);
    if rates.iter().filter(|&&r| r > 0).count() < 2 && rates[v.layer() as usize] > 0 {
        return;
    }
    let target = choose_layer(v.layer(), estimate, &rates);
    if v.set_target_layer(target) && target != v.layer() {
        tracing::debug!(viewer = link.id, stream = %link.stream, from = v.layer(), to = target,
            estimate, "simulcast layer change");
        request_keyframe(registry, &link.stream, target);
    }
    if v.estimate().is_some() {
        let best = rates.iter().copied().find(|&r| r > 0).unwrap_or(0);
        v.set_bwe_bitrates(link, rates[target as usize], best + best / 4);
    }
}

/// The worker's state without any I/O.
pub struct WorkerCore {
    pub index: usize,
    /// Every peer on this worker, viewers and publishers (ids are unique across both).
    peers: HashMap<u64, SfuPeer>,
    by_ufrag: HashMap<String, u64>,
    by_addr: HashMap<SocketAddr, u64>,
    streams: HashMap<Arc<str>, StreamCache>,
    /// The publishers and upstream subscribers among `peers` (polled for keyframe requests
    /// each turn).
    publishers: Vec<u64>,
    /// The upstream subscribers among `peers`: they connect out, so an answer from an address
    /// not seen yet is offered to them ([`Peer::accepts`]).
    upstreams: Vec<u64>,
    /// Our candidate addresses (what str0m sees as a datagram's destination).
    local: Vec<SocketAddr>,
    timing: Timing,
    shared: Arc<WorkerShared>,
    sessions: Arc<SessionTable>,
    /// Keyframe requests go to a stream's publisher through the core.
    registry: Arc<Registry>,
    /// Datagrams to send, flushed by the driver once per batch.
    pub out: Vec<Outgoing>,
    /// Earliest time any peer needs attention (timers, idle checks).
    next_deadline: Instant,
    /// Our passive ICE-TCP candidate addresses (empty: ICE-TCP off).
    local_tcp: Vec<SocketAddr>,
    /// Remote addresses that reached us over ICE-TCP: datagrams for them leave through
    /// [`WorkerCore::take_tcp`] instead of the UDP driver.
    tcp_peers: HashMap<SocketAddr, u64>,
    next_layer_check: Instant,
    handshakes: VecDeque<Deferred>,
}

impl WorkerCore {
    pub fn new(
        index: usize,
        local: Vec<SocketAddr>,
        timing: Timing,
        shared: Arc<WorkerShared>,
        sessions: Arc<SessionTable>,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            index,
            peers: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            streams: HashMap::new(),
            publishers: Vec::new(),
            upstreams: Vec::new(),
            local,
            timing,
            shared,
            sessions,
            registry,
            out: Vec::with_capacity(1024),
            next_deadline: Instant::now(),
            local_tcp: Vec::new(),
            tcp_peers: HashMap::new(),
            next_layer_check: Instant::now(),
            handshakes: VecDeque::new(),
        }
    }

    /// Set the passive ICE-TCP candidate addresses of this worker.
    pub fn set_local_tcp(&mut self, local_tcp: Vec<SocketAddr>) {
        self.local_tcp = local_tcp;
    }

    pub fn publisher_count(&self) -> usize {
        self.publishers.len()
    }

    /// Host a peer: flush its first output and make it findable by its ICE ufrag.
    fn add_peer(&mut self, mut p: SfuPeer, now: Instant) {
        p.drain(now, &mut self.out);
        self.next_deadline = self.next_deadline.min(p.link.next_timeout);
        self.by_ufrag.insert(p.link.local_ufrag.clone(), p.id());
        self.peers.insert(p.id(), p);
    }

    /// Host a WHIP publisher's peer.
    pub fn add_publisher(&mut self, p: Peer<WhipPublisher>, now: Instant) {
        tracing::info!(worker = self.index, publisher = p.id(), stream = %p.link.stream,
            side = "ingest", "WHIP publisher session added");
        self.publishers.push(p.id());
        self.add_peer(p.with_role(|r| SfuRole::Publisher(Box::new(r))), now);
    }

    /// Host an edge pull's subscriber peer.
    pub fn add_upstream(&mut self, p: Peer<UpstreamSubscriber>, now: Instant) {
        tracing::info!(worker = self.index, subscriber = p.id(), stream = %p.link.stream,
            side = "ingest", path = "pull", "upstream subscriber added");
        self.publishers.push(p.id());
        self.upstreams.push(p.id());
        self.add_peer(p.with_role(|r| SfuRole::Upstream(Box::new(r))), now);
    }

    pub fn add_viewer(&mut self, nv: NewViewer, now: Instant) {
        let NewViewer {
            id,
            stream,
            rtc,
            video,
            audio,
            ufrag,
            bwe,
            slot,
            relay,
        } = nv;
        let mut v = Viewer::new(video, audio, bwe);
        v.relay = relay;
        if let Some(c) = self.streams.get(&stream) {
            if bwe && c.simulcast(now) {
                // Start on the layer the initial estimate affords; BWE moves it from there.
                let rates = c.rates(now);
                v.set_start_layer(choose_layer(0, self.timing.bwe_initial, &rates));
            }
        }
        let mut p = Peer::new(id, stream.clone(), rtc, ufrag, SfuRole::Viewer(v), now);
        p.set_slot(slot);
        self.streams.entry(stream).or_default().viewers.push(id);
        self.add_peer(p, now);
    }

    /// Drop a peer, whatever its role. A publisher's `Publisher` goes with it, so its stream
    /// goes idle.
    pub fn remove(&mut self, id: u64, why: DropReason) {
        let Some(mut p) = self.peers.remove(&id) else {
            return;
        };
        match &mut p.role {
            SfuRole::Publisher(w) => w.end(why),
            SfuRole::Upstream(u) => u.end(why),
            SfuRole::Viewer(_) => {}
        }
        p.close(Instant::now(), &mut self.out);
        self.by_ufrag.remove(&p.link.local_ufrag);
        self.by_addr.retain(|_, x| *x != id);
        self.tcp_peers.retain(|_, x| *x != id);
        self.sessions.remove(id);
        let stream = &p.link.stream;
        match &p.role {
            SfuRole::Viewer(v) => {
                if let Some(s) = self.streams.get_mut(stream) {
                    s.viewers.retain(|x| *x != id);
                }
                self.shared.viewers.fetch_sub(1, Ordering::Relaxed);
                self.shared.viewers_dropped.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .packets_out
                    .fetch_add(v.stats.packets, Ordering::Relaxed);
                self.shared
                    .bytes_out
                    .fetch_add(p.link.bytes_out, Ordering::Relaxed);
                tracing::info!(worker = self.index, viewer = id, stream = %stream,
                    reason = why.as_str(), packets = v.stats.packets, frames = v.stats.frames,
                    "WHEP viewer left");
            }
            SfuRole::Publisher(w) => {
                self.publishers.retain(|x| *x != id);
                self.shared.publishers.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(worker = self.index, publisher = id, stream = %stream,
                    side = "ingest", reason = why.as_str(), video_frames = w.stats.video_frames,
                    audio_frames = w.stats.audio_frames,
                    keyframe_requests = w.stats.keyframe_requests, "WHIP publisher left");
            }
            SfuRole::Upstream(u) => {
                self.publishers.retain(|x| *x != id);
                self.upstreams.retain(|x| *x != id);
                self.shared.publishers.fetch_sub(1, Ordering::Relaxed);
                let st = u.stats();
                tracing::info!(worker = self.index, subscriber = id, stream = %stream,
                    side = "ingest", path = "pull", reason = why.as_str(),
                    video_frames = st.video_frames, audio_frames = st.audio_frames,
                    keyframe_requests = st.keyframe_requests, "upstream subscriber left");
            }
        }
    }

    /// Act on what the core asked of this worker's publishers: kicks, keyframe requests
    /// (paced there).
    pub fn on_publisher_requests(&mut self, now: Instant) {
        // Backwards: a kicked publisher leaves the list while it is walked.
        for i in (0..self.publishers.len()).rev() {
            let id = self.publishers[i];
            self.after_input(id, now);
        }
    }

    /// Move the datagrams addressed to ICE-TCP peers out of [`WorkerCore::out`].
    pub fn take_tcp(&mut self, tcp: &mut Vec<Outgoing>) {
        if self.tcp_peers.is_empty() {
            return;
        }
        // Order-preserving on both sides (RTP must not be reordered here).
        let peers = &self.tcp_peers;
        tcp.extend(self.out.extract_if(.., |o| peers.contains_key(&o.dst)));
    }

    pub fn viewer_count(&self) -> usize {
        self.peers.len() - self.publishers.len()
    }

    pub fn peer(&self, id: u64) -> Option<&SfuPeer> {
        self.peers.get(&id)
    }

    /// The viewer role of peer `id`, if it is a viewer.
    pub fn viewer(&self, id: u64) -> Option<&Viewer> {
        match &self.peers.get(&id)?.role {
            SfuRole::Viewer(v) => Some(v),
            SfuRole::Publisher(_) | SfuRole::Upstream(_) => None,
        }
    }

    pub fn shared_stats(&self) -> &WorkerShared {
        &self.shared
    }

    pub fn next_deadline(&self) -> Instant {
        self.next_deadline
    }

    /// Check every viewer's layer against what is being received (a layer that stopped, or
    /// simulcast that started after the viewer joined); cheap, runs at most twice a second.
    fn check_layers(&mut self, now: Instant) {
        if now < self.next_layer_check {
            return;
        }
        self.next_layer_check = now + Duration::from_millis(500);
        for c in self.streams.values() {
            for id in &c.viewers {
                let Some(p) = self.peers.get_mut(id) else {
                    continue;
                };
                let SfuRole::Viewer(v) = &mut p.role else {
                    continue;
                };
                if !p.link.connected() {
                    continue;
                }
                if v.layer() != v.reported_layer {
                    v.reported_layer = v.layer();
                    self.shared.layer_switches.fetch_add(1, Ordering::Relaxed);
                    self.sessions.set_layer(*id, v.layer());
                }
                // Without an estimator (joined before the stream had layers) nothing limits
                // the viewer: it gets the best layer present.
                let est = v.estimate().unwrap_or(if v.bwe {
                    self.timing.bwe_initial
                } else {
                    u64::MAX
                });
                select_layer(&mut p.link, v, c, est, now, &self.registry);
            }
        }
    }

    /// Router input: cache and fan out (the datagrams stay in [`WorkerCore::out`]).
    pub fn on_media(&mut self, msg: MediaMsg, now: Instant) {
        self.on_media_flushing(msg, now, &mut |_| {})
    }

    /// [`WorkerCore::on_media`] that hands the outbox to `flush` whenever it holds
    /// [`FLUSH_AT`] datagrams, so a keyframe to many viewers never piles up in memory
    /// (1,000 viewers × a 19-packet keyframe would be 19,000 datagrams of up to 2 KB) and the
    /// first viewers' packets leave while the rest are still being encrypted.
    pub fn on_media_flushing(
        &mut self,
        msg: MediaMsg,
        now: Instant,
        flush: &mut dyn FnMut(&mut WorkerCore),
    ) {
        match msg {
            MediaMsg::Frame(f) => {
                self.shared.frames_in.fetch_add(1, Ordering::Relaxed);
                let cache = self.streams.entry(f.stream.clone()).or_default();
                cache.push(&f, now);
                // Borrowed out of the cache for the loop so the flush can take `self`.
                let ids = std::mem::take(&mut cache.viewers);
                for id in ids.iter() {
                    if let Some(p) = self.peers.get_mut(id) {
                        if let SfuRole::Viewer(v) = &mut p.role {
                            if v.send_frame(&mut p.link, &f, now) {
                                p.handle_timeout(now, &mut self.out);
                            }
                        }
                        self.next_deadline = self.next_deadline.min(p.link.next_timeout);
                    }
                    if self.out.len() >= FLUSH_AT {
                        flush(self);
                    }
                }
                if let Some(c) = self.streams.get_mut(&f.stream) {
                    c.viewers = ids;
                }
            }
            MediaMsg::Reset(name) => {
                if let Some(c) = self.streams.get_mut(&name) {
                    c.gops.iter_mut().for_each(Gop::clear);
                }
            }
            MediaMsg::Ended(name) => {
                if let Some(c) = self.streams.remove(&name) {
                    for id in c.viewers {
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.link.kill(DropReason::StreamEnded);
                        }
                    }
                    self.next_deadline = now;
                }
            }
        }
    }

    /// Network input: find the viewer (STUN USERNAME, else the source address) and feed it.
    pub fn on_datagram(&mut self, src: SocketAddr, data: &[u8], now: Instant) {
        self.on_packet(Protocol::Udp, src, data, now)
    }

    /// [`WorkerCore::on_datagram`] for UDP or for one RFC 4571 frame from an ICE-TCP peer.
    pub fn on_packet(&mut self, proto: Protocol, src: SocketAddr, data: &[u8], now: Instant) {
        self.input(proto, src, data, now, None, false);
    }

    /// The worker loop's entry: a packet of a connected session is handled now; one of a
    /// session still in ICE + DTLS is queued for [`WorkerCore::run_handshakes`]. `mark` is the
    /// ICE-TCP connection the packet came on (stamped when the packet belongs to a session).
    pub fn on_packet_prioritized(
        &mut self,
        proto: Protocol,
        src: SocketAddr,
        data: &[u8],
        now: Instant,
        mark: Option<&Arc<ConnMark>>,
    ) {
        self.input(proto, src, data, now, mark, true);
    }

    /// Packets waiting in the handshake queue.
    pub fn handshakes_queued(&self) -> usize {
        self.handshakes.len()
    }

    /// Handle queued handshake packets, oldest first, until none is left or `budget` is spent;
    /// true when some remain.
    pub fn run_handshakes(&mut self, budget: Duration) -> bool {
        let start = Instant::now();
        while let Some(d) = self.handshakes.pop_front() {
            let now = Instant::now();
            self.deliver(d.id, d.proto, d.src, &d.data, now);
            if let Some(m) = &d.mark {
                if self.session_connected(d.id) {
                    m.valid(now, true);
                }
            }
            if now.saturating_duration_since(start) >= budget {
                break;
            }
        }
        !self.handshakes.is_empty()
    }

    /// Our address a packet from `src` over `proto` arrived on, as str0m knows it.
    fn local_addr(&self, proto: Protocol, src: SocketAddr) -> SocketAddr {
        match proto {
            Protocol::Tcp => local_for(&self.local_tcp, src),
            _ => local_for(&self.local, src),
        }
    }

    fn session_connected(&self, id: u64) -> bool {
        self.peers.get(&id).is_some_and(|p| p.connected())
    }

    fn input(
        &mut self,
        proto: Protocol,
        src: SocketAddr,
        data: &[u8],
        now: Instant,
        mark: Option<&Arc<ConnMark>>,
        defer: bool,
    ) {
        self.shared.datagrams_in.fetch_add(1, Ordering::Relaxed);
        let tcp = proto == Protocol::Tcp;
        let dst = self.local_addr(proto, src);
        let id = if let Some(ufrag) = stun_local_ufrag(data) {
            match self.by_ufrag.get(ufrag) {
                Some(id) => {
                    let id = *id;
                    let ok = self
                        .peers
                        .get(&id)
                        .is_some_and(|p| p.accepts(now, proto, src, dst, data));
                    if !ok {
                        None
                    } else {
                        if self.by_addr.get(&src) != Some(&id) {
                            self.by_addr.insert(src, id);
                        }
                        if tcp && self.tcp_peers.get(&src) != Some(&id) {
                            self.tcp_peers.insert(src, id);
                        }
                        Some(id)
                    }
                }
                None => None,
            }
        } else {
            self.by_addr.get(&src).copied().or_else(|| {
                // An upstream answering our checks (its address is not known yet): few peers,
                // and only datagrams from unknown addresses get here.
                let id = self.upstreams.iter().copied().find(|id| {
                    self.peers
                        .get(id)
                        .is_some_and(|p| p.accepts(now, proto, src, dst, data))
                })?;
                self.by_addr.insert(src, id);
                Some(id)
            })
        };
        let Some(id) = id else {
            self.shared
                .datagrams_unknown
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let connected = self.session_connected(id);
        if let Some(m) = mark {
            m.valid(now, connected);
        }
        if defer && !connected {
            if self.handshakes.len() >= HANDSHAKE_QUEUE {
                self.shared
                    .handshakes_dropped
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                self.handshakes.push_back(Deferred {
                    id,
                    proto,
                    src,
                    data: data.to_vec(),
                    mark: mark.cloned(),
                });
            }
            return;
        }
        self.deliver(id, proto, src, data, now);
    }

    /// Feed a packet to peer `id`, if it is still here.
    fn deliver(&mut self, id: u64, proto: Protocol, src: SocketAddr, data: &[u8], now: Instant) {
        let dst = self.local_addr(proto, src);
        if let Some(p) = self.peers.get_mut(&id) {
            p.handle_input(now, proto, src, dst, data, &mut self.out);
            self.after_input(id, now);
        }
    }

    /// The keyframe work of a peer: a viewer's start or answer from the GOP cache, a
    /// publisher's requests to its sender. Output is drained.
    fn keyframe_work(&mut self, id: u64, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.link.dead.is_some() {
            return;
        }
        let wrote = match &mut p.role {
            SfuRole::Publisher(w) => w.on_control(&mut p.link, now),
            SfuRole::Upstream(u) => u.on_control(&mut p.link, now),
            SfuRole::Viewer(v) => {
                if let Some(est) = v.take_estimate() {
                    if let Some(c) = self.streams.get(&p.link.stream) {
                        select_layer(&mut p.link, v, c, est, now, &self.registry);
                    }
                }
                if v.relay && !v.needs_start {
                    // A downstream edge: replaying the cache would repeat frames there and
                    // move its video clock; the publisher is asked instead (paced there).
                    if v.take_keyframe_request(&p.link, now, self.timing.keyframe_answer) {
                        self.shared
                            .keyframes_relayed
                            .fetch_add(1, Ordering::Relaxed);
                        request_keyframe(&self.registry, &p.link.stream, v.layer());
                    }
                    false
                } else if !(v.needs_start
                    || v.take_keyframe_request(&p.link, now, self.timing.keyframe_answer))
                {
                    false
                } else {
                    let answering = !v.needs_start;
                    let empty = Vec::new();
                    let gop = self
                        .streams
                        .get(&p.link.stream)
                        .map(|c| &c.gops[v.layer() as usize])
                        .filter(|g| g.valid)
                        .map(|g| &g.frames)
                        .unwrap_or(&empty);
                    let no_cache = gop.is_empty();
                    let wrote = v.start_from_gop(&mut p.link, gop, now);
                    if answering {
                        self.shared.keyframe_answers.fetch_add(1, Ordering::Relaxed);
                    }
                    // A WHIP publisher can be asked for a fresh keyframe (rate-limited on its
                    // worker).
                    if answering || no_cache {
                        request_keyframe(&self.registry, &p.link.stream, v.layer());
                    }
                    wrote
                }
            }
        };
        if wrote {
            p.handle_timeout(now, &mut self.out);
        }
        self.next_deadline = self.next_deadline.min(p.link.next_timeout);
    }

    /// Act on what an input (or a timer) left pending on a peer: keyframe work, death.
    fn after_input(&mut self, id: u64, now: Instant) {
        self.keyframe_work(id, now);
        let Some(p) = self.peers.get(&id) else {
            return;
        };
        if let Some(why) = p.link.dead {
            self.remove(id, why);
            return;
        }
        self.next_deadline = self.next_deadline.min(p.link.next_timeout);
        if let Some(t) = keyframe_retry_at(p, self.timing.keyframe_answer) {
            self.next_deadline = self
                .next_deadline
                .min(t.max(now + Duration::from_millis(1)));
        }
    }

    /// Timers: str0m timeouts, idle and connect deadlines, rate-limited keyframe work. Cheap
    /// when nothing is due.
    pub fn on_timers(&mut self, now: Instant) {
        if now < self.next_deadline {
            return;
        }
        let mut next = now + Duration::from_secs(1);
        let mut due: Vec<u64> = Vec::new();
        let deadlines = self.timing.deadlines();
        for (id, p) in self.peers.iter_mut() {
            p.check_deadlines(now, &deadlines);
            let retry = keyframe_retry_at(p, self.timing.keyframe_answer);
            if p.link.dead.is_some()
                || p.link.next_timeout <= now
                || retry.is_some_and(|t| t <= now)
            {
                due.push(*id);
            } else {
                next = next.min(p.link.next_timeout);
            }
            next = next.min(p.liveness_deadline(&deadlines));
            if let Some(t) = retry {
                next = next.min(t.max(now + Duration::from_millis(1)));
            }
        }
        self.check_layers(now);
        next = next.min(self.next_layer_check);
        self.next_deadline = next;
        for id in due {
            if let Some(p) = self.peers.get_mut(&id) {
                if p.link.dead.is_none() && p.link.next_timeout <= now {
                    p.handle_timeout(now, &mut self.out);
                }
            }
            self.after_input(id, now);
        }
    }

    pub fn drop_all(&mut self, why: DropReason) {
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            self.remove(id, why);
        }
    }
}

/// Ask the publisher of `stream` (through the core) for a keyframe of `layer`. Called on
/// keyframe requests and layer changes only, never per packet.
fn request_keyframe(registry: &Registry, stream: &str, layer: u8) {
    if let Some(s) = registry.get(stream) {
        s.request_keyframe(layer);
    }
}

/// When a rate-limited keyframe request of peer `p` may be served (a viewer's answer from the
/// cache, at most one per `answer_interval`; a publisher's PLI).
fn keyframe_retry_at(p: &SfuPeer, answer_interval: Duration) -> Option<Instant> {
    match &p.role {
        SfuRole::Viewer(v) => v.keyframe_retry_at(p.link.created, answer_interval),
        SfuRole::Publisher(w) => w.keyframe_retry_at(&p.link),
        SfuRole::Upstream(u) => u.keyframe_retry_at(&p.link),
    }
}

/// Which of our candidate addresses (UDP or ICE-TCP) a packet from `src` arrived on, as str0m
/// knows it: same family and scope (loopback or not), else same family, else the first.
fn local_for(candidates: &[SocketAddr], src: SocketAddr) -> SocketAddr {
    candidates
        .iter()
        .find(|a| a.is_ipv4() == src.is_ipv4() && a.ip().is_loopback() == src.ip().is_loopback())
        .or_else(|| candidates.iter().find(|a| a.is_ipv4() == src.is_ipv4()))
        .or(candidates.first())
        .copied()
        .unwrap_or(src)
}

/// Send what the core has queued: ICE-TCP peers' datagrams to their connection threads, the
/// rest through the UDP driver.
fn flush_core(
    core: &mut WorkerCore,
    driver: &mut dyn UdpDriver,
    tcp: Option<&super::tcp::TcpLink>,
    tcp_out: &mut Vec<Outgoing>,
) {
    if let Some(link) = tcp {
        core.take_tcp(tcp_out);
        for o in tcp_out.drain(..) {
            let _ = link.tx.try_send(o);
        }
    }
    if !core.out.is_empty() {
        driver.send_batch(&mut core.out);
    }
}

/// The local ufrag of a STUN request's USERNAME ("local:remote"), if `data` is STUN.
pub fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    if data.len() < 20 || data[0] > 1 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let body = data.get(20..20 + len)?;
    let mut r = body;
    while r.len() >= 4 {
        let typ = u16::from_be_bytes([r[0], r[1]]);
        let alen = u16::from_be_bytes([r[2], r[3]]) as usize;
        let v = r.get(4..4 + alen)?;
        if typ == 0x0006 {
            let s = std::str::from_utf8(v).ok()?;
            return s.split(':').next();
        }
        let padded = (alen + 3) & !3;
        r = r.get(4 + padded..).unwrap_or(&[]);
    }
    None
}

/// The thread: driver + channels around a [`WorkerCore`].
pub struct Worker {
    core: WorkerCore,
    driver: Box<dyn UdpDriver>,
    media_rx: Receiver<MediaMsg>,
    control_rx: Receiver<ControlMsg>,
    /// ICE-TCP listener link (None: ICE-TCP off for this worker).
    tcp: Option<super::tcp::TcpLink>,
    tcp_out: Vec<Outgoing>,
}

impl Worker {
    /// Attach this worker's ICE-TCP listener.
    pub fn set_tcp(&mut self, link: super::tcp::TcpLink) {
        self.core.set_local_tcp(link.local.clone());
        self.tcp = Some(link);
    }

    /// Send what the core queued: ICE-TCP peers' datagrams to the TCP side, the rest as one
    /// UDP batch.
    fn flush(&mut self) {
        flush_core(
            &mut self.core,
            self.driver.as_mut(),
            self.tcp.as_ref(),
            &mut self.tcp_out,
        );
    }

    /// Feed packets that arrived over ICE-TCP (bounded per turn); true when more are queued.
    fn on_tcp(&mut self) -> bool {
        let Some(link) = &self.tcp else {
            return false;
        };
        for _ in 0..MSGS_PER_TURN {
            match link.rx.try_recv() {
                Ok((src, data, mark)) => self.core.on_packet_prioritized(
                    Protocol::Tcp,
                    src,
                    &data,
                    Instant::now(),
                    Some(&mark),
                ),
                Err(_) => return false,
            }
        }
        !link.rx.is_empty()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        driver: Box<dyn UdpDriver>,
        media_rx: Receiver<MediaMsg>,
        control_rx: Receiver<ControlMsg>,
        shared: Arc<WorkerShared>,
        sessions: Arc<SessionTable>,
        registry: Arc<Registry>,
        local: Vec<SocketAddr>,
        timing: Timing,
    ) -> Self {
        Self {
            core: WorkerCore::new(index, local, timing, shared, sessions, registry),
            driver,
            media_rx,
            control_rx,
            tcp: None,
            tcp_out: Vec::new(),
        }
    }

    pub fn run(mut self) {
        let mut meter = LoadMeter::new(Instant::now(), thread_cpu_time());
        loop {
            let turn_start = Instant::now();
            let now = turn_start;
            // Control first (joins, leaves), then media, bounded per turn.
            for _ in 0..MSGS_PER_TURN {
                match self.control_rx.try_recv() {
                    Ok(ControlMsg::Add(nv)) => self.core.add_viewer(*nv, now),
                    Ok(ControlMsg::AddPublisher(p)) => self.core.add_publisher(*p, now),
                    Ok(ControlMsg::AddUpstream(p)) => self.core.add_upstream(*p, now),
                    Ok(ControlMsg::Remove(id)) => self.core.remove(id, DropReason::Deleted),
                    Ok(ControlMsg::Shutdown) => {
                        self.core.drop_all(DropReason::Shutdown);
                        self.flush();
                        return;
                    }
                    Err(_) => break,
                }
            }
            let mut busy = false;
            for i in 0..MSGS_PER_TURN {
                match self.media_rx.try_recv() {
                    Ok(m) => {
                        let (driver, tcp, tcp_out) =
                            (self.driver.as_mut(), self.tcp.as_ref(), &mut self.tcp_out);
                        self.core.on_media_flushing(m, now, &mut |core| {
                            flush_core(core, &mut *driver, tcp, tcp_out)
                        });
                    }
                    Err(_) => break,
                }
                busy = i + 1 == MSGS_PER_TURN;
            }
            if self.on_tcp() {
                busy = true;
            }
            if self.core.publisher_count() > 0 {
                self.core.on_publisher_requests(now);
            }
            self.core.on_timers(now);
            self.flush();
            // Handshakes last, after joined viewers' input, media and timers.
            if self.core.run_handshakes(HANDSHAKE_BUDGET) {
                busy = true;
            }
            self.flush();
            let timeout = if busy || !self.media_rx.is_empty() || !self.control_rx.is_empty() {
                Duration::ZERO
            } else {
                self.core
                    .next_deadline()
                    .saturating_duration_since(Instant::now())
            };
            let core = &mut self.core;
            let poll_start = Instant::now();
            let mut first_input: Option<Instant> = None;
            let r = self.driver.poll(Some(timeout), &mut |src, data| {
                let now = Instant::now();
                first_input.get_or_insert(now);
                core.on_packet_prioritized(Protocol::Udp, src, data, now, None);
            });
            let errored = r.is_err();
            if let Err(e) = r {
                tracing::error!(worker = self.core.index, "SFU driver: {e}");
            }
            self.flush();
            // Worked = the whole turn but the time spent blocked waiting for input.
            let end = Instant::now();
            let waited = first_input
                .unwrap_or(end)
                .saturating_duration_since(poll_start);
            let worked = end
                .saturating_duration_since(turn_start)
                .saturating_sub(waited);
            let cpu = if meter.wants_cpu(end) {
                thread_cpu_time()
            } else {
                Duration::ZERO
            };
            meter.turn(worked, end, cpu, &self.core.shared.load);
            if errored {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
