//! The oracle of alloc-host (see `model/common.rs`) over the default
//! allocator: mimalloc, owners kept by size class (in the block's slack or the
//! per-class side table) for alignments up to 8, in a header above. The inner
//! allocator does not refuse here (refusals come from budgets and 1 PiB
//! requests); `host_model.rs` covers refusing inner allocators.
//!
//! This binary runs it with heap sampling on at a 1-byte mean interval
//! (`SAMPLE_RATE`): the figures must not change.
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

/// Heap sampling at a mean interval of 1 byte: every block is sampled with
/// probability `1 - e^-size`, so sampled and unsampled blocks of every
/// placement go through every path (free in and out of the owner's scope,
/// realloc, budgets, tracking off), and a sampled block's free must be
/// charged exactly once.
const SAMPLE_RATE: u64 = 1;

include!("model/common.rs");
