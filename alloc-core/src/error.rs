//! The engine's errors: out of memory with the numbers that explain it, and
//! backend failures that are not about memory.

use crate::backend::BackendError;
use crate::stats::format_size;

/// An allocation the engine could not satisfy even after its reclaim ladder.
///
/// Its message states every figure needed to understand the failure and one
/// remedy that is not already applied, e.g.
/// `out of memory: requested 5.00 MiB (rounded 5.00 MiB) on stream 0; 7.31 GiB in use, 612.00 MiB cached (largest free block 3.20 MiB), device 0.41 GiB free of 80.00 GiB; try expandable_segments:true`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "out of memory: requested {} (rounded {}) on stream {stream}; {} in use, {} cached (largest free block {}), {}; {remedy}",
    format_size(*requested), format_size(*rounded), format_size(*in_use), format_size(*cached),
    format_size(*largest_free_block), device_text(*device_free, *device_total, *limit)
)]
pub struct OutOfMemory {
    /// Bytes the caller asked for.
    pub requested: usize,
    /// Bytes after rounding (what the block would have held).
    pub rounded: usize,
    /// The stream, as its `Debug` text.
    pub stream: String,
    /// Bytes handed out to users when it failed.
    pub in_use: usize,
    /// Bytes held from the backend but not handed out (reserved − in use).
    pub cached: usize,
    /// The largest free block in the cache.
    pub largest_free_block: usize,
    /// Device free bytes, where the backend knows them.
    pub device_free: Option<usize>,
    /// Device total bytes, where the backend knows them.
    pub device_total: Option<usize>,
    /// The engine's own cap on reserved bytes (memory fraction / byte cap).
    pub limit: Option<usize>,
    /// A remedy that is not already applied.
    pub remedy: String,
}

fn device_text(free: Option<usize>, total: Option<usize>, limit: Option<usize>) -> String {
    let dev = match (free, total) {
        (Some(f), Some(t)) => format!("device {} free of {}", format_size(f), format_size(t)),
        _ => "device free/total unknown".to_string(),
    };
    match limit {
        Some(l) => format!("{dev}, cap {}", format_size(l)),
        None => dev,
    }
}

/// Why an allocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Out of memory after the reclaim ladder.
    #[error(transparent)]
    OutOfMemory(Box<OutOfMemory>),
    /// The backend failed for a reason other than memory.
    #[error("backend `{backend}` failed while {action}: {source}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// What the engine was doing.
        action: &'static str,
        /// The backend's error.
        source: BackendError,
    },
    /// The request does not fit in the address space after rounding.
    #[error(
        "requested {requested} bytes: too large to round to a block size; request at most {max} bytes"
    )]
    TooLarge {
        /// Bytes the caller asked for.
        requested: usize,
        /// The largest request the engine can round.
        max: usize,
    },
}

impl AllocError {
    /// The out-of-memory details, when this is an out-of-memory error.
    pub fn as_oom(&self) -> Option<&OutOfMemory> {
        match self {
            AllocError::OutOfMemory(o) => Some(o),
            _ => None,
        }
    }
}
