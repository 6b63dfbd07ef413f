//! WHEP playback signaling (the WHEP draft, same shape as RFC 9725 WHIP):
//!
//! - `POST /whep/{stream}` with `application/sdp` → 201, `Location: /whep/{stream}/{session}`,
//!   `ETag`, the SDP answer (ICE-lite host candidates of the least-loaded SFU worker), `Link`
//!   headers for configured ICE servers. 415 wrong content type, 400 malformed SDP, 406 no H.264
//!   in the offer (or a stream whose video is not H.264), 422 an offer that does not receive or
//!   has a fingerprint weaker than sha-256 (the shared check: [`crate::webrtc::offer`]), 404
//!   unknown stream, 409 + Retry-After for a known stream without a publisher, 503 +
//!   Retry-After when full, when too many sessions are being set up (in all, or from the
//!   client's address), when every SFU worker is busier than `sfu.admit_max_busy_pct`, or
//!   when the SFU is off; the body says which.
//! - In a cluster (`[cluster] redis`), a POST this node has no room for (the viewer cap, the
//!   cluster `capacity`, or the measured load) answers `307 Temporary Redirect` with `Location:
//!   {node}/whep/{stream}?via={ids}` on the least-loaded other node with room (RFC 9725 §4.5
//!   allows redirects for load balancing); `via` lists the nodes that already redirected it, and
//!   none of them redirects it again. 503 + Retry-After when no node has room. Another node's
//!   pull (`Deltacast-Via`) is never redirected and ignores `capacity`: only the SFU's own
//!   limits refuse it (503).
//! - Session URLs of WHEP viewers and WHIP publishers are separate namespaces: a WHEP path never
//!   reaches a publisher's session, nor the other way round.
//! - `PATCH /whep/{stream}/{session}` with `application/trickle-ice-sdpfrag`: If-Match required
//!   (428 without, 412 stale) → 204. The server is ICE-lite, so client candidates need no action;
//!   an ICE restart (new ufrag/pwd) is refused with 422 (create a new session instead).
//! - Edge pull ([`crate::ingest::whep_pull`]): a POST for a stream that is not live here but has
//!   an upstream (`[[streams]] pull`, the cluster) first pulls it (bounded by
//!   `pull.connect_timeout_ms`; 502/504 when the upstream fails, 508 for a loop). A POST whose
//!   `Deltacast-Via` already names this node, or more than 4 nodes, is refused with 508.
//! - `DELETE` → 200. `OPTIONS` → 204 with CORS (exposes Location, ETag, Link, Accept-Patch) and
//!   `Accept-Post: application/sdp`. Other methods → 405 (axum's method router).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use axum::routing::post;
use axum::Router;

use super::AppState;
use crate::egress::sfu::{SessionInfo, SfuHandle, WhepError};
use crate::webrtc::admission::{Refusal, SlotKind};
use crate::webrtc::Role;

pub(super) const SDP: &str = "application/sdp";
pub(super) const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
const EXPOSE: &str = "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After";
/// Longest a POST waits for its turn to be answered before it is refused (503).
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/whep/{stream}", post(create).options(options_resource))
        .route(
            "/whep/{stream}/{session}",
            axum::routing::patch(patch_viewer)
                .delete(remove_viewer)
                .options(options_session),
        )
}

pub(super) fn cors(h: &mut HeaderMap, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE),
    );
}

pub(super) fn reply(
    state: &AppState,
    status: StatusCode,
    msg: impl Into<String>,
) -> Response<Body> {
    let mut r = Response::new(Body::from(msg.into() + "\n"));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    cors(r.headers_mut(), &state.cfg.hls.cors_origin);
    r
}

pub(super) fn retry_after(mut r: Response<Body>, secs: u32) -> Response<Body> {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

pub(super) fn content_type_is(h: &HeaderMap, want: &str) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

pub(super) fn sfu(state: &AppState) -> Option<&Arc<SfuHandle>> {
    state.sfu.as_ref()
}

pub(super) fn ice_links(state: &AppState, h: &mut HeaderMap) {
    for s in &state.cfg.sfu.ice_servers {
        if let Ok(v) = HeaderValue::from_str(&format!("<{s}>; rel=\"ice-server\"")) {
            h.append(header::LINK, v);
        }
    }
}

async fn create(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    RawQuery(query): RawQuery,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    // Admission bounds pending sessions per client address.
    let ip = ext
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let (offer, sfu) = match offer_preamble(&state, Role::Viewer, &headers, &body, &stream) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    // A pull from another node: refuse loops, then (like any viewer of a stream that is not
    // live here) pull it from its upstream if one is known.
    let via = match crate::ingest::whep_pull::check_via(&headers, state.pulls.node_id()) {
        Ok(v) => v,
        Err(e) => return reply(&state, StatusCode::LOOP_DETECTED, e.to_string()),
    };
    // The nodes that already redirected this POST (placement), apart from the pull's hops.
    let redirected = crate::cluster::parse_via(query.as_deref());
    // Another node pulling from this one asked for it by name (it is the stream's origin or an
    // upper tier): placement does not apply to it. Sending it on would make the other node pull
    // from here in turn (a loop, 508), so an origin full of viewers would starve every edge,
    // and a new origin after a failover (an edge full of viewers) could never be re-pulled.
    // Only the SFU's own admission (viewer cap, measured load) can refuse it, with 503.
    let is_pull = !via.is_empty();
    let refuse_full = |e: WhepError| {
        if is_pull {
            error_response(&state, e)
        } else {
            full_here(&state, &stream, &redirected, e)
        }
    };
    // A full node sends the viewer on before it spends a pull on it.
    if !is_pull && state.cluster.at_capacity() {
        sfu.admission.count_refusal(Refusal::Full);
        return full_here(
            &state,
            &stream,
            &redirected,
            WhepError::Refused(Refusal::Full),
        );
    }
    if let Err(r) = pull_if_needed(&state, &stream, &via).await {
        return *r;
    }
    let name = stream.clone();
    // The slot first (atomic, per-address pending bound): a refused stranger costs no SDP work.
    let slot = match sfu.admission.reserve(ip, SlotKind::Viewer) {
        Ok(s) => s,
        Err(r @ (Refusal::Full | Refusal::Overloaded(_))) => {
            return refuse_full(WhepError::Refused(r))
        }
        Err(r) => return error_response(&state, WhepError::Refused(r)),
    };
    // SDP parsing and DTLS/ICE setup are CPU work: keep them off the async workers, a few at a
    // time (a burst of POSTs waits here as tasks instead of piling up blocking threads).
    let permit =
        match tokio::time::timeout(ANSWER_WAIT, sfu.answering.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                sfu.admission.count_refusal(Refusal::PendingFull);
                return error_response(&state, WhepError::Refused(Refusal::PendingFull));
            }
        };
    // Another node's pull: its keyframe requests go to the publisher, not to our GOP cache.
    let relay = is_pull;
    let res = off_thread(&state, move || {
        sfu.create_session_for(&name, &offer, slot, relay)
    })
    .await;
    drop(permit);
    let res = match res {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match res {
        Ok(c) => {
            tracing::info!(stream = %stream, session = &c.session_id[..16], "WHEP viewer created");
            created(
                &state,
                Role::Viewer,
                &stream,
                &c.session_id,
                c.answer,
                &c.etag,
            )
        }
        Err(WhepError::UnknownStream(n)) if state.cfg.streams.iter().any(|s| s.name == n) => {
            // Configured but never published since start: known, just not live.
            error_response(&state, WhepError::NotLive(n))
        }
        Err(e @ (WhepError::Full | WhepError::Refused(Refusal::Overloaded(_)))) => refuse_full(e),
        Err(e) => error_response(&state, e),
    }
}

/// Make `stream` live here through an edge pull when it is not and an upstream is known; the
/// reply when that failed. Unknown upstream: nothing to do (the answer is the usual 404/409).
async fn pull_if_needed(
    state: &AppState,
    stream: &str,
    via: &[String],
) -> Result<(), Box<Response<Body>>> {
    use crate::ingest::whep_pull::PullError;
    let e = match state.pulls.ensure_via(stream, via).await {
        Ok(()) | Err(PullError::NoUpstream) => return Ok(()),
        Err(e) => e,
    };
    let msg = format!("stream '{stream}' could not be pulled: {e}");
    tracing::info!(stream, "WHEP viewer refused: {msg}");
    Err(Box::new(match e {
        PullError::Loop(_) => reply(state, StatusCode::LOOP_DETECTED, msg),
        PullError::Refused { status: 404, .. } => reply(state, StatusCode::NOT_FOUND, msg),
        PullError::Refused { status: 409, .. } => {
            retry_after(reply(state, StatusCode::CONFLICT, msg), 5)
        }
        PullError::Refused { status: 503, .. } | PullError::Unavailable(_) => {
            retry_after(reply(state, StatusCode::SERVICE_UNAVAILABLE, msg), 5)
        }
        PullError::Timeout(_) => reply(state, StatusCode::GATEWAY_TIMEOUT, msg),
        _ => reply(state, StatusCode::BAD_GATEWAY, msg),
    }))
}

/// This node has no room for the viewer: 307 to the least-loaded other node with room (see the
/// module docs), else the refusal `e` as a single node answers it.
fn full_here(state: &AppState, stream: &str, via: &[String], e: WhepError) -> Response<Body> {
    let c = &state.cluster;
    if !c.enabled {
        return error_response(state, e);
    }
    let Some(to) = c.redirect_target(via) else {
        c.count_redirect(false);
        // The operator reads which limit refused: in a cluster it is every node's, not only
        // this node's `sfu.max_viewers`.
        let secs = retry_secs(&e).unwrap_or(10);
        tracing::debug!(
            stream,
            "WHEP join refused: every node of the cluster is full"
        );
        return retry_after(
            reply(
                state,
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "every node of the cluster is full for WebRTC ([cluster] capacity, \
                     sfu.max_viewers or sfu.admit_max_busy_pct; here: {e}); retry after the \
                     Retry-After delay, or play the LL-HLS stream"
                ),
            ),
            secs,
        );
    };
    c.count_redirect(true);
    let mut ids = via.to_vec();
    ids.push(c.node_id.clone());
    let location = format!(
        "{}/whep/{stream}?{}={}",
        to.public_http,
        crate::cluster::VIA_PARAM,
        ids.join(",")
    );
    tracing::debug!(stream, to = %to.id, "WHEP POST redirected: this node is full");
    let mut r = reply(
        state,
        StatusCode::TEMPORARY_REDIRECT,
        format!("this node is full; node {} takes the viewer", to.id),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The checks a WHEP or WHIP POST makes before any SDP work: content type, UTF-8, stream
/// name, WebRTC on. The offer text and the SFU, or the reply.
pub(super) fn offer_preamble(
    state: &AppState,
    role: Role,
    headers: &HeaderMap,
    body: &Bytes,
    stream: &str,
) -> Result<(String, Arc<SfuHandle>), Box<Response<Body>>> {
    let what = match role {
        Role::Viewer => "WHEP",
        Role::Publisher => "WHIP",
    };
    if !content_type_is(headers, SDP) {
        return Err(Box::new(reply(
            state,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{what} offers must be Content-Type: application/sdp"),
        )));
    }
    let Ok(offer) = std::str::from_utf8(body) else {
        return Err(Box::new(reply(
            state,
            StatusCode::BAD_REQUEST,
            "SDP offer is not UTF-8",
        )));
    };
    if !crate::media::stream::valid_stream_name(stream) {
        // A viewer asks for something that cannot exist; a publisher sent a bad name.
        return Err(Box::new(match role {
            Role::Viewer => reply(
                state,
                StatusCode::NOT_FOUND,
                format!("no stream named '{stream}'"),
            ),
            Role::Publisher => reply(
                state,
                StatusCode::BAD_REQUEST,
                format!("'{stream}' is not a valid stream name"),
            ),
        }));
    }
    let Some(sfu) = sfu(state).cloned() else {
        let msg = match role {
            Role::Viewer => {
                "WebRTC playback is disabled on this server ([sfu] enabled = false); use LL-HLS"
            }
            Role::Publisher => {
                "WebRTC is disabled on this server ([sfu] enabled = false); publish over RTMP"
            }
        };
        return Err(Box::new(retry_after(
            reply(state, StatusCode::SERVICE_UNAVAILABLE, msg),
            60,
        )));
    };
    Ok((offer.to_string(), sfu))
}

/// Run the SDP work of a POST (answering the offer) on a blocking thread; a panic there is a
/// 500.
pub(super) async fn off_thread<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Box<Response<Body>>> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Box::new(reply(
            state,
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal: {e}"),
        ))
    })
}

/// 201 Created for a new WHEP or WHIP session: the answer, `Location`, `ETag`, `Accept-Patch`,
/// the ICE server links, CORS.
pub(super) fn created(
    state: &AppState,
    role: Role,
    stream: &str,
    session_id: &str,
    answer: String,
    etag: &str,
) -> Response<Body> {
    let base = match role {
        Role::Viewer => "whep",
        Role::Publisher => "whip",
    };
    let mut r = Response::new(Body::from(answer));
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(v) = HeaderValue::from_str(&format!("/{base}/{stream}/{session_id}")) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    ice_links(state, h);
    cors(h, &state.cfg.hls.cors_origin);
    r
}

/// The `Retry-After` of a refusal for lack of room (`None`: not such a refusal).
fn retry_secs(e: &WhepError) -> Option<u32> {
    match e {
        WhepError::Full => Some(10),
        WhepError::Refused(r) => Some(r.retry_after_secs()),
        _ => None,
    }
}

fn error_response(state: &AppState, e: WhepError) -> Response<Body> {
    let msg = e.to_string();
    match e {
        WhepError::BadSdp(_) => reply(state, StatusCode::BAD_REQUEST, msg),
        WhepError::NoH264 | WhepError::Unsupported(_) | WhepError::StreamNotH264(_) => {
            reply(state, StatusCode::NOT_ACCEPTABLE, msg)
        }
        WhepError::Setup(_) => reply(state, StatusCode::UNPROCESSABLE_ENTITY, msg),
        WhepError::UnknownStream(_) | WhepError::NoSession => {
            reply(state, StatusCode::NOT_FOUND, msg)
        }
        WhepError::NotLive(_) => retry_after(reply(state, StatusCode::CONFLICT, msg), 5),
        WhepError::Full | WhepError::Refused(_) => {
            if let WhepError::Refused(r) = &e {
                tracing::debug!(reason = r.as_str(), "WHEP join refused");
            }
            let secs = retry_secs(&e).unwrap_or(10);
            retry_after(reply(state, StatusCode::SERVICE_UNAVAILABLE, msg), secs)
        }
        WhepError::Internal(_) => reply(state, StatusCode::INTERNAL_SERVER_ERROR, msg),
    }
}

/// Session `id` of `stream` as the `role`'s path sees it: WHEP URLs reach viewers only, WHIP
/// URLs publishers only.
fn find_session(state: &AppState, role: Role, stream: &str, id: &str) -> Option<SessionInfo> {
    sfu(state)?
        .session(id)
        .filter(|s| s.stream == stream && s.role == role)
}

async fn patch_viewer(
    State(state): State<AppState>,
    Path((stream, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    patch(&state, Role::Viewer, &stream, &session, &headers, &body)
}

async fn remove_viewer(
    State(state): State<AppState>,
    Path((stream, session)): Path<(String, String)>,
) -> Response<Body> {
    remove(&state, Role::Viewer, &stream, &session)
}

/// PATCH of a WHEP or WHIP session URL (trickle ICE; ICE restarts refused).
pub(super) fn patch(
    state: &AppState,
    role: Role,
    stream: &str,
    session: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response<Body> {
    let Some(s) = find_session(state, role, stream, session) else {
        return reply(state, StatusCode::NOT_FOUND, "no such session");
    };
    if !content_type_is(headers, SDPFRAG) {
        return reply(
            state,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PATCH bodies must be Content-Type: application/trickle-ice-sdpfrag",
        );
    }
    let Some(if_match) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return reply(
            state,
            StatusCode::PRECONDITION_REQUIRED,
            "If-Match is required",
        );
    };
    let frag = String::from_utf8_lossy(body);
    let restart = frag.lines().any(|l| l.starts_with("a=ice-ufrag:"))
        && frag.lines().any(|l| l.starts_with("a=ice-pwd:"));
    if if_match.trim() == "*" {
        if restart {
            return reply(
                state,
                StatusCode::UNPROCESSABLE_ENTITY,
                "ICE restart is not supported; DELETE this session and POST a new offer",
            );
        }
    } else if if_match.trim() != s.etag {
        return reply(state, StatusCode::PRECONDITION_FAILED, "stale ETag");
    }
    // ICE-lite: the peer's checks find us; its candidates need no action here.
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(v) = HeaderValue::from_str(&s.etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    cors(r.headers_mut(), &state.cfg.hls.cors_origin);
    r
}

/// DELETE of a WHEP or WHIP session URL.
pub(super) fn remove(state: &AppState, role: Role, stream: &str, session: &str) -> Response<Body> {
    match (sfu(state), find_session(state, role, stream, session)) {
        (Some(sfu), Some(_)) => match sfu.delete(session) {
            Ok(()) => reply(state, StatusCode::OK, "session ended"),
            Err(e) => error_response(state, e),
        },
        _ => reply(state, StatusCode::NOT_FOUND, "no such session"),
    }
}

pub(super) fn preflight(state: &AppState, methods: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    cors(h, &state.cfg.hls.cors_origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, If-Match, Authorization"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    h.insert(header::ALLOW, HeaderValue::from_static(methods));
    r
}

pub(super) async fn options_resource(State(state): State<AppState>) -> Response<Body> {
    let mut r = preflight(&state, "POST, OPTIONS");
    r.headers_mut()
        .insert("accept-post", HeaderValue::from_static(SDP));
    ice_links(&state, r.headers_mut());
    r
}

pub(super) async fn options_session(State(state): State<AppState>) -> Response<Body> {
    let mut r = preflight(&state, "PATCH, DELETE, OPTIONS");
    r.headers_mut()
        .insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    r
}
