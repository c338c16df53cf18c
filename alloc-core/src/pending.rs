//! Frees that wait for other streams, and the free clock.
//!
//! A block used on other streams than its own (`record_stream`) is not free
//! when its user drops it: its free is *deferred* until an event recorded on
//! each of those streams completes ([`Pending`]). Every free, immediate or
//! deferred, takes a tick of the *free clock*; a device-wide sync covers the
//! frees ticked before the mark taken just before it ([`SyncMark`]).
//!
//! # Invariants and locking rule
//! Pending frees keep [`CoreInvariant::P1`] (pending blocks wait for their
//! events, queried in order) and [`CoreInvariant::P2`] (a partial sync
//! proves nothing idle); the free clock serves the locking rule
//! [`LockRule::L1`] (the device-wide sync runs unlocked; a [`SyncMark`]
//! decides what it proves idle). The definitions are on the variants.

use std::collections::{HashMap, VecDeque};
use std::sync::MutexGuard;

use crate::backend::DeviceBackend;
use crate::block::{BlockId, BlockState};
use crate::cache::{CachingAllocator, State};
use crate::streams::Slot;
#[cfg(doc)]
use crate::{CoreInvariant, LockRule};

/// One event a deferred free waits for, in its stream's queue.
struct Deferred<E> {
    /// Recorded on the queue's stream when the free was deferred.
    event: E,
    /// The pending block.
    block: BlockId,
    /// The tick of the deferral.
    tick: u64,
}

/// What a pending block still waits for.
struct Wait {
    /// Events not yet seen completed.
    events: u32,
    /// An event could not be recorded: only a device-wide sync frees it.
    needs_sync: bool,
    /// The tick of the deferral.
    tick: u64,
}

/// Frees waiting for events recorded on the streams that used their blocks
/// ([`CoreInvariant::P1`]): one queue per stream, in recording order.
pub(crate) struct Pending<E> {
    queues: Vec<VecDeque<Deferred<E>>>,
    /// Slots whose queue is not empty.
    active: Vec<Slot>,
    /// What each pending block waits for.
    waits: HashMap<BlockId, Wait>,
    /// The free clock: the next tick (ticks increase with time, so a
    /// device-wide sync completes exactly the frees ticked below a mark
    /// taken before it).
    next_tick: u64,
}

impl<E> Default for Pending<E> {
    fn default() -> Self {
        Pending {
            queues: Vec::new(),
            active: Vec::new(),
            waits: HashMap::new(),
            next_tick: 0,
        }
    }
}

impl<E> Pending<E> {
    /// Whether no free is pending.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.waits.is_empty()
    }

    /// Blocks whose free is pending.
    pub(crate) fn len(&self) -> usize {
        self.waits.len()
    }
}

/// What a device-wide synchronisation run outside the lock covers: the free
/// clock, read under the lock just before it. Memory freed (or whose free
/// was deferred) before the mark is idle after the sync; whatever other
/// threads did while the lock was released is judged by querying events, as
/// without a sync ([`LockRule::L1`]).
#[derive(Clone, Copy)]
pub(crate) struct SyncMark {
    /// Frees that took a tick below this happened before the sync.
    pub(crate) tick: u64,
}

impl<B: DeviceBackend> CachingAllocator<B> {
    /// Notes that block `id` (allocated on `own`) is used on `stream`.
    /// (`own` is only a quick test: after `forget_stream`, the same handle
    /// can name a new stream, so the slots decide.)
    pub(crate) fn record_stream(&self, id: BlockId, own: B::Stream, stream: B::Stream) {
        let mut st = self.lock();
        let slot = st.stream_slot(stream);
        if stream == own && st.blocks.at(id).stream == slot {
            return;
        }
        let uses = st.uses.entry(id).or_default();
        if !uses.contains(&slot) {
            uses.push(slot);
        }
    }

    /// Synchronises the device with the lock released (it may block for as
    /// long as the queued work runs), then takes the lock again and frees the
    /// pending blocks the sync covers ([`LockRule::L1`]). The mark is `None`
    /// when the backend could not wait for every stream: such a sync proves
    /// nothing idle, pending frees wait for their events and free blocks are
    /// judged by their streams' events ([`CoreInvariant::P2`]).
    pub(crate) fn synchronize_unlocked<'a>(
        &'a self,
        st: MutexGuard<'a, State<B>>,
    ) -> (MutexGuard<'a, State<B>>, Option<SyncMark>) {
        let mark = st.sync_mark();
        drop(st);
        let coverage = self.backend.synchronize();
        let mut st = self.lock();
        st.stats.num_sync_all_streams += 1;
        if !coverage.is_all() {
            // the streams it did wait for are idle now: their events say so
            st.process_pending(&self.backend);
            return (st, None);
        }
        st.complete_synced(mark);
        (st, Some(mark))
    }
}

impl<B: DeviceBackend> State<B> {
    /// The next tick of the free clock ([`LockRule::L1`]).
    #[inline]
    pub(crate) fn tick(&mut self) -> u64 {
        let t = self.pending.next_tick;
        self.pending.next_tick += 1;
        t
    }

    /// Forgets the uses recorded on the stream of `slot`, which is being
    /// forgotten. Frees waiting for events on it stay in its queue: those
    /// events completed, and the next allocation processes them as any
    /// completed event, also once the slot names a new stream. Uses recorded
    /// on it are over (its work completed): once the slot names another
    /// stream they must not make frees wait for that stream.
    pub(crate) fn forget_uses_on(&mut self, slot: Slot) {
        self.uses.retain(|_, streams| {
            streams.retain(|&s| s != slot);
            !streams.is_empty()
        });
    }

    /// Holds block `id` until events recorded now on `streams` complete
    /// (retired streams completed their work when they were forgotten).
    pub(crate) fn defer_free(&mut self, backend: &B, id: BlockId, streams: Vec<Slot>) {
        let (mut events, mut needs_sync) = (0u32, false);
        let tick = self.tick();
        for slot in streams {
            let Some(s) = self.streams.handle(slot) else {
                continue;
            };
            if self.streams.is_retired(slot) {
                continue;
            }
            match backend.record_event(s) {
                Ok(event) => {
                    let i = slot as usize;
                    let pending = &mut self.pending;
                    if pending.queues.len() <= i {
                        pending.queues.resize_with(i + 1, VecDeque::new);
                    }
                    if pending.queues[i].is_empty() {
                        pending.active.push(slot);
                    }
                    pending.queues[i].push_back(Deferred {
                        event,
                        block: id,
                        tick,
                    });
                    events += 1;
                }
                Err(_) => needs_sync = true,
            }
        }
        if events == 0 && !needs_sync {
            self.complete_free(id, tick);
            return;
        }
        self.blocks.at_mut(id).state = BlockState::Pending;
        self.pending.waits.insert(
            id,
            Wait {
                events,
                needs_sync,
                tick,
            },
        );
    }

    /// The mark a device-wide sync started after now will cover.
    pub(crate) fn sync_mark(&self) -> SyncMark {
        SyncMark {
            tick: self.pending.next_tick,
        }
    }

    /// After a device-wide sync that started after `mark` was taken: frees
    /// every block deferred before the mark (its events have completed),
    /// whatever was deferred since (by other threads while the lock was
    /// released) stays pending ([`LockRule::L1`]).
    pub(crate) fn complete_synced(&mut self, mark: SyncMark) {
        for q in &mut self.pending.queues {
            while q.front().is_some_and(|d| d.tick < mark.tick) {
                q.pop_front();
            }
        }
        let queues = &self.pending.queues;
        self.pending
            .active
            .retain(|&s| queues.get(s as usize).is_some_and(|q| !q.is_empty()));
        let mut done: Vec<(BlockId, u64)> = self
            .pending
            .waits
            .iter()
            .filter(|(_, w)| w.tick < mark.tick)
            .map(|(&b, w)| (b, w.tick))
            .collect();
        done.sort_unstable();
        for (b, tick) in done {
            self.pending.waits.remove(&b);
            self.complete_free(b, tick);
        }
    }

    /// Frees pending blocks whose events completed. Each stream's queue is
    /// queried in order and left at its first event that has not completed
    /// ([`CoreInvariant::P1`]).
    pub(crate) fn process_pending(&mut self, backend: &B) {
        let mut i = 0;
        while i < self.pending.active.len() {
            let slot = self.pending.active[i] as usize;
            while let Some(d) = self.pending.queues[slot].front() {
                if !backend.event_done(&d.event) {
                    break;
                }
                let b = d.block;
                self.pending.queues[slot].pop_front();
                let done = match self.pending.waits.get_mut(&b) {
                    Some(w) => {
                        w.events = w.events.saturating_sub(1);
                        (w.events == 0 && !w.needs_sync).then_some(w.tick)
                    }
                    None => None,
                };
                if let Some(tick) = done {
                    self.pending.waits.remove(&b);
                    self.complete_free(b, tick);
                }
            }
            if self.pending.queues[slot].is_empty() {
                self.pending.active.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}
