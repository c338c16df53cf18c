//! Sampled allocation-site heap profiles, per scope.
//!
//! About one allocation per [`sample_rate`] bytes (an exponential interval of
//! that mean, default 512 KiB when on) records its stack (a frame-pointer walk,
//! see [`stack`]), its size, its weight and its scope into a fixed table
//! ([`TABLE_BYTES`] of static memory). Its free, on whichever thread, removes
//! it from the in-use profile: the block's owner word carries a "sampled" bit
//! ([`COMPACT_SAMPLED`](alloc_scope::COMPACT_SAMPLED) in a compact owner,
//! [`WORD_SAMPLED`](alloc_scope::WORD_SAMPLED) in an 8-byte owner word) that
//! the free path already reads. [`profile`] reads the table into a [`HeapProfile`] (in use
//! or allocated since start; for the process, a scope name or one live
//! scope); with the `profile` feature it turns into pprof
//! (`HeapProfile::to_pprof`), a flamegraph SVG and a table of the top sites,
//! symbolized then (never on the allocation path).
//!
//! Off by default; on with [`set_sample_rate`] or `ALLOC_PROFILE_RATE=<bytes>`
//! in the environment (read once, at the first allocation). Each thread
//! counts its allocated bytes down in the thread state the allocator path
//! already reaches (alloc-scope's `host_sample_due`: a load, a subtraction,
//! a store and a branch per allocation, on or off); below zero a cold call
//! takes a sample (a few hundred nanoseconds, once per `rate` bytes on
//! average) or, while sampling is off, restarts the countdown at
//! [`OFF_RECHECK`] bytes. Blocks allocated while tracking is off or inside
//! `untracked` are sampled too, under the scope name `(untracked)`.

pub mod sampler;
pub mod stack;
mod table;

#[cfg(feature = "profile")]
mod output;
#[cfg(feature = "profile")]
pub use output::{Frame, Site, proto};

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::collections::HashMap;

use alloc_scope::ScopeId;

pub use sampler::DEFAULT_MEAN;
pub use stack::Unwinder;
pub use table::{Counts, LIVE, NAMES, STACKS, TABLE_BYTES, TOTALS};

/// The environment variable read at the first allocation: the mean sampling
/// interval in bytes (`0`: off; a `k`/`K` or `m`/`M` suffix multiplies by
/// 1024 or 1024²).
pub const RATE_ENV: &str = "ALLOC_PROFILE_RATE";

/// The unwinder: false DWARF (default), true frame pointers.
static FRAME_POINTERS: AtomicBool = AtomicBool::new(false);

/// Chooses how stacks are read (default [`Unwinder::Dwarf`]; also set by
/// `ALLOC_PROFILE_UNWIND=fp|dwarf` in the environment, read with the rate).
pub fn set_unwinder(u: Unwinder) {
    FRAME_POINTERS.store(u == Unwinder::FramePointers, Relaxed);
}

/// The unwinder in use.
pub fn unwinder() -> Unwinder {
    if FRAME_POINTERS.load(Relaxed) {
        Unwinder::FramePointers
    } else {
        Unwinder::Dwarf
    }
}

/// The countdown a thread restarts from while sampling is off: it looks at
/// the rate again after this many bytes, so switching sampling on reaches
/// every thread within that many of its allocated bytes (the thread that
/// switches it, at its next allocation).
pub const OFF_RECHECK: i64 = 256 << 10;
/// The mean interval in bytes; 0: off.
static MEAN: AtomicU64 = AtomicU64::new(0);
/// 0: environment not read yet; 1: reading; 2: settled.
static INIT: AtomicU8 = AtomicU8::new(0);
/// Seeds per-thread generators.
static SEEDS: AtomicU64 = AtomicU64::new(0x05EE_D0FA_110C);

thread_local! {
    /// This thread's generator state; 0: not seeded yet.
    static RNG: Cell<u64> = const { Cell::new(0) };
    /// Set while this thread reads or symbolizes a profile (its own
    /// allocations are not sampled then).
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Sets the mean sampling interval in bytes (`0`: off) for the whole process,
/// overriding `ALLOC_PROFILE_RATE`. Another thread's interval in progress
/// finishes at the old rate (while off, that is at most [`OFF_RECHECK`]
/// bytes); the calling thread's next allocation draws at the new one.
/// Samples already taken stay in the table.
pub fn set_sample_rate(bytes: u64) {
    INIT.store(2, Relaxed);
    MEAN.store(bytes, Relaxed);
    alloc_scope::set_host_sample_left(0);
}

/// The mean sampling interval in bytes; 0 when off.
pub fn sample_rate() -> u64 {
    settle();
    MEAN.load(Relaxed)
}

/// How full the sample table is and how many samples it lost.
pub fn counts() -> Counts {
    table::counts()
}

/// The allocation hook: says whether the block `p` of `size` bytes, owned by
/// `owner`, was sampled (then its owner word must carry the sampled bit, so
/// that its free calls [`sampled_free`]). `owner` is called only when the
/// countdown ran out. Off or on: the countdown step and a branch.
#[inline(always)]
pub(crate) fn sample_alloc(p: *mut u8, size: usize, owner: impl FnOnce() -> ScopeId) -> bool {
    if !alloc_scope::host_sample_due(size) {
        return false;
    }
    take_sample(p, size, owner())
}

/// The sampled bit to put in a compact owner id.
#[inline(always)]
pub(crate) fn compact_mark(sampled: bool) -> u32 {
    if sampled {
        // A mark is about to be kept by class: no longer untouched (host:O3).
        crate::classes::touch();
        alloc_scope::COMPACT_SAMPLED
    } else {
        0
    }
}

/// The sampled bit to put in an owner word.
#[inline(always)]
pub(crate) fn word_mark(sampled: bool) -> u64 {
    if sampled {
        alloc_scope::WORD_SAMPLED
    } else {
        0
    }
}

/// [`sample_alloc`] after the countdown ran out (the caller tested
/// `alloc_scope::host_sample_due` itself).
#[inline(always)]
pub(crate) fn take_due(p: *mut u8, size: usize, owner: ScopeId) -> bool {
    take_sample(p, size, owner)
}

/// Reads `ALLOC_PROFILE_RATE` once, without the global allocator.
fn settle() {
    if INIT.load(Relaxed) == 2 {
        return;
    }
    if INIT.compare_exchange(0, 1, Relaxed, Relaxed).is_err() {
        return;
    }
    let rate = read_env();
    // SAFETY: as in `read_env`.
    let u = unsafe { libc::getenv(c"ALLOC_PROFILE_UNWIND".as_ptr()) };
    // SAFETY: non-null result of getenv.
    if !u.is_null() && unsafe { core::ffi::CStr::from_ptr(u) }.to_bytes() == b"fp" {
        FRAME_POINTERS.store(true, Relaxed);
    }
    if INIT.compare_exchange(1, 2, Relaxed, Relaxed).is_ok() {
        MEAN.store(rate, Relaxed);
    }
}

fn read_env() -> u64 {
    // SAFETY: getenv with a NUL-terminated name; the result, when not null, is
    // a NUL-terminated string owned by the environment, read at once.
    let v = unsafe { libc::getenv(c"ALLOC_PROFILE_RATE".as_ptr()) };
    if v.is_null() {
        return 0;
    }
    // SAFETY: non-null result of getenv (above).
    let s = unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes();
    match parse_rate(s) {
        Some(r) => r,
        None => {
            let msgs: [&[u8]; 3] = [
                b"alloc-host: ALLOC_PROFILE_RATE=",
                s,
                b" is not a byte count; sampling stays off. Use e.g. ALLOC_PROFILE_RATE=524288 or 512k (0: off).\n",
            ];
            for m in msgs {
                // SAFETY: writes `m.len()` bytes from a live slice to stderr.
                let _ = unsafe { libc::write(2, m.as_ptr().cast(), m.len()) };
            }
            0
        }
    }
}

/// Parses a byte count with an optional `k`/`m` (KiB, MiB) suffix.
pub fn parse_rate(s: &[u8]) -> Option<u64> {
    let s = s.trim_ascii();
    let (digits, mul) = match s.last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1024u64),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n = 0u64;
    for &d in digits {
        n = n.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    n.checked_mul(mul)
}

/// Takes a sample (or, the first time on this thread or before the
/// environment was read, only sets things up). Never allocates through the
/// global allocator; the table's lock is held for the inserts only.
#[cold]
#[inline(never)]
fn take_sample(p: *mut u8, size: usize, owner: ScopeId) -> bool {
    settle();
    let mean = MEAN.load(Relaxed);
    if mean == 0 {
        // Off (just switched off, or the environment said so): look again
        // after `OFF_RECHECK` bytes, so that switching sampling on reaches
        // this thread (a thread parked for good would never be sampled).
        alloc_scope::set_host_sample_left(OFF_RECHECK);
        return false;
    }
    let Ok(mut rng) = RNG.try_with(|r| r.get()) else {
        return false;
    };
    if rng == 0 {
        // First sample decision on this thread: seed, draw a first interval
        // and decide this allocation with it (a countdown that started at 0
        // would sample every thread's first allocation).
        let here = &rng as *const u64 as u64;
        rng = SEEDS.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed) ^ here.rotate_left(17) | 1;
        let first = sampler::interval(sampler::splitmix64(&mut rng), mean);
        let _ = RNG.try_with(|r| r.set(rng));
        let (left, due) = sampler::step(first, size);
        if !due {
            alloc_scope::set_host_sample_left(left);
            return false;
        }
    }
    let next = sampler::interval(sampler::splitmix64(&mut rng), mean);
    let _ = RNG.try_with(|r| r.set(rng));
    alloc_scope::set_host_sample_left(next);
    if p.is_null() {
        return false;
    }
    // Suspended (reading a profile), or already inside a sample on this
    // thread: an allocation made by the unwinder itself is not sampled, so a
    // sample never re-enters the walk or the table's lock.
    match BUSY.try_with(|b| b.replace(true)) {
        Ok(false) => {}
        Ok(true) | Err(_) => return false,
    }
    let kept = record_sample(p, size, owner, mean);
    let _ = BUSY.try_with(|b| b.set(false));
    kept
}

/// Walks the stack and records the sample of block `p` (cold; `BUSY` is set).
fn record_sample(p: *mut u8, size: usize, owner: ScopeId, mean: u64) -> bool {
    let mut frames = [0usize; stack::MAX_FRAMES];
    let depth = if FRAME_POINTERS.load(Relaxed) {
        stack::walk(&mut frames)
    } else {
        stack::walk_dwarf(&mut frames)
    };
    let (count, bytes) = sampler::weight(size as u64, mean);
    let mut name_buf = [0u8; 64];
    let name_len = if owner.is_tracked() {
        alloc_scope::with_scope_name(owner, |n| {
            let b = n.as_bytes();
            let l = b.len().min(63);
            name_buf[..l].copy_from_slice(&b[..l]);
            l
        })
    } else {
        let u = b"(untracked)";
        name_buf[..u.len()].copy_from_slice(u);
        Some(u.len())
    };
    let name = name_len.map(|l| core::str::from_utf8(&name_buf[..l]).unwrap_or("?"));
    table::with(|t| {
        let stack = t.intern_stack(&frames[..depth]);
        let name = t.intern_name(name);
        t.add_total(stack, name, count, bytes);
        t.insert_live(table::Live {
            addr: p as usize,
            stack,
            name,
            scope: owner.to_bits(),
            count,
            bytes,
        })
    })
}

/// Removes a sampled block from the in-use profile (its free or realloc), on
/// whichever thread.
#[cold]
#[inline(never)]
pub(crate) fn sampled_free(p: *mut u8) {
    table::with(|t| t.remove_live(p as usize));
}

/// Takes a sampled block out of the in-use profile before its realloc
/// (`sampled`: its owner carries the sampled bit); see [`restore_sampled`].
#[inline(always)]
pub(crate) fn take_sampled(p: *mut u8, sampled: bool) -> Option<Taken> {
    if sampled { take_cold(p) } else { None }
}

/// A sampled block taken out of the in-use profile by a realloc.
pub(crate) struct Taken(table::Live);

#[cold]
#[inline(never)]
fn take_cold(p: *mut u8) -> Option<Taken> {
    table::with(|t| t.remove_live(p as usize)).map(Taken)
}

/// Puts back a block [`take_sampled`] took, after a failed realloc.
#[inline(always)]
pub(crate) fn restore_sampled(t: Option<Taken>) {
    if let Some(t) = t {
        restore_cold(t);
    }
}

#[cold]
#[inline(never)]
fn restore_cold(e: Taken) {
    table::with(|t| t.insert_live(e.0));
}

/// Which profile to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kind {
    /// Sampled blocks still in use.
    #[default]
    InUse,
    /// Everything sampled since start (freed or not).
    Allocated,
}

impl Kind {
    /// Parses `inuse` / `alloc` (the names of `go tool pprof`'s heap sample
    /// types, `inuse_space`, `alloc_space`).
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "inuse" | "in_use" | "inuse_space" => Some(Kind::InUse),
            "alloc" | "allocated" | "alloc_space" => Some(Kind::Allocated),
            _ => None,
        }
    }

    /// `inuse` or `alloc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InUse => "inuse",
            Kind::Allocated => "alloc",
        }
    }
}

/// Which samples a profile keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Filter {
    /// Every sample.
    #[default]
    All,
    /// Samples taken in scopes of this name.
    Name(String),
    /// Samples taken in this scope (in-use profile only: the allocated totals
    /// are kept by scope name, not by scope).
    Scope(ScopeId),
}

/// One (stack, scope name) of a profile with its estimates.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Return addresses, innermost first (symbolized by the `profile` feature's
    /// outputs).
    pub frames: &'static [usize],
    /// The scope's name when the block was allocated; `(untracked)` for
    /// blocks allocated while tracking was off or inside `untracked`, empty
    /// when the scope was already gone.
    pub scope: String,
    /// Samples taken.
    pub samples: u64,
    /// Estimated allocations (in use, or allocated).
    pub count: f64,
    /// Estimated bytes (in use, or allocated).
    pub bytes: f64,
}

/// A heap profile read from the sample table (see [`profile`]).
#[derive(Clone, Debug)]
pub struct HeapProfile {
    /// In use or allocated.
    pub kind: Kind,
    /// The samples kept by the filter.
    pub filter: Filter,
    /// The mean sampling interval when read (0: off).
    pub rate: u64,
    /// One row per (stack, scope name), largest bytes first.
    pub samples: Vec<Sample>,
    /// The table's fill and losses when read.
    pub counts: Counts,
}

/// Reads a heap profile of `kind` for the whole process.
pub fn profile(kind: Kind) -> HeapProfile {
    profile_filtered(kind, Filter::All)
}

/// Reads a heap profile of `kind`, keeping the samples `filter` selects. Runs
/// untracked; this thread's allocations are not sampled meanwhile.
pub fn profile_filtered(kind: Kind, filter: Filter) -> HeapProfile {
    alloc_scope::untracked(|| with_busy(|| read(kind, filter)))
}

/// Runs `f` with this thread's sampling suspended.
pub(crate) fn with_busy<R>(f: impl FnOnce() -> R) -> R {
    let was = BUSY.with(|b| b.replace(true));
    let r = f();
    BUSY.with(|b| b.set(was));
    r
}

fn name_of(i: u32, cache: &mut HashMap<u32, String>) -> String {
    cache
        .entry(i)
        .or_insert_with(|| match i {
            0 => String::new(),
            1 => "(other)".to_string(),
            _ => {
                let mut b = [0u8; 63];
                let n = table::name(i, &mut b);
                String::from_utf8_lossy(&b[..n]).into_owned()
            }
        })
        .clone()
}

fn read(kind: Kind, filter: Filter) -> HeapProfile {
    let mut names = HashMap::new();
    let mut rows: HashMap<(u32, u32), (u64, f64, f64)> = HashMap::new();
    let keep_name = |i: u32, names: &mut HashMap<u32, String>| match &filter {
        Filter::Name(n) => name_of(i, names) == *n,
        _ => true,
    };
    match kind {
        Kind::InUse => {
            // Reserve before locking: nothing allocates under the lock.
            let mut live = Vec::with_capacity(table::live_len() + 1024);
            table::with(|t| t.copy_live(&mut live));
            for e in live {
                if let Filter::Scope(id) = filter {
                    if e.scope != id.to_bits() {
                        continue;
                    }
                }
                if !keep_name(e.name, &mut names) {
                    continue;
                }
                let r = rows.entry((e.stack, e.name)).or_default();
                r.0 += 1;
                r.1 += e.count;
                r.2 += e.bytes;
            }
        }
        Kind::Allocated => {
            let mut totals = Vec::with_capacity(table::totals_len() + 1024);
            table::with(|t| t.copy_totals(&mut totals));
            for e in totals {
                let k = e.key - 1;
                let (stack, name) = ((k >> 32) as u32, k as u32);
                if matches!(filter, Filter::Scope(_)) || !keep_name(name, &mut names) {
                    continue;
                }
                let r = rows.entry((stack, name)).or_default();
                r.0 += e.samples;
                r.1 += e.count;
                r.2 += e.bytes;
            }
        }
    }
    let mut samples: Vec<Sample> = rows
        .into_iter()
        .map(|((stack, name), (samples, count, bytes))| Sample {
            frames: table::stack(stack),
            scope: name_of(name, &mut names),
            samples,
            count,
            bytes,
        })
        .collect();
    samples.sort_by(|a, b| b.bytes.total_cmp(&a.bytes));
    HeapProfile {
        kind,
        filter,
        rate: MEAN.load(Relaxed),
        samples,
        counts: table::counts(),
    }
}

impl HeapProfile {
    /// Estimated bytes over all samples.
    pub fn total_bytes(&self) -> f64 {
        self.samples.iter().map(|s| s.bytes).sum()
    }

    /// Estimated allocations over all samples.
    pub fn total_count(&self) -> f64 {
        self.samples.iter().map(|s| s.count).sum()
    }

    /// Estimated bytes of the samples whose stack contains a return address
    /// inside `[start, end)` (a function's code range), for callers that know
    /// their functions' addresses.
    pub fn bytes_within(&self, start: usize, end: usize) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.frames.iter().any(|&a| a > start && a <= end))
            .map(|s| s.bytes)
            .sum()
    }
}
