//! The front cache: per-thread shards in front of the engine's lock, in the
//! manner of tcmalloc's per-CPU caches over its central free lists.
//!
//! A shard holds whole blocks that a user freed and that are idle on their
//! own stream (no `record_stream` use, so no event to wait for), each kept
//! with the stream it was freed on and the size it was asked for. A request
//! of exactly that size on that stream takes the block from the shard of its
//! thread under only the shard's lock; a free of a plain block pushes it
//! there under only that lock, while the shard keeps at most
//! [`SHARD_ENTRIES`] blocks and `front_cache_mb` bytes. Everything else (a
//! miss, a full shard, a block with other streams' uses, growth, release,
//! cross-stream reuse, the reclaim ladder) goes through the engine's lock.
//!
//! For the segments a block in a shard is in use: it never merges, never
//! moves to another stream, never is released. So no segment holds free
//! blocks of two shards, and the earlier obstacle to sharding (a segment
//! holding blocks of two streams) does not arise.
//!
//! # Draining
//! Whatever looks at the engine or releases memory first *drains* every
//! shard (under the engine lock, then each shard's lock, [`LockRule::L2`]):
//! the shard's unfolded statistics are folded into the engine's, and its
//! blocks become free blocks of their streams (merged and indexed as any
//! free). [`CachingAllocator::stats`], snapshots, `validate`, `empty_cache`,
//! `trim`, `forget_stream`, the cap, `reset_peak`, `reset_accumulated`,
//! `record_memory_history` and the reclaim ladder (before it grows, so a
//! shard never makes the engine grow nor fail with out of memory) drain.
//!
//! # Statistics
//! A shard counts what its hits and pushes do in a *tally* (per pool and
//! for both: the change of each counter since the last fold and the highest
//! that change reached); every locked operation of a thread first folds its
//! own shard, so with one thread the figures are exact after every
//! operation. While several threads run, the device-wide peak of
//! `allocated_bytes` may miss the true peak by at most `front_cache_mb`
//! per other shard, either way: below it by what the other shards handed
//! out and had not yet folded (their hits), above it by what they took back
//! and had not yet folded (their pushes, still counted in use when a fold
//! or a locked allocation raises the peak). Either is within the shard's
//! byte cap: since its last fold a shard's change rises at most by the
//! bytes it held then and falls at most by the bytes it holds now. Totals
//! and currents are exact at quiescence and after `stats()`. The loom
//! models (`loom_tests.rs`, `--cfg loom`) check these figures and the
//! hand-offs below over the interleavings of small programs.
//!
//! # Stream order
//! A block in a shard is handed out only on the stream it was freed on (the
//! stream handle is part of the key), so stream order alone keeps it safe.
//! A stream that is forgotten bumps the cache's *epoch* and drains every
//! shard under the engine lock: a buffer handed out before that (its epoch
//! older) is freed through the lock, never into a shard under a handle that
//! may name a new stream, and a hit takes only a block pushed in the
//! current epoch (so a hit racing with the drain cannot hand out the
//! forgotten stream's block under the new epoch).

use core::cell::Cell;

#[cfg(doc)]
use crate::LockRule;
use crate::block::BlockId;
use crate::size_class::Pool;
use crate::stats::{StatArray, Stats};
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};
#[cfg(not(loom))]
use crate::{CachingAllocator, backend::DeviceBackend, cache::State};

/// Shards per engine: a thread uses the shard of its number modulo this.
pub const SHARDS: usize = 16;

/// Blocks one shard holds at most (a hit scans them, newest first).
pub const SHARD_ENTRIES: usize = 32;

/// One block in a shard.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<S> {
    /// The stream it was freed on (the only stream it is handed to).
    pub(crate) stream: S,
    /// The bytes it was asked for (the key of a hit, with the stream).
    pub(crate) requested: usize,
    /// The block's size.
    pub(crate) size: usize,
    /// Its start.
    pub(crate) ptr: usize,
    /// The block.
    pub(crate) id: BlockId,
    /// Its pool.
    pub(crate) pool: Pool,
    /// The epoch it was pushed in (set by [`FrontCache::put`]).
    pub(crate) epoch: u64,
}

/// One family of counters' change since the last fold: index 0 both pools,
/// 1 the small pool, 2 the large pool.
#[derive(Clone, Copy, Default, Debug)]
struct Flow {
    /// The change of `current`.
    change: [i64; 3],
    /// The highest `change` reached (≥ 0: it starts at 0).
    high: [i64; 3],
    /// Added, per pool (small, large).
    added: [i64; 2],
    /// Removed, per pool (small, large).
    removed: [i64; 2],
}

impl Flow {
    #[inline]
    fn add(&mut self, pool: usize, v: i64) {
        self.added[pool] += v;
        for i in [0, 1 + pool] {
            self.change[i] += v;
            if self.change[i] > self.high[i] {
                self.high[i] = self.change[i];
            }
        }
    }

    #[inline]
    fn sub(&mut self, pool: usize, v: i64) {
        self.removed[pool] += v;
        self.change[0] -= v;
        self.change[1 + pool] -= v;
    }

    /// Applies the change to `a`: each peak becomes at least the current
    /// value before the fold plus the highest change reached since the last
    /// fold (exact when no other shard changed meanwhile).
    fn fold_into(&self, a: &mut StatArray) {
        let stats = [&mut a.all, &mut a.small_pool, &mut a.large_pool];
        for (i, s) in stats.into_iter().enumerate() {
            s.peak = s.peak.max(s.current + self.high[i]);
            s.current += self.change[i];
        }
        a.all.allocated += self.added[0] + self.added[1];
        a.all.freed += self.removed[0] + self.removed[1];
        a.small_pool.allocated += self.added[0];
        a.small_pool.freed += self.removed[0];
        a.large_pool.allocated += self.added[1];
        a.large_pool.freed += self.removed[1];
    }
}

/// A shard's statistics not yet folded into the engine's: blocks (for
/// `allocation` and `active`: a shard never holds a pending block), bytes
/// (`allocated_bytes`, `active_bytes`) and requested bytes.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Tally {
    blocks: Flow,
    bytes: Flow,
    requested: Flow,
    /// Hits (`num_front_cache_hits`).
    hits: i64,
}

impl Tally {
    #[inline]
    fn handed_out(&mut self, e: &Entry<impl Copy>) {
        let p = pool_index(e.pool);
        self.blocks.add(p, 1);
        self.bytes.add(p, e.size as i64);
        self.requested.add(p, e.requested as i64);
        self.hits += 1;
    }

    #[inline]
    fn freed(&mut self, e: &Entry<impl Copy>) {
        let p = pool_index(e.pool);
        self.blocks.sub(p, 1);
        self.bytes.sub(p, e.size as i64);
        self.requested.sub(p, e.requested as i64);
    }

    fn fold_into(&self, s: &mut Stats) {
        self.blocks.fold_into(&mut s.allocation);
        self.blocks.fold_into(&mut s.active);
        self.bytes.fold_into(&mut s.allocated_bytes);
        self.bytes.fold_into(&mut s.active_bytes);
        self.requested.fold_into(&mut s.requested_bytes);
        s.num_front_cache_hits += self.hits;
    }
}

#[inline]
fn pool_index(p: Pool) -> usize {
    match p {
        Pool::Small => 0,
        Pool::Large => 1,
    }
}

/// One shard: its blocks, their bytes, its unfolded statistics.
pub(crate) struct Shard<S> {
    pub(crate) entries: Vec<Entry<S>>,
    bytes: usize,
    tally: Tally,
    /// Whether `tally` changed since the last fold.
    dirty: bool,
}

impl<S> Shard<S> {
    /// Folds the unfolded statistics into `stats`.
    #[inline]
    pub(crate) fn fold(&mut self, stats: &mut Stats) {
        if self.dirty {
            self.tally.fold_into(stats);
            self.tally = Tally::default();
            self.dirty = false;
        }
    }

    /// Whether the shard has no room for another block.
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() >= SHARD_ENTRIES
    }

    /// Takes every block out (the caller frees them); the bytes go to 0.
    pub(crate) fn take_all(&mut self) -> std::vec::Drain<'_, Entry<S>> {
        self.bytes = 0;
        self.entries.drain(..)
    }
}

/// A value alone on its cache lines (two, for the adjacent-line
/// prefetcher), so that shards used by different threads share none.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// What a free into a shard found.
pub(crate) enum Put {
    /// The block is in the shard.
    Cached,
    /// Not cached (the cache is off, or the buffer is older than the last
    /// forgotten stream, or the block does not fit under the byte cap).
    Refused,
    /// Not cached: the shard holds [`SHARD_ENTRIES`] blocks (the locked free
    /// drains it).
    Full,
}

/// The read-mostly words every hit and push reads.
struct Gate {
    /// Whether the cache is on: a byte cap above 0 and no history being
    /// recorded (a hit or push records no trace event).
    on: AtomicBool,
    /// Whether the engine has pending frees: hits then go through the lock,
    /// which completes those whose events are done (as without the cache).
    pending: AtomicBool,
    /// Bumped by `forget_stream` (under the engine lock) before it drains.
    epoch: AtomicU64,
}

/// The front cache of one engine.
pub(crate) struct FrontCache<S> {
    gate: Padded<Gate>,
    /// The byte cap of each shard (0: off).
    cap: usize,
    shards: Box<[Padded<Mutex<Shard<S>>>]>,
}

/// The number the next thread to use a cache gets.
#[cfg(not(loom))]
static NEXT_THREAD: AtomicU32 = AtomicU32::new(0);
#[cfg(loom)]
loom::lazy_static! {
    // a loom atomic is made at run time, once per explored execution
    static ref NEXT_THREAD: AtomicU32 = AtomicU32::new(0);
}

#[cfg(not(loom))]
std::thread_local! {
    /// This thread's number (`u32::MAX` until its first use of a cache).
    static THREAD: Cell<u32> = const { Cell::new(u32::MAX) };
    /// Shard locks this thread holds ([`LockRule::L2`]'s check, debug
    /// builds and the loom models).
    static HELD: Cell<u32> = const { Cell::new(0) };
}
// the same, per loom thread (loom's macro takes no `const` initializer)
#[cfg(loom)]
loom::thread_local! {
    static THREAD: Cell<u32> = Cell::new(u32::MAX);
    static HELD: Cell<u32> = Cell::new(0);
}

/// [`LockRule::L2`]'s check, before the engine lock is taken: the thread
/// holds no shard lock (debug builds and the loom models; nothing in release
/// builds).
#[inline]
pub(crate) fn check_no_shard_held() {
    #[cfg(any(debug_assertions, loom))]
    HELD.with(|h| {
        assert!(
            h.get() == 0,
            "{}: the engine lock taken while holding {} shard lock(s)",
            crate::LockRule::L2,
            h.get()
        );
    });
}

/// A locked shard; counts as held for [`LockRule::L2`]'s check.
pub(crate) struct ShardGuard<'a, S> {
    guard: MutexGuard<'a, Shard<S>>,
}

impl<'a, S> ShardGuard<'a, S> {
    #[inline]
    fn new(guard: MutexGuard<'a, Shard<S>>) -> Self {
        #[cfg(any(debug_assertions, loom))]
        HELD.with(|h| h.set(h.get() + 1));
        ShardGuard { guard }
    }
}

impl<S> Drop for ShardGuard<'_, S> {
    #[inline]
    fn drop(&mut self) {
        #[cfg(any(debug_assertions, loom))]
        HELD.with(|h| h.set(h.get() - 1));
    }
}

impl<S> core::ops::Deref for ShardGuard<'_, S> {
    type Target = Shard<S>;
    #[inline]
    fn deref(&self) -> &Shard<S> {
        &self.guard
    }
}

impl<S> core::ops::DerefMut for ShardGuard<'_, S> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Shard<S> {
        &mut self.guard
    }
}

/// The shard of the calling thread.
#[inline]
pub(crate) fn thread_shard() -> usize {
    THREAD.with(|t| {
        let mut n = t.get();
        if n == u32::MAX {
            n = NEXT_THREAD.fetch_add(1, Ordering::Relaxed) % (u32::MAX - 1);
            t.set(n);
        }
        n as usize % SHARDS
    })
}

impl<S: Copy + Eq> FrontCache<S> {
    /// A cache whose shards hold at most `cap` bytes each (0: off), off
    /// while `recording` (history is recorded).
    pub(crate) fn new(cap: usize, recording: bool) -> Self {
        let shards = if cap == 0 { 0 } else { SHARDS };
        FrontCache {
            gate: Padded(Gate {
                on: AtomicBool::new(cap > 0 && !recording),
                pending: AtomicBool::new(false),
                epoch: AtomicU64::new(0),
            }),
            cap,
            shards: (0..shards)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        entries: Vec::with_capacity(SHARD_ENTRIES),
                        bytes: 0,
                        tally: Tally::default(),
                        dirty: false,
                    }))
                })
                .collect(),
        }
    }

    /// The byte cap of one shard (0: the cache is off).
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Locks shard `i` ([`LockRule::L2`]: with the engine lock held, or with
    /// no lock held; the engine lock is never taken while a shard's is).
    #[inline]
    pub(crate) fn lock(&self, i: usize) -> Option<ShardGuard<'_, S>> {
        let m = &self.shards.get(i)?.0;
        Some(ShardGuard::new(m.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// The number of shards (0 when off).
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    /// The epoch now (a buffer remembers it; see the module docs).
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.gate.0.epoch.load(Ordering::Relaxed)
    }

    /// Starts a new epoch (`forget_stream`, under the engine lock).
    pub(crate) fn bump_epoch(&self) {
        self.gate.0.epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Turns the cache on or off (history recording; under the engine lock,
    /// drained by the caller when turned off).
    pub(crate) fn set_on(&self, on: bool) {
        self.gate.0.on.store(on && self.cap > 0, Ordering::Relaxed);
    }

    /// Notes whether the engine has pending frees (under the engine lock).
    #[inline]
    pub(crate) fn note_pending(&self, pending: bool) {
        if self.gate.0.pending.load(Ordering::Relaxed) != pending {
            self.gate.0.pending.store(pending, Ordering::Relaxed);
        }
    }

    /// A hit: the newest block of the calling thread's shard freed on
    /// `stream` after a request of `requested` bytes, with the epoch now.
    #[inline]
    pub(crate) fn take(&self, stream: S, requested: usize) -> Option<(Entry<S>, u64)> {
        let g = &self.gate.0;
        if !g.on.load(Ordering::Relaxed) || g.pending.load(Ordering::Relaxed) {
            return None;
        }
        let mut sh = self.lock(thread_shard())?;
        // an entry of an older epoch belongs to a stream forgotten since
        // (`forget_stream` bumps the epoch, then drains this shard): never
        // handed out under a handle that may name a new stream
        let epoch = self.epoch();
        let i = sh
            .entries
            .iter()
            .rposition(|e| e.requested == requested && e.stream == stream && e.epoch == epoch)?;
        let e = sh.entries.swap_remove(i);
        sh.bytes -= e.size;
        sh.tally.handed_out(&e);
        sh.dirty = true;
        Some((e, epoch))
    }

    /// A free into the calling thread's shard, of a buffer handed out in
    /// `epoch`.
    #[inline]
    pub(crate) fn put(&self, mut e: Entry<S>, epoch: u64) -> Put {
        if !self.gate.0.on.load(Ordering::Relaxed) {
            return Put::Refused;
        }
        let Some(mut sh) = self.lock(thread_shard()) else {
            return Put::Refused;
        };
        // read under the shard's lock: `forget_stream` bumps it before it
        // drains this shard, so a push after that drain sees the new epoch
        if epoch != self.epoch() || e.size > self.cap - sh.bytes {
            return Put::Refused;
        }
        if sh.is_full() {
            return Put::Full;
        }
        e.epoch = epoch;
        sh.bytes += e.size;
        sh.tally.freed(&e);
        sh.dirty = true;
        sh.entries.push(e);
        Put::Cached
    }
}

/// The engine's side of a fold or a drain (the engine lock held): its
/// statistics, and where a block leaving a shard goes. The engine's state
/// is one; the loom models (`loom_tests.rs`) play the engine with another.
pub(crate) trait EngineSide<S> {
    /// The statistics a shard's tally is folded into.
    fn stats(&mut self) -> &mut Stats;
    /// Makes the block of `e`, taken out of a shard, a free block of its
    /// stream (its free was counted by the shard's tally).
    fn free_entry(&mut self, e: &Entry<S>);
}

impl<S: Copy + Eq> FrontCache<S> {
    /// Folds the calling thread's shard into `eng`'s statistics (the engine
    /// lock held): every locked operation does so first, so one thread's
    /// figures stay exact.
    #[inline]
    pub(crate) fn fold_own(&self, eng: &mut impl EngineSide<S>) {
        if self.len() == 0 {
            return; // off: no shard, no thread number needed
        }
        if let Some(mut sh) = self.lock(thread_shard()) {
            sh.fold(eng.stats());
        }
    }

    /// Drains shard `i` into `eng` (the engine lock held, [`LockRule::L2`]):
    /// folds its statistics and frees its blocks. Whether it held any block.
    pub(crate) fn drain(&self, eng: &mut impl EngineSide<S>, i: usize) -> bool {
        let Some(mut sh) = self.lock(i) else {
            return false;
        };
        sh.fold(eng.stats());
        let any = !sh.entries.is_empty();
        for e in sh.take_all() {
            eng.free_entry(&e);
        }
        any
    }

    /// Before a locked allocation of `rounded` bytes of `pool` on `stream`:
    /// folds the calling thread's shard and frees its blocks of that stream
    /// and pool that could serve the request, so that the best fit chooses
    /// among them as it would without the cache (a block in a shard is
    /// never passed over for a larger or later one).
    #[inline]
    pub(crate) fn drain_fitting(
        &self,
        eng: &mut impl EngineSide<S>,
        stream: S,
        pool: Pool,
        rounded: usize,
    ) {
        if self.len() == 0 {
            return;
        }
        let Some(mut sh) = self.lock(thread_shard()) else {
            return;
        };
        sh.fold(eng.stats());
        let mut i = 0;
        while i < sh.entries.len() {
            let e = sh.entries[i];
            if e.stream == stream && e.pool == pool && e.size >= rounded {
                sh.entries.swap_remove(i);
                sh.bytes -= e.size;
                eng.free_entry(&e);
            } else {
                i += 1;
            }
        }
    }

    /// Drains every shard (the engine lock held). Whether any held a block.
    pub(crate) fn drain_all(&self, eng: &mut impl EngineSide<S>) -> bool {
        let mut any = false;
        for i in 0..self.len() {
            any |= self.drain(eng, i);
        }
        any
    }

    /// Starts a new epoch and drains every shard (`forget_stream`, the
    /// engine lock held). The epoch first: a push that takes a shard's lock
    /// after the drain released it reads the new epoch and is refused, and a
    /// hit before the drain reaches its shard takes no block of the old
    /// epoch, so no block of the forgotten stream is left in a shard or
    /// handed out under the new epoch.
    pub(crate) fn start_epoch(&self, eng: &mut impl EngineSide<S>) {
        self.bump_epoch();
        self.drain_all(eng);
    }
}

/// The engine's state is the engine's side of a drain: a block leaving a
/// shard is freed at a new tick, merged and indexed on its stream.
#[cfg(not(loom))]
impl<B: DeviceBackend> EngineSide<B::Stream> for State<B> {
    #[inline]
    fn stats(&mut self) -> &mut Stats {
        &mut self.stats
    }

    #[inline]
    fn free_entry(&mut self, e: &Entry<B::Stream>) {
        let tick = self.tick();
        self.make_free(e.id, tick);
    }
}

#[cfg(not(loom))]
impl<B: DeviceBackend> CachingAllocator<B> {
    /// Folds the calling thread's shard into the statistics
    /// ([`FrontCache::fold_own`]).
    #[inline]
    pub(crate) fn fold_own(&self, st: &mut State<B>) {
        self.front.fold_own(st);
    }

    /// Drains shard `i` under the engine lock (held by the caller,
    /// [`LockRule::L2`]): folds its statistics and frees its blocks (merged
    /// and indexed on their streams, each freed at a new tick). Whether it
    /// held any block.
    pub(crate) fn drain_shard(&self, st: &mut State<B>, i: usize) -> bool {
        self.front.drain(st, i)
    }

    /// Before a locked allocation: the calling thread's shard folded and its
    /// blocks that could serve the request freed
    /// ([`FrontCache::drain_fitting`]).
    #[inline]
    pub(crate) fn drain_own_fitting(
        &self,
        st: &mut State<B>,
        stream: B::Stream,
        pool: Pool,
        rounded: usize,
    ) {
        self.front.drain_fitting(st, stream, pool, rounded);
    }

    /// Drains every shard (the engine lock held). Whether any held a block.
    pub(crate) fn drain_front(&self, st: &mut State<B>) -> bool {
        self.front.drain_all(st)
    }

    /// The engine lock, with every shard drained: what looks at the engine
    /// or releases memory starts here.
    pub(crate) fn lock_drained(&self) -> std::sync::MutexGuard<'_, State<B>> {
        let mut st = self.lock();
        self.drain_front(&mut st);
        st
    }

    /// The byte cap of each front-cache shard (`front_cache_mb`; 0 when off).
    pub fn front_cache_cap(&self) -> usize {
        self.front.cap()
    }
}

// loom atomics live only inside a model: these run without loom
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn entry(stream: u32, requested: usize) -> Entry<u32> {
        Entry {
            stream,
            requested,
            size: 4096,
            ptr: 0x1000,
            id: 7,
            pool: Pool::Small,
            epoch: 0,
        }
    }

    /// A hit takes only its stream's block of the size asked, pushed in the
    /// current epoch: after `forget_stream` bumps the epoch, a block pushed
    /// before is never handed out, even before the drain reaches its shard.
    #[test]
    fn a_hit_takes_only_its_stream_size_and_epoch() {
        let f = FrontCache::<u32>::new(1 << 20, false);
        assert!(matches!(f.put(entry(1, 4000), 0), Put::Cached));
        assert!(f.take(2, 4000).is_none(), "another stream");
        assert!(f.take(1, 4001).is_none(), "another size");
        f.bump_epoch();
        assert!(f.take(1, 4000).is_none(), "an older epoch");
        assert!(
            matches!(f.put(entry(1, 4000), 0), Put::Refused),
            "a buffer of an older epoch is freed through the lock"
        );
        assert!(matches!(f.put(entry(1, 4000), 1), Put::Cached));
        let (e, epoch) = f.take(1, 4000).unwrap();
        assert_eq!((e.id, epoch), (7, 1));
    }

    /// The byte cap and the entry cap hold; a full shard says so (the locked
    /// free then drains it).
    #[test]
    fn a_shard_keeps_its_caps() {
        let f = FrontCache::<u32>::new(3 * 4096, false);
        for _ in 0..3 {
            assert!(matches!(f.put(entry(1, 4000), 0), Put::Cached));
        }
        assert!(matches!(f.put(entry(1, 4000), 0), Put::Refused));
        let f = FrontCache::<u32>::new(1 << 30, false);
        for _ in 0..SHARD_ENTRIES {
            assert!(matches!(f.put(entry(1, 4000), 0), Put::Cached));
        }
        assert!(matches!(f.put(entry(1, 4000), 0), Put::Full));
        let off = FrontCache::<u32>::new(0, false);
        assert!(matches!(off.put(entry(1, 4000), 0), Put::Refused));
        let recording = FrontCache::<u32>::new(1 << 20, true);
        assert!(matches!(recording.put(entry(1, 4000), 0), Put::Refused));
    }
}
