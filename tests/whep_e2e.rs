//! WHEP end to end: ffmpeg publishes RTMP to the real binary; str0m clients play over WebRTC
//! (ICE + DTLS + SRTP on 127.0.0.1) and must see H.264 keyframes; time to first frame is printed.
//! Bad input (garbage UDP on the worker port, malformed / empty SDP, offers without H.264, unknown
//! streams, wrong content types, PATCH preconditions, offers that send, weak fingerprints, bad
//! ICE credentials, a session addressed through the WHIP path) gets the spec's status codes while
//! another viewer keeps receiving. The suite runs once per UDP driver (epoll, io_uring).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use testkit::request;
use testkit::webrtc::{offer, WhepClient};
use testkit::{Ffmpeg, Server};

fn config(io: &str) -> String {
    format!(
        "[sfu]\nio = \"{io}\"\nworkers = 1\nbind_ip = \"127.0.0.1\"\nport_base = 0\nidle_timeout_ms = 5000\n\
         ice_servers = [\"stun:stun.example.net:3478\"]\n\n\
         [[streams]]\nname = \"show\"\nkeys = [\"showkey\"]\n\n\
         [[streams]]\nname = \"later\"\nkeys = [\"laterkey\"]\n"
    )
}

/// The shared fixture: the relay on UDP driver `io`, an ffmpeg publisher live on "show", and a
/// whole GOP in (the first segment closed on the next keyframe), so the GOP cache is what serves
/// a new viewer's first frame.
struct Live {
    server: Server,
    _ff: Ffmpeg,
    io: &'static str,
}

impl Live {
    fn start(io: &'static str, label: &str) -> Live {
        let server = Server::start(&format!("whep-{label}-{io}"), &config(io));
        let log = server.log_text();
        let want = if io == "uring" { "io_uring" } else { "epoll" };
        assert!(
            log.contains("WebRTC SFU running") && log.contains(&format!("\"{want}\"")),
            "SFU is not running on {want}:\n{}",
            server.log_tail(40)
        );
        let _ff = Ffmpeg::publish(&format!("whep-{label}-{io}"), &server.rtmp_url("showkey"));
        server.wait_state("show", "publishing", Duration::from_secs(15));
        server.wait_segments("show", 1, Duration::from_secs(20));
        Live { server, _ff, io }
    }

    /// A viewer that has received its first frame: a keyframe with SPS/PPS, from the cache.
    fn viewer(&self) -> WhepClient {
        let (http, io) = (self.server.http, self.io);
        // ── viewer A: connects, first frame is a keyframe with SPS, and it keeps coming ──
        let mut a = WhepClient::connect(http, "show").unwrap_or_else(|r| panic!("POST: {r:?}"));
        assert!(a.location.starts_with("/whep/show/"), "{}", a.location);
        assert!(a.answer.contains("a=ice-lite"), "ICE-lite answer");
        assert!(a.answer.contains("H264"), "H.264 in the answer");
        assert!(a.peer.rtc.is_alive(), "client alive after answer");
        let ok = a.run(Duration::from_secs(10), |c| c.first_keyframe().is_some());
        assert!(
            ok,
            "viewer A got no keyframe; connected: {:?}",
            a.connected_at
        );
        let key = a.first_keyframe().unwrap().clone();
        assert!(key.annexb_has_sps, "keyframe carries SPS/PPS");
        assert!(
            a.frames[0].keyframe,
            "the first frame is a keyframe (GOP cache)"
        );
        let ttff = key.at.duration_since(a.started);
        let after_connect = key.at.duration_since(a.connected_at.unwrap());
        println!(
            "[{io}] WHEP time to first frame: {:.1} ms from POST ({:.1} ms after ICE+DTLS connected)",
            ttff.as_secs_f64() * 1e3,
            after_connect.as_secs_f64() * 1e3
        );
        assert!(
            ttff < Duration::from_millis(1500),
            "first frame took {ttff:?} on loopback"
        );
        a
    }
}

use testkit::on_both_drivers;

on_both_drivers!(
    first_frame_is_a_cached_keyframe_and_media_keeps_coming,
    first_frame
);
on_both_drivers!(bad_input_and_bad_requests_leave_a_viewer_playing, bad_input);
on_both_drivers!(
    second_viewer_starts_on_a_keyframe_and_delete_ends_it,
    second_viewer
);

/// Viewer A's first frame is a cached keyframe, within 1.5 s of its POST; video and bridged
/// Opus audio keep coming.
fn first_frame(io: &'static str) {
    let live = Live::start(io, "first");
    let mut a = live.viewer();
    let n = a.frames.len();
    let audio = a.audio_frames;
    a.run(Duration::from_secs(2), |_| false);
    assert!(
        a.frames.len() >= n + 30,
        "live frames keep coming: {} → {}",
        n,
        a.frames.len()
    );
    // AAC from the RTMP publisher arrives as Opus (bridged once per stream): 50 packets a second.
    println!(
        "[{io}] Opus frames received in 2 s: {}",
        a.audio_frames - audio
    );
    assert!(
        a.audio_frames >= audio + 60,
        "bridged Opus audio keeps coming: {} → {}",
        audio,
        a.audio_frames
    );
}

/// Garbage UDP on the worker port and every kind of bad WHEP request get the spec's answers
/// while viewer A keeps playing.
fn bad_input(io: &'static str) {
    let live = Live::start(io, "bad");
    let http = live.server.http;
    let mut a = live.viewer();
    // ── bad input, while A keeps playing ──
    let port = a.server_port();
    let evil = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = testkit::Rng::new(7);
    for i in 0..2000 {
        let mut b = rng.bytes(1 + (i % 1400));
        if i % 5 == 0 {
            // STUN-looking, with a bogus username / integrity
            b.splice(
                0..0,
                [
                    0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0,
                    6, 0, 4, b'a', b'b', b':', b'c',
                ],
            );
        }
        let _ = evil.send_to(&b, ("127.0.0.1", port));
    }
    let ct = [("Content-Type", "application/sdp")];
    let r = request(http, "POST", "/whep/show", &ct, b"");
    assert_eq!(r.status, 400, "empty SDP: {}", r.text());
    let r = request(
        http,
        "POST",
        "/whep/show",
        &ct,
        b"v=0\r\nthis is not sdp\r\n",
    );
    assert_eq!(r.status, 400, "malformed SDP: {}", r.text());
    let r = request(http, "POST", "/whep/show", &ct, &[0xff, 0xfe, 0x00]);
    assert_eq!(r.status, 400, "binary body");
    let vp8 = offer(true).sdp;
    let r = request(http, "POST", "/whep/show", &ct, vp8.as_bytes());
    assert_eq!(r.status, 406, "offer without H.264: {}", r.text());
    assert!(r.text().contains("H.264"), "406 says why: {}", r.text());
    let good = offer(false).sdp;
    // The offer check shared with WHIP: a WHEP offer receives, a sha-256 fingerprint, RFC 8839
    // ICE credentials.
    testkit::webrtc::assert_offer_checks(
        http,
        "/whep/show",
        &ct,
        &good,
        "recvonly",
        &["sendonly", "inactive"],
    );
    let r = request(http, "POST", "/whep/nosuch", &ct, good.as_bytes());
    assert_eq!(r.status, 404, "unknown stream: {}", r.text());
    let r = request(http, "POST", "/whep/later", &ct, good.as_bytes());
    assert_eq!(
        r.status,
        409,
        "configured stream without publisher: {}",
        r.text()
    );
    assert!(r.header("retry-after").is_some(), "409 has Retry-After");
    let r = request(
        http,
        "POST",
        "/whep/show",
        &[("Content-Type", "text/plain")],
        good.as_bytes(),
    );
    assert_eq!(r.status, 415, "wrong content type");
    let r = request(http, "POST", "/whep/show", &[], good.as_bytes());
    assert_eq!(r.status, 415, "no content type");
    let r = request(http, "GET", "/whep/show", &[], b"");
    assert_eq!(r.status, 405, "GET on the WHEP endpoint");
    let r = request(http, "PUT", &a.location, &[], b"");
    assert_eq!(r.status, 405, "PUT on a session");
    let r = testkit::webrtc::assert_cors_preflight(http, "/whep/show");
    assert!(r.header("access-control-allow-origin").is_some());
    assert!(
        r.headers_all("link")
            .iter()
            .any(|l| l.contains("stun:stun.example.net:3478") && l.contains("ice-server")),
        "Link header for the ICE server: {:?}",
        r.headers
    );

    // PATCH preconditions on A's session.
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef01234567\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let sf = ("Content-Type", "application/trickle-ice-sdpfrag");
    let r = request(http, "PATCH", &a.location, &[sf], frag.as_bytes());
    assert_eq!(r.status, 428, "PATCH without If-Match");
    let r = request(
        http,
        "PATCH",
        &a.location,
        &[sf, ("If-Match", "\"stale\"")],
        frag.as_bytes(),
    );
    assert_eq!(r.status, 412, "PATCH with a stale ETag");
    let etag = a.etag.clone();
    let cand = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let r = request(
        http,
        "PATCH",
        &a.location,
        &[sf, ("If-Match", &etag)],
        cand.as_bytes(),
    );
    assert_eq!(r.status, 204, "trickle PATCH: {}", r.text());
    let r = request(
        http,
        "PATCH",
        &a.location,
        &[("Content-Type", "application/sdp"), ("If-Match", &etag)],
        cand.as_bytes(),
    );
    assert_eq!(r.status, 415, "PATCH content type");
    let r = request(
        http,
        "PATCH",
        "/whep/show/00000000000000000000000000000000",
        &[sf, ("If-Match", &etag)],
        cand.as_bytes(),
    );
    assert_eq!(r.status, 404, "PATCH unknown session");
    // A WHEP session is not reachable through the WHIP path (separate namespaces).
    let as_whip = a.location.replacen("/whep/", "/whip/", 1);
    let r = request(
        http,
        "PATCH",
        &as_whip,
        &[sf, ("If-Match", &etag)],
        cand.as_bytes(),
    );
    assert_eq!(r.status, 404, "PATCH of a WHEP session via {as_whip}");
    let r = request(http, "DELETE", &as_whip, &[], b"");
    assert_eq!(
        r.status,
        404,
        "DELETE of a WHEP session via {as_whip}: {}",
        r.text()
    );

    // A never noticed.
    let n = a.frames.len();
    a.run(Duration::from_secs(2), |_| false);
    assert!(
        a.frames.len() >= n + 30,
        "A kept receiving through the bad input: {} → {}",
        n,
        a.frames.len()
    );
    assert!(!a.disconnected);
}

/// A second viewer that joins mid-GOP starts on a keyframe at once; DELETE ends its session, a
/// second DELETE is 404, and viewer A goes on.
fn second_viewer(io: &'static str) {
    let live = Live::start(io, "second");
    let http = live.server.http;
    let mut a = live.viewer();
    // ── a second viewer joins mid-GOP and also starts with a keyframe at once ──
    let mut b = WhepClient::connect(http, "show").unwrap_or_else(|r| panic!("POST B: {r:?}"));
    assert!(b.run(Duration::from_secs(10), |c| c.first_keyframe().is_some()));
    assert!(b.frames[0].keyframe);
    println!(
        "[{io}] second viewer first frame: {:.1} ms from POST",
        b.frames[0].at.duration_since(b.started).as_secs_f64() * 1e3
    );

    // ── DELETE ends B's session; a second DELETE is 404; A goes on ──
    let r = request(http, "DELETE", &b.location, &[], b"");
    assert_eq!(r.status, 200, "DELETE: {}", r.text());
    let r = request(http, "DELETE", &b.location, &[], b"");
    assert_eq!(r.status, 404, "DELETE twice");
    let n = a.frames.len();
    a.run(Duration::from_secs(1), |_| false);
    assert!(a.frames.len() > n + 10);
}

/// Two SFU workers: viewers are spread by load (the least-loaded worker takes the next one, so
/// 4 viewers land 2 and 2 on the two workers' ports) and every one of them plays.
#[test]
fn viewers_spread_over_two_workers_and_all_play() {
    let cfg = config("epoll").replace("workers = 1\n", "workers = 2\n");
    let server = Server::start("whep-2workers", &cfg);
    let http = server.http;
    let _ff = Ffmpeg::publish("whep-2workers", &server.rtmp_url("showkey"));
    server.wait_state("show", "publishing", Duration::from_secs(15));
    server.wait_segments("show", 1, Duration::from_secs(20));
    let mut viewers: Vec<WhepClient> = (0..4)
        .map(|_| WhepClient::connect(http, "show").unwrap_or_else(|r| panic!("POST: {r:?}")))
        .collect();
    let mut ports: Vec<u16> = viewers.iter().map(|v| v.server_port()).collect();
    println!("worker ports of the 4 viewers: {ports:?}");
    ports.sort();
    assert_eq!(ports[0], ports[1], "{ports:?}");
    assert_eq!(ports[2], ports[3], "{ports:?}");
    assert_ne!(ports[1], ports[2], "two workers, two ports: {ports:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && viewers.iter().any(|v| v.frames.len() < 30) {
        for v in viewers.iter_mut() {
            v.run(Duration::from_millis(20), |_| false);
        }
    }
    for (i, v) in viewers.iter().enumerate() {
        assert!(
            v.first_keyframe().is_some() && v.frames.len() >= 30,
            "viewer {i} (port {}) got {} frames\n{}",
            v.server_port(),
            v.frames.len(),
            server.log_tail(30)
        );
    }
    let st = server.api_stream("show").unwrap();
    assert_eq!(st["viewers"]["webrtc"], 4, "{}", st["viewers"]);
}
