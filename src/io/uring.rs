//! io_uring driver (the `io-uring` crate, no async runtime): `RX_SLOTS` `RecvMsg`s stay posted on
//! the socket, one `Read` on the waker's eventfd; a fan-out batch of datagrams becomes that many
//! `SendMsg` entries and one `io_uring_enter`. Waiting for input and submitting the re-posted
//! receives is one `io_uring_enter` with a timeout (`IORING_ENTER_EXT_ARG`, Linux 5.11+).
//!
//! With UDP GSO on (`sfu.gso`, and the kernel knows `UDP_SEGMENT`), the batch is grouped like the
//! epoll driver's ([`super::gso_run`]): a run of same-size datagrams to one destination (the last
//! may be shorter) becomes one `SendMsg` with a `UDP_SEGMENT` cmsg and one iovec per datagram.
//! A GSO message the kernel refuses (EIO / EINVAL / EMSGSIZE in its completion) turns GSO off for
//! the socket, logged once, and its datagrams are resent one per message. Until one GSO message
//! has completed, each is waited for before anything is queued after it, so a refusal found there
//! (a device without checksum offload, `SO_NO_CHECK`) costs no reordering; a later refusal resends
//! after the sends already in flight (RTP tolerates the reorder; nothing is lost).
//!
//! Buffers handed to the kernel (msghdr, address, iovecs, cmsg and the datagram `Vec`s) live in
//! boxed slots that stay put until their completion is reaped; send slots are recycled, so a
//! steady state allocates nothing per datagram here.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

use super::{
    clear_cmsg, gso_run, gso_supported, is_gso_refusal, set_gso_cmsg, sockaddr_of, DriverKind,
    GsoCmsg, IoStats, Outgoing, UdpDriver, Waker, RECV_BUF,
};

const RX_SLOTS: usize = 64;
const RING_ENTRIES: u32 = 1024;
/// Datagrams in flight at most (a GSO message counts each of its segments); beyond this a batch
/// waits for completions rather than grow.
const MAX_TX_INFLIGHT: usize = 8192;

const KIND_SHIFT: u64 = 56;
const KIND_RX: u64 = 1;
const KIND_WAKE: u64 = 2;
const KIND_TX: u64 = 3;

struct RxSlot {
    buf: [u8; RECV_BUF],
    addr: libc::sockaddr_storage,
    iov: libc::iovec,
    msg: libc::msghdr,
}

/// One `SendMsg`: one datagram, or a GSO run to one destination.
struct TxSlot {
    /// The datagrams, moved in from the batch; kept until the completion (and for a resend).
    data: Vec<Vec<u8>>,
    dst: SocketAddr,
    addr: libc::sockaddr_storage,
    /// One per datagram; `msg.msg_iov` points here (never resized while in flight).
    iovs: Vec<libc::iovec>,
    cmsg: GsoCmsg,
    msg: libc::msghdr,
}

impl TxSlot {
    fn new() -> Box<Self> {
        Box::new(TxSlot {
            data: Vec::new(),
            dst: SocketAddr::from(([0, 0, 0, 0], 0)),
            // SAFETY: sockaddr_storage and msghdr are plain data; all-zero is valid for them.
            addr: unsafe { std::mem::zeroed() },
            iovs: Vec::new(),
            cmsg: GsoCmsg::ZERO,
            // SAFETY: as above.
            msg: unsafe { std::mem::zeroed() },
        })
    }
}

// Slots are boxed so the kernel's pointers into them survive the Vecs growing.
#[allow(clippy::vec_box)]
pub struct UringDriver {
    ring: IoUring,
    socket: UdpSocket,
    local: SocketAddr,
    waker: Waker,
    wake_buf: Box<u64>,
    rx: Vec<Box<RxSlot>>,
    tx: Vec<Option<Box<TxSlot>>>,
    tx_free: Vec<usize>,
    tx_pool: Vec<Box<TxSlot>>,
    /// Datagrams in flight (every segment of a GSO message counts).
    tx_inflight: usize,
    /// Send runs of same-size datagrams to one destination as UDP GSO messages.
    gso: bool,
    /// A GSO message has completed on this socket (until then each one is waited for).
    gso_confirmed: bool,
    /// Datagrams of refused GSO messages, to send again one per message.
    resend: Vec<Outgoing>,
    /// Receive completions reaped while sending, handled at the next `poll`.
    pending_rx: Vec<(usize, i32)>,
    stats: IoStats,
}

// SAFETY: the raw pointers inside the slots point into the slots themselves or into buffers the
// slots own (iovecs, datagrams), and are only used by the owning thread and the kernel.
unsafe impl Send for UringDriver {}

impl UringDriver {
    /// `gso`: use UDP GSO where the kernel supports it (checked here with a `UDP_SEGMENT`
    /// getsockopt, Linux 4.18+).
    pub fn new(socket: UdpSocket, gso: bool) -> std::io::Result<Self> {
        let ring = IoUring::builder().build(RING_ENTRIES)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(std::io::Error::other(
                "io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11+)",
            ));
        }
        // io_uring parks blocking receives in the kernel; a nonblocking socket would make every
        // posted RecvMsg complete at once with EAGAIN.
        socket.set_nonblocking(false)?;
        let local = socket.local_addr()?;
        let waker = Waker::new()?;
        let gso = gso && gso_supported(&socket);
        let mut d = Self {
            ring,
            socket,
            local,
            waker,
            wake_buf: Box::new(0),
            rx: Vec::with_capacity(RX_SLOTS),
            tx: Vec::new(),
            tx_free: Vec::new(),
            tx_pool: Vec::new(),
            tx_inflight: 0,
            gso,
            gso_confirmed: false,
            resend: Vec::new(),
            pending_rx: Vec::new(),
            stats: IoStats::default(),
        };
        for i in 0..RX_SLOTS {
            // SAFETY: all-zero is a valid RxSlot (plain data); pointers are set in post_rx.
            d.rx.push(Box::new(unsafe { std::mem::zeroed() }));
            d.post_rx(i)?;
        }
        d.post_wake()?;
        d.ring.submit()?;
        Ok(d)
    }

    fn push(&mut self, e: &io_uring::squeue::Entry) -> std::io::Result<()> {
        loop {
            // SAFETY: every entry points into a slot that outlives its completion.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
            self.stats.syscalls += 1;
        }
    }

    fn post_rx(&mut self, i: usize) -> std::io::Result<()> {
        let fd = self.socket.as_raw_fd();
        let s = &mut *self.rx[i];
        s.iov.iov_base = s.buf.as_mut_ptr() as *mut libc::c_void;
        s.iov.iov_len = RECV_BUF;
        s.msg.msg_iov = &mut s.iov;
        s.msg.msg_iovlen = 1;
        s.msg.msg_name = &mut s.addr as *mut _ as *mut libc::c_void;
        s.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        s.msg.msg_control = std::ptr::null_mut();
        s.msg.msg_controllen = 0;
        s.msg.msg_flags = 0;
        let e = opcode::RecvMsg::new(types::Fd(fd), &mut s.msg)
            .build()
            .user_data((KIND_RX << KIND_SHIFT) | i as u64);
        self.push(&e)
    }

    fn post_wake(&mut self) -> std::io::Result<()> {
        let e = opcode::Read::new(
            types::Fd(self.waker.raw_fd()),
            &mut *self.wake_buf as *mut u64 as *mut u8,
            8,
        )
        .build()
        .user_data(KIND_WAKE << KIND_SHIFT);
        self.push(&e)
    }

    /// Take every completion off the ring: sends are retired, receives queued for `poll`.
    fn reap(&mut self) -> std::io::Result<()> {
        let mut rearm_wake = false;
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            let idx = (ud & ((1 << KIND_SHIFT) - 1)) as usize;
            match ud >> KIND_SHIFT {
                KIND_RX => self.pending_rx.push((idx, res)),
                KIND_WAKE => {
                    self.waker
                        .inner
                        .armed
                        .store(false, std::sync::atomic::Ordering::Release);
                    rearm_wake = true;
                }
                KIND_TX => {
                    let Some(mut slot) = self.tx.get_mut(idx).and_then(|s| s.take()) else {
                        continue;
                    };
                    self.tx_free.push(idx);
                    let n = slot.data.len();
                    self.tx_inflight -= n;
                    if res >= 0 {
                        self.stats.tx_datagrams += n as u64;
                        if n > 1 {
                            self.stats.tx_gso_messages += 1;
                            self.gso_confirmed = true;
                        }
                    } else if n > 1 && is_gso_refusal(Some(-res)) {
                        if self.gso {
                            let e = std::io::Error::from_raw_os_error(-res);
                            tracing::warn!(addr = %self.local,
                                "UDP GSO refused by the kernel ({e}); sending without GSO");
                            self.gso = false;
                        }
                        let dst = slot.dst;
                        self.resend
                            .extend(slot.data.drain(..).map(|data| Outgoing { dst, data }));
                    } else {
                        self.stats.tx_dropped += n as u64;
                    }
                    slot.data.clear();
                    self.tx_pool.push(slot);
                }
                _ => {}
            }
        }
        if rearm_wake {
            self.post_wake()?;
        }
        Ok(())
    }

    /// Wait (submitting) for completions until fewer than `MAX_TX_INFLIGHT` datagrams are in
    /// flight; false if the ring failed first.
    fn wait_for_room(&mut self) -> bool {
        while self.tx_inflight >= MAX_TX_INFLIGHT {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.stats.syscalls += 1;
            let _ = self.reap();
        }
        self.tx_inflight < MAX_TX_INFLIGHT
    }

    /// Wait (submitting) until the send in slot `idx` has completed.
    fn wait_for(&mut self, idx: usize) {
        while self.tx[idx].is_some() {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => return,
            }
            self.stats.syscalls += 1;
            let _ = self.reap();
        }
    }

    /// Queue one `SendMsg` carrying `data` (one datagram, or a GSO run: every one as long as the
    /// first but a shorter last) to `dst`. The datagrams move into a slot that stays put until
    /// the completion. Returns the slot, or None when the ring failed (counted as dropped).
    fn queue(&mut self, dst: SocketAddr, data: &mut dyn Iterator<Item = Vec<u8>>) -> Option<usize> {
        let fd = self.socket.as_raw_fd();
        let idx = match self.tx_free.pop() {
            Some(i) => i,
            None => {
                self.tx.push(None);
                self.tx.len() - 1
            }
        };
        let mut slot = self.tx_pool.pop().unwrap_or_else(TxSlot::new);
        let s = &mut *slot;
        s.data.extend(data);
        let n = s.data.len();
        s.dst = dst;
        let sa = socket2::SockAddr::from(dst);
        // SAFETY: copies `sa.len()` bytes of a valid sockaddr into our storage.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sa.as_ptr() as *const u8,
                &mut s.addr as *mut _ as *mut u8,
                sa.len() as usize,
            );
        }
        s.iovs.clear();
        s.iovs.extend(s.data.iter().map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        }));
        s.msg.msg_iov = s.iovs.as_mut_ptr();
        s.msg.msg_iovlen = n as _;
        s.msg.msg_name = &mut s.addr as *mut _ as *mut libc::c_void;
        s.msg.msg_namelen = sa.len();
        s.msg.msg_flags = 0;
        if n > 1 {
            // SAFETY: the cmsg buffer is in the boxed slot, which stays put (in `self.tx`) until
            // this message's completion is reaped.
            unsafe { set_gso_cmsg(&mut s.msg, &mut s.cmsg, s.data[0].len() as u16) };
        } else {
            clear_cmsg(&mut s.msg);
        }
        let e = opcode::SendMsg::new(types::Fd(fd), &s.msg)
            .build()
            .user_data((KIND_TX << KIND_SHIFT) | idx as u64);
        self.tx[idx] = Some(slot);
        self.tx_inflight += n;
        if self.push(&e).is_err() {
            // Not in the ring: no completion will come; take the slot back.
            if let Some(mut slot) = self.tx[idx].take() {
                slot.data.clear();
                self.tx_pool.push(slot);
            }
            self.tx_free.push(idx);
            self.tx_inflight -= n;
            self.stats.tx_dropped += n as u64;
            return None;
        }
        Some(idx)
    }

    /// Queue the datagrams of refused GSO messages again, one per message. True if any were.
    fn flush_resend(&mut self) -> bool {
        let mut any = false;
        while !self.resend.is_empty() {
            any = true;
            // Reaping below may add more (other refused messages still in flight).
            for o in std::mem::take(&mut self.resend) {
                if !self.wait_for_room() {
                    self.stats.tx_dropped += 1;
                    continue;
                }
                self.queue(o.dst, &mut std::iter::once(o.data));
            }
        }
        any
    }

    fn deliver(&mut self, on_recv: &mut dyn FnMut(SocketAddr, &[u8])) -> std::io::Result<()> {
        let pending = std::mem::take(&mut self.pending_rx);
        for &(i, res) in &pending {
            if res > 0 {
                let s = &self.rx[i];
                if s.msg.msg_flags & libc::MSG_TRUNC == 0 {
                    if let Some(src) = sockaddr_of(&s.addr, s.msg.msg_namelen) {
                        self.stats.rx_datagrams += 1;
                        on_recv(src, &s.buf[..res as usize]);
                    }
                }
            }
            self.post_rx(i)?;
        }
        self.pending_rx = pending;
        self.pending_rx.clear();
        Ok(())
    }
}

impl UdpDriver for UringDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Uring
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> std::io::Result<()> {
        self.reap()?;
        self.flush_resend();
        if self.pending_rx.is_empty() {
            let ts;
            let args = types::SubmitArgs::new();
            let r = match timeout {
                Some(d) => {
                    ts = types::Timespec::from(d);
                    let args = args.timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
                None => self.ring.submitter().submit_with_args(1, &args),
            };
            self.stats.syscalls += 1;
            if let Err(e) = r {
                match e.raw_os_error() {
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                    _ => return Err(e),
                }
            }
            self.reap()?;
            if self.flush_resend() && self.ring.submit().is_ok() {
                self.stats.syscalls += 1;
            }
        }
        self.deliver(on_recv)?;
        // Re-posted receives go in with the next enter (send batch or poll).
        Ok(())
    }

    fn send_batch(&mut self, out: &mut Vec<Outgoing>) -> usize {
        if out.is_empty() && self.resend.is_empty() {
            return 0;
        }
        let _ = self.reap();
        // Refused earlier: they go first.
        self.flush_resend();
        let mut queued = 0;
        let mut i = 0;
        while i < out.len() {
            let run = if self.gso { gso_run(&out[i..]) } else { 1 };
            // At the cap, wait for the kernel to retire sends instead of dropping: a keyframe to
            // 1,000 viewers is ~19,000 datagrams, and dropped ones only come back as NACKs.
            if !self.wait_for_room() {
                self.stats.tx_dropped += run as u64;
                i += run;
                continue;
            }
            let dst = out[i].dst;
            let idx = self.queue(
                dst,
                &mut out[i..i + run]
                    .iter_mut()
                    .map(|o| std::mem::take(&mut o.data)),
            );
            i += run;
            let Some(idx) = idx else { continue };
            queued += run;
            if run > 1 && !self.gso_confirmed {
                // Until the socket has sent one GSO message, see each through before queuing
                // more: a refusal then resends its datagrams ahead of the rest, in order.
                self.wait_for(idx);
                self.flush_resend();
            }
        }
        out.clear();
        // One submission for the whole fan-out batch (plus re-posted receives).
        if self.ring.submit().is_ok() {
            self.stats.syscalls += 1;
        }
        queued
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

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Buffers must outlive the kernel's use of them: cancel everything and wait briefly.
        let _ = self.socket.set_nonblocking(true);
        // SAFETY: shutdown on our own socket fd wakes the posted receives.
        unsafe {
            libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR);
        }
        self.waker.wake();
        let deadline = std::time::Instant::now() + Duration::from_millis(200);
        while std::time::Instant::now() < deadline {
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let n = self.ring.completion().count();
            if n == 0 && self.tx_inflight == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gso_tests::{no_check_socket, send_mixed, socket};
    use super::*;

    /// A driver, or None where io_uring cannot be set up here (then epoll covers the path).
    fn driver(socket: UdpSocket, gso: bool) -> Option<UringDriver> {
        match UringDriver::new(socket, gso) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("io_uring unavailable here ({e}); skipping");
                None
            }
        }
    }

    #[test]
    fn mixed_batch_arrives_intact_with_gso() {
        let Some(mut d) = driver(socket(), true) else {
            return;
        };
        let on = d.gso();
        if !on {
            eprintln!("UDP GSO unsupported here; checking the plain path");
        }
        send_mixed(&mut d, on);
        assert_eq!(d.gso(), on);
        // Twice: the second batch runs with GSO confirmed (no waiting per message).
        if on {
            d.stats = IoStats::default();
            send_mixed(&mut d, true);
        }
    }

    #[test]
    fn mixed_batch_arrives_intact_without_gso() {
        let Some(mut d) = driver(socket(), false) else {
            return;
        };
        assert!(!d.gso());
        send_mixed(&mut d, false);
    }

    #[test]
    fn refused_gso_is_turned_off_and_nothing_is_lost() {
        let Some(mut d) = driver(no_check_socket(), true) else {
            return;
        };
        if !d.gso() {
            eprintln!("UDP GSO unsupported here; nothing to refuse");
            return;
        }
        send_mixed(&mut d, false);
        assert!(!d.gso(), "GSO should be off after the kernel refused it");
    }

    #[test]
    fn refusal_after_confirmation_resends_everything() {
        // GSO confirmed on a good socket, then the kernel starts refusing (SO_NO_CHECK set
        // afterwards): every datagram still arrives, GSO goes off.
        let Some(mut d) = driver(socket(), true) else {
            return;
        };
        if !d.gso() {
            return;
        }
        send_mixed(&mut d, true);
        assert!(d.gso_confirmed);
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a valid pointer.
        let r = unsafe {
            libc::setsockopt(
                d.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        d.stats = IoStats::default();
        let rx = super::super::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        rx.set_nonblocking(false).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let dst = rx.local_addr().unwrap();
        // 100 × 500 B: two GSO runs (64 + 36), both refused.
        let mut out: Vec<Outgoing> = (0..100u32)
            .map(|k| Outgoing {
                dst,
                data: vec![k as u8; 500],
            })
            .collect();
        assert_eq!(d.send_batch(&mut out), 100);
        let t0 = std::time::Instant::now();
        while d.stats().tx_datagrams < 100 && t0.elapsed() < Duration::from_secs(2) {
            d.poll(Some(Duration::from_millis(5)), &mut |_, _| {})
                .unwrap();
        }
        assert!(!d.gso());
        let mut got = vec![0usize; 100];
        let mut buf = [0u8; 2000];
        for _ in 0..100 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, 500);
            got[buf[0] as usize] += 1;
        }
        assert!(got.iter().all(|&c| c == 1), "{got:?}");
        let s = d.stats();
        assert_eq!(
            (s.tx_datagrams, s.tx_dropped, s.tx_gso_messages),
            (100, 0, 0),
            "{s:?}"
        );
    }
}
