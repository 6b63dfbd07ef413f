//! The cluster end to end, with real parts: a real `redis-server` (no persistence) started by the
//! test, two `deltacast` processes each on its own 127.0.0.x address with `[cluster]` pointing
//! at it, ffmpeg publishing over RTMP, str0m WHEP viewers, nginx as a CDN.
//!
//! Covered: membership with load in `/api/v1/cluster`, a stream's origin, the 307 of a full node
//! (and its loop guard), 503 + Retry-After when every node is full, the playback document's
//! placement, Redis killed and restarted mid-stream (viewers keep playing, nodes re-register),
//! LL-HLS of a stream proxied by a node that is not its origin (directly and through the CDN).
//! Viewers on an edge of a stream published elsewhere need the edge pull (`ingest::whep_pull`).
//!
//! Three-node cases (origin A, edges B and C, each its own process and address): a viewer on an
//! edge plays what A receives and the registry lists the edge; viewers that follow the playback
//! API spread over the nodes by load; the origin killed with SIGKILL and the publisher reconnected
//! to an edge: that edge becomes the origin, the other edge re-pulls from it, its viewers keep
//! playing; with a mid-tier node M (`role = "mid"`), the edges pull from M and M alone from A
//! (A serves one pull), and M killed with SIGKILL: the edges re-pull from A, their viewers keep
//! playing; an edge at its threshold redirects to the other edge (whose pull the full origin still
//! admits), and a full cluster answers 503.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::nginx::Nginx;
use testkit::redis::Redis;
use testkit::webrtc::{offer, WhepClient};
use testkit::{request, resolve, Ffmpeg, Playlist, Server};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const C: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// A mid-tier node (`role = "mid"`).
const M: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// A node `id` on `ip` in the cluster of `redis`; `cluster_extra` goes under `[cluster]` (a
/// `ttl_ms`).
fn node_with(
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
        &redis.node_toml(id, ip, sfu_extra, cluster_extra),
    )
}

fn node(label: &str, id: &str, ip: Ipv4Addr, redis: &Redis, sfu_extra: &str) -> Server {
    node_with(label, id, ip, redis, sfu_extra, "ttl_ms = 1500\n")
}

fn node_of<'a>(v: &'a Value, id: &str) -> Option<&'a Value> {
    v["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

fn origin_of(v: &Value, stream: &str) -> Option<String> {
    v["streams"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == stream)
        .and_then(|s| s["origin"].as_str())
        .map(str::to_string)
}

fn publish(label: &str, s: &Server, key: &str) -> Ffmpeg {
    let ff = Ffmpeg::publish(label, &s.rtmp_url(key));
    s.wait_state(key, "publishing", Duration::from_secs(20));
    ff
}

fn post_offer(s: &Server, path: &str) -> testkit::Resp {
    request(
        s.http,
        "POST",
        path,
        &[("Content-Type", "application/sdp")],
        offer(false).sdp.as_bytes(),
    )
}

fn assert_503(r: &testkit::Resp, context: &str) {
    assert_eq!(r.status, 503, "{context}: {} {:?}", r.text(), r.headers);
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u32>().is_ok()),
        "{context}: 503 without Retry-After: {:?}",
        r.headers
    );
}

/// A viewer that plays: connected and `frames` video frames in.
fn viewer(s: &Server, stream: &str, frames: usize) -> WhepClient {
    let mut v = WhepClient::connect(s.http, stream)
        .unwrap_or_else(|r| panic!("WHEP on {}: {} {}", s.http, r.status, r.text()));
    assert!(
        v.run(Duration::from_secs(20), |x| x.frames.len() >= frames),
        "viewer on {} got {} frames",
        s.http,
        v.frames.len()
    );
    v
}

#[test]
fn a_single_node_describes_itself_alone() {
    let s = Server::start(
        "cluster-single",
        "[sfu]\nworkers = 1\nbind_ip = \"127.0.0.1\"\nport_base = 0\nice_tcp_port_base = 0\n",
    );
    let v = s.cluster();
    assert_eq!(v["cluster"], false, "{v}");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["public_http"], format!("http://{}", s.http));
    assert_eq!(nodes[0]["capacity"], 1500);
    assert!(
        nodes[0]["load"].is_number() && nodes[0]["viewers"] == 0,
        "{v}"
    );
    // Nothing of the cluster in a single node's metrics.
    assert!(!s.get("/metrics").text().contains("deltacast_cluster_"));
}

#[test]
fn nodes_register_with_their_load_and_a_published_stream_shows_its_origin() {
    let redis = Redis::start("members");
    let a = node("cl-members-a", "a", A, &redis, "");
    let b = node("cl-members-b", "b", B, &redis, "");
    let v = b.wait_cluster("both nodes registered", Duration::from_secs(15), |v| {
        node_of(v, "a").is_some() && node_of(v, "b").is_some()
    });
    assert_eq!(v["cluster"], true);
    assert_eq!(v["redis"], "up");
    for (id, s) in [("a", &a), ("b", &b)] {
        let n = node_of(&v, id).unwrap();
        assert_eq!(n["public_http"], format!("http://{}", s.http), "{n}");
        assert_eq!(n["capacity"], 1500, "{n}");
        assert_eq!(n["viewers"], 0, "{n}");
        assert!(
            n["load"].as_f64().is_some_and(|l| (0.0..1.0).contains(&l)),
            "{n}"
        );
        assert!(
            n["last_seen_ms"].as_u64().is_some_and(|ms| ms <= 1500),
            "{n}"
        );
        assert!(n["workers"].as_array().is_some_and(|w| w.len() == 1), "{n}");
        let cands = n["candidates"].as_array().unwrap();
        assert!(
            cands
                .iter()
                .any(|c| c.as_str().unwrap().starts_with(&s.http.ip().to_string())),
            "{n}"
        );
    }
    assert_eq!(b.metric("deltacast_cluster_nodes"), 2.0);
    assert_eq!(b.metric("deltacast_cluster_redis_up"), 1.0);

    let mut ff = publish("cl-members", &a, "show");
    let v = b.wait_cluster("origin of show", Duration::from_secs(10), |v| {
        origin_of(v, "show").is_some()
    });
    assert_eq!(origin_of(&v, "show").as_deref(), Some("a"), "{v}");
    // The playback document on B: the stream is live (on A); both nodes are idle, B keeps it.
    let pb = b.get("/api/v1/streams/show/playback").json();
    assert_eq!(pb["state"], "live", "{pb}");
    assert_eq!(
        pb["webrtc"]["whep"],
        format!("http://{}/whep/show", b.http),
        "{pb}"
    );

    // The stream ends: its origin key goes with it.
    ff.kill();
    b.wait_cluster(
        "show gone from the registry",
        Duration::from_secs(20),
        |v| origin_of(v, "show").is_none(),
    );
}

#[test]
fn a_full_node_redirects_to_the_least_loaded_and_a_full_cluster_answers_503() {
    let redis = Redis::start("full");
    let a = node("cl-full-a", "a", A, &redis, "max_viewers = 1\n");
    // B is full by its cluster capacity (below sfu.max_viewers), A by its viewer cap.
    let b = node_with(
        "cl-full-b",
        "b",
        B,
        &redis,
        "",
        "ttl_ms = 1500\ncapacity = 1\n",
    );
    let _fa = publish("cl-full-a", &a, "show");
    let _fb = publish("cl-full-b", &b, "other");
    a.wait_cluster("both streams and nodes", Duration::from_secs(15), |v| {
        origin_of(v, "show").is_some() && origin_of(v, "other").is_some()
    });

    // A takes one viewer; then it is full and B has room.
    let mut v1 = viewer(&a, "show", 10);
    a.wait_cluster("A full, B with room", Duration::from_secs(10), |v| {
        node_of(v, "a").is_some_and(|n| n["room"] == false)
            && node_of(v, "b").is_some_and(|n| n["room"] == true)
    });
    let r = post_offer(&a, "/whep/show");
    assert_eq!(r.status, 307, "{} {:?}", r.text(), r.headers);
    assert_eq!(
        r.header("location"),
        Some(format!("http://{}/whep/show?via=a", b.http).as_str())
    );
    assert!(
        r.header("access-control-allow-origin").is_some(),
        "{:?}",
        r.headers
    );
    assert!(
        r.header("access-control-expose-headers")
            .is_some_and(|h| h.contains("Location")),
        "{:?}",
        r.headers
    );
    // The playback document on A sends new viewers to B.
    let pb = a.get("/api/v1/streams/show/playback").json();
    assert_eq!(
        pb["webrtc"]["whep"],
        format!("http://{}/whep/show", b.http),
        "{pb}"
    );
    // Loop guard: a POST that A already redirected is not redirected by A again.
    assert_503(&post_offer(&a, "/whep/show?via=a"), "POST back to A");

    // B takes one viewer too: the whole cluster is full.
    let mut v2 = viewer(&b, "other", 10);
    a.wait_cluster("B full", Duration::from_secs(10), |v| {
        node_of(v, "b").is_some_and(|n| n["room"] == false)
    });
    for (node, path) in [(&a, "/whep/show"), (&b, "/whep/other")] {
        let r = post_offer(node, path);
        assert_503(&r, &format!("every node full, POST {path}"));
        // The refusal names the cluster, not only this node's viewer cap.
        assert!(
            r.text().contains("every node of the cluster is full"),
            "{}",
            r.text()
        );
    }
    let pb = a.get("/api/v1/streams/show/playback").json();
    assert_eq!(
        pb["webrtc"]["whep"],
        format!("http://{}/whep/show", a.http),
        "{pb}"
    );
    assert!(a.metric("deltacast_cluster_redirects_total") >= 1.0);
    assert!(a.metric("deltacast_cluster_full_refusals_total") >= 1.0);
    // The viewers that joined kept playing through all this.
    for (v, s) in [(&mut v1, &a), (&mut v2, &b)] {
        let n = v.frames.len();
        assert!(
            v.run(Duration::from_secs(10), |x| x.frames.len() >= n + 10),
            "viewer on {} stalled",
            s.http
        );
    }
}

#[test]
fn redis_restarted_mid_stream_drops_no_viewer_and_nodes_re_register() {
    let mut redis = Redis::start("restart");
    let a = node("cl-restart-a", "a", A, &redis, "");
    let b = node("cl-restart-b", "b", B, &redis, "");
    let _ff = publish("cl-restart", &a, "show");
    b.wait_cluster("registered", Duration::from_secs(15), |v| {
        node_of(v, "a").is_some() && origin_of(v, "show").as_deref() == Some("a")
    });
    let mut v = viewer(&a, "show", 10);

    redis.kill();
    // Keep the viewer going while A notices.
    let t0 = Instant::now();
    while a.metric("deltacast_cluster_redis_up") != 0.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "A never noticed Redis went away"
        );
        v.run(Duration::from_millis(300), |_| false);
    }
    let n = v.frames.len();
    assert!(
        v.run(Duration::from_secs(20), |x| x.frames.len() >= n + 60),
        "viewer stalled while Redis was down: {} → {} frames",
        n,
        v.frames.len()
    );
    assert!(
        a.log_text().contains("Redis unreachable"),
        "{}",
        a.log_tail(20)
    );
    let down = a.cluster();
    assert_eq!(down["redis"], "down", "{down}");
    assert_eq!(
        a.api_stream("show").map(|s| s["state"].clone()),
        Some(Value::from("publishing"))
    );

    redis.restart();
    // An empty Redis: both nodes and the origin are back within a few heartbeats.
    let t0 = Instant::now();
    loop {
        let c = b.cluster();
        if c["redis"] == "up"
            && node_of(&c, "a").is_some()
            && node_of(&c, "b").is_some()
            && origin_of(&c, "show").as_deref() == Some("a")
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not re-registered: {c:#}\n{}",
            redis.log_tail(10)
        );
        v.run(Duration::from_millis(300), |_| false);
    }
    println!(
        "re-registered {:.1} s after Redis came back",
        t0.elapsed().as_secs_f64()
    );
    assert!(a.log_text().contains("re-registered"), "{}", a.log_tail(20));
    let n = v.frames.len();
    assert!(
        v.run(Duration::from_secs(15), |x| x.frames.len() >= n + 30),
        "viewer stalled after Redis came back"
    );
    assert!(!v.disconnected, "the viewer was dropped");
}

#[test]
fn ll_hls_of_a_stream_is_proxied_by_any_node_to_its_origin() {
    let redis = Redis::start("hls");
    let a = node("cl-hls-a", "a", A, &redis, "");
    let b = node("cl-hls-b", "b", B, &redis, "");
    let _ff = publish("cl-hls", &a, "show");
    a.wait_segments("show", 1, Duration::from_secs(30));
    b.wait_cluster("origin of show", Duration::from_secs(10), |v| {
        origin_of(v, "show").as_deref() == Some("a")
    });

    // B answers the playlist and its objects from A.
    let pl = b.wait_segments("show", 1, Duration::from_secs(10));
    let r = b.get(&Server::playlist_path("show"));
    assert_eq!(r.status, 200, "{}", r.text());
    let direct = a.get(&Server::playlist_path("show"));
    for h in ["content-type", "cache-control"] {
        assert_eq!(r.header(h), direct.header(h), "{h}");
    }
    assert!(r.header("access-control-allow-origin").is_some());
    let seg = &pl.segments[0];
    let part = seg
        .parts
        .first()
        .map_or(seg.uri.as_str(), |p| p.uri.as_str());
    let path = resolve(&Server::playlist_path("show"), part);
    let via_b = b.get(&path);
    let via_a = a.get(&path);
    assert_eq!(via_b.status, 200, "{path}: {}", via_b.text());
    assert!(!via_b.body.is_empty());
    assert_eq!(via_b.body, via_a.body, "{path}: B's bytes differ from A's");
    assert_eq!(via_b.header("cache-control"), via_a.header("cache-control"));
    // A blocking reload goes through: the next part is waited for at the origin.
    let last = Playlist::parse(&r.text()).unwrap();
    let (msn, part_n) = match last.trailing_parts.len() {
        0 => (last.media_sequence + last.segments.len() as u64, 0),
        n => (last.media_sequence + last.segments.len() as u64, n as u64),
    };
    let t0 = Instant::now();
    let held = b.get_timeout(
        &format!(
            "{}?_HLS_msn={msn}&_HLS_part={part_n}",
            Server::playlist_path("show")
        ),
        Duration::from_secs(15),
    );
    assert_eq!(held.status, 200, "{}", held.text());
    println!("blocking reload through B answered in {:?}", t0.elapsed());
    assert!(
        held.text().contains(&format!("MSN={msn}")) || Playlist::parse(&held.text()).is_ok(),
        "{}",
        held.text()
    );
    // A request that already went through a node is not proxied again (no ping-pong).
    let r = request(
        b.http,
        "GET",
        &Server::playlist_path("show"),
        &[("Deltacast-Via", "a")],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // A CDN in front of B (the docs/CDN.md nginx block) gets the stream through B's proxy.
    let cdn = Nginx::cdn(b.http);
    let r = cdn.get(&Server::playlist_path("show"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = cdn.get(&path);
    assert_eq!(r.status, 200, "{path}");
    assert_eq!(r.body, via_a.body);
    assert!(b.metric("deltacast_cluster_hls_proxied_total") >= 4.0);
}

#[test]
fn a_node_stopped_with_sigterm_leaves_the_registry_at_once() {
    let redis = Redis::start("leave");
    // A long TTL: only B's deregistration can take it out of the view within the bound below.
    let a = node_with("cl-leave-a", "a", A, &redis, "", "ttl_ms = 30000\n");
    let b = node_with("cl-leave-b", "b", B, &redis, "", "ttl_ms = 30000\n");
    let _ff = publish("cl-leave", &b, "show");
    a.wait_cluster("B and its stream", Duration::from_secs(15), |v| {
        node_of(v, "b").is_some() && origin_of(v, "show").as_deref() == Some("b")
    });
    // SAFETY: kill(2) on the pid of the server this test started; it is still running.
    unsafe { libc::kill(b.pid() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    a.wait_cluster("B gone", Duration::from_secs(5), |v| {
        node_of(v, "b").is_none() && origin_of(v, "show").is_none()
    });
    println!("B left the view {:?} after SIGTERM", t0.elapsed());
    assert!(b.log_text().contains("cluster: left"), "{}", b.log_tail(10));
}

/// Three nodes of one cluster: A, B, C on their own addresses; `cluster_extra` for each.
fn three(label: &str, redis: &Redis, extra: [&str; 3]) -> [Server; 3] {
    let [ea, eb, ec] = extra;
    let [a, b, c] = [("a", A, ea), ("b", B, eb), ("c", C, ec)]
        .map(|(id, ip, e)| node_with(&format!("{label}-{id}"), id, ip, redis, "", e));
    for s in [&a, &b, &c] {
        s.wait_cluster("three nodes registered", Duration::from_secs(15), |v| {
            ["a", "b", "c"].iter().all(|id| node_of(v, id).is_some())
        });
    }
    [a, b, c]
}

fn edges_of(v: &Value, stream: &str) -> Vec<String> {
    v["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == stream))
        .and_then(|s| s["edges"].as_array())
        .map(|e| {
            e.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A viewer on `s` that plays: the first frame a keyframe, H.264 frames and Opus.
fn viewer_av(s: &Server, path_tail: &str) -> WhepClient {
    let mut v = WhepClient::connect(s.http, path_tail)
        .unwrap_or_else(|r| panic!("WHEP {path_tail} on {}: {} {}", s.http, r.status, r.text()));
    let ok = v.run(Duration::from_secs(20), |x| {
        x.frames.len() >= 10 && x.audio_frames >= 10
    });
    assert!(
        ok,
        "viewer on {}: {} frames ({} keyframes), {} Opus\n{}",
        s.http,
        v.frames.len(),
        v.keyframes(),
        v.audio_frames,
        s.log_tail(30)
    );
    assert!(
        v.frames[0].keyframe,
        "the first frame on {} is a keyframe",
        s.http
    );
    v
}

/// Keep viewers' ICE consent and media flowing for `d`.
fn drive(vs: &mut [WhepClient], d: Duration) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        for v in vs.iter_mut() {
            v.run(Duration::from_millis(20), |_| false);
        }
    }
}

/// Every node's view agrees with every node's own count of viewers (one heartbeat after a
/// change), the viewers kept flowing meanwhile.
fn wait_views_agree(nodes: &[&Server], vs: &mut [WhepClient]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let own: Vec<(String, Value)> = nodes
            .iter()
            .map(|s| {
                let v = s.cluster();
                let id = v["node_id"].as_str().unwrap().to_string();
                let n = node_of(&v, &id).unwrap()["viewers"].clone();
                (id, n)
            })
            .collect();
        let agree = nodes.iter().all(|s| {
            let v = s.cluster();
            own.iter()
                .all(|(id, n)| node_of(&v, id).is_some_and(|x| &x["viewers"] == n))
        });
        if agree {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "views never agreed on {own:?}: {:#}",
            nodes[0].cluster()
        );
        drive(vs, Duration::from_millis(100));
    }
}

#[test]
fn an_edge_viewer_plays_from_the_origin_and_viewers_spread_over_the_nodes_by_load() {
    let redis = Redis::start("spread");
    // A small capacity so that one viewer weighs more than the noise of the workers' busy share.
    let cap = "ttl_ms = 1500\ncapacity = 10\n";
    let [a, b, c] = three("cl-spread", &redis, [cap, cap, cap]);
    let _ff = publish("cl-spread", &a, "show");
    b.wait_cluster("origin of show", Duration::from_secs(10), |v| {
        origin_of(v, "show").as_deref() == Some("a")
    });

    // A viewer POSTing to edge B plays what A receives; the registry lists B as an edge.
    let mut vs = vec![viewer_av(&b, "show")];
    let v = c.wait_cluster("B among the edges", Duration::from_secs(10), |v| {
        edges_of(v, "show").contains(&"b".to_string())
    });
    assert_eq!(origin_of(&v, "show").as_deref(), Some("a"), "{v:#}");
    assert!(!edges_of(&v, "show").contains(&"a".to_string()), "{v:#}");
    assert_eq!(
        a.metric("deltacast_pull_active"),
        0.0,
        "the origin pulls nothing"
    );
    assert_eq!(b.metric("deltacast_pull_active"), 1.0);

    // Viewers that each ask a node's playback API (in turn) and follow it.
    let nodes = [&a, &b, &c];
    let by_url = |url: &str| {
        nodes
            .iter()
            .position(|s| url == format!("http://{}/whep/show", s.http))
            .unwrap_or_else(|| panic!("playback API gave {url}, not a node's /whep/show"))
    };
    let mut placed = [0usize; 3];
    let n = 9;
    for i in 0..n {
        wait_views_agree(&nodes, &mut vs);
        let pb = nodes[i % 3].get("/api/v1/streams/show/playback").json();
        assert_eq!(pb["state"], "live", "{pb}");
        let k = by_url(pb["webrtc"]["whep"].as_str().unwrap_or_default());
        placed[k] += 1;
        vs.push(viewer_av(nodes[k], "show"));
    }
    wait_views_agree(&nodes, &mut vs);
    let v = a.cluster();
    // Sessions per node: viewers, and on A the edges' pulls (a pull costs A one viewer's share).
    let load: Vec<u64> = ["a", "b", "c"]
        .iter()
        .map(|id| node_of(&v, id).unwrap()["viewers"].as_u64().unwrap())
        .collect();
    println!("placed {placed:?}; sessions per node (A with its pulls) {load:?}");
    let (max, min) = (load.iter().max().unwrap(), load.iter().min().unwrap());
    // 12 sessions on 3 nodes: 4 each when placement is exact; allow one of noise each way.
    assert!(
        max - min <= 2,
        "unbalanced: {load:?} (placed {placed:?}) {v:#}"
    );
    assert!(
        placed.iter().all(|&p| p >= 1),
        "a node got none: {placed:?}"
    );
    assert!(
        edges_of(&v, "show").contains(&"c".to_string()),
        "C pulls once it has viewers: {v:#}"
    );
    // Everyone still plays.
    for (i, x) in vs.iter_mut().enumerate() {
        let f = x.frames.len();
        assert!(
            x.run(Duration::from_secs(10), |s| s.frames.len() >= f + 10),
            "viewer {i} stalled"
        );
    }
}

#[test]
fn origin_killed_the_publisher_moves_to_an_edge_which_becomes_origin_and_viewers_keep_playing() {
    let redis = Redis::start("failover");
    let t = "ttl_ms = 1500\n";
    let [a, b, c] = three("cl-failover", &redis, [t, t, t]);
    let mut ff = publish("cl-failover", &a, "show");
    b.wait_cluster("origin of show", Duration::from_secs(10), |v| {
        origin_of(v, "show").as_deref() == Some("a")
    });
    let mut vb = viewer_av(&b, "show");
    let mut vc = viewer_av(&c, "show");
    a.wait_cluster("B and C pull", Duration::from_secs(10), |v| {
        let e = edges_of(v, "show");
        e.contains(&"b".to_string()) && e.contains(&"c".to_string())
    });
    let (fb, fc) = (vb.frames.len(), vc.frames.len());
    let (kb, kc) = (vb.keyframes(), vc.keyframes());

    // kill -9 the origin; the encoder loses its connection.
    // SAFETY: kill(2) on the pid of the server this test started; it is still running.
    unsafe { libc::kill(a.pid() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    ff.kill();

    // The publisher reconnects with the same key to B (one DNS name in front of the nodes), as
    // OBS does: ffmpeg is started again until B takes it (B refuses while its pull of the dead
    // origin has not noticed yet).
    let mut ff2: Option<Ffmpeg> = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        // B's stream is its own (no longer pulled) once B's pull of the dead origin sees the
        // publisher here and stops.
        if b.api_stream("show")
            .is_some_and(|s| s["state"] == "publishing" && s["source"] != "pull")
        {
            break;
        }
        if !ff2.as_mut().is_some_and(|f| f.is_running()) {
            ff2 = Some(Ffmpeg::publish("cl-failover-2", &b.rtmp_url("show")));
        }
        assert!(
            Instant::now() < deadline,
            "B never took the publisher: {:?}\n{}",
            b.api_stream("show"),
            b.log_tail(30)
        );
        for v in [&mut vb, &mut vc] {
            v.run(Duration::from_millis(100), |_| false);
        }
    }
    let published = killed.elapsed();
    let v = c.wait_cluster("B the origin, C its edge", Duration::from_secs(30), |v| {
        origin_of(v, "show").as_deref() == Some("b")
            && edges_of(v, "show").contains(&"c".to_string())
    });
    assert!(node_of(&v, "a").is_none(), "A left the view: {v:#}");
    // Both edges' viewers play again, without a new POST: a new keyframe, frames, Opus.
    let (ab, ac) = (vb.audio_frames, vc.audio_frames);
    let bound = Duration::from_secs(30);
    let deadline = killed + bound;
    let resumed = |s: &testkit::webrtc::Seen, f: usize, k: usize, au: usize| {
        s.keyframes() > k && s.frames.len() >= f + 30 && s.audio_frames >= au + 30
    };
    while !(resumed(&vb, fb, kb, ab) && resumed(&vc, fc, kc, ac)) {
        assert!(
            Instant::now() < deadline,
            "not resumed within {bound:?} of the kill: B's viewer {} frames (was {fb}), C's {} \
             (was {fc})\nB:\n{}\nC:\n{}",
            vb.frames.len(),
            vc.frames.len(),
            b.log_tail(30),
            c.log_tail(30)
        );
        for v in [&mut vb, &mut vc] {
            v.run(Duration::from_millis(50), |_| false);
        }
    }
    // The gap each viewer saw: the longest time without a video frame around the kill.
    let gap = |s: &testkit::webrtc::Seen, from: usize| {
        s.frames[from.saturating_sub(1)..]
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or_default()
    };
    println!(
        "origin failover: publisher on B {:.1} s after the kill; video gap at B's viewer {:.1} s, \
         at C's viewer {:.1} s",
        published.as_secs_f64(),
        gap(&vb, fb).as_secs_f64(),
        gap(&vc, fc).as_secs_f64()
    );
    assert!(!vb.disconnected && !vc.disconnected, "a viewer was dropped");
    assert!(b.metric("deltacast_pull_taken_over_total") >= 1.0);
    assert!(c.metric("deltacast_pull_restarts_total") >= 1.0);
    assert_eq!(c.metric("deltacast_pull_active"), 1.0);
    assert_eq!(
        b.metric("deltacast_pull_active"),
        0.0,
        "the new origin pulls nothing"
    );
}

#[test]
fn an_edge_at_its_threshold_redirects_to_the_other_edge_and_a_full_cluster_answers_503() {
    let redis = Redis::start("edge307");
    // A (the origin) takes one session: B's pull fills it, and C's pull is still admitted (a
    // pull is never placed elsewhere). B and C take one viewer each.
    let one = "ttl_ms = 1500\ncapacity = 1\n";
    let [a, b, c] = three("cl-edge307", &redis, [one, one, one]);
    let _ff = publish("cl-edge307", &a, "show");
    b.wait_cluster("origin of show", Duration::from_secs(10), |v| {
        origin_of(v, "show").as_deref() == Some("a")
    });
    let mut vs = vec![viewer_av(&b, "show")];
    let room = |v: &Value, id: &str| node_of(v, id).map(|n| n["room"].clone());
    for s in [&a, &b, &c] {
        s.wait_cluster("A and B full, C with room", Duration::from_secs(10), |v| {
            room(v, "a") == Some(Value::from(false))
                && room(v, "b") == Some(Value::from(false))
                && room(v, "c") == Some(Value::from(true))
        });
    }
    // B is at its threshold: 307 to C, the other edge.
    let r = post_offer(&b, "/whep/show");
    assert_eq!(r.status, 307, "{} {:?}", r.text(), r.headers);
    let loc = r.header("location").unwrap().to_string();
    let prefix = format!("http://{}/whep/", c.http);
    assert_eq!(loc, format!("{prefix}show?via=b"));
    // A viewer following the Location plays on C (which pulls from the full origin).
    vs.push(viewer_av(&c, loc.strip_prefix(&prefix).unwrap()));
    assert_eq!(c.metric("deltacast_pull_active"), 1.0);
    let v = a.wait_cluster("C full too", Duration::from_secs(10), |v| {
        room(v, "c") == Some(Value::from(false))
    });
    assert_eq!(
        node_of(&v, "a").unwrap()["viewers"],
        2,
        "A serves the two pulls: {v:#}"
    );
    // Every node full: 503 + Retry-After wherever the POST lands.
    for s in [&a, &b, &c] {
        assert_503(
            &post_offer(s, "/whep/show"),
            &format!("full cluster, POST to {}", s.http),
        );
    }
    for x in vs.iter_mut() {
        let f = x.frames.len();
        assert!(
            x.run(Duration::from_secs(10), |s| s.frames.len() >= f + 10),
            "a viewer stalled"
        );
    }
}

/// Each edge of `stream` → the node it pulls from (`upstreams` of the stream's view).
fn upstreams_of(v: &Value, stream: &str) -> std::collections::BTreeMap<String, String> {
    v["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == stream))
        .and_then(|s| s["upstreams"].as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, x)| Some((k.clone(), x.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn tiers(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn edges_pull_through_the_mid_tier_the_origin_serves_one_pull_and_a_dead_mid_falls_back() {
    let redis = Redis::start("midtier");
    let t = "ttl_ms = 1500\n";
    let [a, b, c] = three("cl-mid", &redis, [t, t, t]);
    let m = node_with(
        "cl-mid-m",
        "m",
        M,
        &redis,
        "",
        "ttl_ms = 1500\nrole = \"mid\"\n",
    );
    for s in [&a, &b, &c, &m] {
        s.wait_cluster("the mid registered", Duration::from_secs(15), |v| {
            node_of(v, "m").is_some_and(|n| n["role"] == "mid")
                && node_of(v, "b").is_some_and(|n| n["role"] == "edge")
        });
    }
    let _ff = publish("cl-mid", &a, "show");
    for s in [&b, &c, &m] {
        s.wait_cluster("origin of show", Duration::from_secs(10), |v| {
            origin_of(v, "show").as_deref() == Some("a")
        });
    }

    // Viewers on edges B and C play; B and C pull from M, M from A.
    let mut vb = viewer_av(&b, "show");
    let mut vc = viewer_av(&c, "show");
    let want = tiers(&[("b", "m"), ("c", "m"), ("m", "a")]);
    let v = a.wait_cluster("A → M → B, C", Duration::from_secs(15), |v| {
        upstreams_of(v, "show") == want
    });
    assert_eq!(origin_of(&v, "show").as_deref(), Some("a"), "{v:#}");
    assert_eq!(
        a.metric("deltacast_pull_active"),
        0.0,
        "the origin pulls nothing"
    );
    for s in [&m, &b, &c] {
        assert_eq!(s.metric("deltacast_pull_active"), 1.0, "{}", s.http);
    }
    // The origin serves exactly one session: M's pull (B's and C's go to M).
    let a_now = a.cluster();
    assert_eq!(node_of(&a_now, "a").unwrap()["viewers"], 1, "{a_now:#}");
    let m_now = m.cluster();
    assert_eq!(node_of(&m_now, "m").unwrap()["viewers"], 2, "{m_now:#}");
    let (fb, fc) = (vb.frames.len(), vc.frames.len());
    let (kb, kc) = (vb.keyframes(), vc.keyframes());
    let (ab, ac) = (vb.audio_frames, vc.audio_frames);

    // kill -9 the mid: the edges' pulls lose their upstream, re-resolve, and (no mid left)
    // re-pull from the origin; their viewers keep playing without a new POST.
    // SAFETY: kill(2) on the pid of the server this test started; it is still running.
    unsafe { libc::kill(m.pid() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let bound = Duration::from_secs(30);
    let resumed = |s: &testkit::webrtc::Seen, f: usize, k: usize, au: usize| {
        s.keyframes() > k && s.frames.len() >= f + 30 && s.audio_frames >= au + 30
    };
    while !(resumed(&vb, fb, kb, ab) && resumed(&vc, fc, kc, ac)) {
        assert!(
            killed.elapsed() < bound,
            "not resumed within {bound:?} of the mid's kill: B's viewer {} frames (was {fb}), \
             C's {} (was {fc})\nB:\n{}\nC:\n{}",
            vb.frames.len(),
            vc.frames.len(),
            b.log_tail(30),
            c.log_tail(30)
        );
        for x in [&mut vb, &mut vc] {
            x.run(Duration::from_millis(50), |_| false);
        }
    }
    println!(
        "mid killed: both edges' viewers resumed {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    assert!(!vb.disconnected && !vc.disconnected, "a viewer was dropped");
    let want = tiers(&[("b", "a"), ("c", "a")]);
    let v = a.wait_cluster("A → B, C", Duration::from_secs(15), |v| {
        upstreams_of(v, "show") == want
    });
    assert!(node_of(&v, "m").is_none(), "M left the view: {v:#}");
    assert!(b.metric("deltacast_pull_restarts_total") >= 1.0);
}
