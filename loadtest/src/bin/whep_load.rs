//! WHEP viewer load generator: many str0m clients per thread, each with its own UDP socket on
//! 127.0.0.1, full ICE + DTLS + SRTP against a running relay. Bounded: `--viewers N` (≤ 5,000)
//! and `--secs S` (≤ 300) of measurement after the last join, then it prints a summary and exits.
//! Only loopback targets are accepted.
//!
//! usage: deltacast-whep-load --http 127.0.0.1:PORT --stream NAME --viewers N --secs S
//!            [--join-rate R/s] [--threads T] [--pid RELAY_PID] [--settle SECS] [--json PATH]
//!
//! `--json PATH` (the bounded overload mode) also writes one report: every join attempt in order
//! (HTTP status, `Retry-After`, the refusal body) and, for every viewer that joined, its whole
//! life from the first RTP packet to the end of the window: packets, loss from sequence gaps,
//! whether ICE dropped, and how long before the end its last packet came. A joined viewer that
//! "kept its media" has no ICE drop, a last packet within 1 s of the end, and life loss < 1 %.
//!
//! What it measures, over the window that starts `--settle` seconds after the last viewer joined
//! (so the GOP-cache bursts of new viewers are not in it) and lasts `--secs`:
//! - joined viewers (201 from the POST, ICE + DTLS connected, at least one RTP packet);
//! - RTP packets received, and loss from sequence gaps: per viewer (one video SSRC each),
//!   expected = last − first + 1 extended sequence numbers seen in the window, lost = expected −
//!   unique sequence numbers received (duplicates are counted apart). The relay keeps a NACK
//!   history, so this is loss after any NACK/RTX repair, as a player would see it; packets that
//!   arrive behind a higher sequence number (reordered, or repaired) are counted too;
//! - relay-added fan-out latency: every viewer receives the same RTP payloads (the relay
//!   packetizes once and shares them), but with its own SSRC, sequence numbers and timestamp
//!   offset, so packets are matched across viewers by a hash of the payload. For each payload,
//!   the latency sample of a viewer is its arrival time minus the earliest arrival of that
//!   payload at any viewer. Arrival is the kernel's receive timestamp (SO_TIMESTAMPNS: when the
//!   datagram was queued to the viewer's socket, which on loopback is inside the relay's
//!   `sendmmsg` / io_uring send), so this process's own scheduling does not count. That is the
//!   spread the relay adds by serving viewers one after another; it does not include ingest
//!   (RTMP → frame → packetizer → worker), which is the same for all viewers. Out-of-order
//!   packets are sampled like the others (their delay is real); duplicates are not;
//! - time to first packet / first complete frame (marker bit) per viewer, from the start of its
//!   WHEP POST;
//! - relay CPU over the window (`/proc/PID/task/*/schedstat`, ns, whole process and the SFU
//!   worker threads `sfu-*`), relay RSS before the first join and at the end of the window, and
//!   memory per viewer = (RSS at N − RSS at 0) / N.

use std::collections::HashMap;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input};
use testkit::peer::{Link, Peer, Role};

const MAX_VIEWERS: usize = 5000;
const MAX_SECS: u64 = 300;
/// Latency samples kept per thread (beyond this, samples are not recorded).
const MAX_SAMPLES_PER_THREAD: usize = 8_000_000;

struct Args {
    http: SocketAddr,
    stream: String,
    viewers: usize,
    secs: u64,
    join_rate: f64,
    threads: usize,
    pid: Option<u32>,
    settle: f64,
    json: Option<std::path::PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: deltacast-whep-load --http 127.0.0.1:PORT --stream NAME --viewers N --secs S \
         [--join-rate R] [--threads T] [--pid RELAY_PID] [--settle SECS] [--json PATH]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut a = Args {
        http: "127.0.0.1:8080".parse().unwrap(),
        stream: "live".into(),
        viewers: 10,
        secs: 10,
        join_rate: 100.0,
        threads: 2,
        pid: None,
        settle: 2.0,
        json: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_else(|| usage());
        match v[i].as_str() {
            "--http" => a.http = val.parse().unwrap_or_else(|_| usage()),
            "--stream" => a.stream = val,
            "--viewers" => a.viewers = val.parse().unwrap_or_else(|_| usage()),
            "--secs" => a.secs = val.parse().unwrap_or_else(|_| usage()),
            "--join-rate" => a.join_rate = val.parse().unwrap_or_else(|_| usage()),
            "--threads" => a.threads = val.parse().unwrap_or_else(|_| usage()),
            "--pid" => a.pid = Some(val.parse().unwrap_or_else(|_| usage())),
            "--settle" => a.settle = val.parse().unwrap_or_else(|_| usage()),
            "--json" => a.json = Some(val.into()),
            _ => usage(),
        }
        i += 2;
    }
    if !a.http.ip().is_loopback() {
        eprintln!("whep-load: only loopback targets (127.0.0.0/8, ::1) are allowed");
        std::process::exit(2);
    }
    if a.viewers == 0 || a.viewers > MAX_VIEWERS {
        eprintln!("whep-load: --viewers must be within 1..={MAX_VIEWERS}");
        std::process::exit(2);
    }
    if a.secs == 0 || a.secs > MAX_SECS {
        eprintln!("whep-load: --secs must be within 1..={MAX_SECS}");
        std::process::exit(2);
    }
    a.threads = a.threads.clamp(1, 16);
    a.join_rate = a.join_rate.clamp(1.0, 2000.0);
    a.settle = a.settle.clamp(0.0, 30.0);
    a
}

// ───────────────────────────── relay process stats ─────────────────────────────

/// (whole process, `sfu-N` worker threads) CPU time in ns. The process total comes from
/// /proc/PID/stat (utime + stime, clock ticks; it keeps the time of threads that have exited, such
/// as idle tokio blocking threads), the workers' from their /proc/PID/task/TID/schedstat (ns).
fn relay_cpu_ns(pid: u32) -> (u64, u64) {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let all = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of stat(5); `rest` starts at field 3.
            let u: u64 = f.get(11)?.parse().ok()?;
            let k: u64 = f.get(12)?.parse().ok()?;
            Some((u + k) * 1_000_000_000 / hz)
        })
        .unwrap_or(0);
    let mut sfu = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let p = e.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let comm = comm.trim_end();
            if comm.starts_with("sfu-") && comm[4..].bytes().all(|b| b.is_ascii_digit()) {
                sfu += std::fs::read_to_string(p.join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
                    .unwrap_or(0u64);
            }
        }
    }
    (all, sfu)
}

fn relay_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

// ───────────────────────────── WHEP signaling ─────────────────────────────

/// A join that got no session: the HTTP answer (status 0: no answer at all).
#[derive(Debug)]
struct Refused {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

// ───────────────────────────── one viewer ─────────────────────────────

struct Viewer {
    peer: Peer,
    started: Instant,
    next_timeout: Instant,
    connected: bool,
    dead: bool,
    first_packet: Option<Instant>,
    first_frame: Option<Instant>,
    /// Extended sequence numbers seen in the window: first, last, count.
    win_first: Option<u64>,
    win_last: u64,
    /// Unique sequence numbers received in the window (duplicates not counted).
    win_received: u64,
    /// First copies that arrived behind a higher sequence number (reordered, or NACK/RTX repairs).
    win_late: u64,
    win_dups: u64,
    /// Bit i: sequence number win_first + i was received.
    win_seen: Vec<u64>,
    total_received: u64,
    /// Kernel timestamp (SO_TIMESTAMPNS, ns) of the datagram being handled.
    rx_kernel_ns: u64,
    /// Join order (0-based), for the report.
    index: usize,
    /// Sequence numbers over the viewer's whole life (from its first packet), per SSRC.
    life: Vec<(u32, SeqTrack)>,
    last_packet: Option<Instant>,
}

/// Unique extended sequence numbers seen from the first one on: loss = span − unique.
#[derive(Default)]
struct SeqTrack {
    first: Option<u64>,
    last: u64,
    unique: u64,
    seen: Vec<u64>,
}

impl SeqTrack {
    fn add(&mut self, seq: u64) {
        let first = *self.first.get_or_insert(seq);
        self.last = self.last.max(seq);
        let Some(i) = seq.checked_sub(first).map(|i| i as usize) else {
            return;
        };
        if self.seen.len() <= i / 64 {
            self.seen.resize(i / 64 + 1, 0);
        }
        if self.seen[i / 64] & (1 << (i % 64)) == 0 {
            self.seen[i / 64] |= 1 << (i % 64);
            self.unique += 1;
        }
    }

    fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.last - f + 1)
    }

    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique)
    }
}

fn new_viewer(http: SocketAddr, stream: &str, index: usize) -> Result<Viewer, Refused> {
    let fail = |body: String| Refused {
        status: 0,
        retry_after: None,
        body,
    };
    let started = Instant::now();
    let sock = {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None)
            .map_err(|e| fail(format!("socket: {e}")))?;
        // Room for a keyframe burst while this thread is busy with other viewers.
        let _ = s.set_recv_buffer_size(1 << 20);
        let one: libc::c_int = 1;
        // SAFETY: valid socket fd and option value.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        s.bind(&any.into())
            .map_err(|e| fail(format!("bind: {e}")))?;
        UdpSocket::from(s)
    };
    sock.set_nonblocking(true).unwrap();
    let offered = Peer::offer_on(&Role::viewer().rtp_mode(), Link::Udp(sock), None);
    let peer = match offered.try_post(
        http,
        &format!("/whep/{stream}"),
        &[],
        Duration::from_secs(10),
    ) {
        Ok(Ok(peer)) => peer,
        Ok(Err(r)) => {
            return Err(Refused {
                status: r.status,
                retry_after: r.header("retry-after").map(str::to_string),
                body: r.text().trim().to_string(),
            })
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    Ok(Viewer {
        peer,
        started,
        next_timeout: started,
        connected: false,
        dead: false,
        first_packet: None,
        first_frame: None,
        win_first: None,
        win_last: 0,
        win_received: 0,
        win_late: 0,
        win_dups: 0,
        win_seen: Vec::new(),
        total_received: 0,
        rx_kernel_ns: 0,
        index,
        life: Vec::new(),
        last_packet: None,
    })
}

/// The measurement window, shared by all threads.
struct Window {
    start: parking_lot::Mutex<Option<Instant>>,
    end: parking_lot::Mutex<Option<Instant>>,
}

struct ThreadOut {
    viewers: Vec<Viewer>,
    /// (payload hash, arrival) for packets that arrived within the window.
    /// (payload hash, kernel receive timestamp in ns) of packets that arrived within the window.
    samples: Vec<(u64, u64)>,
}

/// This process's CPU time (user + system), ns.
fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Kernel drop counters of UDP sockets on 127.0.0.1 (/proc/net/udp): (sum over `ours`, sum over
/// the other loopback sockets, e.g. the relay's worker sockets).
fn udp_socket_drops(ours: &std::collections::HashSet<u16>) -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let (mut mine, mut other) = (0, 0);
    for l in s.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(local), Some(drops)) = (f.get(1), f.last()) else {
            continue;
        };
        let Some((ip, port)) = local.split_once(':') else {
            continue;
        };
        if ip != "0100007F" {
            continue;
        }
        let port = u16::from_str_radix(port, 16).unwrap_or(0);
        let d: u64 = drops.parse().unwrap_or(0);
        if ours.contains(&port) {
            mine += d;
        } else {
            other += d;
        }
    }
    (mine, other)
}

/// UDP (RcvbufErrors, SndbufErrors) of the whole host, from /proc/net/snmp: datagrams the kernel
/// dropped because a socket's buffer was full (a client not reading fast enough, or the relay's
/// send buffer).
fn udp_buf_errors() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = s.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(h), Some(v)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let get = |name: &str| -> u64 {
        h.split_whitespace()
            .position(|x| x == name)
            .and_then(|i| v.split_whitespace().nth(i))
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    (get("RcvbufErrors"), get("SndbufErrors"))
}

fn payload_hash(p: &[u8]) -> u64 {
    // Multiply-xor over 8-byte words of the whole payload (encoder output: unique enough).
    let mut h: u64 = 0x9e3779b97f4a7c15 ^ p.len() as u64;
    let mut chunks = p.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap());
        h = (h ^ w).wrapping_mul(0xff51afd7ed558ccd).rotate_left(29);
    }
    for b in chunks.remainder() {
        h = (h ^ *b as u64).wrapping_mul(0xc4ceb9fe1a85ec53);
    }
    h
}

/// `recvmsg` with the kernel's receive timestamp (SO_TIMESTAMPNS: when the datagram was queued
/// to this socket, i.e. when the relay's send reached it on loopback, independent of when this
/// process gets around to reading it). None when nothing is waiting.
fn recv_stamped(sock: &UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr, u64)> {
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    let mut ns = 0u64;
    // SAFETY: walking the control messages the kernel wrote into cbuf.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let src = SocketAddr::from((
        std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ));
    Some((n as usize, src, ns))
}

/// Drain a viewer's output: send its datagrams, account its RTP packets.
fn drain(v: &mut Viewer, win: (Option<Instant>, Option<Instant>), samples: &mut Vec<(u64, u64)>) {
    let next = v.peer.poll(|_, e| match e {
        Event::Connected => v.connected = true,
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => v.dead = true,
        Event::RtpPacket(p) => {
            let at = p.timestamp;
            v.total_received += 1;
            v.first_packet.get_or_insert(at);
            v.last_packet = Some(at);
            // Each SSRC (video, then Opus audio) has its own sequence numbers.
            let ssrc = *p.header.ssrc;
            if win.1.is_none_or(|e| at < e) {
                match v.life.iter().position(|(s, _)| *s == ssrc) {
                    Some(k) => v.life[k].1.add(*p.seq_no),
                    None if v.life.len() < 4 => {
                        let mut t = SeqTrack::default();
                        t.add(*p.seq_no);
                        v.life.push((ssrc, t));
                    }
                    None => {}
                }
            }
            // The window's numbers are for the video SSRC (the first to arrive: audio
            // starts after video).
            if v.life.first().is_some_and(|(s, _)| *s != ssrc) {
                return;
            }
            if p.header.marker && v.first_frame.is_none() {
                v.first_frame = Some(at);
            }
            let in_win = win.0.is_some_and(|s| at >= s) && win.1.is_none_or(|e| at < e);
            if in_win {
                let seq: u64 = *p.seq_no;
                if v.win_first.is_none() {
                    v.win_first = Some(seq);
                    v.win_last = seq;
                }
                let first = v.win_first.unwrap_or(seq);
                let Some(i) = seq.checked_sub(first).map(|i| i as usize) else {
                    // From before the window's first packet: reordered across its start.
                    v.win_late += 1;
                    return;
                };
                if v.win_seen.len() <= i / 64 {
                    v.win_seen.resize(i / 64 + 1, 0);
                }
                if v.win_seen[i / 64] & (1 << (i % 64)) != 0 {
                    v.win_dups += 1;
                    return;
                }
                v.win_seen[i / 64] |= 1 << (i % 64);
                // Behind the highest sequence number seen: reordered on the way (or a
                // NACK/RTX repair). Its delay is real, so it stays in the samples.
                v.win_late += (seq < v.win_last) as u64;
                v.win_last = v.win_last.max(seq);
                v.win_received += 1;
                if samples.len() < MAX_SAMPLES_PER_THREAD {
                    samples.push((payload_hash(&p.payload), v.rx_kernel_ns));
                }
            }
        }
        _ => {}
    });
    match next {
        Ok(t) => v.next_timeout = t,
        Err(e) => {
            eprintln!("whep-load: client rtc: {e}");
            v.dead = true;
        }
    }
}

/// One polling thread: epoll over its viewers' sockets, str0m timers scanned every 10 ms.
fn run_thread(
    rx: crossbeam_channel::Receiver<Viewer>,
    window: Arc<Window>,
    stop: Arc<AtomicBool>,
) -> ThreadOut {
    // SAFETY: plain syscall, result checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1");
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut samples: Vec<(u64, u64)> = Vec::with_capacity(1 << 16);
    let mut buf = vec![0u8; 2048];
    let mut evs: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut next_scan = Instant::now();
    let mut win_cache: (Option<Instant>, Option<Instant>) = (None, None);
    let mut win_checked = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= win_checked {
            win_cache = (*window.start.lock(), *window.end.lock());
            win_checked = now + Duration::from_millis(10);
        }
        while let Ok(mut v) = rx.try_recv() {
            let idx = viewers.len() as u64;
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: idx,
            };
            // SAFETY: valid epoll fd, valid socket fd, valid event.
            let r = unsafe {
                libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, v.peer.udp().as_raw_fd(), &mut ev)
            };
            assert!(r == 0, "epoll_ctl");
            let _ = v.peer.rtc.handle_input(Input::Timeout(now));
            drain(&mut v, win_cache, &mut samples);
            viewers.push(v);
        }
        let wait_ms = next_scan
            .saturating_duration_since(Instant::now())
            .as_millis() as i32;
        // SAFETY: valid epoll fd and output buffer.
        let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, wait_ms.max(0)) };
        for ev in evs.iter().take(n.max(0) as usize) {
            let v = &mut viewers[ev.u64 as usize];
            while let Some((len, src, kernel_ns)) = recv_stamped(v.peer.udp(), &mut buf) {
                let at = Instant::now();
                v.rx_kernel_ns = kernel_ns;
                if let Ok(r) = Receive::new(Protocol::Udp, src, v.peer.local, &buf[..len]) {
                    let _ = v.peer.rtc.handle_input(Input::Receive(at, r));
                    drain(v, win_cache, &mut samples);
                }
            }
        }
        let now = Instant::now();
        if now >= next_scan {
            for v in viewers.iter_mut() {
                if !v.dead && v.next_timeout <= now {
                    let _ = v.peer.rtc.handle_input(Input::Timeout(now));
                    drain(v, win_cache, &mut samples);
                }
            }
            // Client timers (ICE consent, RTCP, NACK) do not need ms precision; a coarse scan
            // keeps this process from spending its core on timeouts.
            next_scan = now + Duration::from_millis(10);
        }
    }
    // SAFETY: our epoll fd.
    unsafe { libc::close(ep) };
    ThreadOut { viewers, samples }
}

/// A joined viewer kept its media: no ICE drop, packets until the end, and life loss under this.
const KEPT_MAX_LOSS_PCT: f64 = 1.0;
/// ... and its last packet came at most this long before the end of the window.
const KEPT_MAX_SILENCE: Duration = Duration::from_secs(1);

/// The `--json` report: every join attempt and every joined viewer's whole life.
fn bounded_report(
    a: &Args,
    outs: &[ThreadOut],
    refusals: &[(usize, Refused)],
    end: Instant,
) -> serde_json::Value {
    use serde_json::json;
    let mut viewers: Vec<&Viewer> = outs.iter().flat_map(|o| o.viewers.iter()).collect();
    viewers.sort_by_key(|v| v.index);
    let (mut kept, mut ice, mut stalled, mut worst) = (0usize, 0usize, 0usize, 0.0f64);
    let per_viewer: Vec<serde_json::Value> = viewers
        .iter()
        .map(|v| {
            let expected: u64 = v.life.iter().map(|(_, t)| t.expected()).sum();
            let lost: u64 = v.life.iter().map(|(_, t)| t.lost()).sum();
            let loss_pct = if expected > 0 {
                lost as f64 * 100.0 / expected as f64
            } else {
                100.0
            };
            let silence = v.last_packet.map(|t| end.saturating_duration_since(t));
            let is_stalled = silence.is_none_or(|s| s > KEPT_MAX_SILENCE);
            let ok = !v.dead && !is_stalled && loss_pct < KEPT_MAX_LOSS_PCT;
            kept += ok as usize;
            ice += v.dead as usize;
            stalled += is_stalled as usize;
            worst = worst.max(loss_pct);
            json!({
                "index": v.index,
                "connected": v.connected,
                "ice_disconnected": v.dead,
                "packets": v.total_received,
                "expected": expected,
                "lost": lost,
                "loss_pct": loss_pct,
                "first_packet_ms": v.first_packet.map(|t| t.duration_since(v.started).as_secs_f64() * 1e3),
                "played_s": v.first_packet.map(|t| end.saturating_duration_since(t).as_secs_f64()),
                "last_packet_before_end_ms": silence.map(|s| s.as_secs_f64() * 1e3),
                "kept_media": ok,
            })
        })
        .collect();
    let refused: Vec<serde_json::Value> = refusals
        .iter()
        .map(|(i, r)| {
            json!({
                "index": i,
                "status": r.status,
                "retry_after": r.retry_after,
                "body": r.body,
            })
        })
        .collect();
    let n503 = refusals.iter().filter(|(_, r)| r.status == 503).count();
    let n503_ra = refusals
        .iter()
        .filter(|(_, r)| r.status == 503 && r.retry_after.is_some())
        .count();
    json!({
        "requested": a.viewers,
        "join_rate": a.join_rate,
        "joined": viewers.len(),
        "refused_503": n503,
        "refused_503_with_retry_after": n503_ra,
        "failed_other": refusals.len() - n503,
        "kept_media": kept,
        "ice_disconnected": ice,
        "stalled": stalled,
        "worst_loss_pct": worst,
        "viewers": per_viewer,
        "refused": refused,
    })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let a = parse_args();
    str0m::crypto::from_feature_flags().install_process_default();
    let stop = Arc::new(AtomicBool::new(false));
    let window = Arc::new(Window {
        start: parking_lot::Mutex::new(None),
        end: parking_lot::Mutex::new(None),
    });
    let rss0 = a.pid.map(relay_rss_kb).unwrap_or(0);
    let mut txs = Vec::new();
    let mut handles = Vec::new();
    for t in 0..a.threads {
        let (tx, rx) = crossbeam_channel::unbounded();
        txs.push(tx);
        let (w, s) = (window.clone(), stop.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("whep-load-{t}"))
                .spawn(move || run_thread(rx, w, s))
                .unwrap(),
        );
    }

    // Joins, paced at --join-rate, from this thread.
    let joined = AtomicUsize::new(0);
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut refusals: Vec<(usize, Refused)> = Vec::new();
    let t_join = Instant::now();
    for i in 0..a.viewers {
        let due = t_join + Duration::from_secs_f64(i as f64 / a.join_rate);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        match new_viewer(a.http, &a.stream, i) {
            Ok(v) => {
                joined.fetch_add(1, Ordering::Relaxed);
                let _ = txs[i % a.threads].send(v);
            }
            Err(r) => {
                let e = if r.status == 0 {
                    r.body.clone()
                } else {
                    format!("POST: {} {}", r.status, r.body)
                };
                let key: String = e.chars().take(80).collect();
                *errors.entry(key).or_default() += 1;
                refusals.push((i, r));
            }
        }
    }
    let join_secs = t_join.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(a.settle));
    let w0 = Instant::now();
    *window.start.lock() = Some(w0);
    let cpu0 = a.pid.map(relay_cpu_ns).unwrap_or((0, 0));
    let udp0 = udp_buf_errors();
    let me0 = self_cpu_ns();
    std::thread::sleep(Duration::from_secs(a.secs));
    let cpu1 = a.pid.map(relay_cpu_ns).unwrap_or((0, 0));
    let udp1 = udp_buf_errors();
    let me1 = self_cpu_ns();
    let w1 = Instant::now();
    *window.end.lock() = Some(w1);
    let rss1 = a.pid.map(relay_rss_kb).unwrap_or(0);
    // Let packets in flight at the window's end arrive (they are outside it anyway).
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let outs: Vec<ThreadOut> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Drops since each socket was created (the viewers' sockets are still open here).
    let ports: std::collections::HashSet<u16> = outs
        .iter()
        .flat_map(|o| o.viewers.iter().map(|v| v.peer.local.port()))
        .collect();
    let (client_drops, other_drops) = udp_socket_drops(&ports);
    let win = (w1 - w0).as_secs_f64();

    // ── per-viewer numbers ──
    let mut connected = 0usize;
    let mut playing = 0usize;
    let mut dead = 0usize;
    let (mut received, mut expected, mut late, mut dups) = (0u64, 0u64, 0u64, 0u64);
    let mut ttfp: Vec<f64> = Vec::new();
    let mut ttff: Vec<f64> = Vec::new();
    let mut total_rx = 0u64;
    for o in &outs {
        for v in &o.viewers {
            connected += v.connected as usize;
            dead += v.dead as usize;
            total_rx += v.total_received;
            if let Some(t) = v.first_packet {
                playing += 1;
                ttfp.push(t.duration_since(v.started).as_secs_f64() * 1e3);
            }
            if let Some(t) = v.first_frame {
                ttff.push(t.duration_since(v.started).as_secs_f64() * 1e3);
            }
            if let Some(f) = v.win_first {
                received += v.win_received;
                late += v.win_late;
                dups += v.win_dups;
                expected += v.win_last - f + 1;
            }
        }
    }
    let lost = expected.saturating_sub(received);
    let loss_pct = if expected > 0 {
        lost as f64 * 100.0 / expected as f64
    } else {
        f64::NAN
    };
    ttfp.sort_by(f64::total_cmp);
    ttff.sort_by(f64::total_cmp);

    // ── fan-out spread: arrival − first arrival of the same payload at any viewer ──
    // Identical payloads recur (SPS/PPS STAP-A at every keyframe): arrivals of one payload hash
    // are grouped into bursts that start at the first arrival and span at most CLUSTER (the
    // repeats are 2 s apart).
    const CLUSTER: Duration = Duration::from_millis(1500);
    let mut all: Vec<(u64, u64)> = outs
        .iter()
        .flat_map(|o| o.samples.iter().copied())
        .collect();
    all.sort_unstable();
    let mut lat: Vec<f64> = Vec::with_capacity(all.len());
    let mut payloads = 0usize;
    let mut cur: Option<(u64, u64)> = None;
    for (h, at) in &all {
        match cur {
            Some((ch, t0)) if ch == *h && at - t0 < CLUSTER.as_nanos() as u64 => {
                lat.push((at - t0) as f64 / 1e6)
            }
            _ => {
                cur = Some((*h, *at));
                payloads += 1;
                lat.push(0.0);
            }
        }
    }
    drop(all);
    lat.sort_by(f64::total_cmp);

    let pkts_per_s = received as f64 / win;
    println!("whep-load: {} viewers requested, joined {} (POST 201) in {:.1} s, ICE+DTLS connected {}, receiving RTP {}, disconnected {}",
        a.viewers, joined.load(Ordering::Relaxed), join_secs, connected, playing, dead);
    for (e, n) in &errors {
        println!("  join error ×{n}: {e}");
    }
    println!(
        "window {:.1} s: RTP packets received {} ({:.0}/s, {:.0}/s per viewer), expected {}, lost {} ({:.3} %)",
        win,
        received,
        pkts_per_s,
        pkts_per_s / playing.max(1) as f64,
        expected,
        lost,
        loss_pct
    );
    println!(
        "  unique packets; {} ({:.2} %) arrived out of order (behind a higher sequence number: reordered, or NACK/RTX repairs; kept in the latency samples), {} duplicates (not counted); host UDP drops in the window: {} receive-buffer, {} send-buffer",
        late,
        late as f64 * 100.0 / received.max(1) as f64,
        dups,
        udp1.0 - udp0.0,
        udp1.1 - udp0.1
    );
    println!(
        "  socket drops over the whole run: {client_drops} at the viewers' sockets (this load generator not \
         keeping up), {other_drops} at other loopback sockets (the relay's); load generator CPU {:.0} % of a core",
        (me1 - me0) as f64 / 1e7 / win
    );
    println!(
        "fan-out spread (arrival − first arrival of the same payload), {} samples, {} payloads: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        lat.len(),
        payloads,
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "first RTP packet after POST: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; first complete frame: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&ttfp, 0.5),
        pct(&ttfp, 0.99),
        ttfp.last().copied().unwrap_or(f64::NAN),
        pct(&ttff, 0.5),
        pct(&ttff, 0.99),
        ttff.last().copied().unwrap_or(f64::NAN)
    );
    let _ = total_rx;
    if let Some(path) = &a.json {
        let report = bounded_report(&a, &outs, &refusals, w1);
        println!(
            "bounded: {} requested, {} joined, {} refused with 503 ({} with Retry-After), {} other failures; \
             joined viewers that kept their media: {} of {}; worst life loss {:.3} %, ICE drops {}, stalled {}",
            a.viewers,
            report["joined"],
            report["refused_503"],
            report["refused_503_with_retry_after"],
            report["failed_other"],
            report["kept_media"],
            report["joined"],
            report["worst_loss_pct"].as_f64().unwrap_or(f64::NAN),
            report["ice_disconnected"],
            report["stalled"],
        );
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()) {
            eprintln!("whep-load: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if let Some(pid) = a.pid {
        let all = (cpu1.0 - cpu0.0) as f64 / 1e9;
        let sfu = (cpu1.1 - cpu0.1) as f64 / 1e9;
        let per_core = if sfu > 0.0 {
            received as f64 / sfu
        } else {
            f64::NAN
        };
        println!(
            "relay pid {pid}: CPU {:.1} % of a core (SFU workers {:.1} %), SRTP packets out per SFU-worker CPU second {:.0}",
            all / win * 100.0,
            sfu / win * 100.0,
            per_core
        );
        let per_viewer = (rss1 as f64 - rss0 as f64) / playing.max(1) as f64;
        println!(
            "relay RSS {} KB at 0 viewers, {} KB at {} viewers: {:.1} KB per viewer",
            rss0, rss1, playing, per_viewer
        );
        // One machine-readable line for bench-sfu.sh.
        println!(
            "RESULT viewers={} joined={} playing={} pkts={} pps={:.0} loss_pct={:.4} reordered_pct={:.2} dups={} rcvbuf_drops={} client_sock_drops={} relay_sock_drops={} loadgen_cpu_pct={:.0} lat_p50_ms={:.3} lat_p99_ms={:.3} lat_max_ms={:.3} ttff_p50_ms={:.1} ttff_p99_ms={:.1} cpu_pct={:.1} sfu_cpu_pct={:.1} pps_per_core={:.0} rss0_kb={} rss_kb={} kb_per_viewer={:.1}",
            a.viewers, joined.load(Ordering::Relaxed), playing, received, pkts_per_s, loss_pct,
            late as f64 * 100.0 / received.max(1) as f64, dups, udp1.0 - udp0.0, client_drops, other_drops, (me1 - me0) as f64 / 1e7 / win,
            pct(&lat, 0.5), pct(&lat, 0.99), lat.last().copied().unwrap_or(f64::NAN),
            pct(&ttff, 0.5), pct(&ttff, 0.99),
            all / win * 100.0, sfu / win * 100.0, per_core, rss0, rss1, per_viewer
        );
    }
}
