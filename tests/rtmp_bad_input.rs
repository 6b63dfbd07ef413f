//! Bad input on the RTMP port: each case hits a server that also serves a good ffmpeg publisher
//! on another stream, and afterwards the process must be alive (/healthz 200) and the good
//! stream's playlist must still advance.
//!
//! Needs `ffmpeg` on PATH; the tests fail (not skip) without it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use testkit::*;

const STREAMS: &str = "[hls]\nsegment_target_ms = 1000\n\n\
[[streams]]\nname = \"good\"\nkeys = [\"goodkey\"]\n\n\
[[streams]]\nname = \"bad\"\nkeys = [\"badkey\"]\n";

/// A server with keyed streams and a good publisher on `good` whose playlist already has parts.
fn setup(label: &str) -> (Server, Ffmpeg) {
    require_tool("ffmpeg");
    let server = Server::start(label, STREAMS);
    let ff = Ffmpeg::publish(&format!("{label}-good"), &server.rtmp_url("goodkey"));
    server.wait_segments("good", 1, Duration::from_secs(30));
    (server, ff)
}

/// After the bad input: the process lives, the good stream advances and is still publishing.
fn assert_unharmed(server: &mut Server, good: &mut Ffmpeg, context: &str) {
    server.assert_alive(context);
    server.assert_advancing("good", Duration::from_secs(5), context);
    assert!(
        good.is_running(),
        "the good ffmpeg publisher exited {context}"
    );
    let v = server.api_stream("good").expect("good in the API");
    assert_eq!(v["state"], "publishing", "good {context}: {v}");
    server.assert_alive(context);
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect_timeout(&server.rtmp, Duration::from_secs(5)).expect("connect RTMP");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Plain (non-digest) RTMP handshake: C0 = 3, C1 = time, zero, random; read S0 S1 S2; C2 = S1.
fn handshake(s: &mut TcpStream, rng: &mut Rng) {
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    c0c1.extend_from_slice(&rng.bytes(1528));
    s.write_all(&c0c1).expect("write C0C1");
    let mut s0s1s2 = vec![0u8; 1 + 1536 * 2];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = 0;
    while got < s0s1s2.len() {
        assert!(
            Instant::now() < deadline,
            "no S0S1S2 within 5 s ({got} bytes)"
        );
        match s.read(&mut s0s1s2[got..]) {
            Ok(0) => panic!("server closed during the handshake ({got} bytes)"),
            Ok(n) => got += n,
            Err(e) if would_block(&e) => {}
            Err(e) => panic!("handshake read: {e}"),
        }
    }
    assert_eq!(s0s1s2[0], 3, "S0 version");
    s.write_all(&s0s1s2[1..1537]).expect("write C2");
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Wait until the server closes the connection (EOF or reset); returns how long it took.
fn wait_closed(s: &mut TcpStream, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(start.elapsed()),
            Ok(_) => {}
            Err(e) if would_block(&e) => {}
            Err(_) => return Ok(start.elapsed()), // reset
        }
        if start.elapsed() > timeout {
            return Err(format!("connection still open after {timeout:?}"));
        }
    }
}

/// One RTMP chunk, format 0, on chunk stream `csid` (2..=63), carrying the whole message
/// (the payload must fit in the current chunk size, 128 by default).
fn chunk0(csid: u8, type_id: u8, msg_len: u32, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![csid & 0x3f];
    v.extend_from_slice(&[0, 0, 0]); // timestamp
    v.extend_from_slice(&msg_len.to_be_bytes()[1..]);
    v.push(type_id);
    v.extend_from_slice(&stream_id.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn set_chunk_size(size: u32) -> Vec<u8> {
    chunk0(2, 1, 4, 0, &size.to_be_bytes())
}

/// Write, ignoring errors from a server that already hung up.
fn send(s: &mut TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
}

/// CPU time (user + system, seconds) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state(0) ... utime(11) stime(12).
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The server does not spin after the attack: under 0.5 CPU-seconds per second over 2 s
/// (it serves one 320x240 publisher, which takes a few percent).
fn assert_not_spinning(server: &Server, context: &str) {
    let c0 = cpu_seconds(server.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let rate = (cpu_seconds(server.pid()) - c0) / t0.elapsed().as_secs_f64();
    eprintln!("server CPU {context}: {:.0} % of a core", rate * 100.0);
    assert!(
        rate < 0.5,
        "server uses {:.0} % of a core {context}",
        rate * 100.0
    );
}

#[test]
fn random_bytes_instead_of_handshake() {
    let (mut server, mut good) = setup("rand-hs");
    let mut rng = Rng::new(1);
    for _ in 0..3 {
        let mut s = connect(&server);
        let mut junk = rng.bytes(4096);
        junk[0] = 0x99; // not version 3
        send(&mut s, &junk);
        let took = wait_closed(&mut s, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("garbage handshake: {e}"));
        eprintln!(
            "garbage handshake closed after {:.1} ms",
            took.as_secs_f64() * 1e3
        );
    }
    assert_unharmed(
        &mut server,
        &mut good,
        "after garbage instead of a handshake",
    );
}

#[test]
fn random_bytes_after_handshake() {
    let (mut server, mut good) = setup("rand-after");
    let mut rng = Rng::new(2);
    for round in 0..3 {
        let mut s = connect(&server);
        handshake(&mut s, &mut rng);
        send(&mut s, &rng.bytes(64 * 1024));
        // Closed for a parse error at once, or at the latest by the handshake/connect timeout
        // (3 s in the test config).
        let took = wait_closed(&mut s, Duration::from_secs(8))
            .unwrap_or_else(|e| panic!("random bytes after the handshake, round {round}: {e}"));
        eprintln!(
            "random bytes after handshake: closed after {:.1} ms",
            took.as_secs_f64() * 1e3
        );
    }
    assert_not_spinning(&server, "after random bytes");
    assert_unharmed(
        &mut server,
        &mut good,
        "after random bytes following the handshake",
    );
}

#[test]
fn truncated_chunk_then_close_and_slowloris() {
    let (mut server, mut good) = setup("truncated");
    let mut rng = Rng::new(3);
    // A command message announcing 1000 bytes, 50 sent, then the client goes away.
    let mut s = connect(&server);
    handshake(&mut s, &mut rng);
    let mut msg = chunk0(3, 20, 1000, 0, &[]);
    msg.extend_from_slice(&rng.bytes(50));
    send(&mut s, &msg);
    let _ = s.shutdown(Shutdown::Both);
    drop(s);
    // The same, but the client stays: the server must drop it by its timeout.
    let mut s = connect(&server);
    handshake(&mut s, &mut rng);
    send(&mut s, &msg);
    let took = wait_closed(&mut s, Duration::from_secs(10)).unwrap_or_else(|e| {
        panic!("a peer stuck in a truncated message (handshake_timeout_ms = 3000): {e}")
    });
    eprintln!(
        "truncated message held open: closed by the server after {:.1} s",
        took.as_secs_f64()
    );
    // A slowloris handshake: C0 and half of C1, then nothing.
    let mut s = connect(&server);
    let mut half = vec![3u8];
    half.extend_from_slice(&rng.bytes(700));
    send(&mut s, &half);
    let took = wait_closed(&mut s, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("slowloris handshake (handshake_timeout_ms = 3000): {e}"));
    eprintln!(
        "slowloris handshake: closed after {:.1} s",
        took.as_secs_f64()
    );
    assert_unharmed(&mut server, &mut good, "after truncated chunks");
}

#[test]
fn absurd_chunk_sizes() {
    let (mut server, mut good) = setup("chunk-size");
    let mut rng = Rng::new(4);
    let rss0 = server.rss_kib().unwrap_or(0);

    // 0x7FFFFFFF, then a message announcing 16 MiB − 1 of which 1 MiB is sent.
    let mut s = connect(&server);
    handshake(&mut s, &mut rng);
    send(&mut s, &set_chunk_size(0x7FFF_FFFF));
    send(&mut s, &chunk0(3, 20, 0xFF_FFFF, 0, &[]));
    for _ in 0..16 {
        send(&mut s, &rng.bytes(64 * 1024));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss1 = server.rss_kib().unwrap_or(0);
    eprintln!("RSS before {rss0} KiB, with a 16 MiB message pending {rss1} KiB");
    assert!(
        rss1 < rss0 + 128 * 1024,
        "memory grew from {rss0} to {rss1} KiB for one pending message"
    );
    drop(s);

    // 0: invalid; the connection must end (error or timeout), without a busy loop.
    let mut s = connect(&server);
    handshake(&mut s, &mut rng);
    send(&mut s, &set_chunk_size(0));
    send(&mut s, &chunk0(3, 20, 100, 0, &rng.bytes(100)));
    let took = wait_closed(&mut s, Duration::from_secs(8))
        .unwrap_or_else(|e| panic!("after Set Chunk Size 0: {e}"));
    eprintln!(
        "Set Chunk Size 0: closed after {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    // A size with the reserved top bit set.
    let mut s = connect(&server);
    handshake(&mut s, &mut rng);
    send(&mut s, &set_chunk_size(0xFFFF_FFFF));
    send(&mut s, &chunk0(3, 20, 100, 0, &rng.bytes(100)));
    let _ = wait_closed(&mut s, Duration::from_secs(8));
    drop(s);

    assert_not_spinning(&server, "after absurd chunk sizes");
    assert_unharmed(&mut server, &mut good, "after absurd chunk sizes");
}

#[test]
fn publish_with_unknown_key_is_refused() {
    let (mut server, mut good) = setup("unknown-key");
    let mut ff = Ffmpeg::publish("unknown-key", &server.rtmp_url("wrongkey"));
    let status = ff.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "ffmpeg publishing with an unknown key still runs after 15 s:\n{}",
            ff.log_tail(20)
        )
    });
    assert!(!status.success(), "ffmpeg with an unknown key exited 0");
    eprintln!(
        "unknown key: ffmpeg ended with {status}; its its errors:\n{}",
        ff.error_lines()
    );
    assert!(
        server.api_stream("wrongkey").is_none(),
        "a stream named after the key exists"
    );
    let list = server.api_streams();
    for s in list.as_array().expect("array") {
        if s["name"] != "good" {
            assert_ne!(s["state"], "publishing", "{} publishes: {s}", s["name"]);
        }
        assert!(
            !s.to_string().contains("wrongkey"),
            "the API shows the rejected key: {s}"
        );
    }
    let log = server.log_text().to_ascii_lowercase();
    assert!(log.contains("key"), "no log line about the refused key");
    assert_unharmed(
        &mut server,
        &mut good,
        "after a publish with an unknown key",
    );
}

#[test]
fn unsupported_video_codec_is_reported() {
    let (mut server, mut good) = setup("codec");
    // Sorenson H.263 (FLV codec id 2), no audio: nothing HLS can carry.
    let args: Vec<String> = [
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=30",
        "-c:v",
        "flv",
        "-an",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut ff = Ffmpeg::spawn("codec-flv1", &args, &server.rtmp_url("badkey"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let names = [
        "263",
        "sorenson",
        "flv1",
        "spark",
        "codec id 2",
        "codecid 2",
        "codec 2",
    ];
    let v = loop {
        let v = server.api_stream("bad");
        let err_text = v
            .as_ref()
            .map(|v| format!("{} {}", v["last_error"], v["track_errors"]).to_ascii_lowercase())
            .unwrap_or_default();
        let named = names.iter().any(|n| err_text.contains(n));
        if named && v.as_ref().is_some_and(|v| v["state"] != "publishing") {
            break v.unwrap();
        }
        if Instant::now() > deadline {
            panic!(
                "after 15 s of FLV1 video the API shows no error naming the codec with state != publishing: {v:?}\nffmpeg running: {}",
                ff.is_running()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "unsupported codec: state {}, last_error {}, track_errors {}",
        v["state"], v["last_error"], v["track_errors"]
    );
    assert!(
        server.get("/hls/bad/index.m3u8").status != 200
            || server.playlist("bad").segments.is_empty(),
        "HLS lists segments for a stream with an unsupported codec"
    );
    let _ = ff.wait_exit(Duration::from_secs(5));
    assert_unharmed(&mut server, &mut good, "after an unsupported codec");
}

#[test]
fn second_publisher_on_a_live_stream_is_refused() {
    let (mut server, mut good) = setup("second-pub");
    let before = server.playlist("good");
    let mut ff = Ffmpeg::publish("second-pub-2", &server.rtmp_url("goodkey"));
    let status = ff.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "a second ffmpeg on a live stream still runs after 15 s:\n{}",
            ff.log_tail(20)
        )
    });
    assert!(!status.success(), "the second publisher exited 0");
    eprintln!(
        "second publisher: ffmpeg ended with {status}; its errors:\n{}",
        ff.error_lines()
    );
    assert_unharmed(
        &mut server,
        &mut good,
        "after a second publisher was refused",
    );
    let after = server.playlist("good");
    assert!(after.next_part() > before.next_part());
    assert!(
        !after.has_discontinuity(),
        "the first publisher was interrupted (discontinuity):\n{}",
        after.text
    );
    let v = server.api_stream("good").unwrap();
    let err = v["last_error"].to_string().to_ascii_lowercase();
    eprintln!("API after the refused second publisher: last_error {err}");
}

/// Public API reads do not show where publishers connect from: the publisher's IP:port and
/// `last_error` (which names a refused publisher's address) are for admins only. The admin token
/// works with the Bearer scheme in any case, on reads and on admin-only calls.
#[test]
fn api_shows_publisher_addresses_to_admins_only() {
    require_tool("ffmpeg");
    let token = "adm-5ecret-t0ken";
    let server = Server::start_with(
        "api-admin",
        &format!("admin_token = \"{token}\""),
        "",
        STREAMS,
        &[],
    );
    let _good = Ffmpeg::publish("api-admin-good", &server.rtmp_url("goodkey"));
    server.wait_state("good", "publishing", Duration::from_secs(15));
    // A second publisher on the live stream is refused: its address goes into last_error.
    let mut second = Ffmpeg::publish("api-admin-second", &server.rtmp_url("goodkey"));
    let _ = second.wait_exit(Duration::from_secs(15));
    let get = |path: &str, auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        http_request_with(server.http, "GET", path, &h, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    let json = |r: &Resp| -> serde_json::Value {
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin_view = loop {
        let v = json(&get(
            "/api/v1/streams/good",
            Some(&format!("Bearer {token}")),
        ));
        if v["last_error"].is_string() || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "admin sees publisher {} and last_error {}",
        admin_view["publisher"], admin_view["last_error"]
    );
    assert!(
        admin_view["publisher"]
            .as_str()
            .is_some_and(|p| p.contains("127.0.0.1")),
        "{admin_view}"
    );
    assert!(
        admin_view["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.1")),
        "the refused publisher is in last_error: {admin_view}"
    );
    for auth in [None, Some("Bearer wrong"), Some("Basic YWRtaW4=")] {
        for path in ["/api/v1/streams/good", "/api/v1/streams"] {
            let r = get(path, auth);
            let v = json(&r);
            let one = if v.is_array() {
                v.as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["name"] == "good")
                    .cloned()
                    .unwrap_or_else(|| panic!("good not listed: {v}"))
            } else {
                v
            };
            assert_eq!(one["state"], "publishing", "{one}");
            assert!(one["tracks"].is_array(), "public fields stay: {one}");
            for k in ["publisher", "last_error"] {
                assert!(
                    one.get(k).is_none(),
                    "{path} with {auth:?} shows '{k}': {one}"
                );
            }
            assert!(
                !r.text().contains("127.0.0.1"),
                "{path} with {auth:?} names an address: {}",
                r.text()
            );
        }
    }
    // Any case of the scheme makes an admin read.
    let v = json(&get(
        "/api/v1/streams/good",
        Some(&format!("bearer {token}")),
    ));
    assert!(v["publisher"].is_string(), "{v}");
}

/// The admin token's `Authorization` scheme is case-insensitive (RFC 9110 §11.1), as on WHIP.
#[test]
fn admin_api_takes_the_bearer_scheme_in_any_case() {
    let token = "adm-5ecret-t0ken";
    let server = Server::start_with(
        "api-bearer",
        &format!("admin_token = \"{token}\""),
        "",
        STREAMS,
        &[],
    );
    let get = |auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let path = "/api/v1/streams/good/ingest";
        http_request_with(server.http, "GET", path, &h, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = get(Some(&format!("{scheme} {token}")));
        assert_eq!(
            r.status,
            200,
            "admin-only GET with '{scheme}': {}",
            r.text()
        );
    }
    assert_eq!(get(None).status, 401);
    assert_eq!(get(Some(&format!("Basic {token}"))).status, 401);
    assert_eq!(get(Some("bearer wrong")).status, 403);
}
