//! UDP drivers: the only code that touches the SFU's sockets. Protocol code (str0m sessions) hands
//! datagrams in and out; a driver only moves bytes, in batches.
//!
//! Two implementations behind one interface:
//! - [`uring::UringDriver`]: io_uring, a ring of pre-posted `RecvMsg`s and one `io_uring_enter`
//!   per fan-out batch of `SendMsg`s.
//! - [`epoll::EpollDriver`]: epoll + `recvmmsg` / `sendmmsg` (one syscall per 64 messages), and
//!   UDP GSO (one message per run of same-size datagrams to one destination) where allowed.
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
    fn new() -> std::io::Result<Self> {
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

/// Bind a UDP socket for a worker: nonblocking, large buffers.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Choose a driver for `socket` as requested: `Auto` tries io_uring first and falls back to epoll
/// (logged); `Uring` fails when io_uring cannot be set up; `Epoll` always uses epoll. `gso` asks
/// the epoll driver for UDP GSO (the io_uring driver sends one datagram per entry).
pub fn select(
    requested: IoRequest,
    socket: UdpSocket,
    gso: bool,
) -> std::io::Result<Box<dyn UdpDriver>> {
    match requested {
        IoRequest::Epoll => Ok(Box::new(epoll::EpollDriver::new(socket, gso)?)),
        IoRequest::Uring => Ok(Box::new(uring::UringDriver::new(socket)?)),
        IoRequest::Auto => {
            let probe = socket.try_clone()?;
            match uring::UringDriver::new(probe) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        match uring::UringDriver::new(a) {
            Ok(_) => roundtrip(IoRequest::Uring),
            Err(e) => {
                eprintln!("io_uring unavailable here ({e}); checking the auto fallback");
                roundtrip(IoRequest::Auto);
            }
        }
    }
}
