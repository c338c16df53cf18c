//! The CSV trace format of `traces/README.md` at the repository root:
//!
//! ```text
//! # free-text header lines start with '#'
//! op,id,bytes,stream
//! a,0,65536,0      allocate: id 0, 65536 bytes, on stream 0
//! f,0,,            free id 0
//! ```
//!
//! Blank lines and lines starting with `#` are skipped, and so is the column
//! line `op,id,bytes,stream`. Fields are trimmed. Ids are unique within a
//! file: an id is allocated once and freed at most once. A free needs only
//! `f,ID`; its other fields, if present, are ignored.

use std::collections::HashMap;

use super::error::{CsvProblem, FORMAT, NumberReason, TraceError};
use super::trace::{Event, Trace};

/// What a CSV trace should hold, quoted when it holds no allocation.
const EXPECTED: &str = "lines like `a,0,65536,0` (format `op,id,bytes,stream`)";

/// Where an id stands: its slot and the lines of its alloc and free.
struct IdState {
    slot: usize,
    alloc_line: usize,
    free_line: Option<usize>,
}

/// Parses a CSV trace. `file` names the file in errors and in the trace.
pub fn parse_csv(file: &str, text: &str) -> Result<Trace, TraceError> {
    let mut events = Vec::new();
    let mut ids: HashMap<u64, IdState> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |problem| TraceError::Csv {
            file: file.to_owned(),
            line,
            problem,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || is_column_line(trimmed) {
            continue;
        }
        let fields: Vec<&str> = trimmed.split(',').map(str::trim).collect();
        if fields.len() > 4 {
            return Err(err(CsvProblem::TooManyFields {
                found: fields.len(),
            }));
        }
        let field = |i: usize| fields.get(i).copied().unwrap_or("");
        match field(0) {
            "a" => {
                let id = number(field(1), "id").map_err(err)?;
                let bytes = number(field(2), "bytes").map_err(err)?;
                let stream = number(field(3), "stream").map_err(err)?;
                let bytes = usize::try_from(bytes).map_err(|_| {
                    err(CsvProblem::BadNumber {
                        field: "bytes",
                        value: field(2).to_owned(),
                        reason: NumberReason::TooLarge,
                    })
                })?;
                if let Some(first) = ids.get(&id) {
                    return Err(err(CsvProblem::DuplicateId {
                        id,
                        first_line: first.alloc_line,
                    }));
                }
                let slot = ids.len();
                ids.insert(
                    id,
                    IdState {
                        slot,
                        alloc_line: line,
                        free_line: None,
                    },
                );
                events.push(Event::Alloc {
                    slot,
                    bytes,
                    stream,
                });
            }
            "f" => {
                let id = number(field(1), "id").map_err(err)?;
                let state = ids
                    .get_mut(&id)
                    .ok_or_else(|| err(CsvProblem::FreeOfUnknownId { id }))?;
                if let Some(first_line) = state.free_line {
                    return Err(err(CsvProblem::DoubleFree { id, first_line }));
                }
                state.free_line = Some(line);
                events.push(Event::Free { slot: state.slot });
            }
            op => return Err(err(CsvProblem::UnknownOp { op: op.to_owned() })),
        }
    }
    if ids.is_empty() {
        return Err(TraceError::Empty {
            file: file.to_owned(),
            expected: EXPECTED,
        });
    }
    let slots = ids.len();
    Ok(Trace::new_unchecked(file.to_owned(), events, slots))
}

/// Whether `line` is the column line `op,id,bytes,stream` (spaces allowed).
fn is_column_line(line: &str) -> bool {
    line.split(',').map(str::trim).eq(FORMAT.split(','))
}

/// Parses an unsigned integer field, naming the field and the value on error.
fn number(text: &str, field: &'static str) -> Result<u64, CsvProblem> {
    if text.is_empty() {
        return Err(CsvProblem::MissingField { field });
    }
    text.parse::<u64>().map_err(|_| {
        let digits = text.strip_prefix('-').unwrap_or(text);
        let reason = if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            NumberReason::NotANumber
        } else if text.starts_with('-') {
            NumberReason::Negative
        } else {
            NumberReason::TooLarge
        };
        CsvProblem::BadNumber {
            field,
            value: text.to_owned(),
            reason,
        }
    })
}
