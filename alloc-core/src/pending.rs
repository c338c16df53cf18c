//! Frees that wait for other streams, and the free clock.
//!
//! A block used on other streams than its own (`record_stream`) is not free
//! when its user drops it: its free is *deferred* until an event recorded on
//! each of those streams completes ([`Pending`]). Every free, immediate or
//! deferred, takes a tick of the *free clock*; a device-wide sync covers the
//! frees ticked before the mark taken just before it ([`SyncMark`]).
//!
//! No event call of a free runs under the engine lock: the free takes its
//! tick and marks the block pending, *being recorded*, under the lock
//! ([`State::begin_deferral`]), records one event per stream with the lock
//! released (on CUDA `cuEventRecord`, and a batch of `cuEventCreate` when
//! the pool runs dry), then queues them under the lock
//! ([`State::finish_deferral`]) unless a device-wide sync that started
//! after its tick completed the free meanwhile. Events done with (completed,
//! covered by a sync, or recorded for a free already completed) are
//! *spent*: dropped after the lock is released ([`CachingAllocator::unlock`]).
//! `forget_stream` waits for frees still recording on the stream's slot, so
//! no event is recorded on a stream after it is forgotten.
//!
//! An allocation queries pending events with the lock released too (PyTorch's
//! `CachingHostAllocator::process_events` pops under its mutex and queries
//! outside it): queued events are shared (`Arc`), and while frees are
//! pending an allocation takes handles to up to `PROBE_PER_STREAM` events
//! from the head of each stream's queue under the lock, queries them
//! unlocked (`cuEventQuery`), in order per stream up to the first that has
//! not completed, and under the lock it takes for the allocation itself
//! pops those still at the head of their queue ([`State::settle_probes`]):
//! a block whose events all completed is freed. Several threads may query
//! the same event; the first to settle pops it. What
//! still queries under the lock, on slow paths only: an allocation that
//! misses (the reclaim ladder's first step asks about every pending free
//! before growing), `trim` and a partial sync ([`State::process_pending`]),
//! and the ladder's idle check of a stream (`stream_idle`: an event
//! recorded and queried).
//!
//! # Invariants and locking rule
//! Pending frees keep [`CoreInvariant::P1`] (pending blocks wait for their
//! events, queried in order) and [`CoreInvariant::P2`] (a partial sync
//! proves nothing idle); the free clock serves the locking rule
//! [`LockRule::L1`] (the device-wide sync runs unlocked; a [`SyncMark`]
//! decides what it proves idle). The definitions are on the variants.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use crate::backend::{BackendError, DeviceBackend};
use crate::block::{BlockId, BlockState};
use crate::cache::{CachingAllocator, State};
use crate::streams::Slot;
#[cfg(doc)]
use crate::{CoreInvariant, LockRule};

/// One event a deferred free waits for, in its stream's queue.
pub(crate) struct Deferred<E> {
    /// Recorded on the queue's stream when the free was deferred.
    event: Shared<E>,
    /// The pending block.
    block: BlockId,
    /// The tick of the deferral.
    tick: u64,
}

/// What a pending block still waits for.
struct Wait {
    /// Events queued and not yet seen completed.
    events: u32,
    /// An event could not be recorded: only a device-wide sync frees it.
    needs_sync: bool,
    /// Its events are being recorded, with the lock released: none is
    /// queued yet, and only a device-wide sync that started after its tick
    /// can complete it meanwhile.
    recording: bool,
    /// The tick of the deferral (unique: it names this deferral, also once
    /// the block's id names another block).
    tick: u64,
}

/// A deferral whose events are to be recorded with the lock released
/// ([`State::begin_deferral`], then [`State::finish_deferral`]).
pub(crate) struct Recording<S> {
    /// The block.
    pub(crate) block: BlockId,
    /// The tick of the deferral.
    pub(crate) tick: u64,
    /// The streams to record on, with their slots.
    pub(crate) streams: Few<(Slot, S)>,
}

/// One item inline, or several on the heap: a freed block was most often
/// used on one other stream, and its deferral then allocates nothing.
pub(crate) enum Few<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Few<T> {
    /// `self` with `x` added (`None`: empty).
    fn push(this: Option<Few<T>>, x: T) -> Few<T> {
        match this {
            None => Few::One(x),
            Some(Few::One(a)) => Few::Many(vec![a, x]),
            Some(Few::Many(mut v)) => {
                v.push(x);
                Few::Many(v)
            }
        }
    }

    /// The items, by reference.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, T> {
        match self {
            Few::One(x) => std::slice::from_ref(x).iter(),
            Few::Many(v) => v.iter(),
        }
    }

    /// `f` of each item, in order.
    pub(crate) fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Few<U> {
        match self {
            Few::One(x) => Few::One(f(x)),
            Few::Many(v) => Few::Many(v.iter().map(f).collect()),
        }
    }

    /// Runs `f` on each item, in order.
    fn for_each_mut(&mut self, mut f: impl FnMut(&mut T)) {
        match self {
            Few::One(x) => f(x),
            Few::Many(v) => v.iter_mut().for_each(f),
        }
    }

    /// The items, by value.
    fn into_items(self) -> impl Iterator<Item = T> {
        let (one, many) = match self {
            Few::One(x) => (Some(x), Vec::new()),
            Few::Many(v) => (None, v),
        };
        one.into_iter().chain(many)
    }
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
    /// Per slot: deferrals recording an event on its stream now, with the
    /// lock released (`forget_stream` waits for them before it retires the
    /// slot).
    recording_on: Vec<u32>,
    /// Events done with (completed, or covered by a sync), to be dropped
    /// once the lock is released (`CachingAllocator::unlock`): dropping a
    /// pooled event takes its pool's lock. (Queued events are shared, so
    /// that an allocation can query them with the lock released.)
    pub(crate) spent: Vec<Shared<E>>,
}

impl<E> Default for Pending<E> {
    fn default() -> Self {
        Pending {
            queues: Vec::new(),
            active: Vec::new(),
            waits: HashMap::new(),
            next_tick: 0,
            recording_on: Vec::new(),
            spent: Vec::new(),
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

    /// Deferrals recording an event on the stream of `slot` now.
    fn recording_on(&self, slot: Slot) -> u32 {
        self.recording_on.get(slot as usize).copied().unwrap_or(0)
    }

    /// [`CoreInvariant::P1`]'s equations, for `validate`: every queued event
    /// names a pending block's deferral (its block and tick), each pending
    /// block's `events` is the number of its queued events, and a block
    /// being recorded has none queued. `Err` says which failed, with the
    /// values.
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut queued: HashMap<BlockId, u32> = HashMap::new();
        for (slot, q) in self.queues.iter().enumerate() {
            for d in q {
                match self.waits.get(&d.block) {
                    Some(w) if w.tick == d.tick => *queued.entry(d.block).or_default() += 1,
                    Some(w) => {
                        return Err(format!(
                            "slot {slot} queues an event of block {} deferred at tick {}, which waits for its deferral at tick {}",
                            d.block, d.tick, w.tick
                        ));
                    }
                    None => {
                        return Err(format!(
                            "slot {slot} queues an event of block {} (tick {}), which is not pending",
                            d.block, d.tick
                        ));
                    }
                }
            }
        }
        for (b, w) in &self.waits {
            let q = queued.get(b).copied().unwrap_or(0);
            if q != w.events || (w.recording && q != 0) {
                return Err(format!(
                    "block {b} (tick {}, recording: {}) counts {} events, {q} queued",
                    w.tick, w.recording, w.events
                ));
            }
            if !w.recording && w.events == 0 && !w.needs_sync {
                return Err(format!(
                    "block {b} (tick {}) waits for nothing but is pending",
                    w.tick
                ));
            }
        }
        let recording = self.waits.values().filter(|w| w.recording).count() as u64;
        let on: u64 = self.recording_on.iter().map(|&n| u64::from(n)).sum();
        if on < recording {
            return Err(format!(
                "{recording} deferrals are being recorded, the slots count {on} recordings"
            ));
        }
        Ok(())
    }
}

/// Events at the head of the queues, shared to be queried with the lock
/// released ([`CachingAllocator::query_unlocked`]), each with its slot and
/// whether it completed.
pub(crate) type Probes<E> = Few<(Slot, Shared<E>, bool)>;

/// A queued event, shared so that an allocation can query it with the lock
/// released; its own lock lets one thread at a time ask the backend (an
/// event type need not be `Sync`).
pub(crate) type Shared<E> = Arc<Mutex<E>>;

/// A shared event, for the spent list.
pub(crate) fn shared<E>(e: E) -> Shared<E> {
    Arc::new(Mutex::new(e))
}

/// Whether shared event `ev` completed; `false` while another thread asks
/// (never waits for another thread's driver call).
fn query<B: DeviceBackend>(backend: &B, ev: &Shared<B::Event>) -> bool {
    match ev.try_lock() {
        Ok(e) => backend.event_done(&e),
        Err(TryLockError::Poisoned(p)) => backend.event_done(&p.into_inner()),
        Err(TryLockError::WouldBlock) => false,
    }
}

/// Events taken from the head of each stream's queue per allocation, to be
/// queried with the lock released (each stream's are queried in order, up
/// to the first that has not completed).
const PROBE_PER_STREAM: usize = 8;

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

impl<B: DeviceBackend> CachingAllocator<B> {
    /// Releases the lock, then drops the events spent under it (dropping a
    /// pooled event takes its pool's lock: not under the engine lock).
    #[inline]
    pub(crate) fn unlock(&self, mut st: MutexGuard<'_, State<B>>) {
        let pending = !st.pending.is_empty();
        if self.pending_hint.load(Ordering::Relaxed) != pending {
            self.pending_hint.store(pending, Ordering::Relaxed);
        }
        if st.pending.spent.is_empty() {
            return;
        }
        if !std::mem::needs_drop::<B::Event>() {
            // dropping takes no lock (at most the memory of an `Arc`): keep
            // the list's memory
            st.pending.spent.clear();
            return;
        }
        let spent = std::mem::take(&mut st.pending.spent);
        drop(st);
        drop(spent);
    }

    /// Records the events of deferral `rec` with the lock released (a
    /// driver call each, and event creation when a pool runs dry), then
    /// queues them under the lock ([`CoreInvariant::P1`]).
    #[cold]
    #[inline(never)]
    pub(crate) fn record_unlocked(&self, st: MutexGuard<'_, State<B>>, rec: Recording<B::Stream>) {
        self.unlock(st);
        let recorded = rec
            .streams
            .map(|&(slot, s)| (slot, self.backend.record_event(s)));
        let mut st = self.lock();
        st.finish_deferral(rec.block, rec.tick, recorded);
        self.front.note_pending(!st.pending.is_empty());
        self.unlock(st);
    }

    /// Queries the events at the head of each stream's queue with the lock
    /// released (on CUDA `cuEventQuery`, a driver call each): takes them
    /// out under the lock, queries them unlocked, in order per stream up to
    /// the first that has not completed. `None` when nothing is pending (by
    /// the hint the last unlock left, a relaxed load). The caller gives them
    /// back under the lock with [`State::settle_probes`] before it unlocks.
    #[inline]
    pub(crate) fn query_unlocked(&self) -> Option<Probes<B::Event>> {
        if !self.pending_hint.load(Ordering::Relaxed) {
            return None;
        }
        self.query_unlocked_slow()
    }

    #[cold]
    #[inline(never)]
    fn query_unlocked_slow(&self) -> Option<Probes<B::Event>> {
        let st = self.lock();
        let taken = st.heads();
        self.unlock(st);
        let mut taken = taken?;
        let mut stalled: Option<Slot> = None;
        taken.for_each_mut(|(slot, ev, done)| {
            if stalled != Some(*slot) {
                *done = query(&self.backend, ev);
                if !*done {
                    stalled = Some(*slot);
                }
            }
        });
        Some(taken)
    }

    /// The lock, once no deferral records an event on `stream`'s slot: so
    /// that no event is recorded on a stream after `forget_stream` returns
    /// (the program may destroy it then). Deferrals record for a bounded
    /// time (a driver call per stream), so this waits that long at most per
    /// free that began before.
    pub(crate) fn lock_no_recording_on(&self, stream: B::Stream) -> MutexGuard<'_, State<B>> {
        loop {
            let st = self.lock();
            let busy = st
                .streams
                .slot(stream)
                .is_some_and(|slot| st.pending.recording_on(slot) != 0);
            if !busy {
                return st;
            }
            drop(st);
            std::thread::yield_now();
        }
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

    /// Defers the free of block `id`, used on `streams`, and returns the
    /// events to record with the lock released: the block is pending,
    /// "being recorded", from now on ([`CoreInvariant::P1`]). `None` when
    /// no stream is left to wait for (retired streams completed their work
    /// when they were forgotten): the free completed now.
    pub(crate) fn begin_deferral(
        &mut self,
        id: BlockId,
        streams: Vec<Slot>,
    ) -> Option<Recording<B::Stream>> {
        let tick = self.tick();
        let mut few = None;
        for slot in streams {
            if self.streams.is_retired(slot) {
                continue;
            }
            if let Some(s) = self.streams.handle(slot) {
                few = Some(Few::push(few, (slot, s)));
            }
        }
        let Some(streams) = few else {
            self.complete_free(id, tick);
            return None;
        };
        for &(slot, _) in streams.iter() {
            let i = slot as usize;
            if self.pending.recording_on.len() <= i {
                self.pending.recording_on.resize(i + 1, 0);
            }
            self.pending.recording_on[i] += 1;
        }
        self.blocks.at_mut(id).state = BlockState::Pending;
        self.pending.waits.insert(
            id,
            Wait {
                events: 0,
                needs_sync: false,
                recording: true,
                tick,
            },
        );
        Some(Recording {
            block: id,
            tick,
            streams,
        })
    }

    /// Queues the events recorded for the deferral of block `id` at `tick`
    /// ([`State::begin_deferral`]). A device-wide sync that started after
    /// the tick may have completed the free meanwhile (the block may even
    /// be another user's now): its events are then spent.
    pub(crate) fn finish_deferral(
        &mut self,
        id: BlockId,
        tick: u64,
        recorded: Few<(Slot, Result<B::Event, BackendError>)>,
    ) {
        for (slot, _) in recorded.iter() {
            if let Some(n) = self.pending.recording_on.get_mut(*slot as usize) {
                *n = n.saturating_sub(1);
            }
        }
        let Pending {
            queues,
            active,
            waits,
            spent,
            ..
        } = &mut self.pending;
        let Some(w) = waits.get_mut(&id).filter(|w| w.tick == tick && w.recording) else {
            // completed meanwhile by a sync: nothing waits for them
            spent.extend(
                recorded
                    .into_items()
                    .filter_map(|(_, r)| r.ok().map(shared)),
            );
            return;
        };
        w.recording = false;
        for (slot, r) in recorded.into_items() {
            match r {
                Ok(event) => {
                    let i = slot as usize;
                    if queues.len() <= i {
                        queues.resize_with(i + 1, VecDeque::new);
                    }
                    if queues[i].is_empty() {
                        active.push(slot);
                    }
                    queues[i].push_back(Deferred {
                        event: shared(event),
                        block: id,
                        tick,
                    });
                    w.events += 1;
                }
                Err(_) => w.needs_sync = true,
            }
        }
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
        // deferrals are queued in the order their events were recorded,
        // which need not be their ticks' order (each records with the lock
        // released): every queue is filtered, not only its front
        let Pending { queues, spent, .. } = &mut self.pending;
        for q in queues.iter_mut() {
            if q.iter().any(|d| d.tick < mark.tick) {
                let (done, keep): (VecDeque<_>, VecDeque<_>) =
                    q.drain(..).partition(|d| d.tick < mark.tick);
                *q = keep;
                spent.extend(done.into_iter().map(|d| d.event));
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

    /// Up to [`PROBE_PER_STREAM`] events from the head of each stream's
    /// queue, in order, shared (they stay queued) to be queried with the
    /// lock released.
    fn heads(&self) -> Option<Probes<B::Event>> {
        let mut out: Option<Probes<B::Event>> = None;
        for &slot in &self.pending.active {
            for d in self.pending.queues[slot as usize]
                .iter()
                .take(PROBE_PER_STREAM)
            {
                out = Some(Few::push(out, (slot, Arc::clone(&d.event), false)));
            }
        }
        out
    }

    /// Applies what [`CachingAllocator::query_unlocked`] saw: each event
    /// seen completed that is still at the head of its queue is popped and
    /// its free completes once it waits for nothing else. (Events are only
    /// appended to a queue and removed from its head, or by a sync: an
    /// event no longer at the head was taken meanwhile by another thread or
    /// a sync.) The shared handles are spent.
    pub(crate) fn settle_probes(&mut self, probes: Probes<B::Event>) {
        for (slot, ev, done) in probes.into_items() {
            if done
                && let Some(q) = self.pending.queues.get_mut(slot as usize)
                && q.front().is_some_and(|d| Arc::ptr_eq(&d.event, &ev))
                && let Some(d) = q.pop_front()
            {
                self.event_completed(d);
            }
            self.pending.spent.push(ev);
        }
        let queues = &self.pending.queues;
        self.pending
            .active
            .retain(|&s| queues.get(s as usize).is_some_and(|q| !q.is_empty()));
    }

    /// Event `d`, popped from its queue, completed: spent, and its free
    /// completes once it waits for nothing else.
    fn event_completed(&mut self, d: Deferred<B::Event>) {
        let (b, tick) = (d.block, d.tick);
        self.pending.spent.push(d.event);
        let done = match self.pending.waits.get_mut(&b) {
            Some(w) if w.tick == tick => {
                w.events = w.events.saturating_sub(1);
                w.events == 0 && !w.needs_sync
            }
            _ => false,
        };
        if done {
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
                if !query(backend, &d.event) {
                    break;
                }
                let Some(d) = self.pending.queues[slot].pop_front() else {
                    break;
                };
                self.event_completed(d);
            }
            if self.pending.queues[slot].is_empty() {
                self.pending.active.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}
