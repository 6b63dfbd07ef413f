//! The stable per-stream LL-HLS URL: any node answers `/hls/{stream}/…` of a stream whose origin
//! is another node by proxying the request to that origin.
//!
//! Proxy, not redirect: CloudFront (and most CDNs) do not follow an origin's redirects, so a CDN
//! pointed at the cluster's one DNS name must get the object itself from whichever node it asks.
//! The path and query go through unchanged (`_HLS_msn`/`_HLS_part`/`_HLS_skip`: a blocking reload
//! blocks at the origin), and so do the origin's `Cache-Control`, `ETag`, `Content-Range` and
//! CORS headers, so what a CDN caches is what the origin said. Bounded everywhere: connect
//! timeout, a wait for the answer that covers the origin's longest blocking hold, a body size cap
//! and a body deadline. A proxied request carries `Deltacast-Via`, and a node never proxies a
//! request that carries it: two nodes whose views disagree cannot bounce a request between them.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};

use super::{Cluster, VIA_HEADER};

/// Largest object proxied (a segment of a high-bitrate stream fits many times over).
const MAX_BODY: usize = 32 << 20;
/// A proxied body must arrive in full within this time of its head.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Request headers passed on to the origin.
const FORWARD: [HeaderName; 4] = [
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::USER_AGENT,
];

/// Response headers not passed back (hop-by-hop; the length is set from the body).
fn hop_by_hop(h: &HeaderName) -> bool {
    matches!(
        h.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "content-length"
    )
}

/// The origin to proxy `stream` to, if this request should be proxied at all: the cluster is on,
/// the request did not come from another node, and the registry names an origin that is not
/// this node.
pub fn origin_for(c: &Cluster, stream: &str, headers: &HeaderMap) -> Option<String> {
    if !c.enabled || headers.contains_key(VIA_HEADER) {
        return None;
    }
    let o = c.origin_of(stream)?;
    (o.id != c.node_id && !o.public_http.is_empty()).then_some(o.public_http)
}

/// Forward the request to `origin` (`http://host:port`) and answer with what it said. `hold`
/// bounds the wait for the answer's head (a blocking playlist request is held at the origin).
pub async fn forward(
    c: &Cluster,
    origin: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    hold: Duration,
) -> Response<Body> {
    use std::sync::atomic::Ordering;
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let target = format!("{origin}{pq}");
    let res = async {
        let mut req = axum::http::Request::builder()
            .method(if method == Method::HEAD {
                Method::HEAD
            } else {
                Method::GET
            })
            .uri(&target)
            .header(VIA_HEADER, c.node_id.as_str());
        for h in &FORWARD {
            if let Some(v) = headers.get(h) {
                req = req.header(h, v);
            }
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(hold, c.http.request(req))
            .await
            .map_err(|_| format!("no answer within {hold:?}"))?
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let bytes = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect())
            .await
            .map_err(|_| "body not received in time".to_string())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((parts, bytes))
    }
    .await;
    match res {
        Ok((parts, bytes)) => {
            c.stats.hls_proxied.fetch_add(1, Ordering::Relaxed);
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = parts.status;
            for (k, v) in parts.headers.iter() {
                if !hop_by_hop(k) {
                    r.headers_mut().append(k.clone(), v.clone());
                }
            }
            r
        }
        Err(e) => {
            c.stats.hls_proxy_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%target, "cluster: LL-HLS proxy to the origin failed: {e}");
            let mut r = Response::new(Body::from(format!(
                "the stream's origin node did not answer: {e}\n"
            )));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
    }
}
