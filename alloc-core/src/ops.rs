//! The `Op` language: a sequence of engine operations that proptest and
//! cargo-fuzz generate, and one interpreter that runs it and checks, after
//! every step, the invariants ([`validate`](crate::CachingAllocator::validate)),
//! that live blocks never overlap, their alignment, and three oracles:
//! - in flight: work launched on a stream uses the live buffers of that
//!   stream (and those recorded on it); the harness checks that none of that
//!   memory is handed to another stream's user, unmapped or released before
//!   the work completes (`SimBackend` panics);
//! - out of memory is legitimate only when the request cannot fit even after
//!   every cached byte is released
//!   ([`check_oom_legitimate`](crate::CachingAllocator::check_oom_legitimate));
//! - the statistics follow a counter model with PyTorch's definitions.

use std::collections::BTreeMap;

use crate::adaptors::FaultInjectingBackend;
use crate::backend::DeviceBackend;
use crate::buffer::DeviceBuffer;
use crate::cache::CachingAllocator;
use crate::error::AllocError;
use crate::size_class::MIN_BLOCK;

/// Streams the interpreter uses (op stream numbers are taken modulo this).
pub const STREAMS: u32 = 3;

/// One engine operation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// Allocate; the low 2 bits of `bytes` pick a size class (≤ 4 KiB, ≤ 1 MiB,
    /// ≤ 24 MiB, ≤ 96 MiB), the rest the size within it.
    Alloc {
        /// Size selector.
        bytes: u32,
        /// Stream number.
        stream: u8,
    },
    /// Drop the live buffer at `slot` (modulo the number live).
    Free {
        /// Which live buffer.
        slot: u16,
    },
    /// Mark the live buffer at `slot` as used on `stream`.
    RecordStream {
        /// Which live buffer.
        slot: u16,
        /// Stream number.
        stream: u8,
    },
    /// Launch simulated work on a stream (harness-defined).
    Launch {
        /// Stream number.
        stream: u8,
    },
    /// Complete the work of a stream (harness-defined).
    CompleteStream {
        /// Stream number.
        stream: u8,
    },
    /// `empty_cache()`.
    EmptyCache,
    /// `trim()`.
    Trim,
    /// Make the next backend call that obtains memory fail.
    FailNextBackendAlloc,
    /// `reset_peak()`.
    ResetPeak,
    /// `forget_stream()`: the stream is destroyed and its number comes back
    /// as a new stream (not in [`program`], which every backend runs).
    ForgetStream {
        /// Stream number.
        stream: u8,
    },
}

/// The interpreter's stream number of a buffer whose stream was forgotten.
const FORGOTTEN: u32 = u32::MAX;

impl Op {
    /// The byte count an `Alloc` selector stands for.
    pub fn alloc_bytes(sel: u32) -> usize {
        let v = (sel >> 2) as usize;
        match sel & 3 {
            0 => v % 4096,
            1 => v % (1 << 20),
            2 => v % (24 << 20),
            _ => v % (96 << 20),
        }
    }
}

/// A deterministic pseudo-random program (xorshift) of `n` ops with a fixed
/// mix (55 % allocations, 30 % frees, record-stream, launches, completions,
/// empty-cache, trim, an injected backend failure, reset-peak): the program
/// every conformance suite runs, on every backend.
pub fn program(seed: u64, n: usize) -> Vec<Op> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (a, b) = ((x >> 8) as u32, (x >> 40) as u8);
            match x % 100 {
                0..=54 => Op::Alloc {
                    bytes: a,
                    stream: b,
                },
                55..=84 => Op::Free { slot: a as u16 },
                85..=88 => Op::RecordStream {
                    slot: a as u16,
                    stream: b,
                },
                89..=91 => Op::Launch { stream: b },
                92..=94 => Op::CompleteStream { stream: b },
                95 => Op::EmptyCache,
                96 => Op::Trim,
                97 => Op::FailNextBackendAlloc,
                _ => Op::ResetPeak,
            }
        })
        .collect()
}

/// Decodes a program from raw bytes: one `Op` after another until the bytes
/// run out (every byte string is a program, so fuzzers and proptest explore
/// long programs, not the one or two ops a length-prefixed `Vec` yields).
#[cfg(feature = "arbitrary")]
pub fn program_from_bytes(bytes: &[u8]) -> Vec<Op> {
    let mut u = arbitrary::Unstructured::new(bytes);
    let mut ops = Vec::new();
    while !u.is_empty() {
        match <Op as arbitrary::Arbitrary>::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Allocations that succeeded.
    pub allocs: usize,
    /// Allocations that failed with out of memory.
    pub ooms: usize,
}

/// The harness hooks a backend needs for streams, and what the oracles ask
/// of it. Every method past the first three has a default that checks
/// nothing, so any backend can run the language.
pub trait Harness<B: DeviceBackend> {
    /// Launch work on stream number `s`.
    fn launch(&self, s: u32);
    /// Complete the work of stream number `s`.
    fn complete(&self, s: u32);
    /// Complete the work of every stream.
    fn complete_all(&self);
    /// Launch work on stream `s` that uses `ranges` (start, bytes): the
    /// backend may then check that no range is reused before it completes.
    fn launch_using(&self, s: u32, ranges: &[(usize, usize)]) {
        let _ = ranges;
        self.launch(s);
    }
    /// Check a block just handed to a user of stream `s` (the in-flight
    /// oracle: no other stream's launched work may still use it).
    fn check_handout(&self, s: u32, ptr: usize, bytes: usize) {
        let _ = (s, ptr, bytes);
    }
    /// Work launched on stream `s` so far and work completed, in launches
    /// (an event recorded now completes when `completed >= launched`), where
    /// the harness knows; without it the counter model only bounds the
    /// counters that depend on when a pending free completes.
    fn progress(&self, s: u32) -> Option<(u64, u64)> {
        let _ = s;
        None
    }
    /// Device-wide synchronizations so far.
    fn syncs(&self) -> u64 {
        0
    }
    /// Driver calls that obtained memory (allocate + map) and that returned
    /// it (deallocate + unmap), where the backend counts them.
    fn driver_calls(&self) -> Option<(u64, u64)> {
        None
    }
}

/// A harness for backends whose work is always complete (host memory).
pub struct NoStreams;

impl<B: DeviceBackend> Harness<B> for NoStreams {
    fn launch(&self, _: u32) {}
    fn complete(&self, _: u32) {}
    fn complete_all(&self) {}
}

impl<B: DeviceBackend> Harness<B> for crate::backends::SimBackend {
    fn launch(&self, s: u32) {
        crate::backends::SimBackend::launch(self, crate::backends::SimStream(s));
    }
    fn complete(&self, s: u32) {
        crate::backends::SimBackend::complete(self, crate::backends::SimStream(s));
    }
    fn complete_all(&self) {
        crate::backends::SimBackend::complete_all(self);
    }
    fn launch_using(&self, s: u32, ranges: &[(usize, usize)]) {
        crate::backends::SimBackend::launch_using(self, crate::backends::SimStream(s), ranges);
    }
    fn check_handout(&self, s: u32, ptr: usize, bytes: usize) {
        crate::backends::SimBackend::check_handout(
            self,
            crate::backends::SimStream(s),
            crate::backend::DevicePtr(ptr),
            bytes,
        );
    }
    fn progress(&self, s: u32) -> Option<(u64, u64)> {
        Some(crate::backends::SimBackend::progress(
            self,
            crate::backends::SimStream(s),
        ))
    }
    fn syncs(&self) -> u64 {
        crate::backends::SimBackend::syncs(self)
    }
    fn driver_calls(&self) -> Option<(u64, u64)> {
        Some(crate::backends::SimBackend::driver_calls(self))
    }
}

/// A live buffer of the interpreter: its stream number and the streams
/// (bit mask) it was recorded on.
struct Live<'a, B: DeviceBackend> {
    buf: DeviceBuffer<'a, B>,
    stream: u32,
    used_on: u32,
}

/// The counter model's view of a freed buffer whose free waits for events:
/// (requested, capacity, (stream, launches to wait for)); `known` when the
/// harness reports progress on those streams (else the model only knows the
/// free completes by the next `empty_cache`).
struct PendingModel {
    requested: usize,
    capacity: usize,
    waits: Vec<(u32, u64)>,
    known: bool,
}

/// Runs `ops` on `alloc`, checking after every step (invariants, the
/// in-flight oracle through `harness`, non-overlap, alignment, the
/// legitimacy of every out-of-memory error and the counter model); at the
/// end frees everything, empties the cache and checks that nothing is
/// reserved.
pub fn run<B: DeviceBackend>(
    alloc: &CachingAllocator<FaultInjectingBackend<B>>,
    harness: &dyn Harness<B>,
    ops: &[Op],
) -> Result<RunSummary, String> {
    let backend = alloc.backend();
    let mut live: Vec<Live<'_, FaultInjectingBackend<B>>> = Vec::new();
    let mut pending: Vec<PendingModel> = Vec::new();
    let mut summary = RunSummary::default();
    let calls_before = harness.driver_calls();
    for (step, op) in ops.iter().enumerate() {
        let ctx = |e: String| format!("step {step} ({op:?}): {e}");
        let syncs = harness.syncs();
        let mut settle = false;
        match *op {
            Op::Alloc { bytes, stream } => {
                let n = Op::alloc_bytes(bytes);
                let id = u32::from(stream) % STREAMS;
                let armed = backend.armed();
                match alloc.allocate(n, backend.stream_for_id(id)) {
                    Ok(b) => {
                        check_new(&live, &b).map_err(ctx)?;
                        harness.check_handout(id, b.ptr().0, b.capacity());
                        summary.allocs += 1;
                        live.push(Live {
                            buf: b,
                            stream: id,
                            used_on: 0,
                        });
                    }
                    Err(AllocError::OutOfMemory(e)) => {
                        summary.ooms += 1;
                        if backend.armed() == armed {
                            alloc
                                .check_oom_legitimate(n)
                                .map_err(|why| ctx(format!("{why}; the error: {e}")))?;
                        }
                    }
                    Err(e) => return Err(ctx(format!("unexpected error: {e}"))),
                }
                settle = n > 0;
            }
            Op::Free { slot } => {
                if !live.is_empty() {
                    let i = slot as usize % live.len();
                    let l = live.swap_remove(i);
                    let own = backend.stream_for_id(l.stream);
                    let waits: Vec<(u32, Option<u64>)> = (0..STREAMS)
                        .filter(|&r| l.used_on & (1 << r) != 0)
                        .filter(|&r| backend.stream_for_id(r) != own)
                        .map(|r| (r, harness.progress(r).map(|p| p.0)))
                        .collect();
                    if !waits.is_empty() && !l.buf.is_empty() {
                        pending.push(PendingModel {
                            requested: l.buf.len(),
                            capacity: l.buf.capacity(),
                            known: waits.iter().all(|w| w.1.is_some()),
                            waits: waits
                                .into_iter()
                                .map(|(r, q)| (r, q.unwrap_or(0)))
                                .collect(),
                        });
                    }
                    drop(l);
                }
            }
            Op::RecordStream { slot, stream } => {
                if !live.is_empty() {
                    let i = slot as usize % live.len();
                    let id = u32::from(stream) % STREAMS;
                    live[i].buf.record_stream(backend.stream_for_id(id));
                    live[i].used_on |= 1 << id;
                }
            }
            Op::Launch { stream } => {
                let s = u32::from(stream) % STREAMS;
                let ranges: Vec<(usize, usize)> = live
                    .iter()
                    .filter(|l| l.stream == s || l.used_on & (1 << s) != 0)
                    .map(|l| (l.buf.ptr().0, l.buf.capacity()))
                    .collect();
                harness.launch_using(s, &ranges);
            }
            Op::CompleteStream { stream } => harness.complete(u32::from(stream) % STREAMS),
            Op::EmptyCache => {
                alloc.empty_cache();
                pending.clear(); // it waits for every stream
            }
            Op::Trim => {
                alloc.trim();
                settle = true;
            }
            Op::FailNextBackendAlloc => backend.fail_next(1),
            Op::ResetPeak => alloc.reset_peak(),
            Op::ForgetStream { stream } => {
                let s = u32::from(stream) % STREAMS;
                alloc.forget_stream(backend.stream_for_id(s));
                // its work has completed; new work on the number is a new
                // stream, which uses old buffers only once recorded on it
                for l in &mut live {
                    if l.stream == s {
                        l.stream = FORGOTTEN;
                    }
                    l.used_on &= !(1 << s);
                }
            }
        }
        if harness.syncs() != syncs {
            pending.clear();
        } else if settle {
            pending.retain(|p| {
                !p.known
                    || p.waits
                        .iter()
                        .any(|&(r, seq)| harness.progress(r).is_some_and(|q| q.1 < seq))
            });
        }
        alloc.validate().map_err(|e| ctx(e.to_string()))?;
        check_model(alloc, harness, calls_before, &live, &pending).map_err(ctx)?;
    }
    drop(live);
    backend.fail_next(0);
    harness.complete_all();
    alloc.empty_cache();
    alloc
        .validate()
        .map_err(|e| format!("after empty_cache: {e}"))?;
    let s = alloc.stats();
    if s.reserved_bytes.all.current != 0
        || s.active_bytes.all.current != 0
        || s.segment.all.current != 0
    {
        return Err(format!(
            "after freeing everything and empty_cache: reserved {} B, active {} B, {} segments",
            s.reserved_bytes.all.current, s.active_bytes.all.current, s.segment.all.current
        ));
    }
    Ok(summary)
}

fn check_new<B: DeviceBackend>(
    live: &[Live<'_, B>],
    b: &DeviceBuffer<'_, B>,
) -> Result<(), String> {
    let (p, end) = (b.ptr().0, b.ptr().0 + b.capacity());
    if p % MIN_BLOCK != 0 || b.capacity() < b.len() || b.capacity() % MIN_BLOCK != 0 {
        return Err(format!(
            "block at {p:#x} of {} B for {} B is misaligned or short",
            b.capacity(),
            b.len()
        ));
    }
    for o in live {
        let (q, qend) = (o.buf.ptr().0, o.buf.ptr().0 + o.buf.capacity());
        if p < qend && q < end {
            return Err(format!(
                "new block [{p:#x}, {end:#x}) overlaps live block [{q:#x}, {qend:#x})"
            ));
        }
    }
    Ok(())
}

/// The counter model, with PyTorch's definitions: a zero-byte request counts
/// nothing; `allocation`/`allocated_bytes` drop at the free request;
/// `active`/`active_bytes`/`requested_bytes` drop when the free completes
/// (after the events of the streams that used the block); every driver call
/// that obtains memory is a `num_device_alloc`, every one that returns it a
/// `num_device_free`; `oversize_allocations` counts blocks of at least
/// `max_split_size`.
fn check_model<B: DeviceBackend>(
    alloc: &CachingAllocator<FaultInjectingBackend<B>>,
    harness: &dyn Harness<B>,
    calls_before: Option<(u64, u64)>,
    live: &[Live<'_, FaultInjectingBackend<B>>],
    pending: &[PendingModel],
) -> Result<(), String> {
    let s = alloc.stats();
    let counted = || live.iter().map(|l| &l.buf).filter(|b| !b.is_empty());
    let by_ptr: BTreeMap<usize, usize> = counted().map(|b| (b.ptr().0, b.capacity())).collect();
    if by_ptr.len() != counted().count() {
        return Err("two live buffers share an address".into());
    }
    let max_split = alloc.config().max_split_size;
    // (name, model's least value, model's greatest value, counter)
    let sum = |f: fn(&PendingModel) -> usize, known: bool| -> usize {
        pending.iter().filter(|p| p.known == known).map(f).sum()
    };
    let unknown = |f: fn(&PendingModel) -> usize| sum(f, false);
    let live_req: usize = counted().map(DeviceBuffer::len).sum();
    let live_cap: usize = counted().map(DeviceBuffer::capacity).sum();
    let n = counted().count();
    let known_n = pending.iter().filter(|p| p.known).count();
    let model = [
        ("allocation", n, n, s.allocation.all.current),
        (
            "allocated_bytes",
            live_cap,
            live_cap,
            s.allocated_bytes.all.current,
        ),
        (
            "requested_bytes",
            live_req + sum(|p| p.requested, true),
            live_req + sum(|p| p.requested, true) + unknown(|p| p.requested),
            s.requested_bytes.all.current,
        ),
        (
            "active",
            n + known_n,
            n + pending.len(),
            s.active.all.current,
        ),
        (
            "active_bytes",
            live_cap + sum(|p| p.capacity, true),
            live_cap + sum(|p| p.capacity, true) + unknown(|p| p.capacity),
            s.active_bytes.all.current,
        ),
        (
            "oversize_allocations",
            counted().filter(|b| b.capacity() >= max_split).count(),
            counted().filter(|b| b.capacity() >= max_split).count(),
            s.oversize_allocations.current,
        ),
    ];
    for (name, least, most, got) in model {
        if got < least as i64 || got > most as i64 {
            return Err(format!(
                "{name}.current is {got}, the model (PyTorch's definition) says {}",
                if least == most {
                    least.to_string()
                } else {
                    format!("{least}..={most}")
                }
            ));
        }
    }
    if let (Some((o, r)), Some((o0, r0))) = (harness.driver_calls(), calls_before)
        && let (obtains, returns) = (o - o0, r - r0)
        && (s.num_device_alloc, s.num_device_free) != (obtains as i64, returns as i64)
    {
        return Err(format!(
            "num_device_alloc/num_device_free are {}/{}, the driver saw {obtains}/{returns} calls",
            s.num_device_alloc, s.num_device_free
        ));
    }
    if let Some(cap) = alloc.memory_cap()
        && s.reserved_bytes.all.current > cap as i64
    {
        return Err(format!(
            "reserved {} B is over the cap of {cap} B",
            s.reserved_bytes.all.current
        ));
    }
    if s.reserved_bytes.all.current < s.active_bytes.all.current
        || s.reserved_bytes.all.peak < s.reserved_bytes.all.current
    {
        return Err(format!(
            "reserved {:?} below active {:?}",
            s.reserved_bytes.all, s.active_bytes.all
        ));
    }
    Ok(())
}
