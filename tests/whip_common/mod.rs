//! A WHIP test publisher on str0m: full ICE + DTLS + SRTP over real UDP on 127.0.0.1, sending
//! H.264 access units (Annex-B, made by ffmpeg/libx264) and Opus packets (ffmpeg/libopus in
//! Ogg) through str0m's frame-mode writer with their real RTP timestamps, paced in real time.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

use crate::whep_common::{request, HttpResp};

/// Panic with a clear message when ffmpeg cannot be run.
pub fn require_ffmpeg() {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        panic!(
            "`ffmpeg` (with libx264 and libopus) is required by the WHIP end-to-end tests but \
             could not be run: install it (Debian: apt-get install ffmpeg)"
        );
    }
}

/// `secs` seconds of 30 fps 320x240 H.264 (baseline, no B-frames, GOP 30) as Annex-B access
/// units, and 20 ms Opus packets at 48 kHz.
pub fn make_media(dir: &Path, secs: u32) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let video = make_video(dir, "clip", "320x240", None, secs);
    let ogg = dir.join("clip.ogg");
    let t = secs.to_string();
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("sine=frequency=440:sample_rate=48000")
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
    require_ffmpeg();
    let h264 = dir.join(format!("{name}.h264"));
    let t = secs.to_string();
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
    ])
    .arg(format!("testsrc=size={size}:rate=30"))
    .args([
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

/// Build a WHIP offer: sendonly H.264 video (+ Opus audio), simulcast with `rids` if any.
pub fn whip_offer(
    with_audio: bool,
) -> (
    Rtc,
    UdpSocket,
    SocketAddr,
    String,
    str0m::change::SdpPendingOffer,
) {
    whip_offer_rids(with_audio, &[])
}

pub fn whip_offer_rids(
    with_audio: bool,
    rids: &[&str],
) -> (
    Rtc,
    UdpSocket,
    SocketAddr,
    String,
    str0m::change::SdpPendingOffer,
) {
    str0m::crypto::from_feature_flags().install_process_default();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    let simulcast = (!rids.is_empty()).then(|| {
        let mut s = str0m::media::Simulcast::new();
        for r in rids {
            s.add_send_layer(str0m::media::SimulcastLayer::new(r));
        }
        s
    });
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast);
    if with_audio {
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    }
    let (o, pending) = api.apply().unwrap();
    (rtc, sock, local, o.to_sdp_string(), pending)
}

/// A VP8-only sendonly offer (must be refused with 406).
pub fn vp8_offer() -> String {
    str0m::crypto::from_feature_flags().install_process_default();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_vp8(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(sock.local_addr().unwrap(), "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (o, _p) = api.apply().unwrap();
    o.to_sdp_string()
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
    ) -> Result<WhipPublisher, HttpResp> {
        Self::start_layers(http, stream, key, vec![(None, video)], audio)
    }

    /// [`WhipPublisher::start`] with simulcast: one clip per rid (`None` rid: no simulcast).
    pub fn start_layers(
        http: SocketAddr,
        stream: &str,
        key: &str,
        layers: Vec<(Option<&str>, Clip)>,
        audio: Arc<Vec<Vec<u8>>>,
    ) -> Result<WhipPublisher, HttpResp> {
        let rids: Vec<&str> = layers.iter().filter_map(|(r, _)| *r).collect();
        let (mut rtc, sock, local, sdp, pending) = whip_offer_rids(!audio.is_empty(), &rids);
        let video: Vec<(Option<Rid>, Clip)> = layers
            .into_iter()
            .map(|(r, v)| (r.map(Rid::from), v))
            .collect();
        let auth = format!("Bearer {key}");
        let r = request(
            http,
            "POST",
            &format!("/whip/{stream}"),
            &[
                ("Content-Type", "application/sdp"),
                ("Authorization", &auth),
            ],
            sdp.as_bytes(),
        );
        if r.status != 201 {
            return Err(r);
        }
        let answer = SdpAnswer::from_sdp_string(&r.body).expect("answer parses");
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let stats = Arc::new(PubStats::default());
        let s2 = stats.clone();
        let vmid = mid_of(&sdp, "video");
        let amid = mid_of(&sdp, "audio");
        let thread = std::thread::spawn(move || {
            publish_loop(rtc, sock, local, video, audio, s2, vmid, amid)
        });
        Ok(WhipPublisher {
            location: r.header("location").expect("Location").to_string(),
            etag: r.header("etag").expect("ETag").to_string(),
            answer: r.body.clone(),
            stats,
            thread: Some(thread),
        })
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

#[allow(clippy::too_many_arguments)]
fn publish_loop(
    mut rtc: Rtc,
    sock: UdpSocket,
    local: SocketAddr,
    video: Vec<(Option<Rid>, Clip)>,
    audio: Arc<Vec<Vec<u8>>>,
    stats: Arc<PubStats>,
    vmid: Option<Mid>,
    amid: Option<Mid>,
) {
    let mut buf = vec![0u8; 2048];
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
        let next = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = sock.send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        stats.connected.store(true, Ordering::Release);
                        start.get_or_insert_with(Instant::now);
                    }
                    Event::KeyframeRequest(_) => {
                        stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                },
                Err(e) => {
                    eprintln!("WHIP client rtc: {e}");
                    stats.failed.store(true, Ordering::Release);
                    return;
                }
            }
        };
        let now = Instant::now();
        let mut due = next;
        if let Some(t0) = start {
            if vpt.is_none() {
                if let Some(m) = vmid {
                    vpt = pick_pt(&mut rtc, m, Codec::H264);
                }
                if let Some(m) = amid {
                    apt = pick_pt(&mut rtc, m, Codec::Opus);
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
        sock.set_read_timeout(Some(wait)).unwrap();
        let input = match sock.recv_from(&mut buf) {
            Ok((n, src)) => match Receive::new(Protocol::Udp, src, local, &buf[..n]) {
                Ok(r) => Input::Receive(Instant::now(), r),
                Err(_) => continue,
            },
            Err(_) => Input::Timeout(Instant::now()),
        };
        if let Err(e) = rtc.handle_input(input) {
            eprintln!("WHIP client input: {e}");
        }
    }
}

/// A WHEP viewer whose only candidate is ICE-TCP (active), as a client with UDP blocked: it
/// connects to the relay's passive TCP candidate and speaks RFC 4571 framing.
pub struct TcpWhepClient {
    pub rtc: Rtc,
    pub tcp: std::net::TcpStream,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub answer: String,
    pub location: String,
    pub connected_at: Option<Instant>,
    pub video_frames: usize,
    pub keyframes: usize,
    pub audio_frames: usize,
    rbuf: Vec<u8>,
}

impl TcpWhepClient {
    pub fn connect(http: SocketAddr, stream: &str, tcp_port: u16) -> Result<Self, HttpResp> {
        str0m::crypto::from_feature_flags().install_process_default();
        let remote: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().unwrap();
        let tcp = std::net::TcpStream::connect_timeout(&remote, Duration::from_secs(5))
            .expect("connect to the relay's ICE-TCP port");
        tcp.set_nodelay(true).unwrap();
        let local = tcp.local_addr().unwrap();
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_h264(true)
            .enable_opus(true, false)
            .build(Instant::now());
        let cand = Candidate::builder()
            .tcp()
            .host(local)
            .tcptype(str0m::net::TcpType::Active)
            .build()
            .unwrap();
        rtc.add_local_candidate(cand);
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (o, pending) = api.apply().unwrap();
        let sdp = o.to_sdp_string();
        assert!(
            !sdp.contains(" udp "),
            "the TCP-only offer carries no UDP candidate: {sdp}"
        );
        let r = request(
            http,
            "POST",
            &format!("/whep/{stream}"),
            &[("Content-Type", "application/sdp")],
            sdp.as_bytes(),
        );
        if r.status != 201 {
            return Err(r);
        }
        let answer = SdpAnswer::from_sdp_string(&r.body).expect("answer parses");
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        Ok(Self {
            rtc,
            tcp,
            local,
            remote,
            answer: r.body.clone(),
            location: r.header("location").unwrap_or_default().to_string(),
            connected_at: None,
            video_frames: 0,
            keyframes: 0,
            audio_frames: 0,
            rbuf: Vec::new(),
        })
    }

    /// Drive until `until` holds or `timeout` passes.
    pub fn run(&mut self, timeout: Duration, until: impl Fn(&Self) -> bool) -> bool {
        use std::io::{Read, Write};
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let next = loop {
                match self.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Transmit(t)) => {
                        assert_eq!(t.proto, Protocol::Tcp, "a TCP-only client sends over TCP");
                        let mut f = (t.contents.len() as u16).to_be_bytes().to_vec();
                        f.extend_from_slice(&t.contents);
                        let _ = self.tcp.write_all(&f);
                    }
                    Ok(Output::Event(e)) => match e {
                        Event::Connected => self.connected_at = Some(Instant::now()),
                        Event::MediaData(m) => {
                            if self.rtc.media(m.mid).map(|x| x.kind()) == Some(MediaKind::Audio) {
                                self.audio_frames += 1;
                            } else {
                                self.video_frames += 1;
                                if m.is_keyframe() {
                                    self.keyframes += 1;
                                }
                            }
                        }
                        _ => {}
                    },
                    Err(e) => panic!("TCP client rtc: {e}"),
                }
            };
            if until(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Deliver every complete frame already buffered.
            let mut fed = false;
            while self.rbuf.len() >= 2 {
                let n = u16::from_be_bytes([self.rbuf[0], self.rbuf[1]]) as usize;
                if self.rbuf.len() < 2 + n {
                    break;
                }
                let pkt: Vec<u8> = self.rbuf[2..2 + n].to_vec();
                self.rbuf.drain(..2 + n);
                if let Ok(r) = Receive::new(Protocol::Tcp, self.remote, self.local, &pkt) {
                    let _ = self.rtc.handle_input(Input::Receive(Instant::now(), r));
                    fed = true;
                }
            }
            if fed {
                continue;
            }
            let wait = next
                .saturating_duration_since(now)
                .min(deadline - now)
                .clamp(Duration::from_millis(1), Duration::from_millis(20));
            self.tcp.set_read_timeout(Some(wait)).unwrap();
            match self.tcp.read(&mut buf) {
                Ok(0) => panic!("the relay closed the ICE-TCP connection"),
                Ok(n) => self.rbuf.extend_from_slice(&buf[..n]),
                Err(_) => {
                    let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
                }
            }
        }
    }
}
