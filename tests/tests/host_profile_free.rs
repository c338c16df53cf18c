//! The in-use heap profile stays exact when sampled blocks are freed or
//! reallocated on other threads, in both owner placements (by class and the
//! header for alignments above 8). With the mean interval at 1 byte every
//! block of ≥ 64 bytes is sampled (p = 1 − e^−64), so the profile's count must
//! equal the number of live blocks exactly.

#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

use std::alloc::{Layout, alloc, dealloc, realloc};

use alloc_host::profile::{Filter, Kind, profile_filtered};

fn live_in(name: &str) -> (f64, f64) {
    let p = profile_filtered(Kind::InUse, Filter::Name(name.to_string()));
    (p.total_count(), p.total_bytes())
}

struct Block(*mut u8, Layout);
// SAFETY: a raw heap block handed to another thread to free; nothing else uses it.
unsafe impl Send for Block {}

#[test]
fn frees_on_other_threads_leave_the_in_use_profile_exact() {
    alloc_host::set_sample_rate(1);
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
