//! `alloc_zeroed` is forwarded: a 1 GiB `vec![0u8; n]` stays lazily zeroed (its
//! pages are not touched), as under bare mimalloc.

use alloc_host::{TrackingAllocator, scope};

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

#[test]
fn a_gigabyte_of_zeroes_is_not_touched() {
    let g = scope("zeroed");
    let before = rss_bytes();
    let v = std::hint::black_box(vec![0u8; 1 << 30]);
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "RSS grew by {grown} B: zeroed pages were touched"
    );
    assert_eq!(v[(1 << 30) - 1], 0);
    assert_eq!(g.stats().live_bytes, 1 << 30);
    drop(v);
    assert_eq!(g.stats().live_bytes, 0);
}
