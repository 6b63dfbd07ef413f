//! CPU pinning for the dedicated engine threads (packager, later SFU workers and RTMP push).

/// Pin the calling thread to `core` (an index into the cores this process may use). Logs and
/// carries on unpinned when that is not possible.
pub fn pin_current_thread(core: usize, what: &str) {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    if ids.is_empty() {
        tracing::warn!("{what}: cannot list cores; running unpinned");
        return;
    }
    let id = ids[core % ids.len()];
    if core_affinity::set_for_current(id) {
        tracing::info!("{what}: pinned to core {}", id.id);
    } else {
        tracing::warn!("{what}: pinning to core {} failed; running unpinned", id.id);
    }
}
