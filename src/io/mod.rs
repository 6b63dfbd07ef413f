//! UDP drivers: the only code that touches the SFU's sockets. Protocol code (str0m sessions) hands
//! datagrams in and out; a driver only moves bytes, in batches.
//!
//! Two implementations behind one interface:
//! - [`uring::UringDriver`]: io_uring, a ring of pre-posted `RecvMsg`s and one `io_uring_enter`
//!   per fan-out batch of `SendMsg`s.
//! - [`epoll::EpollDriver`]: epoll + `recvmmsg` / `sendmmsg` (one syscall per 64 messages).
//!
//! Both send with UDP GSO where allowed (`sfu.gso`, and the kernel knows `UDP_SEGMENT`): a run of
//! same-size datagrams to one destination ([`gso_run`]) goes out as one message with a
//! `UDP_SEGMENT` cmsg ([`set_gso_cmsg`]) and one iovec per datagram (no copy). A kernel or device
//! that refuses a GSO message ([`is_gso_refusal`]) turns GSO off for the socket and the refused
//! datagrams are resent one per message.
//!
//! [`select`] picks one at start: `auto` tries io_uring and falls back to epoll when the ring
//! cannot be set up (kernel too old, `kernel.io_uring_disabled`, seccomp), logging which.
//! Both wake from another thread through an eventfd [`Waker`] (set only when the worker is about
//! to sleep, so a busy worker costs the senders no syscall).

pub mod epoll;
pub mod uring;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest datagram a driver receives (bigger ones are truncated and dropped by str0m).
pub const RECV_BUF: usize = 2048;

/// A datagram to send. `data` is the SRTP output str0m returned, moved here without a copy.
#[derive(Debug)]
pub struct Outgoing {
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}

/// Which driver the configuration asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoRequest {
    Auto,
    Uring,
    Epoll,
}

impl std::str::FromStr for IoRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Self::Uring),
            "epoll" => Ok(Self::Epoll),
            other => Err(format!(
                "unknown io driver '{other}' (auto, uring or epoll)"
            )),
        }
    }
}

/// The driver that is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    Uring,
    Epoll,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Uring => "io_uring",
            DriverKind::Epoll => "epoll",
        }
    }
}

/// Counters every driver keeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct IoStats {
    pub rx_datagrams: u64,
    /// Datagrams sent (a GSO message counts each of its segments).
    pub tx_datagrams: u64,
    /// UDP GSO messages sent (each carried two or more of `tx_datagrams`).
    pub tx_gso_messages: u64,
    /// Datagrams dropped because the socket's send buffer was full or the send failed.
    pub tx_dropped: u64,
    /// Syscalls (`io_uring_enter`, `sendmmsg`, `recvmmsg`, `epoll_wait`) issued.
    pub syscalls: u64,
}

/// A UDP socket driver owned by one worker thread.
pub trait UdpDriver: Send {
    fn kind(&self) -> DriverKind;
    fn local_addr(&self) -> SocketAddr;
    /// Wait until datagrams arrive, the [`Waker`] fires or `timeout` passes (`None`: forever),
    /// and hand each received datagram to `on_recv(source, bytes)`.
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> std::io::Result<()>;
    /// Send every datagram in `out` (drained) as one batch. A full socket drops the rest (UDP);
    /// returns how many were handed to the kernel.
    fn send_batch(&mut self, out: &mut Vec<Outgoing>) -> usize;
    /// Whether sends use UDP GSO now (asked for, supported, and not refused since).
    fn gso(&self) -> bool {
        false
    }
    fn waker(&self) -> Waker;
    fn stats(&self) -> IoStats;
}

/// Wakes a driver's `poll` from another thread.
#[derive(Clone)]
pub struct Waker {
    inner: Arc<WakerInner>,
}

struct WakerInner {
    fd: OwnedFd,
    /// True while a wake-up is pending (the eventfd was written and not yet read).
    armed: AtomicBool,
}

impl Waker {
    pub(crate) fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            inner: Arc::new(WakerInner {
                // SAFETY: fd is a fresh, owned descriptor.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                armed: AtomicBool::new(false),
            }),
        })
    }

    /// Wake the driver (one syscall at most per wake-up cycle).
    pub fn wake(&self) {
        if !self.inner.armed.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe {
                libc::write(
                    self.inner.fd.as_raw_fd(),
                    &one as *const u64 as *const libc::c_void,
                    8,
                );
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }

    /// Called by the driver when it consumed the eventfd.
    fn reset(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads up to 8 bytes into a valid u64 from our nonblocking eventfd.
        unsafe {
            libc::read(self.raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8);
        }
        self.inner.armed.store(false, Ordering::Release);
    }
}

/// Bind a UDP socket for a worker: nonblocking, 4 MiB buffers (see [`bind_udp_sized`]).
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    bind_udp_sized(addr, 4 << 20, 4 << 20).map(|(s, _)| s)
}

/// Socket buffer sizes as the kernel granted them (bytes of payload it will queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSizes {
    pub recv: usize,
    pub send: usize,
}

/// Bind a UDP socket for a worker: nonblocking, SO_RCVBUF / SO_SNDBUF asked for as given. A
/// worker's receive buffer must hold every viewer's STUN consent and RTCP while it serves a
/// fan-out, and its send buffer a keyframe to all of its viewers. Linux caps the sizes at
/// `net.core.rmem_max` / `wmem_max` without an error, so what was granted is read back and a cap
/// is logged with the sysctl to raise.
pub fn bind_udp_sized(
    addr: SocketAddr,
    recv: usize,
    send: usize,
) -> std::io::Result<(UdpSocket, BufferSizes)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = sock.set_recv_buffer_size(recv);
    let _ = sock.set_send_buffer_size(send);
    // Linux reports twice the usable size (the doubling covers its bookkeeping).
    let granted = BufferSizes {
        recv: sock.recv_buffer_size().unwrap_or(0) / 2,
        send: sock.send_buffer_size().unwrap_or(0) / 2,
    };
    if granted.recv < recv {
        tracing::warn!(%addr, asked = recv, granted = granted.recv,
            "UDP receive buffer capped by the kernel: raise net.core.rmem_max (tuning/README.md)");
    }
    if granted.send < send {
        tracing::warn!(%addr, asked = send, granted = granted.send,
            "UDP send buffer capped by the kernel: raise net.core.wmem_max (tuning/README.md)");
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok((sock.into(), granted))
}

/// Choose a driver for `socket` as requested: `Auto` tries io_uring first and falls back to epoll
/// (logged); `Uring` fails when io_uring cannot be set up; `Epoll` always uses epoll. `gso` asks
/// either driver for UDP GSO (used where the kernel supports it).
pub fn select(
    requested: IoRequest,
    socket: UdpSocket,
    gso: bool,
) -> std::io::Result<Box<dyn UdpDriver>> {
    match requested {
        IoRequest::Epoll => Ok(Box::new(epoll::EpollDriver::new(socket, gso)?)),
        IoRequest::Uring => Ok(Box::new(uring::UringDriver::new(socket, gso)?)),
        IoRequest::Auto => {
            let probe = socket.try_clone()?;
            match uring::UringDriver::new(probe, gso) {
                Ok(d) => {
                    drop(socket);
                    Ok(Box::new(d))
                }
                Err(e) => {
                    tracing::warn!("io_uring unavailable ({e}); using the epoll driver");
                    Ok(Box::new(epoll::EpollDriver::new(socket, gso)?))
                }
            }
        }
    }
}

/// Whether the io_uring driver can be set up on this node: the constructor [`select`] tries for
/// `auto` and `uring` (ring, `IORING_FEAT_EXT_ARG`, posted receives), on a throwaway loopback
/// socket. `deltacast doctor` asks this, so it reports what the workers would find.
pub fn uring_available() -> std::io::Result<()> {
    let sock = UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    uring::UringDriver::new(sock, false).map(drop)
}

/// Most segments per GSO message: the kernel's `UDP_MAX_SEGMENTS` (64; newer kernels allow more).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes per GSO message: what one IPv4 datagram can carry (65535 − 20 − 8).
pub(crate) const GSO_MAX_BYTES: usize = 65_507;

/// Whether the kernel knows `UDP_SEGMENT` on this socket (Linux 4.18+). A device that cannot
/// segment is only found out by sending; the drivers handle that ([`is_gso_refusal`]).
pub fn gso_supported(socket: &UdpSocket) -> bool {
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

/// Whether the kernel accepts `UDP_GRO` on this socket (Linux 5.0+: it may coalesce a run of
/// datagrams from one sender into one receive). The drivers do not use it; `deltacast doctor`
/// reports it for receive-heavy nodes (load generators).
pub fn gro_supported(socket: &UdpSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `on`.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
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

/// Whether a send error on a GSO message means the kernel or the device refuses GSO (no checksum
/// offload, a segment above the route's MTU, `SO_NO_CHECK`, ...): turn it off and resend.
pub(crate) fn is_gso_refusal(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE))
}

/// Control buffer for one `UDP_SEGMENT` cmsg (u16 segment size), aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct GsoCmsg([u8; 32]);

impl GsoCmsg {
    pub(crate) const ZERO: GsoCmsg = GsoCmsg([0; 32]);
}

/// `CMSG_SPACE(sizeof(u16))`: the control length of a GSO message.
// SAFETY: CMSG_SPACE is pure arithmetic on its argument.
const GSO_CMSG_SPACE: usize = unsafe { libc::CMSG_SPACE(2) } as usize;
const _: () = assert!(GSO_CMSG_SPACE <= std::mem::size_of::<GsoCmsg>());

/// Make `hdr` a GSO message: its control buffer is `cmsg`, holding one `UDP_SEGMENT` cmsg that
/// says `seg` bytes per segment.
///
/// # Safety
/// `cmsg` must be valid for writes, and must stay valid and unmoved while the kernel may read
/// `hdr` (until `sendmmsg` returns, or until the io_uring completion arrives).
pub(crate) unsafe fn set_gso_cmsg(hdr: &mut libc::msghdr, cmsg: *mut GsoCmsg, seg: u16) {
    hdr.msg_control = cmsg as *mut libc::c_void;
    hdr.msg_controllen = GSO_CMSG_SPACE as _;
    // SAFETY: the control buffer is 8-aligned and at least GSO_CMSG_SPACE bytes (the caller
    // guarantees it is writable), so CMSG_FIRSTHDR returns its start and the cmsg's data has
    // room for a u16.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(hdr);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
    }
}

/// Make `hdr` a plain message (no control data).
pub(crate) fn clear_cmsg(hdr: &mut libc::msghdr) {
    hdr.msg_control = std::ptr::null_mut();
    hdr.msg_controllen = 0;
}

pub(crate) fn sockaddr_of(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match storage.ss_family as i32 {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// What both drivers' GSO tests share: a mixed batch to three receivers and the checks.
#[cfg(test)]
pub(crate) mod gso_tests {
    use super::*;

    /// A driver's socket on 127.0.0.1.
    pub(crate) fn socket() -> UdpSocket {
        bind_udp("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    /// A socket with SO_NO_CHECK (no UDP checksum): the kernel refuses GSO sends on it with
    /// EINVAL, the way a device without checksum offload would.
    pub(crate) fn no_check_socket() -> UdpSocket {
        let s = socket();
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
        s
    }

    fn receiver() -> UdpSocket {
        let s = socket();
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

    /// Send the mixed batch through `driver`; every receiver must get exactly its datagrams, in
    /// order, byte for byte, and the stats must count them (`expect_gso`: as 8 GSO messages).
    pub(crate) fn send_mixed(driver: &mut dyn UdpDriver, expect_gso: bool) {
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
        // io_uring counts sends at their completions: reap them.
        let t0 = std::time::Instant::now();
        while driver.stats().tx_datagrams + driver.stats().tx_dropped < total as u64
            && t0.elapsed() < Duration::from_secs(2)
        {
            driver
                .poll(Some(Duration::from_millis(5)), &mut |_, _| {})
                .unwrap();
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn og(dst: SocketAddr, len: usize) -> Outgoing {
        Outgoing {
            dst,
            data: vec![0; len],
        }
    }

    #[test]
    fn socket_buffers_are_granted_or_reported_capped() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (_s, g) = bind_udp_sized(any, 128 << 10, 128 << 10).unwrap();
        assert!(g.recv >= 128 << 10 && g.send >= 128 << 10, "{g:?}");
        // Past net.core.rmem_max the kernel caps without an error: the granted size says so.
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(usize::MAX);
        let (_s, g) = bind_udp_sized(any, 256 << 20, 64 << 10).unwrap();
        assert!(g.recv <= max.max(64 << 10), "{g:?} > rmem_max {max}");
        assert!(g.recv < 256 << 20 || max >= 256 << 20, "{g:?}");
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

    fn roundtrip(req: IoRequest) {
        let a = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut d = select(req, a, true).unwrap();
        let addr = d.local_addr();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let paddr = peer.local_addr().unwrap();
        for i in 0..100u8 {
            peer.send_to(&[i; 100], addr).unwrap();
        }
        let mut got = Vec::new();
        let t0 = std::time::Instant::now();
        while got.len() < 100 && t0.elapsed() < Duration::from_secs(5) {
            d.poll(Some(Duration::from_millis(100)), &mut |src, b| {
                assert_eq!(src, paddr);
                got.push(b[0]);
            })
            .unwrap();
        }
        assert_eq!(got.len(), 100, "{:?}", d.kind());
        // batch send back
        let mut out: Vec<Outgoing> = (0..100u16)
            .map(|i| Outgoing {
                dst: paddr,
                data: vec![(i % 251) as u8; 300],
            })
            .collect();
        assert_eq!(d.send_batch(&mut out), 100);
        assert!(out.is_empty());
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 600];
        for _ in 0..100 {
            let (n, _) = peer.recv_from(&mut buf).unwrap();
            assert_eq!(n, 300);
        }
        // a waker interrupts an idle poll
        let w = d.waker();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.wake();
        });
        let t0 = std::time::Instant::now();
        d.poll(Some(Duration::from_secs(5)), &mut |_, _| {})
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", d.kind());
        h.join().unwrap();
        // idle poll honours the timeout
        let t0 = std::time::Instant::now();
        d.poll(Some(Duration::from_millis(30)), &mut |_, _| {})
            .unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(25));
        // send completions are reaped; stats count
        let s = d.stats();
        assert!(s.rx_datagrams >= 100 && s.tx_datagrams >= 100, "{s:?}");
    }

    #[test]
    fn epoll_driver_moves_datagrams() {
        roundtrip(IoRequest::Epoll);
    }

    #[test]
    fn uring_driver_moves_datagrams_or_auto_falls_back() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        match uring::UringDriver::new(a, true) {
            Ok(_) => roundtrip(IoRequest::Uring),
            Err(e) => {
                eprintln!("io_uring unavailable here ({e}); checking the auto fallback");
                roundtrip(IoRequest::Auto);
            }
        }
    }
}
