//! The synchronization the front cache (`front.rs`) is built on: `std`'s and
//! `core`'s normally, loom's under `--cfg loom`, so that the model checker
//! explores every interleaving of the same code (`loom_tests.rs`; the
//! thread-locals are declared in `front.rs` by the matching macro). The
//! engine's own lock stays `std`'s: under loom the engine is not compiled,
//! and the models play its part with a loom mutex of their own.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
