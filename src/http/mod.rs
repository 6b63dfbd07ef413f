//! The one HTTP listener (HLS origin, API, metrics, health) on its own small tokio runtime.

pub mod api;
pub mod client;
pub mod conn;
pub mod hls;
pub mod playback_api;
pub mod push_api;
pub mod watch;
pub mod whep;
pub mod whip;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::routing::{delete, get};
use axum::Router;

use crate::config::Config;
use crate::egress::hls::store::HlsStore;
use crate::media::Registry;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub registry: Arc<Registry>,
    pub hls: Arc<HlsStore>,
    pub metrics: Arc<Metrics>,
    pub push: crate::egress::push::PushEngine,
    /// WebRTC SFU for WHEP playback; `None` when disabled or its sockets could not be bound.
    pub sfu: Option<Arc<crate::egress::sfu::SfuHandle>>,
    /// Each stream's StreamingProvider (playback URLs; see `crate::provider`).
    pub providers: Arc<crate::provider::ProviderRegistry>,
    /// Edge pulls from upstream WHEP servers (see `crate::ingest::whep_pull`).
    pub pulls: Arc<crate::ingest::whep_pull::PullManager>,
    /// This node in the cluster (inert without `[cluster] redis`; see `crate::cluster`).
    pub cluster: Arc<crate::cluster::Cluster>,
}

/// The token of an `Authorization: Bearer TOKEN` header, if any. The scheme is case-insensitive
/// (RFC 9110 §11.1): `bearer` and `BEARER` work too.
pub(crate) fn bearer(h: &axum::http::HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn metrics(State(state): State<AppState>) -> Response<Body> {
    let text = state.metrics.render(
        &state.registry,
        &state.hls,
        &state.push,
        state.sfu.as_deref(),
        Some(&state.pulls),
        state.cluster.enabled.then_some(&*state.cluster),
    );
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `GET /api/v1/cluster`: the nodes and live streams of the cluster (this node alone with
/// `"cluster": false` without Redis).
async fn cluster(State(state): State<AppState>) -> Response<Body> {
    let body = serde_json::to_vec(&state.cluster.describe()).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn preflight(State(state): State<AppState>) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&state.cfg.hls.cors_origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Range"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

pub fn router(state: AppState) -> Router {
    let limit = state.cfg.server.max_request_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/streams", get(api::list))
        .route("/api/v1/streams/{name}", get(api::get).delete(api::remove))
        .route("/api/v1/streams/{name}/publisher", delete(api::kick))
        .merge(push_api::routes())
        .merge(whep::routes())
        .merge(whip::routes())
        .merge(playback_api::routes())
        .merge(watch::routes())
        .route(
            "/hls/{stream}/index.m3u8",
            get(hls::playlist).options(preflight),
        )
        .route(
            "/hls/{stream}/{gen}/{file}",
            get(hls::media).options(preflight),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serve until the process ends, under the connection policy of [`conn`] (caps, deadlines,
/// bounded heads and bodies).
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    let limits = conn::Limits::new(&state.cfg.server, conn::open_files_limit());
    let metrics = state.metrics.clone();
    conn::serve(listener, router(state), metrics, limits).await;
    Ok(())
}
