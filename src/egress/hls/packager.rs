//! The LL-HLS packager thread: receives every stream's media events from its registry sink,
//! runs one segmenter per stream, and publishes parts into the store. It runs on a dedicated OS
//! thread (optionally pinned) so that HTTP bursts or WebRTC work cannot delay part production.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use super::segmenter::{Segmenter, SegmenterConfig};
use super::store::HlsStore;
use crate::media::{Envelope, MediaEvent};

/// Counters the packager exposes to /metrics.
#[derive(Default)]
pub struct PackagerStats {
    pub events: AtomicU64,
    pub mux_errors: AtomicU64,
}

pub fn spawn(
    rx: Receiver<Envelope>,
    store: Arc<HlsStore>,
    cfg: SegmenterConfig,
    pin_core: Option<usize>,
    stats: Arc<PackagerStats>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hls-packager".into())
        .spawn(move || {
            if let Some(core) = pin_core {
                crate::affinity::pin_current_thread(core, "hls-packager");
            }
            run(rx, store, cfg, stats)
        })
}

fn run(
    rx: Receiver<Envelope>,
    store: Arc<HlsStore>,
    cfg: SegmenterConfig,
    stats: Arc<PackagerStats>,
) {
    let mut segmenters: HashMap<Arc<str>, Segmenter> = HashMap::new();
    let mut out = Vec::new();
    for env in rx.iter() {
        stats.events.fetch_add(1, Ordering::Relaxed);
        let seg = segmenters
            .entry(env.stream.clone())
            .or_insert_with(|| Segmenter::new(cfg));
        let before = seg.errors();
        seg.handle(&env.event, &mut out);
        let errs = seg.errors() - before;
        if errs > 0 {
            stats.mux_errors.fetch_add(errs, Ordering::Relaxed);
        }
        if !out.is_empty() {
            store.get_or_create(&env.stream).apply(&out);
            out.clear();
        }
        if matches!(env.event, MediaEvent::Ended) {
            segmenters.remove(&env.stream);
        }
    }
    tracing::info!("hls packager stopped: registry closed");
}
