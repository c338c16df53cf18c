//! The allocation-heavy program timed by the whole-process comparison: small
//! alloc/free churn, Vec growth, a 1e6-entry BTreeMap and a 1e6-entry HashMap,
//! run on `threads` threads at once (each does the full work).

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

/// How the program should be charged when the tracking allocator is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoping {
    /// No scope opened (charged to the process root).
    None,
    /// One scope opened in `main` and entered on every worker thread.
    Scope,
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Small blocks of 16–512 B allocated and freed in a ring of 1,024 live ones.
pub fn churn(iterations: usize, seed: u64) -> u64 {
    let mut rng = seed | 1;
    let mut ring: Vec<Vec<u8>> = (0..1024).map(|_| Vec::new()).collect();
    let mut sum = 0u64;
    for i in 0..iterations {
        let size = 16 + (xorshift(&mut rng) % 497) as usize;
        let v = vec![i as u8; size];
        sum = sum.wrapping_add(v[size / 2] as u64);
        ring[i % 1024] = v;
    }
    sum
}

/// Vectors grown element by element (amortised reallocation).
pub fn vec_growth(rounds: usize, len: usize) -> u64 {
    let mut sum = 0u64;
    for r in 0..rounds {
        let mut v = Vec::new();
        for i in 0..len {
            v.push((i ^ r) as u64);
        }
        sum = sum.wrapping_add(v[len / 3]);
    }
    sum
}

/// A BTreeMap and a HashMap of `n` entries, filled then half emptied.
pub fn maps(n: u64, seed: u64) -> u64 {
    let mut rng = seed | 1;
    let mut bt = BTreeMap::new();
    let mut hm = HashMap::new();
    for i in 0..n {
        let k = xorshift(&mut rng);
        bt.insert(k, i);
        hm.insert(k, i);
    }
    let keys: Vec<u64> = hm.keys().copied().step_by(2).collect();
    for k in &keys {
        bt.remove(k);
        hm.remove(k);
    }
    (bt.len() + hm.len()) as u64
}

/// The whole program on one thread.
pub fn program(seed: u64) -> u64 {
    let a = churn(3_000_000, seed);
    let b = vec_growth(20, 500_000);
    let c = maps(1_000_000, seed);
    black_box(a ^ b ^ c)
}

/// Runs [`program`] on `threads` threads. With `Scoping::Scope` and
/// alloc-host installed, a scope named `workload` is opened and entered on every
/// thread, so allocations and their (attributed) frees are charged to it.
pub fn run(threads: usize, scoping: Scoping) -> u64 {
    let scope = match scoping {
        Scoping::Scope => Some(alloc_host::ScopeBuilder::new("workload").build().ok()),
        Scoping::None => None,
    }
    .flatten();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let h = scope.clone();
            std::thread::spawn(move || {
                let _in = h.as_ref().map(|h| h.enter());
                program(0x9E37_79B9 + t as u64)
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().unwrap_or(0))
        .fold(0, |a, b| a ^ b)
}

/// Reads the thread count from the first command-line argument (default 1).
pub fn threads_from_args() -> usize {
    std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(1)
}
