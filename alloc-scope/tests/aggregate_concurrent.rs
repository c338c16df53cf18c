//! Many threads closing scopes of one name at once: the name's aggregate
//! counts every scope and sums every peak exactly, and its quantiles stay
//! within 1% of the exact ones.

#![cfg(not(loom))]

use alloc_scope::{aggregate, charge_device_alloc, charge_device_free, scope};

const THREADS: u64 = 8;
const PER_THREAD: u64 = 2_000;
const NAME: &str = "concurrent-close";

/// The device peak of scope `i` of thread `t`: distinct, from 1 KiB to a
/// few MiB.
fn peak(t: u64, i: u64) -> u64 {
    1024 + (t * PER_THREAD + i) * 997
}

#[test]
fn count_and_sum_are_exact_when_threads_close_scopes_of_one_name_together() {
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let g = scope(NAME);
                    let v = peak(t, i);
                    let owner = charge_device_alloc(v);
                    charge_device_free(owner, v);
                    drop(g);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let a = aggregate(NAME).expect("scopes of the name closed");
    let n = THREADS * PER_THREAD;
    let mut exact: Vec<u64> = (0..THREADS)
        .flat_map(|t| (0..PER_THREAD).map(move |i| peak(t, i)))
        .collect();
    exact.sort_unstable();
    assert_eq!(a.closed, n);
    let d = &a.device_peak;
    assert_eq!(d.count, n);
    assert_eq!(d.sum, exact.iter().sum::<u64>());
    assert_eq!(d.buckets.iter().map(|b| b.count).sum::<u64>(), n);
    assert_eq!((d.min, d.max), (exact[0], exact[exact.len() - 1]));
    for q in [0.01, 0.5, 0.99] {
        let rank = ((q * n as f64).ceil() as usize).max(1);
        let (want, got) = (exact[rank - 1], d.quantile(q));
        assert!(
            got.abs_diff(want) * 100 <= want,
            "q {q}: estimate {got}, exact {want}"
        );
    }
}
