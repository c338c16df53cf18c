//! Trace replay: read allocation traces of real programs and replay them
//! through the caching engine, measuring how much memory it reserves for what
//! was requested.
//!
//! Two formats are read:
//! - the CSV format of the shipped traces ([`parse_csv`]): `op,id,bytes,stream`
//!   lines, `a` to allocate and `f` to free;
//! - PyTorch memory snapshot pickles written by
//!   `torch.cuda.memory._dump_snapshot` ([`parse_snapshot`]; needs the crate's
//!   `pickle` feature, off by default).
//!
//! Both yield [`Trace`]s: allocate and free [`Event`]s on numbered slots.
//! [`load`] picks the format from the file's first byte (a pickle starts with
//! `0x80`) or its extension. [`replay()`] drives a trace through a
//! [`CachingAllocator`](crate::CachingAllocator) and returns a
//! [`ReplayResult`]; [`table`] formats results for reading. The binary
//! `alloc-replay` does all of this from the command line.
//!
//! ```no_run
//! use alloc_core::replay;
//! let traces = replay::load("gpt2_decode.csv")?;
//! let stats = traces[0].stats();
//! println!("{}: peak live {} B", traces[0].name(), stats.peak_live_bytes);
//! # Ok::<(), alloc_core::replay::TraceError>(())
//! ```

mod csv;
mod driver;
mod error;
mod report;
#[cfg(feature = "pickle")]
mod snapshot;
mod trace;

use std::path::Path;

pub use csv::parse_csv;
pub use driver::{ReplayResult, replay};
pub use error::{CsvProblem, NumberReason, SnapshotProblem, TraceError};
pub use report::{mib, table, trace_header};
#[cfg(feature = "pickle")]
pub use snapshot::parse_snapshot;

/// Without the `pickle` feature, every snapshot pickle is refused with
/// [`SnapshotProblem::PickleNotBuilt`], which says how to rebuild.
#[cfg(not(feature = "pickle"))]
pub fn parse_snapshot(name: &str, _bytes: &[u8]) -> Result<Vec<Trace>, TraceError> {
    Err(TraceError::Snapshot {
        file: name.to_string(),
        problem: SnapshotProblem::PickleNotBuilt,
    })
}
pub use trace::{Event, InvalidEvents, Trace, TraceStats};

/// The first byte of a pickle of protocol 2 or later (the PROTO opcode).
pub const PICKLE_MAGIC: u8 = 0x80;

/// The format of a trace file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The CSV format of `traces/README.md` at the repository root.
    Csv,
    /// A PyTorch memory snapshot pickle.
    Snapshot,
}

impl Format {
    /// The format of a file named `name` whose contents start with `bytes`:
    /// a pickle if it starts with [`PICKLE_MAGIC`] or is named `*.pickle` or
    /// `*.pkl`, CSV otherwise.
    pub fn detect(name: &str, bytes: &[u8]) -> Self {
        let pickle_name = [".pickle", ".pkl"].iter().any(|ext| name.ends_with(ext));
        if bytes.first() == Some(&PICKLE_MAGIC) || pickle_name {
            Format::Snapshot
        } else {
            Format::Csv
        }
    }
}

/// Parses the contents of a trace file, choosing the format with
/// [`Format::detect`]. `name` names the file in errors and in the traces.
/// A CSV file yields one trace; a snapshot one per device with allocations.
pub fn parse(name: &str, bytes: &[u8]) -> Result<Vec<Trace>, TraceError> {
    match Format::detect(name, bytes) {
        Format::Snapshot => parse_snapshot(name, bytes),
        Format::Csv => {
            let text = String::from_utf8_lossy(bytes);
            parse_csv(name, &text).map(|t| vec![t])
        }
    }
}

/// Reads and parses a trace file. Errors name the path as given; traces are
/// named by the file name without its directory.
pub fn load(path: impl AsRef<Path>) -> Result<Vec<Trace>, TraceError> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TraceError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut traces = parse(&shown, &bytes)?;
    let file_name = path
        .file_name()
        .map_or(shown.clone(), |n| n.to_string_lossy().into_owned());
    for trace in &mut traces {
        trace.rename_prefix(&shown, &file_name);
    }
    Ok(traces)
}
