//! The watch page: `GET /watch/{stream}` and its assets under `/web/`.
//!
//! The page's own HTML, JS and CSS (`web/src/`) are compiled into the binary. hls.js is third-party
//! code and is not committed: it is served from the npm package that `npm ci --prefix web`
//! installs (`{web.dir}/node_modules/hls.js/dist/hls.light.min.js`, pinned by
//! `web/package-lock.json`), so the page works on a network without internet access.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::routing::get;
use axum::Router;

use super::AppState;

const PAGE: &str = include_str!("../../web/src/watch.html");
const SCRIPT: &str = include_str!("../../web/src/watch.js");
const STYLE: &str = include_str!("../../web/src/watch.css");

/// Files of installed npm packages the page may load: URL name → path under `{web.dir}`.
/// hls.js's light build (389 KB against 624 KB for the full one): all the page plays is one
/// muxed media playlist (ours, or a CDN's copy of it) or a provider's multivariant playlist of
/// muxed renditions, so it needs none of what the full build adds (subtitles, alternate audio
/// renditions, DRM, CMCD, content steering, interstitials), and the page downloads and compiles
/// hls.js while its start races (docs/BENCHMARKS.md, watch page).
const VENDOR: &[(&str, &str)] = &[(
    "hls.light.min.js",
    "node_modules/hls.js/dist/hls.light.min.js",
)];

/// The page may talk to any HTTP(S) origin (a CDN, an external service, WHEP on this node) but
/// runs only its own scripts. hls.js starts its transmux worker from a blob: URL.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   media-src * blob: data:; connect-src *; worker-src 'self' blob:; \
                   base-uri 'none'; form-action 'none'; object-src 'none'";

/// `GET /watch/{stream}` and `GET /web/{file}`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/watch/{name}", get(page))
        .route("/web/{file}", get(asset))
}

fn respond(
    status: StatusCode,
    ctype: &'static str,
    cache: &'static str,
    body: Body,
) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn text(status: StatusCode, msg: String) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        "no-store",
        Body::from(msg + "\n"),
    )
}

/// `GET /watch/{stream}`: the page. It reads the stream name from its own URL and everything
/// else from `GET /api/v1/streams/{stream}/playback`, so one page serves every stream.
pub async fn page(Path(name): Path<String>) -> Response<Body> {
    if !crate::media::stream::valid_stream_name(&name) {
        return text(
            StatusCode::NOT_FOUND,
            format!("'{name}' is not a stream name"),
        );
    }
    let mut r = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        "no-cache",
        Body::from(PAGE),
    );
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    );
    // The first thing the page asks for: the browser fetches it while it loads the page's
    // script, a round trip before the script could. A header, not markup: the HTML stays the
    // same for every stream. (`valid_stream_name` allows only URL-safe characters.)
    if let Ok(v) = HeaderValue::from_str(&format!(
        "<../api/v1/streams/{name}/playback>; rel=preload; as=fetch; crossorigin"
    )) {
        r.headers_mut().insert(header::LINK, v);
    }
    r
}

/// `GET /web/{file}`: the page's script and style (built in), and hls.js from the installed npm
/// package.
pub async fn asset(State(state): State<AppState>, Path(file): Path<String>) -> Response<Body> {
    const JS: &str = "text/javascript; charset=utf-8";
    match file.as_str() {
        "watch.js" => return respond(StatusCode::OK, JS, "no-cache", Body::from(SCRIPT)),
        "watch.css" => {
            return respond(
                StatusCode::OK,
                "text/css; charset=utf-8",
                "no-cache",
                Body::from(STYLE),
            )
        }
        _ => {}
    }
    let Some((_, rel)) = VENDOR.iter().find(|(n, _)| *n == file) else {
        return text(StatusCode::NOT_FOUND, format!("no such file: /web/{file}"));
    };
    let path = state.cfg.web.dir.join(rel);
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    };
    match read {
        Ok(bytes) => respond(StatusCode::OK, JS, "public, max-age=300", Body::from(bytes)),
        Err(e) => {
            // The path and the error are for the operator's log; the public answer says what
            // to do without showing the server's layout or configuration.
            tracing::error!(side = "internal", file = %path.display(), error = %e,
                "watch page: {file} is not installed: run `npm ci --prefix web` in the \
                 directory that web.dir names");
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{file} is not installed on this server, so the watch page cannot play \
                     LL-HLS. The server's operator can install it with `npm ci --prefix web` \
                     in the deltacast directory; the server log names the file it looked for."
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            r
        }
    }
}
