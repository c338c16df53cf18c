//! PyTorch memory snapshots: the pickle that `torch.cuda.memory._dump_snapshot`
//! writes (protocol 4), a dict with `segments` and `device_traces`.
//!
//! `device_traces[d]` is the list of trace entries of device `d`, each a dict
//! with `action`, `addr`, `size` (requested bytes), `stream` and optional
//! `frames`, `time_us`, `compile_context`, `user_metadata`. The replay uses:
//!
//! - `alloc`: allocate `size` bytes on `stream`;
//! - `free_completed`: free the block at `addr`. This is the moment the block
//!   went back to PyTorch's pool (after the events of streams recorded with
//!   `record_stream` completed), so replaying it here reproduces when the
//!   memory became reusable. `free_requested` (the tensor died) is used instead
//!   when no `free_completed` for that address follows before the address is
//!   allocated again or the trace ends, e.g. when the ring buffer cut it off.
//!
//! Other actions (`segment_alloc`, `segment_free`, `segment_map`,
//! `segment_unmap`, `snapshot`, `oom`, ...) describe what PyTorch's own
//! allocator did and are skipped: the replayed engine makes its own choices.
//!
//! Frees are matched to allocs by address. The trace is a ring buffer that may
//! start after the program did: a block freed in the trace but never allocated
//! in it, and a block in `segments` with state `active_allocated` whose address
//! never appears in the trace, were live when recording began; they are
//! allocated at the start of the replay (their `requested_size`, or `size`).
//!
//! Each device with allocations becomes one trace, named after the file, with
//! `[device N]` appended when more than one device has allocations.

// Why serde-pickle: it is the maintained pure-Rust pickle decoder (no Python
// needed), reads protocols 0 to 5 including protocol 4's FRAME and MEMOIZE
// opcodes that torch's pickles use, and yields a dynamic `Value` tree (nested
// dicts, lists, tuples, ints of any size, str, None, bool, float), which lets
// this module say exactly which entry and key is wrong instead of failing a
// whole-document serde derive.
use std::collections::{BTreeMap, HashMap, HashSet};

use serde_pickle::{DeOptions, HashableValue, Value};

use super::error::{SnapshotProblem, TraceError};
use super::trace::{Event, Trace};

/// What a snapshot's dict should hold, quoted when a key is missing.
const SNAPSHOT_KEYS: &str =
    "a dict from torch.cuda.memory._snapshot() with keys `segments` and `device_traces`";
/// What a trace entry should hold.
const ENTRY_KEYS: &str = "a trace entry with keys `action`, `addr`, `size`, `stream`";
/// What a segment should hold.
const SEGMENT_KEYS: &str = "a segment dict with keys `device`, `address`, `stream`, `blocks`";
/// What a segment block should hold.
const BLOCK_KEYS: &str =
    "a block with keys `size`, `state` and `address` (or a segment `address` to count from)";

/// Parses a PyTorch memory snapshot pickle. `file` names the file in errors
/// and in the traces. Returns one trace per device with allocations.
pub fn parse_snapshot(file: &str, bytes: &[u8]) -> Result<Vec<Trace>, TraceError> {
    parse_value(file, bytes).map_err(|problem| TraceError::Snapshot {
        file: file.to_owned(),
        problem,
    })
}

/// A trace of one device before it gets its name.
type DeviceTrace = (usize, Vec<Event>, usize);

fn parse_value(file: &str, bytes: &[u8]) -> Result<Vec<Trace>, SnapshotProblem> {
    // Unknown globals (a class some torch version pickles inside an entry)
    // become None instead of failing the whole file; the keys the replay
    // needs are plain ints and strings.
    let options = DeOptions::new().replace_unresolved_globals();
    let root = serde_pickle::value_from_slice(bytes, options)
        .map_err(|source| SnapshotProblem::NotPickle { source })?;
    let root = as_dict(&root, "snapshot", SNAPSHOT_KEYS)?;
    let device_traces = as_list(
        required(root, "snapshot", "device_traces", SNAPSHOT_KEYS)?,
        "device_traces",
    )?;
    let segments = as_list(
        required(root, "snapshot", "segments", SNAPSHOT_KEYS)?,
        "segments",
    )?;
    let live_blocks = live_segment_blocks(segments)?;

    let mut traces: Vec<DeviceTrace> = Vec::new();
    for (device, entries) in device_traces.iter().enumerate() {
        let at = format!("device_traces[{device}]");
        let entries = as_list(entries, &at)?;
        let before = live_blocks.get(&device).map_or(&[][..], Vec::as_slice);
        let (events, slots) = DeviceReplay::build(device, entries, before)?;
        if slots > 0 {
            traces.push((device, events, slots));
        }
    }
    if traces.is_empty() {
        return Err(SnapshotProblem::NoAllocations);
    }
    let several = traces.len() > 1;
    Ok(traces
        .into_iter()
        .map(|(device, events, slots)| {
            let name = if several {
                format!("{file}[device {device}]")
            } else {
                file.to_owned()
            };
            Trace::new_unchecked(name, events, slots)
        })
        .collect())
}

/// A block that was live when the snapshot was taken: its address, requested
/// bytes and stream.
struct LiveBlock {
    addr: u64,
    bytes: usize,
    stream: u64,
}

/// The `active_allocated` blocks of `segments`, by device.
fn live_segment_blocks(
    segments: &[Value],
) -> Result<HashMap<usize, Vec<LiveBlock>>, SnapshotProblem> {
    let mut by_device: HashMap<usize, Vec<LiveBlock>> = HashMap::new();
    for (i, segment) in segments.iter().enumerate() {
        let at = format!("segments[{i}]");
        let segment = as_dict(segment, &at, SEGMENT_KEYS)?;
        let device = match segment.get(&key("device")) {
            Some(v) => as_usize(v, &format!("{at}.device"))?,
            None => 0,
        };
        let stream = match segment.get(&key("stream")) {
            Some(v) => as_u64(v, &format!("{at}.stream"))?,
            None => 0,
        };
        let Some(blocks) = segment.get(&key("blocks")) else {
            continue;
        };
        // Blocks tile their segment: older torch versions give no block
        // `address`, so count from the segment's.
        let start = match segment.get(&key("address")) {
            Some(v) => Some(as_u64(v, &format!("{at}.address"))?),
            None => None,
        };
        let blocks = as_list(blocks, &format!("{at}.blocks"))?;
        let live = by_device.entry(device).or_default();
        push_live_blocks(blocks, &at, start, stream, live)?;
    }
    Ok(by_device)
}

/// Appends the `active_allocated` blocks of one segment to `live`.
fn push_live_blocks(
    blocks: &[Value],
    segment_at: &str,
    mut next_addr: Option<u64>,
    stream: u64,
    live: &mut Vec<LiveBlock>,
) -> Result<(), SnapshotProblem> {
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{segment_at}.blocks[{j}]");
        let block = as_dict(block, &at, BLOCK_KEYS)?;
        let size = as_u64(
            required(block, &at, "size", BLOCK_KEYS)?,
            &format!("{at}.size"),
        )?;
        let addr = match block.get(&key("address")) {
            Some(v) => as_u64(v, &format!("{at}.address"))?,
            None => next_addr.ok_or_else(|| SnapshotProblem::MissingKey {
                at: at.clone(),
                key: "address",
                expected: BLOCK_KEYS,
            })?,
        };
        next_addr = addr.checked_add(size);
        let state = required(block, &at, "state", BLOCK_KEYS)?;
        if as_str(state, &format!("{at}.state"))? != "active_allocated" {
            continue;
        }
        let bytes = match block.get(&key("requested_size")) {
            Some(v) => as_usize(v, &format!("{at}.requested_size"))?,
            None => to_usize(size, &format!("{at}.size"))?,
        };
        live.push(LiveBlock {
            addr,
            bytes,
            stream,
        });
    }
    Ok(())
}

/// Turns one device's entries into events, matching frees to allocs by
/// address.
#[derive(Default)]
struct DeviceReplay {
    /// Events; `None` marks a `free_requested` whose free may move to a
    /// later `free_completed`.
    events: Vec<Option<Event>>,
    slots: usize,
    /// Live address → (slot, entry that allocated it).
    live: HashMap<u64, (usize, String)>,
    /// Address → (index of its `free_requested` marker in `events`, slot).
    requested: HashMap<u64, (usize, usize)>,
}

impl DeviceReplay {
    fn build(
        device: usize,
        entries: &[Value],
        before: &[LiveBlock],
    ) -> Result<(Vec<Event>, usize), SnapshotProblem> {
        let parsed: Vec<Entry> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| Entry::parse(e, format!("device_traces[{device}][{i}]")))
            .collect::<Result<_, _>>()?;
        let mut this = Self::default();
        this.allocate_preexisting(&parsed, before);
        for entry in &parsed {
            this.step(entry)?;
        }
        // free_requested entries never completed free at their own position.
        let pending: Vec<_> = this.requested.drain().collect();
        for (_, (index, slot)) in pending {
            this.events[index] = Some(Event::Free { slot });
        }
        Ok((this.events.into_iter().flatten().collect(), this.slots))
    }

    /// Allocates, at the start, the blocks that were live when recording began.
    fn allocate_preexisting(&mut self, entries: &[Entry], before: &[LiveBlock]) {
        let mut seen = HashSet::new();
        for entry in entries {
            match entry.action {
                Action::Alloc => {
                    seen.insert(entry.addr);
                }
                Action::FreeRequested | Action::FreeCompleted if seen.insert(entry.addr) => {
                    self.alloc(
                        entry.addr,
                        entry.size,
                        entry.stream,
                        format!("{} (allocated before recording)", entry.at),
                    );
                }
                _ => {}
            }
        }
        for block in before {
            if seen.insert(block.addr) {
                self.alloc(
                    block.addr,
                    block.bytes,
                    block.stream,
                    "segments (live before recording)".to_owned(),
                );
            }
        }
    }

    fn alloc(&mut self, addr: u64, bytes: usize, stream: u64, at: String) {
        let slot = self.slots;
        self.slots += 1;
        self.events.push(Some(Event::Alloc {
            slot,
            bytes,
            stream,
        }));
        self.live.insert(addr, (slot, at));
    }

    fn step(&mut self, entry: &Entry) -> Result<(), SnapshotProblem> {
        match entry.action {
            Action::Alloc => {
                // A pending free_requested at this address never completed.
                if let Some((index, slot)) = self.requested.remove(&entry.addr) {
                    self.events[index] = Some(Event::Free { slot });
                }
                if let Some((_, first_at)) = self.live.get(&entry.addr) {
                    return Err(SnapshotProblem::AddressInUse {
                        at: entry.at.clone(),
                        addr: entry.addr,
                        first_at: first_at.clone(),
                    });
                }
                self.alloc(entry.addr, entry.size, entry.stream, entry.at.clone());
            }
            Action::FreeRequested => {
                if let Some((slot, _)) = self.live.remove(&entry.addr) {
                    self.requested.insert(entry.addr, (self.events.len(), slot));
                    self.events.push(None);
                }
            }
            Action::FreeCompleted => {
                if let Some((_, slot)) = self.requested.remove(&entry.addr) {
                    self.events.push(Some(Event::Free { slot }));
                } else if let Some((slot, _)) = self.live.remove(&entry.addr) {
                    self.events.push(Some(Event::Free { slot }));
                }
            }
            Action::Other => {}
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Alloc,
    FreeRequested,
    FreeCompleted,
    Other,
}

/// The fields of a trace entry that the replay uses.
struct Entry {
    at: String,
    action: Action,
    addr: u64,
    size: usize,
    stream: u64,
}

impl Entry {
    fn parse(value: &Value, at: String) -> Result<Self, SnapshotProblem> {
        let dict = as_dict(value, &at, ENTRY_KEYS)?;
        let action = match as_str(
            required(dict, &at, "action", ENTRY_KEYS)?,
            &format!("{at}.action"),
        )? {
            "alloc" => Action::Alloc,
            "free_requested" => Action::FreeRequested,
            "free_completed" => Action::FreeCompleted,
            _ => {
                return Ok(Self {
                    at,
                    action: Action::Other,
                    addr: 0,
                    size: 0,
                    stream: 0,
                });
            }
        };
        let addr = as_u64(
            required(dict, &at, "addr", ENTRY_KEYS)?,
            &format!("{at}.addr"),
        )?;
        let size = as_usize(
            required(dict, &at, "size", ENTRY_KEYS)?,
            &format!("{at}.size"),
        )?;
        let stream = as_u64(
            required(dict, &at, "stream", ENTRY_KEYS)?,
            &format!("{at}.stream"),
        )?;
        Ok(Self {
            at,
            action,
            addr,
            size,
            stream,
        })
    }
}

fn key(name: &str) -> HashableValue {
    HashableValue::String(name.to_owned())
}

fn required<'a>(
    dict: &'a BTreeMap<HashableValue, Value>,
    at: &str,
    name: &'static str,
    expected: &'static str,
) -> Result<&'a Value, SnapshotProblem> {
    dict.get(&key(name))
        .ok_or_else(|| SnapshotProblem::MissingKey {
            at: at.to_owned(),
            key: name,
            expected,
        })
}

fn as_dict<'a>(
    value: &'a Value,
    at: &str,
    expected: &'static str,
) -> Result<&'a BTreeMap<HashableValue, Value>, SnapshotProblem> {
    match value {
        Value::Dict(d) => Ok(d),
        other => Err(wrong_type(other, at, expected)),
    }
}

fn as_list<'a>(value: &'a Value, at: &str) -> Result<&'a [Value], SnapshotProblem> {
    match value {
        Value::List(l) | Value::Tuple(l) => Ok(l),
        other => Err(wrong_type(other, at, "a list")),
    }
}

fn as_str<'a>(value: &'a Value, at: &str) -> Result<&'a str, SnapshotProblem> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(wrong_type(other, at, "a str")),
    }
}

const UNSIGNED: &str = "a non-negative integer below 2^64";

fn as_u64(value: &Value, at: &str) -> Result<u64, SnapshotProblem> {
    let out_of_range = |value: String| SnapshotProblem::OutOfRange {
        at: at.to_owned(),
        value,
        expected: UNSIGNED,
    };
    match value {
        Value::I64(i) => u64::try_from(*i).map_err(|_| out_of_range(i.to_string())),
        Value::Int(big) => big
            .to_string()
            .parse::<u64>()
            .map_err(|_| out_of_range(big.to_string())),
        other => Err(wrong_type(other, at, "an integer")),
    }
}

fn as_usize(value: &Value, at: &str) -> Result<usize, SnapshotProblem> {
    to_usize(as_u64(value, at)?, at)
}

fn to_usize(n: u64, at: &str) -> Result<usize, SnapshotProblem> {
    usize::try_from(n).map_err(|_| SnapshotProblem::OutOfRange {
        at: at.to_owned(),
        value: n.to_string(),
        expected: "a size that fits this machine's usize",
    })
}

fn wrong_type(value: &Value, at: &str, expected: &'static str) -> SnapshotProblem {
    let found = match value {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::I64(_) | Value::Int(_) => "an int",
        Value::F64(_) => "a float",
        Value::Bytes(_) => "a bytes",
        Value::String(_) => "a str",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Set(_) | Value::FrozenSet(_) => "a set",
        Value::Dict(_) => "a dict",
    };
    SnapshotProblem::WrongType {
        at: at.to_owned(),
        found,
        expected,
    }
}
