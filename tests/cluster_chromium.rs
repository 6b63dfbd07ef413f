//! The watch page in a cluster, in headless Chromium (playwright-core, tests/web/driver.mjs through
//! `testkit::chromium`): a real `redis-server`, origin A and edges B and C as separate `deltacast`
//! processes on 127.0.0.2/3/4 with `[cluster]`, ffmpeg publishing RTMP to A.
//!
//! Covered: the page opened on edge B plays over WebRTC from B (B pulls the stream from A); B is
//! killed (SIGKILL) mid-stream and the page plays again over WebRTC from C, with no reload and no
//! LL-HLS in between (the gap is printed); an edge at its admission threshold answers the page's
//! WHEP POST with 307, Chromium follows it (CORS preflight on the other node), and the page plays
//! from the other node with its session URL on that node; the page's session on B ends while
//! every other node is full (A by the edges' pulls, C by a viewer the test holds, B's freed slot
//! retaken at once): the page tries A and C once each over WebRTC, both answer 503, and it ends
//! on B's LL-HLS with no reload and no further WebRTC attempt (the time is printed).
//!
//! Needs what tests/watch_chromium.rs and tests/cluster_e2e.rs need (`node`, Debian's `chromium`,
//! `npm ci --prefix web`, ffmpeg, redis-server); a missing tool fails the test, nothing is skipped.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::chromium::{web_dir, Browser};
use testkit::redis::Redis;
use testkit::webrtc::{offer, WhepClient};
use testkit::{request, require_tool, Ffmpeg, Server};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const C: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// The failover bound the page is designed for (docs/ARCHITECTURE.md, watch page): detection
/// ≤ 2 s (no RTP for 1 s, one stats tick, the playback document asked for ≤ 0.5 s) + reconnect
/// ≤ 1.5 s + up to one GOP (1 s here) when the new node has to start pulling.
const FAILOVER_BOUND: Duration = Duration::from_millis(4500);
/// What the assertion allows on this shared two-core machine (browser, three nodes, ffmpeg).
const FAILOVER_MARGIN: Duration = Duration::from_millis(3500);

/// Browser tests share two cores with three servers and ffmpeg: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node `id` on `ip` in the cluster of `redis`, serving the watch page; `sfu_extra` goes under
/// `[sfu]`, `cluster_extra` under `[cluster]`. A WebRTC attempt may take up to 8 s to its first
/// frame (default 2.5 s): a node's first viewer of a stream waits for the pull from the origin,
/// and this machine is shared.
fn node(
    label: &str,
    id: &str,
    ip: Ipv4Addr,
    redis: &Redis,
    sfu_extra: &str,
    cluster_extra: &str,
) -> Server {
    Server::start_on(
        label,
        ip,
        &format!(
            "[web]\ndir = {:?}\nwebrtc_timeout_ms = 8000\n\n{}",
            web_dir().display().to_string(),
            redis.node_toml(
                id,
                ip,
                sfu_extra,
                &format!("ttl_ms = 1500\n{cluster_extra}")
            )
        ),
    )
}

fn node_of<'a>(v: &'a Value, id: &str) -> Option<&'a Value> {
    v["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

fn stream_of<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["streams"].as_array()?.iter().find(|s| s["name"] == name)
}

/// Redis, three nodes (A origin, B and C edges; `b_sfu` under B's `[sfu]`), ffmpeg publishing
/// `show` to A, and every node seeing the others and the stream's origin.
struct Cluster {
    a: Server,
    b: Option<Server>,
    c: Server,
    _ff: Ffmpeg,
    _redis: Redis,
}

impl Cluster {
    fn start(label: &str, b_sfu: &str) -> Cluster {
        Cluster::start_with(label, b_sfu, ["", "", ""])
    }

    /// [`Cluster::start`] with `cluster[i]` under node A's, B's, C's `[cluster]`.
    fn start_with(label: &str, b_sfu: &str, cluster: [&str; 3]) -> Cluster {
        require_tool("ffmpeg");
        let redis = Redis::start(label);
        let a = node(&format!("{label}-a"), "a", A, &redis, "", cluster[0]);
        let b = node(&format!("{label}-b"), "b", B, &redis, b_sfu, cluster[1]);
        let c = node(&format!("{label}-c"), "c", C, &redis, "", cluster[2]);
        let ff = Ffmpeg::publish(label, &a.rtmp_url("show"));
        a.wait_state("show", "publishing", Duration::from_secs(20));
        for s in [&a, &b, &c] {
            s.wait_cluster(
                "three nodes and the origin of show",
                Duration::from_secs(20),
                |v| {
                    ["a", "b", "c"].iter().all(|id| node_of(v, id).is_some())
                        && stream_of(v, "show").is_some_and(|s| s["origin"] == "a")
                },
            );
        }
        Cluster {
            a,
            b: Some(b),
            c,
            _ff: ff,
            _redis: redis,
        }
    }

    fn b(&self) -> &Server {
        self.b.as_ref().expect("B is running")
    }
}

fn base(s: &Server) -> String {
    format!("http://{}", s.http)
}

/// The watch page opened on edge B, playing over WebRTC from B, marked so that a reload shows.
fn open_on_b(cl: &Cluster, label: &str) -> Browser {
    let mut br = Browser::launch(label);
    br.open(&format!("{}/watch/show?debug=1", base(cl.b())));
    br.expect(
        "__deltacast.path === 'webrtc' && __deltacast.framesDecoded > 30",
        Duration::from_secs(20),
        "playing over WebRTC from edge B",
    );
    assert_plays_webrtc_from(&mut br, cl.b(), "page on B");
    br.eval("window.__sameDocument = 42");
    br
}

/// The page plays over WebRTC (path, frames advancing) and the session is on `on`.
fn assert_plays_webrtc_from(b: &mut Browser, on: &Server, context: &str) {
    let f0 = b.eval("__deltacast.framesDecoded").as_f64().unwrap_or(0.0);
    std::thread::sleep(Duration::from_secs(1));
    let f1 = b.eval("__deltacast.framesDecoded").as_f64().unwrap_or(0.0);
    let st = b.state();
    assert_eq!(st["path"], "webrtc", "{context}: {st:#}");
    assert!(f1 - f0 >= 10.0, "{context}: frames {f0} → {f1}: {st:#}");
    let node = format!("{}/", base(on));
    for key in ["whepFinalUrl", "whepLocation"] {
        assert!(
            st[key].as_str().is_some_and(|u| u.starts_with(&node)),
            "{context}: {key} not on {node}: {st:#}"
        );
    }
}

#[test]
fn watch_page_on_an_edge_plays_from_it_and_fails_over_to_the_other_edge_when_it_dies() {
    let _g = serial();
    let mut cl = Cluster::start("clw-failover", "");
    let b_base = base(cl.b());

    // The playback document on B: B itself (idle, it wins ties), and the other nodes as
    // absolute alternates, least-loaded first.
    let pb = cl.b().get("/api/v1/streams/show/playback").json();
    assert_eq!(pb["state"], "live", "{pb}");
    assert_eq!(pb["webrtc"]["whep"], format!("{b_base}/whep/show"), "{pb}");
    let alts: Vec<String> = serde_json::from_value(pb["webrtc"]["alternates"].clone())
        .unwrap_or_else(|e| panic!("alternates: {e}: {pb}"));
    let mut want = vec![
        format!("{}/whep/show", base(&cl.a)),
        format!("{}/whep/show", base(&cl.c)),
    ];
    want.sort();
    let mut got = alts.clone();
    got.sort();
    assert_eq!(got, want, "{pb}");

    let mut br = open_on_b(&cl, "clw-failover");
    // B's API: the viewer, and the stream pulled from A.
    let v = cl.b().wait_cluster(
        "B with a viewer and a pull of show from A",
        Duration::from_secs(10),
        |v| {
            node_of(v, "b").is_some_and(|n| n["viewers"].as_u64() >= Some(1))
                && stream_of(v, "show").is_some_and(|s| {
                    s["origin"] == "a"
                        && s["edges"]
                            .as_array()
                            .is_some_and(|e| e.contains(&Value::from("b")))
                })
        },
    );
    eprintln!("B's view with the page playing: {}", v["streams"]);
    let st = cl.b().api_stream("show").expect("show on B");
    assert!(
        st["viewers"]["webrtc"].as_u64() >= Some(1),
        "B's stream shows the viewer: {st}"
    );
    // B has a viewer and A serves B's pull: C is now the least-loaded node, the document's
    // `whep` for new viewers (the page's session stays on B, which is in `alternates`).
    br.expect(
        &format!(
            "(w => [w.whep, ...w.alternates].filter(u => !u.startsWith('{b_base}/'))[0])\
             (__deltacast.playback.webrtc) === '{}/whep/show'",
            base(&cl.c)
        ),
        Duration::from_secs(10),
        "the page's document names C first after B",
    );
    let hls_before = br.requests("/hls/").len();

    // kill -9 the edge the page plays from.
    let t_page_kill = br.eval("performance.now()").as_f64().unwrap();
    let t_kill = Instant::now();
    drop(cl.b.take());
    br.expect(
        "__deltacast.reconnects >= 1 && __deltacast.path === 'webrtc' && __deltacast.framesDecoded > 15",
        FAILOVER_BOUND + FAILOVER_MARGIN + Duration::from_secs(5),
        "playing over WebRTC again after B was killed",
    );
    let back = t_kill.elapsed();
    let st = br.state();
    let recovered = st["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["ev"] == "webrtc-reconnected"))
        .map(|e| e["t"].as_f64().unwrap())
        .expect("a webrtc-reconnected event");
    let since_kill = Duration::from_millis((recovered - t_page_kill).max(0.0) as u64);
    let gap = st["reconnectGapMs"].as_f64().unwrap();
    let failed = st["events"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["ev"] == "webrtc-failed" && e["t"].as_f64() > Some(t_page_kill))
        })
        .cloned();
    let detected = failed
        .as_ref()
        .and_then(|e| e["t"].as_f64())
        .map_or(f64::NAN, |t| t - t_page_kill);
    let attach = st["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["ev"] == "webrtc-attach"))
        .map(|e| e["detail"].clone());
    eprintln!(
        "failover: first frame from C {since_kill:?} after the kill -9 (page clock; {back:?} by \
         the test's poll): detected after {detected:.0} ms ({}), picture gap {gap} ms (last \
         frame from B → first from C; the new session went on screen: {attach:?}); bound \
         {FAILOVER_BOUND:?}",
        failed
            .as_ref()
            .map_or(Value::Null, |e| e["detail"]["reason"].clone())
    );
    assert!(
        since_kill <= FAILOVER_BOUND + FAILOVER_MARGIN,
        "WebRTC back {since_kill:?} after the kill (bound {FAILOVER_BOUND:?} + margin): {st:#}"
    );
    assert_plays_webrtc_from(&mut br, &cl.c, "after the failover");
    assert_eq!(br.eval("window.__sameDocument"), 42, "no reload");
    assert_eq!(st["decision"]["path"], "webrtc", "{st:#}");
    assert_eq!(
        br.requests("/hls/").len(),
        hls_before,
        "no LL-HLS request during the failover"
    );
    assert!(
        br.eval("sessionStorage.getItem('deltacast.webrtc-failed')")
            .is_null(),
        "a failover that worked is not remembered as a WebRTC failure"
    );
    // The page keeps its playback document fresh from a live node (its own is dead).
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        br.requests("/api/v1/streams/show/playback")
            .iter()
            .any(|r| r.contains(&cl.c.http.to_string()) || r.contains(&cl.a.http.to_string())),
        "the document is asked of another node once B is gone"
    );
    assert_plays_webrtc_from(&mut br, &cl.c, "a while after the failover");
    br.screenshot("cluster-failover.png");
}

#[test]
fn an_edge_at_its_threshold_redirects_the_page_which_plays_from_the_other_node() {
    let _g = serial();
    // B takes one viewer.
    let cl = Cluster::start("clw-redirect", "max_viewers = 1\n");
    let (b_base, c_base) = (base(cl.b()), base(&cl.c));

    // One viewer fills B; it keeps playing in the background while the page opens.
    let mut v1 = WhepClient::connect(cl.b().http, "show")
        .unwrap_or_else(|r| panic!("WHEP on B: {} {}", r.status, r.text()));
    assert!(
        v1.run(Duration::from_secs(20), |x| x.frames.len() >= 10),
        "viewer on B got {} frames",
        v1.frames.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let keep = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            v1.run(Duration::from_secs(90), |_| stop.load(Ordering::Relaxed));
            v1
        })
    };
    cl.b().wait_cluster("B full", Duration::from_secs(10), |v| {
        node_of(v, "b").is_some_and(|n| n["room"] == false)
    });

    // What the browser relies on, at the HTTP level: B's 307 (CORS, Location exposed) and C's
    // preflight for a POST from B's origin.
    let r = request(
        cl.b().http,
        "POST",
        "/whep/show",
        &[("Content-Type", "application/sdp"), ("Origin", &b_base)],
        offer(false).sdp.as_bytes(),
    );
    assert_eq!(r.status, 307, "{} {:?}", r.text(), r.headers);
    assert_eq!(
        r.header("location"),
        Some(format!("{c_base}/whep/show?via=b").as_str()),
        "the least-loaded node with room (A serves B's pull)"
    );
    assert!(
        r.header("access-control-expose-headers")
            .is_some_and(|h| h.contains("Location")),
        "{:?}",
        r.headers
    );
    let pre = request(
        cl.c.http,
        "OPTIONS",
        "/whep/show?via=b",
        &[
            ("Origin", &b_base),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    );
    assert_eq!(pre.status, 204, "{:?}", pre.headers);
    assert!(pre.header("access-control-allow-origin").is_some());
    assert!(pre
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    assert!(pre
        .header("access-control-allow-headers")
        .is_some_and(|h| h.to_ascii_lowercase().contains("content-type")));
    // B's own document already sends new viewers elsewhere.
    let pb = cl.b().get("/api/v1/streams/show/playback").json();
    assert_ne!(pb["webrtc"]["whep"], format!("{b_base}/whep/show"), "{pb}");

    // The page opened on B with a document that still says B (fetched a moment before B filled
    // up): its POST to B is redirected, and it plays from C.
    let mut br = Browser::launch("clw-redirect");
    br.open_pinned(
        &format!("{b_base}/watch/show?debug=1"),
        &format!("{b_base}/whep/show"),
    );
    br.expect(
        "__deltacast.path === 'webrtc' && __deltacast.framesDecoded > 30",
        Duration::from_secs(20),
        "playing over WebRTC after the redirect",
    );
    assert!(
        br.requests("/whep/show")
            .iter()
            .any(|r| r.starts_with(&format!("POST {b_base}/whep/show"))),
        "the page POSTed to B"
    );
    let redirected = br.event_time("webrtc-redirected", &c_base);
    assert!(
        redirected.is_some(),
        "Chromium followed the 307 to C: {:#}",
        br.state()
    );
    assert_plays_webrtc_from(&mut br, &cl.c, "after the 307");
    // The session URL resolved against the final URL: a PATCH from the page (B's origin) reaches
    // the session on C.
    let patched = br.eval(
        "fetch(__deltacast.whepLocation, { method: 'PATCH', headers: { 'Content-Type': \
         'application/trickle-ice-sdpfrag', 'If-Match': '*' }, body: 'a=end-of-candidates\\r\\n' })\
         .then(r => r.status, e => String(e))",
    );
    assert_eq!(patched, 204, "PATCH of the session URL from the page");
    let v = cl.c.cluster();
    assert!(
        node_of(&v, "c").is_some_and(|n| n["viewers"].as_u64() >= Some(1)),
        "the page's viewer is on C: {v:#}"
    );
    br.screenshot("cluster-redirect.png");
    // And the DELETE the page sends when it stops a session (keepalive, so it also leaves with a
    // closing page) ends it on C.
    let deleted = br.eval(
        "fetch(__deltacast.whepLocation, { method: 'DELETE', keepalive: true })\
         .then(r => r.status, e => String(e))",
    );
    assert_eq!(deleted, 200, "DELETE of the session URL from the page");

    stop.store(true, Ordering::Relaxed);
    let v1 = keep.join().expect("the viewer on B");
    assert!(!v1.disconnected, "the viewer on B stayed");
}

/// What the page needs to end on LL-HLS once its WebRTC session is gone and every other node
/// refuses WebRTC: detection ≤ 2 s (no RTP for 1 s, one stats tick, the document asked for
/// ≤ 0.5 s), two refused WHEP POSTs (a new offer and a round trip each, well under 0.5 s), then a
/// cold LL-HLS start on the page's node (playlist, init, first part: ≤ 1.5 s).
const ALL_REFUSED_BOUND: Duration = Duration::from_millis(4500);

/// A WHEP viewer on `on` that the test keeps playing in the background until `stop`: it holds
/// one of the node's viewer slots. The POST is answered (201) before this returns.
fn hold_slot(on: &Server, stop: &Arc<AtomicBool>, what: &str) -> std::thread::JoinHandle<bool> {
    let mut v = WhepClient::connect(on.http, "show")
        .unwrap_or_else(|r| panic!("{what}: WHEP POST answered {} {}", r.status, r.text()));
    let stop = stop.clone();
    std::thread::spawn(move || {
        v.run(Duration::from_secs(120), |_| stop.load(Ordering::Relaxed));
        v.frames.len() >= 10 && !v.disconnected
    })
}

#[test]
fn every_alternate_refusing_webrtc_ends_the_page_on_ll_hls_without_a_reload() {
    let _g = serial();
    // A (origin) takes two viewer slots by its cluster capacity and C one: the pulls of B and C
    // fill A (a pull holds a slot of the node it pulls from, though placement never sends a
    // pull elsewhere), a viewer the test holds fills C. B takes one: the page.
    let cl = Cluster::start_with(
        "clw-allrefused",
        "",
        ["capacity = 2", "capacity = 1", "capacity = 1"],
    );
    let (a_base, b_base, c_base) = (base(&cl.a), base(cl.b()), base(&cl.c));
    let stop = Arc::new(AtomicBool::new(false));
    let on_c = hold_slot(&cl.c, &stop, "the viewer that fills C");
    cl.c.wait_cluster("C full and pulling from A", Duration::from_secs(15), |v| {
        node_of(v, "c").is_some_and(|n| n["room"] == false)
            && stream_of(v, "show").is_some_and(|s| {
                s["edges"]
                    .as_array()
                    .is_some_and(|e| e.contains(&Value::from("c")))
            })
    });

    // The page on B plays from B (B pulls from A, which fills A).
    let mut br = open_on_b(&cl, "clw-allrefused");
    for s in [&cl.a, cl.b(), &cl.c] {
        s.wait_cluster("every node full", Duration::from_secs(10), |v| {
            ["a", "b", "c"]
                .iter()
                .all(|id| node_of(v, id).is_some_and(|n| n["room"] == false))
        });
    }
    // The page's document names both other nodes as alternates (full ones too: they redirect).
    br.expect(
        &format!(
            "(w => ['{a_base}/whep/show', '{c_base}/whep/show']\
             .every(u => w.whep === u || w.alternates.includes(u)))(__deltacast.playback.webrtc)"
        ),
        Duration::from_secs(10),
        "A and C in the page's document",
    );
    let hls_before = br.requests("/hls/").len();
    let loc = br.eval("__deltacast.whepLocation");
    let path = loc
        .as_str()
        .and_then(|l| l.strip_prefix(&b_base))
        .unwrap_or_else(|| panic!("the page's session URL {loc} is on B"))
        .to_string();

    // B ends the page's session (an operator's DELETE) and another viewer takes its slot at
    // once, long before the page can notice (≥ 1 s without RTP): no node has room for the page.
    let t_page = br.eval("performance.now()").as_f64().unwrap();
    let t = Instant::now();
    let r = request(cl.b().http, "DELETE", &path, &[], b"");
    assert_eq!(r.status, 200, "DELETE {path}: {}", r.text());
    let on_b = hold_slot(cl.b(), &stop, "the viewer that takes the page's slot on B");
    let refilled = t.elapsed();

    br.expect(
        "__deltacast.path === 'hls' && __deltacast.state === 'live'",
        ALL_REFUSED_BOUND + FAILOVER_MARGIN + Duration::from_secs(5),
        "on LL-HLS after every node refused WebRTC",
    );
    let st = br.state();
    let events: Vec<Value> = st["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["t"].as_f64() >= Some(t_page))
        .cloned()
        .collect();
    let at = |ev: &str| {
        events
            .iter()
            .find(|e| e["ev"] == ev)
            .and_then(|e| e["t"].as_f64())
            .map(|t| Duration::from_millis((t - t_page).max(0.0) as u64))
    };
    let (detected, on_hls) = (at("webrtc-failed"), at("hls-first-frame"));
    let refused = events
        .iter()
        .rfind(|e| e["ev"] == "webrtc-failed")
        .and_then(|e| e["t"].as_f64())
        .map(|t| Duration::from_millis((t - t_page).max(0.0) as u64));
    let failovers: Vec<&Value> = events
        .iter()
        .filter(|e| e["ev"] == "webrtc-failover")
        .collect();
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["ev"] == "webrtc-failed")
        .map(|e| &e["detail"]["reason"])
        .collect();
    eprintln!(
        "all refused: first LL-HLS frame {on_hls:?} after the DELETE (page clock; slot on B \
         refilled {refilled:?} after it), the dead session detected after {detected:?}, the last \
         refusal after {refused:?}; attempts {:?}; failures {failed:?}; bound {ALL_REFUSED_BOUND:?}",
        failovers.iter().map(|e| &e["detail"]["to"]).collect::<Vec<_>>()
    );
    // The page tried each other node once over WebRTC, was refused by each, then fell back.
    let mut tried: Vec<String> = failovers
        .iter()
        .filter_map(|e| e["detail"]["to"].as_str().map(String::from))
        .collect();
    tried.sort();
    assert_eq!(
        tried,
        [format!("{a_base}/whep/show"), format!("{c_base}/whep/show")],
        "one WebRTC attempt on each other node: {st:#}"
    );
    assert_eq!(failed.len(), 3, "the dead session and two refusals: {st:#}");
    assert!(
        failed[1..]
            .iter()
            .all(|r| r.as_str().is_some_and(|r| r.contains("HTTP 503"))),
        "each attempt refused with 503 (A and C full): {st:#}"
    );
    let starts = events.iter().filter(|e| e["ev"] == "webrtc-start").count();
    assert_eq!(starts, 2, "two WebRTC attempts: {st:#}");
    assert_eq!(st["decision"]["path"], "hls", "{st:#}");
    let on_hls = on_hls.unwrap_or_else(|| panic!("an hls-first-frame event: {st:#}"));
    assert!(
        on_hls <= ALL_REFUSED_BOUND + FAILOVER_MARGIN,
        "LL-HLS {on_hls:?} after the DELETE (bound {ALL_REFUSED_BOUND:?} + margin): {st:#}"
    );
    br.assert_playing(
        Duration::from_millis(1500),
        0.8,
        "LL-HLS after every refusal",
    );
    assert_eq!(br.eval("window.__sameDocument"), 42, "no reload");
    // LL-HLS from the page's node B (which has the stream through its pull from A).
    let hls = br.requests("/hls/");
    assert!(hls.len() > hls_before, "LL-HLS requests");
    assert!(
        hls[hls_before..]
            .iter()
            .all(|r| r.contains(&format!("{b_base}/hls/"))),
        "LL-HLS from B: {:?}",
        &hls[hls_before..]
    );

    // Bounded: no more WebRTC attempts while it plays LL-HLS.
    let posts = br
        .requests("/whep/show")
        .iter()
        .filter(|r| r.starts_with("POST"))
        .count();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        br.eval("__deltacast.events.filter(e => e.ev === 'webrtc-start').length"),
        br.eval(&format!(
            "__deltacast.events.filter(e => e.ev === 'webrtc-start' && e.t < {t_page}).length + 2"
        )),
        "no WebRTC attempt after the fallback: {:#}",
        br.state()
    );
    let posts_after = br
        .requests("/whep/show")
        .iter()
        .filter(|r| r.starts_with("POST"))
        .count();
    assert_eq!(posts_after, posts, "no WHEP POST after the fallback");
    assert_eq!(br.eval("__deltacast.path"), "hls");
    br.assert_playing(Duration::from_millis(1500), 0.8, "LL-HLS a while later");
    br.screenshot("cluster-all-refused-hls.png");

    stop.store(true, Ordering::Relaxed);
    assert!(
        on_c.join().expect("the viewer on C"),
        "the viewer on C played"
    );
    assert!(
        on_b.join().expect("the viewer on B"),
        "the viewer on B played"
    );
}
