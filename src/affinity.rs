//! CPU pinning for the dedicated engine threads (packager, SFU workers) and the count of cores
//! the process may use (what `sfu.workers = "auto"` is sized from).

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

/// The cores this process may run on: its CPU affinity mask (`sched_getaffinity`, so `taskset`,
/// systemd `CPUAffinity=` and container cpusets count) and cgroup CPU quota, as
/// `std::thread::available_parallelism` reads them; 1 when they cannot be read.
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
