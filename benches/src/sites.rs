//! The known-sites program of the heap profile's accuracy check
//! (`profile_sites`, `profile_sites_dhat`): three functions allocate 60 %,
//! 30 % and 10 % of the bytes (blocks of 1–64 KiB, drawn from one range, so
//! bytes follow the 6:3:1 call counts); every other block is kept live, half
//! of those are freed on another thread at the end of each round.

use std::hint::black_box;

/// Bytes allocated per site, and bytes still live per site at the end.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exact {
    /// Allocated by site (60 %, 30 %, 10 %).
    pub allocated: [u64; 3],
    /// In use at the end, by site.
    pub in_use: [u64; 3],
}

/// The three sites' names, as symbolized (`alloc_benches::sites::site_*`).
pub const SITES: [&str; 3] = ["site_sixty", "site_thirty", "site_ten"];

/// The 60 % site.
#[inline(never)]
pub fn site_sixty(n: usize) -> Vec<u8> {
    // A distinct constant each, so that the linker cannot fold the three.
    black_box(1u8);
    black_box(Vec::with_capacity(n))
}

/// The 30 % site.
#[inline(never)]
pub fn site_thirty(n: usize) -> Vec<u8> {
    // A distinct constant each, so that the linker cannot fold the three.
    black_box(2u8);
    black_box(Vec::with_capacity(n))
}

/// The 10 % site.
#[inline(never)]
pub fn site_ten(n: usize) -> Vec<u8> {
    // A distinct constant each, so that the linker cannot fold the three.
    black_box(3u8);
    black_box(Vec::with_capacity(n))
}

/// Runs the program: `total` bytes allocated in all; returns the exact
/// figures and the blocks still live (the caller reads its profile, then
/// drops them). One block in 8 is kept to the end, one in 8 is freed on
/// another thread (every 4 MiB of them).
pub fn run(total: u64) -> (Exact, Vec<Vec<u8>>) {
    let mut e = Exact::default();
    let mut keep: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut give: Vec<Vec<u8>> = Vec::new();
    let mut given = 0u64;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut done = 0u64;
    while done < total {
        for (site, n) in [(0usize, 6), (1, 3), (2, 1)] {
            for _ in 0..n {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let size = 1024 + (rng % (63 * 1024)) as usize;
                let v = match site {
                    0 => site_sixty(size),
                    1 => site_thirty(size),
                    _ => site_ten(size),
                };
                e.allocated[site] += size as u64;
                done += size as u64;
                match (rng >> 20) % 8 {
                    0 => keep.push((site, v)),
                    1 => {
                        given += size as u64;
                        give.push(v);
                    }
                    _ => drop(v),
                }
            }
        }
        if given > 4 << 20 || done >= total {
            let g = std::mem::take(&mut give);
            std::thread::spawn(move || drop(black_box(g)))
                .join()
                .unwrap();
            given = 0;
        }
    }
    let mut blocks = Vec::with_capacity(keep.len());
    for (site, v) in keep {
        e.in_use[site] += v.capacity() as u64;
        blocks.push(v);
    }
    (e, blocks)
}

/// Shares of `x` in percent.
pub fn shares(x: [f64; 3]) -> [f64; 3] {
    let t: f64 = x.iter().sum();
    x.map(|v| if t > 0.0 { 100.0 * v / t } else { 0.0 })
}
