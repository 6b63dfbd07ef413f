//! Simulcast end to end: a str0m WHIP publisher sends three rid layers (ffmpeg/libx264 clips at
//! 640x360 ≈ 900 kb/s, 320x180 ≈ 250 kb/s, 160x90 ≈ 80 kb/s) to the real binary.
//!
//! - LL-HLS (and RTMP) carry the best layer: the HLS segment decodes with ffprobe at 640x360.
//! - A WHEP viewer on loopback stays on the best layer; a WHEP viewer behind a 400 kb/s
//!   bottleneck (a UDP relay in this process with a drop-tail queue) is moved by the relay's
//!   bandwidth estimate (str0m TWCC) to a lower layer, switching at that layer's keyframe, and
//!   keeps receiving video there. Which layer a viewer gets is read from the SPS in the
//!   keyframes it receives (each clip has its own SPS) and from the API's viewers by layer.
//!
//! Two SFU workers: the publisher sits on one and the viewers on the other (the least-loaded
//! rule counts a publisher as 50 viewers), so layer switches' keyframe requests cross workers.
//!
//! Needs `ffmpeg` (libx264) and `ffprobe`; fails (never skips) without them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::webrtc::{make_video, sps_of, WhipPublisher};
use testkit::webrtc::{udp_candidate_port, Bottleneck, WhepClient};
use testkit::{probe_stream, require_tool, Server};

fn config(io: &str) -> String {
    format!(
        "[sfu]\nio = \"{io}\"\nworkers = 2\nbind_ip = \"127.0.0.1\"\nport_base = 0\n\
         ice_tcp_port_base = 0\nidle_timeout_ms = 5000\nconnect_timeout_ms = 5000\n\n\
         [[streams]]\nname = \"live\"\nkeys = [\"livekey\"]\n"
    )
}

/// Which layer (0 = h, 1 = m, 2 = l) the SPS of a received keyframe belongs to.
fn layer_of(sps: &[u8], layers: &[Vec<u8>]) -> Option<usize> {
    layers.iter().position(|s| s.as_slice() == sps)
}

/// Which layer the newest keyframe a client got belongs to.
fn current_layer(c: &WhepClient, spss: &[Vec<u8>]) -> Option<usize> {
    c.frames
        .iter()
        .rev()
        .find_map(|f| f.sps.as_deref())
        .and_then(|s| layer_of(s, spss))
}

/// Bandwidth estimation reads delay: the tests of this file must not share the two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

type Clip = Arc<Vec<Vec<u8>>>;

/// The three layer clips (h 640x360, m 320x180, l 160x90) and their SPS, made once per binary.
fn clips() -> (Clip, Clip, Clip, Vec<Vec<u8>>) {
    static CLIPS: std::sync::OnceLock<(Clip, Clip, Clip, Vec<Vec<u8>>)> =
        std::sync::OnceLock::new();
    CLIPS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let dir = dir.path();
            let h = Arc::new(make_video(dir, "h", "640x360", Some(900), 6));
            let m = Arc::new(make_video(dir, "m", "320x180", Some(250), 6));
            let l = Arc::new(make_video(dir, "l", "160x90", Some(80), 6));
            let spss = vec![sps_of(&h), sps_of(&m), sps_of(&l)];
            assert!(
                spss[0] != spss[1] && spss[1] != spss[2],
                "the clips must have distinct SPS"
            );
            (h, m, l, spss)
        })
        .clone()
}

/// The shared fixture: the relay (two SFU workers) on driver `io` with a str0m WHIP publisher
/// sending the three layers, once the relay sees all three. Holds the serial lock: bandwidth
/// estimation reads delay, so the tests of this file do not share the cores.
struct Simulcast {
    server: Server,
    publisher: WhipPublisher,
    spss: Vec<Vec<u8>>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Simulcast {
    fn start(io: &'static str, label: &str) -> Simulcast {
        let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        require_tool("ffprobe");
        let server = Server::start(&format!("simulcast-{label}-{io}"), &config(io));
        let http = server.http;
        let (h, m, l, spss) = clips();

        let publisher = WhipPublisher::start_layers(
            http,
            "live",
            "livekey",
            vec![(Some("h"), h), (Some("m"), m), (Some("l"), l)],
            Arc::new(Vec::new()),
        )
        .unwrap_or_else(|r| panic!("WHIP POST: {r:?}\n{}", server.log_tail(40)));
        assert!(
            publisher.answer.contains("a=simulcast:recv"),
            "the answer accepts the simulcast layers: {}",
            publisher.answer
        );
        assert!(
            publisher.wait_connected(Duration::from_secs(10)),
            "WHIP publisher did not connect\n{}",
            server.log_tail(40)
        );
        server.wait_state("live", "publishing", Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = server.api_stream("live").expect("stream in API");
            if st["video_layers"] == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the relay does not see 3 layers: {st}\n{}",
                server.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Simulcast {
            server,
            publisher,
            spss,
            _serial: guard,
        }
    }
}

testkit::on_both_drivers!(ll_hls_carries_the_best_layer, best_layer_in_hls);
testkit::on_both_drivers!(
    simulcast_layers_follow_each_viewers_bandwidth,
    layers_follow_bandwidth
);

/// LL-HLS (the single-rendition outputs) carries the best layer, decodable at 640x360.
fn best_layer_in_hls(io: &'static str) {
    // Bound by name, so the publisher and the serial lock live to the end of the test.
    let Simulcast {
        server,
        publisher: _publisher,
        _serial,
        ..
    } = Simulcast::start(io, "hls");
    // ── LL-HLS carries the best layer ──
    let pl = server.wait_segments("live", 1, Duration::from_secs(20));
    let seg = pl.segments.last().unwrap().clone();
    let probe = server.probe_segment("live", &pl, &seg);
    println!("LL-HLS segment: {probe}");
    let v = probe_stream(&probe, "video").expect("video stream in the segment");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(640), Some(360))
    );
    assert!(
        v["nb_read_frames"]
            .as_str()
            .unwrap_or("0")
            .parse::<u32>()
            .unwrap()
            >= 25
    );
}

/// A viewer on loopback stays on the best layer; one behind a 400 kb/s bottleneck is moved down
/// by the relay's bandwidth estimate and keeps playing, and returns up when the link opens.
fn layers_follow_bandwidth(io: &'static str) {
    let Simulcast {
        server,
        publisher,
        spss,
        _serial,
    } = Simulcast::start(io, "bwe");
    let http = server.http;
    // ── two viewers: one direct, one behind a 400 kb/s bottleneck ──
    let mut fast = WhepClient::connect(http, "live").unwrap_or_else(|r| panic!("WHEP: {r:?}"));
    let (mut slow, link) =
        WhepClient::connect_through(http, "live", |sfu| Some(Bottleneck::start(sfu, 400, 150)))
            .unwrap_or_else(|r| panic!("WHEP (bottleneck): {r:?}"));
    let link = link.expect("bottleneck started");
    let publisher_port = udp_candidate_port(&publisher.answer).expect("publisher's candidate");
    assert_ne!(
        fast.server_port(),
        publisher_port,
        "the viewers should sit on the other worker than the publisher"
    );
    let t0 = Instant::now();
    let window = Duration::from_secs(25);
    // Drive both clients in turns (each run() returns after 50 ms).
    let mut slow_switched_at = None;
    while t0.elapsed() < window {
        fast.run(Duration::from_millis(50), |_| false);
        slow.run(Duration::from_millis(50), |_| false);
        let on_lower = current_layer(&slow, &spss).is_some_and(|layer| layer > 0);
        if on_lower && slow_switched_at.is_none() {
            slow_switched_at = Some(t0.elapsed());
        }
        // Both settled, and the slow viewer has kept playing on its layer for 3 s.
        if slow_switched_at.is_some_and(|t| t0.elapsed() > t + Duration::from_secs(3)) {
            break;
        }
    }
    let layers_seen = |c: &WhepClient| -> Vec<usize> {
        let mut v: Vec<usize> = c
            .frames
            .iter()
            .filter_map(|f| f.sps.as_deref())
            .filter_map(|s| layer_of(s, &spss))
            .collect();
        v.dedup();
        v
    };
    let st = server.api_stream("live").unwrap();
    println!(
        "[{io}] fast viewer: {} frames, layers {:?}; slow viewer: {} frames, layers {:?}, switched \
         after {:?}; bottleneck forwarded {} dropped {}; API viewers: {}",
        fast.frames.len(),
        layers_seen(&fast),
        slow.frames.len(),
        layers_seen(&slow),
        slow_switched_at,
        link.forwarded.load(Ordering::Relaxed),
        link.dropped.load(Ordering::Relaxed),
        st["viewers"]
    );
    // The unconstrained viewer started on the best layer (a loaded machine can make even
    // loopback look congested for a moment; it must be back on layer 0 at the end).
    assert_eq!(layers_seen(&fast).first(), Some(&0));
    let slow_layers = layers_seen(&slow);
    let slow_now = *slow_layers.last().expect("slow viewer got keyframes");
    assert!(
        slow_now > 0,
        "the viewer behind 400 kb/s should have moved to a lower layer: {slow_layers:?}\n{}",
        server.log_tail(60)
    );
    // It keeps playing on that layer: frames in the last second.
    let recent = slow
        .frames
        .iter()
        .filter(|f| f.at.elapsed() < Duration::from_secs(1))
        .count();
    assert!(
        recent >= 15,
        "slow viewer stalled: {recent} frames in the last second"
    );
    // The API agrees: one viewer on layer 0, one below.
    let by_layer: Vec<u64> = st["viewers"]["webrtc_by_layer"]
        .as_array()
        .unwrap_or_else(|| panic!("webrtc_by_layer in {st}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(by_layer.iter().sum::<u64>(), 2, "{by_layer:?}");
    assert!(by_layer[1..].iter().sum::<u64>() >= 1, "{by_layer:?}");

    let metrics = String::from_utf8_lossy(&server.get("/metrics").body).into_owned();
    let switches: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("deltacast_sfu_layer_switches_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(switches >= 1.0, "layer switches in /metrics:\n{metrics}");

    // ── the link opens up: BWE probes upwards and the viewer returns to the best layer ──
    link.kbps.store(20_000, Ordering::Relaxed);
    let t1 = Instant::now();
    let mut back_at = None;
    while t1.elapsed() < Duration::from_secs(45) {
        fast.run(Duration::from_millis(50), |_| false);
        slow.run(Duration::from_millis(50), |_| false);
        if current_layer(&slow, &spss) == Some(0) && current_layer(&fast, &spss) == Some(0) {
            back_at = Some(t1.elapsed());
            break;
        }
    }
    println!(
        "[{io}] link opened to 20 Mb/s: both on layer 0 after {back_at:?}; layers {:?} / {:?}",
        layers_seen(&slow),
        layers_seen(&fast)
    );
    assert!(
        back_at.is_some(),
        "the viewer did not return to the best layer within 45 s of the link opening\n{}",
        server.log_tail(40)
    );
}
