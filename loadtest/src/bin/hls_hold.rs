//! LL-HLS blocking-reload load generator: N keep-alive clients each hold a blocking playlist
//! request for the next part, again and again. For every part, the spread between the first and
//! each later response shows how fast the origin wakes every held request once the part exists.
//!
//! Bounded: `--clients` connections, `--secs` seconds, then it stops and prints a summary.
//! Only loopback or addresses of namespaces you created are acceptable targets.
//!
//! usage: deltacast-loadtest HOST:PORT /hls/STREAM/index.m3u8 [--clients N] [--secs S]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Default)]
struct Shared {
    /// (msn, part) → arrival times of each client's response.
    arrivals: HashMap<(u64, u64), Vec<Instant>>,
    errors: u64,
    status: HashMap<u16, u64>,
}

/// Read one HTTP/1.1 response (Content-Length bodies only, as the origin sends).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, String)> {
    buf.clear();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut tmp).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            return Ok((status, body));
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        if buf.len() > 4 << 20 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

/// The (msn, part) a client asks for next: the part after the last one listed.
fn next_position(playlist: &str) -> Option<(u64, u64)> {
    let mut msn = None;
    let mut segs = 0u64;
    let mut parts_after = 0u64;
    for l in playlist.lines() {
        if let Some(v) = l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = v.trim().parse::<u64>().ok();
        } else if l.starts_with("#EXTINF") {
            segs += 1;
            parts_after = 0;
        } else if l.starts_with("#EXT-X-PART:") {
            parts_after += 1;
        } else if let Some(v) = l.strip_prefix("#EXT-X-SKIP:SKIPPED-SEGMENTS=") {
            segs += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Some((msn? + segs, parts_after))
}

async fn client(addr: String, path: String, until: Instant, shared: Arc<Mutex<Shared>>) {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        shared.lock().errors += 1;
        return;
    };
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut query = String::new();
    while Instant::now() < until {
        let req = format!("GET {path}{query} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        if s.write_all(req.as_bytes()).await.is_err() {
            shared.lock().errors += 1;
            return;
        }
        let left = until.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
        let r = tokio::time::timeout(left, read_response(&mut s, &mut buf)).await;
        let now = Instant::now();
        let Ok(Ok((status, body))) = r else {
            shared.lock().errors += 1;
            return;
        };
        let ok = {
            let mut g = shared.lock();
            *g.status.entry(status).or_default() += 1;
            if status == 200 {
                if let Some(pos) = parse_query(&query) {
                    g.arrivals.entry(pos).or_default().push(now);
                }
            }
            status == 200
        };
        if !ok {
            tokio::time::sleep(Duration::from_millis(200)).await;
            query.clear();
            continue;
        }
        match next_position(&body) {
            Some((m, p)) => query = format!("?_HLS_msn={m}&_HLS_part={p}"),
            None => query.clear(),
        }
    }
}

fn parse_query(q: &str) -> Option<(u64, u64)> {
    let q = q.strip_prefix('?')?;
    let mut m = None;
    let mut p = None;
    for kv in q.split('&') {
        match kv.split_once('=')? {
            ("_HLS_msn", v) => m = v.parse().ok(),
            ("_HLS_part", v) => p = v.parse().ok(),
            _ => {}
        }
    }
    Some((m?, p?))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: {} HOST:PORT /hls/STREAM/index.m3u8 [--clients N] [--secs S]",
            args[0]
        );
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let path = args[2].clone();
    let mut clients = 1000usize;
    let mut secs = 20u64;
    let mut i = 3;
    while i + 1 < args.len() {
        match args[i].as_str() {
            "--clients" => clients = args[i + 1].parse().expect("--clients N"),
            "--secs" => secs = args[i + 1].parse().expect("--secs S"),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    let clients = clients.min(20_000);
    let secs = secs.min(600);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(client(
            addr.clone(),
            path.clone(),
            until,
            shared.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let g = shared.lock();
    let mut spreads = Vec::new();
    let mut full_rounds = 0;
    for times in g.arrivals.values() {
        if times.len() < clients / 2 {
            continue; // rounds at the start/end that only some clients joined
        }
        full_rounds += 1;
        let first = *times.iter().min().unwrap();
        spreads.extend(
            times
                .iter()
                .map(|t| t.duration_since(first).as_secs_f64() * 1000.0),
        );
    }
    println!(
        "clients={clients} secs={secs} rounds={full_rounds} responses={} errors={}",
        spreads.len(),
        g.errors
    );
    println!("status={:?}", g.status);
    println!(
        "wake spread after first response (ms): p50={:.2} p99={:.2} max={:.2}",
        pct(&mut spreads.clone(), 0.5),
        pct(&mut spreads.clone(), 0.99),
        pct(&mut spreads, 1.0)
    );
}
