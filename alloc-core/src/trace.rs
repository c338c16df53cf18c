//! The trace ring buffer: the last N engine events, for post-mortems. Off
//! (capacity 0) it costs one branch per event; on, one slot write.

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceAction {
    /// A block was handed out.
    Alloc,
    /// A user dropped a block (it may still wait for events).
    FreeRequested,
    /// A block became free in the cache.
    FreeCompleted,
    /// A fixed segment was obtained from the backend.
    SegmentAlloc,
    /// A fixed segment was released to the backend.
    SegmentFree,
    /// Pages of an expandable segment were mapped.
    Map,
    /// Pages of an expandable segment were unmapped.
    Unmap,
    /// An allocation failed with out of memory.
    Oom,
}

/// One trace entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TraceEntry {
    /// Sequence number since the allocator was created.
    pub seq: u64,
    /// What happened.
    pub action: TraceAction,
    /// The address involved (0 for an OOM).
    pub addr: usize,
    /// The bytes involved.
    pub size: usize,
    /// The stream's slot (order of first use, from 0).
    pub stream: u16,
}

/// A fixed-capacity ring of [`TraceEntry`]s.
#[derive(Debug, Default)]
pub(crate) struct TraceRing {
    buf: Vec<TraceEntry>,
    cap: usize,
    seq: u64,
}

impl TraceRing {
    pub(crate) fn new(cap: usize) -> Self {
        TraceRing {
            // grows as entries arrive: a long ring costs nothing up front
            buf: Vec::new(),
            cap,
            seq: 0,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, action: TraceAction, addr: usize, size: usize, stream: u16) {
        if self.cap == 0 {
            return;
        }
        let e = TraceEntry {
            seq: self.seq,
            action,
            addr,
            size,
            stream,
        };
        let at = (self.seq % self.cap as u64) as usize;
        self.seq += 1;
        match self.buf.get_mut(at) {
            Some(slot) => *slot = e,
            None => self.buf.push(e),
        }
    }

    /// The entries, oldest first.
    pub(crate) fn entries(&self) -> Vec<TraceEntry> {
        let mut v = self.buf.clone();
        v.sort_by_key(|e| e.seq);
        v
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
}
