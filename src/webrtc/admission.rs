//! Admission of WebRTC sessions: who may take a slot on this node, decided before an offer is
//! answered.
//!
//! - **Atomic slots.** A viewer reserves its slot ([`Slot`]) under one lock before the offer is
//!   answered; the cap (`sfu.max_viewers`) is checked and taken in the same step, so N offers
//!   fired at once never make more than the cap. The slot travels with the session to its worker
//!   and is released when it is dropped, on every path (answer failed, worker queue full,
//!   connect deadline, viewer left), because release is the `Slot`'s `Drop`.
//! - **Pending bound.** A session whose offer was answered but that has not finished ICE + DTLS
//!   is *pending*. Pending sessions are bounded in total (`sfu.max_pending`) and per client
//!   address (`sfu.max_pending_per_ip`; IPv6 counted per /64), so strangers that POST offers and
//!   never connect cannot take the node's capacity: they hold at most their share of pending
//!   slots, and only until the worker drops them at `sfu.connect_timeout_ms`.
//! - **Measured load.** Each worker measures its own loop (CPU busy share; see [`LoadMeter`]) and the
//!   placement skips workers above `sfu.admit_max_busy_pct`; when every worker is above it the
//!   join is refused with 503 + Retry-After instead of degrading the viewers already watching.
//!
//! WHIP publishers go through the same pending bounds (their offers cost a worker the same
//! handshake) but not through the viewer cap or the load check: refusing a publisher would take
//! the program away from every viewer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Why a session was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `sfu.max_viewers` slots are taken (pending + connected).
    Full,
    /// `sfu.max_pending` sessions are being set up right now.
    PendingFull,
    /// `sfu.max_pending_per_ip` sessions from this address are being set up right now.
    PendingPerIp,
    /// Every worker is busier than `sfu.admit_max_busy_pct` (the value is the least busy, %).
    Overloaded(u32),
}

impl Refusal {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::PendingFull => "pending",
            Refusal::PendingPerIp => "pending_per_ip",
            Refusal::Overloaded(_) => "overloaded",
        }
    }

    /// Seconds a client should wait before trying again (`Retry-After`). Pending bounds clear
    /// within a connect deadline; load and a full node take longer.
    pub fn retry_after_secs(self) -> u32 {
        match self {
            Refusal::PendingFull | Refusal::PendingPerIp => 2,
            Refusal::Overloaded(_) => 5,
            Refusal::Full => 10,
        }
    }

    const ALL: [Refusal; 4] = [
        Refusal::Full,
        Refusal::PendingFull,
        Refusal::PendingPerIp,
        Refusal::Overloaded(0),
    ];

    fn index(self) -> usize {
        match self {
            Refusal::Full => 0,
            Refusal::PendingFull => 1,
            Refusal::PendingPerIp => 2,
            Refusal::Overloaded(_) => 3,
        }
    }
}

/// What a refused joiner reads in the 503 body.
impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Full => f.write_str(
                "this relay has no WebRTC viewer slot left (sfu.max_viewers); retry after the \
                 Retry-After delay, or play the LL-HLS stream",
            ),
            Refusal::PendingFull => f.write_str(
                "too many WebRTC sessions are being set up on this relay right now; retry after \
                 the Retry-After delay",
            ),
            Refusal::PendingPerIp => f.write_str(
                "too many WebRTC sessions are being set up from your address \
                 (sfu.max_pending_per_ip); complete or abandon them, then retry",
            ),
            Refusal::Overloaded(p) => write!(
                f,
                "this relay is at capacity: its least busy SFU worker is {p} % busy (above \
                 sfu.admit_max_busy_pct); retry after the Retry-After delay, or play the LL-HLS \
                 stream"
            ),
        }
    }
}

/// What a slot is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    Viewer,
    Publisher,
}

/// The per-address key of the pending bound: IPv4 as is (v4-mapped IPv6 too), IPv6 by /64 (one
/// subscriber usually holds a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(u32),
    /// The upper 64 bits.
    V6(u64),
}

impl IpKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.into()),
                None => IpKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Default)]
struct PendingTable {
    total: usize,
    by_ip: HashMap<IpKey, usize>,
}

/// The node's admission state, shared by the HTTP side (reserve) and the workers (release).
pub struct Admission {
    max_viewers: usize,
    max_pending: usize,
    max_pending_per_ip: usize,
    /// Viewer slots taken (pending and connected).
    viewers: AtomicUsize,
    pending: Mutex<PendingTable>,
    refused: [AtomicU64; 4],
}

impl Admission {
    pub fn new(max_viewers: usize, max_pending: usize, max_pending_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_viewers,
            max_pending,
            max_pending_per_ip,
            viewers: AtomicUsize::new(0),
            pending: Mutex::new(PendingTable::default()),
            refused: Default::default(),
        })
    }

    /// Take a pending slot for a session from `ip` (and a viewer slot for a viewer), or say why
    /// not. Checked and taken under one lock: concurrent calls never exceed a bound.
    pub fn reserve(self: &Arc<Self>, ip: IpAddr, kind: SlotKind) -> Result<Slot, Refusal> {
        let key = IpKey::of(ip);
        let mut p = self.pending.lock();
        let from_ip = p.by_ip.get(&key).copied().unwrap_or(0);
        let refusal = if p.total >= self.max_pending {
            Some(Refusal::PendingFull)
        } else if from_ip >= self.max_pending_per_ip {
            Some(Refusal::PendingPerIp)
        } else if kind == SlotKind::Viewer
            && self
                .viewers
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max_viewers).then_some(n + 1)
                })
                .is_err()
        {
            Some(Refusal::Full)
        } else {
            None
        };
        if let Some(r) = refusal {
            drop(p);
            self.count_refusal(r);
            return Err(r);
        }
        p.total += 1;
        *p.by_ip.entry(key).or_default() += 1;
        Ok(Slot {
            adm: self.clone(),
            kind,
            key,
            pending: true,
        })
    }

    /// Count a refusal decided elsewhere (the load check).
    pub fn count_refusal(&self, r: Refusal) {
        self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far, per reason label.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (r.as_str(), self.refused[r.index()].load(Ordering::Relaxed)))
            .collect()
    }

    /// Sessions answered and not yet connected (viewers and publishers).
    pub fn pending(&self) -> usize {
        self.pending.lock().total
    }

    /// Viewer slots taken (pending and connected).
    pub fn viewer_slots(&self) -> usize {
        self.viewers.load(Ordering::Acquire)
    }

    fn release_pending(&self, key: IpKey) {
        let mut p = self.pending.lock();
        p.total = p.total.saturating_sub(1);
        if let Some(n) = p.by_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                p.by_ip.remove(&key);
            }
        }
    }
}

/// A reserved place on the node. Held by the session from before its offer is answered until
/// it ends; dropping it gives everything back.
pub struct Slot {
    adm: Arc<Admission>,
    kind: SlotKind,
    key: IpKey,
    pending: bool,
}

impl Slot {
    /// ICE + DTLS completed: the session no longer counts as pending (its viewer slot stays).
    pub fn connected(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.adm.release_pending(self.key);
        }
    }

    pub fn is_pending(&self) -> bool {
        self.pending
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connected();
        if self.kind == SlotKind::Viewer {
            self.adm.viewers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("kind", &self.kind)
            .field("pending", &self.pending)
            .finish()
    }
}

/// A worker's measured load, computed by the worker from its own loop and read by admission
/// and /metrics: the share of the window the worker thread spent on the CPU (its loop working,
/// syscalls included; not the time blocked waiting for input), and the longest wall-clock stretch
/// the loop worked between two waits for input (how late an input can be served).
#[derive(Default)]
pub struct LoadSignal {
    /// Busy share over the recent windows, per mille (smoothed).
    busy_permille: AtomicU32,
    /// Longest busy stretch of the last window, µs.
    lag_us: AtomicU64,
}

impl LoadSignal {
    /// Busy share, 0–100 %.
    pub fn busy_pct(&self) -> f64 {
        self.busy_permille.load(Ordering::Relaxed) as f64 / 10.0
    }

    pub fn busy_permille(&self) -> u32 {
        self.busy_permille.load(Ordering::Relaxed)
    }

    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    pub fn set_busy_permille(&self, v: u32) {
        self.busy_permille.store(v, Ordering::Relaxed);
    }
}

/// Window over which the worker's busy share is measured before it is published.
pub const LOAD_WINDOW: Duration = Duration::from_millis(250);

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The worker-side accumulator behind a [`LoadSignal`]: fed every loop turn with the wall time
/// the turn worked and the thread's CPU time, it publishes once per [`LOAD_WINDOW`]. CPU time,
/// not wall time, makes the busy share: a worker preempted by other processes is not "busy" by
/// it (that shows as lag). The published share is smoothed (half the new window, half the
/// previous value) so one quiet window does not open the gate during a join burst, yet a
/// saturated worker shows it within ≈ 0.5 s.
pub struct LoadMeter {
    window_start: Instant,
    cpu_start: Duration,
    max_stretch: Duration,
    smoothed: f64,
}

impl LoadMeter {
    pub fn new(now: Instant, cpu: Duration) -> Self {
        Self {
            window_start: now,
            cpu_start: cpu,
            max_stretch: Duration::ZERO,
            smoothed: 0.0,
        }
    }

    /// One loop turn worked for `worked` (wall); `cpu` is the thread's CPU time now (read only
    /// when `wants_cpu` says a window is complete, to keep the per-turn cost at one clock read).
    pub fn turn(&mut self, worked: Duration, now: Instant, cpu: Duration, out: &LoadSignal) {
        self.max_stretch = self.max_stretch.max(worked);
        let el = now.saturating_duration_since(self.window_start);
        if el < LOAD_WINDOW {
            return;
        }
        let used = cpu.saturating_sub(self.cpu_start);
        let share = (used.as_secs_f64() / el.as_secs_f64()).clamp(0.0, 1.0);
        self.smoothed = 0.5 * self.smoothed + 0.5 * share;
        out.busy_permille
            .store((self.smoothed * 1000.0).round() as u32, Ordering::Relaxed);
        out.lag_us
            .store(self.max_stretch.as_micros() as u64, Ordering::Relaxed);
        self.window_start = now;
        self.cpu_start = cpu;
        self.max_stretch = Duration::ZERO;
    }

    /// Whether the next [`LoadMeter::turn`] at `now` closes a window (then pass a fresh CPU
    /// time; otherwise any value).
    pub fn wants_cpu(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.window_start) >= LOAD_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_and_total_pending_bounds_and_release() {
        let a = Admission::new(100, 5, 2);
        let s1 = a.reserve(ip("10.0.0.1"), SlotKind::Viewer).unwrap();
        let mut s2 = a.reserve(ip("10.0.0.1"), SlotKind::Viewer).unwrap();
        assert_eq!(
            a.reserve(ip("10.0.0.1"), SlotKind::Viewer).unwrap_err(),
            Refusal::PendingPerIp
        );
        // A connected session frees its pending place, not its viewer slot.
        s2.connected();
        assert_eq!(a.pending(), 1);
        assert_eq!(a.viewer_slots(), 2);
        let _s3 = a.reserve(ip("10.0.0.1"), SlotKind::Viewer).unwrap();
        let _b: Vec<Slot> = (2..5)
            .map(|i| {
                a.reserve(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), SlotKind::Viewer)
                    .unwrap()
            })
            .collect();
        assert_eq!(a.pending(), 5);
        assert_eq!(
            a.reserve(ip("10.9.9.9"), SlotKind::Publisher).unwrap_err(),
            Refusal::PendingFull
        );
        drop(s1);
        assert_eq!(a.pending(), 4);
        drop(s2);
        assert_eq!(a.pending(), 4, "s2 was already connected");
        assert_eq!(a.viewer_slots(), 4);
        let r = a.refusals();
        assert!(
            r.contains(&("pending_per_ip", 1)) && r.contains(&("pending", 1)),
            "{r:?}"
        );
    }

    #[test]
    fn ipv6_is_bounded_per_64_and_mapped_v4_as_v4() {
        let a = Admission::new(100, 100, 1);
        let _x = a.reserve(ip("2001:db8:1:2::1"), SlotKind::Viewer).unwrap();
        assert_eq!(
            a.reserve(ip("2001:db8:1:2:ffff::9"), SlotKind::Viewer)
                .unwrap_err(),
            Refusal::PendingPerIp
        );
        let _y = a.reserve(ip("2001:db8:1:3::1"), SlotKind::Viewer).unwrap();
        let _z = a.reserve(ip("192.0.2.1"), SlotKind::Viewer).unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(
            a.reserve(mapped, SlotKind::Viewer).unwrap_err(),
            Refusal::PendingPerIp
        );
        assert_ne!(IpKey::of(ip("::1")), IpKey::of(ip("0.0.0.1")));
    }

    #[test]
    fn viewer_cap_is_atomic_under_contention_and_publishers_do_not_count() {
        let a = Admission::new(50, 10_000, 10_000);
        let taken: Vec<Slot> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let a = a.clone();
                    s.spawn(move || {
                        (0..40)
                            .filter_map(|i| {
                                let ip = IpAddr::V4(Ipv4Addr::new(10, t, 0, i));
                                a.reserve(ip, SlotKind::Viewer).ok()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(taken.len(), 50);
        assert_eq!(a.viewer_slots(), 50);
        assert!(a.reserve(ip("10.1.1.1"), SlotKind::Publisher).is_ok());
        assert_eq!(
            a.reserve(ip("10.1.1.2"), SlotKind::Viewer).unwrap_err(),
            Refusal::Full
        );
        drop(taken);
        assert_eq!(a.viewer_slots(), 0);
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn load_meter_publishes_a_smoothed_cpu_share_and_the_longest_stretch() {
        let sig = LoadSignal::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = LoadMeter::new(t0, ms(1000));
        // 250 ms of wall time in 10 turns, 200 ms of it on the CPU (80 %).
        for i in 1..=10u64 {
            assert_eq!(m.wants_cpu(t0 + ms(25 * i)), i == 10);
            m.turn(ms(20 + i), t0 + ms(25 * i), ms(1000 + 20 * i), &sig);
        }
        assert_eq!(sig.busy_permille(), 400, "half of 80 % after one window");
        assert_eq!(sig.lag(), ms(30));
        m.turn(ms(5), t0 + ms(500), ms(1400), &sig);
        assert_eq!(sig.busy_permille(), 600);
        assert_eq!(sig.lag(), ms(5));
        // An idle window brings it down.
        m.turn(Duration::ZERO, t0 + ms(750), ms(1400), &sig);
        assert_eq!(sig.busy_permille(), 300);
        assert!(thread_cpu_time() > Duration::ZERO);
    }
}
