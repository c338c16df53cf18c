//! `pairs VARIANT N SIZE [DEPTH]`: N alloc+free pairs of SIZE bytes through one
//! allocator, called directly. Used under `valgrind --tool=callgrind` to count
//! instructions per pair (the difference between two N cancels start-up), a
//! figure the machine's noise does not move.
//! VARIANT: system | mimalloc (the `mimalloc` crate's global allocator, which
//! calls mimalloc's aligned entry points) | mimalloc_plain (plain `mi_malloc` /
//! `mi_free` and the other unaligned calls, through `alloc_host::Mimalloc`,
//! the inner allocator of ours) | ours-off (tracking switched off at run
//! time) | ours-start-off (built with `starting_off`, tracking never on) | ours-root | ours-scope (DEPTH nested
//! scopes, default 1) | side-table (bare mimalloc plus the cheapest side table
//! that could record owners: a fixed open-addressing table of atomics, one CAS
//! to insert and one to remove per block; the alternative to the owner header) |
//! heap-owner (the owner-per-heap design, `alloc_benches::heap_owner`, in a
//! scope heap of its own) | block-owner (the floor of our design,
//! `alloc_benches::block_owner`: an owner per block and nothing else) |
//! footer-owner (the owner in a 4-byte footer of every block).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use alloc_host::{ScopeBuilder, TrackingAllocator};

static TRACK: TrackingAllocator = TrackingAllocator::new();

/// The same allocator built to start with tracking off (`ours-start-off`,
/// the only allocator of this kind a run uses, so it decides the gate).
static TRACK_START_OFF: TrackingAllocator = TrackingAllocator::new().starting_off();

fn pairs<A: GlobalAlloc>(a: &A, n: u64, layout: Layout) {
    for _ in 0..n {
        // SAFETY: non-zero layout, freed once with the same layout.
        unsafe {
            let p = a.alloc(layout);
            black_box(p);
            a.dealloc(p, layout);
        }
    }
}

/// The side-table alternative: owner ids keyed by address, lock-free.
mod side_table {
    use std::sync::atomic::{AtomicU64, Ordering::*};

    const SLOTS: usize = 1 << 16;
    static KEYS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
    static OWNERS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

    fn hash(p: usize) -> usize {
        (p as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as usize >> (64 - 16)
    }

    pub fn insert(p: usize, owner: u64) {
        let mut i = hash(p);
        loop {
            if KEYS[i]
                .compare_exchange(0, p as u64, AcqRel, Relaxed)
                .is_ok()
            {
                OWNERS[i].store(owner, Release);
                return;
            }
            i = (i + 1) & (SLOTS - 1);
        }
    }

    pub fn remove(p: usize) -> u64 {
        let mut i = hash(p);
        loop {
            if KEYS[i].load(Acquire) == p as u64 {
                let o = OWNERS[i].load(Acquire);
                KEYS[i].store(0, Release);
                return o;
            }
            i = (i + 1) & (SLOTS - 1);
        }
    }
}

fn side_table_pairs(n: u64, layout: Layout) {
    for _ in 0..n {
        // SAFETY: non-zero layout, freed once with the same layout.
        unsafe {
            let p = mimalloc::MiMalloc.alloc(layout);
            side_table::insert(p as usize, 1);
            black_box(side_table::remove(p as usize));
            mimalloc::MiMalloc.dealloc(p, layout);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: pairs system|mimalloc|mimalloc_plain|ours-off|ours-start-off|ours-root|ours-scope|side-table|heap-owner|block-owner|footer-owner N SIZE [DEPTH]";
    let (Some(variant), Some(n), Some(size)) = (
        args.get(1),
        args.get(2).and_then(|a| a.parse::<u64>().ok()),
        args.get(3).and_then(|a| a.parse::<usize>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let depth: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(1);
    let Ok(layout) = Layout::from_size_align(size.max(1), 8) else {
        eprintln!("SIZE {size} is too large; {usage}");
        std::process::exit(2);
    };
    let mut guards = Vec::new();
    match variant.as_str() {
        "system" => pairs(&System, n, layout),
        "mimalloc" => pairs(&mimalloc::MiMalloc, n, layout),
        "mimalloc_plain" => pairs(&alloc_host::Mimalloc, n, layout),
        "ours-off" => {
            alloc_host::set_tracking(false);
            pairs(&TRACK, n, layout)
        }
        "ours-start-off" => pairs(&TRACK_START_OFF, n, layout),
        "ours-root" => pairs(&TRACK, n, layout),
        "side-table" => side_table_pairs(n, layout),
        "block-owner" => {
            alloc_benches::block_owner::enter_fresh();
            pairs(&alloc_benches::block_owner::BlockOwner, n, layout)
        }
        "footer-owner" => {
            alloc_benches::block_owner::enter_fresh();
            pairs(&alloc_benches::block_owner::FooterOwner, n, layout)
        }
        "heap-owner" => {
            alloc_benches::heap_owner::enter_fresh();
            pairs(&alloc_benches::heap_owner::HeapOwner, n, layout)
        }
        "ours-scope" => {
            for i in 0..depth {
                guards.push(ScopeBuilder::new(&format!("d{i}")).enter().expect("scope"));
            }
            pairs(&TRACK, n, layout)
        }
        other => {
            eprintln!("unknown VARIANT `{other}`; {usage}");
            std::process::exit(2);
        }
    }
    while let Some(g) = guards.pop() {
        drop(g);
    }
}
