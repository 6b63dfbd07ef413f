//! ICE-TCP (RFC 6544, passive candidates) with RFC 4571 framing, for peers whose UDP is blocked.
//!
//! One thread per worker runs a current-thread tokio runtime with the worker's TCP listener.
//! Each connection is deframed (2-byte big-endian length, then one STUN / DTLS / SRTP packet)
//! and every packet goes to the worker over a bounded crossbeam channel (plus the worker's
//! waker), where it enters the same `Rtc` as UDP would, as `Protocol::Tcp`. The worker's
//! datagrams for ICE-TCP peers come back over a bounded tokio channel and are written framed.
//! Full channels drop packets (media is loss-tolerant; ICE and DTLS retransmit), never block the
//! worker. This is the fallback path: it costs a copy per packet each way, which UDP does not.
//!
//! A connection is held only while it carries a session: each packet travels with the
//! connection's [`ConnMark`], which the worker stamps when the packet belonged to a session (and
//! says whether that session is connected). A connection whose session is not connected within
//! the connect deadline (`sfu.connect_timeout_ms`), or that carried no valid packet for the idle
//! timeout (`sfu.idle_timeout_ms`), is closed; empty frames and garbage never count.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::io::{Outgoing, Waker};

/// Packets queued from all TCP connections to the worker.
pub const TO_WORKER_CAPACITY: usize = 4096;
/// Packets queued from the worker to the TCP side (all connections).
pub const FROM_WORKER_CAPACITY: usize = 8192;
/// Packets queued per connection before its writer drops.
const PER_CONN_CAPACITY: usize = 256;
/// A write that makes no progress for this long closes the connection.
const WRITE_STALL: Duration = Duration::from_secs(10);
/// How often a connection checks its deadlines.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// What the worker tells a connection about the packets it carried.
pub struct ConnMark {
    opened: Instant,
    /// ms after `opened` of the last packet that belonged to a session, +1 (0: none yet).
    valid_ms: AtomicU64,
    /// Its session completed ICE + DTLS.
    connected: AtomicBool,
}

impl ConnMark {
    pub fn new(now: Instant) -> Self {
        Self {
            opened: now,
            valid_ms: AtomicU64::new(0),
            connected: AtomicBool::new(false),
        }
    }

    /// A packet of this connection belonged to a session (`connected`: and that session is).
    pub fn valid(&self, now: Instant, connected: bool) {
        let ms = now.saturating_duration_since(self.opened).as_millis() as u64 + 1;
        self.valid_ms.fetch_max(ms, Ordering::Relaxed);
        if connected {
            self.connected.store(true, Ordering::Relaxed);
        }
    }

    /// Why the connection should close now, if it should.
    pub fn expired(&self, now: Instant, d: Deadlines) -> Option<&'static str> {
        let age = now.saturating_duration_since(self.opened);
        if !self.connected.load(Ordering::Relaxed) && age > d.connect {
            return Some("no connected session within the connect deadline");
        }
        let last = match self.valid_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            ms => Duration::from_millis(ms - 1),
        };
        (age.saturating_sub(last) > d.idle).then_some("no valid packet within the idle timeout")
    }
}

/// A connection's deadlines (from `[sfu]`).
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub connect: Duration,
    pub idle: Duration,
}

/// One deframed packet from a TCP peer, with its connection's mark.
pub type TcpPacket = (SocketAddr, Vec<u8>, Arc<ConnMark>);

/// The worker's side of its ICE-TCP listener.
pub struct TcpLink {
    /// Our passive candidate addresses.
    pub local: Vec<SocketAddr>,
    /// Packets from TCP peers: (peer address, one deframed packet, the connection's mark).
    pub rx: Receiver<TcpPacket>,
    /// Datagrams for TCP peers.
    pub tx: tokio::sync::mpsc::Sender<Outgoing>,
}

type Conns = Arc<Mutex<HashMap<SocketAddr, tokio::sync::mpsc::Sender<Vec<u8>>>>>;

/// Start the listener thread for worker `index`. `listener` is bound; `local` are the candidate
/// addresses advertised for it.
pub fn spawn(
    index: usize,
    listener: std::net::TcpListener,
    local: Vec<SocketAddr>,
    waker: Waker,
    max_conns: usize,
    deadlines: Deadlines,
) -> std::io::Result<TcpLink> {
    listener.set_nonblocking(true)?;
    let (to_worker, rx) = crossbeam_channel::bounded(TO_WORKER_CAPACITY);
    let (tx, from_worker) = tokio::sync::mpsc::channel::<Outgoing>(FROM_WORKER_CAPACITY);
    std::thread::Builder::new()
        .name(format!("sfu-tcp-{index}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(worker = index, "ICE-TCP runtime: {e}");
                    return;
                }
            };
            rt.block_on(run(
                index,
                listener,
                to_worker,
                from_worker,
                waker,
                max_conns,
                deadlines,
            ));
        })?;
    Ok(TcpLink { local, rx, tx })
}

async fn run(
    index: usize,
    listener: std::net::TcpListener,
    to_worker: Sender<TcpPacket>,
    mut from_worker: tokio::sync::mpsc::Receiver<Outgoing>,
    waker: Waker,
    max_conns: usize,
    deadlines: Deadlines,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = index, "ICE-TCP listener: {e}");
            return;
        }
    };
    let conns: Conns = Arc::default();
    // Dispatcher: the worker's datagrams to the connection of their destination.
    let c2 = conns.clone();
    tokio::spawn(async move {
        while let Some(o) = from_worker.recv().await {
            let tx = c2.lock().get(&o.dst).cloned();
            if let Some(tx) = tx {
                let _ = tx.try_send(o.data);
            }
        }
    });
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(worker = index, "ICE-TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if conns.lock().len() >= max_conns {
            tracing::warn!(worker = index, %peer, "ICE-TCP connection limit reached");
            drop(sock);
            continue;
        }
        let _ = sock.set_nodelay(true);
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PER_CONN_CAPACITY);
        conns.lock().insert(peer, tx);
        let conns = conns.clone();
        let to_worker = to_worker.clone();
        let waker = waker.clone();
        let mark = Arc::new(ConnMark::new(Instant::now()));
        tokio::spawn(async move {
            let (r, w) = sock.into_split();
            let reader = read_loop(r, peer, to_worker, waker, mark.clone());
            let writer = write_loop(w, rx);
            let watchdog = async {
                let mut tick = tokio::time::interval(CHECK_EVERY);
                loop {
                    tick.tick().await;
                    if let Some(why) = mark.expired(Instant::now(), deadlines) {
                        return why;
                    }
                }
            };
            let why = tokio::select! {
                _ = reader => "closed by the peer or bad framing",
                _ = writer => "write failed or stalled",
                why = watchdog => why,
            };
            conns.lock().remove(&peer);
            tracing::debug!(worker = index, %peer, why, "ICE-TCP connection closed");
        });
    }
}

/// Deframe packets to the worker until the peer closes or sends bad framing. Deadlines are the
/// watchdog's job (only packets the worker accepts count as traffic).
async fn read_loop(
    mut r: tokio::net::tcp::OwnedReadHalf,
    peer: SocketAddr,
    to_worker: Sender<TcpPacket>,
    waker: Waker,
    mark: Arc<ConnMark>,
) {
    let mut len = [0u8; 2];
    loop {
        if r.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = u16::from_be_bytes(len) as usize;
        if n == 0 {
            continue;
        }
        let mut buf = vec![0u8; n];
        if r.read_exact(&mut buf).await.is_err() {
            return;
        }
        // A full worker queue drops the packet (as a full UDP socket buffer would).
        if to_worker.try_send((peer, buf, mark.clone())).is_ok() {
            waker.wake();
        }
    }
}

async fn write_loop(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(p) = rx.recv().await {
        buf.clear();
        push_framed(&mut buf, &p);
        // Batch what is already queued into one write.
        while buf.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(p) => push_framed(&mut buf, &p),
                Err(_) => break,
            }
        }
        match tokio::time::timeout(WRITE_STALL, w.write_all(&buf)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Append one RFC 4571 frame (packets over 65535 bytes cannot be framed and are dropped).
pub fn push_framed(buf: &mut Vec<u8>, p: &[u8]) {
    if p.len() > u16::MAX as usize {
        return;
    }
    buf.extend_from_slice(&(p.len() as u16).to_be_bytes());
    buf.extend_from_slice(p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_expire_unless_a_session_connects_and_keeps_talking() {
        let t0 = Instant::now();
        let d = Deadlines {
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(15),
        };
        let s = |x: u64| t0 + Duration::from_secs(x);
        // Nothing valid (garbage, empty frames): closed at the connect deadline.
        let m = ConnMark::new(t0);
        assert_eq!(m.expired(s(4), d), None);
        assert!(m.expired(s(6), d).unwrap().contains("connect"));
        // Valid STUN for a session that never connects: same.
        let m = ConnMark::new(t0);
        m.valid(s(1), false);
        m.valid(s(4), false);
        assert!(m.expired(s(6), d).unwrap().contains("connect"));
        // Connected: held while valid packets keep coming, closed after the idle timeout.
        let m = ConnMark::new(t0);
        m.valid(s(2), true);
        m.valid(s(20), false);
        assert_eq!(m.expired(s(30), d), None);
        assert!(m.expired(s(36), d).unwrap().contains("idle"));
    }

    #[test]
    fn frames_are_length_prefixed() {
        let mut b = Vec::new();
        push_framed(&mut b, &[1, 2, 3]);
        push_framed(&mut b, &[]);
        assert_eq!(b, vec![0, 3, 1, 2, 3, 0, 0]);
    }
}
