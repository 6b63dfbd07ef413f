//! WebRTC roles on the one str0m test peer ([`crate::peer`]), over real UDP or ICE-TCP on
//! 127.0.0.1 with full ICE + DTLS + SRTP: a WHEP viewer ([`WhepClient`]: H.264 depacketized into
//! frames, Opus counted), a WHIP publisher ([`WhipPublisher`]: H.264 access units made by
//! ffmpeg/libx264 and Opus packets sent in real time with their RTP timestamps, simulcast by rid),
//! the offers they make, checks of the relay's offer validation, a bandwidth bottleneck, and
//! the media fixtures.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt, Rid};
use str0m::{Event, IceConnectionState, Rtc};

use crate::http::{request, Resp};
use crate::peer::{Offered, Peer, Role};

// ───────────────────────────── offers ─────────────────────────────

/// A WHEP viewer's offer (video + audio recvonly, H.264 and Opus; `vp8_only` for a bad offer).
pub fn offer(vp8_only: bool) -> Offered {
    let role = Role::viewer();
    Peer::offer(&if vp8_only { role.vp8_only() } else { role })
}

/// A WHIP offer: sendonly H.264 video (+ Opus audio).
pub fn whip_offer(with_audio: bool) -> Offered {
    whip_offer_rids(with_audio, &[])
}

/// [`whip_offer`] with simulcast send layers `rids`.
pub fn whip_offer_rids(with_audio: bool, rids: &[&str]) -> Offered {
    Peer::offer(&Role::publisher(with_audio, rids))
}

/// A VP8-only sendonly offer (must be refused with 406).
pub fn vp8_offer() -> String {
    Peer::offer(&Role::publisher(false, &[]).vp8_only()).sdp
}

pub fn with_attr(sdp: &str, attr: &str, value: &str) -> String {
    let prefix = format!("a={attr}:");
    sdp.lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                format!("{prefix}{value}\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect()
}

/// POST offers that break the shared offer check to `path` (`/whep/S` or `/whip/S`, with the
/// `headers` that path needs), starting from a `good` offer of that role: a direction the role
/// cannot use (`wrong_direction`, e.g. `a=sendonly` for WHEP) and a weak fingerprint get 422,
/// ICE credentials outside RFC 8839 get 400, each with a reason.
pub fn assert_offer_checks(
    http: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    good: &str,
    direction: &str,
    wrong_directions: &[&str],
) {
    let post = |sdp: &str| request(http, "POST", path, headers, sdp.as_bytes());
    for wrong in wrong_directions {
        let bad = good.replace(&format!("a={direction}\r\n"), &format!("a={wrong}\r\n"));
        assert_ne!(bad, good, "the offer has no a={direction}");
        let r = post(&bad);
        assert_eq!(r.status, 422, "{path}: a={wrong} offer: {}", r.text());
        assert!(r.text().contains(wrong), "422 says why: {}", r.text());
    }
    let fp = good
        .lines()
        .find_map(|l| l.strip_prefix("a=fingerprint:"))
        .expect("a fingerprint in the offer")
        .to_string();
    let (_, digest) = fp.split_once(' ').unwrap();
    for weak in [
        format!("md5 {}", &digest[..47]),
        format!("sha-1 {}", &digest[..59]),
    ] {
        let r = post(&with_attr(good, "fingerprint", &weak));
        assert_eq!(r.status, 422, "{path}: {weak}: {}", r.text());
        assert!(r.text().contains("sha-256"), "422 says why: {}", r.text());
    }
    for (attr, value) in [
        ("ice-ufrag", "u".repeat(5000)),
        ("ice-ufrag", "abc".to_string()),
        ("ice-pwd", "p".repeat(21)),
        ("ice-pwd", "p".repeat(257)),
    ] {
        let r = post(&with_attr(good, attr, &value));
        assert_eq!(
            r.status,
            400,
            "{path}: {attr} of {} chars: {}",
            value.len(),
            r.text()
        );
        assert!(
            r.text().contains(attr) && r.body.len() < 300,
            "{}",
            r.text()
        );
    }
}

/// A CORS preflight on a WHEP/WHIP endpoint `path` answers 204 and exposes the headers a
/// browser client reads (`Location`, `ETag`, `Link`, `Accept-Patch`); returns the answer.
pub fn assert_cors_preflight(http: SocketAddr, path: &str) -> Resp {
    let r = request(
        http,
        "OPTIONS",
        path,
        &[("Origin", "https://example.org")],
        b"",
    );
    assert_eq!(r.status, 204, "OPTIONS {path}");
    let expose = r
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_string();
    for h in ["Location", "ETag", "Link", "Accept-Patch"] {
        assert!(expose.contains(h), "CORS exposes {h}: {expose}");
    }
    r
}

/// The port of the first UDP candidate in an SDP (the relay worker's port in an answer).
pub fn udp_candidate_port(sdp: &str) -> Option<u16> {
    sdp.lines()
        .find(|l| l.starts_with("a=candidate:") && (l.contains(" udp ") || l.contains(" UDP ")))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|p| p.parse().ok())
}

/// The SPS NAL unit (without start code) of an Annex-B access unit.
pub fn annexb_sps(data: &[u8]) -> Option<Vec<u8>> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    for (k, &st) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&n| n - 3);
        while end > st && data[end - 1] == 0 {
            end -= 1;
        }
        if st < end && data[st] & 0x1f == 7 {
            return Some(data[st..end].to_vec());
        }
    }
    None
}

/// A bottleneck link in the test process: a UDP relay between a WHEP client and the SFU that
/// limits the SFU → client direction to `kbps`, with a drop-tail queue of `queue_ms` (so the
/// relay's bandwidth estimator sees both queueing delay and loss). Client → SFU passes as is.
pub struct Bottleneck {
    pub port: u16,
    pub dropped: Arc<AtomicU64>,
    pub forwarded: Arc<AtomicU64>,
    /// The link's rate; the test may change it while the link runs.
    pub kbps: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bottleneck {
    pub fn start(server: SocketAddr, kbps: u64, queue_ms: u64) -> Bottleneck {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        sock.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let rate = Arc::new(AtomicU64::new(kbps));
        let (st, dr, fw, kb) = (
            stop.clone(),
            dropped.clone(),
            forwarded.clone(),
            rate.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
            let mut queued = 0usize;
            let mut client: Option<SocketAddr> = None;
            let mut next_send = Instant::now();
            let mut buf = vec![0u8; 2048];
            // Bounded: the test ends it, and it never outlives 5 minutes.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !st.load(Ordering::Acquire) && Instant::now() < deadline {
                let bytes_per_sec = kb.load(Ordering::Relaxed) as f64 * 1000.0 / 8.0;
                let max_queue = (bytes_per_sec * queue_ms as f64 / 1000.0) as usize;
                if let Ok((n, src)) = sock.recv_from(&mut buf) {
                    if src == server {
                        if queued + n > max_queue {
                            dr.fetch_add(1, Ordering::Relaxed);
                        } else {
                            queued += n;
                            queue.push_back(buf[..n].to_vec());
                        }
                    } else {
                        client = Some(src);
                        let _ = sock.send_to(&buf[..n], server);
                    }
                }
                let now = Instant::now();
                while let (Some(p), Some(c)) = (queue.front(), client) {
                    if now < next_send {
                        break;
                    }
                    let _ = sock.send_to(p, c);
                    fw.fetch_add(1, Ordering::Relaxed);
                    let gap = Duration::from_secs_f64(p.len() as f64 / bytes_per_sec);
                    next_send = next_send.max(now - Duration::from_millis(2)) + gap;
                    queued -= p.len();
                    queue.pop_front();
                }
            }
        });
        Bottleneck {
            port,
            dropped,
            forwarded,
            kbps: rate,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Bottleneck {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ───────────────────────────── WHEP viewer ─────────────────────────────

/// A frame the viewer depacketized out of RTP.
#[derive(Debug, Clone)]
pub struct GotFrame {
    pub keyframe: bool,
    pub bytes: usize,
    pub at: Instant,
    pub annexb_has_sps: bool,
    /// The SPS NAL unit carried with the frame (keyframes), to tell simulcast layers apart.
    pub sps: Option<Vec<u8>>,
}

/// A viewer's session (from the WHEP answer) and what it has seen.
#[derive(Debug)]
pub struct Seen {
    /// When the offer was made.
    pub started: Instant,
    pub location: String,
    pub etag: String,
    pub answer: String,
    pub connected_at: Option<Instant>,
    pub frames: Vec<GotFrame>,
    /// Opus frames received (AAC from RTMP, bridged by the relay).
    pub audio_frames: usize,
    pub disconnected: bool,
}

impl Seen {
    /// The worker's UDP port from the answer's candidates.
    pub fn server_port(&self) -> u16 {
        udp_candidate_port(&self.answer).expect("candidate with a port in the answer")
    }

    pub fn first_keyframe(&self) -> Option<&GotFrame> {
        self.frames.iter().find(|f| f.keyframe)
    }

    pub fn keyframes(&self) -> usize {
        self.frames.iter().filter(|f| f.keyframe).count()
    }
}

/// A WHEP viewer: the test peer in the viewer role, and what it has seen.
pub struct WhepClient {
    pub peer: Peer,
    pub seen: Seen,
}

impl std::ops::Deref for WhepClient {
    type Target = Seen;
    fn deref(&self) -> &Seen {
        &self.seen
    }
}

impl WhepClient {
    /// POST an offer; `Err` carries the non-201 response.
    pub fn connect(http: SocketAddr, stream: &str) -> Result<WhepClient, Resp> {
        Self::connect_through(http, stream, |_| None).map(|(c, _)| c)
    }

    /// A viewer whose only candidate is ICE-TCP (active), as a client with UDP blocked.
    pub fn connect_tcp(http: SocketAddr, stream: &str, tcp_port: u16) -> Result<WhepClient, Resp> {
        let o = Peer::offer_tcp(&Role::viewer(), tcp_port);
        assert!(
            !o.sdp.contains(" udp "),
            "the TCP-only offer carries no UDP candidate: {}",
            o.sdp
        );
        let peer = o.post(http, &format!("/whep/{stream}"), &[])?;
        Ok(WhepClient::new(peer))
    }

    /// [`WhepClient::connect`] with the media path through a [`Bottleneck`] that `link` starts
    /// for the SFU's UDP address (None: direct).
    pub fn connect_through(
        http: SocketAddr,
        stream: &str,
        link: impl FnOnce(SocketAddr) -> Option<Bottleneck>,
    ) -> Result<(WhepClient, Option<Bottleneck>), Resp> {
        let o = offer(false);
        let r = request(
            http,
            "POST",
            &format!("/whep/{stream}"),
            &[("Content-Type", "application/sdp")],
            o.sdp.as_bytes(),
        );
        if r.status != 201 {
            return Err(r);
        }
        let answer = r.text();
        let port = udp_candidate_port(&answer);
        let mut sdp_answer = answer.clone();
        let bottleneck = port.and_then(|p| link(SocketAddr::from(([127, 0, 0, 1], p))));
        if let (Some(b), Some(p)) = (&bottleneck, port) {
            // The client reaches the SFU only through the bottleneck.
            sdp_answer = sdp_answer
                .lines()
                .map(|l| {
                    if l.starts_with("a=candidate:") {
                        l.replace(&format!(" {p} typ"), &format!(" {} typ", b.port))
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\r\n")
                + "\r\n";
        }
        let mut peer = o.accept(&sdp_answer);
        peer.answer = answer;
        peer.location = r.header("location").expect("Location").to_string();
        peer.etag = r.header("etag").expect("ETag").to_string();
        Ok((WhepClient::new(peer), bottleneck))
    }

    fn new(peer: Peer) -> WhepClient {
        let seen = Seen {
            started: peer.started,
            location: peer.location.clone(),
            etag: peer.etag.clone(),
            answer: peer.answer.clone(),
            connected_at: None,
            frames: Vec::new(),
            audio_frames: 0,
            disconnected: false,
        };
        WhepClient { peer, seen }
    }

    /// Drive the viewer until `until` returns true or `timeout` passes.
    pub fn run(&mut self, timeout: Duration, until: impl Fn(&Seen) -> bool) -> bool {
        self.peer
            .run(&mut self.seen, timeout, on_viewer_event, until)
    }
}

fn on_viewer_event(seen: &mut Seen, rtc: &mut Rtc, e: Event) {
    match e {
        Event::Connected => seen.connected_at = Some(Instant::now()),
        Event::MediaData(m) if rtc.media(m.mid).map(|x| x.kind()) == Some(MediaKind::Audio) => {
            seen.audio_frames += 1
        }
        Event::MediaData(m) => seen.frames.push(GotFrame {
            keyframe: m.is_keyframe(),
            bytes: m.data.len(),
            at: Instant::now(),
            annexb_has_sps: m
                .data
                .windows(4)
                .any(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 7),
            sps: annexb_sps(&m.data),
        }),
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            seen.disconnected = true
        }
        _ => {}
    }
}

// ───────────────────────────── WHIP publisher ─────────────────────────────

/// Access units (or Opus packets) of a clip, shared with the publishing thread.
pub type Clip = Arc<Vec<Vec<u8>>>;

/// Counters the publisher thread shares with the test.
#[derive(Default)]
pub struct PubStats {
    pub connected: AtomicBool,
    pub video_sent: AtomicU64,
    pub audio_sent: AtomicU64,
    /// PLI/FIR received from the relay.
    pub keyframe_requests: AtomicU64,
    pub stop: AtomicBool,
    pub failed: AtomicBool,
}

/// A connected (or connecting) WHIP publisher.
pub struct WhipPublisher {
    pub location: String,
    pub etag: String,
    pub answer: String,
    pub stats: Arc<PubStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn pick_pt(rtc: &mut Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let w = rtc.writer(mid)?;
    let pt = w
        .payload_params()
        .find(|p| {
            p.spec().codec == codec
                && (codec != Codec::H264 || p.spec().format.packetization_mode == Some(1))
        })
        .map(|p| p.pt());
    pt
}

impl WhipPublisher {
    /// POST the offer with `key`; on 201 start the publishing thread, which loops the media
    /// (timestamps keep increasing) until dropped.
    pub fn start(
        http: SocketAddr,
        stream: &str,
        key: &str,
        video: Arc<Vec<Vec<u8>>>,
        audio: Arc<Vec<Vec<u8>>>,
    ) -> Result<WhipPublisher, Resp> {
        Self::start_layers(http, stream, key, vec![(None, video)], audio)
    }

    /// [`WhipPublisher::start`] with simulcast: one clip per rid (`None` rid: no simulcast).
    pub fn start_layers(
        http: SocketAddr,
        stream: &str,
        key: &str,
        layers: Vec<(Option<&str>, Clip)>,
        audio: Arc<Vec<Vec<u8>>>,
    ) -> Result<WhipPublisher, Resp> {
        let rids: Vec<&str> = layers.iter().filter_map(|(r, _)| *r).collect();
        let o = whip_offer_rids(!audio.is_empty(), &rids);
        let video: Vec<(Option<Rid>, Clip)> = layers
            .into_iter()
            .map(|(r, v)| (r.map(Rid::from), v))
            .collect();
        let vmid = mid_of(&o.sdp, "video");
        let amid = mid_of(&o.sdp, "audio");
        let auth = format!("Bearer {key}");
        let peer = o.post(
            http,
            &format!("/whip/{stream}"),
            &[("Authorization", &auth)],
        )?;
        let stats = Arc::new(PubStats::default());
        let s2 = stats.clone();
        let (location, etag, answer) = (
            peer.location.clone(),
            peer.etag.clone(),
            peer.answer.clone(),
        );
        let thread = std::thread::spawn(move || publish_loop(peer, video, audio, s2, vmid, amid));
        Ok(WhipPublisher {
            location,
            etag,
            answer,
            stats,
            thread: Some(thread),
        })
    }

    /// Wait until the publisher's ICE + DTLS is connected, or `timeout` passes.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.connected.load(Ordering::Acquire))
    }

    /// Wait until `f` holds or `timeout` passes.
    pub fn wait(&self, timeout: Duration, f: impl Fn(&PubStats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f(&self.stats) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f(&self.stats)
    }

    /// Stop sending (the relay notices by ICE consent / idle timeout, or by DELETE).
    pub fn stop(&mut self) {
        self.stats.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WhipPublisher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `a=mid` of the first m-line of `kind` in an SDP.
pub fn mid_of(sdp: &str, kind: &str) -> Option<Mid> {
    let mut inside = false;
    for l in sdp.lines() {
        if let Some(m) = l.strip_prefix("m=") {
            inside = m.starts_with(kind);
        } else if inside {
            if let Some(m) = l.trim_end().strip_prefix("a=mid:") {
                return Some(Mid::from(m));
            }
        }
    }
    None
}

fn publish_loop(
    mut peer: Peer,
    video: Vec<(Option<Rid>, Clip)>,
    audio: Arc<Vec<Vec<u8>>>,
    stats: Arc<PubStats>,
    vmid: Option<Mid>,
    amid: Option<Mid>,
) {
    let mut vpt: Option<Pt> = None;
    let mut apt: Option<Pt> = None;
    let mut start: Option<Instant> = None;
    let mut vi: u64 = 0;
    let mut ai: u64 = 0;
    let v_base: u64 = 12_345;
    let a_base: u64 = 987_654;
    loop {
        if stats.stop.load(Ordering::Acquire) {
            return;
        }
        let next = peer.poll(|_, e| match e {
            Event::Connected => {
                stats.connected.store(true, Ordering::Release);
                start.get_or_insert_with(Instant::now);
            }
            Event::KeyframeRequest(_) => {
                stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        });
        let next = match next {
            Ok(t) => t,
            Err(e) => {
                eprintln!("WHIP client rtc: {e}");
                stats.failed.store(true, Ordering::Release);
                return;
            }
        };
        let rtc = &mut peer.rtc;
        let now = Instant::now();
        let mut due = next;
        if let Some(t0) = start {
            if vpt.is_none() {
                if let Some(m) = vmid {
                    vpt = pick_pt(rtc, m, Codec::H264);
                }
                if let Some(m) = amid {
                    apt = pick_pt(rtc, m, Codec::Opus);
                }
            }
            // Video: frame i at i/30 s; audio: packet i at i*20 ms.
            if let (Some(mid), Some(pt)) = (vmid, vpt) {
                let at = t0 + Duration::from_micros(vi * 1_000_000 / 30);
                if at <= now {
                    let ts = MediaTime::new(v_base + vi * 3000, Frequency::NINETY_KHZ);
                    for (rid, clip) in &video {
                        let au = &clip[(vi % clip.len() as u64) as usize];
                        if let Some(w) = rtc.writer(mid) {
                            let w = match rid {
                                Some(r) => w.rid(*r),
                                None => w,
                            };
                            if w.write(pt, now, ts, au.clone()).is_ok() {
                                stats.video_sent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    vi += 1;
                    continue;
                }
                due = due.min(at);
            }
            if let (Some(mid), Some(pt)) = (amid, apt) {
                if !audio.is_empty() {
                    let at = t0 + Duration::from_millis(ai * 20);
                    if at <= now {
                        let p = &audio[(ai % audio.len() as u64) as usize];
                        let ts = MediaTime::new(a_base + ai * 960, Frequency::FORTY_EIGHT_KHZ);
                        if let Some(w) = rtc.writer(mid) {
                            if w.write(pt, now, ts, p.clone()).is_ok() {
                                stats.audio_sent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        ai += 1;
                        continue;
                    }
                    due = due.min(at);
                }
            }
        }
        let wait = due
            .saturating_duration_since(now)
            .clamp(Duration::from_millis(1), Duration::from_millis(20));
        peer.input(wait);
    }
}

// ───────────────────────────── media fixtures ─────────────────────────────

/// `ffmpeg` reading the lavfi source `source` and overwriting its output quietly.
fn ffmpeg_lavfi(source: &str) -> Command {
    crate::process::require_tool("ffmpeg");
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        source,
    ]);
    cmd
}

/// `secs` seconds of 30 fps 320x240 H.264 (baseline, no B-frames, GOP 30) as Annex-B access
/// units, and 20 ms Opus packets at 48 kHz.
pub fn make_media(dir: &Path, secs: u32) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let video = make_video(dir, "clip", "320x240", None, secs);
    let ogg = dir.join("clip.ogg");
    let t = secs.to_string();
    let out = ffmpeg_lavfi("sine=frequency=440:sample_rate=48000")
        .args(["-t", &t, "-ac", "2", "-c:a", "libopus", "-b:a", "64k"])
        .args(["-frame_duration", "20", "-f", "ogg"])
        .arg(&ogg)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg (libopus) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut audio = Vec::new();
    let mut r = ogg::PacketReader::new(std::fs::File::open(&ogg).unwrap());
    while let Ok(Some(p)) = r.read_packet() {
        if p.data.starts_with(b"OpusHead") || p.data.starts_with(b"OpusTags") {
            continue;
        }
        audio.push(p.data);
    }
    assert!(!audio.is_empty());
    (video, audio)
}

/// `secs` seconds of 30 fps H.264 testsrc at `size` ("WxH"; baseline, no B-frames, GOP 30) as
/// Annex-B access units, at `kbps` (capped) or x264's default quality.
pub fn make_video(
    dir: &Path,
    name: &str,
    size: &str,
    kbps: Option<u32>,
    secs: u32,
) -> Vec<Vec<u8>> {
    let h264 = dir.join(format!("{name}.h264"));
    let t = secs.to_string();
    let mut cmd = ffmpeg_lavfi(&format!("testsrc=size={size}:rate=30"));
    cmd.args([
        "-t",
        &t,
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-bf",
        "0",
    ]);
    if let Some(k) = kbps {
        let (b, buf) = (format!("{k}k"), format!("{}k", k / 2));
        cmd.args(["-b:v", &b, "-maxrate", &b, "-bufsize", &buf]);
    }
    let out = cmd
        .args([
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-tune",
            "zerolatency",
            "-f",
            "h264",
        ])
        .arg(&h264)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg (libx264) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let video = split_access_units(&std::fs::read(&h264).unwrap());
    assert!(video.len() >= 30 * secs as usize - 2, "{} AUs", video.len());
    video
}

/// The SPS NAL unit (without start code) of the first access unit that has one.
pub fn sps_of(video: &[Vec<u8>]) -> Vec<u8> {
    video
        .iter()
        .flat_map(|au| nalus(au))
        .find(|n| n.first().is_some_and(|b| b & 0x1f == 7))
        .expect("an SPS in the clip")
        .to_vec()
}

/// NAL units of an Annex-B stream (without start codes).
pub fn nalus(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 2 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut e = starts.get(k + 1).map_or(data.len(), |n| n - 3);
        while e > s && data[e - 1] == 0 {
            e -= 1;
        }
        if e > s {
            out.push(&data[s..e]);
        }
    }
    out
}

/// Group an Annex-B elementary stream into access units (Annex-B, 4-byte start codes).
pub fn split_access_units(data: &[u8]) -> Vec<Vec<u8>> {
    let mut aus = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut has_vcl = false;
    for n in nalus(data) {
        let t = n[0] & 0x1f;
        let vcl = t == 1 || t == 5;
        let starts_au = if vcl {
            has_vcl && n.len() > 1 && n[1] & 0x80 != 0 // first_mb_in_slice == 0
        } else {
            has_vcl && matches!(t, 6..=9)
        };
        if starts_au {
            aus.push(std::mem::take(&mut cur));
            has_vcl = false;
        }
        cur.extend_from_slice(&[0, 0, 0, 1]);
        cur.extend_from_slice(n);
        has_vcl |= vcl;
    }
    if has_vcl {
        aus.push(cur);
    }
    aus
}
