//! Loom models of the front cache's hand-offs (`front.rs`). Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p alloc-core
//! --release --lib loom`.
//!
//! The front cache is the real one: its shards and their locks, the gate,
//! the epoch, the thread numbers, the tallies, folds and drains, built on
//! loom's atomics, mutexes and thread-locals (`sync.rs`). The engine is
//! played by [`Engine`], a loom mutex around the statistics and the idle
//! blocks, and [`World`] does around the front cache what `cache.rs` and
//! `streams.rs` do: a hit, else the engine lock, the own shard's fitting
//! blocks freed, an idle block or, before growing, every shard drained (the
//! reclaim ladder); a push, else a locked free; `stats()` draining every
//! shard; `forget_stream` starting a new epoch.
//!
//! A [`Ghost`] keeps what the users did: each operation notes its change
//! before it starts and commits it after it ends, so the bytes in users'
//! hands at any moment lie between two known bounds. The ghost sits behind
//! a loom mutex (always the last lock taken), so that loom orders the
//! users' notes as it orders their operations: the true peak depends on how
//! one thread's hits interleave with another's, which no lock of the front
//! cache relates. The models check:
//! - no block is handed out twice, none is lost: at quiescence the blocks
//!   in the shards, idle in the engine and in users' hands are every block
//!   grown, each once;
//! - a hit hands out only a block freed on its stream in the epoch it
//!   returns, and after `forget_stream` no shard holds a block pushed in an
//!   older epoch;
//! - the statistics: exact at quiescence (currents, totals, hits), exact
//!   after every drain when one thread uses the cache, and while two threads
//!   run the peak within the stated bound of the true peak;
//! - [`LockRule::L2`](crate::LockRule::L2): the engine lock is never taken
//!   with a shard lock held (`check_no_shard_held`, on under loom).

use loom::sync::{Arc, Mutex, MutexGuard};
use loom::thread;

use crate::block::BlockId;
use crate::front::{EngineSide, Entry, FrontCache, Put, check_no_shard_held, thread_shard};
use crate::size_class::Pool;
use crate::stats::Stats;

/// The most blocks a model grows.
const MAX_BLOCKS: usize = 6;
/// The most threads of a model that allocate.
const USERS: usize = 2;
/// A small request (small pool).
const SMALL: usize = 4096;
/// A large request (large pool: above 1 MiB).
const LARGE: usize = 2 << 20;

/// A buffer in a user's hands.
#[derive(Clone, Copy, Debug)]
struct Buf {
    id: BlockId,
    size: usize,
    requested: usize,
    stream: u32,
    epoch: u64,
}

/// The engine's part (under its lock): what `State` holds that the front
/// cache touches.
struct Engine {
    stats: Stats,
    /// Blocks free in the engine (id, size).
    idle: Vec<(BlockId, usize)>,
    /// The size of every block grown, by id.
    grown: Vec<usize>,
    /// The registration a stream handle names: bumped by `forget_stream`
    /// (the handle may then name a new stream).
    registration: u64,
}

impl Engine {
    fn put_idle(&mut self, id: BlockId, size: usize) {
        assert!(
            !self.idle.iter().any(|&(i, _)| i == id),
            "block {id} freed into the engine twice"
        );
        self.idle.push((id, size));
    }

    fn take_idle(&mut self, size: usize) -> Option<BlockId> {
        let i = self.idle.iter().position(|&(_, s)| s == size)?;
        Some(self.idle.swap_remove(i).0)
    }

    fn grow(&mut self, size: usize) -> BlockId {
        assert!(self.grown.len() < MAX_BLOCKS, "the model grew too many");
        self.grown.push(size);
        (self.grown.len() - 1) as BlockId
    }

    /// What `hand_out` counts.
    fn count_alloc(&mut self, b: &Buf) {
        let pool = Pool::of(b.size);
        let s = &mut self.stats;
        s.allocation.add(pool, 1);
        s.active.add(pool, 1);
        s.allocated_bytes.add(pool, b.size);
        s.active_bytes.add(pool, b.size);
        s.requested_bytes.add(pool, b.requested);
    }

    /// What `free_block` and `complete_free` count.
    fn count_free(&mut self, b: &Buf) {
        let pool = Pool::of(b.size);
        let s = &mut self.stats;
        s.allocation.sub(pool, 1);
        s.active.sub(pool, 1);
        s.allocated_bytes.sub(pool, b.size);
        s.active_bytes.sub(pool, b.size);
        s.requested_bytes.sub(pool, b.requested);
    }
}

impl EngineSide<u32> for Engine {
    fn stats(&mut self) -> &mut Stats {
        &mut self.stats
    }

    fn free_entry(&mut self, e: &Entry<u32>) {
        self.put_idle(e.id, e.size);
    }
}

/// What the users did, kept beside the real structures.
#[derive(Default)]
struct Ghost {
    /// Per block: in a user's hands.
    held: [bool; MAX_BLOCKS],
    /// Per block: the epoch of the buffer that last held it.
    epoch: [u64; MAX_BLOCKS],
    /// Per block: the stream it was last used on.
    stream: [u32; MAX_BLOCKS],
    /// Bytes in users' hands after the operations that finished.
    committed: i64,
    /// Per user: the change of its operation in flight (0: none).
    inflight: [i64; USERS],
    /// The most bytes certainly in users' hands at once.
    peak_lo: i64,
    /// The most bytes possibly in users' hands at once.
    peak_hi: i64,
    /// Per pool: blocks, bytes and requested bytes handed out.
    out: [[i64; 3]; 2],
    /// Per pool: blocks, bytes and requested bytes given back.
    back: [[i64; 3]; 2],
    /// Hits.
    hits: i64,
}

impl Ghost {
    fn bounds(&mut self) {
        let down: i64 = self.inflight.iter().filter(|&&d| d < 0).sum();
        let up: i64 = self.inflight.iter().filter(|&&d| d > 0).sum();
        self.peak_lo = self.peak_lo.max(self.committed + down);
        self.peak_hi = self.peak_hi.max(self.committed + up);
    }

    fn begin(&mut self, user: usize, change: i64) {
        self.inflight[user] = change;
        self.bounds();
    }

    fn end(&mut self, user: usize) {
        self.committed += self.inflight[user];
        self.inflight[user] = 0;
        self.bounds();
    }

    /// Block `b.id` goes to a user.
    fn hand_out(&mut self, b: &Buf, hit: bool) {
        let i = b.id as usize;
        assert!(!self.held[i], "block {} handed out twice", b.id);
        self.held[i] = true;
        add(&mut self.out[Pool::of(b.size).index()], b);
        self.hits += i64::from(hit);
    }

    /// A user gives block `b.id` back.
    fn give_back(&mut self, b: &Buf) {
        let i = b.id as usize;
        assert!(self.held[i], "block {} given back twice", b.id);
        self.held[i] = false;
        self.epoch[i] = b.epoch;
        self.stream[i] = b.stream;
        add(&mut self.back[Pool::of(b.size).index()], b);
    }
}

/// Adds `b` to a block, byte and requested byte count.
fn add(count: &mut [i64; 3], b: &Buf) {
    count[0] += 1;
    count[1] += b.size as i64;
    count[2] += b.requested as i64;
}

/// The front cache, the engine and the ghost.
struct World {
    front: FrontCache<u32>,
    engine: Mutex<Engine>,
    ghost: Mutex<Ghost>,
}

impl World {
    /// Shards of `cap` bytes; the engine starts with `idle` blocks of each
    /// size given, grown and idle.
    fn new(cap: usize, idle: &[usize]) -> Arc<World> {
        let mut e = Engine {
            stats: Stats::default(),
            idle: Vec::new(),
            grown: Vec::new(),
            registration: 0,
        };
        for &size in idle {
            let id = e.grow(size);
            e.put_idle(id, size);
        }
        Arc::new(World {
            front: FrontCache::new(cap, false),
            engine: Mutex::new(e),
            ghost: Mutex::new(Ghost::default()),
        })
    }

    /// The engine lock ([`LockRule::L2`](crate::LockRule::L2) checked).
    fn lock(&self) -> MutexGuard<'_, Engine> {
        check_no_shard_held();
        self.engine.lock().unwrap()
    }

    fn ghost(&self) -> MutexGuard<'_, Ghost> {
        self.ghost.lock().unwrap()
    }

    /// `CachingAllocator::allocate` of `requested` bytes on `stream`, by
    /// user `user`. The model's sizes are whole 4 KiB (so a block pushed
    /// after a request of 4 KiB can serve one of 3.5 KiB, through the lock).
    fn allocate(&self, user: usize, requested: usize, stream: u32) -> Buf {
        let size = requested.next_multiple_of(SMALL);
        self.ghost().begin(user, size as i64);
        if let Some((e, epoch)) = self.front.take(stream, requested) {
            let b = Buf {
                id: e.id,
                size: e.size,
                requested,
                stream,
                epoch,
            };
            let mut g = self.ghost();
            let i = e.id as usize;
            assert_eq!(
                (g.stream[i], e.requested),
                (stream, requested),
                "a hit of block {} freed on another stream or size",
                e.id
            );
            assert_eq!(
                g.epoch[i], epoch,
                "a hit hands out block {} of epoch {} under epoch {epoch}",
                e.id, g.epoch[i]
            );
            g.hand_out(&b, true);
            g.end(user);
            return b;
        }
        let pool = Pool::of(size);
        let mut st = self.lock();
        self.front.drain_fitting(&mut *st, stream, pool, size);
        let id = match st.take_idle(size) {
            Some(id) => id,
            None => {
                // the reclaim ladder: every shard before growing
                self.front.drain_all(&mut *st);
                match st.take_idle(size) {
                    Some(id) => id,
                    None => st.grow(size),
                }
            }
        };
        let epoch = self.front.epoch();
        assert_eq!(epoch, st.registration, "the epoch read under the lock");
        let b = Buf {
            id,
            size,
            requested,
            stream,
            epoch,
        };
        st.count_alloc(&b);
        let mut g = self.ghost();
        g.hand_out(&b, false);
        drop(st);
        g.end(user);
        b
    }

    /// `DeviceBuffer`'s drop: a push into the thread's shard, else a free
    /// through the lock (draining the shard when it is full).
    fn free(&self, user: usize, b: Buf) {
        {
            let mut g = self.ghost();
            g.begin(user, -(b.size as i64));
            g.give_back(&b);
        }
        let e = Entry {
            stream: b.stream,
            requested: b.requested,
            size: b.size,
            ptr: 0x1000 * (b.id as usize + 1),
            id: b.id,
            pool: Pool::of(b.size),
            epoch: b.epoch,
        };
        let drain_own = match self.front.put(e, b.epoch) {
            Put::Cached => {
                self.ghost().end(user);
                return;
            }
            Put::Full => true,
            Put::Refused => false,
        };
        let mut st = self.lock();
        if drain_own {
            self.front.drain(&mut *st, thread_shard());
        } else {
            self.front.fold_own(&mut *st);
        }
        st.count_free(&b);
        st.put_idle(b.id, b.size);
        drop(st);
        self.ghost().end(user);
    }

    /// `forget_stream`'s locked part: a new epoch, every shard drained, the
    /// handle free to name a new stream; then no shard may hold a block of
    /// an older epoch.
    fn forget(&self) {
        let mut st = self.lock();
        self.front.start_epoch(&mut *st);
        st.registration += 1;
        let now = self.front.epoch();
        assert_eq!(now, st.registration);
        self.check_shards_in_epoch(now);
    }

    /// Every block in a shard was pushed by a buffer of epoch `now` (the
    /// engine lock held).
    fn check_shards_in_epoch(&self, now: u64) {
        for i in 0..self.front.len() {
            let sh = self.front.lock(i).unwrap();
            for e in &sh.entries {
                let pushed = self.ghost().epoch[e.id as usize];
                assert!(
                    pushed == now && e.epoch == now,
                    "shard {i} holds block {} pushed in epoch {pushed} (entry {}) in epoch {now}",
                    e.id,
                    e.epoch
                );
            }
        }
    }

    /// A thread's own shard number, taken before its first operation.
    fn enter(&self) {
        thread_shard();
    }

    /// At quiescence: every block once in the shards, the engine or users'
    /// hands; the shards in the current epoch; after a drain (`stats()`),
    /// the statistics exact and the peak within `lag` bytes of the true
    /// peak's bounds. The statistics after the drain.
    fn check_quiescent(&self, held: &[Buf], lag: i64) -> Stats {
        let mut st = self.lock();
        let now = self.front.epoch();
        self.check_shards_in_epoch(now);
        let mut seen = vec![0u32; st.grown.len()];
        for i in 0..self.front.len() {
            for e in &self.front.lock(i).unwrap().entries {
                seen[e.id as usize] += 1;
            }
        }
        for &(id, _) in &st.idle {
            seen[id as usize] += 1;
        }
        for b in held {
            seen[b.id as usize] += 1;
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "blocks in shards + idle + held, by id: {seen:?}"
        );
        self.front.drain_all(&mut *st);
        let s = st.stats;
        drop(st);
        let g = self.ghost();
        assert_eq!(g.inflight, [0; USERS]);
        let bytes: i64 = held.iter().map(|b| b.size as i64).sum();
        assert_eq!(g.committed, bytes);
        for (name, a) in [
            ("allocation", &s.allocation),
            ("active", &s.active),
            ("allocated_bytes", &s.allocated_bytes),
            ("active_bytes", &s.active_bytes),
            ("requested_bytes", &s.requested_bytes),
        ] {
            for f in [
                |s: &crate::Stat| s.current,
                |s: &crate::Stat| s.allocated,
                |s: &crate::Stat| s.freed,
            ] {
                assert_eq!(
                    f(&a.all),
                    f(&a.small_pool) + f(&a.large_pool),
                    "{name}: all is not the sum of the pools: {a:?}"
                );
            }
        }
        for pool in [Pool::Small, Pool::Large] {
            let p = pool.index();
            let mut now = [0; 3];
            for b in held.iter().filter(|b| Pool::of(b.size) == pool) {
                add(&mut now, b);
            }
            let want = |k: usize| (now[k], g.out[p][k], g.back[p][k]);
            let got = |a: &crate::StatArray| {
                let st = a.pool(pool);
                (st.current, st.allocated, st.freed)
            };
            for (name, a, k) in [
                ("allocation", &s.allocation, 0),
                ("active", &s.active, 0),
                ("allocated_bytes", &s.allocated_bytes, 1),
                ("active_bytes", &s.active_bytes, 1),
                ("requested_bytes", &s.requested_bytes, 2),
            ] {
                assert_eq!(got(a), want(k), "{name} of the {pool:?} pool");
            }
        }
        assert_eq!(s.num_front_cache_hits, g.hits, "hits");
        let peak = s.allocated_bytes.all.peak;
        assert!(
            g.peak_lo - lag <= peak && peak <= g.peak_hi + lag,
            "allocated_bytes peak {peak} outside [{} − {lag}, {} + {lag}]",
            g.peak_lo,
            g.peak_hi
        );
        s
    }
}

/// (a), (c): a hit and a push on one thread race the reclaim ladder of
/// another, which finds no idle block and drains every shard before it
/// grows: the first thread's freed block moves from its shard to the
/// engine and on to the other thread's stream and shard. No block is handed
/// out twice or lost; the figures are exact at quiescence.
#[test]
fn loom_hits_and_pushes_race_the_ladder() {
    loom::model(|| {
        let w = World::new(2 * SMALL, &[]);
        let w1 = w.clone();
        let t = thread::spawn(move || {
            w1.enter();
            let b = w1.allocate(0, SMALL, 1);
            w1.free(0, b);
            let b = w1.allocate(0, SMALL, 1);
            w1.free(0, b);
        });
        w.enter();
        let b = w.allocate(1, SMALL, 2);
        w.free(1, b);
        t.join().unwrap();
        w.check_quiescent(&[], 2 * SMALL as i64);
    });
}

/// (c), across threads: a buffer handed out on one thread is freed on
/// another, into the freeing thread's shard (with its stream), and taken
/// back by a hit there, while the first thread on the same stream finds no
/// idle block and its ladder drains that shard. Two shards hold blocks of
/// one stream; each block is in one place at a time.
#[test]
fn loom_a_buffer_freed_on_another_thread() {
    loom::model(|| {
        let w = World::new(2 * SMALL, &[]);
        w.enter();
        let x = w.allocate(1, SMALL, 1);
        let w1 = w.clone();
        let t = thread::spawn(move || {
            w1.enter();
            w1.free(0, x);
            let b = w1.allocate(0, SMALL, 1);
            w1.free(0, b);
        });
        let b = w.allocate(1, SMALL, 1);
        w.free(1, b);
        t.join().unwrap();
        w.check_quiescent(&[], 2 * SMALL as i64);
    });
}

/// (b): a hit and a push race `forget_stream`'s new epoch and drain: a
/// block pushed in the old epoch is never handed out under the new one, no
/// shard holds one after the drain, and a buffer of the old epoch is freed
/// through the lock.
#[test]
fn loom_forget_stream_races_hits_and_pushes() {
    loom::model(|| {
        let w = World::new(2 * SMALL, &[]);
        let w1 = w.clone();
        let t = thread::spawn(move || {
            w1.enter();
            let b = w1.allocate(0, SMALL, 1);
            w1.free(0, b);
            let b = w1.allocate(0, SMALL, 1);
            w1.free(0, b);
        });
        w.forget();
        t.join().unwrap();
        w.check_quiescent(&[], 0);
    });
}

/// (d), one thread: its figures are exact after every drain while another
/// thread reads them (`stats()`), and the peak reached through a hit is
/// folded in (its shard's highest change). The thread holds a block on
/// stream 2 while it takes its block of stream 1 back from its shard, then
/// asks for another size that the block fits: the locked allocation frees
/// it from the shard first (`drain_fitting`). Last, a block too large for
/// the shard is freed through the lock while a hit is unfolded: the locked
/// free folds the shard first (`fold_own`), so the peak the hit reached
/// counts the large block.
#[test]
fn loom_one_thread_is_exact_while_stats_drain() {
    loom::model(|| {
        let w = World::new(2 * SMALL, &[SMALL, SMALL, LARGE]);
        let w1 = w.clone();
        let t = thread::spawn(move || {
            w1.enter();
            hold_and_hit(&w1, 0, SMALL, 1, 2);
            // another size of the same class: a miss, which frees the
            // shard's fitting block for the best fit to choose
            let z = w1.allocate(0, SMALL - 512, 1);
            w1.free(0, z);
            let big = w1.allocate(0, LARGE, 3);
            let z = w1.allocate(0, SMALL - 512, 1);
            w1.free(0, big);
            w1.free(0, z);
        });
        // stats(): the engine lock, the user's shard (the only thread with
        // a number: shard 0) drained with the ghost held, the figures
        // checked, then the rest
        let mut st = w.lock();
        {
            let g = w.ghost();
            w.front.drain(&mut *st, 0);
            let s = &st.stats.allocated_bytes.all;
            let flight = g.inflight[0];
            assert!(
                s.current == g.committed || s.current == g.committed + flight,
                "current {} while {} held, {flight} in flight",
                s.current,
                g.committed
            );
            assert_eq!(
                s.peak,
                g.peak_lo.max(s.current),
                "peak while {} held, {flight} in flight",
                g.committed
            );
            // a hit folded before its user noted it
            let early = st.stats.num_front_cache_hits - g.hits;
            assert!(
                early == 0 || (early == 1 && flight > 0 && s.current == g.committed + flight),
                "{early} hits folded and not noted, {flight} in flight"
            );
        }
        w.front.drain_all(&mut *st);
        drop(st);
        t.join().unwrap();
        let s = w.check_quiescent(&[], 0);
        assert_eq!(s.allocated_bytes.all.peak, w.ghost().peak_hi);
    });
}

/// A thread's program for the statistics' models: it frees its block of
/// stream `a` into its shard, takes a block on stream `b` through the lock
/// (which folds its shard), then takes its block of `a` back from the shard
/// while it holds the other: its most held is reached through a hit.
fn hold_and_hit(w: &World, user: usize, size: usize, a: u32, b: u32) {
    let x = w.allocate(user, size, a);
    w.free(user, x);
    let y = w.allocate(user, size, b);
    let x = w.allocate(user, size, a);
    w.free(user, x);
    w.free(user, y);
}

/// (d), two threads on their own streams and pools, each reaching its most
/// held through a hit: totals exact at quiescence, and the device-wide
/// peak within a shard's byte cap (`front_cache_mb`) of the true peak for
/// each other shard, both ways: a fold adds a shard's highest change to a
/// current that lacks the other shards' unfolded hits (the peak lags) and
/// still counts their unfolded pushes (the peak leads).
#[test]
fn loom_two_threads_peak_within_the_bound() {
    loom::model(|| {
        let w = World::new(2 * LARGE, &[SMALL, SMALL, LARGE, LARGE]);
        let w1 = w.clone();
        let t = thread::spawn(move || {
            w1.enter();
            hold_and_hit(&w1, 0, SMALL, 1, 2);
        });
        w.enter();
        hold_and_hit(&w, 1, LARGE, 3, 4);
        t.join().unwrap();
        w.check_quiescent(&[], 2 * LARGE as i64 * (USERS as i64 - 1));
    });
}
