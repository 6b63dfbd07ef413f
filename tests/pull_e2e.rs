//! Edge pull end to end (issue 11): two real `deltacast` processes on 127.0.0.1. A (the
//! origin) gets ffmpeg's RTMP; B has `[[streams]] pull` pointing at A's WHEP URL. B's WHEP
//! viewers receive H.264 keyframes and Opus through one session on A; a viewer's keyframe
//! request on B reaches A; B's LL-HLS packager sees a local stream; B stops pulling `linger`
//! after its last viewer; two nodes pulling from each other get 508 with no runaway; and a
//! viewer on B keeps playing, without reconnecting, across a kill -9 and restart of A; tiers
//! (origin → mid → edge) hold one session per hop; a PLI from an edge viewer reaches a WHIP
//! publisher on the origin.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use str0m::media::KeyframeRequestKind;
use testkit::webrtc::{make_media, mid_of, WhepClient, WhipPublisher};
use testkit::{free_port, request, Ffmpeg, Server};

const SFU: &str =
    "[sfu]\nworkers = 1\nbind_ip = \"127.0.0.1\"\nport_base = 0\nice_tcp_port_base = 0\nidle_timeout_ms = 10000\n";

fn origin_toml() -> String {
    format!("{SFU}\n[[streams]]\nname = \"show\"\nkeys = [\"showkey\"]\n")
}

fn edge_toml(origin: SocketAddr, linger_ms: u64) -> String {
    format!(
        "{SFU}\n[pull]\nlinger_ms = {linger_ms}\n\n\
         [[streams]]\nname = \"show\"\npull = \"http://{origin}/whep/show\"\n"
    )
}

/// An origin with ffmpeg publishing "show" and a first segment closed.
fn origin(label: &str) -> (Server, Ffmpeg) {
    let a = Server::start(&format!("pull-{label}-origin"), &origin_toml());
    let ff = Ffmpeg::publish(&format!("pull-{label}"), &a.rtmp_url("showkey"));
    a.wait_state("show", "publishing", Duration::from_secs(15));
    a.wait_segments("show", 1, Duration::from_secs(20));
    (a, ff)
}

/// A WHEP viewer of "show" on `http` that got a keyframe and Opus.
fn viewer(http: SocketAddr, what: &str) -> WhepClient {
    let mut v = WhepClient::connect(http, "show")
        .unwrap_or_else(|r| panic!("{what}: POST /whep/show: {} {}", r.status, r.text()));
    let ok = v.run(Duration::from_secs(15), |s| {
        s.first_keyframe().is_some() && s.audio_frames >= 10
    });
    assert!(
        ok,
        "{what}: no keyframe + Opus: frames {} keyframes {} audio {} connected {:?}",
        v.frames.len(),
        v.keyframes(),
        v.audio_frames,
        v.connected_at
    );
    v
}

/// Send a PLI from viewer `v` (as a browser does after a loss).
fn send_pli(v: &mut WhepClient) {
    let mid = mid_of(&v.answer, "video").expect("video mid");
    v.peer
        .rtc
        .writer(mid)
        .expect("video writer")
        .request_keyframe(None, KeyframeRequestKind::Pli)
        .expect("PLI");
}

fn webrtc_viewers(s: &Server) -> u64 {
    s.api_stream("show")
        .and_then(|j| j["viewers"]["webrtc"].as_u64())
        .unwrap_or(0)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Keep viewers' ICE consent and media flowing while the test waits.
fn drive(vs: &mut [WhepClient], for_: Duration) {
    let deadline = Instant::now() + for_;
    while Instant::now() < deadline {
        for v in vs.iter_mut() {
            v.run(Duration::from_millis(50), |_| false);
        }
    }
}

#[test]
fn edge_viewers_share_one_upstream_session_keyframes_and_hls() {
    let (a, _ff) = origin("share");
    let b = Server::start("pull-share-edge", &edge_toml(a.http, 10_000));

    // Three viewers on B: each gets H.264 (a keyframe first) and Opus.
    let mut vs = Vec::new();
    for i in 0..3 {
        let v = viewer(b.http, &format!("edge viewer {i}"));
        assert!(
            v.frames[0].keyframe,
            "viewer {i}: the first frame is a keyframe"
        );
        vs.push(v);
        drive(&mut vs, Duration::from_millis(200));
    }
    drive(&mut vs, Duration::from_secs(1));
    assert_eq!(webrtc_viewers(&b), 3, "B serves the three viewers");
    assert_eq!(
        webrtc_viewers(&a),
        1,
        "A sees one session (the pull) for three viewers on B"
    );
    let sj = b.api_stream("show").expect("B knows the stream");
    assert_eq!(sj["source"], "pull", "B's API names the pull: {sj}");
    assert_eq!(sj["state"], "publishing", "{sj}");
    assert_eq!(b.metric("deltacast_pull_active"), 1.0);
    assert!(b.metric("deltacast_pull_bytes_total") > 10_000.0);

    // A keyframe request from a viewer on B reaches A as the pull's request, which A passes to
    // its publisher instead of replaying its GOP cache into B (that would repeat frames on B
    // and move B's video clock against audio); B answers its viewer from its own cache.
    let answers_a = a.metric("deltacast_sfu_keyframe_answers_total");
    let before_a = a.metric("deltacast_sfu_keyframes_relayed_total");
    let before_keys = vs[0].keyframes();
    send_pli(&mut vs[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reached = false;
    while Instant::now() < deadline && !reached {
        drive(&mut vs, Duration::from_millis(200));
        reached = a.metric("deltacast_sfu_keyframes_relayed_total") > before_a;
    }
    assert!(
        reached,
        "B's viewer PLI did not reach A (relayed stayed at {before_a})\nB:\n{}",
        b.log_tail(30)
    );
    assert_eq!(
        a.metric("deltacast_sfu_keyframe_answers_total"),
        answers_a,
        "A never replays its GOP cache to a pull"
    );
    assert!(
        vs[0].run(Duration::from_secs(5), |s| s.keyframes() > before_keys),
        "a keyframe follows the PLI on B"
    );

    // B's LL-HLS packager sees an ordinary local stream.
    let pl = b.wait_segments("show", 1, Duration::from_secs(20));
    let seg = pl.segments.last().expect("a segment");
    let probe = b.probe_segment("show", &pl, seg);
    let text = probe.to_string();
    assert!(text.contains("h264"), "B's segment has H.264: {text}");
    assert!(text.contains("\"audio\""), "B's segment has audio: {text}");
    drive(&mut vs, Duration::from_millis(200));
    assert_eq!(webrtc_viewers(&a), 1, "still one session on A");
}

#[test]
fn tiers_origin_mid_edge_each_hold_one_session_upstream() {
    let (a, _ff) = origin("tiers");
    let m = Server::start("pull-tiers-mid", &edge_toml(a.http, 10_000));
    let e = Server::start("pull-tiers-edge", &edge_toml(m.http, 10_000));
    let mut vs = vec![viewer(e.http, "edge viewer 0")];
    vs.push(viewer(e.http, "edge viewer 1"));
    drive(&mut vs, Duration::from_secs(1));
    assert_eq!(webrtc_viewers(&e), 2);
    assert_eq!(
        webrtc_viewers(&m),
        1,
        "the mid tier serves the edge's pull only"
    );
    assert_eq!(
        webrtc_viewers(&a),
        1,
        "the origin serves the mid tier's pull only"
    );
    // The mid tier's pull carries the path: the edge's node id, then its own.
    let log = m.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("pull starting"))
        .expect("the mid tier logs its pull");
    let (ep, mp) = (e.http.port(), m.http.port());
    let (ie, im) = (line.find(&format!(":{ep},")), line.find(&format!(":{mp}")));
    assert!(
        ie.is_some() && im.is_some() && ie < im,
        "via of the mid tier's pull names the edge, then the mid tier: {line}"
    );
}

#[test]
fn edge_stops_after_linger_and_loops_get_508() {
    let (a, _ff) = origin("linger");
    let b = Server::start("pull-linger-edge", &edge_toml(a.http, 1_500));
    let mut v = viewer(b.http, "edge viewer");
    assert_eq!(webrtc_viewers(&a), 1, "the pull is A's viewer");
    let r = request(b.http, "DELETE", &v.location.clone(), &[], b"");
    assert_eq!(r.status, 200, "DELETE of B's viewer");
    v.run(Duration::from_millis(100), |_| false);
    assert!(
        wait_until(Duration::from_secs(15), || webrtc_viewers(&a) == 0),
        "A still has the pull's session after B's linger:\n{}",
        b.log_tail(30)
    );
    assert!(wait_until(Duration::from_secs(5), || b
        .metric("deltacast_pull_active")
        == 0.0));
    // A new viewer pulls again.
    let _v = viewer(b.http, "edge viewer after the linger");
    assert_eq!(webrtc_viewers(&a), 1);

    // C and D pull "loop" from each other: 508, and both settle with nothing running.
    let (pc, pd) = (free_port(), free_port());
    let ac: SocketAddr = format!("127.0.0.1:{pc}").parse().unwrap();
    let ad: SocketAddr = format!("127.0.0.1:{pd}").parse().unwrap();
    let loop_toml = |other: SocketAddr| {
        format!("{SFU}\n[[streams]]\nname = \"loop\"\npull = \"http://{other}/whep/loop\"\n")
    };
    let c = Server::start_at("pull-loop-c", ac, &loop_toml(ad));
    let d = Server::start_at("pull-loop-d", ad, &loop_toml(ac));
    let o = testkit::webrtc::offer(false);
    let t0 = Instant::now();
    let r = request(
        c.http,
        "POST",
        "/whep/loop",
        &[("Content-Type", "application/sdp")],
        o.sdp.as_bytes(),
    );
    assert_eq!(r.status, 508, "a pull loop: {} {}", r.status, r.text());
    assert!(t0.elapsed() < Duration::from_secs(10), "refused at once");
    std::thread::sleep(Duration::from_secs(1));
    for (n, s) in [("C", &c), ("D", &d)] {
        assert_eq!(s.metric("deltacast_pull_active"), 0.0, "{n}: no pull left");
        assert!(
            s.metric("deltacast_pull_started_total") <= 1.0,
            "{n}: no runaway pulls"
        );
    }
    // A request that already went through this node is refused by the header alone.
    let r = request(
        a.http,
        "POST",
        "/whep/show",
        &[
            ("Content-Type", "application/sdp"),
            ("Deltacast-Via", "x,y,z,w,v"),
        ],
        o.sdp.as_bytes(),
    );
    assert_eq!(r.status, 508, "five hops: {}", r.text());
}

#[test]
fn edge_viewer_keeps_playing_across_an_origin_kill9_and_restart() {
    let (mut a, mut ff) = origin("failover");
    let b = Server::start("pull-failover-edge", &edge_toml(a.http, 10_000));
    let mut v = viewer(b.http, "edge viewer");
    v.run(Duration::from_secs(2), |_| false);
    ff.kill();
    a.kill9_and_restart();
    let (frames, keys, audio) = (v.frames.len(), v.keyframes(), v.audio_frames);
    let _ff2 = Ffmpeg::publish("pull-failover-2", &a.rtmp_url("showkey"));
    let ok = v.run(Duration::from_secs(45), |s| {
        s.keyframes() > keys && s.frames.len() > frames + 30 && s.audio_frames > audio + 50
    });
    assert!(
        ok,
        "B's viewer got no media after A came back: frames {} (was {frames}), keyframes {} \
         (was {keys}), audio {} (was {audio}), disconnected {}\nB:\n{}",
        v.frames.len(),
        v.keyframes(),
        v.audio_frames,
        v.disconnected,
        b.log_tail(40)
    );
    assert!(!v.disconnected, "the viewer never reconnected");
    assert!(b.metric("deltacast_pull_restarts_total") >= 1.0);
    assert_eq!(webrtc_viewers(&a), 1, "one pull session on the restarted A");
}

#[test]
fn edge_viewer_keyframe_request_reaches_a_whip_publisher_on_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let (video, audio) = make_media(dir.path(), 4);
    let a = Server::start("pull-pli-origin", &origin_toml());
    let publisher = WhipPublisher::start(
        a.http,
        "show",
        "showkey",
        std::sync::Arc::new(video),
        std::sync::Arc::new(audio),
    )
    .unwrap_or_else(|r| panic!("WHIP POST: {} {}", r.status, r.text()));
    assert!(
        publisher.wait_connected(Duration::from_secs(10)),
        "WHIP publisher connected"
    );
    a.wait_state("show", "publishing", Duration::from_secs(15));
    let b = Server::start("pull-pli-edge", &edge_toml(a.http, 10_000));
    let mut v = viewer(b.http, "edge viewer");
    // Let the start-up requests settle (paced 500 ms apart at most).
    v.run(Duration::from_secs(2), |_| false);
    let plis = || publisher.stats.keyframe_requests.load(Ordering::Relaxed);
    let before = plis();
    send_pli(&mut v);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && plis() == before {
        v.run(Duration::from_millis(100), |_| false);
    }
    assert!(
        plis() > before,
        "the edge viewer's PLI never reached the WHIP publisher on A ({before} PLIs)\nA:\n{}\nB:\n{}",
        a.log_tail(20),
        b.log_tail(20)
    );
    // Opus from WHIP stays Opus through the pull: the edge viewer hears it.
    assert!(
        v.audio_frames > 10,
        "Opus through the pull: {}",
        v.audio_frames
    );
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    (t(11) + t(12)) / 100.0
}

/// Measurement, not a check (docs/BENCHMARKS.md "Edge pull"): what one pull costs the origin
/// against one viewer (bytes sent, CPU), and the delay one hop adds (the same frames at a viewer
/// of A and a viewer of B, driven in one loop). Run with
/// `cargo test --release --test pull_e2e measure -- --ignored --nocapture`.
#[test]
#[ignore = "measurement for docs/BENCHMARKS.md, not a check: run with --ignored --nocapture"]
fn measure_pull_cost_and_hop_latency() {
    let (a, _ff) = origin("measure");
    let b = Server::start("pull-measure-edge", &edge_toml(a.http, 1_000));
    let secs = 15.0;
    let window = |what: &str, f: &mut dyn FnMut(Duration)| {
        let (c0, b0) = (cpu_secs(a.pid()), a.metric("deltacast_sfu_bytes_out_total"));
        f(Duration::from_secs_f64(secs));
        // Sessions' bytes are counted when they leave.
        std::thread::sleep(Duration::from_secs(3));
        let (c1, b1) = (cpu_secs(a.pid()), a.metric("deltacast_sfu_bytes_out_total"));
        println!(
            "{what}: origin CPU {:.1} ms/s, origin bytes out {:.0} kbit/s",
            (c1 - c0) * 1e3 / (secs + 3.0),
            (b1 - b0) * 8.0 / secs / 1e3
        );
    };
    window("idle origin (publisher only)", &mut |d| {
        std::thread::sleep(d)
    });
    window("one WHEP viewer on the origin", &mut |d| {
        let mut v = viewer(a.http, "origin viewer");
        drive(std::slice::from_mut(&mut v), d);
        request(a.http, "DELETE", &v.location.clone(), &[], b"");
    });
    window("one edge pull (one viewer on the edge)", &mut |d| {
        let mut v = viewer(b.http, "edge viewer");
        drive(std::slice::from_mut(&mut v), d);
        request(b.http, "DELETE", &v.location.clone(), &[], b"");
        // The pull lingers 1 s, then leaves A.
        wait_until(Duration::from_secs(5), || webrtc_viewers(&a) == 0);
    });

    // One hop: the same frames at a viewer of A and a viewer of B.
    let mut va = viewer(a.http, "origin viewer");
    let mut vb = viewer(b.http, "edge viewer");
    let (na, nb) = (va.frames.len(), vb.frames.len());
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        va.run(Duration::from_millis(2), |_| false);
        vb.run(Duration::from_millis(2), |_| false);
    }
    let fa = &va.frames[na..];
    let mut deltas: Vec<f64> = Vec::new();
    for f in &vb.frames[nb..] {
        // Frames are matched by size (test pattern P-frames differ) among A's arrivals within
        // 1 s before or after.
        let m: Vec<_> = fa
            .iter()
            .filter(|x| {
                x.bytes == f.bytes
                    && !x.keyframe
                    && (x.at.max(f.at) - x.at.min(f.at)) < Duration::from_secs(1)
            })
            .collect();
        if m.len() == 1 {
            let d = if f.at >= m[0].at {
                (f.at - m[0].at).as_secs_f64()
            } else {
                -(m[0].at - f.at).as_secs_f64()
            };
            deltas.push(d * 1e3);
        }
    }
    deltas.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let q = |p: f64| deltas[((deltas.len() - 1) as f64 * p) as usize];
    assert!(
        deltas.len() > 50,
        "too few matched frames: {}",
        deltas.len()
    );
    println!(
        "one hop (edge viewer − origin viewer, same frame): median {:.1} ms, p10 {:.1}, p90 {:.1} \
         ({} frames matched)",
        q(0.5),
        q(0.1),
        q(0.9),
        deltas.len()
    );
}
