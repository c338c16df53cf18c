//! The oracle of alloc-host (see `model/common.rs`) over the default
//! allocator: mimalloc, owners kept by size class (in the block's slack or the
//! per-class side table) for alignments up to 8, in a header above. The inner
//! allocator does not refuse here (refusals come from budgets and 1 PiB
//! requests); `host_model.rs` covers refusing inner allocators.
//!
//! This binary runs it with heap sampling on at a 2 KiB mean interval
//! (`SAMPLE_RATE`): the figures must not change. (`host_model_mimalloc_sampled`
//! samples every block, so its reallocs never start from an unsampled block
//! charged to the current scope; here they do, and the countdown runs out
//! inside the fast path's realloc as often as inside its allocation.)
//!
//! One test in this binary: it switches tracking for the whole process.

use std::alloc::Layout;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use alloc_host::{ScopeBuilder, ScopeGuard, ScopeHandle, TrackingAllocator, untracked};
use proptest::prelude::*;

#[global_allocator]
static A: TrackingAllocator = TrackingAllocator::new();

/// mimalloc is not asked to refuse.
const CAN_REFUSE: bool = false;
static REFUSE_NEXT: AtomicBool = AtomicBool::new(false);

/// Heap sampling at a mean interval of 2 KiB: a block of `size` bytes is
/// sampled with probability `1 - e^(-size / 2048)` (16 B: 0.8%, 1 KiB: 39%,
/// 4 KiB: 86%), so unsampled blocks reach every fast path (allocation, free,
/// realloc) and the countdown runs out on each of them.
const SAMPLE_RATE: u64 = 2048;

include!("model/common.rs");
