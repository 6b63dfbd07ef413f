//! LL-HLS viewers that behave as hls.js does at the live edge, on tokio + hyper (HTTP/1.1
//! keep-alive): two connections per viewer, one for playlists and one for media, as a browser
//! player keeps its playlist and fragment loaders apart.
//!
//! Each viewer: GET the playlist, the init section, then from the newest independent part on,
//! every part in order. At the edge it sends, together, a GET of the part the
//! `EXT-X-PRELOAD-HINT` names (before that part is complete; the origin answers when it is) and a
//! blocking playlist reload for that same part (`_HLS_msn`/`_HLS_part`, with `_HLS_skip=YES`
//! when the server can skip). When the reload answers, any part listed that was not fetched yet
//! is fetched, and the next hint is requested.
//!
//! Accounting (per part, per viewer):
//! - **lateness** = time from sending the part's GET to its last body byte, minus the part's
//!   `DURATION`. A hinted part is requested about when its production starts, so a healthy origin
//!   answers it within about its duration (lateness ≤ 0); a listed part is answered at once.
//!   A part is **late** when its lateness exceeds `late_slack` (default one PART-TARGET).
//! - **stall**: the playlist's next part did not advance for more than 3 PART-TARGETs (counted
//!   once per episode, while the reload is still waiting).
//! - **errors**: a non-2xx answer, a transport error or a timeout (the connection is reopened).
//!
//! The playlist is read by [`Edge::parse`], a borrow-only scan of the few tags a player at the
//! edge needs, since 9,000 viewers parse several playlists a second each; the tests check it
//! against testkit's full parser on the same text.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

use crate::live::{add, Live};

pub const MAX_VIEWERS: usize = 50_000;
/// Largest playlist read (bounded memory per viewer).
const MAX_PLAYLIST: usize = 1 << 20;

/// One part listed in a playlist: its position, URI and duration.
#[derive(Clone, Debug, PartialEq)]
pub struct PartRef<'a> {
    pub msn: u64,
    pub index: u64,
    pub uri: &'a str,
    pub duration: f64,
    pub independent: bool,
}

/// What a player at the live edge reads from a media playlist.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Edge<'a> {
    pub part_target: Option<f64>,
    pub can_block_reload: bool,
    pub can_skip: bool,
    pub map_uri: Option<&'a str>,
    /// Every part listed, in order (skipped segments' parts are not in a delta playlist).
    pub parts: Vec<PartRef<'a>>,
    /// MSN of the segment being produced (after the last complete one).
    pub next_msn: u64,
    /// `EXT-X-PRELOAD-HINT:TYPE=PART` URI.
    pub hint: Option<&'a str>,
    pub endlist: bool,
}

/// The value of attribute `key` in an attribute list (quotes removed).
fn attr<'a>(list: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = list;
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let k = rest[..eq].trim().trim_start_matches(',').trim();
        let v = &rest[eq + 1..];
        let (val, after) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = v.find(',').unwrap_or(v.len());
            (v[..end].trim(), &v[end..])
        };
        if k == key {
            return Some(val);
        }
        rest = after.strip_prefix(',').unwrap_or(after);
    }
    None
}

impl<'a> Edge<'a> {
    pub fn parse(text: &'a str) -> Result<Edge<'a>, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some("#EXTM3U") {
            return Err("playlist does not start with #EXTM3U".into());
        }
        let mut e = Edge::default();
        let (mut media_seq, mut skipped, mut segs) = (0u64, 0u64, 0u64);
        let mut pending: Vec<(&'a str, f64, bool)> = Vec::new();
        let mut parts_of: Vec<(u64, Vec<(&'a str, f64, bool)>)> = Vec::new();
        for l in lines {
            if let Some(v) = l.strip_prefix("#EXT-X-PART:") {
                let uri = attr(v, "URI").ok_or("EXT-X-PART without URI")?;
                let d = attr(v, "DURATION")
                    .and_then(|d| d.parse().ok())
                    .ok_or("EXT-X-PART without DURATION")?;
                pending.push((uri, d, attr(v, "INDEPENDENT") == Some("YES")));
            } else if let Some(v) = l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                media_seq = v.trim().parse().map_err(|_| "bad MEDIA-SEQUENCE")?;
            } else if let Some(v) = l.strip_prefix("#EXT-X-SKIP:") {
                skipped = attr(v, "SKIPPED-SEGMENTS")
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad EXT-X-SKIP")?;
            } else if let Some(v) = l.strip_prefix("#EXT-X-PART-INF:") {
                e.part_target = attr(v, "PART-TARGET").and_then(|s| s.parse().ok());
            } else if let Some(v) = l.strip_prefix("#EXT-X-SERVER-CONTROL:") {
                e.can_block_reload = attr(v, "CAN-BLOCK-RELOAD") == Some("YES");
                e.can_skip = attr(v, "CAN-SKIP-UNTIL").is_some();
            } else if let Some(v) = l.strip_prefix("#EXT-X-MAP:") {
                e.map_uri = attr(v, "URI");
            } else if let Some(v) = l.strip_prefix("#EXT-X-PRELOAD-HINT:") {
                if attr(v, "TYPE") == Some("PART") {
                    e.hint = attr(v, "URI");
                }
            } else if l == "#EXT-X-ENDLIST" {
                e.endlist = true;
            } else if !l.starts_with('#') {
                parts_of.push((segs, std::mem::take(&mut pending)));
                segs += 1;
            }
        }
        let first = media_seq + skipped;
        e.next_msn = first + segs;
        parts_of.push((segs, pending));
        for (seg, ps) in parts_of {
            for (i, (uri, duration, independent)) in ps.into_iter().enumerate() {
                e.parts.push(PartRef {
                    msn: first + seg,
                    index: i as u64,
                    uri,
                    duration,
                    independent,
                });
            }
        }
        Ok(e)
    }

    /// (msn, part) of the part being produced: the one the preload hint names, and the one a
    /// blocking reload waits for.
    pub fn next_part(&self) -> (u64, u64) {
        let n = self
            .parts
            .iter()
            .rev()
            .take_while(|p| p.msn == self.next_msn)
            .count();
        (self.next_msn, n as u64)
    }

    /// The query of a blocking reload for the part after this playlist's last.
    pub fn blocking_query(&self) -> String {
        let (m, p) = self.next_part();
        let skip = if self.can_skip { "&_HLS_skip=YES" } else { "" };
        format!("?_HLS_msn={m}&_HLS_part={p}{skip}")
    }
}

/// Per-part accounting, pure so it can be tested: lateness and the late verdict.
pub fn lateness(requested: Instant, done: Instant, duration: f64) -> f64 {
    done.saturating_duration_since(requested).as_secs_f64() - duration
}

/// Stall tracking: the playlist's next part must advance within 3 part targets.
#[derive(Debug)]
pub struct StallWatch {
    pub last_pos: (u64, u64),
    pub last_advance: Instant,
    pub in_stall: bool,
    pub stalls: u64,
}

impl StallWatch {
    pub fn new(pos: (u64, u64), now: Instant) -> Self {
        StallWatch {
            last_pos: pos,
            last_advance: now,
            in_stall: false,
            stalls: 0,
        }
    }

    /// The limit after which no advance is a stall.
    pub fn limit(part_target: f64) -> Duration {
        Duration::from_secs_f64(3.0 * part_target)
    }

    /// A playlist with next part `pos` arrived at `now`. Returns true when a stall began
    /// (detected on arrival, when no check during the wait caught it).
    pub fn playlist(&mut self, pos: (u64, u64), now: Instant, part_target: f64) -> bool {
        let began = self.check(now, part_target);
        if pos > self.last_pos {
            self.last_pos = pos;
            self.last_advance = now;
            self.in_stall = false;
        }
        began
    }

    /// No advance yet at `now`: true when this starts a stall episode.
    pub fn check(&mut self, now: Instant, part_target: f64) -> bool {
        if !self.in_stall
            && now.saturating_duration_since(self.last_advance) > Self::limit(part_target)
        {
            self.in_stall = true;
            self.stalls += 1;
            return true;
        }
        false
    }
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub addr: SocketAddr,
    pub host: String,
    pub playlist_path: String,
    pub viewers: usize,
    pub ramp: f64,
    pub threads: usize,
    pub bind: Vec<IpAddr>,
    /// A part is late when its lateness exceeds this (s).
    pub late_slack: Option<f64>,
}

/// Samples every viewer adds to, read once at the end.
#[derive(Default)]
pub struct Samples {
    pub first_part_ms: Vec<f64>,
    pub lateness_ms: Vec<f64>,
}

type Conn = SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<Conn> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(5), sock.connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// One GET on `conn`: (status, body bytes), the body kept in `keep` when given (bounded).
async fn get(
    conn: &mut Conn,
    host: &str,
    path: &str,
    mut keep: Option<&mut Vec<u8>>,
    timeout: Duration,
) -> Result<(u16, u64), String> {
    let work = async {
        conn.ready().await.map_err(|e| e.to_string())?;
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "deltacast-load")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = conn.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut n = 0u64;
        if let Some(k) = keep.as_deref_mut() {
            k.clear();
        }
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| e.to_string())?;
            if let Ok(d) = f.into_data() {
                n += d.len() as u64;
                if let Some(k) = keep.as_deref_mut() {
                    if k.len() + d.len() > MAX_PLAYLIST {
                        return Err("playlist larger than 1 MiB".into());
                    }
                    k.extend_from_slice(&d);
                }
            }
        }
        Ok((status, n))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "timeout".to_string())?
}

struct ViewerCtx {
    o: Arc<Opts>,
    live: Arc<Live>,
    samples: Arc<Mutex<Samples>>,
    stop: Arc<AtomicBool>,
    bind: Option<IpAddr>,
}

impl ViewerCtx {
    fn error(&self) {
        self.live.h_errors.fetch_add(1, Ordering::Relaxed);
    }

    async fn reconnect(&self, conn: &mut Conn) -> bool {
        for _ in 0..10 {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(c) = connect(self.o.addr, self.bind).await {
                *conn = c;
                return true;
            }
            self.error();
        }
        false
    }

    /// Fetch one part and account it. Returns false on failure.
    async fn part(
        &self,
        media: &mut Conn,
        uri: &str,
        duration: Option<f64>,
        pt: f64,
        t0: Instant,
        first: &mut bool,
    ) -> Option<f64> {
        let path = testkit::hls::resolve(&self.o.playlist_path, uri);
        let req = Instant::now();
        match get(media, &self.o.host, &path, None, Duration::from_secs(10)).await {
            Ok((s, n)) if (200..300).contains(&s) => {
                let done = Instant::now();
                add(&self.live.h_parts, 1);
                add(&self.live.h_bytes, n);
                if *first {
                    *first = false;
                    self.samples
                        .lock()
                        .first_part_ms
                        .push(done.duration_since(t0).as_secs_f64() * 1e3);
                }
                let late = lateness(req, done, duration.unwrap_or(pt));
                Some(late)
            }
            Ok(_) => {
                self.error();
                None
            }
            Err(_) => {
                self.error();
                self.reconnect(media).await;
                None
            }
        }
    }

    fn account_lateness(&self, late: f64, pt: f64) {
        let slack = self.o.late_slack.unwrap_or(pt);
        if late > slack {
            add(&self.live.h_late, 1);
        }
        let mut s = self.samples.lock();
        if s.lateness_ms.len() < 4_000_000 {
            s.lateness_ms.push(late * 1e3);
        }
    }
}

async fn viewer(cx: ViewerCtx) {
    let t0 = Instant::now();
    let o = cx.o.clone();
    let (mut pl, mut media) = match tokio::join!(connect(o.addr, cx.bind), connect(o.addr, cx.bind))
    {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            cx.live.h_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut text = Vec::with_capacity(8 * 1024);
    match get(
        &mut pl,
        &o.host,
        &o.playlist_path,
        Some(&mut text),
        Duration::from_secs(10),
    )
    .await
    {
        Ok((200, _)) => {}
        _ => {
            cx.live.h_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let s = String::from_utf8_lossy(&text).into_owned();
    let Ok(e) = Edge::parse(&s) else {
        cx.live.h_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    cx.live.h_joined.fetch_add(1, Ordering::Relaxed);
    add(&cx.live.h_playlists, 1);
    let pt = e.part_target.unwrap_or(1.0);
    if let Some(m) = e.map_uri {
        let path = testkit::hls::resolve(&o.playlist_path, m);
        match get(&mut media, &o.host, &path, None, Duration::from_secs(10)).await {
            Ok((200, n)) => add(&cx.live.h_bytes, n),
            _ => cx.error(),
        }
    }
    // Start at the newest independent part, as a player joining the edge.
    let start = e
        .parts
        .iter()
        .rposition(|p| p.independent)
        .or(e.parts.len().checked_sub(1));
    // Position of the last part fetched (or skipped over at the start).
    let mut done_pos: (u64, u64) = match start {
        Some(i) if i > 0 => (e.parts[i - 1].msn, e.parts[i - 1].index),
        Some(_) => (0, 0),
        None => (0, 0),
    };
    let mut from_start = start == Some(0);
    let mut watch = StallWatch::new(e.next_part(), Instant::now());
    let mut first = true;
    let mut playlist = s;
    let mut last_hint: Option<String> = None;
    while !cx.stop.load(Ordering::Relaxed) {
        let e = match Edge::parse(&playlist) {
            Ok(e) => e,
            Err(_) => {
                cx.error();
                break;
            }
        };
        // Every listed part after the last one fetched (the hinted one was fetched already).
        for p in &e.parts {
            let pos = (p.msn, p.index);
            if pos <= done_pos && !from_start {
                continue;
            }
            from_start = false;
            done_pos = pos;
            if last_hint.as_deref() == Some(p.uri) {
                continue;
            }
            if let Some(l) = cx
                .part(&mut media, p.uri, Some(p.duration), pt, t0, &mut first)
                .await
            {
                cx.account_lateness(l, pt);
            }
            if cx.stop.load(Ordering::Relaxed) {
                return;
            }
        }
        if e.endlist {
            break;
        }
        // The hinted part and the blocking reload for it, together.
        let hint = e.hint.map(str::to_string);
        let query = e.blocking_query();
        let reload_path = format!("{}{}", o.playlist_path, query);
        let limit = StallWatch::limit(pt);
        let hint_fut = async {
            match &hint {
                Some(u) => cx.part(&mut media, u, None, pt, t0, &mut first).await,
                None => None,
            }
        };
        let reload_fut = async {
            let req = get(
                &mut pl,
                &o.host,
                &reload_path,
                Some(&mut text),
                Duration::from_secs_f64((pt * 30.0).max(10.0)),
            );
            tokio::pin!(req);
            loop {
                let wait = (watch.last_advance + limit).saturating_duration_since(Instant::now())
                    + Duration::from_millis(1);
                tokio::select! {
                    r = &mut req => break r,
                    _ = tokio::time::sleep(wait), if !watch.in_stall => {
                        if watch.check(Instant::now(), pt) {
                            add(&cx.live.h_stalls, 1);
                        }
                    }
                }
            }
        };
        let (hint_late, reload) = tokio::join!(hint_fut, reload_fut);
        match reload {
            Ok((200, _)) => {
                add(&cx.live.h_playlists, 1);
                playlist = String::from_utf8_lossy(&text).into_owned();
            }
            Ok(_) => {
                cx.error();
                tokio::time::sleep(Duration::from_secs_f64(pt)).await;
                continue;
            }
            Err(_) => {
                cx.error();
                if !cx.reconnect(&mut pl).await {
                    break;
                }
                continue;
            }
        }
        let Ok(ne) = Edge::parse(&playlist) else {
            cx.error();
            break;
        };
        if watch.playlist(ne.next_part(), Instant::now(), pt) {
            add(&cx.live.h_stalls, 1);
        }
        if let (Some(u), Some(late)) = (&hint, hint_late) {
            add(&cx.live.h_hinted, 1);
            // The hinted part's duration, now that the playlist lists it.
            let d = ne
                .parts
                .iter()
                .find(|p| p.uri == u)
                .map(|p| p.duration)
                .unwrap_or(pt);
            cx.account_lateness(late + pt - d, pt);
        }
        last_hint = if hint_late.is_some() { hint } else { None };
    }
}

/// The running LL-HLS side of a run: its own tokio runtime.
pub struct Running {
    rt: tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub samples: Arc<Mutex<Samples>>,
    stop: Arc<AtomicBool>,
}

pub fn start(o: Opts, t0: Instant, live: Arc<Live>, stop_joins: Arc<AtomicBool>) -> Running {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads.max(1))
        .thread_name("hls")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let o = Arc::new(o);
    let samples = Arc::new(Mutex::new(Samples::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let spawner = {
        let (o, live, samples, stop, stop_joins) = (
            o.clone(),
            live.clone(),
            samples.clone(),
            stop.clone(),
            stop_joins.clone(),
        );
        rt.spawn(async move {
            let mut hs = Vec::with_capacity(o.viewers);
            for i in 0..o.viewers {
                let due = t0 + Duration::from_secs_f64(i as f64 / o.ramp);
                tokio::time::sleep_until(due.into()).await;
                if stop_joins.load(Ordering::Relaxed) {
                    break;
                }
                let cx = ViewerCtx {
                    o: o.clone(),
                    live: live.clone(),
                    samples: samples.clone(),
                    stop: stop.clone(),
                    bind: (!o.bind.is_empty()).then(|| o.bind[i % o.bind.len()]),
                };
                hs.push(tokio::spawn(viewer(cx)));
            }
            for h in hs {
                let _ = h.await;
            }
        })
    };
    tasks.push(spawner);
    Running {
        rt,
        tasks,
        samples,
        stop,
    }
}

impl Running {
    /// Stop every viewer (each ends at its next request, at most a few part targets later).
    pub fn finish(self, stop_joins: &AtomicBool) -> Samples {
        stop_joins.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        let tasks = self.tasks;
        self.rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(15), async {
                for t in tasks {
                    let _ = t.await;
                }
            })
            .await;
        });
        self.rt.shutdown_timeout(Duration::from_secs(1));
        std::mem::take(&mut *self.samples.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PL: &str = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-PART-INF:PART-TARGET=0.2\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.6,CAN-SKIP-UNTIL=12.0\n\
#EXT-X-MEDIA-SEQUENCE:10\n#EXT-X-MAP:URI=\"g/init.mp4\"\n\
#EXT-X-PART:DURATION=0.2,URI=\"g/10.0.m4s\",INDEPENDENT=YES\n\
#EXT-X-PART:DURATION=0.2,URI=\"g/10.1.m4s\"\n#EXTINF:0.4,\ng/10.m4s\n\
#EXTINF:0.4,\ng/11.m4s\n\
#EXT-X-PART:DURATION=0.2,URI=\"g/12.0.m4s\",INDEPENDENT=YES\n\
#EXT-X-PART:DURATION=0.18,URI=\"g/12.1.m4s\"\n\
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"g/12.2.m4s\"\n";

    #[test]
    fn edge_reads_parts_hint_and_blocking_params() {
        let e = Edge::parse(PL).unwrap();
        assert_eq!(e.part_target, Some(0.2));
        assert!(e.can_block_reload && e.can_skip);
        assert_eq!(e.map_uri, Some("g/init.mp4"));
        assert_eq!(e.hint, Some("g/12.2.m4s"));
        assert_eq!(e.next_msn, 12);
        assert_eq!(e.next_part(), (12, 2));
        assert_eq!(e.blocking_query(), "?_HLS_msn=12&_HLS_part=2&_HLS_skip=YES");
        let pos: Vec<(u64, u64, &str)> = e.parts.iter().map(|p| (p.msn, p.index, p.uri)).collect();
        assert_eq!(
            pos,
            vec![
                (10, 0, "g/10.0.m4s"),
                (10, 1, "g/10.1.m4s"),
                (12, 0, "g/12.0.m4s"),
                (12, 1, "g/12.1.m4s")
            ]
        );
        assert_eq!(e.parts[3].duration, 0.18);
        assert!(e.parts[2].independent && !e.parts[3].independent);
    }

    #[test]
    fn edge_agrees_with_the_full_parser() {
        let full = testkit::hls::Playlist::parse(PL).unwrap();
        let e = Edge::parse(PL).unwrap();
        assert_eq!(e.next_part(), full.next_part());
        assert_eq!(
            e.hint,
            full.preload_hint.as_ref().map(|h| h["URI"].as_str())
        );
        let uris: Vec<&str> = full.all_parts().map(|p| p.uri.as_str()).collect();
        assert_eq!(uris, e.parts.iter().map(|p| p.uri).collect::<Vec<_>>());
    }

    #[test]
    fn delta_playlist_numbers_segments_after_the_skip_and_no_hint_blocks_at_segment_start() {
        let d = "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n\
#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n#EXTINF:1,\na\n\
#EXT-X-PART:DURATION=0.5,URI=\"p8.0\"\n#EXT-X-PART:DURATION=0.5,URI=\"p8.1\"\n#EXTINF:1,\nb\n";
        let e = Edge::parse(d).unwrap();
        assert_eq!(e.next_msn, 9);
        assert_eq!(e.parts[0].msn, 8);
        assert_eq!(e.next_part(), (9, 0));
        assert_eq!(e.blocking_query(), "?_HLS_msn=9&_HLS_part=0");
        assert_eq!(e.hint, None);
        assert!(Edge::parse("#EXTM3U\n#EXT-X-PART:URI=\"x\"\n").is_err());
        assert!(Edge::parse("nope").is_err());
    }

    #[test]
    fn lateness_and_stalls() {
        let t = Instant::now();
        // A hinted part of 0.2 s answered 0.25 s after its request: 50 ms late.
        let l = lateness(t, t + Duration::from_millis(250), 0.2);
        assert!((l - 0.05).abs() < 1e-9);
        // ... not late beyond one part target (0.2 s); 0.45 s would be.
        assert!(l <= 0.2 && lateness(t, t + Duration::from_millis(450), 0.2) > 0.2);
        let mut w = StallWatch::new((5, 1), t);
        // 0.5 s without advance at a 0.2 s part target: within 3 × 0.2 = 0.6 s.
        assert!(!w.check(t + Duration::from_millis(500), 0.2));
        assert!(w.check(t + Duration::from_millis(700), 0.2));
        // One episode counts once.
        assert!(!w.check(t + Duration::from_millis(900), 0.2));
        assert!(!w.playlist((5, 2), t + Duration::from_millis(950), 0.2));
        assert_eq!(w.stalls, 1);
        // An advance resets the episode; a late playlist alone starts the next.
        assert!(w.playlist((5, 2), t + Duration::from_millis(1700), 0.2));
        assert_eq!(w.stalls, 2);
        // Going back (a stale cached answer) is no advance.
        let mut w = StallWatch::new((5, 1), t);
        w.playlist((4, 0), t + Duration::from_millis(100), 0.2);
        assert_eq!(w.last_pos, (5, 1));
    }
}
