//! WHIP end to end: a str0m WHIP publisher (ICE + DTLS + SRTP over real UDP on 127.0.0.1)
//! sends H.264 made by ffmpeg/libx264 and Opus made by ffmpeg/libopus to the real binary; the
//! program plays over WHEP (a str0m viewer receives H.264 keyframes and Opus), a viewer's PLI
//! reaches the publisher, and LL-HLS of the stream decodes with ffprobe. Bad requests get the
//! status codes RFC 9725 gives. ICE-TCP: a viewer limited to a TCP candidate plays.
//!
//! Needs `ffmpeg` (libx264, libopus) and `ffprobe`; fails (never skips) without them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::request;
use testkit::webrtc::WhepClient;
use testkit::webrtc::{make_media, vp8_offer, whip_offer, WhipPublisher};
use testkit::{ffprobe_count_frames, free_port, probe_stream, require_tool, Server};

fn config(io: &str, ice_tcp_port: u16) -> String {
    format!(
        "[sfu]\nio = \"{io}\"\nworkers = 1\nbind_ip = \"127.0.0.1\"\nport_base = 0\nice_tcp_port_base = {ice_tcp_port}\n\
         idle_timeout_ms = 3000\nconnect_timeout_ms = 5000\n\n\
         [[streams]]\nname = \"live\"\nkeys = [\"livekey\"]\n\n\
         [[streams]]\nname = \"other\"\nkeys = [\"otherkey\"]\n"
    )
}

type Frames = Arc<Vec<Vec<u8>>>;

fn media(dir: &std::path::Path) -> (Frames, Frames) {
    let (v, a) = make_media(dir, 4);
    (Arc::new(v), Arc::new(a))
}

/// The video m-line id of a WHEP client's answer.
fn video_mid(answer: &str) -> String {
    let mut in_video = false;
    for l in answer.lines() {
        if l.starts_with("m=") {
            in_video = l.starts_with("m=video");
        } else if in_video {
            if let Some(m) = l.trim_end().strip_prefix("a=mid:") {
                return m.to_string();
            }
        }
    }
    panic!("no video mid in {answer}");
}

/// The shared fixture: the relay on UDP driver `io` and a str0m WHIP publisher on "live",
/// connected and sending (the checks of its answer are made once, here).
struct Published {
    server: Server,
    publisher: WhipPublisher,
    io: &'static str,
}

const SF: (&str, &str) = ("Content-Type", "application/trickle-ice-sdpfrag");
const CAND: &str = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";

/// The WHIP clip (4 s of H.264 and Opus), made once per test binary.
fn shared_media() -> (Frames, Frames) {
    static MEDIA: std::sync::OnceLock<(Frames, Frames)> = std::sync::OnceLock::new();
    MEDIA
        .get_or_init(|| media(tempfile::tempdir().unwrap().path()))
        .clone()
}

impl Published {
    fn start(io: &'static str, label: &str) -> Published {
        let server = Server::start(&format!("whip-{label}-{io}"), &config(io, 0));
        let want = if io == "uring" { "io_uring" } else { "epoll" };
        assert!(
            server.log_text().contains(&format!("\"{want}\"")),
            "SFU is not running on {want}:\n{}",
            server.log_tail(40)
        );
        let http = server.http;
        let (video, audio) = shared_media();
        // ── publish ──
        let t0 = Instant::now();
        let publisher = WhipPublisher::start(http, "live", "livekey", video.clone(), audio.clone())
            .unwrap_or_else(|r| panic!("WHIP POST: {r:?}\n{}", server.log_tail(40)));
        assert!(
            publisher.location.starts_with("/whip/live/"),
            "{}",
            publisher.location
        );
        assert!(publisher.etag.starts_with('"'), "ETag {}", publisher.etag);
        assert!(publisher.answer.contains("a=ice-lite"), "ICE-lite answer");
        assert!(
            publisher.answer.contains("a=recvonly"),
            "we only receive: {}",
            publisher.answer
        );
        assert!(
            publisher.wait_connected(Duration::from_secs(10)),
            "WHIP publisher did not connect\n{}",
            server.log_tail(40)
        );
        println!(
            "[{io}] WHIP publisher connected {:.1} ms after POST",
            t0.elapsed().as_secs_f64() * 1e3
        );
        let st = server.wait_state("live", "publishing", Duration::from_secs(10));
        println!("API: {st}");
        assert!(
            publisher.wait(Duration::from_secs(3), |s| s
                .video_sent
                .load(Ordering::Relaxed)
                > 30),
            "the WHIP client is not sending video"
        );
        Published {
            server,
            publisher,
            io,
        }
    }

    /// A WHEP viewer of the WHIP program: H.264 keyframe first, then live video and Opus.
    fn viewer(&self) -> WhepClient {
        let (server, http, io) = (&self.server, self.server.http, self.io);
        // ── WHEP viewer: H.264 keyframe first, then live video and Opus ──
        let mut a =
            WhepClient::connect(http, "live").unwrap_or_else(|r| panic!("WHEP POST: {r:?}"));
        assert!(
            a.run(Duration::from_secs(10), |c| c.first_keyframe().is_some()),
            "WHEP viewer got no keyframe of the WHIP program; connected: {:?}\n{}",
            a.connected_at,
            server.log_tail(60)
        );
        let key = a.first_keyframe().unwrap().clone();
        assert!(key.annexb_has_sps, "keyframe carries SPS/PPS");
        println!(
            "[{io}] WHIP → WHEP: first frame {:.1} ms after the viewer's POST",
            key.at.duration_since(a.started).as_secs_f64() * 1e3
        );
        let n = a.frames.len();
        let na = a.audio_frames;
        a.run(Duration::from_secs(2), |_| false);
        println!(
            "[{io}] WHEP viewer in 2 s: {} video frames, {} Opus frames",
            a.frames.len() - n,
            a.audio_frames - na
        );
        assert!(
            a.frames.len() >= n + 40,
            "live video keeps coming: {n} → {}",
            a.frames.len()
        );
        assert!(
            a.audio_frames >= na + 50,
            "Opus from the WHIP publisher reaches the viewer: {na} → {}",
            a.audio_frames
        );
        a
    }
}

use testkit::on_both_drivers;

on_both_drivers!(
    whip_program_plays_over_whep_and_a_viewers_pli_reaches_the_publisher,
    plays_over_whep
);
on_both_drivers!(
    second_publisher_is_refused_and_session_paths_are_separate,
    refusals_and_namespaces
);
on_both_drivers!(ll_hls_of_the_whip_program_decodes, ll_hls_decodes);
on_both_drivers!(
    whip_program_reaches_an_rtmp_destination_as_h264_and_aac,
    reaches_rtmp
);
on_both_drivers!(
    patch_delete_republish_and_silent_publisher_timeout,
    session_lifecycle
);

fn plays_over_whep(io: &'static str) {
    let p = Published::start(io, "whep");
    let (publisher, mut a) = (&p.publisher, p.viewer());
    // ── a viewer's PLI reaches the WHIP publisher ──
    let before = publisher.stats.keyframe_requests.load(Ordering::Relaxed);
    let mid = str0m::media::Mid::from(video_mid(&a.answer).as_str());
    for _ in 0..3 {
        if let Some(mut w) = a.peer.rtc.writer(mid) {
            let _ = w.request_keyframe(None, str0m::media::KeyframeRequestKind::Pli);
        }
        a.run(Duration::from_millis(1200), |_| false);
    }
    let after = publisher.stats.keyframe_requests.load(Ordering::Relaxed);
    println!("[{io}] keyframe requests at the WHIP publisher: {before} → {after}");
    assert!(
        after > before,
        "viewer PLIs were not forwarded to the WHIP publisher ({before} → {after})"
    );
}

fn refusals_and_namespaces(io: &'static str) {
    let p = Published::start(io, "ns");
    let (server, http, publisher) = (&p.server, p.server.http, &p.publisher);
    // ── a second publisher for the same stream: 409 ──
    let offer2 = whip_offer(true).sdp;
    let r = request(
        http,
        "POST",
        "/whip/live",
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", "Bearer livekey"),
        ],
        offer2.as_bytes(),
    );
    assert_eq!(r.status, 409, "second publisher: {}", r.text());

    let mut a = p.viewer();
    // ── WHIP and WHEP session URLs are separate namespaces ──
    let pub_as_whep = publisher.location.replacen("/whip/", "/whep/", 1);
    let viewer_as_whip = a.location.replacen("/whep/", "/whip/", 1);
    let r = request(
        http,
        "PATCH",
        &pub_as_whep,
        &[SF, ("If-Match", &publisher.etag)],
        CAND.as_bytes(),
    );
    assert_eq!(r.status, 404, "PATCH of the WHIP session via {pub_as_whep}");
    for loc in [&pub_as_whep, &viewer_as_whip] {
        let r = request(http, "DELETE", loc, &[], b"");
        assert_eq!(
            r.status,
            404,
            "DELETE via the other path {loc}: {}",
            r.text()
        );
    }
    let n = a.frames.len();
    a.run(Duration::from_secs(1), |_| false);
    assert!(
        a.frames.len() >= n + 15,
        "publisher and viewer untouched by the cross-path DELETEs: {n} → {}",
        a.frames.len()
    );
    assert_eq!(server.api_stream("live").unwrap()["state"], "publishing");
}

fn ll_hls_decodes(io: &'static str) {
    require_tool("ffprobe");
    let p = Published::start(io, "hls");
    let server = &p.server;
    // Every segment listed decodes, the first one included: a player (or a recording) that
    // starts at the head of the stream's timeline must see video from its first segment.
    let pl = server.wait_segments("live", 3, Duration::from_secs(30));
    assert_eq!(
        pl.segments[0].msn, 0,
        "the window still holds the first segment"
    );
    // One publisher session, one set of tracks: the timeline starts with the audio+video init
    // (no audio-only start replaced by the video after a discontinuity).
    let maps = pl.tags.iter().filter(|(t, _)| t == "EXT-X-MAP").count();
    assert!(
        maps == 1 && !pl.has_discontinuity(),
        "one init for the whole session: {maps} EXT-X-MAP\n{}",
        pl.text
    );
    for seg in &pl.segments {
        let probe = server.probe_segment("live", &pl, seg);
        let v = probe_stream(&probe, "video")
            .unwrap_or_else(|| panic!("no video in LL-HLS segment {}: {probe}", seg.msn));
        assert_eq!(v["codec_name"], "h264", "{probe}");
        let frames: f64 = v["nb_read_frames"].as_str().unwrap_or("0").parse().unwrap();
        println!(
            "[{io}] LL-HLS segment {} ({:.3} s): {frames} H.264 frames decoded; streams: {probe}",
            seg.msn, seg.duration
        );
        assert!(
            frames >= seg.duration * 30.0 * 0.8,
            "too few frames decoded in segment {} ({:.3} s): {probe}",
            seg.msn,
            seg.duration
        );
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(320), Some(240)),
            "segment {}",
            seg.msn
        );
    }
}

fn reaches_rtmp(io: &'static str) {
    let p = Published::start(io, "rtmp");
    let (server, http) = (&p.server, p.server.http);
    // ── the WHIP program reaches an RTMP destination, Opus bridged to AAC ──
    require_tool("ffmpeg");
    let rport = free_port();
    let out = server.dir.path().join(format!("whip-to-rtmp-{io}.flv"));
    let mut rx = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-listen", "1", "-i"])
        .arg(format!("rtmp://127.0.0.1:{rport}/app/whipkey"))
        .args(["-t", "3", "-c", "copy", "-y"])
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg -listen");
    testkit::wait_listening(rport, Duration::from_secs(10), "ffmpeg -listen");
    let body = format!(r#"{{"id":"rec","url":"rtmp://127.0.0.1:{rport}/app/whipkey"}}"#);
    let r = request(
        http,
        "POST",
        "/api/v1/streams/live/destinations",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "add destination: {}", r.text());
    let deadline = Instant::now() + Duration::from_secs(25);
    let done = loop {
        if let Some(st) = rx.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = rx.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        done.is_some(),
        "the RTMP destination did not receive 3 s of the WHIP program\n{}",
        server.log_tail(40)
    );
    let probe = ffprobe_count_frames(&out);
    let codecs: Vec<String> = probe["streams"]
        .as_array()
        .expect("ffprobe streams")
        .iter()
        .map(|s| s["codec_name"].as_str().unwrap_or("").to_string())
        .collect();
    println!("[{io}] RTMP destination of the WHIP program: {probe}");
    assert!(
        codecs.iter().any(|c| c == "h264") && codecs.iter().any(|c| c == "aac"),
        "the RTMP destination should get H.264 + AAC (Opus bridged): {probe}"
    );
}

fn session_lifecycle(io: &'static str) {
    let Published {
        server,
        mut publisher,
        io,
    } = Published::start(io, "life");
    let http = server.http;
    let (video, audio) = shared_media();
    // ── PATCH preconditions, then DELETE: the stream goes idle ──
    let loc = publisher.location.clone();
    let r = request(http, "PATCH", &loc, &[SF], CAND.as_bytes());
    assert_eq!(r.status, 428, "PATCH without If-Match");
    let r = request(
        http,
        "PATCH",
        &loc,
        &[SF, ("If-Match", "\"stale\"")],
        CAND.as_bytes(),
    );
    assert_eq!(r.status, 412, "PATCH with a stale ETag");
    let etag = publisher.etag.clone();
    let r = request(
        http,
        "PATCH",
        &loc,
        &[SF, ("If-Match", &etag)],
        CAND.as_bytes(),
    );
    assert_eq!(r.status, 204, "trickle PATCH: {}", r.text());
    let r = request(http, "GET", &loc, &[], b"");
    assert_eq!(r.status, 405, "GET on a WHIP session");
    let r = request(http, "DELETE", &loc, &[], b"");
    assert_eq!(r.status, 200, "DELETE: {}", r.text());
    server.wait_state("live", "idle", Duration::from_secs(5));
    let r = request(http, "DELETE", &loc, &[], b"");
    assert_eq!(r.status, 404, "DELETE twice");
    publisher.stop();

    // ── the stream can be published again; a publisher that vanishes is timed out ──
    let mut p2 = WhipPublisher::start(http, "live", "livekey", video, audio)
        .unwrap_or_else(|r| panic!("WHIP POST after DELETE: {r:?}"));
    assert!(p2.wait_connected(Duration::from_secs(10)));
    server.wait_state("live", "publishing", Duration::from_secs(10));
    // Media flowing (half a second of video) before the publisher goes silent.
    let sent = p2.stats.video_sent.load(Ordering::Relaxed);
    assert!(p2.wait(Duration::from_secs(10), |s| s
        .video_sent
        .load(Ordering::Relaxed)
        >= sent + 15));
    p2.stop(); // no DELETE, no more packets
    let t = Instant::now();
    server.wait_state("live", "idle", Duration::from_secs(15));
    println!(
        "[{io}] silent WHIP publisher dropped after {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn whip_bad_requests_get_rfc_status_codes() {
    let server = Server::start("whip-bad", &config("auto", 0));
    let http = server.http;
    let good = whip_offer(true).sdp;
    let sdp = ("Content-Type", "application/sdp");
    let auth = ("Authorization", "Bearer livekey");

    let r = request(http, "POST", "/whip/live", &[sdp], good.as_bytes());
    assert_eq!(r.status, 401, "no Authorization: {}", r.text());
    assert!(
        r.header("www-authenticate").is_some(),
        "401 has WWW-Authenticate"
    );
    let r = request(
        http,
        "POST",
        "/whip/live",
        &[sdp, ("Authorization", "Bearer wrong")],
        good.as_bytes(),
    );
    assert_eq!(r.status, 403, "wrong key: {}", r.text());
    assert!(!r.text().contains("wrong"), "the key is not echoed");
    let r = request(
        http,
        "POST",
        "/whip/live",
        &[sdp, ("Authorization", "Bearer otherkey")],
        good.as_bytes(),
    );
    assert_eq!(r.status, 403, "another stream's key: {}", r.text());
    let r = request(
        http,
        "POST",
        "/whip/live",
        &[sdp, ("Authorization", "Basic bGl2ZWtleQ==")],
        good.as_bytes(),
    );
    assert_eq!(r.status, 401, "not a bearer token");
    let r = request(
        http,
        "POST",
        "/whip/live",
        &[("Content-Type", "text/plain"), auth],
        good.as_bytes(),
    );
    assert_eq!(r.status, 415, "wrong content type");
    let r = request(http, "POST", "/whip/live", &[auth], good.as_bytes());
    assert_eq!(r.status, 415, "no content type");
    let r = request(http, "POST", "/whip/live", &[sdp, auth], b"");
    assert_eq!(r.status, 400, "empty SDP: {}", r.text());
    let r = request(
        http,
        "POST",
        "/whip/live",
        &[sdp, auth],
        b"v=0\r\nthis is not sdp\r\n",
    );
    assert_eq!(r.status, 400, "malformed SDP: {}", r.text());
    let r = request(http, "POST", "/whip/live", &[sdp, auth], &[0xff, 0xfe, 0]);
    assert_eq!(r.status, 400, "binary body");
    let vp8 = vp8_offer();
    let r = request(http, "POST", "/whip/live", &[sdp, auth], vp8.as_bytes());
    assert_eq!(r.status, 406, "VP8-only offer: {}", r.text());
    assert!(
        r.text().contains("H.264") && r.text().contains("VP8"),
        "406 says why: {}",
        r.text()
    );
    // The offer check shared with WHEP: a WHIP offer sends (a recvonly one must not take the
    // stream), a sha-256 fingerprint, RFC 8839 ICE credentials.
    testkit::webrtc::assert_offer_checks(
        http,
        "/whip/live",
        &[sdp, auth],
        &good,
        "sendonly",
        &["recvonly", "inactive"],
    );
    // Lowercase scheme: the scheme is case-insensitive; the good offer is still accepted after
    // the refused ones (none of them took the stream).
    let good2 = whip_offer(true).sdp;
    let r = request(
        http,
        "POST",
        "/whip/live",
        &[sdp, ("Authorization", "bearer livekey")],
        good2.as_bytes(),
    );
    assert_eq!(
        r.status,
        201,
        "good offer after the refused ones: {}",
        r.text()
    );
    let loc = r.header("location").unwrap().to_string();
    assert_eq!(request(http, "DELETE", &loc, &[], b"").status, 200);
    server.wait_state("live", "idle", Duration::from_secs(5));
    // Hostile SDP: no fingerprint, duplicate MIDs, thousands of m-lines. A clear 4xx, never 5xx.
    let no_fp: String = good
        .lines()
        .filter(|l| !l.starts_with("a=fingerprint"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let r = request(http, "POST", "/whip/live", &[sdp, auth], no_fp.as_bytes());
    println!(
        "offer without a fingerprint: {} {}",
        r.status,
        r.text().trim()
    );
    assert!((400..500).contains(&r.status), "no fingerprint: {r:?}");
    let vmid = testkit::webrtc::mid_of(&good, "video").unwrap().to_string();
    let amid = testkit::webrtc::mid_of(&good, "audio").unwrap().to_string();
    let dup = good.replace(&format!("a=mid:{amid}"), &format!("a=mid:{vmid}"));
    assert_ne!(dup, good);
    let r = request(http, "POST", "/whip/live", &[sdp, auth], dup.as_bytes());
    println!(
        "offer with duplicate MIDs: {} {}",
        r.status,
        r.text().trim()
    );
    assert!((400..500).contains(&r.status), "duplicate MIDs: {r:?}");
    let video_m = &good[good.find("m=video").unwrap()..];
    let video_m = &video_m[..video_m.find("m=audio").unwrap_or(video_m.len())];
    // Many m-lines (with fresh MIDs), still under the HTTP body limit.
    let mut many = good.clone();
    for i in 0..17 {
        many.push_str(&video_m.replace(&format!("a=mid:{vmid}"), &format!("a=mid:x{i}")));
    }
    let r = request(http, "POST", "/whip/live", &[sdp, auth], many.as_bytes());
    println!(
        "offer with 19 m-lines ({} bytes): {} {}",
        many.len(),
        r.status,
        r.text().trim()
    );
    assert_eq!(r.status, 400, "19 m-lines: {}", r.text());
    let r = request(http, "GET", "/whip/live", &[], b"");
    assert_eq!(r.status, 405, "GET on the WHIP endpoint");
    let r = testkit::webrtc::assert_cors_preflight(http, "/whip/live");
    let allow = r.header("access-control-allow-headers").unwrap_or_default();
    assert!(allow.contains("Authorization"), "{allow}");
    let r = request(
        http,
        "DELETE",
        "/whip/live/00000000000000000000000000000000",
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "DELETE unknown session");
    // None of that created or disturbed the stream.
    let st = server.api_stream("live");
    assert!(
        st.as_ref().is_none_or(|s| s["state"] != "publishing"),
        "{st:?}"
    );
}

#[test]
fn ice_tcp_viewer_plays_a_whip_program() {
    let tcp_port = free_port();
    let server = Server::start("whip-tcp", &config("epoll", tcp_port));
    assert!(
        server.log_text().contains("ICE-TCP listening"),
        "ICE-TCP is not listening on {tcp_port}:\n{}",
        server.log_tail(40)
    );
    let http = server.http;
    let (video, audio) = media(server.dir.path());
    let publisher = WhipPublisher::start(http, "live", "livekey", video, audio)
        .unwrap_or_else(|r| panic!("WHIP POST: {r:?}"));
    assert!(publisher.wait_connected(Duration::from_secs(10)));
    server.wait_state("live", "publishing", Duration::from_secs(10));
    server.wait_segments("live", 1, Duration::from_secs(20));

    let t0 = Instant::now();
    let mut c = WhepClient::connect_tcp(http, "live", tcp_port)
        .unwrap_or_else(|r| panic!("WHEP POST (TCP): {r:?}"));
    let tcp_line = c
        .answer
        .lines()
        .find(|l| l.starts_with("a=candidate:") && l.contains(" tcp "))
        .unwrap_or_else(|| panic!("no TCP candidate in the answer: {}", c.answer))
        .to_string();
    assert!(tcp_line.contains("tcptype passive"), "{tcp_line}");
    assert!(tcp_line.contains(&format!(" {tcp_port} ")), "{tcp_line}");
    let ok = c.run(Duration::from_secs(10), |c| c.keyframes() > 0);
    assert!(
        ok,
        "TCP-only viewer got no keyframe; connected: {:?}\n{}",
        c.connected_at,
        server.log_tail(60)
    );
    let n = c.frames.len();
    c.run(Duration::from_secs(2), |_| false);
    println!(
        "ICE-TCP viewer: first keyframe {:.1} ms after POST; {} video / {} Opus frames in the next 2 s",
        c.connected_at.map_or(0.0, |t| t.duration_since(t0).as_secs_f64() * 1e3),
        c.frames.len() - n,
        c.audio_frames
    );
    assert!(c.frames.len() >= n + 40, "video keeps coming over TCP");

    // An API kick ends the WHIP session: the stream goes idle.
    let r = request(http, "DELETE", "/api/v1/streams/live/publisher", &[], b"");
    assert!(r.status < 300, "kick: {r:?}");
    server.wait_state("live", "idle", Duration::from_secs(5));
    assert!(
        server.log_text().contains("WHIP publisher left"),
        "{}",
        server.log_tail(20)
    );
    drop(publisher);
}
