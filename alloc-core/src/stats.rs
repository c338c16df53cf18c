//! Statistics with `torch.cuda.memory_stats()` key names, updated under the
//! engine's lock (never sampled); what the front cache's shards did without
//! the lock is folded in at the thread's next locked operation and before
//! any read (`front.rs`: exact with one thread and at quiescence; the
//! bound on the peak while threads run is stated there).

use std::collections::BTreeMap;

use crate::size_class::Pool;

/// One counter: its current value, peak, and the totals added and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stat {
    /// The value now.
    pub current: i64,
    /// The highest value since creation or the last `reset_peak`.
    pub peak: i64,
    /// Total added since creation or the last `reset_accumulated`.
    pub allocated: i64,
    /// Total removed since creation or the last `reset_accumulated`.
    pub freed: i64,
}

impl Stat {
    #[inline]
    pub(crate) fn add(&mut self, v: i64) {
        self.current += v;
        self.allocated += v;
        if self.current > self.peak {
            self.peak = self.current;
        }
    }

    #[inline]
    pub(crate) fn sub(&mut self, v: i64) {
        self.current -= v;
        self.freed += v;
    }
}

/// A counter for all pools together and for each pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatArray {
    /// Both pools.
    pub all: Stat,
    /// The small pool.
    pub small_pool: Stat,
    /// The large pool.
    pub large_pool: Stat,
}

impl StatArray {
    /// Adds `v` to `all` and to `pool`.
    #[inline]
    pub fn add(&mut self, pool: Pool, v: usize) {
        let v = v as i64;
        self.all.add(v);
        self.pool_mut(pool).add(v);
    }

    /// Removes `v` from `all` and from `pool`.
    #[inline]
    pub fn sub(&mut self, pool: Pool, v: usize) {
        let v = v as i64;
        self.all.sub(v);
        self.pool_mut(pool).sub(v);
    }

    #[inline]
    fn pool_mut(&mut self, pool: Pool) -> &mut Stat {
        match pool {
            Pool::Small => &mut self.small_pool,
            Pool::Large => &mut self.large_pool,
        }
    }

    /// The counter of one pool.
    pub fn pool(&self, pool: Pool) -> &Stat {
        match pool {
            Pool::Small => &self.small_pool,
            Pool::Large => &self.large_pool,
        }
    }

    fn each_mut(&mut self) -> [&mut Stat; 3] {
        [&mut self.all, &mut self.small_pool, &mut self.large_pool]
    }
}

/// The engine's statistics. Field names are `torch.cuda.memory_stats()` keys;
/// [`Stats::to_map`] exports them with torch's exact dotted names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Blocks handed out to users.
    pub allocation: StatArray,
    /// Segments held from the backend (an expandable segment counts once).
    pub segment: StatArray,
    /// Blocks in use or waiting for events before they are free.
    pub active: StatArray,
    /// Free blocks that are part of a split segment.
    pub inactive_split: StatArray,
    /// Bytes handed out (rounded sizes).
    pub allocated_bytes: StatArray,
    /// Bytes held from the backend (fixed segments + mapped pages).
    pub reserved_bytes: StatArray,
    /// Bytes of active blocks.
    pub active_bytes: StatArray,
    /// Bytes of inactive split blocks.
    pub inactive_split_bytes: StatArray,
    /// Bytes the users asked for (before rounding).
    pub requested_bytes: StatArray,
    /// Allocations that had to release cached memory and try again.
    pub num_alloc_retries: i64,
    /// Allocations that failed with out of memory.
    pub num_ooms: i64,
    /// Times the engine waited for every stream.
    pub num_sync_all_streams: i64,
    /// Driver calls that obtained memory: segment allocations and map calls
    /// of expandable segments (PyTorch counts `cudaMalloc` and `cuMemMap`).
    pub num_device_alloc: i64,
    /// Driver calls that returned memory: segment frees and unmap calls.
    pub num_device_free: i64,
    /// Map calls on expandable segments (each maps one or more pages).
    pub num_device_map: i64,
    /// Unmap calls on expandable segments.
    pub num_device_unmap: i64,
    /// Pages mapped in all (2 MiB each on the built-in backends).
    pub num_pages_mapped: i64,
    /// Blocks of one stream's idle cache reused by another stream.
    pub num_cross_stream_reuse: i64,
    /// Allocations served by a thread's front-cache shard without the
    /// engine lock (`front_cache_mb`).
    pub num_front_cache_hits: i64,
    /// Blocks handed out of at least `max_split_size` bytes (PyTorch's
    /// `oversize_allocations`).
    pub oversize_allocations: Stat,
    /// Fixed segments of at least `max_split_size` bytes (PyTorch's
    /// `oversize_segments`).
    pub oversize_segments: Stat,
}

impl Stats {
    /// Backend calls that obtained memory: segment allocations + map calls
    /// (the same as `num_device_alloc`).
    pub fn device_obtains(&self) -> i64 {
        self.num_device_alloc
    }

    /// Peak requested ÷ peak reserved (1.0 when nothing was reserved).
    pub fn efficiency(&self) -> f64 {
        let r = self.reserved_bytes.all.peak;
        if r == 0 {
            1.0
        } else {
            self.requested_bytes.all.peak as f64 / r as f64
        }
    }

    fn arrays_mut(&mut self) -> [&mut StatArray; 9] {
        [
            &mut self.allocation,
            &mut self.segment,
            &mut self.active,
            &mut self.inactive_split,
            &mut self.allocated_bytes,
            &mut self.reserved_bytes,
            &mut self.active_bytes,
            &mut self.inactive_split_bytes,
            &mut self.requested_bytes,
        ]
    }

    fn arrays(&self) -> [(&'static str, &StatArray); 9] {
        [
            ("allocation", &self.allocation),
            ("segment", &self.segment),
            ("active", &self.active),
            ("inactive_split", &self.inactive_split),
            ("allocated_bytes", &self.allocated_bytes),
            ("reserved_bytes", &self.reserved_bytes),
            ("active_bytes", &self.active_bytes),
            ("inactive_split_bytes", &self.inactive_split_bytes),
            ("requested_bytes", &self.requested_bytes),
        ]
    }

    /// Sets every peak to its current value.
    pub fn reset_peak(&mut self) {
        for a in self.arrays_mut() {
            for s in a.each_mut() {
                s.peak = s.current;
            }
        }
        for s in [&mut self.oversize_allocations, &mut self.oversize_segments] {
            s.peak = s.current;
        }
    }

    /// Zeroes every `allocated`/`freed` total and the event counters.
    pub fn reset_accumulated(&mut self) {
        for a in self.arrays_mut() {
            for s in a.each_mut() {
                s.allocated = 0;
                s.freed = 0;
            }
        }
        for s in [&mut self.oversize_allocations, &mut self.oversize_segments] {
            s.allocated = 0;
            s.freed = 0;
        }
        self.num_alloc_retries = 0;
        self.num_ooms = 0;
        self.num_sync_all_streams = 0;
        self.num_device_alloc = 0;
        self.num_device_free = 0;
        self.num_device_map = 0;
        self.num_device_unmap = 0;
        self.num_pages_mapped = 0;
        self.num_cross_stream_reuse = 0;
        self.num_front_cache_hits = 0;
    }

    /// The statistics under `torch.cuda.memory_stats()`'s exact key names
    /// (`allocated_bytes.all.current`, `num_ooms`, ...), plus this engine's
    /// `num_device_map`, `num_device_unmap`, `num_pages_mapped`,
    /// `num_cross_stream_reuse` and `num_front_cache_hits`.
    pub fn to_map(&self) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for (name, a) in self.arrays() {
            for (pool, s) in [
                ("all", &a.all),
                ("small_pool", &a.small_pool),
                ("large_pool", &a.large_pool),
            ] {
                for (field, v) in [
                    ("current", s.current),
                    ("peak", s.peak),
                    ("allocated", s.allocated),
                    ("freed", s.freed),
                ] {
                    m.insert(format!("{name}.{pool}.{field}"), v);
                }
            }
        }
        for (name, s) in [
            ("oversize_allocations", &self.oversize_allocations),
            ("oversize_segments", &self.oversize_segments),
        ] {
            for (field, v) in [
                ("current", s.current),
                ("peak", s.peak),
                ("allocated", s.allocated),
                ("freed", s.freed),
            ] {
                m.insert(format!("{name}.{field}"), v);
            }
        }
        for (k, v) in [
            ("num_alloc_retries", self.num_alloc_retries),
            ("num_ooms", self.num_ooms),
            ("num_sync_all_streams", self.num_sync_all_streams),
            ("num_device_alloc", self.num_device_alloc),
            ("num_device_free", self.num_device_free),
            ("num_device_map", self.num_device_map),
            ("num_device_unmap", self.num_device_unmap),
            ("num_pages_mapped", self.num_pages_mapped),
            ("num_cross_stream_reuse", self.num_cross_stream_reuse),
            ("num_front_cache_hits", self.num_front_cache_hits),
        ] {
            m.insert(k.to_string(), v);
        }
        m
    }

    /// A `torch.cuda.memory_summary()`-style table.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let line =
            "|---------------------------|------------|------------|------------|------------|\n";
        s.push_str(line);
        s.push_str(
            "| Metric                    | Cur Usage  | Peak Usage | Tot Alloc  | Tot Freed  |\n",
        );
        s.push_str(line);
        for (name, a) in self.arrays() {
            let bytes = name.ends_with("_bytes");
            for (pool, st) in [
                ("all", &a.all),
                ("small_pool", &a.small_pool),
                ("large_pool", &a.large_pool),
            ] {
                let f = |v: i64| {
                    if bytes {
                        format_size(v.max(0) as usize)
                    } else {
                        v.to_string()
                    }
                };
                let label = if pool == "all" {
                    name.to_string()
                } else {
                    format!("  from {pool}")
                };
                let _ = writeln!(
                    s,
                    "| {label:<25} | {:>10} | {:>10} | {:>10} | {:>10} |",
                    f(st.current),
                    f(st.peak),
                    f(st.allocated),
                    f(st.freed)
                );
            }
            s.push_str(line);
        }
        let _ = writeln!(
            s,
            "| device allocs: {}  frees: {}  maps: {} ({} pages)  unmaps: {}  retries: {}  OOMs: {}  syncs: {}",
            self.num_device_alloc,
            self.num_device_free,
            self.num_device_map,
            self.num_pages_mapped,
            self.num_device_unmap,
            self.num_alloc_retries,
            self.num_ooms,
            self.num_sync_all_streams
        );
        s
    }
}

/// Bytes with a binary unit and two decimals (`512 B`, `5.00 MiB`): the
/// scope registry's `format_bytes`, the one byte formatter of the workspace,
/// for `usize` sizes.
pub fn format_size(bytes: usize) -> String {
    crate::scope::format_bytes(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_has_torch_keys_and_resets() {
        let mut s = Stats::default();
        s.allocated_bytes.add(Pool::Large, 4096);
        s.allocated_bytes.sub(Pool::Large, 1024);
        let m = s.to_map();
        assert_eq!(m["allocated_bytes.all.current"], 3072);
        assert_eq!(m["allocated_bytes.large_pool.peak"], 4096);
        assert_eq!(m["allocated_bytes.small_pool.allocated"], 0);
        assert!(m.contains_key("inactive_split_bytes.all.freed"));
        assert!(m.contains_key("num_sync_all_streams"));
        assert!(m.contains_key("oversize_allocations.peak"));
        assert!(m.contains_key("oversize_segments.current"));
        s.reset_peak();
        assert_eq!(s.allocated_bytes.all.peak, 3072);
        s.reset_accumulated();
        assert_eq!(s.allocated_bytes.all.allocated, 0);
        assert_eq!(s.allocated_bytes.all.current, 3072);
        assert!(s.summary().contains("allocated_bytes"));
        assert_eq!(format_size(5 << 20), "5.00 MiB");
    }
}
