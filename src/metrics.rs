//! Process-wide counters updated by the engines, and their Prometheus text rendering
//! (via `prometheus-client`). Per-stream values are read from the registry and the HLS store at
//! scrape time rather than duplicated here.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as PromRegistry;

use crate::egress::hls::packager::PackagerStats;
use crate::egress::hls::store::HlsStore;
use crate::egress::push::PushEngine;
use crate::media::{Registry, StreamState};

/// A counter holding `v`: the render functions snapshot atomics into fresh metrics.
pub(crate) fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// A gauge holding `v` (see [`counter`]).
pub(crate) fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

pub struct Metrics {
    pub rtmp_connections: AtomicU64,
    pub rtmp_connections_open: AtomicI64,
    pub rtmp_rejected: AtomicU64,
    pub rtmp_errors: AtomicU64,
    pub hls_bytes: AtomicU64,
    hls_2xx: AtomicU64,
    hls_400: AtomicU64,
    hls_404: AtomicU64,
    hls_503: AtomicU64,
    hls_other: AtomicU64,
    hls_held: AtomicI64,
    pub packager: Arc<PackagerStats>,
    /// The HTTP listener's connections, caps and timeouts.
    pub http: crate::http::conn::HttpStats,
    /// Seconds from a part landing in the window to a held playlist request being answered.
    block_release: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rtmp_connections: AtomicU64::new(0),
            rtmp_connections_open: AtomicI64::new(0),
            rtmp_rejected: AtomicU64::new(0),
            rtmp_errors: AtomicU64::new(0),
            hls_bytes: AtomicU64::new(0),
            hls_2xx: AtomicU64::new(0),
            hls_400: AtomicU64::new(0),
            hls_404: AtomicU64::new(0),
            hls_503: AtomicU64::new(0),
            hls_other: AtomicU64::new(0),
            hls_held: AtomicI64::new(0),
            packager: Arc::default(),
            http: Default::default(),
            block_release: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
        }
    }
}

/// Decrements the held-requests gauge when a blocking request ends, however it ends.
pub struct HoldGuard<'a>(&'a AtomicI64);

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type Labels = Vec<(String, String)>;

impl Metrics {
    pub fn hls_response(&self, s: StatusCode) {
        let c = match s.as_u16() {
            200..=299 => &self.hls_2xx,
            400 => &self.hls_400,
            404 => &self.hls_404,
            503 => &self.hls_503,
            _ => &self.hls_other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn hold(&self) -> HoldGuard<'_> {
        self.hls_held.fetch_add(1, Ordering::Relaxed);
        HoldGuard(&self.hls_held)
    }

    pub fn block_release(&self, d: std::time::Duration) {
        self.block_release.observe(d.as_secs_f64());
    }

    pub fn held(&self) -> i64 {
        self.hls_held.load(Ordering::Relaxed)
    }

    /// Render everything in the Prometheus text format.
    pub fn render(
        &self,
        registry: &Registry,
        hls: &HlsStore,
        push: &PushEngine,
        sfu: Option<&crate::egress::sfu::SfuHandle>,
        pulls: Option<&crate::ingest::whep_pull::PullManager>,
        cluster: Option<&crate::cluster::Cluster>,
    ) -> String {
        let mut r = PromRegistry::with_prefix("deltacast");
        let ld = |v: &AtomicU64| v.load(Ordering::Relaxed);
        r.register(
            "rtmp_connections",
            "RTMP connections accepted",
            counter(ld(&self.rtmp_connections)),
        );
        r.register(
            "rtmp_connections_open",
            "RTMP connections open now",
            gauge(self.rtmp_connections_open.load(Ordering::Relaxed)),
        );
        r.register(
            "rtmp_rejected",
            "RTMP connections or publishes refused",
            counter(ld(&self.rtmp_rejected)),
        );
        r.register(
            "rtmp_errors",
            "RTMP connections closed on a protocol error",
            counter(ld(&self.rtmp_errors)),
        );
        r.register(
            "hls_sent_bytes",
            "HLS media bytes served",
            counter(ld(&self.hls_bytes)),
        );
        let resp = Family::<Labels, Counter>::default();
        for (code, v) in [
            ("2xx", &self.hls_2xx),
            ("400", &self.hls_400),
            ("404", &self.hls_404),
            ("503", &self.hls_503),
            ("other", &self.hls_other),
        ] {
            resp.get_or_create(&vec![("code".into(), code.into())])
                .inc_by(ld(v));
        }
        r.register("hls_responses", "HLS responses by status", resp);
        r.register(
            "hls_blocked_requests",
            "Blocking playlist/part requests held now",
            gauge(self.held()),
        );
        r.register(
            "hls_block_release_seconds",
            "Time from a part landing to a held playlist request being answered",
            self.block_release.clone(),
        );
        r.register(
            "hls_packager_events",
            "Media events processed by the packager",
            counter(ld(&self.packager.events)),
        );
        r.register(
            "hls_mux_errors",
            "Parts or inits that could not be written",
            counter(ld(&self.packager.mux_errors)),
        );

        let state = Family::<Labels, Gauge>::default();
        let bytes_in = Family::<Labels, Counter>::default();
        let frames_in = Family::<Labels, Counter>::default();
        let bitrate = Family::<Labels, Gauge>::default();
        for s in registry.list() {
            let st = s.status();
            for (name, val) in [
                ("publishing", StreamState::Publishing),
                ("idle", StreamState::Idle),
            ] {
                state
                    .get_or_create(&vec![
                        ("stream".into(), st.name.clone()),
                        ("state".into(), name.into()),
                    ])
                    .set((st.state == val) as i64);
            }
            let l = vec![("stream".to_string(), st.name.clone())];
            bytes_in.get_or_create(&l).inc_by(st.bytes_in);
            frames_in.get_or_create(&l).inc_by(st.frames_in);
            bitrate.get_or_create(&l).set(st.bitrate_bps as i64);
        }
        r.register("stream_state", "1 for the stream's current state", state);
        r.register("ingest_bytes", "Media payload bytes received", bytes_in);
        r.register("ingest_frames", "Frames received", frames_in);
        r.register(
            "ingest_bitrate_bps",
            "Ingest bitrate over the last second",
            bitrate,
        );

        let parts = Family::<Labels, Counter>::default();
        let segs = Family::<Labels, Counter>::default();
        let held = Family::<Labels, Gauge>::default();
        for hs in hls.list() {
            let w = hs.window.read();
            let l = vec![("stream".to_string(), hs.name.to_string())];
            parts.get_or_create(&l).inc_by(w.parts_total);
            segs.get_or_create(&l).inc_by(w.segments_total);
            held.get_or_create(&l).set(w.bytes_held() as i64);
        }
        r.register("hls_parts", "LL-HLS parts produced", parts);
        r.register("hls_segments", "HLS segments completed", segs);
        r.register("hls_window_bytes", "Bytes held in the HLS window", held);

        let dropped = Family::<Labels, Counter>::default();
        for (sink, n) in registry.dropped_by_sink() {
            dropped
                .get_or_create(&vec![("egress".into(), sink.into())])
                .inc_by(n);
        }
        r.register(
            "egress_dropped_frames",
            "Frames an egress lost because it was behind",
            dropped,
        );

        push.encode_metrics(&mut r);
        self.http.encode(&mut r);

        if let Some(sfu) = sfu {
            render_sfu(&mut r, sfu);
        }
        if let Some(p) = pulls {
            p.encode_metrics(&mut r);
        }
        if let Some(c) = cluster {
            c.encode_metrics(&mut r);
        }
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}

/// WebRTC SFU counters, per worker and for the router.
fn render_sfu(r: &mut PromRegistry, sfu: &crate::egress::sfu::SfuHandle) {
    let ld = |v: &AtomicU64| v.load(Ordering::Relaxed);
    let viewers = Family::<Labels, Gauge>::default();
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let dgrams = Family::<Labels, Counter>::default();
    let unknown = Family::<Labels, Counter>::default();
    let keyframes = Family::<Labels, Counter>::default();
    let dropped = Family::<Labels, Counter>::default();
    let switches = Family::<Labels, Counter>::default();
    let busy = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let lag = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let hs_dropped = Family::<Labels, Counter>::default();
    for w in &sfu.workers {
        let l = vec![
            ("worker".to_string(), w.index.to_string()),
            ("driver".to_string(), w.driver.as_str().to_string()),
        ];
        let s = &w.shared;
        viewers
            .get_or_create(&l)
            .set(s.viewers.load(Ordering::Relaxed) as i64);
        packets.get_or_create(&l).inc_by(ld(&s.packets_out));
        bytes.get_or_create(&l).inc_by(ld(&s.bytes_out));
        dgrams.get_or_create(&l).inc_by(ld(&s.datagrams_in));
        unknown.get_or_create(&l).inc_by(ld(&s.datagrams_unknown));
        keyframes.get_or_create(&l).inc_by(ld(&s.keyframe_answers));
        dropped.get_or_create(&l).inc_by(ld(&s.viewers_dropped));
        switches.get_or_create(&l).inc_by(ld(&s.layer_switches));
        busy.get_or_create(&l).set(s.load.busy_pct() / 100.0);
        lag.get_or_create(&l).set(s.load.lag().as_secs_f64());
        hs_dropped
            .get_or_create(&l)
            .inc_by(ld(&s.handshakes_dropped));
    }
    r.register(
        "sfu_worker_busy_ratio",
        "CPU share of a worker thread (measured by the worker, smoothed over about 0.5 s); \
         new viewers are refused when every worker is above sfu.admit_max_busy_pct",
        busy,
    );
    r.register(
        "sfu_worker_loop_lag_seconds",
        "Longest stretch a worker's loop worked without serving its socket, last window",
        lag,
    );
    r.register(
        "sfu_handshake_packets_dropped",
        "Packets of sessions still connecting dropped because the worker's handshake queue was full",
        hs_dropped,
    );
    r.register(
        "sfu_sessions_pending",
        "WebRTC sessions answered and not yet connected (ICE + DTLS)",
        gauge(sfu.admission.pending() as i64),
    );
    r.register(
        "sfu_viewer_slots",
        "Viewer slots taken (connected and connecting), out of sfu.max_viewers",
        gauge(sfu.admission.viewer_slots() as i64),
    );
    let refused = Family::<Vec<(String, String)>, Counter>::default();
    for (reason, n) in sfu.admission.refusals() {
        refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc_by(n);
    }
    r.register(
        "sfu_joins_refused",
        "WebRTC joins refused with 503, by reason",
        refused,
    );
    r.register(
        "sfu_viewers",
        "WebRTC viewers connected, per worker",
        viewers,
    );
    r.register("sfu_packets_out", "RTP packets sent to viewers", packets);
    r.register("sfu_bytes_out", "Bytes sent to viewers", bytes);
    r.register("sfu_datagrams_in", "UDP datagrams received", dgrams);
    r.register(
        "sfu_datagrams_unknown",
        "Datagrams that matched no viewer (garbage, stale peers, bad STUN integrity)",
        unknown,
    );
    r.register(
        "sfu_keyframe_answers",
        "Viewer keyframe requests answered from the GOP cache",
        keyframes,
    );
    r.register(
        "sfu_keyframes_relayed",
        "Keyframe requests of other nodes' edge pulls passed to the publisher (never answered \
         from the GOP cache)",
        counter(
            sfu.workers
                .iter()
                .map(|w| ld(&w.shared.keyframes_relayed))
                .sum(),
        ),
    );
    r.register("sfu_viewers_dropped", "Viewers dropped on timeout", dropped);
    r.register(
        "sfu_layer_switches",
        "Simulcast layer changes of viewers (bandwidth estimate or a layer that stopped)",
        switches,
    );
    let rs = &sfu.router_shared;
    r.register(
        "sfu_router_frames",
        "Frames packetized for WebRTC",
        counter(ld(&rs.frames)),
    );
    r.register(
        "sfu_router_packets",
        "RTP packets made (once per stream)",
        counter(ld(&rs.packets)),
    );
    r.register(
        "sfu_router_frames_dropped",
        "Frames a worker queue had no room for",
        counter(ld(&rs.frames_dropped)),
    );
}
