//! The `Op` language: a sequence of engine operations that proptest and
//! cargo-fuzz generate, and one interpreter that runs it and checks, after
//! every step, the invariants ([`validate`](crate::CachingAllocator::validate)),
//! that live blocks never overlap, their alignment, and the statistics against
//! a simple model (live count and requested bytes).

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
#[derive(Clone, Debug, PartialEq, Eq, arbitrary::Arbitrary)]
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
}

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

/// The harness hooks a backend needs for streams.
pub trait Harness<B: DeviceBackend> {
    /// Launch work on stream number `s`.
    fn launch(&self, s: u32);
    /// Complete the work of stream number `s`.
    fn complete(&self, s: u32);
    /// Complete the work of every stream.
    fn complete_all(&self);
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
}

/// Runs `ops` on `alloc`, checking after every step; at the end frees
/// everything, empties the cache and checks that nothing is reserved.
pub fn run<B: DeviceBackend>(
    alloc: &CachingAllocator<FaultInjectingBackend<B>>,
    harness: &dyn Harness<B>,
    ops: &[Op],
) -> Result<RunSummary, String> {
    let backend = alloc.backend();
    let mut live: Vec<DeviceBuffer<'_, FaultInjectingBackend<B>>> = Vec::new();
    let mut summary = RunSummary::default();
    for (step, op) in ops.iter().enumerate() {
        let ctx = |e: String| format!("step {step} ({op:?}): {e}");
        match *op {
            Op::Alloc { bytes, stream } => {
                let n = Op::alloc_bytes(bytes);
                let s = backend.stream_for_id(u32::from(stream) % STREAMS);
                match alloc.allocate(n, s) {
                    Ok(b) => {
                        check_new(&live, &b).map_err(ctx)?;
                        summary.allocs += 1;
                        live.push(b);
                    }
                    Err(AllocError::OutOfMemory(_)) => summary.ooms += 1,
                    Err(e) => return Err(ctx(format!("unexpected error: {e}"))),
                }
            }
            Op::Free { slot } => {
                if !live.is_empty() {
                    let i = slot as usize % live.len();
                    drop(live.swap_remove(i));
                }
            }
            Op::RecordStream { slot, stream } => {
                if !live.is_empty() {
                    let i = slot as usize % live.len();
                    live[i].record_stream(backend.stream_for_id(u32::from(stream) % STREAMS));
                }
            }
            Op::Launch { stream } => harness.launch(u32::from(stream) % STREAMS),
            Op::CompleteStream { stream } => harness.complete(u32::from(stream) % STREAMS),
            Op::EmptyCache => alloc.empty_cache(),
            Op::Trim => alloc.trim(),
            Op::FailNextBackendAlloc => backend.fail_next(1),
            Op::ResetPeak => alloc.reset_peak(),
        }
        alloc.validate().map_err(|e| ctx(e.to_string()))?;
        check_model(alloc, &live).map_err(ctx)?;
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
    live: &[DeviceBuffer<'_, B>],
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
        let (q, qend) = (o.ptr().0, o.ptr().0 + o.capacity());
        if p < qend && q < end {
            return Err(format!(
                "new block [{p:#x}, {end:#x}) overlaps live block [{q:#x}, {qend:#x})"
            ));
        }
    }
    Ok(())
}

fn check_model<B: DeviceBackend>(
    alloc: &CachingAllocator<B>,
    live: &[DeviceBuffer<'_, B>],
) -> Result<(), String> {
    let s = alloc.stats();
    let requested: usize = live.iter().map(DeviceBuffer::len).sum();
    let by_ptr: BTreeMap<usize, usize> = live.iter().map(|b| (b.ptr().0, b.capacity())).collect();
    if by_ptr.len() != live.len() {
        return Err("two live buffers share an address".into());
    }
    if s.allocation.all.current != live.len() as i64
        || s.requested_bytes.all.current != requested as i64
    {
        return Err(format!(
            "stats say {} allocations / {} B requested, the model {} / {requested} B",
            s.allocation.all.current,
            s.requested_bytes.all.current,
            live.len()
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
