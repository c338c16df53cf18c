//! Configuration in PyTorch's `PYTORCH_CUDA_ALLOC_CONF` syntax:
//! `key:value,key:value`, from a string or the environment
//! ([`Config::from_env`]: [`ENV_VAR`], else `PYTORCH_CUDA_ALLOC_CONF`, else
//! `PYTORCH_ALLOC_CONF`).
//!
//! Every key PyTorch 2.x accepts is accepted, with PyTorch's rule for its
//! value. Keys with PyTorch's meaning here: `max_split_size_mb`,
//! `roundup_power2_divisions` (a number, or a list such as
//! `[256:1,512:2,>:4]`), `garbage_collection_threshold`, `expandable_segments`,
//! `per_process_memory_fraction`, `backend:native`, and
//! `max_non_split_rounding_mb` / `large_segment_size_mb` at their default
//! (20). The others ([`NO_EFFECT_KEYS`]: the pinned host allocator's settings,
//! CUDA graph and driver-call settings, other values of the two sizes,
//! `backend:cudaMallocAsync`) are accepted with a warning, in
//! [`Config::warnings`], that says they have no effect here; `from_env` prints
//! each warning once. Keys of this engine: `max_reserved_mb` (a byte cap on
//! reserved memory), `trace_buffer_entries` (the trace ring buffer's length,
//! 0 = off); `max_cached_fraction` is still accepted, with a warning that it
//! has no effect (the engine unmaps cached pages only when a map would raise
//! reserved memory past its peak or the cap).
//! Unknown keys and bad values are errors naming the key, the value and the
//! rule.

use crate::size_class::ROUNDUP_INTERVALS;

/// The environment variable [`Config::from_env`] reads first.
pub const ENV_VAR: &str = "ALLOC_CONF";

/// The environment variables [`Config::from_env`] reads, in order: the first
/// one set is used (PyTorch's own names come after this engine's).
pub const ENV_VARS: [&str; 3] = [ENV_VAR, "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"];

/// The smallest `max_split_size_mb` PyTorch accepts (the large-segment size).
pub const MIN_MAX_SPLIT_MB: usize = 20;

/// The size in MiB of a large-pool segment and the slack an oversize block may
/// have over a request: the only value of `large_segment_size_mb` and
/// `max_non_split_rounding_mb` this engine implements (PyTorch's default).
pub const LARGE_SEGMENT_MB: usize = 20;

/// Default of `max_cached_fraction`, a key kept for compatibility that has no
/// effect (see the module docs).
pub const DEFAULT_MAX_CACHED_FRACTION: f64 = 0.05;

/// The longest trace ring buffer `trace_buffer_entries` may ask for (16 Mi
/// entries).
pub const MAX_TRACE_ENTRIES: usize = 1 << 24;

/// PyTorch's cap on `pinned_num_register_threads`.
pub const MAX_PINNED_REGISTER_THREADS: usize = 128;

/// The keys [`Config::parse`] accepts.
pub const KEYS: &[&str] = &[
    "max_split_size_mb",
    "roundup_power2_divisions",
    "garbage_collection_threshold",
    "expandable_segments",
    "backend",
    "per_process_memory_fraction",
    "max_non_split_rounding_mb",
    "large_segment_size_mb",
    "release_lock_on_cudamalloc",
    "release_lock_on_hipmalloc",
    "pinned_use_cuda_host_register",
    "pinned_use_hip_host_register",
    "pinned_num_register_threads",
    "pinned_use_background_threads",
    "pinned_reserve_segment_size_mb",
    "pinned_free_catch_all",
    "graph_capture_record_stream_reuse",
    "throw_on_cudamalloc_oom",
    "expandable_segments_reserve",
    "expandable_segments_reserve_by_class",
    "max_reserved_mb",
    "trace_buffer_entries",
    "max_cached_fraction",
];

/// PyTorch keys accepted (value checked) that change nothing here, and why.
pub const NO_EFFECT_KEYS: &[(&str, &str)] = &[
    (
        "release_lock_on_cudamalloc",
        "the engine never holds its lock across a blocking device allocation it could avoid",
    ),
    (
        "release_lock_on_hipmalloc",
        "the engine never holds its lock across a blocking device allocation it could avoid",
    ),
    (
        "pinned_use_cuda_host_register",
        "it configures PyTorch's pinned host allocator; alloc-cuda's PinnedPool is configured in code",
    ),
    (
        "pinned_use_hip_host_register",
        "it configures PyTorch's pinned host allocator; alloc-cuda's PinnedPool is configured in code",
    ),
    (
        "pinned_num_register_threads",
        "it configures PyTorch's pinned host allocator; alloc-cuda's PinnedPool is configured in code",
    ),
    (
        "pinned_use_background_threads",
        "it configures PyTorch's pinned host allocator; alloc-cuda's PinnedPool is configured in code",
    ),
    (
        "pinned_reserve_segment_size_mb",
        "it configures PyTorch's pinned host allocator; alloc-cuda's PinnedPool is configured in code",
    ),
    (
        "pinned_free_catch_all",
        "it configures PyTorch's pinned host allocator; alloc-cuda's PinnedPool is configured in code",
    ),
    (
        "graph_capture_record_stream_reuse",
        "this engine has no CUDA graph capture pools",
    ),
    (
        "throw_on_cudamalloc_oom",
        "the engine already checks its cap (per_process_memory_fraction, max_reserved_mb) before asking the device",
    ),
    (
        "expandable_segments_reserve",
        "the engine sizes its own expandable reservations",
    ),
    (
        "expandable_segments_reserve_by_class",
        "the engine sizes its own expandable reservations",
    ),
    (
        "max_non_split_rounding_mb",
        "the engine serves a request from an oversize cached block only within 20 MiB (PyTorch's default)",
    ),
    (
        "large_segment_size_mb",
        "large-pool segments are 20 MiB here (PyTorch's default)",
    ),
    (
        "backend",
        "`cudaMallocAsync` / `async` is a different allocator; this engine is the native one",
    ),
];

/// The engine's settings. `Config::default()` is the measured default.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    /// Free blocks at least this large (in fixed segments) are never split,
    /// and are not used for requests below it. `usize::MAX` = no limit.
    pub max_split_size: usize,
    /// Divisions per power-of-two interval, from 1 MiB up (0 or 1 = plain
    /// 512 B rounding).
    pub roundup_power2_divisions: [u32; ROUNDUP_INTERVALS],
    /// Release cached memory before growing once reserved exceeds this fraction
    /// of the cap (0, 1).
    pub garbage_collection_threshold: Option<f64>,
    /// Expandable segments: `None` = on where the backend can map pages.
    pub expandable_segments: Option<bool>,
    /// Cap reserved memory at this fraction of device total.
    pub memory_fraction: Option<f64>,
    /// Cap reserved memory at this many bytes.
    pub max_reserved_bytes: Option<usize>,
    /// Length of the trace ring buffer (0 = off).
    pub trace_entries: usize,
    /// `release_lock_on_cudamalloc`: accepted for compatibility; no effect.
    pub release_lock_on_device_alloc: bool,
    /// `pinned_use_cuda_host_register`: accepted for compatibility; no effect.
    pub pinned_use_host_register: bool,
    /// `pinned_num_register_threads`: accepted for compatibility; no effect.
    pub pinned_num_register_threads: usize,
    /// `graph_capture_record_stream_reuse`: accepted for compatibility; no
    /// effect.
    pub graph_capture_record_stream_reuse: bool,
    /// Expandable segments: before mapping more pages, unmap free pages until
    /// cached memory is at most this fraction of reserved memory.
    pub max_cached_fraction: f64,
    /// One line per accepted setting that has no effect here (see
    /// [`NO_EFFECT_KEYS`]); [`Config::from_env`] prints them once.
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_split_size: usize::MAX,
            roundup_power2_divisions: [0; ROUNDUP_INTERVALS],
            garbage_collection_threshold: None,
            expandable_segments: None,
            memory_fraction: None,
            max_reserved_bytes: None,
            trace_entries: 0,
            release_lock_on_device_alloc: false,
            pinned_use_host_register: false,
            pinned_num_register_threads: 1,
            graph_capture_record_stream_reuse: false,
            max_cached_fraction: DEFAULT_MAX_CACHED_FRACTION,
            warnings: Vec::new(),
        }
    }
}

/// A configuration string that could not be parsed: names the key, the value
/// and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A `key:value` pair without the colon.
    #[error("config entry `{entry}` is not of the form key:value")]
    Syntax {
        /// The entry as written.
        entry: String,
    },
    /// A key the engine does not know.
    #[error("unknown config key `{key}` (value `{value}`); known keys: {}", KEYS.join(", "))]
    UnknownKey {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
    /// A known key with a value that breaks its rule.
    #[error("config key `{key}`: value `{value}` is invalid: {rule}")]
    BadValue {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// The rule the value must follow.
        rule: String,
    },
    /// The env var is set but not valid Unicode.
    #[error("environment variable {var} is not valid UTF-8")]
    NotUnicode {
        /// The variable's name.
        var: &'static str,
    },
}

fn bad(key: &str, value: &str, rule: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        rule: rule.into(),
    }
}

impl Config {
    /// Reads the first of [`ENV_VARS`] that is set (`ALLOC_CONF`, else
    /// `PYTORCH_CUDA_ALLOC_CONF`, else `PYTORCH_ALLOC_CONF`); none set or an
    /// empty value gives the default. Prints each of the config's
    /// [`warnings`](Config::warnings) to stderr, once per process.
    pub fn from_env() -> Result<Config, ConfigError> {
        let Some((var, text)) = Self::env_text()? else {
            return Ok(Config::default());
        };
        let c = Config::parse(&text)?;
        print_warnings_once(var, &c.warnings);
        Ok(c)
    }

    /// The first of [`ENV_VARS`] that is set, and its value.
    pub fn env_text() -> Result<Option<(&'static str, String)>, ConfigError> {
        for var in ENV_VARS {
            match std::env::var(var) {
                Ok(s) => return Ok(Some((var, s))),
                Err(std::env::VarError::NotPresent) => continue,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ConfigError::NotUnicode { var });
                }
            }
        }
        Ok(None)
    }

    /// Parses `key:value,key:value` (whitespace around entries ignored; commas
    /// inside `[...]` belong to the list).
    pub fn parse(s: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        for entry in split_entries(s) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some((key, value)) = entry.split_once(':') else {
                return Err(ConfigError::Syntax {
                    entry: entry.to_string(),
                });
            };
            c.set(key.trim(), value.trim())?;
        }
        Ok(c)
    }

    /// Sets one key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if self.set_engine_key(key, value)? || self.set_no_effect_key(key, value)? {
            return Ok(());
        }
        Err(ConfigError::UnknownKey {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// The keys with an effect. Whether `key` is one of them.
    fn set_engine_key(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        match key {
            "max_split_size_mb" => self.max_split_size = parse_mib_at_least_20(key, value)?,
            "roundup_power2_divisions" => {
                self.roundup_power2_divisions = parse_divisions(key, value)?
            }
            "garbage_collection_threshold" => {
                let t = parse_f64(key, value)?;
                if !(t > 0.0 && t < 1.0) {
                    return Err(bad(key, value, "must be strictly between 0 and 1"));
                }
                self.garbage_collection_threshold = Some(t);
            }
            "expandable_segments" => self.expandable_segments = Some(parse_bool(key, value)?),
            "per_process_memory_fraction" => {
                let f = parse_f64(key, value)?;
                if !(f > 0.0 && f <= 1.0) {
                    return Err(bad(key, value, "must be in (0, 1]"));
                }
                self.memory_fraction = Some(f);
            }
            "max_reserved_mb" => {
                let mb = parse_uint(key, value)?;
                let b = mb.checked_mul(1 << 20).filter(|&b| b > 0).ok_or_else(|| {
                    bad(
                        key,
                        value,
                        "must be a positive number of MiB that fits in the address space",
                    )
                })?;
                self.max_reserved_bytes = Some(b);
            }
            "trace_buffer_entries" => {
                let n = parse_uint(key, value)?;
                if n > MAX_TRACE_ENTRIES {
                    return Err(bad(
                        key,
                        value,
                        format!("must be at most {MAX_TRACE_ENTRIES}"),
                    ));
                }
                self.trace_entries = n;
            }
            "max_cached_fraction" => {
                let f = parse_f64(key, value)?;
                if !(0.0..=1.0).contains(&f) {
                    return Err(bad(key, value, "must be in [0, 1]"));
                }
                self.max_cached_fraction = f;
                self.warnings.push(format!(
                    "`{key}:{value}` has no effect: the engine unmaps cached pages only when a map would raise reserved memory past its peak or the cap; remove the key"
                ));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// PyTorch's keys without an effect here: checks the value with PyTorch's
    /// rule and adds a warning (none for the values this engine implements).
    /// Whether `key` is one of them.
    fn set_no_effect_key(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        let implemented = match key {
            "backend" => match value {
                "native" => true,
                "cudaMallocAsync" | "async" => false,
                _ => {
                    return Err(bad(
                        key,
                        value,
                        "must be `native`, `cudaMallocAsync` or `async` (PyTorch's backends)",
                    ));
                }
            },
            "max_non_split_rounding_mb" | "large_segment_size_mb" => {
                parse_mib_at_least_20(key, value)? == LARGE_SEGMENT_MB << 20
            }
            "release_lock_on_cudamalloc" | "release_lock_on_hipmalloc" => {
                self.release_lock_on_device_alloc = parse_bool(key, value)?;
                false
            }
            "pinned_use_cuda_host_register" | "pinned_use_hip_host_register" => {
                self.pinned_use_host_register = parse_bool(key, value)?;
                false
            }
            "graph_capture_record_stream_reuse" => {
                self.graph_capture_record_stream_reuse = parse_bool(key, value)?;
                false
            }
            "pinned_use_background_threads"
            | "pinned_free_catch_all"
            | "throw_on_cudamalloc_oom" => {
                parse_bool(key, value)?;
                false
            }
            "pinned_num_register_threads" => {
                let n = parse_uint(key, value)?;
                if !n.is_power_of_two() || n > MAX_PINNED_REGISTER_THREADS {
                    return Err(bad(
                        key,
                        value,
                        format!("must be a power of two from 1 to {MAX_PINNED_REGISTER_THREADS}"),
                    ));
                }
                self.pinned_num_register_threads = n;
                false
            }
            "pinned_reserve_segment_size_mb" => {
                parse_uint(key, value)?;
                false
            }
            "expandable_segments_reserve" => {
                parse_reserve(key, value, value)?;
                false
            }
            "expandable_segments_reserve_by_class" => {
                parse_reserve_by_class(key, value)?;
                false
            }
            _ => return Ok(false),
        };
        if !implemented {
            let why = NO_EFFECT_KEYS
                .iter()
                .find(|(k, _)| *k == key)
                .map_or("", |(_, why)| why);
            self.warnings
                .push(format!("`{key}:{value}` has no effect here: {why}"));
        }
        Ok(true)
    }

    /// The settings that differ from the default, in this syntax (what a
    /// snapshot reports as `PYTORCH_CUDA_ALLOC_CONF`). Settings without an
    /// effect are left out.
    pub fn to_conf_string(&self) -> String {
        let d = Config::default();
        let mut out: Vec<String> = Vec::new();
        if self.max_split_size != d.max_split_size {
            out.push(format!("max_split_size_mb:{}", self.max_split_size >> 20));
        }
        if self.roundup_power2_divisions != d.roundup_power2_divisions {
            let items: Vec<String> = self
                .roundup_power2_divisions
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{}:{n}", 1u64 << i))
                .collect();
            out.push(format!("roundup_power2_divisions:[{}]", items.join(",")));
        }
        if let Some(t) = self.garbage_collection_threshold {
            out.push(format!("garbage_collection_threshold:{t}"));
        }
        if let Some(e) = self.expandable_segments {
            out.push(format!(
                "expandable_segments:{}",
                if e { "True" } else { "False" }
            ));
        }
        if let Some(f) = self.memory_fraction {
            out.push(format!("per_process_memory_fraction:{f}"));
        }
        if let Some(b) = self.max_reserved_bytes {
            out.push(format!("max_reserved_mb:{}", b >> 20));
        }
        if self.trace_entries != d.trace_entries {
            out.push(format!("trace_buffer_entries:{}", self.trace_entries));
        }
        if self.max_cached_fraction != d.max_cached_fraction {
            out.push(format!("max_cached_fraction:{}", self.max_cached_fraction));
        }
        out.join(",")
    }
}

/// Prints `warnings` to stderr, each once per process.
fn print_warnings_once(var: &str, warnings: &[String]) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    for w in warnings {
        if seen.insert(w.clone()) {
            eprintln!("alloc-core: {var}: {w}");
        }
    }
}

/// A number of MiB of at least [`MIN_MAX_SPLIT_MB`], in bytes.
fn parse_mib_at_least_20(key: &str, value: &str) -> Result<usize, ConfigError> {
    let mb = parse_uint(key, value)?;
    if mb < MIN_MAX_SPLIT_MB {
        return Err(bad(
            key,
            value,
            format!("must be at least {MIN_MAX_SPLIT_MB} (MiB, the large-segment size)"),
        ));
    }
    mb.checked_mul(1 << 20).ok_or_else(|| {
        bad(
            key,
            value,
            "must fit in the address space when multiplied by 1 MiB",
        )
    })
}

/// PyTorch's reserve size: a fraction of device memory in (0, 1], or a
/// positive number of GiB with the suffix `G` (`40G`).
fn parse_reserve(key: &str, value: &str, item: &str) -> Result<(), ConfigError> {
    let rule = "must be a fraction of device memory in (0, 1] or a number of GiB such as 40G";
    let (num, gib) = match item.strip_suffix(['G', 'g']) {
        Some(n) => (n, true),
        None => (item, false),
    };
    let v = num
        .trim()
        .parse::<f64>()
        .map_err(|_| bad(key, value, rule))?;
    let ok = v.is_finite() && v > 0.0 && (gib || v <= 1.0);
    if ok {
        Ok(())
    } else {
        Err(bad(key, value, rule))
    }
}

/// `[class:reserve,class:reserve]`, each reserve as in [`parse_reserve`].
fn parse_reserve_by_class(key: &str, value: &str) -> Result<(), ConfigError> {
    let list = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(|| bad(key, value, "must be a list such as [0:0.5,1:40G]"))?;
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (class, reserve) = item
            .split_once(':')
            .ok_or_else(|| bad(key, value, "list items are class:reserve"))?;
        class
            .trim()
            .parse::<u64>()
            .map_err(|_| bad(key, value, "a class must be a non-negative integer"))?;
        parse_reserve(key, value, reserve.trim())?;
    }
    Ok(())
}

/// Splits on commas outside brackets.
fn split_entries(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, ch) in s.char_indices() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_uint(key: &str, value: &str) -> Result<usize, ConfigError> {
    value
        .parse::<usize>()
        .map_err(|_| bad(key, value, "must be a non-negative integer"))
}

fn parse_f64(key: &str, value: &str) -> Result<f64, ConfigError> {
    value
        .parse::<f64>()
        .map_err(|_| bad(key, value, "must be a number"))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "true" | "True" | "1" => Ok(true),
        "false" | "False" | "0" => Ok(false),
        _ => Err(bad(key, value, "must be true or false")),
    }
}

fn parse_divisions(key: &str, value: &str) -> Result<[u32; ROUNDUP_INTERVALS], ConfigError> {
    let check = |d: &str| -> Result<u32, ConfigError> {
        let n = d
            .trim()
            .parse::<u32>()
            .map_err(|_| bad(key, value, "divisions must be integers"))?;
        if n > 1 && !n.is_power_of_two() {
            return Err(bad(
                key,
                value,
                format!("divisions must be 0, 1 or a power of two, got {n}"),
            ));
        }
        Ok(n)
    };
    let Some(list) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) else {
        return Ok([check(value)?; ROUNDUP_INTERVALS]);
    };
    // PyTorch's rule: the first interval's divisions also apply below it;
    // each later interval sets its own; `>` sets every interval above the
    // last one named; intervals not named stay 0 (no rounding).
    let mut out = [0u32; ROUNDUP_INTERVALS];
    let mut last: Option<usize> = None;
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (size, d) = item.split_once(':').ok_or_else(|| {
            bad(
                key,
                value,
                "list items are size_mb:divisions or >:divisions",
            )
        })?;
        let d = check(d)?;
        if size.trim() == ">" {
            out[last.map_or(0, |l| l + 1)..].fill(d);
            continue;
        }
        let mb = size
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|m| m.is_power_of_two())
            .ok_or_else(|| {
                bad(
                    key,
                    value,
                    format!("interval `{size}` must be a power-of-two number of MiB"),
                )
            })?;
        let idx = (mb.trailing_zeros() as usize).min(ROUNDUP_INTERVALS - 1);
        match last {
            None => out[..=idx].fill(d),
            Some(_) => out[idx] = d,
        }
        last = Some(idx);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pytorch_syntax() {
        let c = Config::parse(
            "max_split_size_mb:128, expandable_segments:false,garbage_collection_threshold:0.6",
        )
        .unwrap();
        assert_eq!(c.max_split_size, 128 << 20);
        assert_eq!(c.expandable_segments, Some(false));
        assert_eq!(c.garbage_collection_threshold, Some(0.6));
        let d = Config::parse("roundup_power2_divisions:[1:1,2:2,>:4]").unwrap();
        assert_eq!(d.roundup_power2_divisions[0], 1);
        assert_eq!(d.roundup_power2_divisions[1], 2);
        assert_eq!(d.roundup_power2_divisions[15], 4);
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_key_value_rule() {
        let e = Config::parse("max_split_size_mb:4")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_split_size_mb") && e.contains('4') && e.contains("at least 20"),
            "{e}"
        );
        let e = Config::parse("nope:1").unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("known keys"), "{e}");
        let e = Config::parse("roundup_power2_divisions:3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("power of two"), "{e}");
        assert!(Config::parse("expandable_segments").is_err());
        assert!(Config::parse("garbage_collection_threshold:1.5").is_err());
    }
}
