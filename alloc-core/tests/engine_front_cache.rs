//! The front cache (`front_cache_mb`, `src/front.rs`): per-thread shards in
//! front of the engine lock. What it must keep:
//! - PyTorch's counters exact with one thread (on one stream or several),
//!   after every operation, peaks included (a model of the buffers);
//! - stream order: a block in a shard goes only to its own stream, a block
//!   with uses on other streams never enters a shard, and a stream that is
//!   forgotten leaves nothing in a shard under its handle (the sim's
//!   in-flight oracle);
//! - no out of memory while memory sits in shards (the ladder drains them);
//! - hits do happen (`num_front_cache_hits`), and never while the cache is
//!   off or history is recorded.

use alloc_core::{CachingAllocator, Config, DeviceBuffer, SimBackend, SimStream, Stats};
use proptest::prelude::*;

const S0: SimStream = SimStream(0);
const S1: SimStream = SimStream(1);
const MIB: usize = 1 << 20;

fn cfg(s: &str) -> Config {
    Config::parse(s).unwrap()
}

/// A sim whose work completes only when told, and an engine on it.
fn engine(conf: &str) -> (SimBackend, CachingAllocator<SimBackend>) {
    let sim = SimBackend::new(1 << 30);
    sim.set_auto_complete(false);
    let a = CachingAllocator::new(sim.clone(), cfg(conf));
    (sim, a)
}

fn range(b: &DeviceBuffer<'_, SimBackend>) -> (usize, usize) {
    (b.ptr().0, b.capacity())
}

#[test]
fn repeated_requests_hit_the_front_cache() {
    let (sim, a) = engine("front_cache_mb:16");
    for _ in 0..10 {
        let b = a.allocate(4096, S0).unwrap();
        sim.check_handout(S0, b.ptr(), b.capacity());
    }
    let s = a.stats();
    assert_eq!(
        s.num_front_cache_hits, 9,
        "the first is a miss, the rest hit"
    );
    assert_eq!(s.allocation.all.allocated, 10);
    assert_eq!(s.allocation.all.freed, 10);
    assert_eq!(s.allocated_bytes.all.current, 0);
    assert_eq!(s.allocated_bytes.all.peak, 4096);
    assert_eq!(s.requested_bytes.all.allocated, 40960);
    a.validate().unwrap();
}

#[test]
fn no_hits_when_off_or_while_history_is_recorded() {
    let (_sim, a) = engine("front_cache_mb:0");
    for _ in 0..10 {
        drop(a.allocate(4096, S0).unwrap());
    }
    assert_eq!(a.stats().num_front_cache_hits, 0);
    assert_eq!(a.front_cache_cap(), 0);

    let (_sim, a) = engine("front_cache_mb:16");
    a.record_memory_history(true, 1000);
    for _ in 0..10 {
        drop(a.allocate(4096, S0).unwrap());
    }
    assert_eq!(a.stats().num_front_cache_hits, 0);
    let allocs = a
        .trace()
        .iter()
        .filter(|e| e.action == alloc_core::trace::TraceAction::Alloc)
        .count();
    assert_eq!(allocs, 10, "every allocation is in the history");
    a.record_memory_history(false, 0);
    for _ in 0..10 {
        drop(a.allocate(4096, S0).unwrap());
    }
    assert_eq!(a.stats().num_front_cache_hits, 9);
}

/// A block freed on S0 while S0's work still uses it is never handed to
/// S1 (only S0, which orders its work, may take it from the shard), even
/// when it is the newest block of the shard with the size S1 asks for.
#[test]
fn a_block_in_a_shard_goes_only_to_its_own_stream() {
    let (sim, a) = engine("front_cache_mb:16");
    let b = a.allocate(4096, S0).unwrap();
    let c = a.allocate(4096, S1).unwrap();
    let (p, q) = (b.ptr(), c.ptr());
    sim.launch_using(S0, &[range(&b)]);
    drop(c);
    drop(b);
    let e = a.allocate(4096, S1).unwrap();
    sim.check_handout(S1, e.ptr(), e.capacity());
    assert_eq!(e.ptr(), q);
    let d = a.allocate(4096, S0).unwrap();
    assert_eq!(d.ptr(), p, "S0 takes its own block back (stream order)");
    assert_eq!(a.stats().num_front_cache_hits, 2);
    drop((e, d));
    a.validate().unwrap();
}

/// A buffer used on another stream (`record_stream`) waits for that
/// stream's event: it never enters a shard, where its own stream would
/// take it back at once.
#[test]
fn a_recorded_buffer_never_enters_a_shard() {
    let (sim, a) = engine("front_cache_mb:16");
    let b = a.allocate(4096, S0).unwrap();
    b.record_stream(S1);
    sim.launch_using(S1, &[range(&b)]);
    drop(b);
    let c = a.allocate(4096, S0).unwrap();
    sim.check_handout(S0, c.ptr(), c.capacity());
    assert_eq!(a.stats().num_front_cache_hits, 0);
    assert_eq!(
        a.stats().active.all.current,
        2,
        "the recorded block is pending"
    );
}

/// After `forget_stream(S0)` a block S0's new stream uses must not reach S1
/// while that work runs: the block the handle's old stream freed (`held`:
/// a buffer allocated before the forget and freed after it) or left in a
/// shard (dropped before the forget) is freed through the lock, never into
/// a shard under the handle, which now names a new stream.
fn reuse_after_forget(held_across: bool) {
    let (sim, a) = engine("front_cache_mb:16");
    let b = a.allocate(4096, S0).unwrap();
    if held_across {
        a.forget_stream(S0);
        drop(b);
    } else {
        drop(b);
        a.forget_stream(S0);
    }
    let c = a.allocate(4096, S0).unwrap();
    sim.check_handout(S0, c.ptr(), c.capacity());
    sim.launch_using(S0, &[range(&c)]);
    drop(c);
    let _ = a.stats(); // drains the shards
    let d = a.allocate(4096, S1).unwrap();
    sim.check_handout(S1, d.ptr(), d.capacity());
    a.validate().unwrap();
}

/// A buffer allocated before its stream was forgotten is freed through the
/// lock (to the forgotten streams' slot), never into a shard under the
/// handle.
#[test]
fn forgetting_a_stream_keeps_its_old_buffers_out_of_the_shards() {
    reuse_after_forget(true);
}

/// A stream's blocks leave the shards when it is forgotten: a block left
/// under the handle would go to the new stream of that handle, and from
/// there (its slot being the forgotten streams') to any stream while the
/// new stream's work still uses it.
#[test]
fn forgetting_a_stream_drains_its_blocks_from_the_shards() {
    reuse_after_forget(false);
}

/// Memory in shards never makes a request fail: the ladder drains them
/// before it grows, in both segment kinds.
#[test]
fn memory_in_shards_never_causes_out_of_memory() {
    for conf in [
        "front_cache_mb:64",
        "front_cache_mb:64,expandable_segments:false",
    ] {
        let sim = SimBackend::new(64 * MIB);
        let a = CachingAllocator::new(sim.clone(), cfg(conf));
        let held: Vec<_> = (0..5).map(|_| a.allocate(6 * MIB, S0).unwrap()).collect();
        let small: Vec<_> = (0..20)
            .map(|_| a.allocate(100 << 10, S0).unwrap())
            .collect();
        drop(held);
        drop(small);
        let big = a.allocate(40 * MIB, S0);
        assert!(
            big.is_ok(),
            "{conf}: {:?}; oracle: {:?}",
            big.err().map(|e| e.to_string()),
            a.check_oom_legitimate(40 * MIB)
        );
        drop(big);
        if a.uses_expandable_segments() {
            // free pages are mapped again without a sync (fixed segments
            // must be released, which waits for the device)
            assert_eq!(
                a.stats().num_sync_all_streams,
                0,
                "{conf}: the shards are drained before the ladder's sync"
            );
        }
        a.validate().unwrap();
    }
}

/// One thread on two streams: the peak is the sum at the moment both were
/// held, not each stream's own most.
#[test]
fn one_thread_on_two_streams_has_an_exact_peak() {
    let (_sim, a) = engine("front_cache_mb:16");
    for _ in 0..4 {
        let p = a.allocate(3 * MIB, S0).unwrap();
        let q = a.allocate(4096, S1).unwrap();
        drop(p);
        let r = a.allocate(3 * MIB, S0).unwrap();
        drop((q, r));
    }
    let s = a.stats();
    assert!(s.num_front_cache_hits >= 9, "{}", s.num_front_cache_hits);
    assert_eq!(s.allocated_bytes.all.peak, (3 * MIB + 4096) as i64);
    assert_eq!(s.allocated_bytes.large_pool.peak, 3 * MIB as i64);
    assert_eq!(s.allocated_bytes.small_pool.peak, 4096);
    assert_eq!(s.allocation.all.peak, 2);
    assert_eq!(s.allocated_bytes.all.current, 0);
}

// ---- the counter model, one thread, several streams ----

/// The sizes a program asks for: few, so that requests repeat and hit.
const SIZES: [usize; 6] = [700, 1000, 4096, 3 * MIB, 3 * MIB + 1, 12 * MIB];

#[derive(Clone, Debug)]
enum Op {
    Alloc(usize, u32),
    Free(usize),
    Launch(u32),
    Complete(u32),
    Look,
    ResetPeak,
    Trim,
    EmptyCache,
    Forget(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..SIZES.len(), 0..3u32).prop_map(|(s, t)| Op::Alloc(SIZES[s], t)),
        3 => any::<usize>().prop_map(Op::Free),
        3 => Just(Op::Free(usize::MAX)),
        1 => (0..3u32).prop_map(Op::Launch),
        1 => (0..3u32).prop_map(Op::Complete),
        1 => Just(Op::Look),
        1 => Just(Op::ResetPeak),
        1 => Just(Op::Trim),
        1 => Just(Op::EmptyCache),
        1 => (0..3u32).prop_map(Op::Forget),
    ]
}

/// One counter family's model: current, peak, added and removed, for both
/// pools (index 0) and each (1 small, 2 large).
#[derive(Clone, Copy, Default, Debug)]
struct M {
    cur: [i64; 3],
    peak: [i64; 3],
    added: [i64; 3],
    removed: [i64; 3],
}

impl M {
    fn add(&mut self, pool: usize, v: i64) {
        for i in [0, pool] {
            self.cur[i] += v;
            self.added[i] += v;
            self.peak[i] = self.peak[i].max(self.cur[i]);
        }
    }
    fn sub(&mut self, pool: usize, v: i64) {
        for i in [0, pool] {
            self.cur[i] -= v;
            self.removed[i] += v;
        }
    }
    fn reset_peak(&mut self) {
        self.peak = self.cur;
    }
    fn check(&self, name: &str, a: &alloc_core::StatArray) -> Result<(), String> {
        for (i, s) in [&a.all, &a.small_pool, &a.large_pool]
            .into_iter()
            .enumerate()
        {
            let got = [s.current, s.peak, s.allocated, s.freed];
            let want = [self.cur[i], self.peak[i], self.added[i], self.removed[i]];
            if got != want {
                return Err(format!(
                    "{name}[{i}] (current, peak, allocated, freed) = {got:?}, the model says {want:?}"
                ));
            }
        }
        Ok(())
    }
}

fn pool(b: &DeviceBuffer<'_, SimBackend>) -> usize {
    if b.capacity() > MIB { 2 } else { 1 }
}

fn check(s: &Stats, count: &M, bytes: &M, req: &M) -> Result<(), String> {
    count.check("allocation", &s.allocation)?;
    count.check("active", &s.active)?;
    bytes.check("allocated_bytes", &s.allocated_bytes)?;
    bytes.check("active_bytes", &s.active_bytes)?;
    req.check("requested_bytes", &s.requested_bytes)
}

fn run_model(ops: &[Op], conf: &str) -> Result<u64, String> {
    let (sim, a) = engine(conf);
    let mut live: Vec<(DeviceBuffer<'_, SimBackend>, u32)> = Vec::new();
    let (mut count, mut bytes, mut req) = (M::default(), M::default(), M::default());
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Alloc(n, t) => {
                let b = a
                    .allocate(n, SimStream(t))
                    .map_err(|e| format!("step {step}: {e}"))?;
                sim.check_handout(SimStream(t), b.ptr(), b.capacity());
                let p = pool(&b);
                count.add(p, 1);
                bytes.add(p, b.capacity() as i64);
                req.add(p, b.len() as i64);
                live.push((b, t));
            }
            Op::Free(i) if !live.is_empty() => {
                // usize::MAX: the newest (loops free what they just used)
                let i = if i == usize::MAX {
                    live.len() - 1
                } else {
                    i % live.len()
                };
                let (b, _) = live.swap_remove(i);
                let p = pool(&b);
                count.sub(p, 1);
                bytes.sub(p, b.capacity() as i64);
                req.sub(p, b.len() as i64);
                drop(b);
            }
            Op::Free(_) => {}
            Op::Launch(t) => {
                let ranges: Vec<_> = live
                    .iter()
                    .filter(|l| l.1 == t)
                    .map(|l| range(&l.0))
                    .collect();
                sim.launch_using(SimStream(t), &ranges);
            }
            Op::Complete(t) => sim.complete(SimStream(t)),
            Op::Look => {
                check(&a.stats(), &count, &bytes, &req).map_err(|e| format!("step {step}: {e}"))?;
                a.validate().map_err(|e| format!("step {step}: {e:?}"))?;
            }
            Op::ResetPeak => {
                a.reset_peak();
                for m in [&mut count, &mut bytes, &mut req] {
                    m.reset_peak();
                }
            }
            Op::Trim => a.trim(),
            Op::EmptyCache => a.empty_cache(),
            Op::Forget(t) => {
                // the interpreter's buffers of a forgotten stream stay live,
                // used by no later work (its handle comes back as a new
                // stream, which would have to `record_stream` them)
                a.forget_stream(SimStream(t));
                for l in live.iter_mut().filter(|l| l.1 == t) {
                    l.1 = u32::MAX;
                }
            }
        }
    }
    let s = a.stats();
    check(&s, &count, &bytes, &req).map_err(|e| format!("at the end: {e}"))?;
    a.validate().map_err(|e| format!("{e:?}"))?;
    let hits = s.num_front_cache_hits as u64;
    drop(live);
    a.validate().map_err(|e| format!("{e:?}"))?;
    if !sim.violations().is_empty() {
        return Err(format!("backend contract breaches: {:?}", sim.violations()));
    }
    Ok(hits)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn counters_follow_the_model_with_the_front_cache(
        ops in proptest::collection::vec(op(), 0..300)
    ) {
        prop_assert!(run_model(&ops, "front_cache_mb:16").is_ok(), "{:?}", run_model(&ops, "front_cache_mb:16"));
    }

    #[test]
    fn counters_follow_the_model_with_the_front_cache_fixed(
        ops in proptest::collection::vec(op(), 0..300)
    ) {
        let conf = "front_cache_mb:16,expandable_segments:false";
        prop_assert!(run_model(&ops, conf).is_ok(), "{:?}", run_model(&ops, conf));
    }
}

/// The model hits the cache on a loop (every iteration asks for the sizes
/// of the last, on the same streams), else the tests above would check
/// nothing of it.
#[test]
fn model_programs_hit_the_cache() {
    let mut ops = Vec::new();
    for _ in 0..30 {
        ops.extend((0..SIZES.len()).map(|j| Op::Alloc(SIZES[j], (j % 2) as u32)));
        ops.extend((0..SIZES.len()).map(|_| Op::Free(0)));
    }
    ops.push(Op::Look);
    // 18 MiB a round: under a 32 MiB cap, every block of a round hits in
    // the next; under 16 MiB, one does not fit in the shard
    let hits = run_model(&ops, "front_cache_mb:32").unwrap();
    assert_eq!(hits, 29 * SIZES.len() as u64);
    let hits = run_model(&ops, "front_cache_mb:16").unwrap();
    assert!(hits < 29 * SIZES.len() as u64, "{hits}");
}

/// `front_cache_mb` is parsed with the other keys: its value in MiB, the
/// bad ones named with the rule and the way out.
#[test]
fn the_cap_is_a_config_key() {
    assert_eq!(cfg("front_cache_mb:0").front_cache_bytes, 0);
    assert_eq!(cfg("front_cache_mb:16").front_cache_bytes, 16 * MIB);
    assert_eq!(
        Config::default().front_cache_bytes,
        alloc_core::config::DEFAULT_FRONT_CACHE_MB * MIB
    );
    assert_eq!(
        cfg("front_cache_mb:16").to_conf_string(),
        "front_cache_mb:16"
    );
    let e = Config::parse("front_cache_mb:70000")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("front_cache_mb") && e.contains("70000") && e.contains("use 0"),
        "{e}"
    );
    let e = Config::parse("front_cache_mb:lots")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lots") && e.contains("non-negative integer"),
        "{e}"
    );
    let (_sim, a) = engine("front_cache_mb:8");
    assert_eq!(a.front_cache_cap(), 8 * MIB);
}
