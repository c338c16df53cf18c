//! The parsed form of a trace: a list of allocate and free events on slots.
//!
//! # Invariants
//! A trace keeps [`CoreInvariant::R1`] (slots are allocated once, in order)
//! and [`CoreInvariant::R2`] (slots are freed once, after their alloc); their
//! definitions are on the variants.
//!
//! The parsers establish both ([`Trace::from_events`] checks them), so the
//! replay driver can hold live buffers in a `Vec` indexed by slot.

use serde::Serialize;

use crate::invariant::CoreInvariant;

/// One step of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Allocate `bytes` on `stream` and keep the buffer in `slot`.
    Alloc {
        /// The slot that holds the buffer until its free.
        slot: usize,
        /// Requested bytes (before any rounding).
        bytes: usize,
        /// The stream as the trace names it (a CSV stream number, or a
        /// `cudaStream_t` value in a snapshot).
        stream: u64,
    },
    /// Free the buffer held in `slot`.
    Free {
        /// The slot of an earlier `Alloc`.
        slot: usize,
    },
}

/// A parsed trace, ready to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    name: String,
    events: Vec<Event>,
    slots: usize,
}

/// Figures computed from a trace alone, without replaying it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceStats {
    /// Number of `Alloc` events.
    pub allocs: usize,
    /// Number of `Free` events.
    pub frees: usize,
    /// The highest sum of requested bytes live at once.
    pub peak_live_bytes: u64,
    /// Requested bytes still live at the end of the trace.
    pub live_at_end_bytes: u64,
    /// The distinct streams, in order of first use.
    pub streams: Vec<u64>,
}

/// Why a list of events is not a valid trace ([`CoreInvariant::R1`],
/// [`CoreInvariant::R2`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {index}: {what}")]
pub struct InvalidEvents {
    /// The index of the offending event.
    pub index: usize,
    /// The invariant it breaks: [`CoreInvariant::R1`] or [`CoreInvariant::R2`].
    pub invariant: CoreInvariant,
    /// What is wrong.
    pub what: String,
}

impl Trace {
    /// A trace from events that satisfy [`CoreInvariant::R1`] and
    /// [`CoreInvariant::R2`]; the error names the first event that breaks
    /// them, and which.
    pub fn from_events(name: impl Into<String>, events: Vec<Event>) -> Result<Self, InvalidEvents> {
        // 0 = never allocated, 1 = live, 2 = freed.
        let mut state: Vec<u8> = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let bad = |invariant, what: String| InvalidEvents {
                index,
                invariant,
                what,
            };
            match *event {
                Event::Alloc { slot, .. } if slot != state.len() => {
                    return Err(bad(
                        CoreInvariant::R1,
                        format!(
                            "alloc of slot {slot}; expected slot {} (slots are numbered in order of allocation)",
                            state.len()
                        ),
                    ));
                }
                Event::Alloc { .. } => state.push(1),
                Event::Free { slot } => match state.get(slot) {
                    Some(1) => state[slot] = 2,
                    Some(_) => {
                        return Err(bad(
                            CoreInvariant::R2,
                            format!("slot {slot} is freed twice"),
                        ));
                    }
                    None => {
                        return Err(bad(
                            CoreInvariant::R2,
                            format!("free of slot {slot}, which is not allocated"),
                        ));
                    }
                },
            }
        }
        let slots = state.len();
        Ok(Self {
            name: name.into(),
            events,
            slots,
        })
    }

    /// A trace whose events the caller (a parser of this module) has built
    /// to satisfy [`CoreInvariant::R1`] and [`CoreInvariant::R2`].
    pub(crate) fn new_unchecked(name: String, events: Vec<Event>, slots: usize) -> Self {
        debug_assert!(
            Self::from_events(String::new(), events.clone()).is_ok_and(|t| t.slots == slots),
            "parser produced events that break core:R1/core:R2 or a wrong slot count {slots}"
        );
        Self {
            name,
            events,
            slots,
        }
    }

    /// The trace's name: the file name, with the device for multi-device
    /// snapshots.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replaces the prefix `from` of the name with `to` (a path with its file
    /// name).
    pub(crate) fn rename_prefix(&mut self, from: &str, to: &str) {
        if let Some(rest) = self.name.strip_prefix(from) {
            self.name = format!("{to}{rest}");
        }
    }

    /// The events in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The number of slots (= number of `Alloc` events).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// A lower bound on the CUDA driver calls PyTorch's expandable segments
    /// make to map memory for this trace (`cuMemCreate` + `cuMemMap` per
    /// handle, at least one `cuMemSetAccess` per segment): PyTorch keeps one
    /// expandable segment per (stream, pool), maps 20 MiB handles in the
    /// large pool and 2 MiB handles in the small pool (requests up to 1 MiB),
    /// and unmaps only after an out of memory or in `empty_cache`. So each
    /// (stream, pool) creates and maps at least ⌈peak of its allocated bytes
    /// (rounded as PyTorch rounds requests) ÷ handle size⌉ handles.
    pub fn pytorch_expandable_map_calls_at_least(&self) -> u64 {
        const LARGE_HANDLE: usize = 20 << 20;
        const SMALL_HANDLE: usize = 2 << 20;
        let no_divisions = [0; crate::size_class::ROUNDUP_INTERVALS];
        let mut held = vec![(0u64, false, 0usize); self.slots];
        // (stream, small pool) → (current, peak)
        let mut per: Vec<((u64, bool), (usize, usize))> = Vec::new();
        for event in &self.events {
            match *event {
                Event::Alloc {
                    slot,
                    bytes,
                    stream,
                } => {
                    if bytes == 0 {
                        continue;
                    }
                    let rounded =
                        crate::size_class::round_size(bytes, &no_divisions).unwrap_or(usize::MAX);
                    let key = (stream, rounded <= crate::size_class::SMALL_SIZE);
                    let at = match per.iter().position(|(k, _)| *k == key) {
                        Some(i) => i,
                        None => {
                            per.push((key, (0, 0)));
                            per.len() - 1
                        }
                    };
                    let (cur, peak) = &mut per[at].1;
                    *cur = cur.saturating_add(rounded);
                    *peak = (*peak).max(*cur);
                    held[slot] = (key.0, key.1, rounded);
                }
                Event::Free { slot } => {
                    let (stream, small, rounded) = held[slot];
                    if let Some((_, (cur, _))) = per.iter_mut().find(|(k, _)| *k == (stream, small))
                    {
                        *cur = cur.saturating_sub(rounded);
                    }
                }
            }
        }
        per.iter()
            .map(|&((_, small), (_, peak))| {
                let handle = if small { SMALL_HANDLE } else { LARGE_HANDLE };
                2 * peak.div_ceil(handle) as u64 + 1
            })
            .sum()
    }

    /// Counts and the peak of live requested bytes, from the events alone.
    pub fn stats(&self) -> TraceStats {
        let mut sizes = vec![0u64; self.slots];
        let (mut live, mut peak, mut allocs, mut frees) = (0u64, 0u64, 0, 0);
        let mut streams = Vec::new();
        for event in &self.events {
            match *event {
                Event::Alloc {
                    slot,
                    bytes,
                    stream,
                } => {
                    sizes[slot] = bytes as u64;
                    live += bytes as u64;
                    peak = peak.max(live);
                    allocs += 1;
                    if !streams.contains(&stream) {
                        streams.push(stream);
                    }
                }
                Event::Free { slot } => {
                    live -= sizes[slot];
                    frees += 1;
                }
            }
        }
        TraceStats {
            allocs,
            frees,
            peak_live_bytes: peak,
            live_at_end_bytes: live,
            streams,
        }
    }
}
