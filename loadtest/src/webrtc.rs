//! WebRTC viewers over WHEP: each a str0m client on its own UDP socket, joining with a full
//! ICE and DTLS handshake, its POST and socket from one source address of `--bind-range` (the relay
//! bounds pending handshakes per address). Joins are paced at the ramp by a few joiner threads;
//! joined viewers are handed to polling threads.
//!
//! A polling thread waits on its viewers' sockets with epoll and, every `batch` interval, reads
//! each ready socket with `recvmmsg` (up to 32 datagrams a call) and the kernel's receive
//! timestamp of each (SO_TIMESTAMPNS). Then, per mode:
//! - **fast**: once DTLS is up, an RTP datagram is counted from its cleartext header
//!   ([`crate::rtp`]) and not decrypted; STUN, DTLS and RTCP still go to str0m, so ICE consent
//!   and the session stay alive. No NACK is sent: loss is what the relay delivered.
//! - **full**: every datagram goes to str0m (SRTP decrypt, RTCP reports, NACKs), and its
//!   decrypted RTP packets are counted alike: a realistic client, at a higher cost per packet.
//!
//! Against a cluster the WHEP POST follows `307`/`308` (the same offer re-POSTed, at most
//! [`MAX_REDIRECTS`] hops, each target under the `--allow-remote` guard); the session URL is the
//! 201's `Location` resolved against the final URL, and the viewer counts for the node that
//! answered. A join refused with 503 is retried after its `Retry-After` (`--retry-refused`),
//! queued on its joiner thread so that it does not hold up the ramp.
//!
//! str0m's timers are scanned every 10 ms. Bounded: viewers ≤ [`MAX_VIEWERS`], each viewer's
//! state is fixed in size (four SSRCs, a 1,024-number history each).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input};
use testkit::peer::{Link, Peer, Role};

use crate::live::{add, Live};
use crate::rtp::{parse_rtp, StreamCounters};

pub const MAX_VIEWERS: usize = 20_000;
/// Redirects a WHEP POST may follow (a cluster redirects at most once per node, 4 hops).
pub const MAX_REDIRECTS: u32 = 4;
/// The longest Retry-After waited for before retrying a refused join.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
const BATCH: usize = 32;
const JOIN_THREADS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mode {
    /// Count SRTP packets from their cleartext RTP header (cheap: thousands of viewers a core).
    Fast,
    /// Decrypt with str0m: SRTP, RTCP reports and NACKs as a real client (smaller runs).
    Full,
}

#[derive(Clone, Debug)]
pub struct Opts {
    /// The target's address (Janus's HTTP API; WHEP's first hop).
    pub http: SocketAddr,
    /// `http://HOST:PORT/whep/STREAM`: where a WHEP join starts.
    pub whep_url: String,
    /// Follow redirects outside 127.0.0.0/8 (`--allow-remote`).
    pub allow_remote: bool,
    /// Retries of a join answered 503 (`--retry-refused`).
    pub retry_refused: u32,
    /// No retry is scheduled at or after this (the run's end, within `--max-seconds`).
    pub deadline: Instant,
    pub viewers: usize,
    pub ramp: f64,
    pub mode: Mode,
    pub threads: usize,
    pub batch: Duration,
    /// Source addresses, used round-robin; empty: the kernel chooses.
    pub bind: Vec<IpAddr>,
    /// Join through Janus's streaming plugin instead of WHEP (the side-by-side benchmark).
    pub janus: Option<crate::janus::Target>,
}

/// A join that got no session: the HTTP answer (status 0: no answer at all).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refused {
    pub index: usize,
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    /// Redirects followed before this answer.
    pub redirects: u32,
    /// Retries made before this answer (after earlier 503s).
    pub retries: u32,
    /// The URL that gave this answer (after redirects).
    pub url: String,
}

/// One viewer's life, when the run ends.
#[derive(Debug, Clone)]
pub struct ViewerEnd {
    pub index: usize,
    pub join: Joined,
    pub connected: bool,
    pub ice_disconnected: bool,
    pub packets: u64,
    pub bytes: u64,
    pub expected: u64,
    pub lost: u64,
    pub reordered: u64,
    pub duplicates: u64,
    /// Unix ns: join started, first packet, first complete video frame, last packet.
    pub started_ns: u64,
    pub first_packet_ns: Option<u64>,
    pub first_frame_ns: Option<u64>,
    pub last_packet_ns: Option<u64>,
}

/// How a viewer's join went: where its session lives.
#[derive(Debug, Clone, Default)]
pub struct Joined {
    /// Redirects its POST followed.
    pub redirects: u32,
    /// 503s retried before it joined.
    pub retries: u32,
    /// The authority (host:port) of the node that answered 201.
    pub node: String,
    /// The session URL: the 201's `Location` resolved against the final URL (where a DELETE
    /// or PATCH goes).
    pub session: String,
}

struct Viewer {
    peer: Peer,
    index: usize,
    join: Joined,
    started_ns: u64,
    next_timeout: Instant,
    connected: bool,
    dead: bool,
    video_pts: Vec<u8>,
    counters: StreamCounters,
    packets: u64,
    bytes: u64,
    first_packet_ns: Option<u64>,
    first_frame_ns: Option<u64>,
    last_packet_ns: Option<u64>,
    /// Kernel receive time of the datagram being fed to str0m (full mode).
    rx_ns: u64,
}

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Payload types of the answer's video m-line.
fn video_payload_types(sdp: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in sdp.lines() {
        if let Some(rest) = l.strip_prefix("m=video ") {
            out.extend(
                rest.split_whitespace()
                    .skip(2)
                    .filter_map(|p| p.parse::<u8>().ok()),
            );
        }
    }
    out
}

fn udp_socket(bind: Option<IpAddr>) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let ip = bind.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let s = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::DGRAM,
        None,
    )?;
    // Room for keyframe bursts between two reads of a batch interval.
    let _ = s.set_recv_buffer_size(1 << 20);
    let one: libc::c_int = 1;
    // SAFETY: valid socket fd and option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s.bind(&SocketAddr::new(ip, 0).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Retry-After in seconds (RFC 9110 delay-seconds), capped at [`MAX_RETRY_AFTER`]; 1 s when
/// absent or not a number (an HTTP-date is read as absent).
pub fn retry_delay(h: Option<&str>) -> Duration {
    h.and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), |s| {
            Duration::from_secs(s).min(MAX_RETRY_AFTER)
        })
}

/// POST `sdp` to `o.whep_url`, following up to [`MAX_REDIRECTS`] 307/308s to http URLs (each
/// under the `--allow-remote` guard): the final URL and its answer, or why no answer came.
fn post_offer(
    o: &Opts,
    from: Option<IpAddr>,
    sdp: &str,
) -> Result<(String, u32, testkit::Resp), (String, u32, String)> {
    let mut url = o.whep_url.clone();
    let mut redirects = 0;
    loop {
        let t = crate::url::target(&url).map_err(|e| (url.clone(), redirects, e))?;
        if !o.allow_remote && !t.addr.ip().is_loopback() {
            return Err((
                url,
                redirects,
                format!(
                    "{} is not a loopback address: pass --allow-remote to follow a redirect there",
                    t.addr.ip()
                ),
            ));
        }
        let r = testkit::http::http_send_from(
            from,
            t.addr,
            "POST",
            &t.path,
            &[("Content-Type", "application/sdp")],
            sdp.as_bytes(),
            Duration::from_secs(10),
        )
        .map_err(|e| (url.clone(), redirects, e.to_string()))?;
        if !matches!(r.status, 307 | 308) {
            return Ok((url, redirects, r));
        }
        if redirects >= MAX_REDIRECTS {
            return Err((
                url,
                redirects,
                format!("more than {MAX_REDIRECTS} redirects"),
            ));
        }
        let Some(loc) = r.header("location") else {
            return Err((url, redirects, format!("{} without Location", r.status)));
        };
        url = crate::url::resolve(&url, loc).map_err(|e| (url.clone(), redirects, e))?;
        redirects += 1;
    }
}

fn join(o: &Opts, index: usize, retries: u32) -> Result<Viewer, Refused> {
    let fail = |body: String| Refused {
        index,
        status: 0,
        retry_after: None,
        body,
        redirects: 0,
        retries,
        url: String::new(),
    };
    let started_ns = unix_ns();
    let from = (!o.bind.is_empty()).then(|| o.bind[index % o.bind.len()]);
    // A socket bound to 0.0.0.0 would offer 0.0.0.0 as its candidate: use the loopback address
    // the relay is reached on, as a client would its interface address.
    let sock = udp_socket(from.or(o.http.ip().is_loopback().then(|| o.http.ip())))
        .map_err(|e| fail(format!("socket: {e}")))?;
    let mut join = Joined {
        retries,
        ..Default::default()
    };
    let peer = if let Some(t) = &o.janus {
        let timeout = Duration::from_secs(10);
        let w = crate::janus::watch(t, from, o.http, timeout).map_err(fail)?;
        let peer = Peer::answer_on(&Role::viewer().rtp_mode(), Link::Udp(sock), &w.offer)
            .map_err(|e| fail(e.to_string()))?;
        w.start(t, from, o.http, &peer.answer, timeout)
            .map_err(fail)?;
        join.node = o.http.to_string();
        peer
    } else {
        let offered = Peer::offer_on(&Role::viewer().rtp_mode(), Link::Udp(sock), None);
        let (url, redirects, r) =
            post_offer(o, from, &offered.sdp).map_err(|(url, n, e)| Refused {
                redirects: n,
                url,
                ..fail(e)
            })?;
        if r.status != 201 {
            return Err(Refused {
                index,
                status: r.status,
                retry_after: r.header("retry-after").map(str::to_string),
                body: r.text().trim().chars().take(300).collect(),
                redirects,
                retries,
                url,
            });
        }
        let peer = offered.try_accept(&r).map_err(|e| Refused {
            redirects,
            url: url.clone(),
            ..fail(e.to_string())
        })?;
        // The media goes where the answer's candidates say; the session lives on the node
        // that answered, whose URL a relative Location is resolved against.
        if !peer.location.is_empty() {
            join.session = crate::url::resolve(&url, &peer.location).unwrap_or_default();
        }
        join.node = crate::url::target(&url)
            .map(|t| t.authority)
            .unwrap_or_default();
        join.redirects = redirects;
        peer
    };
    let video_pts = video_payload_types(&peer.answer);
    Ok(Viewer {
        peer,
        index,
        join,
        started_ns,
        next_timeout: Instant::now(),
        connected: false,
        dead: false,
        video_pts,
        counters: StreamCounters::default(),
        packets: 0,
        bytes: 0,
        first_packet_ns: None,
        first_frame_ns: None,
        last_packet_ns: None,
        rx_ns: 0,
    })
}

/// Sums of counter changes since the last flush to [`Live`].
#[derive(Default)]
struct Acc {
    pkts: u64,
    bytes: u64,
    expected: u64,
    unique: u64,
    reordered: u64,
    dups: u64,
}

impl Acc {
    fn flush(&mut self, live: &Live) {
        add(&live.w_pkts, self.pkts);
        add(&live.w_bytes, self.bytes);
        add(&live.w_expected, self.expected);
        add(&live.w_unique, self.unique);
        add(&live.w_reordered, self.reordered);
        add(&live.w_dups, self.dups);
        *self = Acc::default();
    }
}

/// Count one RTP packet (fast path: cleartext header; full path: str0m's decrypted packet).
#[allow(clippy::too_many_arguments)]
fn count(
    v: &mut Viewer,
    acc: &mut Acc,
    pt: u8,
    marker: bool,
    seq: u16,
    ssrc: u32,
    len: usize,
    at_ns: u64,
) {
    let d = v.counters.add(ssrc, seq);
    acc.pkts += 1;
    acc.bytes += len as u64;
    acc.expected += d.expected;
    acc.unique += d.unique;
    acc.reordered += d.reordered;
    acc.dups += d.duplicate;
    v.packets += 1;
    v.bytes += len as u64;
    v.first_packet_ns.get_or_insert(at_ns);
    v.last_packet_ns = Some(at_ns);
    if marker && v.first_frame_ns.is_none() && v.video_pts.contains(&pt) {
        v.first_frame_ns = Some(at_ns);
    }
}

/// Drain str0m's outputs: transmits go out, events are accounted.
fn drain(v: &mut Viewer, acc: &mut Acc) {
    let next = {
        let Viewer {
            peer,
            connected,
            dead,
            ..
        } = v;
        let mut pkts = Vec::new();
        let r = peer.poll(|_, e| match e {
            Event::Connected => *connected = true,
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => *dead = true,
            Event::RtpPacket(p) => pkts.push((
                *p.header.payload_type,
                p.header.marker,
                *p.seq_no as u16,
                *p.header.ssrc,
                p.payload.len() + 12,
            )),
            _ => {}
        });
        let at = v.rx_ns;
        for (pt, m, seq, ssrc, len) in pkts {
            count(v, acc, pt, m, seq, ssrc, len, at);
        }
        r
    };
    match next {
        Ok(t) => v.next_timeout = t,
        Err(_) => v.dead = true,
    }
}

/// recvmmsg buffers for one thread: BATCH datagrams with their source and kernel timestamp.
struct Batch {
    bufs: Vec<[u8; 2048]>,
    addrs: Vec<libc::sockaddr_in>,
    cmsgs: Vec<[u64; 8]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Box<Batch> {
        let mut b = Box::new(Batch {
            bufs: vec![[0u8; 2048]; BATCH],
            // SAFETY: plain C structs, valid zeroed.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            cmsgs: vec![[0u64; 8]; BATCH],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
        });
        for i in 0..BATCH {
            let iov = libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: 2048,
            };
            b.iovs.push(iov);
        }
        for i in 0..BATCH {
            // SAFETY: zeroed mmsghdr is valid; pointers into boxed vectors that never move.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = &mut b.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_iov = &mut b.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = b.cmsgs[i].as_mut_ptr() as *mut libc::c_void;
            b.hdrs.push(h);
        }
        b
    }

    /// Read up to BATCH datagrams from `fd` without blocking; returns how many.
    fn recv(&mut self, fd: i32) -> usize {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = 64;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the sizes given.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        n.max(0) as usize
    }

    /// Datagram `i`: (bytes, source, kernel receive time in unix ns, or now).
    fn get(&self, i: usize) -> (&[u8], SocketAddr, u64) {
        let h = &self.hdrs[i];
        let a = &self.addrs[i];
        let src = SocketAddr::from((
            std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        ));
        let mut ns = 0;
        // SAFETY: walking the control messages the kernel wrote for this datagram.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                    ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        if ns == 0 {
            ns = unix_ns();
        }
        (&self.bufs[i][..h.msg_len as usize], src, ns)
    }
}

fn poll_thread(
    rx: crossbeam_channel::Receiver<Viewer>,
    mode: Mode,
    batch: Duration,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
) -> Vec<ViewerEnd> {
    // SAFETY: plain syscall, result checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1");
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut b = Batch::new();
    let mut acc = Acc::default();
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut next_scan = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        while let Ok(mut v) = rx.try_recv() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: viewers.len() as u64,
            };
            // SAFETY: valid epoll fd, socket fd and event.
            let r = unsafe {
                libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, v.peer.udp().as_raw_fd(), &mut ev)
            };
            assert!(r == 0, "epoll_ctl");
            let _ = v.peer.rtc.handle_input(Input::Timeout(round));
            drain(&mut v, &mut acc);
            viewers.push(v);
        }
        let wait_ms = next_scan.saturating_duration_since(round).as_millis() as i32;
        // SAFETY: valid epoll fd and output buffer.
        let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, wait_ms.max(0)) };
        for ev in evs.iter().take(n.max(0) as usize) {
            let v = &mut viewers[ev.u64 as usize];
            let fd = v.peer.udp().as_raw_fd();
            loop {
                let got = b.recv(fd);
                for i in 0..got {
                    let (data, src, ns) = b.get(i);
                    if mode == Mode::Fast && v.connected {
                        if let Some(h) = parse_rtp(data) {
                            count(
                                v,
                                &mut acc,
                                h.payload_type,
                                h.marker,
                                h.seq,
                                h.ssrc,
                                data.len(),
                                ns,
                            );
                            continue;
                        }
                    }
                    v.rx_ns = ns;
                    if let Ok(r) = Receive::new(Protocol::Udp, src, v.peer.local, data) {
                        let _ = v.peer.rtc.handle_input(Input::Receive(Instant::now(), r));
                        drain(v, &mut acc);
                    }
                }
                if got < BATCH {
                    break;
                }
            }
        }
        let now = Instant::now();
        if now >= next_scan {
            for v in viewers.iter_mut() {
                if !v.dead && v.next_timeout <= now {
                    let _ = v.peer.rtc.handle_input(Input::Timeout(now));
                    drain(v, &mut acc);
                }
            }
            // Client timers (ICE consent, RTCP, NACK) need no ms precision.
            next_scan = now + Duration::from_millis(10);
        }
        acc.flush(&live);
        // Let datagrams gather so each recvmmsg reads several (timestamps are the kernel's).
        if let Some(rest) = batch.checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    acc.flush(&live);
    // SAFETY: our epoll fd.
    unsafe { libc::close(ep) };
    viewers
        .into_iter()
        .map(|v| ViewerEnd {
            index: v.index,
            join: v.join,
            connected: v.connected,
            ice_disconnected: v.dead,
            packets: v.packets,
            bytes: v.bytes,
            expected: v.counters.expected(),
            lost: v.counters.lost(),
            reordered: v.counters.by_ssrc.iter().map(|(_, c)| c.reordered).sum(),
            duplicates: v.counters.by_ssrc.iter().map(|(_, c)| c.duplicates).sum(),
            started_ns: v.started_ns,
            first_packet_ns: v.first_packet_ns,
            first_frame_ns: v.first_frame_ns,
            last_packet_ns: v.last_packet_ns,
        })
        .collect()
}

/// Joiner thread `k`: viewers k, k + JOIN_THREADS, ... at the ramp, and the retries of refused
/// ones when due, whichever comes first; the joins that failed for good.
fn joiner(
    o: &Opts,
    k: usize,
    t0: Instant,
    txs: &[crossbeam_channel::Sender<Viewer>],
    live: &Live,
    stop_joins: &AtomicBool,
) -> Vec<Refused> {
    let mut refused = Vec::new();
    let mut fresh = (k..o.viewers).step_by(JOIN_THREADS).peekable();
    // Refused joins waiting for their retry: (due, the last refusal). At most one per viewer.
    let mut again: Vec<(Instant, Refused)> = Vec::new();
    loop {
        let fresh_due = fresh
            .peek()
            .map(|&i| t0 + Duration::from_secs_f64(i as f64 / o.ramp));
        let retry = again
            .iter()
            .enumerate()
            .min_by_key(|(_, (due, _))| *due)
            .map(|(j, (due, _))| (j, *due));
        let (due, next) = match (fresh_due, retry) {
            (None, None) => break,
            (Some(f), Some((j, r))) if r < f => (r, Err(j)),
            (None, Some((j, r))) => (r, Err(j)),
            (Some(f), _) => (f, Ok(())),
        };
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        if stop_joins.load(Ordering::Relaxed) {
            break;
        }
        let (i, retries) = match next {
            Ok(()) => (fresh.next().expect("peeked"), 0),
            Err(j) => {
                let (_, r) = again.swap_remove(j);
                live.w_retrying.fetch_sub(1, Ordering::Relaxed);
                (r.index, r.retries + 1)
            }
        };
        match join(o, i, retries) {
            Ok(v) => {
                live.w_joined.fetch_add(1, Ordering::Relaxed);
                let _ = txs[i % txs.len()].send(v);
            }
            Err(r) => {
                if r.status == 503 && r.retries < o.retry_refused {
                    let due = Instant::now() + retry_delay(r.retry_after.as_deref());
                    if due < o.deadline {
                        live.w_retrying.fetch_add(1, Ordering::Relaxed);
                        again.push((due, r));
                        continue;
                    }
                }
                live.w_failed.fetch_add(1, Ordering::Relaxed);
                refused.push(r);
            }
        }
    }
    // Stopped with retries pending: their last refusal stands.
    for (_, r) in again {
        live.w_retrying.fetch_sub(1, Ordering::Relaxed);
        live.w_failed.fetch_add(1, Ordering::Relaxed);
        refused.push(r);
    }
    refused
}

/// The running WebRTC side of a run.
pub struct Running {
    joiners: Vec<JoinHandle<Vec<Refused>>>,
    pollers: Vec<JoinHandle<Vec<ViewerEnd>>>,
    stop: Arc<AtomicBool>,
}

/// Start joining `o.viewers` viewers at `o.ramp` per second (from `t0`).
pub fn start(o: Opts, t0: Instant, live: Arc<Live>, stop_joins: Arc<AtomicBool>) -> Running {
    str0m::crypto::from_feature_flags().install_process_default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut txs = Vec::new();
    let mut pollers = Vec::new();
    for t in 0..o.threads.max(1) {
        let (tx, rx) = crossbeam_channel::unbounded();
        txs.push(tx);
        let (live, stop) = (live.clone(), stop.clone());
        let (mode, batch) = (o.mode, o.batch);
        pollers.push(
            std::thread::Builder::new()
                .name(format!("webrtc-{t}"))
                .spawn(move || poll_thread(rx, mode, batch, live, stop))
                .expect("spawn"),
        );
    }
    let o = Arc::new(o);
    let joiners = (0..JOIN_THREADS)
        .map(|k| {
            let (o, txs, live, stop_joins) =
                (o.clone(), txs.clone(), live.clone(), stop_joins.clone());
            std::thread::Builder::new()
                .name(format!("whep-join-{k}"))
                .spawn(move || joiner(&o, k, t0, &txs, &live, &stop_joins))
                .expect("spawn")
        })
        .collect();
    Running {
        joiners,
        pollers,
        stop,
    }
}

impl Running {
    /// Stop every viewer; their lives and the refused joins (in join order).
    pub fn finish(self) -> (Vec<ViewerEnd>, Vec<Refused>) {
        let mut refused: Vec<Refused> = self
            .joiners
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        self.stop.store(true, Ordering::Relaxed);
        let mut ends: Vec<ViewerEnd> = self
            .pollers
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        ends.sort_by_key(|v| v.index);
        refused.sort_by_key(|r| r.index);
        (ends, refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_payload_types_from_the_answer() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=x\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 103\r\n";
        assert_eq!(video_payload_types(sdp), vec![102, 103]);
    }

    /// A WHEP stand-in on 127.0.0.1: answers each POST with `answer(n, own address)` (n counts
    /// from 0); the POSTs' request lines and bodies, for `posts` requests.
    fn stand_in(
        posts: usize,
        answer: impl Fn(usize, SocketAddr) -> String + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<(String, String)>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for n in 0..posts {
                let (s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut r = BufReader::new(s);
                let (mut line, mut first, mut len) = (String::new(), String::new(), 0);
                while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                    if first.is_empty() {
                        first = line.trim().to_string();
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                seen.push((first, String::from_utf8(body).unwrap()));
                r.get_mut().write_all(answer(n, addr).as_bytes()).unwrap();
            }
            seen
        });
        (addr, h)
    }

    fn opts(url: String) -> Opts {
        Opts {
            http: "127.0.0.1:1".parse().unwrap(),
            whep_url: url,
            allow_remote: false,
            retry_refused: 0,
            deadline: Instant::now(),
            viewers: 1,
            ramp: 1.0,
            mode: Mode::Fast,
            threads: 1,
            batch: Duration::from_millis(10),
            bind: Vec::new(),
            janus: None,
        }
    }

    fn redirect(to: &str) -> String {
        format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n")
    }

    #[test]
    fn a_redirected_post_carries_the_same_offer_to_the_resolved_url() {
        let (addr, h) = stand_in(3, |n, _| {
            match n {
            0 => redirect("/b/whep/s?via=a"),
            1 => redirect("c/s"),
            _ => "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nfull"
                .into(),
        }
        });
        let o = opts(format!("http://{addr}/whep/s"));
        let (url, redirects, r) = post_offer(&o, None, "v=0 offer").unwrap();
        assert_eq!(url, format!("http://{addr}/b/whep/c/s"));
        assert_eq!((redirects, r.status), (2, 503));
        assert_eq!(r.header("retry-after"), Some("7"));
        let seen = h.join().unwrap();
        let lines: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            lines,
            [
                "POST /whep/s HTTP/1.1",
                "POST /b/whep/s?via=a HTTP/1.1",
                "POST /b/whep/c/s HTTP/1.1"
            ]
        );
        assert!(seen.iter().all(|(_, b)| b == "v=0 offer"), "{seen:?}");
    }

    #[test]
    fn redirects_are_bounded_in_hops_scheme_and_address() {
        // A redirect loop: the first POST and MAX_REDIRECTS more, then given up.
        let hops = MAX_REDIRECTS as usize + 1;
        let (addr, h) = stand_in(hops, |_, a| redirect(&format!("http://{a}/whep/s")));
        let o = opts(format!("http://{addr}/whep/s"));
        let (_, n, e) = post_offer(&o, None, "x").unwrap_err();
        assert_eq!(n, MAX_REDIRECTS);
        assert!(e.contains("more than 4 redirects"), "{e}");
        assert_eq!(h.join().unwrap().len(), hops);
        // A target outside 127.0.0.0/8 needs --allow-remote, on every hop.
        let (addr, h) = stand_in(1, |_, _| redirect("http://192.0.2.1:8080/whep/s"));
        let (url, n, e) =
            post_offer(&opts(format!("http://{addr}/whep/s")), None, "x").unwrap_err();
        assert_eq!((url.as_str(), n), ("http://192.0.2.1:8080/whep/s", 1));
        assert!(e.contains("--allow-remote"), "{e}");
        h.join().unwrap();
        // Only http(s) is followed, and this tool speaks plain HTTP.
        for (to, why) in [
            ("file:///etc/passwd", "not an http(s) URL"),
            ("https://127.0.0.1/whep/s", "only http://"),
        ] {
            let (addr, h) = stand_in(1, move |_, _| redirect(to));
            let (_, _, e) =
                post_offer(&opts(format!("http://{addr}/whep/s")), None, "x").unwrap_err();
            assert!(e.contains(why), "{to}: {e}");
            h.join().unwrap();
        }
        let (addr, h) = stand_in(1, |_, _| {
            "HTTP/1.1 307 Temporary Redirect\r\nContent-Length: 0\r\n\r\n".into()
        });
        let (_, _, e) = post_offer(&opts(format!("http://{addr}/whep/s")), None, "x").unwrap_err();
        assert!(e.contains("without Location"), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn retry_after_is_seconds_capped_with_a_default() {
        assert_eq!(retry_delay(Some("10")), Duration::from_secs(10));
        assert_eq!(retry_delay(Some(" 0 ")), Duration::ZERO);
        assert_eq!(retry_delay(Some("3600")), MAX_RETRY_AFTER);
        assert_eq!(retry_delay(None), Duration::from_secs(1));
        assert_eq!(retry_delay(Some("-5")), Duration::from_secs(1));
        assert_eq!(
            retry_delay(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Duration::from_secs(1)
        );
    }
}
