//! The oracle of alloc-host: random programs run with the tracking allocator
//! installed (over an inner allocator that refuses on demand), compared after
//! every step with an independent model: a plain map of live block → owner
//! scope, and the scope tree. Every figure of every scope must match exactly
//! (one thread runs the program; worker threads are joined before comparing).
//!
//! Covered: scopes opened and their guards dropped in any order, handles kept
//! or not, handles entered on other threads (which may exit while still
//! inside the scope, before any flush), alloc / zeroed alloc / realloc / free
//! of random sizes and alignments, the inner allocator refusing, hard budgets,
//! tracking switched off and on.
//!
//! This binary runs it with heap sampling on at a 1-byte mean interval
//! (`SAMPLE_RATE`): the figures must not change.
//!
//! One test in this binary: it switches tracking for the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

use alloc_host::{ScopeBuilder, ScopeGuard, ScopeHandle, TrackingAllocator, untracked};
use proptest::prelude::*;

include!("model/refusing.rs");

#[global_allocator]
static A: TrackingAllocator<Refusing> = TrackingAllocator::with_inner(Refusing);

/// The inner allocator refuses on demand.
const CAN_REFUSE: bool = true;

/// Heap sampling at a mean interval of 1 byte: every block is sampled with
/// probability `1 - e^-size`, so sampled and unsampled blocks of every
/// placement go through every path (free in and out of the owner's scope,
/// realloc, budgets, tracking off), and a sampled block's free must be
/// charged exactly once.
const SAMPLE_RATE: u64 = 1;

include!("model/common.rs");
