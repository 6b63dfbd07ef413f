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

use super::{
    clear_cmsg, gso_run, gso_supported, is_gso_refusal, set_gso_cmsg, sockaddr_of, DriverKind,
    GsoCmsg, IoStats, Outgoing, UdpDriver, Waker, GSO_MAX_SEGMENTS, RECV_BUF,
};

const RX_BATCH: usize = 32;
/// Messages per `sendmmsg` (each one datagram, or one GSO run).
const TX_BATCH: usize = 64;
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

// SAFETY: the raw buffers (and the scratch's pointers, set and used within one `send_batch`) are
// only touched by the owning thread.
unsafe impl Send for EpollDriver {}

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
                cmsgs: vec![GsoCmsg::ZERO; TX_BATCH],
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
                // SAFETY: m < TX_BATCH, so the buffer is inside `tx.cmsgs`, which is never
                // resized and outlives the `sendmmsg` that reads it.
                unsafe { set_gso_cmsg(hdr, cmsgs.add(m), out[first].data.len() as u16) };
            } else {
                clear_cmsg(hdr);
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
                    if run > 1 && is_gso_refusal(e.raw_os_error()) {
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
    use super::super::gso_tests::{no_check_socket, send_mixed, socket};
    use super::*;

    #[test]
    fn mixed_batch_arrives_intact_with_gso() {
        let mut d = EpollDriver::new(socket(), true).unwrap();
        let on = d.gso();
        if !on {
            eprintln!("UDP GSO unsupported here; checking the plain path");
        }
        send_mixed(&mut d, on);
        assert_eq!(d.gso(), on);
    }

    #[test]
    fn mixed_batch_arrives_intact_without_gso() {
        let mut d = EpollDriver::new(socket(), false).unwrap();
        assert!(!d.gso());
        send_mixed(&mut d, false);
    }

    #[test]
    fn refused_gso_is_turned_off_and_nothing_is_lost() {
        let mut d = EpollDriver::new(no_check_socket(), true).unwrap();
        if !d.gso() {
            eprintln!("UDP GSO unsupported here; nothing to refuse");
            return;
        }
        send_mixed(&mut d, false);
        assert!(!d.gso(), "GSO should be off after the kernel refused it");
    }
}
