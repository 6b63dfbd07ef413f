//! io_uring driver (the `io-uring` crate, no async runtime): `RX_SLOTS` `RecvMsg`s stay posted on
//! the socket, one `Read` on the waker's eventfd; a fan-out batch of datagrams becomes that many
//! `SendMsg` entries and one `io_uring_enter`. Waiting for input and submitting the re-posted
//! receives is one `io_uring_enter` with a timeout (`IORING_ENTER_EXT_ARG`, Linux 5.11+).
//!
//! Buffers handed to the kernel live in boxed slots that stay put until their completion is
//! reaped; send slots are recycled, so a steady state allocates nothing per datagram here.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

use super::{sockaddr_of, DriverKind, IoStats, Outgoing, UdpDriver, Waker, RECV_BUF};

const RX_SLOTS: usize = 64;
const RING_ENTRIES: u32 = 1024;
/// Sends in flight at most; beyond this a batch waits for completions rather than grow.
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

struct TxSlot {
    data: Vec<u8>,
    addr: libc::sockaddr_storage,
    iov: libc::iovec,
    msg: libc::msghdr,
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
    tx_inflight: usize,
    /// Receive completions reaped while sending, handled at the next `poll`.
    pending_rx: Vec<(usize, i32)>,
    stats: IoStats,
}

// SAFETY: the raw pointers inside the slots point into the slots themselves and are only used
// by the owning thread and the kernel.
unsafe impl Send for UringDriver {}

impl UringDriver {
    pub fn new(socket: UdpSocket) -> std::io::Result<Self> {
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
                    if let Some(slot) = self.tx.get_mut(idx).and_then(|s| s.take()) {
                        let mut slot = slot;
                        slot.data = Vec::new();
                        self.tx_pool.push(slot);
                        self.tx_free.push(idx);
                        self.tx_inflight -= 1;
                    }
                    if res < 0 {
                        self.stats.tx_dropped += 1;
                    } else {
                        self.stats.tx_datagrams += 1;
                    }
                }
                _ => {}
            }
        }
        if rearm_wake {
            self.post_wake()?;
        }
        Ok(())
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
        }
        self.deliver(on_recv)?;
        // Re-posted receives go in with the next enter (send batch or poll).
        Ok(())
    }

    fn send_batch(&mut self, out: &mut Vec<Outgoing>) -> usize {
        if out.is_empty() {
            return 0;
        }
        let _ = self.reap();
        let fd = self.socket.as_raw_fd();
        let mut queued = 0;
        for o in out.drain(..) {
            // At the cap, wait for the kernel to retire sends instead of dropping: a keyframe to
            // 1,000 viewers is ~19,000 datagrams, and dropped ones only come back as NACKs.
            while self.tx_inflight >= MAX_TX_INFLIGHT {
                if self.ring.submit_and_wait(1).is_err() {
                    break;
                }
                self.stats.syscalls += 1;
                let _ = self.reap();
            }
            if self.tx_inflight >= MAX_TX_INFLIGHT {
                self.stats.tx_dropped += 1;
                continue;
            }
            let idx = match self.tx_free.pop() {
                Some(i) => i,
                None => {
                    self.tx.push(None);
                    self.tx.len() - 1
                }
            };
            let mut slot = self.tx_pool.pop().unwrap_or_else(|| {
                // SAFETY: the libc structs are plain data; all-zero is valid for them.
                Box::new(unsafe {
                    TxSlot {
                        data: Vec::new(),
                        addr: std::mem::zeroed(),
                        iov: std::mem::zeroed(),
                        msg: std::mem::zeroed(),
                    }
                })
            });
            let sa = socket2::SockAddr::from(o.dst);
            // SAFETY: copies `sa.len()` bytes of a valid sockaddr into our storage.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    sa.as_ptr() as *const u8,
                    &mut slot.addr as *mut _ as *mut u8,
                    sa.len() as usize,
                );
            }
            slot.data = o.data;
            slot.iov.iov_base = slot.data.as_ptr() as *mut libc::c_void;
            slot.iov.iov_len = slot.data.len();
            slot.msg.msg_iov = &mut slot.iov;
            slot.msg.msg_iovlen = 1;
            slot.msg.msg_name = &mut slot.addr as *mut _ as *mut libc::c_void;
            slot.msg.msg_namelen = sa.len();
            slot.msg.msg_control = std::ptr::null_mut();
            slot.msg.msg_controllen = 0;
            let e = opcode::SendMsg::new(types::Fd(fd), &slot.msg)
                .build()
                .user_data((KIND_TX << KIND_SHIFT) | idx as u64);
            self.tx[idx] = Some(slot);
            self.tx_inflight += 1;
            if self.push(&e).is_err() {
                self.stats.tx_dropped += 1;
                continue;
            }
            queued += 1;
        }
        // One submission for the whole fan-out batch (plus re-posted receives).
        if self.ring.submit().is_ok() {
            self.stats.syscalls += 1;
        }
        queued
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
