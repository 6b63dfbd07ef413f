//! The HTTP listener under hostile and slow clients (issue 9): slowloris heads and idle
//! keep-alive connections are closed on their deadlines, /healthz stays fast meanwhile, huge
//! headers get 431 without growing memory, a huge declared body gets 413 at once and a stalled
//! one 408, connection caps (total, per IP, and half the open-files limit) refuse cheaply and
//! leave RTMP its descriptors, and blocking LL-HLS requests still outlive every deadline.
//!
//! Clients come from several 127.0.0.0/8 addresses so the per-IP cap can be told apart from the
//! total one. Figures are printed (`--nocapture`) for docs/BENCHMARKS.md.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use testkit::*;

/// A TCP connection to `to` from the loopback address `src` (127.x.y.z).
fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    let from: SocketAddr = format!("{src}:0").parse().unwrap();
    s.bind(&from.into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {to} from {src}: {e}"));
    s.into()
}

/// What a non-blocking poll of a client socket found.
#[derive(Debug, PartialEq)]
enum Seen {
    Open,
    /// The server closed it (EOF or reset).
    Closed,
}

/// Read whatever is there without blocking; appends it to `got`.
fn poll_socket(s: &mut TcpStream, got: &mut Vec<u8>) -> Seen {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Seen::Closed,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Seen::Open,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Seen::Closed,
        }
    }
}

/// Block until the server closes `s` or `within` passes; returns when it closed.
fn wait_closed(s: &mut TcpStream, within: Duration) -> Option<Instant> {
    s.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + within;
    let mut sink = Vec::new();
    while Instant::now() < deadline {
        if poll_socket(s, &mut sink) == Seen::Closed {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The value of one sample line in a Prometheus text exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn healthz_ms(server: &Server) -> f64 {
    let r = http_get(server.http, "/healthz", Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("/healthz failed: {e}\n{}", server.log_tail(30)));
    assert_eq!(r.status, 200, "/healthz: {}", r.text());
    ms(r.elapsed)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// 500 slowloris connections (a partial head, then one more header line every 500 ms) from five
/// addresses, under the 1,100 open-files limit of the report: every one is closed by the 2 s
/// header deadline however it trickles, and /healthz answers within 100 ms throughout.
#[test]
fn slowloris_closed_by_header_timeout_while_healthz_stays_fast() {
    const N: usize = 500;
    let server = Server::start_with_nofile(
        "slowloris",
        "header_read_timeout_ms = 2000\nidle_timeout_ms = 2000",
        "",
        1_100,
    );
    let mut conns = Vec::with_capacity(N);
    let opened = Instant::now();
    for i in 0..N {
        let mut s = connect_from(&format!("127.0.0.{}", 2 + i / 100), server.http);
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        s.set_nonblocking(true).unwrap();
        conns.push((s, None::<Instant>));
    }
    let open_took = opened.elapsed();
    let mut lat = Vec::new();
    let mut last_trickle = Instant::now();
    let stop = opened + Duration::from_secs(8);
    let mut sink = Vec::new();
    while Instant::now() < stop && conns.iter().any(|(_, c)| c.is_none()) {
        lat.push(healthz_ms(&server));
        let trickle = last_trickle.elapsed() > Duration::from_millis(500);
        if trickle {
            last_trickle = Instant::now();
        }
        for (s, closed) in conns.iter_mut().filter(|(_, c)| c.is_none()) {
            if poll_socket(s, &mut sink) == Seen::Closed
                || (trickle && s.write_all(b"X-Slow: 1\r\n").is_err())
            {
                *closed = Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let still_open = conns.iter().filter(|(_, c)| c.is_none()).count();
    assert_eq!(
        still_open,
        0,
        "{still_open} of {N} slowloris connections still open {:?} after they connected",
        opened.elapsed()
    );
    let first_close = conns.iter().filter_map(|(_, c)| *c).min().unwrap() - opened;
    let last_close = conns.iter().filter_map(|(_, c)| *c).max().unwrap() - opened;
    let max = lat.iter().cloned().fold(0.0, f64::max);
    let n = lat.len();
    let med = median(&mut lat);
    eprintln!(
        "slowloris: {N} connections opened in {:.0} ms, closed {:.2}..{:.2} s after; \
         /healthz x{n}: median {med:.2} ms, max {max:.2} ms",
        ms(open_took),
        first_close.as_secs_f64(),
        last_close.as_secs_f64(),
    );
    assert!(
        first_close >= Duration::from_millis(1_500),
        "a slow connection was closed after {first_close:?}, before the 2 s header deadline"
    );
    // Within 100 ms throughout; this machine is shared, so one sample in 50 may be late from
    // scheduling alone, but never by a second (a server out of descriptors or blocked is).
    let late = lat.iter().filter(|&&l| l >= 100.0).count();
    assert!(
        late <= (n / 50).max(1) && max < 1_000.0 && med < 20.0,
        "/healthz: {late} of {n} answers took 100 ms or more (median {med:.1} ms, max {max:.1} ms) \
         while {N} slow connections were open"
    );
    let m = server.get("/metrics").text();
    assert!(
        metric(&m, "deltacast_http_timeouts_total{phase=\"header\"}") >= N as f64,
        "header timeouts not counted:\n{m}"
    );
    assert_eq!(metric(&m, "deltacast_http_connections_limit"), 550.0);
}

/// A kept-alive connection is reused within the idle timeout and closed by the server after it.
#[test]
fn idle_keepalive_connection_is_closed() {
    let server = Server::start_with("idle", "idle_timeout_ms = 1000", "", "", &[]);
    let mut s = TcpStream::connect(server.http).unwrap();
    for round in 0..2 {
        let r = exchange(
            &mut s,
            "GET",
            "/healthz",
            &[],
            false,
            Instant::now(),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("request {round} on the kept-alive connection: {e}"));
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(400));
    }
    let idle_from = Instant::now() - Duration::from_millis(400);
    let closed = wait_closed(&mut s, Duration::from_secs(8))
        .expect("idle keep-alive connection still open 8 s after its last response");
    let after = closed - idle_from;
    eprintln!("idle keep-alive connection closed {after:?} after its last response");
    assert!(
        after >= Duration::from_millis(800),
        "closed after {after:?}, before the 1 s idle timeout"
    );
    let m = server.get("/metrics").text();
    assert!(metric(&m, "deltacast_http_timeouts_total{phase=\"idle\"}") >= 1.0);
}

/// A head larger than `max_request_bytes` (64 KiB) gets 431; 300 connections that each send a
/// 400 KB header and stop do not grow the server's memory by more than a few MB.
#[test]
fn oversized_headers_refused_and_memory_stays_bounded() {
    let server = Server::start("big-headers", "");
    let pad = |n: usize| "a".repeat(n);
    let ok = http_request_with(
        server.http,
        "GET",
        "/healthz",
        &[("X-Pad", &pad(32 * 1024))],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(ok.status, 200, "a 32 KB header is within the limit");
    let big = http_request_with(
        server.http,
        "GET",
        "/healthz",
        &[("X-Pad", &pad(100 * 1024))],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(big.status, 431, "a 100 KB header: {}", big.text());

    // Let the server settle, then the attack.
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = server.rss_kib().unwrap();
    const N: usize = 300;
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
        pad(400_000)
    );
    let mut conns: Vec<(TcpStream, usize, Vec<u8>, bool)> = (0..N)
        .map(|i| {
            let s = connect_from(&format!("127.0.0.{}", 2 + i / 100), server.http);
            s.set_nonblocking(true).unwrap();
            (s, 0, Vec::new(), false)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut peak = rss_before;
    while Instant::now() < deadline && conns.iter().any(|c| !c.3) {
        for (s, sent, got, closed) in conns.iter_mut().filter(|c| !c.3) {
            if *sent < head.len() {
                match s.write(&head.as_bytes()[*sent..]) {
                    Ok(n) => *sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => *sent = head.len(),
                }
            }
            if poll_socket(s, got) == Seen::Closed {
                *closed = true;
            }
        }
        peak = peak.max(server.rss_kib().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    let rss_after = server.rss_kib().unwrap();
    peak = peak.max(rss_after);
    let refused = conns
        .iter()
        .filter(|c| c.2.starts_with(b"HTTP/1.1 431"))
        .count();
    let open = conns.iter().filter(|c| !c.3).count();
    eprintln!(
        "400 KB headers x{N}: {refused} answered 431, {open} still open; server RSS {} MB before, \
         peak {} MB, {} MB after",
        rss_before / 1024,
        peak / 1024,
        rss_after / 1024
    );
    assert_eq!(open, 0, "the server kept {open} oversized heads open");
    assert!(
        refused > N / 2,
        "only {refused} of {N} oversized heads were answered 431"
    );
    assert!(
        peak < rss_before + 40 * 1024,
        "server RSS grew from {rss_before} KiB to {peak} KiB"
    );
    let m = server.get("/metrics").text();
    assert!(metric(&m, "deltacast_http_too_large_total{part=\"head\"}") >= refused as f64);
}

/// `Content-Length: 99999999999` with no body gets 413 at once; a body that stops arriving gets
/// 408 at the body deadline.
#[test]
fn oversized_and_stalled_bodies() {
    let server = Server::start_with("bodies", "body_read_timeout_ms = 1000", "", "", &[]);
    let t = Instant::now();
    let r = http_request_with(
        server.http,
        "POST",
        "/whep/any",
        &[
            ("Content-Type", "application/sdp"),
            ("Content-Length", "99999999999"),
        ],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("Content-Length 99999999999 got no answer: {e}"));
    eprintln!(
        "Content-Length 99999999999: {} in {:.1} ms",
        r.status,
        ms(t.elapsed())
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    let mut s = TcpStream::connect(server.http).unwrap();
    s.write_all(
        b"POST /whep/any HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n\
          Content-Length: 100\r\n\r\nv=0\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    eprintln!(
        "stalled body: {:?} after {:?}",
        text.lines().next(),
        t.elapsed()
    );
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "stalled body got: {text:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    let m = server.get("/metrics").text();
    assert!(metric(&m, "deltacast_http_timeouts_total{phase=\"body\"}") >= 1.0);
    assert!(metric(&m, "deltacast_http_too_large_total{part=\"body\"}") >= 1.0);
}

/// Read the answer to a connection refused at a cap: a 503 with Retry-After, then the close.
fn assert_refused(mut s: TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 503") && text.contains("Retry-After"),
        "{what} was not refused: {text:?}"
    );
}

/// With 5 connections per address and 8 in all: connection 6 from one address is refused,
/// another address still gets through until the total is reached, and a freed place is reused.
#[test]
fn per_ip_and_total_caps_refuse_cheaply() {
    let server = Server::start_with(
        "caps",
        "max_connections = 8\nmax_connections_per_ip = 5\nheader_read_timeout_ms = 30000",
        "",
        "",
        &[],
    );
    let mut held: Vec<TcpStream> = (0..5)
        .map(|_| connect_from("127.0.0.2", server.http))
        .collect();
    // The server admits asynchronously: make sure the five are counted before the sixth.
    std::thread::sleep(Duration::from_millis(300));
    assert_refused(
        connect_from("127.0.0.2", server.http),
        "connection 6 from 127.0.0.2",
    );
    let mut other = connect_from("127.0.0.3", server.http);
    let r = exchange(
        &mut other,
        "GET",
        "/healthz",
        &[],
        false,
        Instant::now(),
        Duration::from_secs(5),
    )
    .expect("a connection from 127.0.0.3 is served");
    assert_eq!(r.status, 200);
    held.push(other);
    held.push(connect_from("127.0.0.4", server.http));
    held.push(connect_from("127.0.0.5", server.http));
    std::thread::sleep(Duration::from_millis(300));
    assert_refused(
        connect_from("127.0.0.6", server.http),
        "connection 9 (over the total of 8)",
    );
    held.truncate(5);
    std::thread::sleep(Duration::from_millis(300));
    let m = http_get(server.http, "/metrics", Duration::from_secs(5))
        .expect("a freed place is reused")
        .text();
    assert_eq!(
        metric(
            &m,
            "deltacast_http_connections_refused_total{cap=\"per_ip\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "deltacast_http_connections_refused_total{cap=\"total\"}"
        ),
        1.0
    );
}

/// The report: with the open-files limit at 1,100, about 1,090 idle HTTP connections took the
/// descriptors RTMP needed. Now HTTP stops at half the limit and RTMP still shakes hands.
#[test]
fn http_flood_cannot_starve_rtmp() {
    const N: usize = 1_100;
    let server = Server::start_with_nofile("fd-flood", "header_read_timeout_ms = 60000", "", 1_100);
    let flood: Vec<TcpStream> = (0..N)
        .map(|i| connect_from(&format!("127.0.1.{}", 1 + i / 100), server.http))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // RTMP handshake: C0+C1 in, S0+S1+S2 (1 + 1536 + 1536 bytes) out.
    let mut rtmp = TcpStream::connect(server.rtmp).unwrap();
    rtmp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 1536]);
    rtmp.write_all(&c0c1).unwrap();
    let mut s0s1 = vec![0u8; 1537];
    rtmp.read_exact(&mut s0s1)
        .unwrap_or_else(|e| panic!("RTMP handshake failed under the HTTP flood: {e}"));
    assert_eq!(s0s1[0], 3, "S0 version");
    drop(flood);
    std::thread::sleep(Duration::from_millis(500));
    let m = server.get("/metrics").text();
    let refused = metric(
        &m,
        "deltacast_http_connections_refused_total{cap=\"total\"}",
    );
    eprintln!("fd flood: {N} HTTP connections, {refused} refused at the cap of 550");
    assert!(refused >= (N - 550) as f64, "refused {refused}\n{m}");
}

/// Blocking LL-HLS requests (a playlist reload two segments ahead, the next segment, the
/// preload-hinted part) are held longer than every connection deadline (1 s here) and still
/// answered 200 on a kept-alive connection, which the idle deadline then closes.
#[test]
fn blocking_requests_outlive_connection_deadlines() {
    require_tool("ffmpeg");
    let server = Server::start_with(
        "blocking",
        "header_read_timeout_ms = 1000\nidle_timeout_ms = 1000\nbody_read_timeout_ms = 1000",
        "",
        "",
        &[],
    );
    let _ff = Ffmpeg::publish("blocking", &server.rtmp_url("cam"));
    let pl = server.wait_segments("cam", 2, Duration::from_secs(40));
    let base = Server::playlist_path("cam");
    let mut s = TcpStream::connect(server.http).unwrap();
    let mut get = |path: &str| {
        let r = exchange(
            &mut s,
            "GET",
            path,
            &[],
            false,
            Instant::now(),
            Duration::from_secs(15),
        )
        .unwrap_or_else(|e| panic!("GET {path} on the kept-alive connection: {e}"));
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        eprintln!("GET {path}: {} in {:.0} ms", r.status, ms(r.elapsed));
        r
    };
    let last = pl.segments.last().unwrap().msn + pl.trailing_parts.len().min(1) as u64;
    let r = get(&format!("{base}?_HLS_msn={}", last + 2));
    assert!(
        r.elapsed > Duration::from_millis(1_200),
        "the reload was not held past the 1 s deadlines ({:?}), nothing was proved",
        r.elapsed
    );
    let held = Playlist::parse(&r.text()).unwrap();
    let seg = held.segments.last().unwrap();
    let open_seg = seg
        .uri
        .replace(&format!("seg{}.", seg.msn), &format!("seg{}.", seg.msn + 1));
    assert_ne!(open_seg, seg.uri, "segment URI naming changed: {}", seg.uri);
    get(&resolve(&base, &open_seg));
    let held = Playlist::parse(&get(&base).text()).unwrap();
    let hint = held.preload_hint.expect("EXT-X-PRELOAD-HINT")["URI"].clone();
    get(&resolve(&base, &hint));
    let idle_from = Instant::now();
    let closed = wait_closed(&mut s, Duration::from_secs(8))
        .expect("the kept-alive connection was not closed after 1 s idle");
    eprintln!("then closed after {:?} idle", closed - idle_from);
}
