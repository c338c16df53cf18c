//! [`cleanup_all`]: empty every registered device cache, release every buffer
//! pool, and ask mimalloc to return its free pages; says what it released.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::device::devices;
use crate::info::process_memory;
use crate::pool::release_all_pools;

/// What [`cleanup_all`] released.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Bytes released by each registered device's cache.
    pub devices: Vec<(String, u64)>,
    /// Sum over devices.
    pub device_bytes: u64,
    /// Bytes released by each hook of [`register_cleanup`] (a pinned host
    /// pool, a model cache, ...).
    pub hooks: Vec<(String, u64)>,
    /// Buffer pools released.
    pub pools: usize,
    /// Bytes freed from buffer pools.
    pub pool_bytes: u64,
    /// Resident set before.
    pub rss_before: u64,
    /// Resident set after (`mi_collect(true)` included).
    pub rss_after: u64,
}

impl CleanupReport {
    /// `rss_before − rss_after` (0 if it grew).
    pub fn rss_released(&self) -> u64 {
        self.rss_before.saturating_sub(self.rss_after)
    }
}

impl std::fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use alloc_host::format_bytes as b;
        for (name, bytes) in &self.devices {
            writeln!(f, "device `{name}`: {} released from its cache", b(*bytes))?;
        }
        for (name, bytes) in &self.hooks {
            writeln!(f, "`{name}`: {} released", b(*bytes))?;
        }
        writeln!(
            f,
            "buffer pools: {} released from {} pool(s)",
            b(self.pool_bytes),
            self.pools
        )?;
        write!(
            f,
            "resident set: {} -> {} ({} returned to the OS)",
            b(self.rss_before),
            b(self.rss_after),
            b(self.rss_released())
        )
    }
}

type Hook = Arc<dyn Fn() -> u64 + Send + Sync>;

static HOOKS: Mutex<Vec<(String, Hook)>> = Mutex::new(Vec::new());

fn hooks_lock() -> MutexGuard<'static, Vec<(String, Hook)>> {
    HOOKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds `release` (returning the bytes it freed) to what [`cleanup_all`]
/// runs, under `name` (replacing a hook of that name): for memory the toolkit
/// does not know, such as a pinned host pool.
pub fn register_cleanup(name: &str, release: impl Fn() -> u64 + Send + Sync + 'static) {
    let mut h = hooks_lock();
    h.retain(|(n, _)| n != name);
    h.push((name.to_owned(), Arc::new(release)));
}

/// Removes the hook registered under `name`; returns whether there was one.
pub fn unregister_cleanup(name: &str) -> bool {
    let mut h = hooks_lock();
    let before = h.len();
    h.retain(|(n, _)| n != name);
    h.len() != before
}

/// Empties the cache of every registered device; returns (name, bytes).
pub fn empty_device_caches() -> Vec<(String, u64)> {
    devices()
        .into_iter()
        .map(|(name, d)| {
            let bytes = d.empty_cache();
            (name, bytes)
        })
        .collect()
}

/// Asks mimalloc to free the memory it caches (`mi_collect(true)`). Harmless
/// when mimalloc is not the allocator in use; nothing without the `mimalloc`
/// feature.
pub fn collect_host_heap() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: `mi_collect` has no preconditions; it may be called from any
    // thread at any time and only returns unused pages to the OS.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}

/// Empties every device cache, runs the hooks of [`register_cleanup`],
/// releases every buffer pool, then runs `mi_collect(true)`.
pub fn cleanup_all() -> CleanupReport {
    let rss_before = process_memory().rss;
    let devices = empty_device_caches();
    let hooks: Vec<(String, Hook)> = hooks_lock().clone();
    let hooks = hooks.into_iter().map(|(n, f)| (n, f())).collect();
    let (pools, pool_bytes) = release_all_pools();
    collect_host_heap();
    CleanupReport {
        device_bytes: devices.iter().map(|d| d.1).sum(),
        devices,
        hooks,
        pools,
        pool_bytes,
        rss_before,
        rss_after: process_memory().rss,
    }
}
