//! Janus's streaming plugin as a WebRTC target, for the side-by-side benchmark
//! (loadtest/bench-janus.sh): the same viewers as over WHEP, joined through Janus's HTTP API
//! instead. Janus offers first, so a viewer here answers: create a session, attach
//! `janus.plugin.streaming`, `watch` the mountpoint, take the offer from the session's event
//! long-poll, and `start` with the answer. After that the viewer is counted exactly as a WHEP
//! viewer is ([`crate::webrtc`]).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::http::http_send_from;

/// A Janus HTTP API endpoint and the mountpoint to watch.
#[derive(Clone, Debug)]
pub struct Target {
    /// The API's base path, e.g. `/janus`.
    pub path: String,
    pub mountpoint: u64,
}

/// A watch request answered with Janus's SDP offer; `start` sends the answer.
pub struct Watch {
    session: String,
    handle: String,
    pub offer: String,
}

fn call(
    from: Option<IpAddr>,
    http: SocketAddr,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, String> {
    let r = http_send_from(
        from,
        http,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
        timeout,
    )
    .map_err(|e| format!("janus {path}: {e}"))?;
    if r.status != 200 {
        return Err(format!("janus {path}: HTTP {}", r.status));
    }
    let v = r.json();
    match v["janus"].as_str() {
        Some("success") | Some("ack") => Ok(v),
        _ => Err(format!("janus {path}: {}", v["error"])),
    }
}

fn tx() -> String {
    format!("{:x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Create a session and a streaming-plugin handle, ask to watch, and wait for the offer.
pub fn watch(
    t: &Target,
    from: Option<IpAddr>,
    http: SocketAddr,
    timeout: Duration,
) -> Result<Watch, String> {
    let deadline = Instant::now() + timeout;
    let s = call(
        from,
        http,
        &t.path,
        &json!({"janus": "create", "transaction": tx()}),
        timeout,
    )?;
    let session = s["data"]["id"]
        .as_u64()
        .ok_or("janus create: no session id")?
        .to_string();
    let spath = format!("{}/{session}", t.path);
    let h = call(
        from,
        http,
        &spath,
        &json!({"janus": "attach", "plugin": "janus.plugin.streaming", "transaction": tx()}),
        timeout,
    )?;
    let handle = h["data"]["id"]
        .as_u64()
        .ok_or("janus attach: no handle id")?
        .to_string();
    call(
        from,
        http,
        &format!("{spath}/{handle}"),
        &json!({"janus": "message", "body": {"request": "watch", "id": t.mountpoint}, "transaction": tx()}),
        timeout,
    )?;
    // The offer comes as an event on the session's long-poll.
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = http_send_from(
            from,
            http,
            "GET",
            &format!("{spath}?maxev=1"),
            &[],
            b"",
            left,
        )
        .map_err(|e| format!("janus poll: {e}"))?;
        let v = r.json();
        if let Some(err) = v["plugindata"]["data"]["error"].as_str() {
            return Err(format!("janus watch: {err}"));
        }
        if let Some(sdp) = v["jsep"]["sdp"].as_str() {
            return Ok(Watch {
                session,
                handle,
                offer: sdp.to_string(),
            });
        }
    }
    Err("janus watch: no offer in time".into())
}

impl Watch {
    /// Send the viewer's answer and start the stream.
    pub fn start(
        &self,
        t: &Target,
        from: Option<IpAddr>,
        http: SocketAddr,
        answer: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        call(
            from,
            http,
            &format!("{}/{}/{}", t.path, self.session, self.handle),
            &json!({"janus": "message", "body": {"request": "start"},
                    "jsep": {"type": "answer", "sdp": answer}, "transaction": tx()}),
            timeout,
        )
        .map(|_| ())
    }
}
