//! Accuracy of the sampled heap profile at the default rate (512 KiB) on a
//! program with known sites: three functions take 60 %, 30 % and 10 % of the
//! bytes; the profile's shares must be within ±3 points of the exact ones.
//! Also: the pprof file decodes (a reader built on prost, here) into
//! well-formed tables that name the sites.
//!
//! Standard error of a share `q` estimated from `B` bytes sampled at mean `m`:
//! each byte of a block of `s` bytes contributes a variance of `m·(1−p)/p·s/m`
//! with `p = 1 − e^(−s/m)`, at most `m` (small blocks); so
//! `SE(q) ≤ √(q(1−q)·m/B)`. Allocated profile: B = 4 GiB of 1–64 KiB blocks
//! → SE ≤ 0.54 points for q = 0.6 (±3 points is 5.5 SE). In-use profile:
//! 512 MiB live in 1–3 MiB blocks (variance per byte ≤ 0.16·m) → SE ≤ 0.5
//! points. Frame pointers: these functions are built without optimisation,
//! which keeps them on x86-64 and aarch64.

#[global_allocator]
static A: alloc_host::TrackingAllocator = alloc_host::TrackingAllocator::new();

use std::alloc::{Layout, alloc, dealloc};
use std::io::Read as _;

use alloc_host::profile::{DEFAULT_MEAN, Filter, HeapProfile, Kind, profile_filtered};

struct Block(*mut u8, Layout);
// SAFETY: a raw heap block handed to another thread to free; nothing else uses it.
unsafe impl Send for Block {}

/// Allocates in the calling function (a macro, so the site is the caller).
macro_rules! get {
    ($size:expr) => {{
        let l = Layout::from_size_align($size, 8).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { alloc(l) };
        assert!(!p.is_null());
        Block(std::hint::black_box(p), l)
    }};
}

fn put(b: Block) {
    // SAFETY: allocated by `get` with this layout, freed once.
    unsafe { dealloc(b.0, b.1) }
}

#[inline(never)]
fn site_sixty(size: usize) -> Block {
    get!(size)
}

#[inline(never)]
fn site_thirty(size: usize) -> Block {
    get!(size)
}

#[inline(never)]
fn site_ten(size: usize) -> Block {
    get!(size)
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, lo: usize, hi: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + ((self.0 >> 33) as usize % (hi - lo))
    }
}

/// One round: 6 blocks at the 60 % site, 3 at the 30 %, 1 at the 10 % (sizes
/// drawn from one range, so bytes follow the counts); exact bytes per site.
fn round(
    rng: &mut Rng,
    lo: usize,
    hi: usize,
    out: &mut Vec<(usize, Block)>,
    exact: &mut [usize; 3],
) {
    for (site, n) in [(0usize, 6), (1, 3), (2, 1)] {
        for _ in 0..n {
            let s = rng.below(lo, hi);
            let b = match site {
                0 => site_sixty(s),
                1 => site_thirty(s),
                _ => site_ten(s),
            };
            exact[site] += s;
            out.push((site, b));
        }
    }
}

fn shares(p: &HeapProfile) -> [f64; 3] {
    let sites = p.top_sites(50);
    let total: f64 = sites.iter().map(|s| s.bytes).sum();
    let find = |name: &str| {
        sites
            .iter()
            .filter(|s| s.function.ends_with(name))
            .map(|s| s.bytes)
            .sum::<f64>()
            / total
    };
    [find("site_sixty"), find("site_thirty"), find("site_ten")]
}

fn check(what: &str, got: [f64; 3], exact: [usize; 3], p: &HeapProfile) {
    let t: usize = exact.iter().sum();
    for i in 0..3 {
        let want = exact[i] as f64 / t as f64;
        assert!(
            (got[i] - want).abs() <= 0.03,
            "{what}: site {i} share {:.4} vs exact {want:.4}\n{}",
            got[i],
            p.to_text(10)
        );
    }
    eprintln!(
        "{what}: shares {:.4} {:.4} {:.4}, exact {:.4} {:.4} {:.4}",
        got[0],
        got[1],
        got[2],
        exact[0] as f64 / t as f64,
        exact[1] as f64 / t as f64,
        exact[2] as f64 / t as f64
    );
}

#[test]
fn allocated_shares_within_three_points() {
    alloc_host::set_sample_rate(DEFAULT_MEAN);
    let name = "accuracy-alloc";
    let mut exact = [0usize; 3];
    let mut rng = Rng(42);
    let mut v = Vec::with_capacity(16);
    {
        let _g = alloc_host::scope(name);
        let mut total = 0usize;
        while total < 4 << 30 {
            round(&mut rng, 1024, 64 * 1024, &mut v, &mut exact);
            for (_, b) in v.drain(..) {
                total += b.1.size();
                put(b);
            }
        }
    }
    let p = profile_filtered(Kind::Allocated, Filter::Name(name.into()));
    check("allocated", shares(&p), exact, &p);
    // The estimate of total bytes, too: SE ≤ √(m·B), 1.1 % of 4 GiB; within 5 SE.
    let t: usize = exact.iter().sum();
    let se = ((DEFAULT_MEAN as f64) * t as f64).sqrt();
    assert!(
        (p.total_bytes() - t as f64).abs() < 5.0 * se,
        "{} vs {t}, SE {se}",
        p.total_bytes()
    );
}

#[test]
fn in_use_shares_within_three_points_with_frees_on_other_threads() {
    alloc_host::set_sample_rate(DEFAULT_MEAN);
    let name = "accuracy-inuse";
    let mut exact = [0usize; 3];
    let mut rng = Rng(7);
    let mut blocks = Vec::with_capacity(1024);
    {
        let _g = alloc_host::scope(name);
        let mut all = [0usize; 3];
        while all.iter().sum::<usize>() < 1 << 30 {
            round(&mut rng, 1 << 20, 3 << 20, &mut blocks, &mut all);
        }
    }
    // Half of the blocks (drawn at random) are freed on another thread.
    let mut keep = Vec::with_capacity(blocks.len());
    let mut give = Vec::with_capacity(blocks.len());
    for (site, b) in blocks {
        if rng.below(0, 2) == 0 {
            exact[site] += b.1.size();
            keep.push(b);
        } else {
            give.push(b);
        }
    }
    let t = std::thread::spawn(move || give.into_iter().for_each(put));
    t.join().unwrap();
    let p = profile_filtered(Kind::InUse, Filter::Name(name.into()));
    check("in use", shares(&p), exact, &p);
    keep.into_iter().for_each(put);
    let p = profile_filtered(Kind::InUse, Filter::Name(name.into()));
    assert_eq!(p.total_bytes(), 0.0, "all freed: nothing in use");
}

#[test]
fn pprof_decodes_and_names_the_sites() {
    alloc_host::set_sample_rate(DEFAULT_MEAN);
    let name = "pprof-sites";
    let mut rng = Rng(3);
    let mut v = Vec::with_capacity(16);
    {
        let _g = alloc_host::scope(name);
        for _ in 0..2000 {
            round(&mut rng, 100_000, 400_000, &mut v, &mut [0; 3]);
            v.drain(..).for_each(|(_, b)| put(b));
        }
    }
    let p = profile_filtered(Kind::Allocated, Filter::Name(name.into()));
    let gz = p.to_pprof();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    let d: alloc_host::profile::proto::Profile = prost::Message::decode(&raw[..]).unwrap();
    let st = &d.string_table;
    assert_eq!(st[0], "", "string 0 is empty");
    let s = |i: i64| st[usize::try_from(i).unwrap()].as_str();
    let types: Vec<_> = d
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(
        types,
        [("alloc_objects", "count"), ("alloc_space", "bytes")]
    );
    assert_eq!(d.period, DEFAULT_MEAN as i64);
    assert!(!d.sample.is_empty());
    let loc_ids: std::collections::HashSet<u64> = d.location.iter().map(|l| l.id).collect();
    let fn_ids: std::collections::HashSet<u64> = d.function.iter().map(|f| f.id).collect();
    for smp in &d.sample {
        assert_eq!(smp.value.len(), 2);
        assert!(smp.location_id.iter().all(|id| loc_ids.contains(id)));
        assert!(
            smp.label
                .iter()
                .any(|l| s(l.key) == "scope" && s(l.str) == name)
        );
    }
    for l in &d.location {
        assert!(!l.line.is_empty() && l.line.iter().all(|x| fn_ids.contains(&x.function_id)));
    }
    let names: Vec<&str> = d.function.iter().map(|f| s(f.name)).collect();
    for site in [
        "site_sixty",
        "site_thirty",
        "site_ten",
        "pprof_decodes_and_names_the_sites",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(site)),
            "{site} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n.starts_with("alloc_host::profile")),
        "allocator frames dropped"
    );
    let svg = p.to_flamegraph_svg();
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("site_sixty"));
    assert!(p.to_text(5).contains("site_sixty"));
}
