//! RTMP push destinations in the JSON API:
//!
//! - `GET    /api/v1/streams/{stream}/destinations` — the stream's destinations and their status
//! - `POST   /api/v1/streams/{stream}/destinations` — `{"id"?, "url", "tls_verify"?, "max_retries"?}`
//!   → 201 with the new destination's status and a `Location`
//! - `GET    /api/v1/streams/{stream}/destinations/{id}` — one destination
//! - `DELETE /api/v1/streams/{stream}/destinations/{id}` — 204; its publish is ended cleanly
//!
//! Mutating calls are authorized like the rest of the API (admin token, or loopback when none is
//! configured). Stream keys never appear in full in a response or in the log: URLs are masked.
//! A destination may be added before its stream is published; it waits (`state: "waiting"`).

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::api::authorize;
use super::AppState;
use crate::egress::push::{NewDestination, PushError, Source};

/// The routes to merge into the main router (before `with_state`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/streams/{name}/destinations", get(list).post(add))
        .route(
            "/api/v1/streams/{name}/destinations/{id}",
            get(get_one).delete(remove),
        )
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, Json(json!({ "error": msg }))).into_response()
}

fn push_error(e: PushError) -> Response {
    let code = match &e {
        PushError::Invalid(_) => StatusCode::BAD_REQUEST,
        PushError::Exists { .. } => StatusCode::CONFLICT,
        PushError::NotFound { .. } => StatusCode::NOT_FOUND,
        PushError::TooMany(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(code, &e.to_string())
}

// A ready HTTP answer is the natural error of a request guard; it is built once per request.
#[allow(clippy::result_large_err)]
fn check_name(name: &str) -> Result<(), Response> {
    if crate::media::stream::valid_stream_name(name) {
        Ok(())
    } else {
        Err(error(StatusCode::BAD_REQUEST, "invalid stream name"))
    }
}

/// GET /api/v1/streams/{name}/destinations
pub async fn list(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    if let Err(r) = check_name(&name) {
        return r;
    }
    Json(state.push.list(&name)).into_response()
}

/// GET /api/v1/streams/{name}/destinations/{id}
pub async fn get_one(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    match state.push.get(&name, &id) {
        Some(s) => Json(s).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such destination"),
    }
}

/// POST /api/v1/streams/{name}/destinations
pub async fn add(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<NewDestination>, JsonRejection>,
) -> Response {
    if let Err(r) = authorize(&state, peer, &headers) {
        return r;
    }
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return error(e.status(), &e.body_text()),
    };
    match state.push.add(&name, req, Source::Api) {
        Ok(status) => {
            tracing::info!(side = "egress", path = "rtmp", stream = %name,
                destination = %status.id, url = %status.url, %peer, "API: push destination added");
            let location = format!("/api/v1/streams/{name}/destinations/{}", status.id);
            let mut r = (StatusCode::CREATED, Json(status)).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => push_error(e),
    }
}

/// DELETE /api/v1/streams/{name}/destinations/{id}
pub async fn remove(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = authorize(&state, peer, &headers) {
        return r;
    }
    match state.push.remove(&name, &id) {
        Ok(_) => {
            tracing::info!(side = "egress", path = "rtmp", stream = %name, destination = %id,
                %peer, "API: push destination removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => push_error(e),
    }
}
