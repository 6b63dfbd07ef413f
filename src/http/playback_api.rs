//! Playback, ingest and provider endpoints of the API:
//!
//! - `GET /api/v1/streams/{stream}/playback` (public): what the watch page needs —
//!   `{ "stream", "state": "live" | "starting" | "offline",
//!   "webrtc": { "whep": URL, "alternates": [URL…] } | null, "hls": URL | null,
//!   "webrtc_timeout_ms", "freeze_ms" }`;
//! - `GET /api/v1/streams/{stream}/ingest` (admin): RTMP server + key, WHIP URL + token;
//! - `GET /api/v1/streams/{stream}/provider` (public, secrets masked) and
//!   `PUT /api/v1/streams/{stream}/provider` (admin) with `"origin"`,
//!   `{"kind": "cdn", "hls_base": "https://…"}` or `{"kind": "external", "ingest_url": "rtmps://…",
//!   "playback_url": "https://…"}`.
//!
//! URLs are absolute: `web.public_url` when set, otherwise `http://` + the request's `Host`.
//!
//! In a cluster the WHEP URL is the least-loaded node's with room (this node when it ties), as
//! the registry last said (see `crate::cluster`); a stream live on another node is `live` here.
//! `alternates` lists every other live node's WHEP URL for the stream, least-loaded first, so
//! the page can reconnect over WebRTC to another node when its session dies, even when the node
//! that served the page is the dead one. Empty on a single node.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::api::authorize;
use super::AppState;
use crate::media::StreamState;
use crate::provider::{NodeUrls, ProviderConfig, ProviderError};

/// The routes to merge into the main router (before `with_state`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/streams/{name}/playback", get(playback))
        .route("/api/v1/streams/{name}/ingest", get(ingest))
        .route(
            "/api/v1/streams/{name}/provider",
            get(get_provider).put(put_provider),
        )
}

fn error(code: StatusCode, msg: &str) -> Response {
    let mut r = (code, Json(json!({ "error": msg }))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A `Host` value we are willing to echo into URLs: a host name or IP literal and a port.
fn sane_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Where this node is reachable for the client asking.
pub fn node_urls(state: &AppState, headers: &HeaderMap) -> NodeUrls {
    let cfg = &state.cfg;
    let http_base = if !cfg.web.public_url.is_empty() {
        cfg.web.public_url.trim_end_matches('/').to_string()
    } else {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| sane_host(h))
            .map(str::to_string)
            .unwrap_or_else(|| cfg.server.http_listen.to_string());
        format!("http://{host}")
    };
    // The host part of the base, for the RTMP URL.
    let authority = http_base
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(&http_base)
        .split('/')
        .next()
        .unwrap_or("");
    let host = if let Some(rest) = authority.strip_prefix('[') {
        format!("[{}]", rest.split(']').next().unwrap_or(""))
    } else {
        authority.split(':').next().unwrap_or("").to_string()
    };
    NodeUrls {
        http_base,
        host,
        rtmp_port: cfg.rtmp.listen.port(),
        rtmp_app: cfg.rtmp.app.clone(),
        webrtc: state.sfu.is_some(),
    }
}

/// `live` (HLS has media), `starting` (a publisher, no media yet) or `offline`.
fn live_state(state: &AppState, name: &str) -> &'static str {
    match state.registry.get(name).map(|s| s.state()) {
        Some(StreamState::Publishing) => {
            let has_media = state.hls.get(name).is_some_and(|hs| {
                let w = hs.window.read();
                w.live && w.parts_total > 0
            });
            if has_media {
                "live"
            } else {
                "starting"
            }
        }
        _ => "offline",
    }
}

/// `GET /api/v1/streams/{stream}/playback`.
pub async fn playback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Some(p) = state.providers.get(&name) else {
        return error(StatusCode::NOT_FOUND, "no such stream");
    };
    let node = node_urls(&state, &headers);
    let mut pb = p.playback(&node, &name);
    let mut live = live_state(&state, &name);
    // The other nodes' WHEP URLs the page fails over to when its session dies (least-loaded
    // first); empty on a single node and for a provider's own WHEP URL.
    let mut alternates: Vec<String> = Vec::new();
    if state.cluster.enabled {
        // Only this node's own WHEP URL is moved: a provider's URL elsewhere is the provider's.
        if let Some(w) = pb.webrtc.as_mut().filter(|w| w.whep == node.whep(&name)) {
            let base = state.cluster.playback_base();
            if let Some(base) = &base {
                w.whep = format!("{base}/whep/{name}");
            }
            alternates = state
                .cluster
                .alternate_bases(base.as_deref())
                .into_iter()
                .map(|b| format!("{b}/whep/{name}"))
                .collect();
        }
        if live == "offline" && state.cluster.origin_of(&name).is_some() {
            live = "live";
        }
    }
    let webrtc = pb
        .webrtc
        .map(|w| json!({ "whep": w.whep, "alternates": alternates }));
    let body = json!({
        "stream": name,
        "state": live,
        "webrtc": webrtc,
        "hls": pb.hls,
        "webrtc_timeout_ms": state.cfg.web.webrtc_timeout_ms,
        "freeze_ms": state.cfg.web.freeze_ms,
    });
    let mut r = no_store(Json(body).into_response());
    if let Ok(v) = HeaderValue::from_str(&state.cfg.hls.cors_origin) {
        r.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    r
}

/// `GET /api/v1/streams/{stream}/ingest` (admin): where to publish.
pub async fn ingest(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, peer, &headers) {
        return r;
    }
    let Some(p) = state.providers.get(&name) else {
        return error(StatusCode::NOT_FOUND, "no such stream");
    };
    let node = node_urls(&state, &headers);
    let i = p.ingest(&node, &name, state.providers.keys(&name));
    no_store(Json(json!({ "stream": name, "rtmp": i.rtmp, "whip": i.whip })).into_response())
}

fn provider_json(state: &AppState, headers: &HeaderMap, name: &str) -> Option<Value> {
    let p = state.providers.get(name)?;
    let node = node_urls(state, headers);
    Some(json!({
        "stream": name,
        "provider": p.config().public_view(),
        "playback": p.playback(&node, name),
    }))
}

/// `GET /api/v1/streams/{stream}/provider`.
pub async fn get_provider(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    match provider_json(&state, &headers, &name) {
        Some(v) => no_store(Json(v).into_response()),
        None => error(StatusCode::NOT_FOUND, "no such stream"),
    }
}

/// `PUT /api/v1/streams/{stream}/provider` (admin): switch the stream's provider now. Viewers'
/// pages pick the new URLs up on their next poll of the playback document.
pub async fn put_provider(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, peer, &headers) {
        return r;
    }
    let cfg: ProviderConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "body must be \"origin\" or {{\"kind\": \"cdn\", \"hls_base\": …}} or \
                     {{\"kind\": \"external\", \"ingest_url\": …, \"playback_url\": …}}: {e}"
                ),
            )
        }
    };
    let kind = cfg.kind();
    match state.providers.set(&name, cfg) {
        Ok(_) => {
            tracing::info!(stream = %name, %peer, provider = kind, "API: provider set");
            match provider_json(&state, &headers, &name) {
                Some(v) => no_store(Json(v).into_response()),
                None => error(StatusCode::NOT_FOUND, "no such stream"),
            }
        }
        Err(ProviderError::UnknownStream) => error(StatusCode::NOT_FOUND, "no such stream"),
        Err(e @ ProviderError::Invalid(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e @ ProviderError::Attach(_)) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::sane_host;

    #[test]
    fn host_header_filter() {
        assert!(sane_host("live.example.com:8080"));
        assert!(sane_host("[::1]:8080"));
        assert!(!sane_host("evil.com/x"));
        assert!(!sane_host("a\"b"));
        assert!(!sane_host(""));
    }
}
