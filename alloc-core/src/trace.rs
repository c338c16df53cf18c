//! The trace ring buffer: the last N engine events, for post-mortems and for
//! PyTorch's memory_viz (`device_traces` of a
//! [`dump_snapshot`](crate::CachingAllocator::dump_snapshot)). Off (capacity 0)
//! it costs one branch per event; on, a clock read, a thread-local read of the
//! current scope and one entry write (and, the first time a scope is seen, a
//! copy of its name, so the name survives the scope).
//!
//! Turned on by `trace_buffer_entries:N` in the config or at run time by
//! [`record_memory_history`](crate::CachingAllocator::record_memory_history),
//! the counterpart of `torch.cuda.memory._record_memory_history`.

use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::scope::{ScopeHandle, ScopeId};
use crate::streams::Slot;

/// What happened (the `action` of a PyTorch trace entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceAction {
    /// A block was handed out (`alloc`).
    Alloc,
    /// A user dropped a block; it may still wait for events
    /// (`free_requested`).
    FreeRequested,
    /// A block became free in the cache (`free_completed`).
    FreeCompleted,
    /// A fixed segment was obtained from the backend (`segment_alloc`).
    SegmentAlloc,
    /// A fixed segment was released to the backend (`segment_free`).
    SegmentFree,
    /// Pages of an expandable segment were mapped (`segment_map`).
    Map,
    /// Pages of an expandable segment were unmapped (`segment_unmap`).
    Unmap,
    /// An allocation failed with out of memory (`oom`); the entry's `addr`
    /// holds the device's free bytes, as PyTorch's does.
    Oom,
    /// A snapshot was taken (`snapshot`), to line a trace up with it.
    Snapshot,
}

impl TraceAction {
    /// PyTorch's name for the action, as `_memory_viz.py` reads it.
    pub fn torch_name(self) -> &'static str {
        match self {
            TraceAction::Alloc => "alloc",
            TraceAction::FreeRequested => "free_requested",
            TraceAction::FreeCompleted => "free_completed",
            TraceAction::SegmentAlloc => "segment_alloc",
            TraceAction::SegmentFree => "segment_free",
            TraceAction::Map => "segment_map",
            TraceAction::Unmap => "segment_unmap",
            TraceAction::Oom => "oom",
            TraceAction::Snapshot => "snapshot",
        }
    }
}

/// One trace entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TraceEntry {
    /// Sequence number since the allocator was created.
    pub seq: u64,
    /// What happened.
    pub action: TraceAction,
    /// The address involved; for [`TraceAction::Oom`] the device's free bytes
    /// when the allocation failed (0 where the backend does not know).
    pub addr: usize,
    /// The bytes involved (for an OOM, the rounded request).
    pub size: usize,
    /// The stream's slot (order of first use, from 0).
    pub stream: u64,
    /// Microseconds since the Unix epoch (steady within one allocator).
    pub time_us: u64,
    /// The scope the calling thread was in (its name, see `TraceRing::scope_name`).
    pub scope: ScopeId,
}

/// Scope names kept beyond twice the entries before the ring forgets the
/// names no entry mentions (one scope per request would otherwise grow the
/// map for as long as history is on).
pub(crate) const NAMES_SLACK: usize = 1024;

/// A fixed-capacity ring of [`TraceEntry`]s, with the names of the scopes they
/// mention.
#[derive(Debug)]
pub(crate) struct TraceRing {
    /// Oldest first; at most `cap` entries.
    buf: VecDeque<TraceEntry>,
    cap: usize,
    /// Recording (history on); entries stay readable while off.
    on: bool,
    seq: u64,
    /// Clock origin: `time_us` = `epoch_us` + microseconds since `start`.
    start: Instant,
    epoch_us: u64,
    /// Name of each scope an entry mentions, by `ScopeId::to_bits`.
    names: HashMap<u64, String>,
    /// Name of each scope a live block was handed out in (while recording),
    /// kept for as long as such a block lives (see `State::pin_scope`).
    pinned: HashMap<u64, String>,
}

impl Default for TraceRing {
    fn default() -> Self {
        TraceRing::new(0)
    }
}

impl TraceRing {
    pub(crate) fn new(cap: usize) -> Self {
        let epoch_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        TraceRing {
            // grows as entries arrive: a long ring costs nothing up front
            buf: VecDeque::new(),
            cap,
            on: cap > 0,
            seq: 0,
            start: Instant::now(),
            epoch_us,
            names: HashMap::new(),
            pinned: HashMap::new(),
        }
    }

    /// Turns recording on with room for `cap` entries (keeping the newest
    /// entries that fit), or off (`enabled` false or `cap` 0; the entries
    /// recorded so far stay readable).
    pub(crate) fn set_recording(&mut self, enabled: bool, cap: usize) {
        self.on = enabled && cap > 0;
        if self.on {
            self.cap = cap;
            while self.buf.len() > cap {
                self.buf.pop_front();
            }
        }
    }

    /// Records an event. `stream` is the stream's slot.
    #[inline]
    pub(crate) fn push(&mut self, action: TraceAction, addr: usize, size: usize, stream: Slot) {
        if !self.on {
            return;
        }
        self.push_on(action, addr, size, u64::from(stream));
    }

    /// Records an out-of-memory failure of a `size`-byte request on `stream`,
    /// with the device's free bytes from `device_free` (asked only when on).
    pub(crate) fn push_oom(
        &mut self,
        device_free: impl FnOnce() -> usize,
        size: usize,
        stream: Slot,
    ) {
        if !self.on {
            return;
        }
        self.push_on(TraceAction::Oom, device_free(), size, u64::from(stream));
    }

    #[cold]
    #[inline(never)]
    fn push_on(&mut self, action: TraceAction, addr: usize, size: usize, stream: u64) {
        let scope = crate::scope::current();
        // The thread is inside this scope (its guard holds a handle), so the
        // handle taken here is never the last one.
        self.names
            .entry(scope.to_bits())
            .or_insert_with(|| ScopeHandle::current().name());
        let e = TraceEntry {
            seq: self.seq,
            action,
            addr,
            size,
            stream,
            time_us: self.epoch_us + self.start.elapsed().as_micros() as u64,
            scope,
        };
        self.seq += 1;
        if self.buf.len() == self.cap {
            self.buf.pop_front();
        }
        self.buf.push_back(e);
        if self.names.len() > NAMES_SLACK + 2 * self.buf.len() {
            self.forget_unmentioned_names();
        }
    }

    /// Drops the names of scopes no entry mentions any more (amortized: runs
    /// when the names outnumber twice the entries by [`NAMES_SLACK`]).
    #[cold]
    fn forget_unmentioned_names(&mut self) {
        let mentioned: std::collections::HashSet<u64> =
            self.buf.iter().map(|e| e.scope.to_bits()).collect();
        self.names.retain(|k, _| mentioned.contains(k));
    }

    /// The entries, oldest first.
    pub(crate) fn entries(&self) -> Vec<TraceEntry> {
        self.buf.iter().copied().collect()
    }

    /// The name of `scope` when an entry or a live block first mentioned it
    /// (`None` if none did).
    pub(crate) fn scope_name(&self, scope: ScopeId) -> Option<&str> {
        let bits = scope.to_bits();
        self.names
            .get(&bits)
            .or_else(|| self.pinned.get(&bits))
            .map(String::as_str)
    }

    /// Whether history is being recorded.
    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    /// The calling thread's scope (bits), its name kept among the pinned
    /// names.
    #[cold]
    #[inline(never)]
    pub(crate) fn pin_current_scope(&mut self) -> u64 {
        let scope = crate::scope::current();
        // the thread is inside this scope, so the handle is not the last one
        self.pinned
            .entry(scope.to_bits())
            .or_insert_with(|| ScopeHandle::current().name());
        scope.to_bits()
    }

    /// Pinned names.
    pub(crate) fn pinned_len(&self) -> usize {
        self.pinned.len()
    }

    /// Keeps the pinned names of the scopes `keep` holds.
    pub(crate) fn retain_pinned(&mut self, keep: &std::collections::HashSet<u64>) {
        self.pinned.retain(|k, _| keep.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_entries() {
        let mut r = TraceRing::new(3);
        for i in 0..5 {
            r.push(TraceAction::Alloc, i, 512, 0);
        }
        let e = r.entries();
        assert_eq!(e.iter().map(|e| e.addr).collect::<Vec<_>>(), vec![2, 3, 4]);
        let mut off = TraceRing::new(0);
        off.push(TraceAction::Oom, 0, 1, 0);
        assert!(off.entries().is_empty());
    }

    #[test]
    fn resizing_keeps_the_newest_entries_in_order() {
        let mut r = TraceRing::new(4);
        for i in 0..6 {
            r.push(TraceAction::Alloc, i, 512, 0);
        }
        r.set_recording(true, 2);
        assert_eq!(
            r.entries().iter().map(|e| e.addr).collect::<Vec<_>>(),
            vec![4, 5]
        );
        r.push(TraceAction::Alloc, 6, 512, 0);
        assert_eq!(
            r.entries().iter().map(|e| e.addr).collect::<Vec<_>>(),
            vec![5, 6]
        );
        r.set_recording(true, 8);
        r.push(TraceAction::Alloc, 7, 512, 0);
        assert_eq!(
            r.entries().iter().map(|e| e.addr).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        r.set_recording(false, 8);
        r.push(TraceAction::Alloc, 8, 512, 0);
        assert_eq!(r.entries().len(), 3, "off: kept, not extended");
    }

    #[test]
    fn names_of_scopes_no_entry_mentions_are_forgotten() {
        let mut r = TraceRing::new(4);
        for i in 0..3000 {
            let _g = crate::scope::scope(&format!("trace-ring-request-{i}"));
            r.push(TraceAction::Alloc, i, 512, 0);
        }
        assert!(
            r.names.len() <= NAMES_SLACK + 2 * 4 + 1,
            "{}",
            r.names.len()
        );
        for e in r.entries() {
            assert!(
                r.scope_name(e.scope).is_some(),
                "a kept entry lost its name"
            );
        }
    }

    #[test]
    fn entries_carry_time_and_the_scope_name() {
        let mut r = TraceRing::new(4);
        let g = crate::scope::scope("trace-ring-test-request");
        r.push(TraceAction::Alloc, 4096, 512, 1);
        let id = g.id();
        drop(g);
        let e = r.entries()[0];
        assert_eq!(e.scope, id);
        assert_eq!(r.scope_name(id), Some("trace-ring-test-request"));
        assert!(e.time_us > 1_600_000_000_000_000, "{}", e.time_us);
        assert_eq!(e.stream, 1);
    }
}
