//! Configuration: one TOML file, every key defaulted, unknown keys rejected by name; CLI flags
//! override file values (see `main.rs`).
//!
//! This module holds plain data and checks plain values (ranges, names, keys). It imports none
//! of the modules it configures: push URLs are checked by `crate::egress::push`, provider
//! settings and `web.public_url` by `crate::provider`, each when it takes its part.
//! `crate::app::check_config` runs every check (`check-config`, `serve`).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub rtmp: RtmpConfig,
    pub hls: HlsConfig,
    pub demo: DemoConfig,
    /// Stream name ↔ publish keys. Empty: the server runs open (key = name).
    pub streams: Vec<StreamConfig>,
    /// RTMP/RTMPS push destinations (`[[destinations]]`), each naming the stream it carries.
    /// More can be added at run time through the API.
    pub destinations: Vec<DestinationConfig>,
    /// WebRTC SFU (WHEP playback): workers, UDP ports, advertised addresses.
    pub sfu: SfuConfig,
    /// The watch page and the playback URLs handed to viewers (`[web]`).
    pub web: WebConfig,
    /// Edge pulls from upstream WHEP servers (`[pull]`).
    pub pull: PullConfig,
    /// `[cluster]`: membership in a Redis-backed cluster. Absent, or without `redis`: one node,
    /// exactly as before (and `check-config` prints no `[cluster]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `[pull]`: streams pulled from another WHEP server (`[[streams]] pull`, or the cluster).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PullConfig {
    /// A pull stops this long after its last local WebRTC viewer left.
    pub linger_ms: u64,
    /// Signaling, ICE + DTLS and the first media of a pull must complete within this.
    pub connect_timeout_ms: u64,
}

impl Default for PullConfig {
    fn default() -> Self {
        Self {
            linger_ms: 10_000,
            connect_timeout_ms: 4_000,
        }
    }
}

/// `[cluster]`: this node in a cluster whose registry lives in Redis (see `crate::cluster`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:pass@]host[:port][/db]` (or `rediss://`). Empty: single node.
    pub redis: String,
    /// This node's id in the registry. Empty: the host name.
    pub node_id: String,
    /// Base URL other nodes and clients reach this node's HTTP listener at
    /// (`http://10.0.0.5:8080`). Empty: `http://` + `server.http_listen`.
    pub public_http: String,
    /// WebRTC viewers this node takes before it sends new ones elsewhere (307). 0: `sfu.max_viewers`.
    pub capacity: usize,
    /// How often the node refreshes its keys in Redis.
    pub heartbeat_ms: u64,
    /// Lifetime of the node's keys: a node silent for this long is gone from the cluster.
    pub ttl_ms: u64,
    /// This node's tier: `edge` pulls a stream published elsewhere from a `mid` node (the
    /// least loaded with room) or, without one, from the origin; `mid` pulls from the origin.
    pub role: NodeRole,
}

/// `cluster.role`: where this node pulls the streams published on other nodes from.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// From a mid-tier node when there is one with room, else from the origin.
    #[default]
    Edge,
    /// Always from the origin (a mid-tier node: edges pull from it).
    Mid,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: String::new(),
            node_id: String::new(),
            public_http: String::new(),
            capacity: 0,
            heartbeat_ms: 1_000,
            ttl_ms: 5_000,
            role: NodeRole::Edge,
        }
    }
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), String> {
        let scheme_ok = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
        if !self.redis.is_empty() && !scheme_ok(&self.redis) {
            return Err("config: cluster.redis must be a redis:// or rediss:// URL".into());
        }
        if self.node_id.len() > 64
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err("config: cluster.node_id must be at most 64 of [A-Za-z0-9._-]".into());
        }
        if !self.public_http.is_empty()
            && !((self.public_http.starts_with("http://")
                || self.public_http.starts_with("https://"))
                && self.public_http.len() <= 512
                && self.public_http.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err("config: cluster.public_http must be an http:// or https:// URL".into());
        }
        if !(100..=60_000).contains(&self.heartbeat_ms) {
            return Err("config: cluster.heartbeat_ms must be within 100..=60000".into());
        }
        if self.ttl_ms < 2 * self.heartbeat_ms || self.ttl_ms > 600_000 {
            return Err(
                "config: cluster.ttl_ms must be at least twice heartbeat_ms and at most 600000"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `[web]`: the watch page (`/watch/{stream}`), its assets, and how playback URLs are formed.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Where `npm ci --prefix web` installed the page's dependencies (hls.js is served from
    /// `{dir}/node_modules/hls.js/dist/`). Relative paths are relative to the working directory.
    pub dir: std::path::PathBuf,
    /// Base of the URLs handed out (`https://live.example.com`); empty: `http://` + the request's
    /// `Host` header.
    pub public_url: String,
    /// The page falls back to LL-HLS when WebRTC has decoded no frame within this time.
    pub webrtc_timeout_ms: u64,
    /// The page falls back to LL-HLS when WebRTC decodes no new frame for this long.
    pub freeze_ms: u64,
    /// Provider of streams that do not name one (and of every stream in open mode): `"origin"`
    /// or `{ kind = "cdn", hls_base = "https://…" }`.
    pub default_provider: ProviderConfig,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            dir: "web".into(),
            public_url: String::new(),
            webrtc_timeout_ms: 2_500,
            freeze_ms: 2_000,
            default_provider: ProviderConfig::Origin,
        }
    }
}

impl WebConfig {
    /// Plain range checks. `public_url` and `default_provider` are URLs and provider settings:
    /// `crate::provider::check_config` checks them.
    pub fn validate(&self) -> Result<(), String> {
        if !(500..=30_000).contains(&self.webrtc_timeout_ms)
            || !(500..=30_000).contains(&self.freeze_ms)
        {
            return Err(
                "config: web.webrtc_timeout_ms and web.freeze_ms must be within 500..=30000".into(),
            );
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The one HTTP listener: HLS, API, metrics, health.
    pub http_listen: SocketAddr,
    /// Bearer token for mutating API calls. Empty: mutating calls only from loopback.
    pub admin_token: String,
    /// Worker threads of the HTTP control-plane runtime.
    pub http_threads: usize,
    /// Largest HTTP request head (431 beyond) and body (413 beyond, before it is read), in bytes.
    pub max_request_bytes: usize,
    /// A request head (request line + headers) must arrive in full within this time of the
    /// connection opening, or of its first byte on a kept-alive connection; else it is closed.
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection with no request for this long is closed. A response that makes no
    /// progress towards a client that stopped reading for this long is dropped too.
    pub idle_timeout_ms: u64,
    /// A request body must arrive in full within this time of its head (408 otherwise).
    pub body_read_timeout_ms: u64,
    /// Most HTTP connections open at once (further ones get a minimal 503 and are closed). Never
    /// more than half the open-files limit, so HTTP cannot starve RTMP, WebRTC and files.
    pub max_connections: usize,
    /// Most HTTP connections open at once from one client address (IPv6: one /64). A CDN origin
    /// sees many connections from few edge addresses: raise it there if needed.
    pub max_connections_per_ip: usize,
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(4_096..=16 << 20).contains(&self.max_request_bytes) {
            return Err("config: server.max_request_bytes must be within 4096..=16777216".into());
        }
        for (key, v, max) in [
            (
                "header_read_timeout_ms",
                self.header_read_timeout_ms,
                600_000,
            ),
            ("idle_timeout_ms", self.idle_timeout_ms, 3_600_000),
            ("body_read_timeout_ms", self.body_read_timeout_ms, 600_000),
        ] {
            if !(100..=max).contains(&v) {
                return Err(format!("config: server.{key} must be within 100..={max}"));
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("config: server.max_connections must be within 1..=1000000".into());
        }
        if self.max_connections_per_ip == 0 || self.max_connections_per_ip > self.max_connections {
            return Err(
                "config: server.max_connections_per_ip must be within 1..=max_connections".into(),
            );
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtmpConfig {
    pub listen: SocketAddr,
    /// The RTMP application name publishers use: rtmp://HOST/{app}/{key}.
    pub app: String,
    /// A peer that has not finished the handshake and connect/publish in this time is dropped.
    pub handshake_timeout_ms: u64,
    /// A publisher that sends no media for this long is dropped.
    pub idle_timeout_ms: u64,
    pub max_connections: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HlsConfig {
    /// LL-HLS part target duration.
    pub part_target_ms: u64,
    /// Segments are cut on the first keyframe at or after this duration.
    pub segment_target_ms: u64,
    /// Segments listed in the media playlist.
    pub window_segments: usize,
    /// Segments kept downloadable after they leave the playlist (CDN and slow players).
    pub retain_segments: usize,
    /// Cache-Control max-age for playlists (non-blocking requests).
    pub playlist_max_age_s: u64,
    /// Access-Control-Allow-Origin for HLS responses.
    pub cors_origin: String,
    /// Core to pin the packager thread to; -1 leaves it to the scheduler.
    pub packager_core: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Publish the built-in looping program.
    pub enabled: bool,
    pub name: String,
    /// An FLV file to loop instead of the embedded clip (empty: the embedded clip). It must start
    /// with a keyframe; read once at start.
    pub file: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Public name (appears in playback URLs).
    pub name: String,
    /// Secret publish keys (rtmp://HOST/live/KEY, WHIP Bearer).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Who delivers the stream to viewers: `"origin"` (default: `web.default_provider`),
    /// `{ kind = "cdn", hls_base = "…" }` or `{ kind = "external", ingest_url = "…",
    /// playback_url = "…" }`. See `crate::provider`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderConfig>,
    /// Pull the stream on demand from another WHEP server (`http://host:port/whep/name`) when
    /// a viewer asks for it and it is not published here (like MediaMTX's `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<String>,
}

/// One RTMP push destination of a stream.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The stream (public name) to push. It need not be live yet.
    pub stream: String,
    /// Unique within the stream (API paths use it); derived from the URL's host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `rtmp://host[:port]/app/key` or `rtmps://…` (the key is a secret: never shown in full).
    pub url: String,
    /// Verify the RTMPS server's certificate (turn off only for self-signed test peers).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Give up after this many consecutive failures (state `failed`); absent: retry forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Most SFU workers one node runs.
pub const MAX_WORKERS: usize = 256;

/// `sfu.workers`: `"auto"` or a count (`workers = 4`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Workers {
    /// Sized from the cores the process may use (see [`Workers::resolve`]).
    #[default]
    Auto,
    Count(usize),
}

impl Workers {
    /// The worker count on a process that may use `cores` cores. `Auto` leaves one core to the
    /// LL-HLS packager, the RTMP push engine, the SFU router and the HTTP control plane, and
    /// gives the rest to WebRTC: `cores − 1` from 2 cores up, 1 on one core, at most 256. Each
    /// worker only takes CPU in proportion to its viewers, and admission (`admit_max_busy_pct`)
    /// keeps 15 % of each worker's core free, so the shared core is not starved.
    pub fn resolve(self, cores: usize) -> usize {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => cores.saturating_sub(1).clamp(1, MAX_WORKERS),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\" or a worker count")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Workers, E> {
                match s {
                    "auto" => Ok(Workers::Auto),
                    _ => Err(E::custom(format!(
                        "sfu.workers: expected \"auto\" or a number, not \"{s}\""
                    ))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Workers, E> {
                Ok(Workers::Count(usize::try_from(n).unwrap_or(usize::MAX)))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Workers, E> {
                usize::try_from(n)
                    .map(Workers::Count)
                    .map_err(|_| E::custom("sfu.workers must be \"auto\" or within 1..=256"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[sfu]`: the WebRTC workers that serve WHEP viewers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SfuConfig {
    /// Serve WebRTC (WHEP) at all.
    pub enabled: bool,
    /// Worker threads, one UDP port each (`port_base + i`), each pinned to a core: `"auto"`
    /// (default, see [`Workers::resolve`]) or a count.
    pub workers: Workers,
    /// First core to pin workers to (worker i gets core `core_base + i`); -1 leaves them unpinned.
    pub core_base: i64,
    /// Address the worker sockets bind to.
    pub bind_ip: std::net::IpAddr,
    /// First UDP port; 0 lets the OS choose each worker's port (tests).
    pub port_base: u16,
    /// Addresses put into ICE candidates (public IP behind NAT, several for multi-homed hosts).
    /// Empty: the bind address, or every local interface address when bound to 0.0.0.0 / ::.
    pub advertise: Vec<std::net::IpAddr>,
    /// Most concurrent WebRTC viewers on this node, connected or connecting (503 beyond). The
    /// slot is reserved atomically before the offer is answered.
    pub max_viewers: usize,
    /// Most sessions (viewers and WHIP publishers) answered but not yet connected (ICE + DTLS),
    /// all addresses together (503 + Retry-After beyond).
    pub max_pending: usize,
    /// Most such pending sessions from one client address (IPv6: one /64).
    pub max_pending_per_ip: usize,
    /// Refuse new viewers (503 + Retry-After) when every worker's loop was busy more than this
    /// share of the time (%, measured by the worker over ≈ 0.5 s). 100 turns the check off.
    pub admit_max_busy_pct: u32,
    /// SO_RCVBUF / SO_SNDBUF asked for on each worker's UDP socket, bytes. The kernel caps them
    /// at net.core.rmem_max / wmem_max (logged when it does; see tuning/README.md).
    pub socket_recv_buffer: usize,
    pub socket_send_buffer: usize,
    /// UDP driver: "epoll" (default: it measured faster, see docs/BENCHMARKS.md), "uring", or
    /// "auto" (io_uring where it can be set up, else epoll).
    pub io: String,
    /// Send a frame's packets to one viewer as one UDP GSO message (`UDP_SEGMENT`, Linux 4.18+;
    /// epoll driver only). Turned off by itself, logged, where the kernel refuses it.
    pub gso: bool,
    /// A viewer that sends nothing (no STUN consent, no RTCP) for this long is dropped.
    pub idle_timeout_ms: u64,
    /// A session that has not completed ICE + DTLS in this time is dropped and frees its slot;
    /// an ICE-TCP connection whose session is not connected by then is closed.
    pub connect_timeout_ms: u64,
    /// Keyframe requests (PLI/FIR) from one viewer are answered from the GOP cache at most this
    /// often.
    pub keyframe_answer_interval_ms: u64,
    /// Bandwidth a viewer of a simulcast stream is assumed to have before its estimate (TWCC)
    /// arrives: it picks the starting layer.
    pub bwe_initial_kbps: u64,
    /// WHIP publishers (browsers above all) send a keyframe only when asked: ask for one when
    /// none came for this long, so LL-HLS segments close and RTMP platforms get the keyframe
    /// every ~2 s they require. 0: ask only when a viewer or a loss needs one.
    pub whip_keyframe_interval_ms: u64,
    /// ICE servers announced to WHEP clients in `Link` headers (`stun:` / `turn:` URLs).
    pub ice_servers: Vec<String>,
    /// Queue between the router and each worker, in frames.
    pub worker_queue: usize,
    /// Largest RTP payload the packetizer emits.
    pub rtp_payload_max: usize,
    /// First TCP port for passive ICE-TCP candidates (RFC 6544, RFC 4571 framing), one per
    /// worker (`ice_tcp_port_base + i`), for viewers and publishers whose UDP is blocked.
    /// 0 turns ICE-TCP off. A port that cannot be bound is logged and that worker goes on
    /// UDP-only.
    pub ice_tcp_port_base: u16,
    /// Most ICE-TCP connections per worker (further ones are closed at once).
    pub ice_tcp_max_connections: usize,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            workers: Workers::Auto,
            core_base: -1,
            bind_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            port_base: 8189,
            advertise: Vec::new(),
            max_viewers: 1_500,
            max_pending: 256,
            max_pending_per_ip: 32,
            admit_max_busy_pct: 85,
            socket_recv_buffer: 4 << 20,
            socket_send_buffer: 4 << 20,
            io: "epoll".into(),
            gso: true,
            idle_timeout_ms: 15_000,
            connect_timeout_ms: 5_000,
            keyframe_answer_interval_ms: 1_000,
            bwe_initial_kbps: 1_500,
            whip_keyframe_interval_ms: 2_000,
            ice_servers: Vec::new(),
            worker_queue: 1_024,
            rtp_payload_max: 1_200,
            ice_tcp_port_base: 8289,
            ice_tcp_max_connections: 1_024,
        }
    }
}

impl SfuConfig {
    /// How many workers this process runs: `workers` resolved against the cores it may use.
    pub fn worker_count(&self) -> usize {
        self.workers.resolve(crate::affinity::usable_cores())
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Workers::Count(n) = self.workers {
            if n == 0 || n > MAX_WORKERS {
                return Err("config: sfu.workers must be \"auto\" or within 1..=256".into());
            }
        }
        let workers = self.worker_count();
        if self.port_base != 0 && self.port_base as usize + workers > 65_536 {
            return Err("config: sfu.port_base + sfu.workers must stay below 65536".into());
        }
        if !["auto", "uring", "epoll"].contains(&self.io.as_str()) {
            return Err(format!(
                "config: sfu.io must be \"auto\", \"uring\" or \"epoll\", not \"{}\"",
                self.io
            ));
        }
        if self.max_viewers == 0 {
            return Err("config: sfu.max_viewers must be at least 1".into());
        }
        if self.max_pending == 0 || self.max_pending_per_ip == 0 {
            return Err(
                "config: sfu.max_pending and sfu.max_pending_per_ip must be at least 1".into(),
            );
        }
        if self.max_pending_per_ip > self.max_pending {
            return Err("config: sfu.max_pending_per_ip must not exceed sfu.max_pending".into());
        }
        if !(1..=100).contains(&self.admit_max_busy_pct) {
            return Err("config: sfu.admit_max_busy_pct must be within 1..=100".into());
        }
        for (k, v) in [
            ("socket_recv_buffer", self.socket_recv_buffer),
            ("socket_send_buffer", self.socket_send_buffer),
        ] {
            if !(64 << 10..=256 << 20).contains(&v) {
                return Err(format!(
                    "config: sfu.{k} must be within 65536..=268435456 bytes"
                ));
            }
        }
        if !(1_000..=600_000).contains(&self.idle_timeout_ms)
            || !(1_000..=600_000).contains(&self.connect_timeout_ms)
        {
            return Err(
                "config: sfu.idle_timeout_ms and sfu.connect_timeout_ms must be within 1000..=600000"
                    .into(),
            );
        }
        if !(256..=1_400).contains(&self.rtp_payload_max) {
            return Err("config: sfu.rtp_payload_max must be within 256..=1400".into());
        }
        if self.ice_tcp_port_base != 0 && self.ice_tcp_port_base as usize + workers > 65_536 {
            return Err("config: sfu.ice_tcp_port_base + sfu.workers must stay below 65536".into());
        }
        if self.ice_tcp_max_connections == 0 {
            return Err("config: sfu.ice_tcp_max_connections must be at least 1".into());
        }
        if self.worker_queue < 64 {
            return Err("config: sfu.worker_queue must be at least 64".into());
        }
        for a in &self.advertise {
            if a.is_unspecified() || a.is_multicast() {
                return Err(format!(
                    "config: sfu.advertise: {a} is not a usable address"
                ));
            }
        }
        for s in &self.ice_servers {
            let ok = ["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|p| s.starts_with(p))
                && !s.contains(['\r', '\n', '<', '>']);
            if !ok {
                return Err(format!(
                    "config: sfu.ice_servers: '{s}' is not a stun:/turn: URL"
                ));
            }
        }
        Ok(())
    }
}

// ───────────────────── provider description (checked by `crate::provider`) ─────────────────────

/// A provider as written in the config and in `PUT …/provider`:
///
/// ```toml
/// provider = "origin"
/// provider = { kind = "cdn", hls_base = "https://d123.cloudfront.net" }
/// provider = { kind = "external", ingest_url = "rtmps://….live-video.net:443/app/sk_…",
///              playback_url = "https://….m3u8" }
/// ```
///
/// JSON takes the same shapes (`"origin"`, `{"kind": "cdn", "hls_base": "…"}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// This node serves WHEP and LL-HLS.
    #[default]
    Origin,
    /// LL-HLS through a CDN whose origin is this node; WHEP stays direct.
    Cdn {
        /// Scheme + host (+ optional path prefix) of the CDN, e.g. `https://d123.cloudfront.net`.
        /// Playlists are then `{hls_base}/hls/{stream}/index.m3u8`.
        hls_base: String,
    },
    /// The program is pushed over RTMP(S) to another service, whose playback URL viewers get.
    External {
        /// `rtmp[s]://host[:port]/app/key` of the external ingest (a secret: shown masked).
        ingest_url: String,
        /// The service's playback URL (an HLS playlist), handed to viewers as is.
        playback_url: String,
        /// Verify the ingest's TLS certificate (rtmps://).
        #[serde(default = "default_true")]
        tls_verify: bool,
    },
}

/// The table form, with unknown keys rejected by name.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum Tagged {
    Origin,
    Cdn {
        hls_base: String,
    },
    External {
        ingest_url: String,
        playback_url: String,
        #[serde(default = "default_true")]
        tls_verify: bool,
    },
}

impl From<Tagged> for ProviderConfig {
    fn from(t: Tagged) -> Self {
        match t {
            Tagged::Origin => ProviderConfig::Origin,
            Tagged::Cdn { hls_base } => ProviderConfig::Cdn { hls_base },
            Tagged::External {
                ingest_url,
                playback_url,
                tls_verify,
            } => ProviderConfig::External {
                ingest_url,
                playback_url,
                tls_verify,
            },
        }
    }
}

impl<'de> Deserialize<'de> for ProviderConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ProviderConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "\"origin\" or a table { kind = \"origin\" | \"cdn\" | \"external\", … }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ProviderConfig, E> {
                match s {
                    "origin" => Ok(ProviderConfig::Origin),
                    "cdn" | "external" => Err(E::custom(format!(
                        "provider \"{s}\" needs its settings: write it as a table with kind = \"{s}\""
                    ))),
                    other => Err(E::custom(format!(
                        "unknown provider \"{other}\" (expected origin, cdn or external)"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ProviderConfig, A::Error> {
                Tagged::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Into::into)
            }
        }
        d.deserialize_any(V)
    }
}

impl ProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Origin => "origin",
            ProviderConfig::Cdn { .. } => "cdn",
            ProviderConfig::External { .. } => "external",
        }
    }
}

fn default_true() -> bool {
    true
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_listen: "0.0.0.0:8080".parse().unwrap(),
            admin_token: String::new(),
            http_threads: 2,
            max_request_bytes: 64 * 1024,
            header_read_timeout_ms: 10_000,
            // Above the keep-alive timeout of CDNs and proxies in front (60 s at most for
            // CloudFront and nginx), so the origin is not the side closing a reused connection.
            idle_timeout_ms: 75_000,
            body_read_timeout_ms: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
        }
    }
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:1935".parse().unwrap(),
            app: "live".into(),
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 10_000,
            max_connections: 1_000,
        }
    }
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            part_target_ms: 200,
            segment_target_ms: 2_000,
            window_segments: 6,
            retain_segments: 4,
            playlist_max_age_s: 1,
            cors_origin: "*".into(),
            packager_core: -1,
        }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            name: "demo".into(),
            file: String::new(),
        }
    }
}

/// What a publish key resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyLookup<'a> {
    /// A configured key: publish under this public name.
    Stream(&'a str),
    /// Open mode (no streams configured): the key is the name.
    Open,
    Unknown,
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| format!("config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config: cannot read {}: {e}", path.display()))?;
        Self::from_toml(&text)
    }

    /// The checks on plain values: ranges, names, keys, duplicates. What only another module
    /// can judge (push URLs, provider settings) is checked there, when it takes the config:
    /// `crate::app::check_config` runs every check, as `check-config` and `serve` do.
    pub fn validate(&self) -> Result<(), String> {
        let h = &self.hls;
        if !(50..=5_000).contains(&h.part_target_ms) {
            return Err("config: hls.part_target_ms must be within 50..=5000".into());
        }
        if h.segment_target_ms < h.part_target_ms * 2 || h.segment_target_ms > 60_000 {
            return Err(
                "config: hls.segment_target_ms must be at least twice part_target_ms and at most 60000"
                    .into(),
            );
        }
        if h.window_segments < 3 {
            return Err("config: hls.window_segments must be at least 3".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for s in &self.streams {
            if !crate::media::stream::valid_stream_name(&s.name) {
                return Err(format!("config: streams: invalid name '{}'", s.name));
            }
            if !names.insert(&s.name) {
                return Err(format!("config: streams: duplicate name '{}'", s.name));
            }
            for k in &s.keys {
                if k.is_empty() || k.len() > 256 || k.contains('\0') {
                    return Err(format!(
                        "config: streams.{}: keys must be 1..=256 bytes without NUL",
                        s.name
                    ));
                }
                if !keys.insert(k) {
                    return Err(format!("config: streams.{}: key used twice", s.name));
                }
            }
            if let Some(u) = &s.pull {
                let ok = u
                    .parse::<axum::http::Uri>()
                    .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
                if !ok {
                    return Err(format!(
                        "config: streams.{}: pull must be an http://host[:port]/path WHEP URL",
                        s.name
                    ));
                }
            }
        }
        if !(100..=3_600_000).contains(&self.pull.linger_ms) {
            return Err("config: pull.linger_ms must be within 100..=3600000".into());
        }
        if !(500..=60_000).contains(&self.pull.connect_timeout_ms) {
            return Err("config: pull.connect_timeout_ms must be within 500..=60000".into());
        }
        self.server.validate()?;
        self.web.validate()?;
        self.sfu.validate()?;
        if let Some(c) = &self.cluster {
            c.validate()?;
            if c.capacity > self.sfu.max_viewers {
                return Err("config: cluster.capacity must not exceed sfu.max_viewers".into());
            }
        }
        let mut dest_ids = std::collections::HashSet::new();
        for d in &self.destinations {
            if !crate::media::stream::valid_stream_name(&d.stream) {
                return Err(format!(
                    "config: destinations: invalid stream name '{}'",
                    d.stream
                ));
            }
            if let Some(id) = &d.id {
                if !dest_ids.insert((d.stream.as_str(), id.as_str())) {
                    return Err(format!(
                        "config: destinations: stream '{}' has two destinations with id '{id}'",
                        d.stream
                    ));
                }
            }
        }
        Ok(())
    }

    /// True when no stream is configured, so anyone may publish any name.
    pub fn open_mode(&self) -> bool {
        self.streams.is_empty()
    }

    /// Resolve a publish key to a stream name.
    pub fn lookup_key(&self, key: &str) -> KeyLookup<'_> {
        if key.is_empty() || key.len() > 256 || key.contains('\0') {
            return KeyLookup::Unknown;
        }
        if self.open_mode() {
            return KeyLookup::Open;
        }
        for s in &self.streams {
            if s.keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
            {
                return KeyLookup::Stream(&s.name);
            }
        }
        KeyLookup::Unknown
    }
}

/// Compare secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.http_listen.port(), 8080);
        assert_eq!(c.rtmp.listen.port(), 1935);
        assert_eq!(c.hls.part_target_ms, 200);
        let e = Config::from_toml("[hls]\npart_target = 3\n").unwrap_err();
        assert!(e.contains("part_target"), "{e}");
        let e = Config::from_toml("bogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn cluster_section_defaults_and_checks() {
        let c = Config::from_toml("").unwrap();
        assert!(c.cluster.is_none());
        // Without [cluster] the printed config is as before (no section at all).
        assert!(!toml::to_string(&c).unwrap().contains("cluster"));
        let c = Config::from_toml("[cluster]\nredis = \"redis://127.0.0.1:6379\"\n").unwrap();
        let cl = c.cluster.unwrap();
        assert_eq!((cl.heartbeat_ms, cl.ttl_ms, cl.capacity), (1_000, 5_000, 0));
        assert_eq!(cl.role, NodeRole::Edge);
        let c = Config::from_toml("[cluster]\nrole = \"mid\"\n").unwrap();
        assert_eq!(c.cluster.unwrap().role, NodeRole::Mid);
        let e = Config::from_toml("[cluster]\nrole = \"origin\"\n").unwrap_err();
        assert!(e.contains("role") && e.contains("origin"), "{e}");
        for bad in [
            "redis = \"http://x\"",
            "node_id = \"a b\"",
            "public_http = \"10.0.0.5:8080\"",
            "heartbeat_ms = 10",
            "heartbeat_ms = 1000\nttl_ms = 1500",
            "capacity = 100000",
            "bogus = 1",
        ] {
            let e = Config::from_toml(&format!("[cluster]\n{bad}\n")).unwrap_err();
            assert!(e.contains("cluster") || e.contains("bogus"), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_map_to_names() {
        let c =
            Config::from_toml("[[streams]]\nname = \"town-hall\"\nkeys = [\"s3cret\"]\n").unwrap();
        assert_eq!(c.lookup_key("s3cret"), KeyLookup::Stream("town-hall"));
        assert_eq!(c.lookup_key("town-hall"), KeyLookup::Unknown);
        assert_eq!(c.lookup_key(&"k".repeat(300)), KeyLookup::Unknown);
        let open = Config::default();
        assert_eq!(open.lookup_key("anything"), KeyLookup::Open);
    }

    #[test]
    fn destinations_parse_and_are_checked() {
        let c = Config::from_toml(
            "[[destinations]]\nstream = \"show\"\nid = \"yt\"\nurl = \"rtmp://h/live2/k\"\n\n\
             [[destinations]]\nstream = \"show\"\nurl = \"rtmps://h/app/k\"\ntls_verify = false\nmax_retries = 3\n",
        )
        .unwrap();
        assert!(c.open_mode(), "destinations do not configure streams");
        assert_eq!(c.destinations.len(), 2);
        assert_eq!(c.destinations[0].id.as_deref(), Some("yt"));
        assert!(c.destinations[0].tls_verify);
        assert!(!c.destinations[1].tls_verify);
        assert_eq!(c.destinations[1].max_retries, Some(3));
        for bad in [
            "[[destinations]]\nstream = \"a b\"\nurl = \"rtmp://h/a/k\"\n",
            "[[destinations]]\nstream = \"s\"\nurl = \"rtmp://h/a/k\"\nbogus = 1\n",
            "[[destinations]]\nstream = \"s\"\nid = \"x\"\nurl = \"rtmp://h/a/k\"\n\
             [[destinations]]\nstream = \"s\"\nid = \"x\"\nurl = \"rtmp://h/a/k2\"\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sfu_section() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.sfu.workers, Workers::Auto);
        assert_eq!(c.sfu.port_base, 8189);
        assert_eq!(c.sfu.io, "epoll");
        assert!(c.sfu.gso);
        let c = Config::from_toml(
            "[sfu]\nworkers = 2\nport_base = 9000\nadvertise = [\"203.0.113.7\"]\nio = \"epoll\"\n\
             ice_servers = [\"stun:stun.example.net:3478\"]\n",
        )
        .unwrap();
        assert_eq!(c.sfu.workers, Workers::Count(2));
        assert_eq!(c.sfu.worker_count(), 2);
        assert_eq!(c.sfu.advertise.len(), 1);
        let auto = Config::from_toml("[sfu]\nworkers = \"auto\"\n")
            .unwrap()
            .sfu;
        assert_eq!(auto.workers, Workers::Auto);
        assert_eq!(
            auto.worker_count(),
            Workers::Auto.resolve(crate::affinity::usable_cores())
        );
        // The rule: one core left to the packager, push and HTTP from 2 cores up.
        let rule: Vec<usize> = [1, 2, 3, 16, 1000].map(|c| Workers::Auto.resolve(c)).into();
        assert_eq!(rule, [1, 1, 2, 15, 256]);
        assert_eq!(Workers::Count(7).resolve(2), 7);
        // check-config prints it back as it was written.
        let printed = toml::to_string(&auto).unwrap();
        assert!(printed.contains("workers = \"auto\""), "{printed}");
        assert!(!Config::from_toml("[sfu]\ngso = false\n").unwrap().sfu.gso);
        let d = Config::from_toml("").unwrap().sfu;
        assert_eq!(
            (d.max_pending, d.max_pending_per_ip, d.admit_max_busy_pct),
            (256, 32, 85)
        );
        assert_eq!(d.connect_timeout_ms, 5_000);
        for bad in [
            "[sfu]\nmax_pending = 0\n",
            "[sfu]\nmax_pending = 10\nmax_pending_per_ip = 11\n",
            "[sfu]\nadmit_max_busy_pct = 0\n",
            "[sfu]\nadmit_max_busy_pct = 101\n",
            "[sfu]\nsocket_recv_buffer = 1000\n",
            "[sfu]\nsocket_send_buffer = 1000000000\n",
            "[sfu]\nworkers = 0\n",
            "[sfu]\nworkers = 257\n",
            "[sfu]\nworkers = -1\n",
            "[sfu]\nworkers = \"all\"\n",
            "[sfu]\ngso = \"on\"\n",
            "[sfu]\nio = \"kqueue\"\n",
            "[sfu]\nadvertise = [\"0.0.0.0\"]\n",
            "[sfu]\nice_servers = [\"http://x\"]\n",
            "[sfu]\nbogus = 1\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
        let e = Config::from_toml("[sfu]\nbogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn web_section_and_providers() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.web.dir, std::path::PathBuf::from("web"));
        assert_eq!(c.web.webrtc_timeout_ms, 2_500);
        assert_eq!(c.web.default_provider.kind(), "origin");
        let c = Config::from_toml(
            "[web]\ndir = \"/opt/deltacast/web\"\npublic_url = \"https://live.example.com\"\n\
             default_provider = { kind = \"cdn\", hls_base = \"https://d1.cloudfront.net\" }\n\
             [[streams]]\nname = \"a\"\nkeys = [\"k\"]\nprovider = \"origin\"\n\
             [[streams]]\nname = \"b\"\nprovider = { kind = \"external\", \
             ingest_url = \"rtmps://x.example:443/app/sk\", playback_url = \"https://x.example/b.m3u8\" }\n",
        )
        .unwrap();
        assert_eq!(c.web.default_provider.kind(), "cdn");
        assert_eq!(c.streams[0].provider.as_ref().unwrap().kind(), "origin");
        assert_eq!(c.streams[1].provider.as_ref().unwrap().kind(), "external");
        for (bad, word) in [
            ("[web]\nbogus = 1\n", "bogus"),
            ("[web]\nwebrtc_timeout_ms = 10\n", "webrtc_timeout_ms"),
            ("[[streams]]\nname = \"a\"\nprovider = \"cloudfront\"\n", "cloudfront"),
            (
                "[[streams]]\nname = \"a\"\nprovider = { kind = \"cdn\", hls_base = \"https://x\", ttl = 1 }\n",
                "ttl",
            ),
        ] {
            let e = Config::from_toml(bad).unwrap_err();
            assert!(e.contains(word), "{bad}: {e}");
        }
    }

    /// URLs and provider settings parse here; `crate::provider` and `crate::egress::push` check
    /// them (their tests hold the rejections).
    #[test]
    fn urls_are_left_to_the_modules_that_take_them() {
        for text in [
            "[[destinations]]\nstream = \"show\"\nurl = \"http://h/a/k\"\n",
            "[web]\npublic_url = \"live.example.com\"\n",
            "[[streams]]\nname = \"a\"\nprovider = { kind = \"cdn\", hls_base = \"x\" }\n",
        ] {
            Config::from_toml(text).unwrap();
        }
    }

    #[test]
    fn parses_string_and_tables() {
        #[derive(serde::Deserialize)]
        struct W {
            p: ProviderConfig,
        }
        let p = |t: &str| {
            toml::from_str::<W>(t)
                .map(|w| w.p)
                .map_err(|e| e.to_string())
        };
        assert_eq!(p("p = \"origin\"").unwrap(), ProviderConfig::Origin);
        assert_eq!(
            p("p = { kind = \"origin\" }").unwrap(),
            ProviderConfig::Origin
        );
        assert_eq!(
            p("p = { kind = \"cdn\", hls_base = \"https://d1.cloudfront.net\" }").unwrap(),
            ProviderConfig::Cdn {
                hls_base: "https://d1.cloudfront.net".into()
            }
        );
        let ext = p(
            "p = { kind = \"external\", ingest_url = \"rtmps://x.example:443/app/sk\", \
                     playback_url = \"https://y.example/p.m3u8\" }",
        )
        .unwrap();
        assert!(matches!(
            ext,
            ProviderConfig::External {
                tls_verify: true,
                ..
            }
        ));
        let e = p("p = { kind = \"cdn\", hls_base = \"https://a\", bogus = 1 }").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = p("p = \"cdn\"").unwrap_err();
        assert!(e.contains("table"), "{e}");
        let e = p("p = \"akamai\"").unwrap_err();
        assert!(e.contains("akamai"), "{e}");
        let e = p("p = { kind = \"akamai\" }").unwrap_err();
        assert!(e.contains("akamai"), "{e}");
        // JSON (the API) takes the same shapes.
        let j: ProviderConfig =
            serde_json::from_str(r#"{"kind":"cdn","hls_base":"http://127.0.0.1:1"}"#).unwrap();
        assert_eq!(j.kind(), "cdn");
        let j: ProviderConfig = serde_json::from_str(r#""origin""#).unwrap();
        assert_eq!(j, ProviderConfig::Origin);
    }

    #[test]
    fn server_limits() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.header_read_timeout_ms, 10_000);
        assert_eq!(c.server.idle_timeout_ms, 75_000);
        assert_eq!(c.server.max_connections_per_ip, 1_000);
        let c = Config::from_toml(
            "[server]\nheader_read_timeout_ms = 2000\nidle_timeout_ms = 5000\n\
             body_read_timeout_ms = 3000\nmax_connections = 50\nmax_connections_per_ip = 50\n",
        )
        .unwrap();
        assert_eq!(c.server.max_connections, 50);
        for (bad, word) in [
            (
                "[server]\nheader_read_timeout_ms = 0\n",
                "header_read_timeout_ms",
            ),
            ("[server]\nidle_timeout_ms = 99\n", "idle_timeout_ms"),
            (
                "[server]\nbody_read_timeout_ms = 600001\n",
                "body_read_timeout_ms",
            ),
            ("[server]\nmax_connections = 0\n", "max_connections"),
            (
                "[server]\nmax_connections = 10\nmax_connections_per_ip = 11\n",
                "max_connections_per_ip",
            ),
            ("[server]\nmax_request_bytes = 100\n", "max_request_bytes"),
            ("[server]\nidle_timeout = 5\n", "idle_timeout"),
        ] {
            let e = Config::from_toml(bad).unwrap_err();
            assert!(e.contains(word), "{bad}: {e}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Config::from_toml("[hls]\npart_target_ms = 10\n").is_err());
        assert!(Config::from_toml("[[streams]]\nname = \"a b\"\n").is_err());
        // Edge pulls: an http:// WHEP URL, bounded timings, no unknown keys.
        let c = Config::from_toml(
            "[[streams]]\nname = \"a\"\npull = \"http://10.0.0.5:8080/whep/a\"\n",
        )
        .unwrap();
        assert_eq!(
            c.streams[0].pull.as_deref(),
            Some("http://10.0.0.5:8080/whep/a")
        );
        assert_eq!(
            (c.pull.linger_ms, c.pull.connect_timeout_ms),
            (10_000, 4_000)
        );
        for bad in ["ftp://x/whep/a", "https://x/whep/a", "not a url", "/whep/a"] {
            let t = format!("[[streams]]\nname = \"a\"\npull = \"{bad}\"\n");
            assert!(Config::from_toml(&t).unwrap_err().contains("pull"), "{bad}");
        }
        assert!(Config::from_toml("[pull]\nlinger_ms = 0\n").is_err());
        assert!(Config::from_toml("[pull]\nconnect_timeout_ms = 100\n").is_err());
        assert!(Config::from_toml("[pull]\nlingerms = 5\n")
            .unwrap_err()
            .contains("lingerms"));
    }
}
