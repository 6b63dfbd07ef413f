//! The WebRTC SFU: WHEP viewers on pinned worker threads, fed by one router.
//!
//! ```text
//!  Registry ──sink "sfu"──► router thread ──Arc<SfuFrame>──► worker 0 (core c0, UDP :8189) ─► viewers' Rtc
//!                           (packetize once:   bounded         worker 1 (core c1, UDP :8190) ─► …
//!                            H.264 → RTP        crossbeam
//!                            payloads, Arc)     + eventfd
//!  HTTP (WHEP) ─ build Rtc, accept offer ─► control channel of the least-loaded worker
//! ```
//!
//! - The router packetizes each frame once ([`packetizer`]) into `Arc<[u8]>` payloads and hands
//!   the same `Arc<SfuFrame>` to every worker. Workers keep a GOP cache of those `Arc`s per stream
//!   (shared, not copied), so a new viewer starts from the last keyframe at once.
//! - Each worker owns its UDP socket (through a [`crate::io`] driver), its viewers' `Rtc`s and
//!   its per-stream state outright: no locks on the per-packet path. Per viewer and packet the
//!   work is an `RtpWrite` pointing at the shared payload, and str0m's header write + SRTP into
//!   the datagram, which moves into the send batch; one batch per fan-out.
//! - The HTTP side builds the viewer's `Rtc` (ICE-lite, RTP mode, a shared DTLS certificate) and
//!   answers the offer off the worker cores, then moves it to the worker.
//! - WHIP publishers (peers with the [`crate::ingest::whip::WhipPublisher`] role, `Rtc` in frame
//!   mode) live on the least-loaded worker next to the viewers; viewers' keyframe requests reach them through the
//!   core ([`crate::media::Stream::request_keyframe`] → the publisher's control handle).
//! - ICE-TCP ([`tcp`]): a passive TCP candidate per worker (`ice_tcp_port_base + i`); a listener
//!   thread deframes RFC 4571 packets into the worker, which feeds them to the same `Rtc`s as
//!   `Protocol::Tcp` and sends those peers' datagrams back through that thread.
//! - Admission ([`crate::webrtc::admission`]): a session reserves its slot atomically before its offer is
//!   answered (viewer cap, pending bounds total and per address), and viewers are placed only on
//!   workers whose measured loop load is under `sfu.admit_max_busy_pct`; otherwise 503.

pub mod packetizer;
pub mod publish;
pub mod router;
pub mod session;
pub mod tcp;
pub mod worker;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;
use str0m::{IceCreds, Rtc};

use crate::config::SfuConfig;
use crate::io::{DriverKind, IoRequest, Waker};
use crate::media::{Registry, StreamState, TrackKind};
use crate::webrtc::admission::{Admission, LoadSignal, Refusal, Slot, SlotKind};
use crate::webrtc::offer::{self, OfferError, Role};
use crate::webrtc::peer::{add_candidates, Peer};
use packetizer::RtpPayload;
use session::{choose_audio, choose_video, AudioOut, VideoOut};

/// Capacity of the registry sink feeding the router (frames of all streams).
pub const SINK_CAPACITY: usize = 4096;
/// Capacity of each worker's control queue (viewer add/remove).
const CONTROL_CAPACITY: usize = 1024;

/// One frame of one stream, packetized once, shared by every worker and viewer.
#[derive(Debug)]
pub struct SfuFrame {
    pub stream: Arc<str>,
    /// The publisher session (`TrackSet::session`) the frame belongs to.
    pub epoch: u64,
    /// Counts the stream's frames of this kind (and layer) as the router saw them (a gap = a
    /// lost frame).
    pub index: u64,
    pub kind: TrackKind,
    /// Simulcast layer of a video frame: 0 is the stream's video track (the best layer), higher
    /// is lower quality (see [`crate::media::LayerFrame`]). Audio: 0.
    pub layer: u8,
    /// Presentation time on the stream clock (90 kHz).
    pub pts: i64,
    pub keyframe: bool,
    pub packets: Vec<RtpPayload>,
    pub wallclock: SystemTime,
    /// Payload bytes (for cache accounting).
    pub bytes: usize,
}

/// Router → worker.
pub enum MediaMsg {
    Frame(Arc<SfuFrame>),
    /// New codec parameters or publisher gone: the cache is stale.
    Reset(Arc<str>),
    /// The stream was removed: its viewers are dropped.
    Ended(Arc<str>),
}

/// HTTP → worker.
pub enum ControlMsg {
    Add(Box<NewViewer>),
    /// A WHIP publisher's peer (see [`publish`]).
    AddPublisher(Box<Peer<crate::ingest::whip::WhipPublisher>>),
    /// An edge pull's subscriber peer (see [`publish`]).
    AddUpstream(Box<Peer<crate::ingest::whep_pull::UpstreamSubscriber>>),
    Remove(u64),
    Shutdown,
}

/// A viewer whose offer has been answered, on its way to a worker.
pub struct NewViewer {
    pub id: u64,
    pub stream: Arc<str>,
    pub rtc: Rtc,
    pub video: VideoOut,
    /// Opus output when the offer has an audio m-line with Opus.
    pub audio: Option<AudioOut>,
    pub ufrag: String,
    /// The `Rtc` runs str0m's bandwidth estimation (the stream had simulcast layers).
    pub bwe: bool,
    /// The viewer's admission slot (released when the viewer is dropped; None in tests).
    pub slot: Option<Slot>,
    /// Another node's edge pull (its POST carried `Deltacast-Via`): keyframe requests go to
    /// the publisher only, never answered from the GOP cache (see [`session::Viewer::relay`]).
    pub relay: bool,
}

/// What the HTTP side keeps per session (for PATCH / DELETE).
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub viewer: u64,
    /// A WHEP viewer or a WHIP publisher: each signaling path sees only its own sessions.
    pub role: Role,
    pub worker: usize,
    pub stream: String,
    /// The secret half of the session URL.
    pub token: String,
    pub etag: String,
    pub created: Instant,
    /// The simulcast layer a viewer is on (reported by its worker every 500 ms at most).
    pub layer: u8,
}

/// The sessions the HTTP side knows, shared with the workers (who remove dropped viewers).
/// Touched on signaling and on viewer drop only, never per packet.
#[derive(Default)]
pub struct SessionTable {
    by_viewer: Mutex<HashMap<u64, SessionInfo>>,
}

impl SessionTable {
    /// WebRTC sessions (viewers) of one stream.
    pub fn count_stream(&self, stream: &str) -> usize {
        self.layers_of(stream).iter().sum()
    }

    /// WebRTC viewers of `stream` per simulcast layer (index 0 = best).
    pub fn layers_of(&self, stream: &str) -> [usize; crate::media::MAX_LAYERS] {
        let mut out = [0; crate::media::MAX_LAYERS];
        for s in self.by_viewer.lock().values() {
            // The stream's WHIP publisher has a session here too; it is not a viewer.
            if s.stream == stream && s.role == Role::Viewer {
                out[(s.layer as usize).min(out.len() - 1)] += 1;
            }
        }
        out
    }

    /// A worker reports a viewer's layer.
    pub fn set_layer(&self, viewer: u64, layer: u8) {
        if let Some(s) = self.by_viewer.lock().get_mut(&viewer) {
            s.layer = layer;
        }
    }

    pub fn insert(&self, s: SessionInfo) {
        self.by_viewer.lock().insert(s.viewer, s);
    }
    pub fn remove(&self, viewer: u64) -> Option<SessionInfo> {
        self.by_viewer.lock().remove(&viewer)
    }
    pub fn get(&self, viewer: u64) -> Option<SessionInfo> {
        self.by_viewer.lock().get(&viewer).cloned()
    }
    pub fn len(&self) -> usize {
        self.by_viewer.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn set_etag(&self, viewer: u64, etag: String) {
        if let Some(s) = self.by_viewer.lock().get_mut(&viewer) {
            s.etag = etag;
        }
    }
}

/// Counters shared by a worker with the rest of the process (metrics, load balancing).
#[derive(Default)]
pub struct WorkerShared {
    pub viewers: AtomicUsize,
    /// WHIP publishers on this worker.
    pub publishers: AtomicUsize,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub datagrams_in: AtomicU64,
    /// Datagrams that matched no viewer (garbage, stale peers, bad STUN integrity).
    pub datagrams_unknown: AtomicU64,
    pub frames_in: AtomicU64,
    pub keyframe_answers: AtomicU64,
    /// Keyframe requests of relay viewers (other nodes' edge pulls) passed to the publisher.
    pub keyframes_relayed: AtomicU64,
    pub viewers_dropped: AtomicU64,
    /// Simulcast layer changes of this worker's viewers (as reported to the API).
    pub layer_switches: AtomicU64,
    /// The worker's own measure of its loop (busy share, lag): what admission reads.
    pub load: LoadSignal,
    /// Handshake packets (of sessions not yet connected) dropped because the worker's queue for
    /// them was full.
    pub handshakes_dropped: AtomicU64,
}

/// One worker as seen from outside.
pub struct WorkerHandle {
    pub index: usize,
    pub addr: SocketAddr,
    pub driver: DriverKind,
    pub candidates: Vec<SocketAddr>,
    /// Passive ICE-TCP candidates (empty when ICE-TCP is off or its port could not be bound).
    pub tcp_candidates: Vec<SocketAddr>,
    pub media_tx: Sender<MediaMsg>,
    pub control_tx: Sender<ControlMsg>,
    pub waker: Waker,
    pub shared: Arc<WorkerShared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A WHIP publisher weighs this many viewers when sessions are placed: it depacketizes,
/// reassembles and feeds every egress, and its packets must not queue behind a fan-out.
pub const PUBLISHER_WEIGHT: usize = 50;

impl WorkerHandle {
    /// Load for placing a new session (the least-loaded worker takes it).
    pub fn load(&self) -> usize {
        self.shared.viewers.load(Ordering::Relaxed)
            + PUBLISHER_WEIGHT * self.shared.publishers.load(Ordering::Relaxed)
    }
}

/// Why a WHEP request failed; the HTTP layer maps these to status codes.
#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    #[error("malformed SDP offer: {0}")]
    BadSdp(String),
    #[error("the offer has no H.264 (packetization-mode=1) video; this server sends H.264 only")]
    NoH264,
    /// The offer's media cannot be served (406).
    #[error("{0}")]
    Unsupported(String),
    /// The offer asks for a setup this server does not do: direction, fingerprint hash (422).
    #[error("{0}")]
    Setup(String),
    #[error("stream '{0}' does not exist")]
    UnknownStream(String),
    #[error("stream '{0}' has no publisher right now")]
    NotLive(String),
    #[error("stream '{0}' does not carry H.264 video; WebRTC playback needs H.264")]
    StreamNotH264(String),
    #[error("viewer limit reached")]
    Full,
    #[error("{0}")]
    Refused(Refusal),
    #[error("session not found")]
    NoSession,
    #[error("internal: {0}")]
    Internal(String),
}

impl From<OfferError> for WhepError {
    fn from(e: OfferError) -> Self {
        match e {
            OfferError::Malformed(m) => WhepError::BadSdp(m),
            OfferError::UnsupportedMedia(m) => WhepError::Unsupported(m),
            OfferError::UnsupportedSetup(m) => WhepError::Setup(m),
        }
    }
}

/// The SFU as the rest of the process sees it.
pub struct SfuHandle {
    pub cfg: SfuConfig,
    /// Slots and pending bounds (see [`crate::webrtc::admission`]).
    pub admission: Arc<Admission>,
    /// Offers being answered at once (SDP + `Rtc` setup is CPU work on blocking threads): the
    /// HTTP side waits for a permit, so a burst of POSTs queues as tasks, not as threads.
    pub answering: Arc<tokio::sync::Semaphore>,
    registry: Arc<Registry>,
    pub workers: Vec<WorkerHandle>,
    pub sessions: Arc<SessionTable>,
    cert: str0m::config::DtlsCert,
    router: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub router_shared: Arc<router::RouterShared>,
}

/// A new session's ids (see [`SfuHandle::new_ids`]).
struct NewIds {
    id: u64,
    token: String,
    /// The URL id: `id` in hex, then `token`.
    session_id: String,
    etag: String,
}

/// Why a worker did not take a session.
enum HandOver {
    Full,
    Stopped,
}

/// Result of a successful WHEP POST.
#[derive(Debug, Clone)]
pub struct Created {
    pub session_id: String,
    pub answer: String,
    pub etag: String,
}

impl SfuHandle {
    /// Bind the worker sockets, start the workers and the router (registered as sink "sfu").
    pub fn start(cfg: &SfuConfig, registry: Arc<Registry>) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        cfg.validate().map_err(anyhow::Error::msg)?;
        str0m::crypto::from_feature_flags().install_process_default();
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .context("generating the DTLS certificate")?;
        let requested: IoRequest = cfg.io.parse().map_err(anyhow::Error::msg)?;
        let sessions = Arc::new(SessionTable::default());
        let cores = crate::affinity::usable_cores();
        let count = cfg.workers.resolve(cores);
        match cfg.workers {
            crate::config::Workers::Auto => tracing::info!(
                cores,
                workers = count,
                "SFU workers: sfu.workers = \"auto\": one per usable core but one (left to the \
                 LL-HLS packager, RTMP push and HTTP), at least 1"
            ),
            crate::config::Workers::Count(_) => {
                tracing::info!(
                    cores,
                    workers = count,
                    "SFU workers: sfu.workers from the config"
                )
            }
        }
        let mut workers = Vec::with_capacity(count);
        for i in 0..count {
            let port = if cfg.port_base == 0 {
                0
            } else {
                cfg.port_base + i as u16
            };
            let bind = SocketAddr::new(cfg.bind_ip, port);
            let (sock, bufs) =
                crate::io::bind_udp_sized(bind, cfg.socket_recv_buffer, cfg.socket_send_buffer)
                    .with_context(|| format!("binding SFU worker {i} on UDP {bind}"))?;
            let driver = crate::io::select(requested, sock, cfg.gso)
                .with_context(|| format!("setting up the {} driver for SFU worker {i}", cfg.io))?;
            let addr = driver.local_addr();
            let candidates = candidate_addrs(cfg, addr);
            tracing::info!(worker = i, %addr, driver = driver.kind().as_str(),
                gso = driver.gso(), candidates = ?candidates, rcvbuf = bufs.recv,
                sndbuf = bufs.send, "SFU worker bound");
            let (media_tx, media_rx) = crossbeam_channel::bounded(cfg.worker_queue);
            let (control_tx, control_rx) = crossbeam_channel::bounded(CONTROL_CAPACITY);
            let shared = Arc::new(WorkerShared::default());
            let waker = driver.waker();
            let kind = driver.kind();
            let pin = (cfg.core_base >= 0).then(|| cfg.core_base as usize + i);
            let mut w = worker::Worker::new(
                i,
                driver,
                media_rx,
                control_rx,
                shared.clone(),
                sessions.clone(),
                registry.clone(),
                candidates.clone(),
                worker::Timing::from_cfg(cfg),
            );
            let tcp_candidates = if cfg.ice_tcp_port_base == 0 {
                Vec::new()
            } else {
                start_ice_tcp(cfg, i, &waker, &mut w)
            };
            let thread = std::thread::Builder::new()
                .name(format!("sfu-{i}"))
                .spawn(move || {
                    if let Some(core) = pin {
                        crate::affinity::pin_current_thread(core, "SFU worker");
                    }
                    w.run();
                })
                .context("spawning an SFU worker thread")?;
            workers.push(WorkerHandle {
                index: i,
                addr,
                driver: kind,
                candidates,
                tcp_candidates,
                media_tx,
                control_tx,
                waker,
                shared,
                thread: Mutex::new(Some(thread)),
            });
        }
        let rx = registry.add_layered_sink("sfu", SINK_CAPACITY);
        let targets: Vec<(Sender<MediaMsg>, Waker)> = workers
            .iter()
            .map(|w| (w.media_tx.clone(), w.waker.clone()))
            .collect();
        let router_shared = Arc::new(router::RouterShared::default());
        let rs = router_shared.clone();
        let max_payload = cfg.rtp_payload_max;
        let router = std::thread::Builder::new()
            .name("sfu-router".into())
            .spawn(move || router::run(rx, targets, max_payload, rs))
            .context("spawning the SFU router thread")?;
        let answering = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 16);
        Ok(Arc::new(Self {
            cfg: cfg.clone(),
            admission: Admission::new(cfg.max_viewers, cfg.max_pending, cfg.max_pending_per_ip),
            answering: Arc::new(tokio::sync::Semaphore::new(answering)),
            registry,
            workers,
            sessions,
            cert,
            router: Mutex::new(Some(router)),
            router_shared,
        }))
    }

    /// The node's DTLS certificate (shared by every session; WHIP publishers use it too).
    pub fn dtls_cert(&self) -> &str0m::config::DtlsCert {
        &self.cert
    }

    /// The driver the workers run on.
    pub fn driver(&self) -> DriverKind {
        self.workers[0].driver
    }

    /// Viewers connected or connecting, all workers.
    pub fn viewers(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.shared.viewers.load(Ordering::Relaxed))
            .sum()
    }

    /// WebRTC viewers of one stream (for the API's viewers-by-path).
    pub fn viewers_of(&self, stream: &str) -> usize {
        self.sessions.count_stream(stream)
    }

    /// WebRTC viewers of `stream` per simulcast layer.
    pub fn viewers_by_layer(&self, stream: &str) -> [usize; crate::media::MAX_LAYERS] {
        self.sessions.layers_of(stream)
    }

    /// Reserve a slot for a session from `ip` and choose its worker: the least-loaded one,
    /// among (for viewers) those whose measured busy share is under `sfu.admit_max_busy_pct`.
    /// The slot is taken first, so a refusal by load gives it straight back.
    pub fn admit(&self, ip: IpAddr, kind: SlotKind) -> Result<(Slot, &WorkerHandle), Refusal> {
        let slot = self.admission.reserve(ip, kind)?;
        Ok((slot, self.place(kind)?))
    }

    /// The worker for a new session: the least-loaded one, among (for viewers) those whose
    /// measured busy share is under `sfu.admit_max_busy_pct`.
    pub fn place(&self, kind: SlotKind) -> Result<&WorkerHandle, Refusal> {
        let limit = self.cfg.admit_max_busy_pct * 10;
        let open = |w: &&WorkerHandle| {
            kind == SlotKind::Publisher || limit >= 1000 || w.shared.load.busy_permille() < limit
        };
        match self.workers.iter().filter(open).min_by_key(|w| w.load()) {
            Some(w) => Ok(w),
            None => {
                let least = self
                    .workers
                    .iter()
                    .map(|w| w.shared.load.busy_permille())
                    .min()
                    .unwrap_or(0);
                let r = Refusal::Overloaded(least.div_ceil(10));
                self.admission.count_refusal(r);
                Err(r)
            }
        }
    }

    /// WHEP POST: answer `offer` for `stream` on the least-loaded worker that has room (see
    /// [`SfuHandle::place`]). `slot` was reserved by the caller before any work was spent on the
    /// offer ([`Admission::reserve`]); it is given back (dropped) on every failure.
    pub fn create_session(
        &self,
        stream: &str,
        offer: &str,
        slot: Slot,
    ) -> Result<Created, WhepError> {
        self.create_session_for(stream, offer, slot, false)
    }

    /// [`SfuHandle::create_session`] for a viewer that is another node's edge pull when
    /// `relay`.
    pub fn create_session_for(
        &self,
        stream: &str,
        offer: &str,
        slot: Slot,
        relay: bool,
    ) -> Result<Created, WhepError> {
        let offer::Offer {
            sdp: parsed, mids, ..
        } = offer::check(offer, Role::Viewer)?;
        let Some(s) = self.registry.get(stream) else {
            return Err(WhepError::UnknownStream(stream.into()));
        };
        if s.state() != StreamState::Publishing {
            return Err(WhepError::NotLive(stream.into()));
        }
        let profile = match s.tracks() {
            Some(t) => match t.h264() {
                Some(p) => Some(p.profile_idc),
                None if t.video.is_some() => return Err(WhepError::StreamNotH264(stream.into())),
                None => None,
            },
            None => None,
        };
        let worker = self.place(SlotKind::Viewer).map_err(WhepError::Refused)?;
        // Simulcast: the viewer's layer follows str0m's bandwidth estimate (TWCC). Without
        // layers there is nothing to choose, so the estimator's per-packet work is skipped.
        let bwe = (s.simulcast_layers() > 1).then_some(self.cfg.bwe_initial_kbps * 1000);
        let (mut rtc, creds) = build_viewer_rtc(&self.cert, Instant::now(), bwe);
        // Passive ICE-TCP candidates (RFC 6544) for viewers whose UDP is blocked.
        add_candidates(&mut rtc, &worker.candidates, &worker.tcp_candidates);
        let answer = rtc
            .sdp_api()
            .accept_offer(parsed)
            .map_err(|e| WhepError::BadSdp(e.to_string()))?;
        let Some(video) = choose_video(&rtc, &mids, profile) else {
            return Err(WhepError::NoH264);
        };
        let audio = choose_audio(&rtc, &mids);
        let ids = self.new_ids();
        let nv = NewViewer {
            id: ids.id,
            stream: Arc::from(stream),
            rtc,
            video,
            audio,
            ufrag: creds.ufrag,
            bwe: bwe.is_some(),
            slot: Some(slot),
            relay,
        };
        let msg = ControlMsg::Add(Box::new(nv));
        match self.hand_over(worker, &ids, Role::Viewer, stream, msg) {
            Ok(()) => Ok(Created {
                session_id: ids.session_id,
                answer: answer.to_sdp_string(),
                etag: ids.etag,
            }),
            Err(HandOver::Full) => Err(WhepError::Full),
            Err(HandOver::Stopped) => Err(WhepError::Internal("worker stopped".into())),
        }
    }

    /// Ids for a new session: unique among the sessions, a secret URL token, an ETag.
    fn new_ids(&self) -> NewIds {
        let id = loop {
            let id = rand::random::<u64>() >> 1;
            if id != 0 && self.sessions.get(id).is_none() {
                break id;
            }
        };
        let token = format!("{:016x}", rand::random::<u64>());
        NewIds {
            id,
            session_id: format!("{id:016x}{token}"),
            token,
            etag: format!("\"{:016x}\"", rand::random::<u64>()),
        }
    }

    /// Register a session for signaling and hand its peer to `worker`; undone when the worker's
    /// queue refuses it (the peer inside the message is dropped, with its slot).
    fn hand_over(
        &self,
        worker: &WorkerHandle,
        ids: &NewIds,
        role: Role,
        stream: &str,
        msg: ControlMsg,
    ) -> Result<(), HandOver> {
        self.sessions.insert(SessionInfo {
            viewer: ids.id,
            role,
            worker: worker.index,
            stream: stream.into(),
            token: ids.token.clone(),
            etag: ids.etag.clone(),
            created: Instant::now(),
            layer: 0,
        });
        let count = match role {
            Role::Viewer => &worker.shared.viewers,
            Role::Publisher => &worker.shared.publishers,
        };
        count.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = worker.control_tx.try_send(msg) {
            self.sessions.remove(ids.id);
            count.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                TrySendError::Full(_) => HandOver::Full,
                TrySendError::Disconnected(_) => HandOver::Stopped,
            });
        }
        worker.waker.wake();
        Ok(())
    }

    /// Look a session URL id up (constant-time token check).
    pub fn session(&self, session_id: &str) -> Option<SessionInfo> {
        if session_id.len() != 32 || !session_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let viewer = u64::from_str_radix(&session_id[..16], 16).ok()?;
        let s = self.sessions.get(viewer)?;
        crate::config::constant_time_eq(s.token.as_bytes(), &session_id.as_bytes()[16..])
            .then_some(s)
    }

    /// WHEP DELETE.
    pub fn delete(&self, session_id: &str) -> Result<(), WhepError> {
        let s = self.session(session_id).ok_or(WhepError::NoSession)?;
        self.sessions.remove(s.viewer);
        let w = &self.workers[s.worker];
        let _ = w.control_tx.try_send(ControlMsg::Remove(s.viewer));
        w.waker.wake();
        Ok(())
    }

    /// Stop the workers and the router (tests; the process normally just exits).
    pub fn shutdown(&self) {
        for w in &self.workers {
            let _ = w.control_tx.send(ControlMsg::Shutdown);
            w.waker.wake();
        }
        for w in &self.workers {
            if let Some(t) = w.thread.lock().take() {
                let _ = t.join();
            }
        }
        let _ = self.router.lock().take();
    }
}

/// A viewer's `Rtc`: ICE-lite, RTP mode (we write pre-packetized RTP), the node's shared DTLS
/// certificate (generating one per viewer costs a key generation), H.264 and Opus only.
/// `bwe`: initial estimate (bits/s) to run str0m's bandwidth estimation with (simulcast).
pub fn build_viewer_rtc(
    cert: &str0m::config::DtlsCert,
    now: Instant,
    bwe: Option<u64>,
) -> (Rtc, IceCreds) {
    use str0m::rtp::{Extension, ExtensionMap};
    let creds = IceCreds::new();
    // Header extensions: BUNDLE needs the MID. Transport-wide sequence numbers (TWCC) are only
    // worth it where a bandwidth estimate picks a layer: str0m keeps a 1,000-entry send record
    // for them per viewer (≈ 64 KB) and writes one per packet.
    let mut exts = ExtensionMap::empty();
    exts.set(4, Extension::RtpMid);
    if bwe.is_some() {
        exts = ExtensionMap::standard();
    }
    let rtc = Rtc::builder()
        .set_extension_map(exts)
        .enable_bwe(bwe.map(str0m::bwe::Bitrate::bps))
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_dtls_cert(cert.clone())
        .set_local_ice_credentials(creds.clone())
        .clear_codecs()
        .enable_h264(true)
        // Opus: the router sends Opus as published (WHIP) or bridged from AAC (RTMP).
        .enable_opus(true, false)
        // NACK history per viewer: entries point at shared payloads, but each is a ~430-byte
        // packet struct, so keep ≈ 1 s at 1 Mbit/s (enough to repair loss on an edge RTT);
        // 512 cost ≈ 200 KB per viewer (docs/BENCHMARKS.md).
        .set_send_buffer_video(128)
        .set_send_buffer_audio(32)
        .set_stats_interval(None)
        .build(now);
    (rtc, creds)
}

/// Answer a viewer's SDP `offer` straight into `core` as viewer `id` of `stream`, with a host
/// candidate at `local` and video of H.264 `profile_idc`: what [`SfuHandle::create_session`] does
/// for a worker, without registry, admission or signaling. For the SFU's in-process unit tests
/// and benches; returns the answer SDP. Panics on an offer the SFU cannot answer.
#[doc(hidden)]
pub fn answer_in_process(
    core: &mut worker::WorkerCore,
    cert: &str0m::config::DtlsCert,
    (id, stream): (u64, &str),
    offer: &str,
    local: SocketAddr,
    profile_idc: Option<u8>,
    now: Instant,
) -> String {
    let parsed = str0m::change::SdpOffer::from_sdp_string(offer).expect("offer parses");
    let (mut rtc, creds) = build_viewer_rtc(cert, now, None);
    rtc.add_local_candidate(str0m::Candidate::host(local, "udp").expect("host candidate"));
    let answer = rtc.sdp_api().accept_offer(parsed).expect("offer accepted");
    let video = choose_video(&rtc, &offer::mids(offer), profile_idc).expect("H.264 negotiated");
    core.add_viewer(
        NewViewer {
            id,
            stream: Arc::from(stream),
            rtc,
            video,
            audio: None,
            ufrag: creds.ufrag,
            bwe: false,
            slot: None,
            relay: false,
        },
        now,
    );
    answer.to_sdp_string()
}

/// Bind worker `i`'s ICE-TCP port and start its listener thread; the candidate addresses, or
/// none (logged) when the port cannot be bound.
fn start_ice_tcp(
    cfg: &SfuConfig,
    i: usize,
    waker: &Waker,
    w: &mut worker::Worker,
) -> Vec<SocketAddr> {
    let bind = SocketAddr::new(cfg.bind_ip, cfg.ice_tcp_port_base + i as u16);
    let listener = match std::net::TcpListener::bind(bind) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(worker = i, %bind, "ICE-TCP disabled for this worker: cannot bind: {e}");
            return Vec::new();
        }
    };
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(worker = i, "ICE-TCP disabled for this worker: {e}");
            return Vec::new();
        }
    };
    let candidates = candidate_addrs(cfg, local);
    let deadlines = tcp::Deadlines {
        connect: std::time::Duration::from_millis(cfg.connect_timeout_ms),
        idle: std::time::Duration::from_millis(cfg.idle_timeout_ms),
    };
    match tcp::spawn(
        i,
        listener,
        candidates.clone(),
        waker.clone(),
        cfg.ice_tcp_max_connections,
        deadlines,
    ) {
        Ok(link) => {
            tracing::info!(worker = i, %local, candidates = ?candidates, "ICE-TCP listening");
            w.set_tcp(link);
            candidates
        }
        Err(e) => {
            tracing::warn!(worker = i, "ICE-TCP disabled for this worker: {e}");
            Vec::new()
        }
    }
}

/// ICE candidate addresses for a worker bound at `bound`.
pub fn candidate_addrs(cfg: &SfuConfig, bound: SocketAddr) -> Vec<SocketAddr> {
    let port = bound.port();
    let mut ips: Vec<IpAddr> = if !cfg.advertise.is_empty() {
        cfg.advertise.clone()
    } else if !bound.ip().is_unspecified() {
        vec![bound.ip()]
    } else {
        local_ips(bound.ip().is_ipv6())
    };
    ips.retain(|ip| !ip.is_unspecified());
    ips.dedup();
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Interface addresses (non-loopback first, loopback last) via getifaddrs.
fn local_ips(v6: bool) -> Vec<IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs allocates a list we walk read-only and free with freeifaddrs.
    unsafe {
        let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut ifap) == 0 {
            let mut p = ifap;
            while !p.is_null() {
                let ifa = &*p;
                if !ifa.ifa_addr.is_null() && ifa.ifa_flags & libc::IFF_UP as u32 != 0 {
                    let fam = (*ifa.ifa_addr).sa_family as i32;
                    if fam == libc::AF_INET {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    } else if fam == libc::AF_INET6 && v6 {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                            out.push(IpAddr::V6(ip));
                        }
                    }
                }
                p = ifa.ifa_next;
            }
            libc::freeifaddrs(ifap);
        }
    }
    out.retain(|ip| match ip {
        IpAddr::V4(v) => !v.is_link_local(),
        IpAddr::V6(_) => true,
    });
    out.sort_by_key(|ip| ip.is_loopback());
    out.dedup();
    if out.is_empty() {
        out.push(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    }
    out
}
