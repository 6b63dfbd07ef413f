//! WHIP ingest signaling (RFC 9725):
//!
//! - `POST /whip/{stream}` with `Authorization: Bearer KEY` and `application/sdp` → 201,
//!   `Location: /whip/{stream}/{session}`, `ETag`, the SDP answer (ICE-lite host candidates of
//!   the least-loaded SFU worker, recvonly on our side), `Link` headers for configured ICE
//!   servers. The key resolves like an RTMP key ([`crate::config::Config::lookup_key`]); in open
//!   mode the key is the stream name. 401 (+ `WWW-Authenticate`) without a bearer token, 403 for
//!   a key that does not publish this stream, 415 wrong content type, 400 malformed SDP, 406 an
//!   offer without H.264 video, 422 an offer that does not send or has a fingerprint weaker than
//!   sha-256 (the check shared with WHEP: [`crate::webrtc::offer`]), 409 a stream that already
//!   has a publisher, 503 SFU off / full.
//! - `PATCH /whip/{stream}/{session}` (`application/trickle-ice-sdpfrag`): If-Match required
//!   (428 without, 412 stale) → 204; an ICE restart is refused with 422.
//! - `DELETE` → 200: the publisher leaves and the stream goes idle. `OPTIONS` → 204 with CORS.
//!   Other methods → 405.
//!
//! An API kick (`DELETE /api/v1/streams/{name}/publisher`) ends the WHIP session too: the core
//! kicks through the publisher's control handle, and its worker drops the peer.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::Extensions;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use axum::routing::post;
use axum::Router;

use super::AppState;
use crate::config::KeyLookup;
use crate::ingest::whip::WhipError;

// Session PATCH/DELETE/OPTIONS and the reply helpers are the same for WHIP and WHEP (RFC 9725
// gives both one shape): one implementation, in `whep`.
use super::whep::{
    created, off_thread, offer_preamble, options_resource, options_session, reply, retry_after,
};
use crate::webrtc::Role;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/whip/{stream}", post(create).options(options_resource))
        .route(
            "/whip/{stream}/{session}",
            axum::routing::patch(patch_publisher)
                .delete(remove_publisher)
                .options(options_session),
        )
}

async fn patch_publisher(
    State(state): State<AppState>,
    Path((stream, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    super::whep::patch(&state, Role::Publisher, &stream, &session, &headers, &body)
}

async fn remove_publisher(
    State(state): State<AppState>,
    Path((stream, session)): Path<(String, String)>,
) -> Response<Body> {
    super::whep::remove(&state, Role::Publisher, &stream, &session)
}

/// Does the request's key allow publishing `stream`? `Some`: the refusal to send.
fn refuse(state: &AppState, headers: &HeaderMap, stream: &str) -> Option<Response<Body>> {
    let Some(key) = super::bearer(headers) else {
        let mut r = reply(
            state,
            StatusCode::UNAUTHORIZED,
            "WHIP publishing needs Authorization: Bearer <stream key>",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"whip\""),
        );
        return Some(r);
    };
    let ok = match state.cfg.lookup_key(key) {
        KeyLookup::Stream(name) => name == stream,
        KeyLookup::Open => crate::config::constant_time_eq(key.as_bytes(), stream.as_bytes()),
        KeyLookup::Unknown => false,
    };
    if ok {
        None
    } else {
        // Never echo the key; say which stream was refused.
        tracing::warn!(stream = %stream, side = "ingest", path = "whip",
            "WHIP publish refused: the key does not publish this stream");
        Some(reply(
            state,
            StatusCode::FORBIDDEN,
            format!("this key may not publish stream '{stream}'"),
        ))
    }
}

async fn create(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    ext: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let peer = ext
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.to_string());
    let ip = ext
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    if let Some(r) = refuse(&state, &headers, &stream) {
        return r;
    }
    let (offer, sfu) = match offer_preamble(&state, Role::Publisher, &headers, &body, &stream) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let name = stream.clone();
    let registry = state.registry.clone();
    let sfu2 = sfu.clone();
    let who = format!("whip:{peer}");
    let res = off_thread(&state, move || {
        sfu2.create_publisher(&registry, &name, &offer, who, ip)
    })
    .await;
    let res = match res {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match res {
        Ok(c) => {
            tracing::info!(stream = %stream, side = "ingest", path = "whip", %peer,
                session = &c.session_id[..16], "WHIP publisher created");
            created(
                &state,
                Role::Publisher,
                &stream,
                &c.session_id,
                c.answer,
                &c.etag,
            )
        }
        Err(e) => {
            tracing::info!(stream = %stream, side = "ingest", path = "whip", %peer,
                "WHIP publish refused: {e}");
            error_response(&state, e)
        }
    }
}

fn error_response(state: &AppState, e: WhipError) -> Response<Body> {
    let msg = e.to_string();
    match e {
        WhipError::BadSdp(_) | WhipError::BadName(_) => reply(state, StatusCode::BAD_REQUEST, msg),
        WhipError::Unsupported(_) => reply(state, StatusCode::NOT_ACCEPTABLE, msg),
        WhipError::Setup(_) => reply(state, StatusCode::UNPROCESSABLE_ENTITY, msg),
        WhipError::AlreadyPublishing(_) => retry_after(reply(state, StatusCode::CONFLICT, msg), 5),
        WhipError::NoSession => reply(state, StatusCode::NOT_FOUND, msg),
        WhipError::Disabled | WhipError::Full => {
            retry_after(reply(state, StatusCode::SERVICE_UNAVAILABLE, msg), 10)
        }
        WhipError::Refused(r) => retry_after(
            reply(state, StatusCode::SERVICE_UNAVAILABLE, msg),
            r.retry_after_secs(),
        ),
        WhipError::Internal(_) => reply(state, StatusCode::INTERNAL_SERVER_ERROR, msg),
    }
}
