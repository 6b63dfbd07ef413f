//! The JSON API under /api/v1: stream state for operators and pages; mutating calls need the
//! admin token (or, with none configured, a loopback peer). Reads are public, but what only an
//! operator should see (the publisher's address, `last_error`, which names refused publishers'
//! addresses) is shown to admins only.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::config::constant_time_eq;
use crate::media::Stream;

/// Stream fields that name publishers' addresses: admins only.
const ADMIN_FIELDS: [&str; 2] = ["publisher", "last_error"];

fn stream_json(state: &AppState, s: &Stream, admin: bool) -> Value {
    let st = s.status();
    let mut v = serde_json::to_value(&st).unwrap_or_else(|_| json!({}));
    if let (false, Value::Object(m)) = (admin, &mut v) {
        for k in ADMIN_FIELDS {
            m.remove(k);
        }
    }
    let mut hls_viewers = 0;
    let hls = state.hls.get(s.name()).map(|hs| {
        let w = hs.window.read();
        hls_viewers = hs.recent_clients(
            std::time::Instant::now(),
            std::time::Duration::from_secs(3 * w.target_duration()),
        );
        json!({
            "live": w.live,
            "media_sequence": w.media_sequence(),
            "segments": w.listed_segments(),
            "target_duration": w.target_duration(),
            "parts_total": w.parts_total,
            "window_bytes": w.bytes_held(),
        })
    });
    let dests = state.push.list(&st.name);
    let dests_live = dests
        .iter()
        .filter(|d| d.state == crate::egress::push::DestState::Live)
        .count();
    let webrtc_viewers = state.sfu.as_ref().map_or(0, |sfu| sfu.viewers_of(&st.name));
    // Per simulcast layer (0 = best), when the publisher sends layers.
    let webrtc_layers = state
        .sfu
        .as_ref()
        .filter(|_| st.video_layers > 1)
        .map(|sfu| sfu.viewers_by_layer(&st.name)[..st.video_layers as usize].to_vec());
    if let Value::Object(m) = &mut v {
        m.insert(
            "playback".into(),
            json!({ "hls": format!("/hls/{}/index.m3u8", st.name) }),
        );
        m.insert("hls".into(), hls.unwrap_or(Value::Null));
        m.insert(
            "viewers".into(),
            json!({
                "hls": hls_viewers,
                "webrtc": webrtc_viewers,
                "webrtc_by_layer": webrtc_layers,
                "rtmp_destinations": dests_live,
            }),
        );
        m.insert(
            "destinations".into(),
            serde_json::to_value(&dests).unwrap_or_default(),
        );
        // An edge pull: where from is an operator's business.
        if let Some(up) = state.pulls.upstream_of(&st.name) {
            m.insert("source".into(), json!("pull"));
            if admin {
                m.insert("upstream".into(), json!(up));
            }
        }
    }
    v
}

pub async fn list(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Json<Value> {
    let admin = authorize(&state, peer, &headers).is_ok();
    let v: Vec<Value> = state
        .registry
        .list()
        .iter()
        .map(|s| stream_json(&state, s, admin))
        .collect();
    Json(Value::Array(v))
}

pub async fn get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let admin = authorize(&state, peer, &headers).is_ok();
    match state.registry.get(&name) {
        Some(s) => Json(stream_json(&state, &s, admin)).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such stream"),
    }
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, Json(json!({ "error": msg }))).into_response()
}

/// Mutating calls: the admin token when configured, otherwise loopback only.
// A ready HTTP answer is the natural error of a request guard; it is built once per request.
#[allow(clippy::result_large_err)]
pub(crate) fn authorize(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let token = &state.cfg.server.admin_token;
    if token.is_empty() {
        if peer.ip().is_loopback() {
            return Ok(());
        }
        return Err(error(
            StatusCode::FORBIDDEN,
            "no admin_token configured: mutating calls are accepted from loopback only",
        ));
    }
    match super::bearer(headers) {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(error(StatusCode::FORBIDDEN, "wrong admin token")),
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "admin token required (Authorization: Bearer …)",
        )),
    }
}

/// DELETE /api/v1/streams/{name}/publisher: disconnect the current publisher.
pub async fn kick(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, peer, &headers) {
        return r;
    }
    match state.registry.get(&name) {
        Some(s) => {
            tracing::info!(stream = %name, %peer, "API: publisher disconnect requested");
            s.kick();
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, "no such stream"),
    }
}

/// DELETE /api/v1/streams/{name}: end a stream that has no publisher.
pub async fn remove(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, peer, &headers) {
        return r;
    }
    match state.registry.get(&name) {
        Some(s) if s.state() == crate::media::StreamState::Publishing => error(
            StatusCode::CONFLICT,
            "stream has a live publisher; disconnect it first",
        ),
        Some(_) => {
            state.registry.remove(&name);
            tracing::info!(stream = %name, %peer, "API: stream removed");
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, "no such stream"),
    }
}
