//! What the per-name distributions cost in memory: the table is static
//! (.bss), so its pages are resident only once touched. Closing scopes under
//! every one of the [`MAX_NAMES`] names, with device peaks spread like a
//! server's requests, makes resident only the pages those peaks touch.
//! Alone in its binary: it reads the process's resident size.

#![cfg(not(loom))]

use alloc_scope::{
    MAX_NAMES, SKETCH_BYTES, aggregates, charge_device_alloc, charge_device_free, scope,
};

/// Resident bytes of this process (Linux; `None` elsewhere).
fn rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[test]
fn every_name_in_use_keeps_resident_memory_to_the_pages_its_peaks_touch() {
    let names: Vec<String> = (0..MAX_NAMES).map(|i| format!("mem-{i}")).collect();
    let close_all = |name_of: &dyn Fn(usize) -> String| {
        for i in 0..MAX_NAMES {
            // 50 scopes per name, peaks 700 KiB..5 MiB
            for j in 0..50u64 {
                let g = scope(&name_of(i));
                let v = (700 << 10) + ((i as u64 * 50 + j) * 7919 % (4400 << 10));
                let owner = charge_device_alloc(v);
                charge_device_free(owner, v);
                drop(g);
            }
        }
    };
    // The same scopes under one name first: the registry's own records (and
    // the thread's state) become resident here, not below.
    close_all(&|_| "mem-warm-up".to_owned());
    let before = rss();
    close_all(&|i| names[i].clone());
    let after = rss();
    let a = aggregates();
    assert_eq!(
        a.iter().filter(|a| a.name.starts_with("mem-")).count(),
        MAX_NAMES
    );
    let table = (MAX_NAMES + 1) * 2 * SKETCH_BYTES;
    println!(
        "per distribution {SKETCH_BYTES} B; per name 2 x {SKETCH_BYTES} B; table of {} names: {} B ({:.1} MiB) of .bss",
        MAX_NAMES + 1,
        table,
        table as f64 / (1 << 20) as f64
    );
    if let (Some(b), Some(a)) = (before, after) {
        let grown = a.saturating_sub(b);
        println!(
            "resident before {b} B, after {a} B: +{grown} B ({:.1} MiB, {:.0} B per name) for {} names with peaks 700 KiB..5 MiB",
            grown as f64 / (1 << 20) as f64,
            grown as f64 / MAX_NAMES as f64,
            MAX_NAMES
        );
        // peaks within 700 KiB..5 MiB fall in 3 powers of two: 192 buckets,
        // 1.5 KiB, touching at most 2 pages of each device distribution, and
        // every host peak (0) the first page of each host distribution
        assert!(
            grown < table as u64 / 2,
            "{grown} B resident for {table} B of table: untouched pages became resident"
        );
    }
}
