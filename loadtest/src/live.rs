//! Running counters every viewer task updates and the once-a-second loop reads: the live
//! progress line and the per-second series come from their differences.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Live {
    pub w_joined: AtomicU64,
    pub w_failed: AtomicU64,
    /// Refused joins waiting for their retry (`--retry-refused`), a gauge.
    pub w_retrying: AtomicU64,
    pub w_pkts: AtomicU64,
    pub w_bytes: AtomicU64,
    pub w_expected: AtomicU64,
    pub w_unique: AtomicU64,
    pub w_reordered: AtomicU64,
    pub w_dups: AtomicU64,
    pub h_joined: AtomicU64,
    pub h_failed: AtomicU64,
    pub h_playlists: AtomicU64,
    pub h_parts: AtomicU64,
    pub h_hinted: AtomicU64,
    pub h_bytes: AtomicU64,
    pub h_late: AtomicU64,
    pub h_stalls: AtomicU64,
    pub h_errors: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snap {
    pub w_joined: u64,
    pub w_failed: u64,
    pub w_pkts: u64,
    pub w_bytes: u64,
    pub w_expected: u64,
    pub w_unique: u64,
    pub h_joined: u64,
    pub h_failed: u64,
    pub h_parts: u64,
    pub h_bytes: u64,
    pub h_late: u64,
    pub h_stalls: u64,
    pub h_errors: u64,
}

pub fn add(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

impl Live {
    pub fn snap(&self) -> Snap {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snap {
            w_joined: g(&self.w_joined),
            w_failed: g(&self.w_failed),
            w_pkts: g(&self.w_pkts),
            w_bytes: g(&self.w_bytes),
            w_expected: g(&self.w_expected),
            w_unique: g(&self.w_unique),
            h_joined: g(&self.h_joined),
            h_failed: g(&self.h_failed),
            h_parts: g(&self.h_parts),
            h_bytes: g(&self.h_bytes),
            h_late: g(&self.h_late),
            h_stalls: g(&self.h_stalls),
            h_errors: g(&self.h_errors),
        }
    }
}
