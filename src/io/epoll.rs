//! epoll driver: a nonblocking UDP socket and the waker's eventfd in one epoll set; receives with
//! `recvmmsg` (32 datagrams per call) and sends with `sendmmsg` (64 messages per call).
//!
//! With UDP GSO on (`sfu.gso`, and the kernel accepts `UDP_SEGMENT`), a run of consecutive
//! datagrams to one destination that share a size (the last may be shorter) — a frame's RTP
//! packets to one viewer — goes out as one message with a `UDP_SEGMENT` cmsg, so the kernel walks
//! its UDP/IP send path once per run instead of once per datagram; `sendmmsg` still carries many
//! viewers per syscall. The segments are not copied: each is one iovec of the message, and the
//! kernel gathers them (it copies user data into the skb either way). A kernel or device that
//! refuses GSO (EIO / EINVAL / EMSGSIZE on a GSO message) turns it off for the socket, logged once,
//! and the refused datagrams are resent one per message.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::{sockaddr_of, DriverKind, IoStats, Outgoing, UdpDriver, Waker, RECV_BUF};

const RX_BATCH: usize = 32;
/// Messages per `sendmmsg` (each one datagram, or one GSO run).
const TX_BATCH: usize = 64;
/// Most segments per GSO message: the kernel's `UDP_MAX_SEGMENTS` (64; newer kernels allow more).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes per GSO message: what one IPv4 datagram can carry (65535 − 20 − 8).
const GSO_MAX_BYTES: usize = 65_507;
/// iovecs for one `sendmmsg`: every message full of segments.
const TX_IOVS: usize = TX_BATCH * GSO_MAX_SEGMENTS;
/// Most datagrams read per `poll`, so timers and the channel are served under a flood.
const RX_PER_POLL: usize = 512;

pub struct EpollDriver {
    socket: UdpSocket,
    local: SocketAddr,
    epfd: OwnedFd,
    waker: Waker,
    rx_bufs: Vec<[u8; RECV_BUF]>,
    rx_addrs: Vec<libc::sockaddr_storage>,
    /// Send runs of same-size datagrams to one destination as UDP GSO messages.
    gso: bool,
    tx: TxScratch,
    stats: IoStats,
}

/// Reused `sendmmsg` arguments (no allocation per batch). The kernel reads the pointers set into
/// `msgs` only during the call; the Vecs are never resized after `new`, so they stay valid.
struct TxScratch {
    msgs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<GsoCmsg>,
    /// Per message: index of its first datagram in the batch and how many it carries.
    runs: Vec<(usize, usize)>,
}

/// Control buffer for one `UDP_SEGMENT` cmsg (u16 segment size), aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct GsoCmsg([u8; 32]);

/// `CMSG_SPACE(sizeof(u16))`: the control length of a GSO message.
// SAFETY: CMSG_SPACE is pure arithmetic on its argument.
const GSO_CMSG_SPACE: usize = unsafe { libc::CMSG_SPACE(2) } as usize;
const _: () = assert!(GSO_CMSG_SPACE <= std::mem::size_of::<GsoCmsg>());

// SAFETY: the raw buffers (and the scratch's pointers, set and used within one `send_batch`) are
// only touched by the owning thread.
unsafe impl Send for EpollDriver {}

/// Whether the kernel knows `UDP_SEGMENT` on this socket (Linux 4.18+). A device that cannot
/// segment is only found out by sending; `send_batch` handles that.
fn gso_supported(socket: &UdpSocket) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    r == 0
}

/// How many datagrams from the start of `out` one GSO message can carry: same destination, every
/// one as long as the first except a shorter last one (the kernel cuts the payload into
/// first-length segments), within the segment and byte limits. 1 means send it alone.
pub(crate) fn gso_run(out: &[Outgoing]) -> usize {
    let first = &out[0];
    let seg = first.data.len();
    if seg == 0 {
        return 1;
    }
    let max = GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / seg).min(out.len());
    let mut n = 1;
    while n < max {
        let o = &out[n];
        let len = o.data.len();
        if o.dst != first.dst || len > seg || len == 0 {
            break;
        }
        n += 1;
        if len < seg {
            break;
        }
    }
    n
}

const TOKEN_SOCKET: u64 = 1;
const TOKEN_WAKER: u64 = 2;

impl EpollDriver {
    /// `gso`: use UDP GSO where the kernel supports it (checked here with a `UDP_SEGMENT`
    /// getsockopt, Linux 4.18+).
    pub fn new(socket: UdpSocket, gso: bool) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        // SAFETY: plain syscall; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd we own.
        let epfd = unsafe { OwnedFd::from_raw_fd(ep) };
        let waker = Waker::new()?;
        let gso = gso && gso_supported(&socket);
        for (fd, token) in [
            (socket.as_raw_fd(), TOKEN_SOCKET),
            (waker.raw_fd(), TOKEN_WAKER),
        ] {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token,
            };
            // SAFETY: valid epoll fd, valid fd and event struct.
            if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Self {
            socket,
            local,
            epfd,
            waker,
            rx_bufs: vec![[0u8; RECV_BUF]; RX_BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            rx_addrs: vec![unsafe { std::mem::zeroed() }; RX_BATCH],
            gso,
            tx: TxScratch {
                // SAFETY: the libc structs are plain data; all-zero is valid for them.
                msgs: vec![unsafe { std::mem::zeroed() }; TX_BATCH],
                iovs: vec![
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0
                    };
                    TX_IOVS
                ],
                // SAFETY: as above.
                addrs: vec![unsafe { std::mem::zeroed() }; TX_BATCH],
                cmsgs: vec![GsoCmsg([0; 32]); TX_BATCH],
                runs: vec![(0, 0); TX_BATCH],
            },
            stats: IoStats::default(),
        })
    }

    /// Fill the scratch with up to `TX_BATCH` messages for `out[start..]`; returns how many.
    fn build_messages(&mut self, out: &[Outgoing], start: usize) -> usize {
        let tx = &mut self.tx;
        // Pass 1: what each message carries, its iovecs and its address.
        let mut i = start;
        let mut nmsg = 0;
        let mut niov = 0;
        while i < out.len() && nmsg < TX_BATCH {
            let run = if self.gso { gso_run(&out[i..]) } else { 1 };
            for (k, o) in out[i..i + run].iter().enumerate() {
                tx.iovs[niov + k] = libc::iovec {
                    iov_base: o.data.as_ptr() as *mut libc::c_void,
                    iov_len: o.data.len(),
                };
            }
            let sa = socket2::SockAddr::from(out[i].dst);
            // SAFETY: copies `sa.len()` bytes of a valid sockaddr into a sockaddr_storage.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    sa.as_ptr() as *const u8,
                    &mut tx.addrs[nmsg] as *mut _ as *mut u8,
                    sa.len() as usize,
                );
            }
            tx.msgs[nmsg].msg_hdr.msg_namelen = sa.len();
            tx.runs[nmsg] = (i, run);
            nmsg += 1;
            niov += run;
            i += run;
        }
        // Pass 2: the pointers, taken once the arrays are no longer written through references.
        let iovs = tx.iovs.as_mut_ptr();
        let addrs = tx.addrs.as_mut_ptr();
        let cmsgs = tx.cmsgs.as_mut_ptr();
        let mut niov = 0;
        for (m, &(first, run)) in tx.runs[..nmsg].iter().enumerate() {
            let hdr = &mut tx.msgs[m].msg_hdr;
            // SAFETY: m < TX_BATCH and niov + run <= TX_IOVS (at most GSO_MAX_SEGMENTS per
            // message), so every pointer stays inside its Vec.
            unsafe {
                hdr.msg_name = addrs.add(m) as *mut libc::c_void;
                hdr.msg_iov = iovs.add(niov);
            }
            hdr.msg_iovlen = run as _;
            if run > 1 {
                // SAFETY: the control buffer is 8-aligned and at least GSO_CMSG_SPACE bytes, so
                // CMSG_FIRSTHDR returns its start and the cmsg's data has room for a u16.
                unsafe {
                    hdr.msg_control = cmsgs.add(m) as *mut libc::c_void;
                    hdr.msg_controllen = GSO_CMSG_SPACE as _;
                    let c = libc::CMSG_FIRSTHDR(hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    let seg = out[first].data.len() as u16;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
                }
            } else {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
            niov += run;
        }
        nmsg
    }

    /// Read everything waiting (bounded), `RX_BATCH` datagrams per syscall.
    fn read_all(&mut self, on_recv: &mut dyn FnMut(SocketAddr, &[u8])) {
        let fd = self.socket.as_raw_fd();
        let mut total = 0;
        while total < RX_PER_POLL {
            // SAFETY: zeroed iovec/mmsghdr arrays are valid; we fill every pointer below.
            let mut iov: [libc::iovec; RX_BATCH] = unsafe { std::mem::zeroed() };
            let mut msgs: [libc::mmsghdr; RX_BATCH] = unsafe { std::mem::zeroed() };
            for i in 0..RX_BATCH {
                iov[i].iov_base = self.rx_bufs[i].as_mut_ptr() as *mut libc::c_void;
                iov[i].iov_len = RECV_BUF;
                msgs[i].msg_hdr.msg_iov = &mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
                msgs[i].msg_hdr.msg_name = &mut self.rx_addrs[i] as *mut _ as *mut libc::c_void;
                msgs[i].msg_hdr.msg_namelen =
                    std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
            // SAFETY: all buffers outlive the call; counts match the arrays.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    msgs.as_mut_ptr(),
                    RX_BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            self.stats.syscalls += 1;
            if n <= 0 {
                return;
            }
            for (i, m) in msgs.iter().enumerate().take(n as usize) {
                let len = m.msg_len as usize;
                if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    continue;
                }
                if let Some(src) = sockaddr_of(&self.rx_addrs[i], m.msg_hdr.msg_namelen) {
                    self.stats.rx_datagrams += 1;
                    on_recv(src, &self.rx_bufs[i][..len]);
                }
            }
            total += n as usize;
            if (n as usize) < RX_BATCH {
                return;
            }
        }
    }
}

impl UdpDriver for EpollDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Epoll
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> std::io::Result<()> {
        let ms = match timeout {
            None => -1,
            // Round up so a sub-millisecond timer does not spin at 0.
            Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        // SAFETY: zeroed epoll_event array is valid output storage.
        let mut evs: [libc::epoll_event; 4] = unsafe { std::mem::zeroed() };
        // SAFETY: valid epoll fd and output buffer of 4 events.
        let n = unsafe { libc::epoll_wait(self.epfd.as_raw_fd(), evs.as_mut_ptr(), 4, ms) };
        self.stats.syscalls += 1;
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        for ev in evs.iter().take(n as usize) {
            let token = ev.u64;
            if token == TOKEN_WAKER {
                self.waker.reset();
            }
        }
        if n > 0 {
            // Read even when only the waker fired: cheap (EAGAIN) and keeps latency flat.
            self.read_all(on_recv);
        }
        Ok(())
    }

    fn send_batch(&mut self, out: &mut Vec<Outgoing>) -> usize {
        let fd = self.socket.as_raw_fd();
        let mut sent_total = 0;
        let mut start = 0;
        'batches: while start < out.len() {
            let nmsg = self.build_messages(out, start);
            let (last_first, last_run) = self.tx.runs[nmsg - 1];
            let mut off = 0;
            while off < nmsg {
                // SAFETY: messages 0..nmsg were filled by build_messages; every pointer in them
                // points into `self.tx` or `out`, neither of which changes during the call.
                let n = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.tx.msgs.as_mut_ptr().add(off),
                        (nmsg - off) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                self.stats.syscalls += 1;
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    let (first, run) = self.tx.runs[off];
                    let refused = matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)
                    );
                    if run > 1 && refused {
                        // The kernel or the device refuses GSO (no checksum offload, a segment
                        // above the route's MTU, SO_NO_CHECK, ...): stop using it on this socket
                        // and resend from this message on, one datagram per message.
                        tracing::warn!(addr = %self.local,
                            "UDP GSO refused by the kernel ({e}); sending without GSO");
                        self.gso = false;
                        start = first;
                        continue 'batches;
                    }
                    // Full buffer or an unreachable peer: drop this message, go on.
                    self.stats.tx_dropped += run as u64;
                    off += 1;
                    continue;
                }
                for &(_, run) in &self.tx.runs[off..off + n as usize] {
                    sent_total += run;
                    self.stats.tx_datagrams += run as u64;
                    if run > 1 {
                        self.stats.tx_gso_messages += 1;
                    }
                }
                off += n as usize;
            }
            start = last_first + last_run;
        }
        out.clear();
        sent_total
    }

    fn gso(&self) -> bool {
        self.gso
    }

    fn waker(&self) -> Waker {
        self.waker.clone()
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn og(dst: SocketAddr, len: usize) -> Outgoing {
        Outgoing {
            dst,
            data: vec![0; len],
        }
    }

    #[test]
    fn gso_run_follows_the_kernel_rule() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        // Equal sizes, then a shorter last one closes the run.
        let v = [og(a, 100), og(a, 100), og(a, 40), og(a, 40)];
        assert_eq!(gso_run(&v), 3);
        // A longer one or another destination ends it.
        assert_eq!(gso_run(&[og(a, 100), og(a, 101)]), 1);
        assert_eq!(gso_run(&[og(a, 100), og(a, 100), og(b, 100)]), 2);
        // Empty datagrams go alone.
        assert_eq!(gso_run(&[og(a, 0), og(a, 0)]), 1);
        assert_eq!(gso_run(&[og(a, 10), og(a, 0)]), 1);
        // Segment and byte limits.
        let v: Vec<_> = (0..100).map(|_| og(a, 100)).collect();
        assert_eq!(gso_run(&v), GSO_MAX_SEGMENTS);
        let v: Vec<_> = (0..100).map(|_| og(a, 1200)).collect();
        assert_eq!(gso_run(&v), GSO_MAX_BYTES / 1200);
        assert_eq!(gso_run(&[og(a, 40_000), og(a, 40_000)]), 1);
    }

    fn receiver() -> UdpSocket {
        let s = super::super::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// A datagram whose bytes say who it is for and its place in that receiver's sequence.
    fn datagram(rx: usize, seq: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|k| (rx * 7 + seq * 13 + k * 31) as u8)
            .collect()
    }

    /// Several destinations; equal-size runs, short last segments, lone datagrams, interleaving,
    /// a run past 64 segments and one past 64 KB, an empty datagram. Returns the batch and what
    /// each receiver should get, in order.
    fn mixed_batch(dst: &[SocketAddr; 3]) -> (Vec<Outgoing>, [Vec<Vec<u8>>; 3]) {
        let plan: &[(usize, usize, usize)] = &[
            // (receiver, count, length); a count > 1 repeats the length
            (0, 5, 1200),
            (0, 1, 700),
            (1, 1, 300),
            (2, 70, 200),
            (2, 1, 13),
            (0, 3, 500),
            (0, 1, 900),
            (1, 2, 1200),
            (0, 1, 64),
            (1, 1, 64),
            (0, 1, 64),
            (2, 60, 1200),
            (1, 1, 0),
            (1, 3, 1000),
        ];
        let mut out = Vec::new();
        let mut want: [Vec<Vec<u8>>; 3] = Default::default();
        for &(rx, count, len) in plan {
            for _ in 0..count {
                let d = datagram(rx, want[rx].len(), len);
                want[rx].push(d.clone());
                out.push(Outgoing {
                    dst: dst[rx],
                    data: d,
                });
            }
        }
        (out, want)
    }

    fn send_mixed(mut driver: EpollDriver, expect_gso: bool) -> EpollDriver {
        let rxs = [receiver(), receiver(), receiver()];
        let dst = [0, 1, 2].map(|i| rxs[i].local_addr().unwrap());
        let (mut out, want) = mixed_batch(&dst);
        let total = out.len();
        assert_eq!(driver.send_batch(&mut out), total);
        assert!(out.is_empty());
        let mut buf = vec![0u8; 70_000];
        for (i, rx) in rxs.iter().enumerate() {
            for (k, w) in want[i].iter().enumerate() {
                let (n, from) = rx
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("receiver {i}, datagram {k}: {e}"));
                assert_eq!(from, driver.local_addr());
                assert_eq!(&buf[..n], &w[..], "receiver {i}, datagram {k}");
            }
            rx.set_nonblocking(true).unwrap();
            assert!(
                rx.recv_from(&mut buf).is_err(),
                "receiver {i}: extra datagram"
            );
        }
        let s = driver.stats();
        assert_eq!(s.tx_datagrams, total as u64, "{s:?}");
        assert_eq!(s.tx_dropped, 0, "{s:?}");
        if expect_gso {
            // 5+1, 70 → 64+6+1 (13 B is shorter: it closes the second run), 3+…, 2, 60 → 54+6,
            // 3: every multi-datagram message above.
            assert_eq!(s.tx_gso_messages, 8, "{s:?}");
        } else {
            assert_eq!(s.tx_gso_messages, 0, "{s:?}");
        }
        driver
    }

    fn driver(gso: bool) -> EpollDriver {
        let s = super::super::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        EpollDriver::new(s, gso).unwrap()
    }

    #[test]
    fn mixed_batch_arrives_intact_with_gso() {
        let d = driver(true);
        let on = d.gso();
        if !on {
            eprintln!("UDP GSO unsupported here; checking the plain path");
        }
        let d = send_mixed(d, on);
        assert_eq!(d.gso(), on);
    }

    #[test]
    fn mixed_batch_arrives_intact_without_gso() {
        let d = driver(false);
        assert!(!d.gso());
        send_mixed(d, false);
    }

    #[test]
    fn refused_gso_is_turned_off_and_nothing_is_lost() {
        let s = super::super::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        // SO_NO_CHECK (no UDP checksum) makes the kernel refuse GSO sends with EINVAL, the way a
        // device without checksum offload would.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a valid pointer.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        let d = EpollDriver::new(s, true).unwrap();
        if !d.gso() {
            eprintln!("UDP GSO unsupported here; nothing to refuse");
            return;
        }
        let d = send_mixed(d, false);
        assert!(!d.gso(), "GSO should be off after the kernel refused it");
    }
}
