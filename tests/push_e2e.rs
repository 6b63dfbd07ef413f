//! End-to-end tests of RTMP/RTMPS push with real peers: the `deltacast` binary relays an ffmpeg
//! publish to nginx (RTMP module) and `ffmpeg -listen` receivers, and to peers that refuse, stall,
//! reset, or sit behind a TLS terminator. ffprobe/ffmpeg check that what arrived decodes.
//!
//! Needs ffmpeg/ffprobe (with libx264) and nginx with libnginx-mod-rtmp; a missing tool is a
//! failure with a clear message, never a skip.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::faults::*;
use testkit::nginx::Nginx;
use testkit::*;
use testkit::{ffprobe_count_frames, free_port, Ffmpeg, Server};

fn dests(s: &Server, stream: &str) -> Vec<Value> {
    let r = api_request(
        s.http,
        "GET",
        &format!("/api/v1/streams/{stream}/destinations"),
        None,
        None,
    )
    .expect("GET destinations");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().cloned().unwrap_or_default()
}

fn dest(s: &Server, stream: &str, id: &str) -> Value {
    dests(s, stream)
        .into_iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("no destination {id} on {stream}"))
}

fn wait_dest_state(s: &Server, stream: &str, id: &str, state: &str, timeout: Duration) -> Value {
    wait_dest(s, stream, id, timeout, &format!("'{state}'"), |d| {
        d["state"] == state
    })
}

/// Wait until destination `id` has sent `more` frames (video and audio) beyond what it has sent
/// now: media has reached its receiver (about 3 s of the test program per 200 frames).
fn wait_frames_sent(s: &Server, stream: &str, id: &str, more: u64, timeout: Duration) -> Value {
    let sent = |d: &Value| d["frames_sent"].as_u64().unwrap_or(0);
    let from = sent(&dest(s, stream, id));
    wait_dest(
        s,
        stream,
        id,
        timeout,
        &format!("{more} more frames sent"),
        |d| sent(d) >= from + more,
    )
}

/// Poll destination `id` until `ready` holds; panics with the server's log after `timeout`.
fn wait_dest(
    s: &Server,
    stream: &str,
    id: &str,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        let d = dest(s, stream, id);
        if ready(&d) {
            return d;
        }
        if t0.elapsed() > timeout {
            panic!(
                "destination {id} not {what} within {timeout:?}: {d}\nserver log:\n{}",
                s.log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn delete_dest(s: &Server, stream: &str, id: &str, token: Option<&str>) {
    let r = api_request(
        s.http,
        "DELETE",
        &format!("/api/v1/streams/{stream}/destinations/{id}"),
        token,
        None,
    )
    .unwrap();
    assert_eq!(r.status, 204, "DELETE {id}: {}", r.text());
}

fn video_audio_counts(file: &std::path::Path) -> (u64, u64) {
    let v = ffprobe_count_frames(file);
    let mut counts = (0, 0);
    for s in v["streams"].as_array().cloned().unwrap_or_default() {
        let n: u64 = s["nb_read_frames"]
            .as_str()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        match s["codec_type"].as_str() {
            Some("video") => {
                assert_eq!(s["codec_name"], "h264");
                counts.0 = n
            }
            Some("audio") => {
                assert_eq!(s["codec_name"], "aac");
                counts.1 = n
            }
            _ => {}
        }
    }
    counts
}

/// A file written by a receiver decodes, starts on a keyframe, and has video and audio.
fn assert_decodes_from_first_byte(file: &std::path::Path, min_video: u64) {
    let (v, a) = video_audio_counts(file);
    assert!(v >= min_video, "{}: {v} video frames", file.display());
    assert!(a >= min_video, "{}: {a} audio frames", file.display());
    let p = packets(file, "v");
    assert!(
        p[0].1,
        "{}: the first video packet is not a keyframe",
        file.display()
    );
    let errs = decode_errors(file);
    assert!(
        errs.trim().is_empty(),
        "{} does not decode cleanly:\n{errs}",
        file.display()
    );
}

fn dest_toml(stream: &str, id: &str, url: &str, extra: &str) -> String {
    format!("[[destinations]]\nstream = \"{stream}\"\nid = \"{id}\"\nurl = \"{url}\"\n{extra}\n")
}

/// Two real destinations at once (nginx, ffmpeg -listen) both get decodable video and audio; the
/// ffmpeg one is killed and brought back: live again within 5 s, while nginx's received
/// timestamps show no stall.
#[test]
fn two_real_destinations_and_one_comes_back() {
    let ngx = Nginx::rtmp("two");
    let dir = tempfile::tempdir().unwrap();
    let ff_port = free_port();
    let mut ff1 = FfmpegListen::start("ff1", ff_port, &dir.path().join("ff1.flv"));
    let cfg = dest_toml("show", "nginx", &ngx.url("ngkey-0123456789abcdef"), "")
        + &dest_toml("show", "ffmpeg", &ff1.url(), "");
    let s = Server::start("push-two", &cfg);
    let _publisher = Ffmpeg::publish("pub-two", &s.rtmp_url("show"));
    wait_dest_state(&s, "show", "nginx", "live", Duration::from_secs(15));
    wait_dest_state(&s, "show", "ffmpeg", "live", Duration::from_secs(15));
    let d = dest(&s, "show", "nginx");
    assert!(
        !d.to_string().contains("0123456789abcdef"),
        "the API shows a key: {d}"
    );
    wait_frames_sent(&s, "show", "ffmpeg", 200, Duration::from_secs(20));

    // Kill the ffmpeg receiver; bring a new one up on the same port a second later.
    ff1.kill();
    std::thread::sleep(Duration::from_secs(1));
    let nginx_frames_before = dest(&s, "show", "nginx")["frames_sent"].as_u64().unwrap();
    let mut ff2 = FfmpegListen::start("ff2", ff_port, &dir.path().join("ff2.flv"));
    let back = Instant::now();
    wait_dest_state(&s, "show", "ffmpeg", "live", Duration::from_secs(5));
    let took = back.elapsed();
    assert!(took <= Duration::from_secs(5), "live again after {took:?}");
    let d = dest(&s, "show", "ffmpeg");
    assert!(d["reconnects"].as_u64().unwrap() >= 1, "{d}");
    let n = dest(&s, "show", "nginx");
    assert_eq!(n["state"], "live", "{n}");
    assert_eq!(n["reconnects"], 0, "{n}");
    assert!(
        n["frames_sent"].as_u64().unwrap() > nginx_frames_before,
        "{n}"
    );
    wait_frames_sent(&s, "show", "ffmpeg", 200, Duration::from_secs(20));

    // Removing a destination ends its publish cleanly: the receivers finish their files.
    delete_dest(&s, "show", "ffmpeg", None);
    delete_dest(&s, "show", "nginx", None);
    assert!(
        ff2.wait_exit(Duration::from_secs(10)),
        "ffmpeg -listen did not finish"
    );
    std::thread::sleep(Duration::from_millis(500));

    assert_decodes_from_first_byte(&ff2.out, 60);
    // (The first receiver was SIGKILLed: ffmpeg never flushed its file.)
    let rec = ngx.record("ngkey-0123456789abcdef");
    assert_decodes_from_first_byte(&rec, 200);
    let vp = packets(&rec, "v");
    let gap = max_gap(&vp);
    assert!(gap < 0.5, "nginx received a {gap:.3} s timestamp gap");
    let span = vp.last().unwrap().0 - vp[0].0;
    assert!(span > 6.0, "nginx got only {span:.1} s");
    assert!(
        !s.log_text().contains("0123456789abcdef"),
        "the log shows a key"
    );
}

/// What the faults soak saw: a refusing, two stalling and a resetting destination next to a
/// healthy one and the LL-HLS output, for 45 s of a 4 Mb/s stream.
struct Soak {
    /// The state sequence of each destination ("healthy" and the faulty ids).
    seen: std::collections::HashMap<&'static str, Vec<String>>,
    /// Each faulty destination's API object at the end.
    faulty: Vec<(&'static str, Value)>,
    /// Connections the misbehaving peers accepted.
    accepted: u64,
    /// Per second: the healthy destination's state and frames sent, the playlist's next part,
    /// and the relay's RSS (seconds since the start, KiB).
    healthy_states: Vec<String>,
    healthy_frames: Vec<u64>,
    hls: Vec<(u64, u64)>,
    rss: Vec<(f64, u64)>,
    /// The healthy destination's API object at the end, before it was removed.
    healthy: Value,
    /// Video packets (time, keyframe) nginx recorded from the healthy destination.
    nginx_video: Vec<(f64, bool)>,
}

const FAULTY: [&str; 4] = ["refused", "stall-handshake", "stall-live", "reset"];

/// The shared fixture: the soak runs once per test binary, whichever test asks first; the tests
/// check its parts. A failed soak fails every test with its message (it is not run again).
fn soak() -> &'static Soak {
    static SOAK: std::sync::OnceLock<Result<Soak, String>> = std::sync::OnceLock::new();
    let r = SOAK.get_or_init(|| {
        std::panic::catch_unwind(run_soak).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    r.as_ref()
        .unwrap_or_else(|e| panic!("the faults soak failed: {e}"))
}

fn run_soak() -> Soak {
    let ngx = Nginx::rtmp("faults");
    let peers = Peers::new();
    let ngx_addr = format!("127.0.0.1:{}", ngx.port).parse().unwrap();
    let refused_port = free_port(); // nothing listens there
    let stall_hs = peers.stall_in_handshake();
    let stall_live = peers.proxy(ngx_addr, Fault::StallAfter(Duration::from_secs(2)));
    let reset = peers.proxy(ngx_addr, Fault::ResetAfter(Duration::from_secs(2)));
    let cfg = dest_toml("faults", "healthy", &ngx.url("healthy"), "")
        + &dest_toml(
            "faults",
            "refused",
            &format!("rtmp://127.0.0.1:{refused_port}/app/k"),
            "",
        )
        + &dest_toml(
            "faults",
            "stall-handshake",
            &format!("rtmp://127.0.0.1:{stall_hs}/app/k"),
            "",
        )
        + &dest_toml(
            "faults",
            "stall-live",
            &format!("rtmp://127.0.0.1:{stall_live}/app/stall"),
            "",
        )
        + &dest_toml(
            "faults",
            "reset",
            &format!("rtmp://127.0.0.1:{reset}/app/reset"),
            "",
        );
    let s = Server::start("push-faults", &cfg);
    // About 4 Mb/s, so that a stalled destination really has a lot to hold.
    let args = h264_aac_args_with(
        "testsrc2=size=640x360:rate=30,noise=alls=30:allf=t",
        &["-b:v", "4M", "-maxrate", "4M", "-bufsize", "2M"],
    );
    let _publisher = Ffmpeg::spawn("pub-faults", &args, &s.rtmp_url("faults"));
    wait_dest_state(&s, "faults", "healthy", "live", Duration::from_secs(15));
    s.wait_segments("faults", 2, Duration::from_secs(20));

    let mut seen: std::collections::HashMap<&'static str, Vec<String>> = Default::default();
    let (mut rss, mut healthy_states, mut healthy_frames, mut hls) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let t0 = Instant::now();
    let mut next_sample = t0;
    while t0.elapsed() < Duration::from_secs(45) {
        for d in dests(&s, "faults") {
            let id = d["id"].as_str().unwrap().to_string();
            let st = d["state"].as_str().unwrap().to_string();
            let v = seen
                .entry(
                    FAULTY
                        .iter()
                        .find(|x| **x == id)
                        .copied()
                        .unwrap_or("healthy"),
                )
                .or_default();
            if v.last() != Some(&st) {
                v.push(st);
            }
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            rss.push((t0.elapsed().as_secs_f64(), s.rss_kib().expect("RSS")));
            let h = dest(&s, "faults", "healthy");
            healthy_states.push(h["state"].as_str().unwrap_or_default().to_string());
            healthy_frames.push(h["frames_sent"].as_u64().unwrap());
            hls.push(s.playlist("faults").next_part());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("state sequences: {seen:?}");
    let faulty: Vec<(&'static str, Value)> = FAULTY
        .iter()
        .map(|id| (*id, dest(&s, "faults", id)))
        .collect();
    for (id, d) in &faulty {
        eprintln!(
            "{id}: reconnects {} last_error {}",
            d["reconnects"], d["last_error"]
        );
    }
    let healthy = dest(&s, "faults", "healthy");
    // What nginx received from the healthy destination, once it has finished.
    delete_dest(&s, "faults", "healthy", None);
    std::thread::sleep(Duration::from_millis(800));
    let nginx_video = packets(&ngx.record("healthy"), "v");
    Soak {
        seen,
        faulty,
        accepted: peers.accepted.load(std::sync::atomic::Ordering::Relaxed),
        healthy_states,
        healthy_frames,
        hls,
        rss,
        healthy,
        nginx_video,
    }
}

/// A faulty destination went through backoff on its own, with its own error; its `last_error`.
fn backed_off_alone(soak: &Soak, id: &str) -> String {
    let d = &soak.faulty.iter().find(|e| e.0 == id).unwrap().1;
    let states = &soak.seen[id];
    assert!(
        states.iter().any(|x| x == "backoff"),
        "{id} never backed off: {states:?} {d}"
    );
    assert!(d["reconnects"].as_u64().unwrap() >= 1, "{id}: {d}");
    assert!(d["last_error"].is_string(), "{id}: {d}");
    d["last_error"].to_string()
}

#[test]
fn refused_destination_backs_off_with_connection_refused() {
    let err = backed_off_alone(soak(), "refused");
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn destination_stalled_in_the_handshake_backs_off_with_no_answer() {
    let err = backed_off_alone(soak(), "stall-handshake");
    assert!(err.contains("no answer"), "{err}");
}

#[test]
fn destination_that_stops_reading_while_live_backs_off() {
    let soak = soak();
    let err = backed_off_alone(soak, "stall-live");
    let states = &soak.seen["stall-live"];
    assert!(states.iter().any(|x| x == "live"), "stall-live: {states:?}");
    assert!(err.contains("stopped reading"), "{err}");
}

#[test]
fn destination_reset_while_live_backs_off_and_reconnects() {
    let soak = soak();
    backed_off_alone(soak, "reset");
    let states = &soak.seen["reset"];
    assert!(states.iter().any(|x| x == "live"), "reset: {states:?}");
    // The misbehaving peers saw the stalled and reset destinations connect.
    assert!(soak.accepted >= 4, "peers accepted {}", soak.accepted);
}

/// The healthy destination stayed live, advanced every second and lost nothing, and what nginx
/// received from it has no gap.
#[test]
fn healthy_destination_keeps_going_beside_failing_ones() {
    let soak = soak();
    let (states, frames, h) = (&soak.healthy_states, &soak.healthy_frames, &soak.healthy);
    assert!(
        states.iter().all(|s| s == "live"),
        "healthy destination left live: {states:?} {h}"
    );
    assert!(
        frames.windows(2).all(|w| w[1] > w[0]),
        "healthy destination stalled: {frames:?}"
    );
    assert_eq!(h["frames_dropped"], 0, "{h}");
    assert_eq!(h["reconnects"], 0, "{h}");
    let vp = &soak.nginx_video;
    let gap = max_gap(vp);
    assert!(gap < 0.5, "healthy destination: {gap:.3} s gap");
    assert!(vp[0].1, "healthy destination: first packet not a keyframe");
}

#[test]
fn ll_hls_keeps_producing_parts_beside_failing_destinations() {
    let hls = &soak().hls;
    assert!(
        hls.windows(3).all(|w| w[2] > w[0]),
        "HLS stopped advancing: {hls:?}"
    );
}

/// After warm-up, RSS stays within the stalled queue's bound plus slack.
#[test]
fn memory_stays_flat_while_destinations_stall() {
    let rss = &soak().rss;
    let warm: Vec<u64> = rss.iter().filter(|(t, _)| *t >= 8.0).map(|x| x.1).collect();
    let (lo, hi) = (*warm.iter().min().unwrap(), *warm.iter().max().unwrap());
    eprintln!(
        "RSS after warm-up: {lo}..{hi} KiB over {} samples: {warm:?}",
        warm.len()
    );
    assert!(
        hi - lo < 24 * 1024,
        "RSS grew from {lo} KiB to {hi} KiB while destinations stalled: {rss:?}"
    );
}

/// Add a destination through the API while the stream is live: it starts on a keyframe with its
/// sequence headers and decodes from its first byte; remove it: the receiver finishes.
#[test]
fn add_and_remove_through_the_api_while_live() {
    let token = "adm1n-t0ken";
    let s = Server::start_with(
        "push-api",
        &format!("admin_token = \"{token}\""),
        "",
        "",
        &[],
    );
    let _publisher = Ffmpeg::publish("pub-api", &s.rtmp_url("live1"));
    s.wait_state("live1", "publishing", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(2500)); // mid-GOP
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut ff = FfmpegListen::start("ff-api", port, &dir.path().join("api.flv"));
    let path = "/api/v1/streams/live1/destinations";
    let key = "apikey-secret-0123456789";
    let body = format!(r#"{{"id":"rx","url":"rtmp://127.0.0.1:{port}/app/{key}"}}"#);
    let r = api_request(s.http, "POST", path, None, Some(&body)).unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let r = api_request(s.http, "POST", path, Some("wrong"), Some(&body)).unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    let r = api_request(
        s.http,
        "POST",
        path,
        Some(token),
        Some(r#"{"url":"http://x/a/b"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let r = api_request(s.http, "POST", path, Some(token), Some(r#"{"nope":1}"#)).unwrap();
    assert!(
        r.status == 400 || r.status == 422,
        "{} {}",
        r.status,
        r.text()
    );
    let r = api_request(s.http, "POST", path, Some(token), Some(&body)).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("/api/v1/streams/live1/destinations/rx")
    );
    let created = r.json();
    assert_eq!(created["id"], "rx");
    assert_eq!(created["url"], format!("rtmp://127.0.0.1:{port}/app/ap…89"));
    assert!(!r.text().contains(key));
    let r = api_request(s.http, "POST", path, Some(token), Some(&body)).unwrap();
    assert_eq!(r.status, 409, "{}", r.text());

    wait_dest_state(&s, "live1", "rx", "live", Duration::from_secs(10));
    wait_frames_sent(&s, "live1", "rx", 200, Duration::from_secs(20));
    let r = api_request(
        s.http,
        "DELETE",
        "/api/v1/streams/live1/destinations/rx",
        None,
        None,
    )
    .unwrap();
    assert_eq!(r.status, 401);
    delete_dest(&s, "live1", "rx", Some(token));
    assert!(
        ff.wait_exit(Duration::from_secs(10)),
        "ffmpeg -listen did not finish"
    );
    assert!(dests(&s, "live1").is_empty());
    let r = api_request(
        s.http,
        "DELETE",
        "/api/v1/streams/live1/destinations/rx",
        Some(token),
        None,
    )
    .unwrap();
    assert_eq!(r.status, 404);

    assert_decodes_from_first_byte(&ff.out, 60);
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains("deltacast_push_fanout_events_total"),
        "{metrics}"
    );
    assert!(!s.log_text().contains(key), "the log shows the key");
}

/// RTMPS through a TLS-terminating peer (rustls, self-signed): with verification off it works and
/// decodes; with verification on (the default) it is refused and backs off.
#[test]
fn rtmps_to_a_tls_terminating_peer() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut ff = FfmpegListen::start("ff-tls", port, &dir.path().join("tls.flv"));
    let peers = Peers::new();
    let tls_port = peers.tls_terminator(format!("127.0.0.1:{port}").parse().unwrap());
    let url = format!("rtmps://127.0.0.1:{tls_port}/app/key");
    let cfg = dest_toml("sec", "insecure", &url, "tls_verify = false")
        + &dest_toml("sec", "verified", &url, "");
    let s = Server::start("push-tls", &cfg);
    let _publisher = Ffmpeg::publish("pub-tls", &s.rtmp_url("sec"));
    let d = wait_dest_state(&s, "sec", "insecure", "live", Duration::from_secs(15));
    assert_eq!(d["tls"], true);
    assert_eq!(d["tls_verify"], false);
    let t0 = Instant::now();
    let v = loop {
        let v = dest(&s, "sec", "verified");
        if v["last_error"].is_string() {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let e = v["last_error"].as_str().unwrap();
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
    assert!(v["state"] == "backoff" || v["state"] == "connecting", "{v}");
    wait_frames_sent(&s, "sec", "insecure", 200, Duration::from_secs(20));
    delete_dest(&s, "sec", "insecure", None);
    assert!(
        ff.wait_exit(Duration::from_secs(10)),
        "ffmpeg -listen did not finish"
    );
    assert_decodes_from_first_byte(&ff.out, 60);
}
