//! epoll driver: a nonblocking UDP socket and the waker's eventfd in one epoll set; receives with
//! `recvmmsg` (32 datagrams per call) and sends with `sendmmsg` (64 per call).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::{sockaddr_of, DriverKind, IoStats, Outgoing, UdpDriver, Waker, RECV_BUF};

const RX_BATCH: usize = 32;
const TX_BATCH: usize = 64;
/// Most datagrams read per `poll`, so timers and the channel are served under a flood.
const RX_PER_POLL: usize = 512;

pub struct EpollDriver {
    socket: UdpSocket,
    local: SocketAddr,
    epfd: OwnedFd,
    waker: Waker,
    rx_bufs: Vec<[u8; RECV_BUF]>,
    rx_addrs: Vec<libc::sockaddr_storage>,
    stats: IoStats,
}

// SAFETY: the raw buffers are only touched by the owning thread.
unsafe impl Send for EpollDriver {}

const TOKEN_SOCKET: u64 = 1;
const TOKEN_WAKER: u64 = 2;

impl EpollDriver {
    pub fn new(socket: UdpSocket) -> std::io::Result<Self> {
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
            stats: IoStats::default(),
        })
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
        while start < out.len() {
            let end = (start + TX_BATCH).min(out.len());
            let chunk = &out[start..end];
            let addrs: Vec<socket2::SockAddr> = chunk
                .iter()
                .map(|o| socket2::SockAddr::from(o.dst))
                .collect();
            // SAFETY: zeroed arrays are valid; every pointer set below outlives the syscall.
            let mut iov: [libc::iovec; TX_BATCH] = unsafe { std::mem::zeroed() };
            let mut msgs: [libc::mmsghdr; TX_BATCH] = unsafe { std::mem::zeroed() };
            for (i, o) in chunk.iter().enumerate() {
                iov[i].iov_base = o.data.as_ptr() as *mut libc::c_void;
                iov[i].iov_len = o.data.len();
                msgs[i].msg_hdr.msg_iov = &mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
                msgs[i].msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
                msgs[i].msg_hdr.msg_namelen = addrs[i].len();
            }
            let mut off = 0;
            while off < chunk.len() {
                // SAFETY: as above; `off..len` is within the filled part of the arrays.
                let n = unsafe {
                    libc::sendmmsg(
                        fd,
                        msgs.as_mut_ptr().add(off),
                        (chunk.len() - off) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                self.stats.syscalls += 1;
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    // Full buffer or an unreachable peer: drop this datagram, go on.
                    self.stats.tx_dropped += 1;
                    off += 1;
                    continue;
                }
                off += n as usize;
                sent_total += n as usize;
                self.stats.tx_datagrams += n as u64;
            }
            start = end;
        }
        out.clear();
        sent_total
    }

    fn waker(&self) -> Waker {
        self.waker.clone()
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}
