//! The in-use heap profile stays exact when sampled blocks are freed or
//! reallocated on other threads, in both owner placements (by class and the
//! header for alignments above 8). With the mean interval at 1 byte every
//! block of ≥ 64 bytes is sampled (p = 1 − e^−64), so the profile's count must
//! equal the number of live blocks exactly. Frees and reallocs in the owner's
//! own scope on the allocating thread (where an unsampled block takes the
//! fast path) leave it exact too.

#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

use std::alloc::{Layout, alloc, dealloc, realloc};

use alloc_host::profile::{Filter, Kind, profile_filtered};

fn live_in(name: &str) -> (f64, f64) {
    // The filter's own string is charged nowhere, so that read inside the
    // scope it is not one of the scope's samples.
    let name = alloc_host::untracked(|| name.to_string());
    let p = profile_filtered(Kind::InUse, Filter::Name(name));
    (p.total_count(), p.total_bytes())
}

struct Block(*mut u8, Layout);
// SAFETY: a raw heap block handed to another thread to free; nothing else uses it.
unsafe impl Send for Block {}

/// Every placement's layout for block `i`: slack, side table, large; align
/// 8 and 64 (header).
fn layout_of(i: usize) -> Layout {
    let size = [64usize, 200, 4096, 40_000, 300_000][i % 5];
    let align = if i.is_multiple_of(3) { 64 } else { 8 };
    Layout::from_size_align(size, align).unwrap()
}

/// Allocates `blocks` with every placement's layout ([`layout_of`]).
fn alloc_each(blocks: &mut Vec<Block>, n: usize) {
    for i in 0..n {
        let l = layout_of(i);
        // SAFETY: non-zero size layout.
        let p = unsafe { alloc(l) };
        assert!(!p.is_null());
        blocks.push(Block(p, l));
    }
}

/// Reallocates block `i` of `blocks` to `new(i, size)` bytes where it is
/// `Some`.
fn realloc_each(blocks: &mut [Block], new: impl Fn(usize, usize) -> Option<usize>) {
    for (i, b) in blocks.iter_mut().enumerate() {
        if let Some(new) = new(i, b.1.size()) {
            // SAFETY: a live block of this layout; non-zero new size.
            let p = unsafe { realloc(b.0, b.1, new) };
            assert!(!p.is_null());
            *b = Block(p, Layout::from_size_align(new, b.1.align()).unwrap());
        }
    }
}

/// Checks that `name`'s in-use profile holds each of `blocks` once, frees
/// them all in the scope `g` (named `name`), and checks that the profile is
/// then empty (`removed` says which frees) and that each free was charged
/// exactly once.
fn free_each_in_scope(
    name: &str,
    g: &alloc_host::ScopeGuard,
    blocks: &mut Vec<Block>,
    removed: &str,
) {
    let (count, _) = live_in(name);
    assert_eq!(
        count.round() as usize,
        blocks.len(),
        "every live block sampled once"
    );
    for b in blocks.drain(..) {
        // SAFETY: allocated (or reallocated) with this layout, freed once,
        // in its scope.
        unsafe { dealloc(b.0, b.1) };
    }
    assert_eq!(live_in(name), (0.0, 0.0), "{removed}");
    let st = g.stats();
    assert_eq!(
        (st.live_bytes, st.live_allocations, st.frees),
        (0, 0, st.allocations),
        "each free charged exactly once"
    );
}

/// Blocks allocated, reallocated and freed inside their owner's scope on one
/// thread: the free and the realloc of a sampled block must leave the fast
/// path (its owner word never equals the thread's fast-path word) and the
/// in-use profile.
fn own_scope_round_trip() {
    let name = "own-scope-free";
    // Outside the scope: only the blocks themselves are its samples.
    let mut blocks = Vec::with_capacity(300);
    let g = alloc_host::scope(name);
    alloc_each(&mut blocks, 300);
    realloc_each(&mut blocks, |i, size| {
        (i % 2 == 1).then_some(size + 8 * (i % 7) + 8)
    });
    free_each_in_scope(name, &g, &mut blocks, "frees in the owner's scope removed");
}

/// Blocks allocated while sampling is off (unsampled: their owner is the
/// thread's fast-path word), then reallocated with it on: each realloc's
/// fast path takes the sample, and the mark it keeps must send the block's
/// free out of the fast path and out of the in-use profile.
fn realloc_sampled_on_the_fast_path() {
    let name = "fast-realloc-sampled";
    let mut blocks = Vec::with_capacity(300);
    let g = alloc_host::scope(name);
    alloc_host::set_sample_rate(0);
    alloc_each(&mut blocks, 300);
    assert_eq!(live_in(name), (0.0, 0.0), "nothing sampled while off");
    alloc_host::set_sample_rate(1);
    realloc_each(&mut blocks, |i, size| Some(size + 8 * (i % 5) + 64));
    free_each_in_scope(
        name,
        &g,
        &mut blocks,
        "frees of blocks sampled by their realloc removed",
    );
}

#[test]
fn frees_on_other_threads_leave_the_in_use_profile_exact() {
    realloc_sampled_on_the_fast_path();
    alloc_host::set_sample_rate(1);
    own_scope_round_trip();
    let name = "xthread-free";
    let mut blocks = Vec::with_capacity(600);
    {
        let _g = alloc_host::scope(name);
        for i in 0..600usize {
            // Sizes in every placement: slack, side table, large; align 8 and 64 (header).
            let size = [64usize, 200, 4096, 40_000, 300_000][i % 5];
            let align = if i % 3 == 0 { 64 } else { 8 };
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size layout.
            let p = unsafe { alloc(l) };
            assert!(!p.is_null());
            blocks.push(Block(p, l));
        }
        // Reallocate a third of them (growing and shrinking), still in the scope.
        for (i, b) in blocks.iter_mut().enumerate() {
            if i % 3 == 1 {
                let new = if i % 2 == 0 {
                    b.1.size() * 3
                } else {
                    (b.1.size() / 2).max(64)
                };
                // SAFETY: a live block of this layout; non-zero new size.
                let p = unsafe { realloc(b.0, b.1, new) };
                assert!(!p.is_null());
                *b = Block(p, Layout::from_size_align(new, b.1.align()).unwrap());
            }
        }
    }
    let (count, bytes) = live_in(name);
    let want_bytes: usize = blocks.iter().map(|b| b.1.size()).sum();
    assert_eq!(
        count.round() as usize,
        blocks.len(),
        "every live block sampled once"
    );
    assert!(
        (bytes - want_bytes as f64).abs() < 1.0,
        "{bytes} vs {want_bytes}"
    );

    // Free two thirds on other threads, the rest here.
    let keep: Vec<Block> = blocks.drain(..200).collect();
    let mut handles = Vec::new();
    while !blocks.is_empty() {
        let chunk: Vec<Block> = blocks.drain(..blocks.len().min(100)).collect();
        handles.push(std::thread::spawn(move || {
            for b in chunk {
                // SAFETY: allocated above with this layout, freed once.
                unsafe { dealloc(b.0, b.1) };
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let (count, bytes) = live_in(name);
    let want: usize = keep.iter().map(|b| b.1.size()).sum();
    assert_eq!(
        count.round() as usize,
        keep.len(),
        "frees on other threads removed"
    );
    assert!((bytes - want as f64).abs() < 1.0, "{bytes} vs {want}");
    for b in keep {
        // SAFETY: as above.
        unsafe { dealloc(b.0, b.1) };
    }
    assert_eq!(live_in(name), (0.0, 0.0));
    // The allocated profile keeps them all.
    let all = profile_filtered(Kind::Allocated, Filter::Name(name.to_string()));
    assert!(all.total_count().round() as usize >= 600 + 200);
    alloc_host::set_sample_rate(0);
}
