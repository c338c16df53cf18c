//! Errors of the trace parsers: each names the file, the place in it (line or
//! snapshot entry), the value that is wrong and what was expected.

use std::fmt;

/// A trace file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path as given.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A line of a CSV trace is wrong.
    #[error("{file}:{line}: {problem}")]
    Csv {
        /// The file name as given.
        file: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        problem: CsvProblem,
    },
    /// A PyTorch memory snapshot is not readable or not shaped as expected.
    #[error("{file}: {problem}")]
    Snapshot {
        /// The file name as given.
        file: String,
        /// What is wrong with the snapshot.
        problem: SnapshotProblem,
    },
    /// The file parsed but holds no allocation to replay.
    #[error("{file}: the trace holds no allocation; expected {expected}")]
    Empty {
        /// The file name as given.
        file: String,
        /// What a file of this format should hold.
        expected: &'static str,
    },
}

/// What is wrong with one line of a CSV trace.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsvProblem {
    /// A numeric field does not hold an unsigned integer.
    #[error("{field} `{value}` {reason}; expected an unsigned integer")]
    BadNumber {
        /// The field: `id`, `bytes` or `stream`.
        field: &'static str,
        /// The text found.
        value: String,
        /// Why it is not accepted.
        reason: NumberReason,
    },
    /// A numeric field is empty or missing.
    #[error("{field} is missing; expected an unsigned integer (line format `{FORMAT}`)")]
    MissingField {
        /// The field: `id`, `bytes` or `stream`.
        field: &'static str,
    },
    /// A line has more fields than the format has.
    #[error("{found} fields; expected at most 4 (line format `{FORMAT}`)")]
    TooManyFields {
        /// How many comma-separated fields the line has.
        found: usize,
    },
    /// The op is neither `a` nor `f`.
    #[error("unknown op `{op}`; expected `a` (allocate) or `f` (free), line format `{FORMAT}`")]
    UnknownOp {
        /// The op text found.
        op: String,
    },
    /// An id is allocated a second time.
    #[error(
        "id {id} is allocated again (first allocated at line {first_line}); expected ids unique within a file"
    )]
    DuplicateId {
        /// The id.
        id: u64,
        /// The line of its first allocation.
        first_line: usize,
    },
    /// A free names an id that was never allocated.
    #[error("free of unknown id {id}; expected the id of an earlier `a` line")]
    FreeOfUnknownId {
        /// The id.
        id: u64,
    },
    /// A free names an id that is already freed.
    #[error("id {id} is freed twice (first freed at line {first_line}); expected one free per id")]
    DoubleFree {
        /// The id.
        id: u64,
        /// The line of its first free.
        first_line: usize,
    },
}

/// The format of a CSV trace line, quoted in errors.
pub const FORMAT: &str = "op,id,bytes,stream";

/// Why a numeric field was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberReason {
    /// It holds characters other than digits.
    NotANumber,
    /// It is negative.
    Negative,
    /// It does not fit the field's type.
    TooLarge,
}

impl fmt::Display for NumberReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumberReason::NotANumber => "is not a number",
            NumberReason::Negative => "is negative",
            NumberReason::TooLarge => "is too large",
        })
    }
}

/// What is wrong with a PyTorch memory snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotProblem {
    /// This build cannot read pickles (alloc-core's `pickle` feature is off).
    #[error(
        "reading PyTorch snapshot pickles needs alloc-core's `pickle` feature; rebuild with \
         `--features pickle`, e.g. `cargo run -p alloc-core --features pickle --bin alloc-replay -- FILE`"
    )]
    PickleNotBuilt,
    /// The bytes are not a pickle this parser can read.
    #[cfg(feature = "pickle")]
    #[error(
        "not a readable pickle ({source}); expected a file written by torch.cuda.memory._dump_snapshot (pickle protocol 2 to 5)"
    )]
    NotPickle {
        /// The pickle decoder's error.
        #[source]
        source: serde_pickle::Error,
    },
    /// A value has the wrong type.
    #[error("`{at}` is {found}; expected {expected}")]
    WrongType {
        /// Where in the snapshot, e.g. `device_traces[0][17].size`.
        at: String,
        /// The Python type found, e.g. `a str`.
        found: &'static str,
        /// The type expected.
        expected: &'static str,
    },
    /// A dict lacks a key.
    #[error("`{at}` has no key `{key}`; expected {expected}")]
    MissingKey {
        /// Where in the snapshot.
        at: String,
        /// The missing key.
        key: &'static str,
        /// What the dict should hold.
        expected: &'static str,
    },
    /// An integer is out of range.
    #[error("`{at}` is {value}; expected {expected}")]
    OutOfRange {
        /// Where in the snapshot.
        at: String,
        /// The value found.
        value: String,
        /// The range expected.
        expected: &'static str,
    },
    /// No device has an allocation to replay.
    #[error(
        "no `alloc` entry in `device_traces` and no live block in `segments`; expected a snapshot taken after \
         torch.cuda.memory._record_memory_history() and some allocations"
    )]
    NoAllocations,
    /// An alloc names an address that is still allocated.
    #[error(
        "`{at}` allocates address {addr:#x}, which is still allocated (by `{first_at}`); expected a free_completed or free_requested entry for it first"
    )]
    AddressInUse {
        /// The alloc entry.
        at: String,
        /// The address.
        addr: u64,
        /// The earlier alloc entry of the same address.
        first_at: String,
    },
}
