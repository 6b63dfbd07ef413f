//! The LL-HLS origin: playlists with blocking reload and delta updates, parts/segments/init with
//! CDN-correct caching, HEAD and Range, CORS. Every answer is built from the store's pre-rendered
//! bytes; a blocked request waits on the stream's change channel, never polls.
//!
//! In a cluster, a stream that is not on this node but whose origin is another node is proxied
//! to that origin (`crate::cluster::hls_proxy`): one stable URL per stream for a CDN.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};

use super::AppState;
use crate::egress::hls::store::{Lookup, Object, Readiness};

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn plain(state: &AppState, status: StatusCode, msg: &str) -> Response<Body> {
    state.metrics.hls_response(status);
    let mut r = Response::new(Body::from(format!("{msg}\n")));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Errors must not stick in a CDN: the object may exist a moment later.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    cors(state, h);
    r
}

fn cors(state: &AppState, h: &mut HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(&state.cfg.hls.cors_origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Length, Content-Range, Age, Date"),
    );
}

/// Parsed LL-HLS delivery directives. Any other query parameter is ignored (a CDN strips them).
#[derive(Debug, Default, PartialEq)]
struct Directives {
    msn: Option<u64>,
    part: Option<u64>,
    skip: bool,
}

fn parse_directives(q: Option<&str>) -> Result<Directives, &'static str> {
    let mut d = Directives::default();
    let Some(q) = q else { return Ok(d) };
    if q.len() > 1024 {
        return Err("query string too long");
    }
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let num = |v: &str| -> Result<u64, &'static str> {
            if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err("_HLS_msn and _HLS_part must be non-negative integers");
            }
            v.parse::<u64>()
                .map_err(|_| "_HLS_msn and _HLS_part must be non-negative integers")
        };
        match k {
            "_HLS_msn" => d.msn = Some(num(v)?),
            "_HLS_part" => d.part = Some(num(v)?),
            "_HLS_skip" => match v {
                "YES" | "v2" => d.skip = true,
                "NO" | "" => {}
                _ => return Err("_HLS_skip must be YES or v2"),
            },
            _ => {}
        }
    }
    if d.part.is_some() && d.msn.is_none() {
        return Err("_HLS_part requires _HLS_msn");
    }
    Ok(d)
}

/// Fuzzing hook for the delivery-directive parser.
#[doc(hidden)]
pub fn parse_query_for_fuzz(q: &str) -> bool {
    parse_directives(Some(q)).is_ok()
}

/// The stream is not on this node and its origin is another node: the origin's answer.
async fn from_origin(
    state: &AppState,
    stream: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    if state.hls.get(stream).is_some() || state.registry.get(stream).is_some() {
        return None;
    }
    let c = &state.cluster;
    let origin = crate::cluster::hls_proxy::origin_for(c, stream, headers)?;
    // Long enough for the origin's longest blocking hold (3 target durations) and then some.
    let target_s = state.cfg.hls.segment_target_ms.div_ceil(1000);
    let hold = Duration::from_secs(3 * target_s + 5);
    let mut r = crate::cluster::hls_proxy::forward(c, &origin, method, uri, headers, hold).await;
    state.metrics.hls_response(r.status());
    if !r
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        cors(state, r.headers_mut());
    }
    Some(r)
}

pub async fn playlist(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path(stream): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let d = match parse_directives(query.as_deref()) {
        Ok(d) => d,
        Err(e) => return plain(&state, StatusCode::BAD_REQUEST, e),
    };
    if let Some(r) = from_origin(&state, &stream, &method, &uri, &headers).await {
        return r;
    }
    let Some(hs) = state.hls.get(&stream) else {
        return if state.registry.get(&stream).is_some() {
            unavailable(&state, "stream has not produced media yet")
        } else {
            plain(&state, StatusCode::NOT_FOUND, "no such stream")
        };
    };
    hs.saw_client(peer.ip(), std::time::Instant::now());
    let mut rx = hs.subscribe();
    let (hold, target) = {
        let w = hs.window.read();
        (
            Duration::from_secs(3 * w.target_duration()),
            w.target_duration(),
        )
    };
    let deadline = tokio::time::Instant::now() + hold;
    let _held = d.msn.map(|_| state.metrics.hold());
    let mut waited = false;
    loop {
        {
            let w = hs.window.read();
            if !w.has_media() {
                if !w.live {
                    return unavailable(&state, "stream is offline");
                }
            } else {
                // Live and idle streams hold a blocking request until its part exists (an idle
                // stream's publisher may return); only an ended one ignores the parameters.
                let ready = match d.msn {
                    None => Readiness::Ready,
                    Some(m) => w.readiness(m, d.part),
                };
                match ready {
                    Readiness::Ready | Readiness::Ended => {
                        let body = w.playlist(d.skip);
                        if waited {
                            // Time from the part landing in the window to this answer.
                            state.metrics.block_release(w.updated_at.elapsed());
                        }
                        drop(w);
                        state.metrics.hls_response(StatusCode::OK);
                        let mut r = Response::new(Body::from(body));
                        let h = r.headers_mut();
                        h.insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static(PLAYLIST_TYPE),
                        );
                        // A blocking response's URL names the state it waited for, so a CDN may
                        // keep the answer that holds it for longer. Anything else (the plain
                        // playlist, an ended stream's answer without the part) may change soon:
                        // never cached past the playlist TTL.
                        let cc = if d.msn.is_some() && ready == Readiness::Ready {
                            format!("public, max-age={}", 6 * target)
                        } else {
                            format!("public, max-age={}", state.cfg.hls.playlist_max_age_s)
                        };
                        h.insert(header::CACHE_CONTROL, HeaderValue::from_str(&cc).unwrap());
                        cors(&state, h);
                        return r;
                    }
                    Readiness::TooFar(why) => return plain(&state, StatusCode::BAD_REQUEST, why),
                    Readiness::Wait => {}
                }
            }
        }
        waited = true;
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return plain(&state, StatusCode::NOT_FOUND, "stream removed"),
            Err(_) => {
                let why = if hs.window.read().live {
                    "the requested part did not arrive in time"
                } else {
                    "the stream's publisher is away: the requested part did not arrive in time"
                };
                return unavailable(&state, why);
            }
        }
    }
}

fn unavailable(state: &AppState, msg: &str) -> Response<Body> {
    let mut r = plain(state, StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

pub async fn media(
    State(state): State<AppState>,
    Path((stream, gen, file)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    // Before the generation check: the origin's objects carry the origin's generation.
    if let Some(r) = from_origin(&state, &stream, &method, &uri, &headers).await {
        return r;
    }
    if gen != *state.hls.gen {
        return plain(&state, StatusCode::NOT_FOUND, "unknown generation");
    }
    let Some(obj) = Object::parse(&file) else {
        return plain(&state, StatusCode::NOT_FOUND, "no such object");
    };
    let Some(hs) = state.hls.get(&stream) else {
        return plain(&state, StatusCode::NOT_FOUND, "no such stream");
    };
    let mut rx = hs.subscribe();
    let hold = Duration::from_secs(3 * hs.window.read().target_duration());
    let deadline = tokio::time::Instant::now() + hold;
    let data = loop {
        let found = hs.window.read().lookup(obj);
        match found {
            Lookup::Found(b) => break b,
            Lookup::NotFound => return plain(&state, StatusCode::NOT_FOUND, "no such object"),
            Lookup::Pending => {}
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return plain(&state, StatusCode::NOT_FOUND, "stream removed"),
            Err(_) => return unavailable(&state, "object not ready in time"),
        }
    };
    state
        .metrics
        .hls_bytes
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    let ctype = match obj {
        Object::Init(_) => "video/mp4",
        _ => "video/iso.segment",
    };
    serve_bytes(&state, data, ctype, &headers)
}

/// Serve an immutable media object, honouring a single byte range.
fn serve_bytes(
    state: &AppState,
    data: bytes::Bytes,
    ctype: &'static str,
    headers: &HeaderMap,
) -> Response<Body> {
    let len = data.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, body, content_range) = match range {
        None | Some(RangeReq::Ignore) => (StatusCode::OK, data, None),
        Some(RangeReq::Unsatisfiable) => {
            let mut r = plain(
                state,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range not satisfiable",
            );
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).unwrap(),
            );
            return r;
        }
        Some(RangeReq::Range(a, b)) => (
            StatusCode::PARTIAL_CONTENT,
            data.slice(a as usize..=b as usize),
            Some(format!("bytes {a}-{b}/{len}")),
        ),
    };
    state.metrics.hls_response(status);
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(cr) = content_range {
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&cr).unwrap());
    }
    cors(state, h);
    r
}

#[derive(Debug, PartialEq)]
enum RangeReq {
    Range(u64, u64),
    Unsatisfiable,
    /// Malformed or multi-range: serve the whole object (allowed by RFC 9110).
    Ignore,
}

fn parse_range(v: &str, len: u64) -> RangeReq {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeReq::Ignore;
    };
    if spec.contains(',') {
        return RangeReq::Ignore;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeReq::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match parse(b) {
            Some(0) => RangeReq::Unsatisfiable,
            Some(n) if len > 0 => RangeReq::Range(len.saturating_sub(n), len - 1),
            Some(_) => RangeReq::Unsatisfiable,
            None => RangeReq::Ignore,
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeReq::Ignore;
            };
            let end = if b.is_empty() {
                Some(len.saturating_sub(1))
            } else {
                parse(b)
            };
            let Some(end) = end else {
                return RangeReq::Ignore;
            };
            if start >= len || end < start {
                RangeReq::Unsatisfiable
            } else {
                RangeReq::Range(start, end.min(len - 1))
            }
        }
        (true, true) => RangeReq::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives() {
        assert_eq!(parse_directives(None), Ok(Directives::default()));
        let d = parse_directives(Some("_HLS_msn=5&_HLS_part=2&_HLS_skip=YES")).unwrap();
        assert_eq!(
            d,
            Directives {
                msn: Some(5),
                part: Some(2),
                skip: true
            }
        );
        assert!(parse_directives(Some("_HLS_part=2")).is_err());
        assert!(parse_directives(Some("_HLS_msn=-1")).is_err());
        assert!(parse_directives(Some("_HLS_msn=18446744073709551616")).is_err());
        assert!(parse_directives(Some("_HLS_msn=18446744073709551615")).is_ok());
        assert!(parse_directives(Some("_HLS_msn=1x")).is_err());
        assert_eq!(
            parse_directives(Some("utm=1&x")).unwrap(),
            Directives::default()
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeReq::Range(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeReq::Range(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeReq::Range(90, 99));
        assert_eq!(parse_range("bytes=50-500", 100), RangeReq::Range(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeReq::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeReq::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeReq::Ignore);
    }
}
