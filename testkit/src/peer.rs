//! The one str0m test peer: an `Rtc` with its link (a UDP socket, an ICE-TCP connection with
//! RFC 4571 framing, or an in-memory outbox for in-process benches), the offer it made for a
//! role, and the answer it accepted. The application owns the loop, as in str0m's own examples:
//! [`Peer::poll`] drains the outputs (transmits go out on the link, events to the caller) and
//! [`Peer::input`] feeds one input, bounded in time. Viewers, publishers and the load generator
//! are roles on top: they differ only in what they offer and what they do with the events.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig, RtcError};

use crate::http::{http_send_from, Resp};

/// Where a peer's datagrams go.
pub enum Link {
    /// One UDP socket on 127.0.0.1 (blocking reads with a timeout).
    Udp(UdpSocket),
    /// An active ICE-TCP connection to the relay's passive candidate, RFC 4571 framed.
    Tcp { stream: TcpStream, rbuf: Vec<u8> },
    /// In process: transmits are queued here for the caller to deliver (no sockets).
    Memory(Vec<(SocketAddr, Vec<u8>)>),
}

/// What a peer offers: its codecs and m-lines.
#[derive(Clone, Debug)]
pub struct Role {
    pub direction: Direction,
    pub audio: bool,
    /// Simulcast send layers (publisher) by rid; empty: no simulcast.
    pub rids: Vec<String>,
    /// VP8 only (an offer the relay must refuse).
    pub vp8_only: bool,
    /// str0m's RTP mode: events are RTP packets, not depacketized frames.
    pub rtp_mode: bool,
}

impl Role {
    /// A WHEP viewer: H.264 video + Opus audio, receive only.
    pub fn viewer() -> Role {
        Role {
            direction: Direction::RecvOnly,
            audio: true,
            rids: Vec::new(),
            vp8_only: false,
            rtp_mode: false,
        }
    }

    /// A WHIP publisher: H.264 video (simulcast with `rids`), Opus audio if `audio`, send only.
    pub fn publisher(audio: bool, rids: &[&str]) -> Role {
        Role {
            direction: Direction::SendOnly,
            audio,
            rids: rids.iter().map(|r| r.to_string()).collect(),
            vp8_only: false,
            rtp_mode: false,
        }
    }

    /// Only VP8 video (no audio), for the offers the relay refuses with 406.
    pub fn vp8_only(mut self) -> Role {
        self.vp8_only = true;
        self.audio = false;
        self
    }

    /// No audio m-line.
    pub fn video_only(mut self) -> Role {
        self.audio = false;
        self
    }

    /// Events as RTP packets (the load generator counts sequence numbers).
    pub fn rtp_mode(mut self) -> Role {
        self.rtp_mode = true;
        self
    }
}

/// A peer with its offer made, before the answer.
pub struct Offered {
    pub peer: Peer,
    pub sdp: String,
    pub pending: SdpPendingOffer,
}

/// A str0m peer and its link.
pub struct Peer {
    pub rtc: Rtc,
    pub link: Link,
    pub local: SocketAddr,
    /// The relay's address (ICE-TCP); None over UDP, where str0m knows it from the candidates.
    pub remote: Option<SocketAddr>,
    /// When the offer was made.
    pub started: Instant,
    /// The answer's `Location` and `ETag`, and its SDP (after [`Offered::post`]).
    pub location: String,
    pub etag: String,
    pub answer: String,
    buf: Vec<u8>,
}

fn build(role: &Role, start: Instant, config: Option<RtcConfig>) -> Rtc {
    str0m::crypto::from_feature_flags().install_process_default();
    let b = config.unwrap_or_else(Rtc::builder).clear_codecs();
    let b = if role.vp8_only {
        b.enable_vp8(true)
    } else {
        b.enable_h264(true).enable_opus(true, false)
    };
    let b = if role.rtp_mode {
        b.set_rtp_mode(true).set_stats_interval(None)
    } else {
        b
    };
    b.build(start)
}

impl Peer {
    /// A peer on a fresh UDP socket on 127.0.0.1 that offers `role`.
    pub fn offer(role: &Role) -> Offered {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1");
        Self::offer_on(role, Link::Udp(sock), None)
    }

    /// A peer on `link` that offers `role`; `config` sets str0m options (a crypto provider).
    /// A UDP link gets a host candidate, a TCP link an active TCP one, a memory link a host
    /// candidate at 127.0.0.1:9 ([`Peer::offer_in_memory`] chooses its address).
    pub fn offer_on(role: &Role, link: Link, config: Option<RtcConfig>) -> Offered {
        let local = match &link {
            Link::Udp(s) => s.local_addr().unwrap(),
            Link::Tcp { stream, .. } => stream.local_addr().unwrap(),
            Link::Memory(_) => SocketAddr::from(([127, 0, 0, 1], 9)),
        };
        Self::offer_at(role, link, local, Instant::now(), config)
    }

    /// An in-process peer at `local` whose transmits queue in [`Link::Memory`], on a clock that
    /// starts at `start` (a bench's virtual clock).
    pub fn offer_in_memory(
        role: &Role,
        local: SocketAddr,
        start: Instant,
        config: Option<RtcConfig>,
    ) -> Offered {
        Self::offer_at(role, Link::Memory(Vec::new()), local, start, config)
    }

    fn offer_at(
        role: &Role,
        link: Link,
        local: SocketAddr,
        started: Instant,
        config: Option<RtcConfig>,
    ) -> Offered {
        let mut rtc = build(role, started, config);
        let (cand, remote) = match &link {
            Link::Tcp { stream, .. } => (
                Candidate::builder()
                    .tcp()
                    .host(local)
                    .tcptype(TcpType::Active)
                    .build()
                    .unwrap(),
                stream.peer_addr().ok(),
            ),
            _ => (Candidate::host(local, "udp").unwrap(), None),
        };
        rtc.add_local_candidate(cand);
        let mut api = rtc.sdp_api();
        let simulcast = (!role.rids.is_empty()).then(|| {
            let mut s = Simulcast::new();
            for r in &role.rids {
                s.add_send_layer(SimulcastLayer::new(r));
            }
            s
        });
        api.add_media(MediaKind::Video, role.direction, None, None, simulcast);
        if role.audio {
            api.add_media(MediaKind::Audio, role.direction, None, None, None);
        }
        let (o, pending) = api.apply().expect("an offer with media");
        Offered {
            peer: Peer {
                rtc,
                link,
                local,
                remote,
                started,
                location: String::new(),
                etag: String::new(),
                answer: String::new(),
                // Allocated on the first read: a load generator holds thousands of peers.
                buf: Vec::new(),
            },
            sdp: o.to_sdp_string(),
            pending,
        }
    }

    /// A peer on a UDP `link` that answers `offer` (SDP text) from a server that offers first
    /// (Janus's streaming plugin): the answer's SDP is in [`Peer::answer`].
    pub fn answer_on(role: &Role, link: Link, offer: &str) -> std::io::Result<Peer> {
        let local = match &link {
            Link::Udp(s) => s.local_addr()?,
            _ => return Err(std::io::Error::other("answer_on: UDP links only")),
        };
        let started = Instant::now();
        let mut rtc = build(role, started, None);
        rtc.add_local_candidate(
            Candidate::host(local, "udp").map_err(|e| std::io::Error::other(e.to_string()))?,
        );
        let o = str0m::change::SdpOffer::from_sdp_string(offer)
            .map_err(|e| std::io::Error::other(format!("offer: {e}")))?;
        let answer = rtc
            .sdp_api()
            .accept_offer(o)
            .map_err(|e| std::io::Error::other(format!("accept offer: {e}")))?;
        Ok(Peer {
            rtc,
            link,
            local,
            remote: None,
            started,
            location: String::new(),
            etag: String::new(),
            answer: answer.to_sdp_string(),
            buf: Vec::new(),
        })
    }

    /// A viewer whose only candidate is ICE-TCP (active), as a client with UDP blocked: it
    /// connects to the relay's passive TCP candidate at 127.0.0.1:`tcp_port`.
    pub fn offer_tcp(role: &Role, tcp_port: u16) -> Offered {
        let remote: SocketAddr = format!("127.0.0.1:{tcp_port}").parse().unwrap();
        let stream = TcpStream::connect_timeout(&remote, Duration::from_secs(5))
            .expect("connect to the relay's ICE-TCP port");
        stream.set_nodelay(true).unwrap();
        Self::offer_on(
            role,
            Link::Tcp {
                stream,
                rbuf: Vec::new(),
            },
            None,
        )
    }

    /// Drain str0m's outputs: transmits go out on the link, events to `on_event`. Returns when
    /// str0m next wants a timeout.
    pub fn poll(&mut self, mut on_event: impl FnMut(&mut Rtc, Event)) -> Result<Instant, RtcError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => match &mut self.link {
                    Link::Udp(sock) => {
                        let _ = sock.send_to(&t.contents, t.destination);
                    }
                    Link::Tcp { stream, .. } => {
                        assert_eq!(t.proto, Protocol::Tcp, "a TCP-only peer sends over TCP");
                        let mut f = (t.contents.len() as u16).to_be_bytes().to_vec();
                        f.extend_from_slice(&t.contents);
                        let _ = stream.write_all(&f);
                    }
                    Link::Memory(out) => out.push((t.destination, t.contents.to_vec())),
                },
                Output::Event(e) => on_event(&mut self.rtc, e),
            }
        }
    }

    /// Feed one input: a datagram (or a whole RFC 4571 frame) that arrives within `wait`, else
    /// a timeout tick. Panics when the relay closes the ICE-TCP connection.
    pub fn input(&mut self, wait: Duration) {
        let wait = wait.max(Duration::from_millis(1));
        let now = Instant::now();
        if self.buf.is_empty() {
            self.buf = vec![0u8; 65536];
        }
        match &mut self.link {
            Link::Udp(sock) => {
                sock.set_read_timeout(Some(wait)).unwrap();
                if let Ok((n, src)) = sock.recv_from(&mut self.buf) {
                    if let Ok(r) = Receive::new(Protocol::Udp, src, self.local, &self.buf[..n]) {
                        let _ = self.rtc.handle_input(Input::Receive(Instant::now(), r));
                    }
                    return;
                }
            }
            Link::Tcp { stream, rbuf } => {
                if rbuf.len() < 2
                    || rbuf.len() < 2 + u16::from_be_bytes([rbuf[0], rbuf[1]]) as usize
                {
                    stream.set_read_timeout(Some(wait)).unwrap();
                    match stream.read(&mut self.buf) {
                        Ok(0) => panic!("the relay closed the ICE-TCP connection"),
                        Ok(n) => rbuf.extend_from_slice(&self.buf[..n]),
                        Err(_) => {}
                    }
                }
                let remote = self.remote.expect("a TCP link has a remote");
                let mut fed = false;
                // Deliver every complete frame buffered.
                while rbuf.len() >= 2 {
                    let n = u16::from_be_bytes([rbuf[0], rbuf[1]]) as usize;
                    if rbuf.len() < 2 + n {
                        break;
                    }
                    let pkt: Vec<u8> = rbuf[2..2 + n].to_vec();
                    rbuf.drain(..2 + n);
                    if let Ok(r) = Receive::new(Protocol::Tcp, remote, self.local, &pkt) {
                        let _ = self.rtc.handle_input(Input::Receive(Instant::now(), r));
                        fed = true;
                    }
                }
                if fed {
                    return;
                }
            }
            Link::Memory(_) => {}
        }
        let _ = self
            .rtc
            .handle_input(Input::Timeout(now.max(Instant::now())));
    }

    /// The UDP socket of a UDP link (a caller that reads it itself, with kernel timestamps).
    pub fn udp(&self) -> &UdpSocket {
        match &self.link {
            Link::Udp(s) => s,
            _ => panic!("not a UDP peer"),
        }
    }

    /// Feed a datagram that came from `from` (in-process links).
    pub fn receive(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if let Ok(r) = Receive::new(Protocol::Udp, from, self.local, data) {
            let _ = self.rtc.handle_input(Input::Receive(now, r));
        }
    }

    /// Take what an in-memory peer transmitted.
    pub fn take_outbox(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        match &mut self.link {
            Link::Memory(out) => std::mem::take(out),
            _ => Vec::new(),
        }
    }

    /// Drive until `until` holds or `timeout` passes, handing events to `on_event`.
    pub fn run<S>(
        &mut self,
        state: &mut S,
        timeout: Duration,
        mut on_event: impl FnMut(&mut S, &mut Rtc, Event),
        until: impl Fn(&S) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let next = self
                .poll(|rtc, e| on_event(state, rtc, e))
                .unwrap_or_else(|e| panic!("test peer rtc: {e}"));
            if until(state) {
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
            self.input(wait);
        }
    }
}

impl Offered {
    /// POST the offer to `path` (with `headers`, e.g. a WHIP bearer token) and accept the 201's
    /// answer; `Err` carries any other response. Panics when no HTTP answer comes.
    pub fn post(
        self,
        http: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Peer, Resp> {
        self.try_post(http, path, headers, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// [`Offered::post`] that returns a failed exchange (no connection, no answer, an answer
    /// that does not parse) as the outer error.
    pub fn try_post(
        self,
        http: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> std::io::Result<Result<Peer, Resp>> {
        self.try_post_from(None, http, path, headers, timeout)
    }

    /// [`Offered::try_post`] with the POST's connection from source address `from`.
    pub fn try_post_from(
        self,
        from: Option<std::net::IpAddr>,
        http: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> std::io::Result<Result<Peer, Resp>> {
        let mut h = vec![("Content-Type", "application/sdp")];
        h.extend_from_slice(headers);
        let r = http_send_from(from, http, "POST", path, &h, self.sdp.as_bytes(), timeout)?;
        if r.status != 201 {
            return Ok(Err(r));
        }
        self.try_accept(&r).map(Ok)
    }

    /// Accept the answer of a 201 `r` (posted by the caller, e.g. after following redirects):
    /// its SDP, `Location` (as sent: the caller resolves it) and `ETag`; an answer that does not
    /// parse is an error.
    pub fn try_accept(self, r: &Resp) -> std::io::Result<Peer> {
        let answer = r.text();
        let Offered {
            mut peer, pending, ..
        } = self;
        let a = SdpAnswer::from_sdp_string(&answer)
            .map_err(|e| std::io::Error::other(format!("answer: {e}")))?;
        peer.rtc
            .sdp_api()
            .accept_answer(pending, a)
            .map_err(|e| std::io::Error::other(format!("accept answer: {e}")))?;
        peer.answer = answer;
        peer.location = r.header("location").unwrap_or_default().to_string();
        peer.etag = r.header("etag").unwrap_or_default().to_string();
        Ok(peer)
    }

    /// Accept `answer` (SDP text).
    pub fn accept(self, answer: &str) -> Peer {
        let Offered {
            mut peer, pending, ..
        } = self;
        let a = SdpAnswer::from_sdp_string(answer).expect("answer parses");
        peer.rtc
            .sdp_api()
            .accept_answer(pending, a)
            .expect("accept answer");
        peer.answer = answer.to_string();
        peer
    }
}
