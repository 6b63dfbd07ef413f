//! The cluster: many nodes running this same binary, one stream's real-time audience spread over
//! them, with a registry in Redis (no membership protocol of our own).
//!
//! This module owns:
//! - **the registry** ([`registry`]): each node's heartbeat key (URLs, WebRTC candidates,
//!   capacity, viewers, per-worker load), each live stream's origin node, and the edges pulling
//!   each stream — every key with a TTL that the owner's heartbeat refreshes, so a dead node
//!   disappears on its own. The key layout is in docs/CLUSTER.md.
//! - **the view**: the last registry read, kept in memory so that placement decisions (a WHEP
//!   POST, the playback document) cost no Redis round trip.
//! - **placement** ([`Cluster::redirect_target`], [`Cluster::playback_base`]): the least-loaded
//!   other live node with room, by the load each node published.
//! - **the upstream resolver** ([`RedisResolver`]): where this node pulls a stream published on
//!   another node from: an `edge` node from the least-loaded live `mid` node with room, else the
//!   origin; a `mid` node from the origin (`public_http` + `/whep/{stream}`, never this node).
//!   Edges never pull from edges and mids never from mids, so tiers cannot loop.
//! - **the LL-HLS proxy** ([`hls_proxy`]): any node answers `/hls/{stream}/…` of a stream whose
//!   origin is another node by proxying to it, so a CDN has one stable URL per stream.
//!
//! Redis is not on the media path. A node that loses Redis keeps every viewer and publisher it
//! has, logs the loss once, keeps placing on its last view (which ages out, so it stops sending
//! viewers to nodes it cannot see), and re-registers on the first heartbeat after Redis returns
//! (every heartbeat writes every key again, so nothing has to be replayed).
//!
//! Without `[cluster] redis` none of this runs: the node behaves exactly as a single node, and
//! `GET /api/v1/cluster` describes it alone with `"cluster": false`.

pub mod hls_proxy;
pub mod pull;
pub mod registry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::config::{Config, NodeRole};
use crate::egress::sfu::SfuHandle;
use crate::media::{Registry, StreamState};

pub use pull::{OriginResolver, Upstream};

/// Header a node puts on requests it makes to other nodes (HLS proxying) with the ids of the
/// nodes the request went through: a node never proxies a request that already carries it.
pub const VIA_HEADER: &str = "deltacast-via";
/// Query parameter of a WHEP redirect's `Location`: the nodes that already redirected this POST
/// (comma-separated). A node in the list does not redirect the POST again.
pub const VIA_PARAM: &str = "via";
/// Most nodes one WHEP POST is redirected through before it is refused (503).
pub const MAX_REDIRECTS: usize = 4;

/// Load of one SFU worker as published in the registry.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerLoad {
    pub viewers: u64,
    /// Share of the time the worker's loop was busy, %.
    pub busy_pct: f64,
}

/// One node's heartbeat document (the value of its node key).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    pub public_http: String,
    /// WebRTC candidate addresses (`ip:port`) of the node's SFU workers (`sfu.advertise`).
    pub candidates: Vec<String>,
    /// Viewers this node takes before it redirects.
    pub capacity: u64,
    /// WebRTC viewer slots taken (connected and connecting).
    pub viewers: u64,
    pub workers: Vec<WorkerLoad>,
    /// Busy share of the least busy worker, % (what admission compares to its threshold).
    pub busy_pct: f64,
    /// 0 = idle, 1 = full: the larger of viewers/capacity and busy/threshold.
    pub load: f64,
    /// The node admits new viewers (below capacity, some worker below the busy threshold).
    pub room: bool,
    /// The node serves WebRTC at all.
    pub webrtc: bool,
    /// `cluster.role` (documents of nodes that predate it read as `edge`).
    #[serde(default)]
    pub role: NodeRole,
}

/// A node as last read from the registry.
#[derive(Clone, Debug, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// How long ago the node last refreshed its key (from the key's remaining TTL, so no clock
    /// of another machine is involved).
    pub last_seen_ms: u64,
}

/// A live stream as last read from the registry.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StreamView {
    pub name: String,
    pub origin: String,
    /// Node ids pulling the stream (from its origin or from a mid-tier node).
    pub edges: Vec<String>,
    /// Where each of `edges` pulls from: edge id → upstream node id (or the upstream URL when
    /// it is no node of the cluster). Edges of an older version are missing here.
    pub upstreams: std::collections::BTreeMap<String, String>,
}

/// The last registry read.
#[derive(Default)]
struct View {
    nodes: Vec<NodeView>,
    streams: Vec<StreamView>,
    /// When it was read; a view older than the TTL is not used for placement.
    at: Option<Instant>,
}

/// Cluster counters for `/metrics` (`deltacast_cluster_*`).
#[derive(Default)]
pub struct ClusterStats {
    pub redis_up: AtomicBool,
    pub nodes: AtomicU64,
    pub redirects: AtomicU64,
    /// WHEP POSTs refused with 503 because no other node had room.
    pub cluster_full: AtomicU64,
    pub hls_proxied: AtomicU64,
    pub hls_proxy_errors: AtomicU64,
    pub heartbeat_errors: AtomicU64,
}

/// Streams pulled onto this node (stream, upstream URL): the edge pull's `PullManager::active`.
pub type PullList = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

/// This node's membership in the cluster (or, without Redis, its description of itself).
pub struct Cluster {
    pub node_id: String,
    pub public_http: String,
    pub capacity: usize,
    pub role: NodeRole,
    pub heartbeat: Duration,
    pub ttl: Duration,
    /// A Redis URL is configured.
    pub enabled: bool,
    redis_url: String,
    registry: Arc<Registry>,
    sfu: Option<Arc<SfuHandle>>,
    admit_max_busy_pct: u32,
    view: RwLock<View>,
    /// Viewers handed to each other node (playback documents, redirects) since the view was
    /// read: added to that node's load when ranking, so a burst of joins between two heartbeats
    /// spreads instead of all going to the node that was least loaded at the last read.
    handed: parking_lot::Mutex<HashMap<String, u64>>,
    pulls: RwLock<Option<PullList>>,
    pub stats: ClusterStats,
    /// The Redis connection once made (the heartbeat makes it; it reconnects by itself).
    conn: parking_lot::Mutex<Option<redis::aio::ConnectionManager>>,
    /// Held by a heartbeat while it writes and by [`Cluster::leave`]: no heartbeat writes after
    /// the node has left.
    writing: tokio::sync::Mutex<()>,
    leaving: AtomicBool,
    /// Shared HTTP client of the LL-HLS proxy.
    pub(crate) http: crate::http::client::Client,
}

/// The host name (id characters only), for the default node id here and the pull's node id in
/// a single node.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(&buf[..end])
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    if ok && !name.is_empty() {
        name
    } else {
        "deltacast".into()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    pub fn new(cfg: &Config, registry: Arc<Registry>, sfu: Option<Arc<SfuHandle>>) -> Arc<Self> {
        let c = cfg.cluster.clone().unwrap_or_default();
        let node_id = if c.node_id.is_empty() {
            hostname()
        } else {
            c.node_id.clone()
        };
        let public_http = if c.public_http.is_empty() {
            format!("http://{}", cfg.server.http_listen)
        } else {
            c.public_http.trim_end_matches('/').to_string()
        };
        let capacity = if c.capacity == 0 {
            cfg.sfu.max_viewers
        } else {
            c.capacity
        };
        Arc::new(Self {
            node_id,
            public_http,
            capacity,
            role: c.role,
            heartbeat: Duration::from_millis(c.heartbeat_ms),
            ttl: Duration::from_millis(c.ttl_ms),
            enabled: !c.redis.is_empty(),
            redis_url: c.redis,
            registry,
            sfu,
            admit_max_busy_pct: cfg.sfu.admit_max_busy_pct,
            view: RwLock::new(View::default()),
            handed: parking_lot::Mutex::new(HashMap::new()),
            pulls: RwLock::new(None),
            stats: ClusterStats::default(),
            conn: parking_lot::Mutex::new(None),
            writing: tokio::sync::Mutex::new(()),
            leaving: AtomicBool::new(false),
            http: crate::http::client::new(),
        })
    }

    /// Start the heartbeat (only with a Redis URL). Call from inside the control runtime.
    pub fn start(self: &Arc<Self>) {
        if self.enabled {
            tokio::spawn(registry::heartbeat(self.clone(), self.redis_url.clone()));
        }
    }

    /// Deregister on shutdown (see [`registry::leave`]).
    pub async fn leave(&self) {
        if self.enabled {
            registry::leave(self).await;
        }
    }

    /// Tell the cluster which streams this node pulls (the edge pull's active list): those are
    /// registered as edges, never as origins.
    pub fn set_pulls(&self, f: PullList) {
        *self.pulls.write() = Some(f);
    }

    fn pulled(&self) -> Vec<(String, String)> {
        self.pulls.read().as_ref().map(|f| f()).unwrap_or_default()
    }

    /// This node's load right now.
    pub fn local_info(&self) -> NodeInfo {
        let mut info = NodeInfo {
            id: self.node_id.clone(),
            public_http: self.public_http.clone(),
            capacity: self.capacity as u64,
            role: self.role,
            ..Default::default()
        };
        let Some(sfu) = &self.sfu else {
            info.load = 1.0;
            return info;
        };
        info.webrtc = true;
        info.viewers = sfu.admission.viewer_slots() as u64;
        let mut least_busy = f64::MAX;
        for w in &sfu.workers {
            let busy = w.shared.load.busy_pct();
            least_busy = least_busy.min(busy);
            info.workers.push(WorkerLoad {
                viewers: w.shared.viewers.load(Ordering::Relaxed) as u64,
                busy_pct: (busy * 10.0).round() / 10.0,
            });
            for c in &w.candidates {
                let c = c.to_string();
                if !info.candidates.contains(&c) {
                    info.candidates.push(c);
                }
            }
        }
        if least_busy == f64::MAX {
            least_busy = 0.0;
        }
        info.busy_pct = (least_busy * 10.0).round() / 10.0;
        let by_count = info.viewers as f64 / self.capacity.max(1) as f64;
        let limit = self.admit_max_busy_pct;
        let by_busy = if limit >= 100 {
            0.0
        } else {
            least_busy / limit.max(1) as f64
        };
        info.load = (by_count.max(by_busy) * 1000.0).round() / 1000.0;
        info.room = (info.viewers as usize) < self.capacity && (limit >= 100 || by_busy < 1.0);
        info
    }

    /// This node has no room for another viewer by its cluster capacity (which may be below
    /// `sfu.max_viewers`).
    pub fn at_capacity(&self) -> bool {
        self.enabled
            && self
                .sfu
                .as_ref()
                .is_some_and(|s| s.admission.viewer_slots() >= self.capacity)
    }

    /// Streams this node is the origin of: published here, not pulled.
    pub fn origin_streams(&self) -> Vec<String> {
        let pulled = self.pulled();
        self.registry
            .list()
            .into_iter()
            .filter(|s| s.state() == StreamState::Publishing)
            .map(|s| s.name().to_string())
            .filter(|n| !pulled.iter().any(|(p, _)| p == n))
            .collect()
    }

    fn store_view(&self, nodes: Vec<NodeView>, streams: Vec<StreamView>) {
        self.stats
            .nodes
            .store(nodes.len() as u64, Ordering::Relaxed);
        *self.view.write() = View {
            nodes,
            streams,
            at: Some(Instant::now()),
        };
        // The new view counts whoever of them arrived.
        self.handed.lock().clear();
    }

    /// Count a viewer sent to node `id` until the next view.
    fn hand_to(&self, id: &str) {
        *self.handed.lock().entry(id.to_string()).or_default() += 1;
    }

    /// The other nodes of the last view, when it is recent enough to act on, each with the
    /// viewers handed to it since ([`Cluster::hand_to`]) counted in its load. Only in its load:
    /// an estimate never declares a node full (its own heartbeat, and its own admission, do).
    fn fresh_others(&self) -> Vec<NodeView> {
        let v = self.view.read();
        let mut nodes: Vec<NodeView> = match v.at {
            Some(at) if at.elapsed() < self.ttl => v
                .nodes
                .iter()
                .filter(|n| n.info.id != self.node_id)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        drop(v);
        let handed = self.handed.lock();
        for n in &mut nodes {
            if let Some(&k) = handed.get(&n.info.id) {
                let by_count = (n.info.viewers + k) as f64 / n.info.capacity.max(1) as f64;
                n.info.load = n.info.load.max((by_count * 1000.0).round() / 1000.0);
            }
        }
        nodes
    }

    /// Where to send a WHEP POST this node cannot take: the least-loaded other node with room
    /// and WebRTC, not among `via` (the nodes that already redirected this POST). None when
    /// there is none, when this node already redirected it, or past [`MAX_REDIRECTS`].
    pub fn redirect_target(&self, via: &[String]) -> Option<NodeInfo> {
        if !self.enabled || via.len() >= MAX_REDIRECTS || via.contains(&self.node_id) {
            return None;
        }
        let target = least_loaded(
            self.fresh_others()
                .into_iter()
                .map(|n| n.info)
                .filter(|n| !via.contains(&n.id)),
        )?;
        self.hand_to(&target.id);
        Some(target)
    }

    /// Count a redirect or a cluster-wide refusal.
    pub fn count_redirect(&self, redirected: bool) {
        let c = if redirected {
            &self.stats.redirects
        } else {
            &self.stats.cluster_full
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Base URL of the node the playback document should send a new viewer to, when it is not
    /// this one: the least-loaded node with room, this node included (which wins ties).
    pub fn playback_base(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let me = self.local_info();
        let best = least_loaded(
            std::iter::once(me).chain(self.fresh_others().into_iter().map(|n| n.info)),
        )?;
        if best.id == self.node_id {
            return None;
        }
        self.hand_to(&best.id);
        Some(best.public_http)
    }

    /// Base URLs of the nodes a viewer's page may fail over to, least-loaded first (nodes with
    /// room before full ones, which would redirect): every live node serving WebRTC, this one
    /// included, except the primary (the node whose base the playback document hands out, `None`
    /// for this one). Empty without Redis. The page keeps the list from its last poll, so it can reconnect over WebRTC
    /// even when the node that served it is the one that died.
    pub fn alternate_bases(&self, primary: Option<&str>) -> Vec<String> {
        if !self.enabled {
            return Vec::new();
        }
        let mut nodes: Vec<NodeInfo> = std::iter::once(self.local_info())
            .chain(self.fresh_others().into_iter().map(|n| n.info))
            .filter(|n| n.webrtc && !n.public_http.is_empty())
            .filter(|n| match primary {
                None => n.id != self.node_id,
                Some(base) => n.public_http != base,
            })
            .collect();
        // Stable: ties keep this node first, then the registry's order.
        nodes.sort_by(|a, b| {
            b.room.cmp(&a.room).then(
                a.load
                    .partial_cmp(&b.load)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
        });
        nodes.into_iter().map(|n| n.public_http).collect()
    }

    /// The origin node of `stream` in the last view (any age: an origin outlives a Redis outage).
    pub fn origin_of(&self, stream: &str) -> Option<NodeInfo> {
        let v = self.view.read();
        let s = v.streams.iter().find(|s| s.name == stream)?;
        v.nodes
            .iter()
            .find(|n| n.info.id == s.origin)
            .map(|n| n.info.clone())
    }

    /// Where this node pulls a stream whose origin is `origin` from (see [`RedisResolver`]):
    /// None when it is published here. An edge takes the least-loaded other `mid` node with
    /// room and WebRTC (counted as handed a viewer, so a burst of pulls spreads over the mids),
    /// else the origin; a mid always takes the origin.
    fn pull_source(&self, origin: NodeInfo) -> Option<NodeInfo> {
        if origin.id == self.node_id || origin.public_http.is_empty() {
            return None;
        }
        if self.role == NodeRole::Edge {
            let mids = self
                .fresh_others()
                .into_iter()
                .map(|n| n.info)
                .filter(|n| n.role == NodeRole::Mid);
            if let Some(mid) = least_loaded(mids) {
                self.hand_to(&mid.id);
                return Some(mid);
            }
        }
        Some(origin)
    }

    /// The node id an upstream WHEP URL belongs to in the last view (the URL itself when none).
    fn upstream_id(&self, url: &str) -> String {
        let v = self.view.read();
        v.nodes
            .iter()
            .find(|n| {
                !n.info.public_http.is_empty()
                    && url
                        .strip_prefix(n.info.public_http.as_str())
                        .is_some_and(|rest| rest.starts_with("/whep/"))
            })
            .map_or_else(|| url.to_string(), |n| n.info.id.clone())
    }

    /// `deltacast_cluster_*` (only in a cluster: a single node's metrics are as before).
    pub fn encode_metrics(&self, r: &mut prometheus_client::registry::Registry) {
        use crate::metrics::{counter, gauge};
        let s = &self.stats;
        let ld = |v: &AtomicU64| v.load(Ordering::Relaxed);
        r.register(
            "cluster_redis_up",
            "1 while the last heartbeat reached Redis",
            gauge(s.redis_up.load(Ordering::Relaxed) as i64),
        );
        r.register(
            "cluster_nodes",
            "Live nodes in the last registry view (this one included)",
            gauge(ld(&s.nodes) as i64),
        );
        r.register(
            "cluster_redirects",
            "WHEP POSTs this node was too full for, sent to another node (307)",
            counter(ld(&s.redirects)),
        );
        r.register(
            "cluster_full_refusals",
            "WHEP POSTs refused (503) because no other node had room",
            counter(ld(&s.cluster_full)),
        );
        r.register(
            "cluster_hls_proxied",
            "LL-HLS requests answered by proxying to the stream's origin node",
            counter(ld(&s.hls_proxied)),
        );
        r.register(
            "cluster_hls_proxy_errors",
            "LL-HLS requests whose origin node did not answer (502)",
            counter(ld(&s.hls_proxy_errors)),
        );
        r.register(
            "cluster_heartbeat_errors",
            "Heartbeats that could not reach Redis",
            counter(ld(&s.heartbeat_errors)),
        );
    }

    /// The resolver the edge pull asks where a stream comes from.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn OriginResolver> {
        Arc::new(RedisResolver(self.clone()))
    }

    /// `GET /api/v1/cluster`.
    pub fn describe(&self) -> serde_json::Value {
        let me = self.local_info();
        if !self.enabled {
            let streams: Vec<StreamView> = self
                .origin_streams()
                .into_iter()
                .map(|name| StreamView {
                    name,
                    origin: self.node_id.clone(),
                    edges: Vec::new(),
                    upstreams: Default::default(),
                })
                .collect();
            return serde_json::json!({
                "cluster": false,
                "node_id": self.node_id,
                "nodes": [NodeView { info: me, last_seen_ms: 0 }],
                "streams": streams,
            });
        }
        let v = self.view.read();
        let mut nodes: Vec<NodeView> = v
            .nodes
            .iter()
            .filter(|n| n.info.id != self.node_id)
            .cloned()
            .collect();
        // This node as it is now (its published copy is up to one heartbeat old).
        let seen = v
            .nodes
            .iter()
            .find(|n| n.info.id == self.node_id)
            .map_or(0, |n| n.last_seen_ms);
        nodes.push(NodeView {
            info: me,
            last_seen_ms: seen,
        });
        nodes.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        serde_json::json!({
            "cluster": true,
            "node_id": self.node_id,
            "redis": if self.stats.redis_up.load(Ordering::Relaxed) { "up" } else { "down" },
            "view_age_ms": v.at.map(|t| t.elapsed().as_millis() as u64),
            "nodes": nodes,
            "streams": v.streams,
        })
    }
}

/// The node with room and WebRTC and the lowest load (first wins ties).
fn least_loaded(nodes: impl Iterator<Item = NodeInfo>) -> Option<NodeInfo> {
    let mut best: Option<NodeInfo> = None;
    for n in nodes.filter(|n| n.room && n.webrtc && !n.public_http.is_empty()) {
        if best.as_ref().is_none_or(|b| n.load < b.load) {
            best = Some(n);
        }
    }
    best
}

/// The viewers of nodes per worker, for the view (bounded: a node key cannot make us hold
/// more than this many workers of it).
const MAX_WORKERS: usize = 256;

/// The `OriginResolver` over the registry: `public_http` + `/whep/{stream}` of the node this one
/// pulls from by its role ([`Cluster::pull_source`]: a mid-tier node or the origin), never this
/// node itself. A pull that loses its upstream asks again, so a dead mid is replaced by another
/// mid or the origin once its key expires.
pub struct RedisResolver(Arc<Cluster>);

impl OriginResolver for RedisResolver {
    fn upstream<'a>(
        &'a self,
        stream: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Upstream>> + Send + 'a>> {
        Box::pin(async move {
            let c = &self.0;
            if !c.enabled {
                return None;
            }
            // Ask Redis first (a stream that just started is not in the view yet); the view
            // answers when Redis is away.
            let origin = match registry::origin_now(c, stream).await {
                Some(o) => Some(o),
                None => c.origin_of(stream),
            }?;
            let from = c.pull_source(origin)?;
            Some(Upstream {
                whep_url: format!("{}/whep/{stream}", from.public_http),
                bearer: None,
            })
        })
    }
}

/// Parse the `via` list of a redirected WHEP POST's query (bounded, ids only).
pub fn parse_via(query: Option<&str>) -> Vec<String> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == VIA_PARAM)
        .flat_map(|(_, v)| v.split([',', '+']).map(str::to_string).collect::<Vec<_>>())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .take(MAX_REDIRECTS + 1)
        .collect()
}

/// Group per-stream data read from Redis into views (used by [`registry`]).
fn stream_views(
    origins: Vec<(String, Option<String>)>,
    edges: HashMap<String, Vec<String>>,
    mut upstreams: HashMap<String, HashMap<String, String>>,
) -> Vec<StreamView> {
    let mut out: Vec<StreamView> = origins
        .into_iter()
        .filter_map(|(name, origin)| {
            let origin = origin?;
            let edges = edges.get(&name).cloned().unwrap_or_default();
            // Only the live edges' entries (a dead edge's lingers until the key expires).
            let upstreams = upstreams
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .filter(|(e, _)| edges.contains(e))
                .collect();
            Some(StreamView {
                name,
                origin,
                edges,
                upstreams,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, load: f64, room: bool) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            public_http: format!("http://{id}"),
            load,
            room,
            webrtc: true,
            ..Default::default()
        }
    }

    #[test]
    fn least_loaded_skips_full_nodes_and_keeps_the_first_on_ties() {
        let n = least_loaded(
            [
                node("a", 0.5, true),
                node("b", 0.2, false),
                node("c", 0.5, true),
            ]
            .into_iter(),
        );
        assert_eq!(n.unwrap().id, "a");
        assert!(least_loaded([node("a", 0.1, false)].into_iter()).is_none());
    }

    #[test]
    fn a_burst_between_two_heartbeats_spreads_over_the_nodes() {
        let cfg =
            Config::from_toml("[cluster]\nredis = \"redis://127.0.0.1:1\"\nnode_id = \"a\"\n")
                .unwrap();
        // No SFU here: node a serves no WebRTC, so every viewer goes to b or c.
        let c = Cluster::new(&cfg, Registry::new(), None);
        let other = |id: &str, viewers: u64| NodeView {
            info: NodeInfo {
                capacity: 100,
                viewers,
                ..node(id, viewers as f64 / 100.0, true)
            },
            last_seen_ms: 0,
        };
        c.store_view(vec![other("b", 10), other("c", 20)], Vec::new());
        let mut to = HashMap::<String, u32>::new();
        for _ in 0..30 {
            *to.entry(c.playback_base().unwrap()).or_default() += 1;
        }
        // b takes 10 to catch up with c, then they share: 20 and 10, not 30 and 0.
        assert_eq!(to["http://b"], 20, "{to:?}");
        assert_eq!(to["http://c"], 10, "{to:?}");
        // Redirects count the same way, and skip the nodes in `via`.
        assert_eq!(c.redirect_target(&[]).unwrap().id, "b");
        assert_eq!(c.redirect_target(&["b".into()]).unwrap().id, "c");
        // The estimate ranks only: a node is never taken for full by it.
        let v = c.fresh_others();
        assert!(v.iter().all(|n| n.info.room), "{v:?}");
        assert!(v[0].info.load > 0.3, "{v:?}");
        // A new view counts whoever arrived; the tally starts over.
        c.store_view(vec![other("b", 30), other("c", 20)], Vec::new());
        assert_eq!(c.playback_base().as_deref(), Some("http://c"));
    }

    #[test]
    fn an_edge_pulls_from_the_least_loaded_mid_with_room_and_a_mid_from_the_origin() {
        let cluster = |role: &str| {
            let cfg = Config::from_toml(&format!(
                "[cluster]\nredis = \"redis://127.0.0.1:1\"\nnode_id = \"me\"\nrole = \"{role}\"\n"
            ))
            .unwrap();
            Cluster::new(&cfg, Registry::new(), None)
        };
        let view = |n: NodeInfo| NodeView {
            info: n,
            last_seen_ms: 0,
        };
        let mid = |id: &str, load: f64, room: bool| NodeInfo {
            role: NodeRole::Mid,
            capacity: 100,
            viewers: (load * 100.0) as u64,
            ..node(id, load, room)
        };
        let origin = node("o", 0.0, true);
        let edge = cluster("edge");
        // No mid at all: the origin, exactly as without tiers.
        edge.store_view(
            vec![view(origin.clone()), view(node("e2", 0.0, true))],
            vec![],
        );
        assert_eq!(edge.pull_source(origin.clone()).unwrap().id, "o");
        // Mids: the least loaded with room; never another edge, even an idle one.
        edge.store_view(
            vec![
                view(origin.clone()),
                view(node("e2", 0.0, true)),
                view(mid("m1", 0.5, true)),
                view(mid("m2", 0.3, true)),
                view(mid("m3", 0.1, false)),
            ],
            vec![],
        );
        assert_eq!(edge.pull_source(origin.clone()).unwrap().id, "m2");
        // No mid with room: the origin.
        edge.store_view(
            vec![view(origin.clone()), view(mid("m1", 1.0, false))],
            vec![],
        );
        assert_eq!(edge.pull_source(origin.clone()).unwrap().id, "o");
        // A stream published here is never pulled.
        assert!(edge.pull_source(node("me", 0.0, true)).is_none());
        // A mid pulls from the origin even when another mid is idle.
        let m = cluster("mid");
        m.store_view(
            vec![view(origin.clone()), view(mid("m2", 0.0, true))],
            vec![],
        );
        assert_eq!(m.pull_source(origin).unwrap().id, "o");
        assert_eq!(m.local_info().role, NodeRole::Mid);
    }

    #[test]
    fn a_node_document_without_a_role_reads_as_an_edge() {
        let doc = r#"{"id":"a","public_http":"http://x","candidates":[],"capacity":1,
            "viewers":0,"workers":[],"busy_pct":0.0,"load":0.0,"room":true,"webrtc":true}"#;
        let n: NodeInfo = serde_json::from_str(doc).unwrap();
        assert_eq!(n.role, NodeRole::Edge);
        let json = serde_json::to_string(&NodeInfo {
            role: NodeRole::Mid,
            ..n
        })
        .unwrap();
        assert!(json.contains(r#""role":"mid""#), "{json}");
    }

    #[test]
    fn via_is_parsed_bounded_and_filtered() {
        assert_eq!(parse_via(Some("via=a,b")), vec!["a", "b"]);
        assert_eq!(parse_via(Some("x=1&via=n-1")), vec!["n-1"]);
        assert!(parse_via(Some("via=<script>")).is_empty());
        assert!(parse_via(None).is_empty());
        let long = format!("via={}", vec!["n"; 50].join(","));
        assert_eq!(parse_via(Some(&long)).len(), MAX_REDIRECTS + 1);
    }
}
