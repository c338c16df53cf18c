//! The `profile` feature's outputs: symbolization (when a profile is read,
//! never on the allocation path), pprof protobuf (gzip'd, as `go tool pprof`,
//! Pyroscope and Grafana read it), flamegraph SVG (inferno) and a text table
//! of the top allocation sites.

use std::collections::HashMap;
use std::io::Write as _;

use super::{HeapProfile, Kind, Sample};

/// pprof's `profile.proto` (github.com/google/pprof, proto/profile.proto),
/// the fields this crate writes, declared by hand for prost.
pub mod proto {
    #![allow(missing_docs)]
    /// The profile.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// One source frame of a return address (several when calls were inlined,
/// innermost first).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The demangled function name, without its hash suffix.
    pub function: String,
    /// The source file, when debug info has it.
    pub file: String,
    /// The line, 0 when unknown.
    pub line: u32,
}

/// Prefixes of functions that belong to the allocator itself: dropped from the
/// innermost end of every stack.
const ALLOCATOR: &[&str] = &[
    "alloc_host::profile",
    "alloc_host::tracking",
    "<alloc_host::tracking",
    "__rust_alloc",
    "__rust_realloc",
    "__rust_alloc_zeroed",
    "__rustc::__rust_alloc",
    "__rustc::__rust_realloc",
    "__rustc::__rust_alloc_zeroed",
    "__rdl_",
];

/// Prefixes of library code skipped when naming a stack's allocation site
/// ([`HeapProfile::top_sites`]).
const LIBRARY: &[&str] = &[
    "alloc::",
    "<alloc::",
    "core::",
    "<core::",
    "std::",
    "<std::",
    "hashbrown::",
    "<hashbrown::",
    "<T as alloc::",
    "<T as core::",
    "<[T]",
    "<str as",
    "<&",
];

fn starts_with_any(s: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| s.starts_with(p))
}

/// Symbolizes return addresses (through the binary's debug info; a return
/// address is looked up one byte back, inside its call instruction).
pub(crate) struct Symbols {
    cache: HashMap<usize, Vec<Frame>>,
}

impl Symbols {
    pub(crate) fn new() -> Self {
        Symbols {
            cache: HashMap::new(),
        }
    }

    pub(crate) fn frames(&mut self, addr: usize) -> &[Frame] {
        self.cache.entry(addr).or_insert_with(|| {
            let mut out = Vec::new();
            backtrace::resolve((addr - 1) as *mut core::ffi::c_void, |s| {
                let function = s
                    .name()
                    .map(|n| format!("{n:#}"))
                    .unwrap_or_else(|| format!("{addr:#x}"));
                let file = s
                    .filename()
                    .map(|f| f.display().to_string())
                    .unwrap_or_default();
                out.push(Frame {
                    function,
                    file,
                    line: s.lineno().unwrap_or(0),
                });
            });
            if out.is_empty() {
                out.push(Frame {
                    function: format!("{addr:#x}"),
                    file: String::new(),
                    line: 0,
                });
            }
            out
        })
    }

    /// The addresses of `s` without the allocator's own frames at the
    /// innermost end.
    pub(crate) fn user_frames<'a>(&mut self, s: &'a Sample) -> &'a [usize] {
        let mut i = 0;
        while i < s.frames.len()
            && self
                .frames(s.frames[i])
                .iter()
                .all(|f| starts_with_any(&f.function, ALLOCATOR))
        {
            i += 1;
        }
        &s.frames[i..]
    }

    /// The allocation site of `s`: its innermost frame outside the allocator
    /// and the standard library (`file:line` when known).
    pub(crate) fn site(&mut self, s: &Sample) -> String {
        let frames = self.user_frames(s);
        for &a in frames {
            for f in self.frames(a) {
                if !starts_with_any(&f.function, LIBRARY) {
                    return f.function.clone();
                }
            }
        }
        match frames.first() {
            Some(&a) => self.frames(a)[0].function.clone(),
            None => "[unknown: no stack]".to_string(),
        }
    }
}

/// An allocation site and its estimates (see [`HeapProfile::top_sites`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    /// The innermost function outside the allocator and the standard library.
    pub function: String,
    /// Estimated bytes (in use or allocated, as the profile).
    pub bytes: f64,
    /// Estimated allocations.
    pub count: f64,
    /// Share of the profile's bytes, 0..=1.
    pub share: f64,
}

impl HeapProfile {
    /// The `n` allocation sites with the most bytes, largest first.
    pub fn top_sites(&self, n: usize) -> Vec<Site> {
        super::with_busy(|| {
            let mut sym = Symbols::new();
            let mut by: HashMap<String, (f64, f64)> = HashMap::new();
            for s in &self.samples {
                let e = by.entry(sym.site(s)).or_default();
                e.0 += s.bytes;
                e.1 += s.count;
            }
            let total = self.total_bytes();
            let mut sites: Vec<Site> = by
                .into_iter()
                .map(|(function, (bytes, count))| Site {
                    function,
                    bytes,
                    count,
                    share: if total > 0.0 { bytes / total } else { 0.0 },
                })
                .collect();
            sites.sort_by(|a, b| b.bytes.total_cmp(&a.bytes));
            sites.truncate(n);
            sites
        })
    }

    /// The top `n` sites as a text table.
    pub fn to_text(&self, n: usize) -> String {
        let mut out = format!(
            "# heap profile: {} {}, sampling every {} bytes on average; {} samples, est. {} in {:.0} allocations\n",
            self.kind.as_str(),
            match &self.filter {
                super::Filter::All => "process".to_string(),
                super::Filter::Name(n) => format!("scope name {n:?}"),
                super::Filter::Scope(id) => format!("scope {}", id.to_bits()),
            },
            self.rate,
            self.samples.iter().map(|s| s.samples).sum::<u64>(),
            alloc_scope::format_bytes(self.total_bytes() as u64),
            self.total_count()
        );
        out.push_str("  share        bytes   allocations  site\n");
        for s in self.top_sites(n) {
            out.push_str(&format!(
                "{:6.1}% {:>12} {:>13.0}  {}\n",
                s.share * 100.0,
                alloc_scope::format_bytes(s.bytes as u64),
                s.count,
                s.function
            ));
        }
        out
    }

    /// The profile as pprof protobuf, gzip'd (`go tool pprof file`). Sample
    /// types: `{inuse|alloc}_objects` (count) and `{inuse|alloc}_space`
    /// (bytes), period type `space`/`bytes` with the sampling rate; each
    /// sample has a `scope` label with its scope name. Functions are
    /// symbolized now, so the file is self-contained.
    pub fn to_pprof(&self) -> Vec<u8> {
        let raw = self.to_pprof_proto();
        let mut buf = Vec::new();
        prost::Message::encode(&raw, &mut buf).expect("a Vec grows as needed");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing into a Vec cannot fail.
        let _ = gz.write_all(&buf);
        gz.finish().unwrap_or_default()
    }

    /// The pprof message before encoding (for readers and tests).
    pub fn to_pprof_proto(&self) -> proto::Profile {
        super::with_busy(|| self.build_pprof())
    }

    fn build_pprof(&self) -> proto::Profile {
        let mut strings: Vec<String> = vec![String::new()];
        let mut string_ids: HashMap<String, i64> = HashMap::new();
        let mut s = |x: &str| -> i64 {
            if let Some(&i) = string_ids.get(x) {
                return i;
            }
            strings.push(x.to_string());
            string_ids.insert(x.to_string(), strings.len() as i64 - 1);
            strings.len() as i64 - 1
        };
        let kind = self.kind.as_str();
        let sample_type = vec![
            proto::ValueType {
                r#type: s(&format!("{kind}_objects")),
                unit: s("count"),
            },
            proto::ValueType {
                r#type: s(&format!("{kind}_space")),
                unit: s("bytes"),
            },
        ];
        let period_type = Some(proto::ValueType {
            r#type: s("space"),
            unit: s("bytes"),
        });
        let scope_key = s("scope");
        let mut sym = Symbols::new();
        let mut locations: Vec<proto::Location> = Vec::new();
        let mut location_ids: HashMap<usize, u64> = HashMap::new();
        let mut functions: Vec<proto::Function> = Vec::new();
        let mut function_ids: HashMap<(String, String), u64> = HashMap::new();
        let mut samples = Vec::new();
        for smp in &self.samples {
            let mut ids = Vec::new();
            for &a in sym.user_frames(smp) {
                if let Some(&id) = location_ids.get(&a) {
                    ids.push(id);
                    continue;
                }
                let mut lines = Vec::new();
                for f in sym.frames(a).to_vec() {
                    let key = (f.function.clone(), f.file.clone());
                    let fid = match function_ids.get(&key) {
                        Some(&id) => id,
                        None => {
                            let id = functions.len() as u64 + 1;
                            let name = s(&f.function);
                            functions.push(proto::Function {
                                id,
                                name,
                                system_name: name,
                                filename: s(&f.file),
                                start_line: 0,
                            });
                            function_ids.insert(key, id);
                            id
                        }
                    };
                    lines.push(proto::Line {
                        function_id: fid,
                        line: f.line as i64,
                    });
                }
                let id = locations.len() as u64 + 1;
                locations.push(proto::Location {
                    id,
                    mapping_id: 0,
                    address: a as u64,
                    line: lines,
                });
                location_ids.insert(a, id);
                ids.push(id);
            }
            let scope = if smp.scope.is_empty() {
                "(closed scope)"
            } else {
                &smp.scope
            };
            samples.push(proto::Sample {
                location_id: ids,
                value: vec![smp.count.round() as i64, smp.bytes.round() as i64],
                label: vec![proto::Label {
                    key: scope_key,
                    str: s(scope),
                    num: 0,
                    num_unit: 0,
                }],
            });
        }
        let time_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let default_sample_type = sample_type[1].r#type;
        proto::Profile {
            sample_type,
            sample: samples,
            mapping: Vec::new(),
            location: locations,
            function: functions,
            string_table: strings,
            time_nanos,
            period_type,
            period: self.rate as i64,
            comment: Vec::new(),
            default_sample_type,
        }
    }

    /// Folded stacks (`outer;...;inner bytes`, one line per stack), the
    /// input of flamegraph tools; the scope name is the root frame.
    pub fn to_folded(&self) -> String {
        super::with_busy(|| {
            let mut sym = Symbols::new();
            let mut lines: HashMap<String, f64> = HashMap::new();
            for smp in &self.samples {
                let mut names: Vec<String> = Vec::new();
                for &a in sym.user_frames(smp) {
                    for f in sym.frames(a) {
                        names.push(f.function.replace(';', ":"));
                    }
                }
                names.push(if smp.scope.is_empty() {
                    "(closed scope)".to_string()
                } else {
                    format!("scope {}", smp.scope.replace(';', ":"))
                });
                names.reverse();
                *lines.entry(names.join(";")).or_default() += smp.bytes;
            }
            let mut out = String::new();
            let mut keys: Vec<_> = lines.into_iter().collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, v) in keys {
                let v = v.round() as u64;
                if v > 0 {
                    out.push_str(&format!("{k} {v}\n"));
                }
            }
            out
        })
    }

    /// A flamegraph SVG of the profile's bytes (inferno), one tower per scope
    /// name.
    pub fn to_flamegraph_svg(&self) -> Vec<u8> {
        let folded = self.to_folded();
        super::with_busy(|| {
            let mut opts = inferno::flamegraph::Options::default();
            opts.title = format!(
                "{} heap ({} bytes)",
                if self.kind == Kind::InUse {
                    "in-use"
                } else {
                    "allocated"
                },
                self.total_bytes().round()
            );
            opts.count_name = "bytes".to_string();
            let mut out = Vec::new();
            if folded.is_empty() {
                // inferno refuses an empty input; an empty profile is a page saying so.
                return b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"400\" height=\"40\"><text x=\"10\" y=\"25\">no samples</text></svg>\n".to_vec();
            }
            match inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut out) {
                Ok(()) => out,
                Err(e) => format!(
                    "<svg xmlns=\"http://www.w3.org/2000/svg\"><text y=\"20\">flamegraph failed: {e}</text></svg>\n"
                )
                .into_bytes(),
            }
        })
    }
}
