//! 8 threads allocate, grow, shrink and free blocks inside one shared scope and
//! hand their leftovers to the main thread; the scope's totals must equal an
//! independent count kept by the threads themselves.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use alloc_host::{ScopeBuilder, TrackingAllocator};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

const THREADS: usize = 8;
const OPS: usize = 20_000;
const SLOTS: usize = 64;

#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct Tally {
    allocations: u64,
    frees: u64,
    reallocs: u64,
    bytes_allocated: u64,
    bytes_freed: u64,
    /// This thread's own highest live bytes.
    peak: u64,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn worker(seed: u64, leftovers: &Mutex<Vec<Vec<u8>>>) -> Tally {
    let mut t = Tally::default();
    let mut rng = seed;
    let mut slots: [Option<Vec<u8>>; SLOTS] = std::array::from_fn(|_| None);
    for _ in 0..OPS {
        t.peak = t.peak.max(t.bytes_allocated - t.bytes_freed);
        let r = xorshift(&mut rng);
        let i = (r % SLOTS as u64) as usize;
        let size = 1 + ((r >> 8) % 3000) as usize;
        match (slots[i].take(), (r >> 40) % 4) {
            (None, _) => {
                slots[i] = Some(black_box(vec![0u8; size]));
                t.allocations += 1;
                t.bytes_allocated += size as u64;
            }
            (Some(mut v), 0) => {
                // grow: len == capacity, so this reallocates to exactly len + size
                let old = v.capacity();
                v.resize(old, 0);
                v.reserve_exact(size);
                t.reallocs += 1;
                t.bytes_allocated += (v.capacity() - old) as u64;
                slots[i] = Some(v);
            }
            (Some(mut v), 1) if v.capacity() > 1 => {
                let old = v.capacity();
                v.truncate(1);
                v.shrink_to_fit();
                t.reallocs += 1;
                t.bytes_freed += (old - v.capacity()) as u64;
                slots[i] = Some(v);
            }
            (Some(v), _) => {
                t.frees += 1;
                t.bytes_freed += v.capacity() as u64;
                drop(v);
            }
        }
    }
    t.peak = t.peak.max(t.bytes_allocated - t.bytes_freed);
    let mut left = leftovers.lock().unwrap();
    for v in slots.into_iter().flatten() {
        left.push(v);
    }
    t
}

#[test]
fn eight_threads_match_an_independent_count() {
    let leftovers = Arc::new(Mutex::new(Vec::with_capacity(THREADS * SLOTS)));
    // Built, not entered: the spawns below are charged to this thread's scope,
    // so the stress scope holds exactly what the workers did.
    let handle = ScopeBuilder::new("stress").build().unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let (h, left) = (handle.clone(), leftovers.clone());
            std::thread::spawn(move || {
                let _in = h.enter();
                worker(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1), &left)
            })
        })
        .collect();
    let tallies: Vec<Tally> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total = tallies.iter().fold(Tally::default(), |a, t| Tally {
        allocations: a.allocations + t.allocations,
        frees: a.frees + t.frees,
        reallocs: a.reallocs + t.reallocs,
        bytes_allocated: a.bytes_allocated + t.bytes_allocated,
        bytes_freed: a.bytes_freed + t.bytes_freed,
        peak: a.peak + t.peak,
    });
    let max_thread_peak = tallies.iter().map(|t| t.peak).max().unwrap();
    let left: Vec<Vec<u8>> = std::mem::take(&mut *leftovers.lock().unwrap());
    let left_bytes: u64 = left.iter().map(|v| v.capacity() as u64).sum();
    let s = handle.stats();
    assert_eq!(s.allocations, total.allocations);
    assert_eq!(s.reallocs, total.reallocs);
    assert_eq!(s.bytes_allocated, total.bytes_allocated);
    assert_eq!(s.frees, total.frees);
    assert_eq!(s.bytes_freed, total.bytes_freed);
    assert_eq!(s.live_bytes, s.bytes_allocated - s.bytes_freed);
    assert_eq!(s.live_allocations, s.allocations - s.frees);
    // The true peak lies between the largest single thread's peak and the sum
    // of all of them; the recorded one within the documented batching bound
    // ((T + 1) × BATCH_BYTES) of the true one.
    let slack = (THREADS as u64 + 1) * alloc_host::BATCH_BYTES as u64;
    assert!(
        s.peak_bytes + slack >= max_thread_peak && s.peak_bytes <= total.peak + slack,
        "peak {} outside [{} - {slack}, {} + {slack}]",
        s.peak_bytes,
        max_thread_peak,
        total.peak
    );
    assert_eq!(left.len() as u64, total.allocations - total.frees);
    drop(left);
    let s = handle.stats();
    assert_eq!(s.live_bytes, 0, "all blocks freed: {s:?}");
    assert_eq!(s.live_allocations, 0);
    assert_eq!(s.bytes_freed, total.bytes_freed + left_bytes);
    // scope:C1–scope:C4 over the whole tree, now that every thread has applied
    // its charges.
    alloc_host::flush();
    alloc_scope::validate().unwrap();
}
