//! Atomics used by the scope registry: `core`'s normally, loom's under `--cfg loom`
//! so that the model checker explores every interleaving of the same code.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};

#[cfg(doc)]
use crate::ScopeInvariant;

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};

/// One step of a short wait for other threads (the recycler waiting for
/// in-flight charges to a slot, [`ScopeInvariant::R4`]).
#[inline]
pub(crate) fn spin() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}
