//! The programs timed by the whole-process comparison, selected by name on the
//! command line of every `wp_*` binary (`wp_VARIANT [THREADS] [WORKLOAD]`), each
//! run on `threads` threads at once (each thread does the full work):
//!
//! - `mixed` (the default): small alloc/free churn, Vec growth, a 1e6-entry
//!   BTreeMap and a 1e6-entry HashMap.
//! - `pow2`: churn of power-of-two sizes 16 B–4 KiB in a ring of live blocks,
//!   plus `Vec`s grown by `push` from empty (small ones to large ones).
//! - `parse`: a real program from crates.io crates: every `.rs` file of a fixed
//!   list of crate sources is parsed with `syn`, summarised, serialised with
//!   `serde_json` and parsed back into a `serde_json::Value`; each file is one
//!   request (a scope of its own when scoping is on).
//! - `hold`: 4 M boxes of 16–64 B and 2 M short strings (1–40 B) live at once,
//!   then dropped; the figure is the peak RSS.
//! - `hold-class=SIZE`: 1 thread's worth of blocks of exactly SIZE bytes
//!   (alignment 8) live at once; prints `metric rss_per_block_B` (resident
//!   growth measured in-process divided by the block count).
//! - `scopes`: 10^6 requests in a row, empty then with one 64 B allocation each;
//!   prints `metric scopes_per_s_empty` and `metric scopes_per_s_alloc`.
//! - `scopes-leave-one`: 10^6 requests in a row, each leaving one 16 B block
//!   behind (a server whose requests cache something), so every closed scope
//!   still owns memory; prints `metric rss_per_scope_B` (resident growth per
//!   request, measured in-process, the array of kept pointers allocated and
//!   touched before the first reading) and `metric leave_one_per_s`.
//!
//! A binary prints the checksum on the first stdout line, then any
//! `metric NAME VALUE` lines (read by `whole_process.py`).

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How the program should be charged when the tracking allocator is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoping {
    /// No scope opened (charged to the process root).
    None,
    /// One scope opened in `main` and entered on every worker thread, and a
    /// fresh scope per request inside it.
    Scope,
}

/// Where a workload's threads and requests are charged: the hooks each
/// whole-process variant provides.
pub trait Scoper: Sync {
    /// Runs a worker thread's whole work (`t` is the thread index).
    fn thread<R>(&self, t: usize, f: impl FnOnce() -> R) -> R;
    /// Runs one request.
    fn request<R>(&self, f: impl FnOnce() -> R) -> R;
}

/// No scopes at all (peers, and alloc-host charged to the root).
pub struct NoScopes;

impl Scoper for NoScopes {
    fn thread<R>(&self, _t: usize, f: impl FnOnce() -> R) -> R {
        f()
    }
    fn request<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// alloc-host scopes: one `workload` scope entered on every thread, and a
/// fresh `request` scope (`alloc_host::scope`) per request inside it.
pub struct HostScopes(alloc_host::ScopeHandle);

impl HostScopes {
    /// Opens the `workload` scope.
    pub fn new() -> Self {
        HostScopes(
            alloc_host::ScopeBuilder::new("workload")
                .build()
                .expect("the workload scope"),
        )
    }
}

impl Default for HostScopes {
    fn default() -> Self {
        Self::new()
    }
}

impl Scoper for HostScopes {
    fn thread<R>(&self, _t: usize, f: impl FnOnce() -> R) -> R {
        let _in = self.0.enter();
        f()
    }
    fn request<R>(&self, f: impl FnOnce() -> R) -> R {
        let _request = alloc_host::scope("request");
        f()
    }
}

/// A workload chosen on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// The original program ([`program`]).
    Mixed,
    /// Power-of-two churn and `Vec` growth ([`pow2`]).
    Pow2,
    /// syn + serde_json over real sources ([`parse`]).
    Parse,
    /// Millions of small blocks and strings live at once ([`hold`]).
    Hold,
    /// Blocks of one exact size live at once ([`hold_class`]).
    HoldClass(usize),
    /// 10^6 requests in a row ([`scopes`]).
    Scopes,
    /// 10^6 requests, each leaving one block behind ([`scopes_leave_one`]).
    ScopesLeaveOne,
}

impl Workload {
    /// Parses a workload name (`mixed`, `pow2`, `parse`, `hold`,
    /// `hold-class=SIZE`, `scopes`, `scopes-leave-one`).
    pub fn parse_name(s: &str) -> Option<Workload> {
        Some(match s {
            "mixed" => Workload::Mixed,
            "pow2" => Workload::Pow2,
            "parse" => Workload::Parse,
            "hold" => Workload::Hold,
            "scopes" => Workload::Scopes,
            "scopes-leave-one" => Workload::ScopesLeaveOne,
            _ => Workload::HoldClass(s.strip_prefix("hold-class=")?.parse().ok()?),
        })
    }
}

/// What a run produced: a checksum (printed so no work is optimised away) and
/// named figures.
#[derive(Debug, Default)]
pub struct Outcome {
    /// XOR of the threads' checksums.
    pub sum: u64,
    /// `(name, value)` figures, printed as `metric NAME VALUE`.
    pub metrics: Vec<(String, f64)>,
}

impl Outcome {
    /// Prints the checksum, then one `metric NAME VALUE` line per figure.
    pub fn print(&self) {
        println!("{}", self.sum);
        for (k, v) in &self.metrics {
            println!("metric {k} {v}");
        }
    }
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

/// The `mixed` program on one thread.
pub fn program(seed: u64) -> u64 {
    let a = churn(3_000_000, seed);
    let b = vec_growth(20, 500_000);
    let c = maps(1_000_000, seed);
    black_box(a ^ b ^ c)
}

/// Power-of-two churn: `iterations` blocks of a random size from
/// {16, 32, ..., 4096} (capacity exactly that size; the first 8 bytes written),
/// replacing one of a ring of 4,096 live blocks each time.
pub fn pow2_churn(iterations: usize, seed: u64) -> u64 {
    let mut rng = seed | 1;
    let mut ring: Vec<Vec<u8>> = (0..4096).map(|_| Vec::new()).collect();
    let mut sum = 0u64;
    for i in 0..iterations {
        let size = 16usize << (xorshift(&mut rng) % 9);
        let mut v = Vec::with_capacity(size);
        v.extend_from_slice(&(i as u64).to_le_bytes());
        sum = sum.wrapping_add(v.capacity() as u64 ^ v[1] as u64);
        ring[i % 4096] = v;
    }
    sum
}

/// `Vec` growth by `push` from empty: 400,000 small `Vec<u32>` grown to a
/// random 2–1,024 elements, and `Vec<u64>`s grown to 10^4, 10^5 and 10^6
/// elements (eight of each).
pub fn push_growth(seed: u64) -> u64 {
    let mut rng = seed | 1;
    let mut sum = 0u64;
    for _ in 0..400_000 {
        let len = 2usize << (xorshift(&mut rng) % 10);
        let mut v: Vec<u32> = Vec::new();
        for i in 0..len {
            v.push(i as u32);
        }
        sum = sum.wrapping_add(v[len / 2] as u64);
    }
    for r in 0..24 {
        let len = [10_000, 100_000, 1_000_000][r % 3];
        let mut v: Vec<u64> = Vec::new();
        for i in 0..len {
            v.push((i ^ r) as u64);
        }
        sum = sum.wrapping_add(v[len / 3]);
    }
    sum
}

/// The `pow2` program on one thread.
pub fn pow2(seed: u64) -> u64 {
    black_box(pow2_churn(6_000_000, seed) ^ push_growth(seed))
}

/// The crates whose sources `parse` reads, by directory-name prefix in the
/// cargo registry (all `.rs` files under `src/`, sorted by path).
pub const PARSE_CRATES: [&str; 3] = ["syn-2.", "serde_json-1.", "regex-syntax-0.8."];

/// The `.rs` files of [`PARSE_CRATES`] (the newest directory of each, by name)
/// under `$CARGO_HOME/registry/src/*/` (default `~/.cargo`), or of the
/// directories in `WP_PARSE_DIRS` (colon-separated); sorted by path.
pub fn parse_sources() -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = match std::env::var_os("WP_PARSE_DIRS") {
        Some(d) => std::env::split_paths(&d).collect(),
        None => {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
                .expect("CARGO_HOME or HOME");
            let mut crates: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))
                .expect("the cargo registry sources")
                .flatten()
                .flat_map(|index| {
                    std::fs::read_dir(index.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                })
                .map(|e| e.path())
                .collect();
            crates.sort();
            PARSE_CRATES
                .iter()
                .map(|prefix| {
                    crates
                        .iter()
                        .rfind(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with(prefix))
                        })
                        .unwrap_or_else(|| panic!("no {prefix}* crate in the registry"))
                        .join("src")
                })
                .collect()
        }
    };
    let mut files = Vec::new();
    let mut stack = dirs;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("a source directory").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Reads every file of [`parse_sources`] into memory.
pub fn load_sources() -> Vec<String> {
    parse_sources()
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("a source file"))
        .collect()
}

#[derive(serde::Serialize)]
struct ItemSummary {
    kind: &'static str,
    name: String,
    attrs: usize,
    tokens: usize,
    children: Vec<ItemSummary>,
}

fn summarise(item: &syn::Item) -> ItemSummary {
    use syn::Item;
    let (kind, name, attrs, children): (_, String, _, Vec<ItemSummary>) = match item {
        Item::Fn(f) => ("fn", f.sig.ident.to_string(), f.attrs.len(), Vec::new()),
        Item::Struct(s) => ("struct", s.ident.to_string(), s.attrs.len(), Vec::new()),
        Item::Enum(e) => ("enum", e.ident.to_string(), e.attrs.len(), Vec::new()),
        Item::Trait(t) => ("trait", t.ident.to_string(), t.attrs.len(), Vec::new()),
        Item::Const(c) => ("const", c.ident.to_string(), c.attrs.len(), Vec::new()),
        Item::Static(s) => ("static", s.ident.to_string(), s.attrs.len(), Vec::new()),
        Item::Type(t) => ("type", t.ident.to_string(), t.attrs.len(), Vec::new()),
        Item::Use(u) => ("use", String::new(), u.attrs.len(), Vec::new()),
        Item::Macro(m) => ("macro", String::new(), m.attrs.len(), Vec::new()),
        Item::Impl(i) => ("impl", String::new(), i.attrs.len(), Vec::new()),
        Item::Mod(m) => (
            "mod",
            m.ident.to_string(),
            m.attrs.len(),
            m.content
                .as_ref()
                .map(|(_, items)| items.iter().map(summarise).collect())
                .unwrap_or_default(),
        ),
        _ => ("other", String::new(), 0, Vec::new()),
    };
    let tokens = match item {
        Item::Fn(f) => f.block.stmts.len(),
        Item::Impl(i) => i.items.len(),
        Item::Struct(s) => s.fields.len(),
        Item::Enum(e) => e.variants.len(),
        Item::Trait(t) => t.items.len(),
        _ => 0,
    };
    ItemSummary {
        kind,
        name,
        attrs,
        tokens,
        children,
    }
}

/// One request of `parse`: parse `src` with syn, summarise its items, write the
/// summary as JSON and parse that back into a `serde_json::Value`.
pub fn parse_request(src: &str) -> u64 {
    let Ok(file) = syn::parse_file(src) else {
        return 1;
    };
    let summary: Vec<ItemSummary> = file.items.iter().map(summarise).collect();
    let json = serde_json::to_string(&summary).expect("a summary serialises");
    let value: serde_json::Value = serde_json::from_str(&json).expect("our own JSON parses");
    let n = value.as_array().map_or(0, Vec::len) as u64;
    n.wrapping_mul(31).wrapping_add(json.len() as u64)
}

/// The `parse` program on one thread: `passes` passes over `sources`, each file
/// one request.
pub fn parse<S: Scoper>(s: &S, sources: &[String], passes: usize) -> u64 {
    let mut sum = 0u64;
    for _ in 0..passes {
        for src in sources {
            sum = sum.wrapping_add(s.request(|| parse_request(src)));
        }
    }
    black_box(sum)
}

/// The `hold` program on one thread: 4 M boxes of 16–64 B and 2 M strings of
/// 1–40 B (cut from formatted words and numbers, exact capacity), all live at
/// once, then dropped.
pub fn hold(seed: u64) -> u64 {
    const WORDS: [&str; 8] = [
        "alpha", "request", "tensor", "scope", "memory", "block", "gamma", "delta",
    ];
    let mut rng = seed | 1;
    let boxes: Vec<Box<[u8]>> = (0..4_000_000u32)
        .map(|i| {
            let size = 16 + (xorshift(&mut rng) % 49) as usize;
            let mut b = vec![0u8; size].into_boxed_slice();
            b[0] = i as u8;
            b
        })
        .collect();
    let strings: Vec<String> = (0..2_000_000u32)
        .map(|i| {
            let r = xorshift(&mut rng);
            let len = 1 + (r % 40) as usize;
            let full = format!("{}-{}-{}", WORDS[(r >> 8) as usize % 8], i, r >> 20);
            full[..len.min(full.len())].to_string()
        })
        .collect();
    let sum = boxes
        .iter()
        .map(|b| b.len() as u64 + b[0] as u64)
        .sum::<u64>()
        + strings.iter().map(|s| s.len() as u64).sum::<u64>();
    drop(strings);
    drop(boxes);
    black_box(sum)
}

/// The process's resident set now, in bytes (`/proc/self/statm`; 0 where
/// unavailable).
pub fn current_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Blocks held by `hold-class=SIZE`: 256 MiB worth, between 65,536 and 4 M.
pub fn hold_class_count(size: usize) -> usize {
    ((256usize << 20) / size.max(1)).clamp(1 << 16, 4 << 20)
}

/// The `hold-class=SIZE` program: [`hold_class_count`] blocks of exactly
/// `size` bytes at alignment 8, each written, all live at once. Returns the
/// checksum and the resident growth per block in bytes (the pointer array is
/// allocated and touched before the first reading).
pub fn hold_class(size: usize) -> (u64, f64) {
    use std::alloc::{Layout, alloc, dealloc};
    let n = hold_class_count(size);
    let layout = Layout::from_size_align(size.max(1), 8).expect("a block layout");
    let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); n];
    black_box(&mut ptrs);
    let before = current_rss();
    for (i, p) in ptrs.iter_mut().enumerate() {
        // SAFETY: `layout` has a non-zero size.
        let q = unsafe { alloc(layout) };
        assert!(!q.is_null(), "out of memory");
        // SAFETY: `q` is a fresh block of at least one byte.
        unsafe { q.write(i as u8) };
        *p = q;
    }
    let after = current_rss();
    let mut sum = 0u64;
    for p in ptrs {
        // SAFETY: every pointer came from `alloc(layout)` above, written once,
        // read and freed once here.
        unsafe {
            sum = sum.wrapping_add(p.read() as u64);
            dealloc(p, layout);
        }
    }
    (sum, after.saturating_sub(before) as f64 / n as f64)
}

/// The `scopes` program on one thread: 10^6 empty requests, then 10^6 requests
/// each allocating and freeing one 64 B block; returns the checksum and the two
/// durations in seconds.
pub fn scopes<S: Scoper>(s: &S) -> (u64, f64, f64) {
    const N: usize = 1_000_000;
    let t = Instant::now();
    for i in 0..N {
        s.request(|| black_box(i));
    }
    let empty = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut sum = 0u64;
    for i in 0..N {
        sum = sum.wrapping_add(s.request(|| {
            let b = black_box(Box::new([i as u64; 8]));
            b[3]
        }));
    }
    (black_box(sum), empty, t.elapsed().as_secs_f64())
}

/// The `scopes-leave-one` program on one thread: 10^6 requests, each leaving
/// one 16 B block behind; returns the checksum, the resident growth per
/// request in bytes, and the requests per second.
pub fn scopes_leave_one<S: Scoper>(s: &S) -> (u64, f64, f64) {
    let n = leave_one_requests();
    // Every element written, so the array's pages are resident before the
    // first reading (its growth is not the scopes').
    let mut kept: Vec<Option<Box<[u8; 16]>>> = (0..n).map(|_| None).collect();
    black_box(&mut kept);
    let before = current_rss();
    let t = Instant::now();
    for (i, slot) in kept.iter_mut().enumerate() {
        *slot = Some(s.request(|| Box::new([i as u8; 16])));
    }
    let secs = t.elapsed().as_secs_f64();
    let after = current_rss();
    let sum = kept
        .iter()
        .flatten()
        .fold(0u64, |a, b| a.wrapping_add(u64::from(b[0])));
    drop(black_box(kept));
    (
        sum,
        after.saturating_sub(before) as f64 / n as f64,
        n as f64 / secs,
    )
}

/// Requests of `scopes-leave-one`: 10^6, or `LEAVE_ONE_REQUESTS` from the
/// environment (a design that keeps kilobytes per closed scope needs fewer).
pub fn leave_one_requests() -> usize {
    std::env::var("LEAVE_ONE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1_000_000)
}

/// Passes over the sources per thread in `parse`.
pub const PARSE_PASSES: usize = 2;

/// Runs `w` on `threads` threads, charged through `s`.
pub fn run_with<S: Scoper>(threads: usize, w: &Workload, s: &S) -> Outcome {
    if let Workload::HoldClass(size) = *w {
        let (sum, per_block) = s.thread(0, || hold_class(size));
        return Outcome {
            sum,
            metrics: vec![
                ("rss_per_block_B".into(), per_block),
                ("blocks".into(), hold_class_count(size) as f64),
            ],
        };
    }
    let sources = if *w == Workload::Parse {
        load_sources()
    } else {
        Vec::new()
    };
    let results: Vec<(u64, f64, f64)> = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let sources = &sources;
                sc.spawn(move || {
                    s.thread(t, || {
                        let seed = 0x9E37_79B9 + t as u64;
                        match w {
                            Workload::Mixed => (program(seed), 0.0, 0.0),
                            Workload::Pow2 => (pow2(seed), 0.0, 0.0),
                            Workload::Parse => (parse(s, sources, PARSE_PASSES), 0.0, 0.0),
                            Workload::Hold => (hold(seed), 0.0, 0.0),
                            Workload::Scopes => scopes(s),
                            Workload::ScopesLeaveOne => scopes_leave_one(s),
                            Workload::HoldClass(_) => unreachable!("handled above"),
                        }
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a worker"))
            .collect()
    });
    let mut out = Outcome {
        sum: results.iter().fold(0, |a, r| a ^ r.0),
        metrics: Vec::new(),
    };
    if *w == Workload::Scopes {
        let slowest = |f: fn(&(u64, f64, f64)) -> f64| results.iter().map(f).fold(0.0, f64::max);
        let total = (threads * 1_000_000) as f64;
        out.metrics
            .push(("scopes_per_s_empty".into(), total / slowest(|r| r.1)));
        out.metrics
            .push(("scopes_per_s_alloc".into(), total / slowest(|r| r.2)));
    }
    if *w == Workload::ScopesLeaveOne {
        let worst = |f: fn(&(u64, f64, f64)) -> f64| results.iter().map(f).fold(0.0, f64::max);
        out.metrics.push(("rss_per_scope_B".into(), worst(|r| r.1)));
        out.metrics.push((
            "leave_one_per_s".into(),
            results.iter().map(|r| r.2).fold(f64::INFINITY, f64::min),
        ));
    }
    if *w == Workload::Parse {
        out.metrics.push(("files".into(), sources.len() as f64));
    }
    out
}

/// Runs `w` on `threads` threads: with `Scoping::Scope` (alloc-host installed),
/// a `workload` scope is entered on every thread and every request opens its
/// own scope inside it.
pub fn run_workload(threads: usize, w: &Workload, scoping: Scoping) -> Outcome {
    match scoping {
        Scoping::Scope => run_with(threads, w, &HostScopes::new()),
        Scoping::None => run_with(threads, w, &NoScopes),
    }
}

/// Runs the `mixed` program on `threads` threads (see [`run_workload`]).
pub fn run(threads: usize, scoping: Scoping) -> u64 {
    run_workload(threads, &Workload::Mixed, scoping).sum
}

/// Reads the thread count from the first command-line argument (default 1).
pub fn threads_from_args() -> usize {
    std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(1)
}

/// Reads the workload from the second command-line argument (default
/// `mixed`); exits with a usage message on an unknown name.
pub fn workload_from_args() -> Workload {
    match std::env::args().nth(2) {
        None => Workload::Mixed,
        Some(a) => Workload::parse_name(&a).unwrap_or_else(|| {
            eprintln!(
                "unknown workload `{a}`; usage: wp_VARIANT [THREADS] \
                 [mixed|pow2|parse|hold|hold-class=SIZE|scopes|scopes-leave-one]"
            );
            std::process::exit(2)
        }),
    }
}
