//! Edge pull: a stream that is live on another WHEP server (another deltacast node, or another
//! vendor's WHEP endpoint) pulled as a WHEP *subscriber* and republished here, so this node's
//! WHEP viewers, LL-HLS packager and RTMP push see an ordinary local stream.
//!
//! ```text
//!  POST /whep/{s} (not live here) ─► PullManager::ensure ─► OriginResolver (static [[streams]]
//!      pull, or the cluster) ─► pull task: build Rtc (offerer, full ICE, controlling, frame
//!      mode) ─► POST offer to the upstream WHEP URL (307 followed, Deltacast-Via) ─► 201 +
//!      answer ─► begin_publish ─► peer (role UpstreamSubscriber) to an SFU worker
//!  upstream UDP ─► SFU worker ─► UpstreamSubscriber = WhipPublisher's frame path (H264Assembler,
//!      TrackClock, Opus as Opus) ─► media::Publisher ─► every egress
//! ```
//!
//! - [`UpstreamSubscriber`] is the third role of a [`crate::webrtc::peer::Peer`]: media in like a
//!   WHIP publisher (it *is* a [`WhipPublisher`] inside, so the assembler, clocks, keyframe
//!   policy and `PublisherControl` are the publisher's), placed by this module instead of a POST.
//!   Local viewers' keyframe requests reach it through the stream's control handle and leave as
//!   PLIs upstream, paced by [`crate::media::control::KeyframeRequests`].
//! - [`PullManager`] owns one pull task per stream: it starts on the first [`PullManager::ensure`]
//!   (later callers join and wait, bounded, for the tracks), stops `linger` after the last local
//!   WebRTC viewer leaves (DELETE upstream, the local stream removed), and when the upstream ends
//!   or stalls while viewers remain it re-resolves and re-pulls with backoff: the local stream
//!   only goes idle in between, so its viewers stay and continue on the new publisher session.
//! - Loops: every pull POST carries `Deltacast-Via` (the node ids it went through, this one
//!   last); `POST /whep/{s}` refuses with 508 a request whose via names this node or is longer
//!   than [`MAX_HOPS`] ([`check_via`]).
//! - Signaling goes through the process's outbound client ([`crate::http::client`]): `http://`
//!   upstreams only; TLS belongs to the load balancer in front of a node.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use bytes::Bytes;
use parking_lot::Mutex;
use str0m::media::{Direction, MediaKind};
use str0m::{Event, IceCreds, Rtc};
use tokio::sync::{watch, Notify};

use super::whip::{media_mids, WhipControl, WhipPublisher};
use crate::egress::sfu::SfuHandle;
use crate::media::Registry;
use crate::webrtc::peer::{DropReason, Link, PeerRole};

/// The request header that carries the node ids a pull went through.
pub const VIA_HEADER: &str = "deltacast-via";
/// Most node ids a pull request may carry (origin → mid-tier → edge needs 2).
pub const MAX_HOPS: usize = 4;
/// Redirects followed per POST (RFC 9725 allows them for load balancing).
const MAX_REDIRECTS: usize = 3;
/// Largest SDP answer read from an upstream.
const MAX_ANSWER: usize = 64 * 1024;
/// Most streams pulled at once by one node.
const MAX_PULLS: usize = 1024;
/// No media from the upstream for this long: it is gone (faster than the ICE idle deadline).
const STALL: Duration = Duration::from_secs(3);
/// Backoff between re-pull attempts: doubles from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// Re-pulling gives up (the local stream ends, its viewers are dropped) after this long
/// without an upstream.
const RETRY_FOR: Duration = Duration::from_secs(120);
/// How often a pull task looks at its viewers and its link.
const TICK: Duration = Duration::from_millis(200);

/// Where to pull a stream from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The upstream's WHEP resource, e.g. `http://10.0.0.5:8080/whep/name`.
    pub whep_url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub bearer: Option<String>,
}

/// Finds where a stream that is not live here can be pulled from.
pub trait OriginResolver: Send + Sync + 'static {
    /// Where to pull `stream` from when it is not live on this node; None = nowhere (404 as
    /// today).
    fn upstream<'a>(
        &'a self,
        stream: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Upstream>> + Send + 'a>>;
}

/// The single-node resolver: `[[streams]] pull = "http://host/whep/name"`.
#[derive(Default)]
pub struct StaticResolver {
    map: HashMap<String, String>,
}

impl StaticResolver {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            map: cfg
                .streams
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.pull.clone()?)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl OriginResolver for StaticResolver {
    fn upstream<'a>(
        &'a self,
        stream: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Upstream>> + Send + 'a>> {
        let u = self.map.get(stream).map(|u| Upstream {
            whep_url: u.clone(),
            bearer: None,
        });
        Box::pin(async move { u })
    }
}

/// Why a pull could not make a stream live here.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PullError {
    /// The resolver knows no upstream: the stream is unknown here (404 as without pulls).
    #[error("no upstream for this stream")]
    NoUpstream,
    /// The pull would go through a node twice, or too many hops (508).
    #[error("pull loop: {0}")]
    Loop(String),
    /// The upstream answered with an error status.
    #[error("upstream answered {status}: {msg}")]
    Refused { status: u16, msg: String },
    /// The upstream could not be reached or answered nonsense.
    #[error("upstream unreachable: {0}")]
    Connect(String),
    /// The pull did not deliver tracks in time.
    #[error("upstream did not deliver media within {0} ms")]
    Timeout(u64),
    /// This node cannot pull (WebRTC off, too many pulls, a worker refused).
    #[error("cannot pull here: {0}")]
    Unavailable(String),
}

/// Check a request's `Deltacast-Via` against this node: Err (508) when it names `node_id` or
/// holds more than [`MAX_HOPS`] ids. Ok gives the ids.
pub fn check_via(headers: &HeaderMap, node_id: &str) -> Result<Vec<String>, PullError> {
    let mut via = Vec::new();
    for v in headers.get_all(VIA_HEADER) {
        let v = v
            .to_str()
            .map_err(|_| PullError::Loop("unreadable Deltacast-Via".into()))?;
        via.extend(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        if via.len() > MAX_HOPS {
            break;
        }
    }
    if via.iter().any(|v| v == node_id) {
        return Err(PullError::Loop(format!(
            "this node ({node_id}) is already on the pull path {}",
            via.join(",")
        )));
    }
    if via.len() > MAX_HOPS {
        return Err(PullError::Loop(format!(
            "more than {MAX_HOPS} hops on the pull path"
        )));
    }
    Ok(via)
}

// ───────────────────────────── the peer role ─────────────────────────────

/// What a pull task and the worker hosting its peer share.
#[derive(Default)]
pub struct PullLink {
    connected: AtomicBool,
    ended: AtomicBool,
    reason: Mutex<Option<DropReason>>,
    /// Media payload bytes received from the upstream.
    pub bytes: AtomicU64,
    notify: Notify,
}

impl PullLink {
    fn end(&self, why: DropReason) {
        self.reason.lock().get_or_insert(why);
        self.ended.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn ended(&self) -> Option<DropReason> {
        if self.ended.load(Ordering::Acquire) {
            Some(self.reason.lock().unwrap_or(DropReason::RtcError))
        } else {
            None
        }
    }
}

/// The upstream-subscriber role of a peer: frames in from another WHEP server, through the WHIP
/// publisher's path.
pub struct UpstreamSubscriber {
    inner: WhipPublisher,
    link: Arc<PullLink>,
}

impl PeerRole for UpstreamSubscriber {
    fn kind(&self) -> &'static str {
        "subscriber"
    }

    fn on_event(&mut self, link: &mut Link, e: Event, now: Instant) {
        if matches!(e, Event::Connected) {
            self.link.connected.store(true, Ordering::Release);
            tracing::info!(peer = link.id, stream = %link.stream, side = "ingest",
                path = "pull", "upstream subscriber connected");
        }
        let before = self.inner.stats.bytes;
        self.inner.on_event(link, e, now);
        let got = self.inner.stats.bytes - before;
        if got > 0 {
            self.link.bytes.fetch_add(got, Ordering::Relaxed);
        }
    }
}

impl UpstreamSubscriber {
    /// Keyframe requests from local viewers → PLI upstream (see [`WhipPublisher::on_control`]).
    pub fn on_control(&mut self, link: &mut Link, now: Instant) -> bool {
        self.inner.on_control(link, now)
    }

    pub fn keyframe_retry_at(&self, link: &Link) -> Option<Instant> {
        self.inner.keyframe_retry_at(link)
    }

    /// The worker drops the peer: the publisher session ends (stream idle), the task hears.
    pub fn end(&mut self, why: DropReason) {
        self.inner.end(why);
        self.link.end(why);
    }

    pub fn stats(&self) -> &super::whip::WhipStats {
        &self.inner.stats
    }
}

impl Drop for UpstreamSubscriber {
    fn drop(&mut self) {
        // However the peer goes (a refused hand-over too), the task must hear of it.
        self.link.end(DropReason::Deleted);
    }
}

/// The subscriber's `Rtc`: the offering client (full ICE, controlling), frame mode, the node's
/// DTLS certificate, H.264 and Opus only; its offer receives one video and one audio m-line.
pub fn build_subscriber_rtc(cert: &str0m::config::DtlsCert, now: Instant) -> (Rtc, IceCreds) {
    let creds = IceCreds::new();
    let rtc = Rtc::builder()
        .set_dtls_cert(cert.clone())
        .set_local_ice_credentials(creds.clone())
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_stats_interval(None)
        .build(now);
    (rtc, creds)
}

/// A subscriber peer, offered and not yet answered (see [`SfuHandle::offer_subscriber`]).
pub struct PendingSubscriber {
    pub rtc: Rtc,
    pub pending: str0m::change::SdpPendingOffer,
    pub offer: String,
    /// The SFU worker whose candidates the offer carries.
    pub worker: usize,
    pub ufrag: String,
}

impl PendingSubscriber {
    /// The offer's m-line ids, in order.
    pub fn mids(&self) -> Vec<String> {
        self.offer
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
            .map(String::from)
            .collect()
    }
}

/// Offer the subscriber's m-lines on `rtc` (one recvonly video, one recvonly audio).
pub fn make_offer(rtc: &mut Rtc) -> Option<(String, str0m::change::SdpPendingOffer)> {
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (o, p) = api.apply()?;
    Some((o.to_sdp_string(), p))
}

/// The role for a subscriber whose answer was accepted: the `WhipPublisher` frame path with the
/// m-lines of `rtc`, feeding `publisher`.
pub fn subscriber_role(
    rtc: &Rtc,
    mids: &[String],
    publisher: crate::media::Publisher,
    control: Arc<WhipControl>,
    link: Arc<PullLink>,
) -> UpstreamSubscriber {
    let (video, audio) = media_mids(rtc, mids);
    let mut inner = WhipPublisher::new(publisher, control);
    inner.set_mids(video, audio);
    // No keyframe schedule: requests only when a viewer or a loss needs one.
    inner.set_video(0, 0);
    UpstreamSubscriber { inner, link }
}

// ───────────────────────────── signaling ─────────────────────────────

/// An HTTP response from an upstream.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// One HTTP/1.1 exchange with `uri` (http only), bounded by `timeout`.
async fn exchange(
    method: Method,
    uri: &Uri,
    headers: &[(header::HeaderName, HeaderValue)],
    body: Bytes,
    timeout: Duration,
) -> Result<Reply, PullError> {
    let fut = async {
        if uri.scheme_str() != Some("http") {
            return Err(PullError::Connect(format!(
                "{uri}: only http:// upstreams are supported"
            )));
        }
        let mut req = Request::builder().method(method).uri(uri.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(http_body_util::Full::new(body))
            .map_err(|e| PullError::Connect(format!("{uri}: {e}")))?;
        let resp = crate::http::client::shared()
            .request(req)
            .await
            .map_err(|e| PullError::Connect(format!("{uri}: {e}")))?;
        let (parts, b) = resp.into_parts();
        let body = axum::body::to_bytes(axum::body::Body::new(b), MAX_ANSWER)
            .await
            .map_err(|e| PullError::Connect(format!("{uri}: body: {e}")))?;
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(PullError::Timeout(timeout.as_millis() as u64)),
    }
}

/// `location` (absolute, or a path) resolved against `base`.
fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let auth = base.authority()?.as_str();
    let scheme = base.scheme_str().unwrap_or("http");
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let p = base.path();
        format!("{}/{location}", &p[..p.rfind('/').unwrap_or(0)])
    };
    format!("{scheme}://{auth}{path}").parse().ok()
}

/// A WHEP session on an upstream.
struct UpstreamSession {
    /// The session URL (for DELETE).
    resource: Uri,
    bearer: Option<String>,
    answer: String,
    /// The URL that answered (after redirects).
    url: String,
}

/// POST `offer` to the upstream (following up to [`MAX_REDIRECTS`] 307/308s).
async fn post_offer(
    up: &Upstream,
    offer: &str,
    via: &str,
    timeout: Duration,
) -> Result<UpstreamSession, PullError> {
    let mut uri: Uri = up
        .whep_url
        .parse()
        .map_err(|e| PullError::Connect(format!("{}: {e}", up.whep_url)))?;
    let mut headers = vec![
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/sdp"),
        ),
        (
            header::HeaderName::from_static(VIA_HEADER),
            HeaderValue::from_str(via).map_err(|e| PullError::Loop(e.to_string()))?,
        ),
    ];
    if let Some(b) = &up.bearer {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {b}")) {
            headers.push((header::AUTHORIZATION, v));
        }
    }
    let deadline = Instant::now() + timeout;
    for _ in 0..=MAX_REDIRECTS {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = exchange(
            Method::POST,
            &uri,
            &headers,
            Bytes::from(offer.to_string()),
            left,
        )
        .await?;
        let location = r
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match r.status {
            StatusCode::CREATED => {
                let loc = location
                    .ok_or_else(|| PullError::Connect(format!("{uri}: 201 without a Location")))?;
                let resource = resolve(&uri, &loc)
                    .ok_or_else(|| PullError::Connect(format!("{uri}: bad Location {loc}")))?;
                let answer = String::from_utf8(r.body.to_vec())
                    .map_err(|_| PullError::Connect(format!("{uri}: answer is not UTF-8")))?;
                return Ok(UpstreamSession {
                    resource,
                    bearer: up.bearer.clone(),
                    answer,
                    url: uri.to_string(),
                });
            }
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {
                let loc = location.ok_or_else(|| {
                    PullError::Connect(format!("{uri}: redirect without a Location"))
                })?;
                uri = resolve(&uri, &loc)
                    .ok_or_else(|| PullError::Connect(format!("{uri}: bad Location {loc}")))?;
            }
            s => {
                let msg = String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                    .trim()
                    .to_string();
                if s == StatusCode::LOOP_DETECTED {
                    return Err(PullError::Loop(msg));
                }
                return Err(PullError::Refused {
                    status: s.as_u16(),
                    msg,
                });
            }
        }
    }
    Err(PullError::Connect(format!(
        "{}: more than {MAX_REDIRECTS} redirects",
        up.whep_url
    )))
}

/// DELETE the upstream session (best effort, bounded).
async fn delete_session(s: &UpstreamSession) {
    let mut headers = Vec::new();
    if let Some(b) = &s.bearer {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {b}")) {
            headers.push((header::AUTHORIZATION, v));
        }
    }
    let r = exchange(
        Method::DELETE,
        &s.resource,
        &headers,
        Bytes::new(),
        Duration::from_secs(2),
    )
    .await;
    tracing::debug!(resource = %s.resource, ok = r.is_ok(), "upstream WHEP session deleted");
}

// ───────────────────────────── the manager ─────────────────────────────

/// Timing of pulls (`[pull]`).
#[derive(Clone, Copy, Debug)]
pub struct PullTiming {
    /// Stop this long after the last local viewer left.
    pub linger: Duration,
    /// Signaling + ICE/DTLS + first tracks must complete within this.
    pub connect: Duration,
}

/// How far a pull got (what `ensure` waits on).
#[derive(Clone, Debug)]
enum Phase {
    Starting,
    Ready,
    Failed(PullError),
}

struct Pull {
    phase: watch::Receiver<Phase>,
    /// The upstream WHEP URL now in use.
    url: Arc<Mutex<String>>,
    /// Tells the task to stop now (shutdown).
    stop: Arc<Notify>,
}

/// Counters for /metrics.
#[derive(Default)]
struct PullStats {
    bytes: AtomicU64,
    restarts: AtomicU64,
    started: AtomicU64,
    failed: AtomicU64,
    /// Pulls stopped because a local publisher took their stream over.
    taken_over: AtomicU64,
}

/// Edge pulls of this node, one task per stream (see the module docs). Held as
/// `Arc<PullManager>` by the HTTP state.
pub struct PullManager {
    node_id: String,
    registry: Arc<Registry>,
    sfu: Option<Arc<SfuHandle>>,
    timing: PullTiming,
    resolver: Mutex<Option<Arc<dyn OriginResolver>>>,
    pulls: Mutex<HashMap<String, Pull>>,
    stats: Arc<PullStats>,
}

/// One attempt's result inside the pull task.
enum Attempt {
    /// Connected; ran until the link ended. `true`: the task should stop (linger passed).
    Ran {
        stop: bool,
    },
    Failed(PullError),
}

impl PullManager {
    pub fn new(
        node_id: String,
        registry: Arc<Registry>,
        sfu: Option<Arc<SfuHandle>>,
        timing: PullTiming,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            registry,
            sfu,
            timing,
            resolver: Mutex::new(None),
            pulls: Mutex::new(HashMap::new()),
            stats: Arc::new(PullStats::default()),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn set_resolver(&self, r: Arc<dyn OriginResolver>) {
        *self.resolver.lock() = Some(r);
    }

    /// `(stream, upstream WHEP URL)` of every pull.
    pub fn active(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .pulls
            .lock()
            .iter()
            .map(|(k, p)| (k.clone(), p.url.lock().clone()))
            .collect();
        v.sort();
        v
    }

    /// The upstream URL `stream` is pulled from, if it is.
    pub fn upstream_of(&self, stream: &str) -> Option<String> {
        self.pulls.lock().get(stream).map(|p| p.url.lock().clone())
    }

    /// Another publisher (RTMP, WHIP) publishes `stream` here: what the log says, or None.
    /// A pull's own sessions publish as `pull {upstream}` (`SfuHandle::add_subscriber`).
    fn taken_over(&self, stream: &str) -> Option<String> {
        let st = self.registry.get(stream)?.status();
        if st.state != crate::media::StreamState::Publishing {
            return None;
        }
        let by = st.publisher.unwrap_or_default();
        (!by.starts_with("pull ")).then(|| format!("a local publisher ({by}) took the stream over"))
    }

    /// [`Self::taken_over`], logged and counted: true when the pull of `stream` must stop.
    fn stop_if_taken_over(&self, stream: &str) -> bool {
        let Some(why) = self.taken_over(stream) else {
            return false;
        };
        tracing::info!(
            stream,
            side = "ingest",
            path = "pull",
            "{why}; pull stopped, this node is the stream's origin now"
        );
        self.stats.taken_over.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn live_here(&self, stream: &str) -> bool {
        self.registry.get(stream).is_some_and(|s| {
            s.state() == crate::media::StreamState::Publishing && s.tracks().is_some()
        })
    }

    /// Ensure `stream` is live here, pulling it through the resolver if needed; joins a pull in
    /// progress; waits (bounded by `connect_timeout_ms`) until its tracks are ready.
    pub async fn ensure(self: &Arc<Self>, stream: &str) -> Result<(), PullError> {
        self.ensure_via(stream, &[]).await
    }

    /// [`PullManager::ensure`] for a request that already went through the nodes `via` (its
    /// `Deltacast-Via`): the pull carries them on, this node appended.
    pub async fn ensure_via(
        self: &Arc<Self>,
        stream: &str,
        via: &[String],
    ) -> Result<(), PullError> {
        let joined = self.pulls.lock().get(stream).map(|p| p.phase.clone());
        let mut phase = match joined {
            Some(p) => p,
            None => {
                if self.live_here(stream) {
                    return Ok(());
                }
                let resolver = self.resolver.lock().clone();
                let Some(resolver) = resolver else {
                    return Err(PullError::NoUpstream);
                };
                let Some(up) = tokio::time::timeout(self.timing.connect, resolver.upstream(stream))
                    .await
                    .ok()
                    .flatten()
                else {
                    return Err(PullError::NoUpstream);
                };
                self.start(stream, up, via)?
            }
        };
        let wait = async {
            loop {
                match &*phase.borrow_and_update() {
                    Phase::Ready => return Ok(()),
                    Phase::Failed(e) => return Err(e.clone()),
                    Phase::Starting => {}
                }
                if phase.changed().await.is_err() {
                    return Err(PullError::Unavailable("pull stopped".into()));
                }
            }
        };
        // Signaling and the media's arrival both fit in the connect bound (plus slack for a
        // joiner that came late).
        match tokio::time::timeout(self.timing.connect + Duration::from_millis(500), wait).await {
            Ok(r) => r,
            Err(_) => Err(PullError::Timeout(self.timing.connect.as_millis() as u64)),
        }
    }

    /// Register a pull of `stream` and spawn its task (or join one that raced us here).
    fn start(
        self: &Arc<Self>,
        stream: &str,
        up: Upstream,
        via: &[String],
    ) -> Result<watch::Receiver<Phase>, PullError> {
        let Some(sfu) = self.sfu.clone() else {
            return Err(PullError::Unavailable(
                "WebRTC is disabled on this node".into(),
            ));
        };
        let mut pulls = self.pulls.lock();
        if let Some(p) = pulls.get(stream) {
            return Ok(p.phase.clone());
        }
        if pulls.len() >= MAX_PULLS {
            return Err(PullError::Unavailable(format!("{MAX_PULLS} pulls already")));
        }
        let mut path: Vec<String> = via.to_vec();
        path.push(self.node_id.clone());
        let via = path.join(",");
        let (tx, rx) = watch::channel(Phase::Starting);
        let url = Arc::new(Mutex::new(up.whep_url.clone()));
        let stop = Arc::new(Notify::new());
        pulls.insert(
            stream.to_string(),
            Pull {
                phase: rx.clone(),
                url: url.clone(),
                stop: stop.clone(),
            },
        );
        drop(pulls);
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stream, upstream = %up.whep_url, via = %via, side = "ingest",
            path = "pull", "pull starting");
        let me = self.clone();
        let name = stream.to_string();
        tokio::spawn(async move {
            me.run(&sfu, &name, up, via, tx, url, stop).await;
            me.pulls.lock().remove(&name);
        });
        Ok(rx)
    }

    /// The pull task: attempts, supervision, re-pulls with backoff, stop.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        self: &Arc<Self>,
        sfu: &Arc<SfuHandle>,
        stream: &str,
        mut up: Upstream,
        via: String,
        phase: watch::Sender<Phase>,
        url: Arc<Mutex<String>>,
        stop: Arc<Notify>,
    ) {
        let mut ever_ready = false;
        let mut backoff = BACKOFF_MIN;
        let mut lost_since: Option<Instant> = None;
        loop {
            *url.lock() = up.whep_url.clone();
            let r = self
                .attempt(sfu, stream, &up, &via, &phase, &mut ever_ready, &stop)
                .await;
            match r {
                Attempt::Ran { stop: true } => break,
                Attempt::Ran { stop: false } => {
                    backoff = BACKOFF_MIN;
                    lost_since = Some(Instant::now());
                    // Viewers arriving now wait (bounded) for the re-pull instead of a 409.
                    let _ = phase.send(Phase::Starting);
                }
                Attempt::Failed(e) => {
                    if !ever_ready {
                        tracing::info!(stream, upstream = %up.whep_url, side = "ingest",
                            path = "pull", "pull failed: {e}");
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        let _ = phase.send(Phase::Failed(e));
                        // The stream may have been created by begin_publish: leave no trace.
                        self.end_stream(stream);
                        return;
                    }
                    tracing::info!(stream, upstream = %up.whep_url, side = "ingest",
                        path = "pull", "re-pull failed: {e}");
                    lost_since.get_or_insert_with(Instant::now);
                }
            }
            // The upstream is gone. Keep the stream (idle) for its viewers and re-pull, unless
            // nobody watches any more or it has been too long.
            let since = *lost_since.get_or_insert_with(Instant::now);
            if sfu.viewers_of(stream) == 0 || since.elapsed() > RETRY_FOR {
                break;
            }
            // The publisher came here instead (an origin died and its encoder reconnected to
            // this node): this node is the stream's origin now and its viewers already play
            // from that publisher. Stop pulling, so the cluster registers this node as the
            // origin and the other edges re-pull from here.
            if self.stop_if_taken_over(stream) {
                break;
            }
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.notified() => break,
            }
            if self.stop_if_taken_over(stream) {
                break;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            // The origin may have moved: ask again.
            let resolver = self.resolver.lock().clone();
            if let Some(r) = resolver {
                if let Ok(Some(u)) =
                    tokio::time::timeout(self.timing.connect, r.upstream(stream)).await
                {
                    up = u;
                }
            }
        }
        tracing::info!(stream, upstream = %up.whep_url, side = "ingest", path = "pull",
            "pull stopped");
        // A viewer joining in this instant is told to come back (503 + Retry-After).
        let _ = phase.send(Phase::Failed(PullError::Unavailable(
            "the pull of this stream is stopping".into(),
        )));
        self.end_stream(stream);
    }

    /// Remove the local stream of a pull (its viewers get `StreamEnded`), unless some other
    /// publisher took it over.
    fn end_stream(&self, stream: &str) {
        if let Some(s) = self.registry.get(stream) {
            if s.state() != crate::media::StreamState::Publishing {
                self.registry.remove(stream);
            }
        }
    }

    /// One connection to the upstream, supervised until it ends.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        self: &Arc<Self>,
        sfu: &Arc<SfuHandle>,
        stream: &str,
        up: &Upstream,
        via: &str,
        phase: &watch::Sender<Phase>,
        ever_ready: &mut bool,
        stop: &Arc<Notify>,
    ) -> Attempt {
        let started = Instant::now();
        let pending = match sfu.offer_subscriber() {
            Ok(p) => p,
            Err(e) => return Attempt::Failed(e),
        };
        let session = match post_offer(up, &pending.offer, via, self.timing.connect).await {
            Ok(s) => s,
            Err(e) => return Attempt::Failed(e),
        };
        let link = Arc::new(PullLink::default());
        let peer_id = match sfu.add_subscriber(
            &self.registry,
            stream,
            pending,
            &session.answer,
            &session.url,
            link.clone(),
        ) {
            Ok(id) => id,
            Err(e) => {
                delete_session(&session).await;
                return Attempt::Failed(e);
            }
        };
        tracing::info!(stream, upstream = %session.url, side = "ingest", path = "pull",
            "upstream answered; subscriber on its worker");
        let mut ready = false;
        let mut last_bytes = 0u64;
        let mut last_media = Instant::now();
        let mut no_viewers_since: Option<Instant> = None;
        let outcome = loop {
            tokio::select! {
                _ = link.notify.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.notified() => break Attempt::Ran { stop: true },
            }
            let now = Instant::now();
            let b = link.bytes.load(Ordering::Relaxed);
            if b != last_bytes {
                self.stats
                    .bytes
                    .fetch_add(b - last_bytes, Ordering::Relaxed);
                last_bytes = b;
                last_media = now;
            }
            if let Some(why) = link.ended() {
                tracing::info!(stream, upstream = %session.url, reason = why.as_str(),
                    side = "ingest", path = "pull", "upstream subscriber ended");
                if !ready {
                    break Attempt::Failed(PullError::Connect(format!(
                        "subscriber dropped before media: {}",
                        why.as_str()
                    )));
                }
                break Attempt::Ran { stop: false };
            }
            if !ready {
                if self.live_here(stream) {
                    ready = true;
                    *ever_ready = true;
                    last_media = now;
                    let _ = phase.send(Phase::Ready);
                    tracing::info!(stream, upstream = %session.url, side = "ingest",
                        path = "pull", ms = started.elapsed().as_millis() as u64,
                        "pull live");
                } else if started.elapsed() > self.timing.connect {
                    break Attempt::Failed(PullError::Timeout(
                        self.timing.connect.as_millis() as u64
                    ));
                }
                continue;
            }
            if now.duration_since(last_media) > STALL {
                tracing::info!(stream, upstream = %session.url, side = "ingest", path = "pull",
                    "no media from the upstream for {STALL:?}");
                break Attempt::Ran { stop: false };
            }
            if sfu.viewers_of(stream) == 0 {
                let since = *no_viewers_since.get_or_insert(now);
                if now.duration_since(since) >= self.timing.linger {
                    break Attempt::Ran { stop: true };
                }
            } else {
                no_viewers_since = None;
            }
        };
        sfu.remove_peer(peer_id);
        delete_session(&session).await;
        outcome
    }

    /// Stop every pull (shutdown).
    pub fn stop_all(&self) {
        for p in self.pulls.lock().values() {
            p.stop.notify_one();
        }
    }

    /// `deltacast_pull_*` into a Prometheus registry.
    pub fn encode_metrics(&self, r: &mut prometheus_client::registry::Registry) {
        use crate::metrics::{counter, gauge};
        let ld = |v: &AtomicU64| v.load(Ordering::Relaxed);
        r.register(
            "pull_active",
            "Streams pulled from an upstream WHEP server now",
            gauge(self.pulls.lock().len() as i64),
        );
        r.register(
            "pull_bytes",
            "Media payload bytes received by pulls",
            counter(ld(&self.stats.bytes)),
        );
        r.register(
            "pull_restarts",
            "Re-pulls after an upstream ended or stalled while viewers remained",
            counter(ld(&self.stats.restarts)),
        );
        r.register(
            "pull_started",
            "Pulls started",
            counter(ld(&self.stats.started)),
        );
        r.register(
            "pull_failed",
            "Pulls that never delivered media",
            counter(ld(&self.stats.failed)),
        );
        r.register(
            "pull_taken_over",
            "Pulls stopped because a publisher of the stream connected to this node",
            counter(ld(&self.stats.taken_over)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn via(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for x in v {
            h.append(VIA_HEADER, HeaderValue::from_str(x).unwrap());
        }
        h
    }

    #[test]
    fn via_refuses_this_node_and_long_paths() {
        assert_eq!(check_via(&via(&[]), "a").unwrap(), Vec::<String>::new());
        assert_eq!(check_via(&via(&["o, m"]), "e").unwrap(), vec!["o", "m"]);
        assert!(matches!(
            check_via(&via(&["o,e"]), "e"),
            Err(PullError::Loop(_))
        ));
        assert!(matches!(
            check_via(&via(&["o", "e"]), "e"),
            Err(PullError::Loop(_))
        ));
        assert!(check_via(&via(&["a,b,c,d"]), "e").is_ok());
        assert!(matches!(
            check_via(&via(&["a,b,c,d,f"]), "e"),
            Err(PullError::Loop(_))
        ));
    }

    #[test]
    fn locations_resolve_against_the_request() {
        let base: Uri = "http://10.0.0.5:8080/whep/s".parse().unwrap();
        assert_eq!(
            resolve(&base, "/whep/s/abc").unwrap().to_string(),
            "http://10.0.0.5:8080/whep/s/abc"
        );
        assert_eq!(
            resolve(&base, "http://10.0.0.6:8080/whep/s")
                .unwrap()
                .to_string(),
            "http://10.0.0.6:8080/whep/s"
        );
        assert_eq!(
            resolve(&base, "s/abc").unwrap().to_string(),
            "http://10.0.0.5:8080/whep/s/abc"
        );
    }

    /// A WHEP server stand-in: `/r*` redirects (307) to the next hop, `/whep/t` answers 201;
    /// every request's path and `Deltacast-Via` are recorded.
    async fn fake_upstream() -> (SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            for _ in 0..16 {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head and the (small) body: enough for these requests.
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = c.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let via = head
                    .lines()
                    .find_map(|l| l.strip_prefix("deltacast-via: "))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                seen2.lock().push((path.clone(), via));
                let resp = if let Some(n) = path.strip_prefix("/r") {
                    let n: u32 = n.parse().unwrap_or(0);
                    let next = if n == 0 {
                        "/whep/t".to_string()
                    } else {
                        format!("/r{}", n - 1)
                    };
                    format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{addr}{next}\r\ncontent-length: 0\r\n\r\n")
                } else {
                    let body = "v=0\r\n";
                    format!("HTTP/1.1 201 Created\r\nlocation: /whep/t/sess\r\ncontent-type: application/sdp\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                };
                let _ = c.write_all(resp.as_bytes()).await;
                let _ = c.shutdown().await;
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn redirects_are_followed_up_to_three_with_the_via_header() {
        let (addr, seen) = fake_upstream().await;
        let up = |p: &str| Upstream {
            whep_url: format!("http://{addr}{p}"),
            bearer: None,
        };
        let t = Duration::from_secs(5);
        let s = post_offer(&up("/r2"), "v=0", "o,m", t)
            .await
            .expect("three redirects");
        assert_eq!(s.resource.to_string(), format!("http://{addr}/whep/t/sess"));
        assert_eq!(s.url, format!("http://{addr}/whep/t"));
        let got = seen.lock().clone();
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(
            got.iter().all(|(_, v)| v == "o,m"),
            "via on every hop: {got:?}"
        );
        seen.lock().clear();
        let e = post_offer(&up("/r3"), "v=0", "o,m", t).await.err().unwrap();
        assert!(
            matches!(e, PullError::Connect(ref m) if m.contains("redirects")),
            "{e}"
        );
        assert_eq!(seen.lock().len(), 4, "no fifth request");
    }

    #[tokio::test]
    async fn the_static_resolver_knows_only_configured_pulls() {
        let cfg = crate::config::Config::from_toml(
            "[[streams]]\nname = \"a\"\npull = \"http://127.0.0.1:1/whep/a\"\n[[streams]]\nname = \"b\"\n",
        )
        .unwrap();
        let r = StaticResolver::from_config(&cfg);
        assert_eq!(
            r.upstream("a").await.unwrap().whep_url,
            "http://127.0.0.1:1/whep/a"
        );
        assert!(r.upstream("b").await.is_none());
        assert!(r.upstream("c").await.is_none());
    }
}
