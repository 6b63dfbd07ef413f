//! A WHEP test client on str0m: full ICE + DTLS + SRTP over real UDP on 127.0.0.1, H.264
//! depacketized by str0m into frames. Plus a small HTTP/1.1 client that sends bodies.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

/// A response of [`request`].
#[derive(Debug)]
pub struct HttpResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// HTTP/1.1 request with a body on a fresh connection, bounded by 10 s.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResp {
    let t = Duration::from_secs(10);
    let mut s = TcpStream::connect_timeout(&addr, t).expect("connect");
    s.set_read_timeout(Some(t)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    HttpResp {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A frame the client decoded out of RTP.
#[derive(Debug, Clone)]
pub struct GotFrame {
    pub keyframe: bool,
    pub bytes: usize,
    pub at: Instant,
    pub annexb_has_sps: bool,
    /// The SPS NAL unit carried with the frame (keyframes), to tell simulcast layers apart.
    pub sps: Option<Vec<u8>>,
}

pub struct WhepClient {
    pub rtc: Rtc,
    pub sock: UdpSocket,
    pub local: SocketAddr,
    pub location: String,
    pub etag: String,
    pub answer: String,
    pub started: Instant,
    pub connected_at: Option<Instant>,
    pub frames: Vec<GotFrame>,
    /// Opus frames received (AAC from RTMP, bridged by the relay).
    pub audio_frames: usize,
    pub disconnected: bool,
    buf: Vec<u8>,
}

/// Build a client offer (video + audio recvonly, H.264 and Opus; `vp8_only` for a bad offer).
pub fn offer(
    vp8_only: bool,
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
    let b = Rtc::builder().clear_codecs();
    let b = if vp8_only {
        b.enable_vp8(true)
    } else {
        b.enable_h264(true).enable_opus(true, false)
    };
    let mut rtc = b.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    if !vp8_only {
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    }
    let (o, pending) = api.apply().unwrap();
    (rtc, sock, local, o.to_sdp_string(), pending)
}

/// `sdp` with the value of every `a={attr}:` line set to `value` (bad-offer tests).
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
        assert_eq!(r.status, 422, "{path}: a={wrong} offer: {}", r.body);
        assert!(r.body.contains(wrong), "422 says why: {}", r.body);
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
        assert_eq!(r.status, 422, "{path}: {weak}: {}", r.body);
        assert!(r.body.contains("sha-256"), "422 says why: {}", r.body);
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
            r.body
        );
        assert!(r.body.contains(attr) && r.body.len() < 300, "{}", r.body);
    }
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

impl WhepClient {
    /// POST an offer; `Err` carries the non-201 response.
    pub fn connect(http: SocketAddr, stream: &str) -> Result<WhepClient, HttpResp> {
        Self::connect_through(http, stream, |_| None).map(|(c, _)| c)
    }

    /// [`WhepClient::connect`] with the media path through a [`Bottleneck`] that `link` starts
    /// for the SFU's UDP address (None: direct).
    pub fn connect_through(
        http: SocketAddr,
        stream: &str,
        link: impl FnOnce(SocketAddr) -> Option<Bottleneck>,
    ) -> Result<(WhepClient, Option<Bottleneck>), HttpResp> {
        let started = Instant::now();
        let (mut rtc, sock, local, sdp, pending) = offer(false);
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
        let port = udp_candidate_port(&r.body);
        let mut sdp_answer = r.body.clone();
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
        let answer = SdpAnswer::from_sdp_string(&sdp_answer).expect("answer parses");
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        sock.set_nonblocking(false).unwrap();
        Ok((
            WhepClient {
                rtc,
                sock,
                local,
                location: r.header("location").expect("Location").to_string(),
                etag: r.header("etag").expect("ETag").to_string(),
                answer: r.body.clone(),
                started,
                connected_at: None,
                frames: Vec::new(),
                audio_frames: 0,
                disconnected: false,
                buf: vec![0u8; 2048],
            },
            bottleneck,
        ))
    }

    /// The worker's UDP port from the answer's candidates.
    pub fn server_port(&self) -> u16 {
        udp_candidate_port(&self.answer).expect("candidate with a port in the answer")
    }

    pub fn first_keyframe(&self) -> Option<&GotFrame> {
        self.frames.iter().find(|f| f.keyframe)
    }

    /// Drive the client until `until` returns true or `timeout` passes.
    pub fn run(&mut self, timeout: Duration, until: impl Fn(&WhepClient) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let next = loop {
                match self.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Transmit(t)) => {
                        let _ = self.sock.send_to(&t.contents, t.destination);
                    }
                    Ok(Output::Event(e)) => match e {
                        Event::Connected => self.connected_at = Some(Instant::now()),
                        Event::MediaData(m)
                            if self.rtc.media(m.mid).map(|x| x.kind())
                                == Some(str0m::media::MediaKind::Audio) =>
                        {
                            self.audio_frames += 1
                        }
                        Event::MediaData(m) => self.frames.push(GotFrame {
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
                            self.disconnected = true
                        }
                        _ => {}
                    },
                    Err(e) => panic!("client rtc: {e}"),
                }
            };
            if until(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = next
                .saturating_duration_since(now)
                .min(deadline - now)
                .clamp(Duration::from_millis(1), Duration::from_millis(20));
            self.sock.set_read_timeout(Some(wait)).unwrap();
            let input = match self.sock.recv_from(&mut self.buf) {
                Ok((n, src)) => {
                    match Receive::new(Protocol::Udp, src, self.local, &self.buf[..n]) {
                        Ok(r) => Input::Receive(Instant::now(), r),
                        Err(_) => continue,
                    }
                }
                Err(_) => Input::Timeout(Instant::now()),
            };
            let _ = self.rtc.handle_input(input);
        }
    }
}
