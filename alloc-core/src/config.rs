//! Configuration in PyTorch's `PYTORCH_CUDA_ALLOC_CONF` syntax:
//! `key:value,key:value`, from a string or the env var [`ENV_VAR`].
//!
//! Keys with PyTorch's meaning: `max_split_size_mb`, `roundup_power2_divisions`
//! (a number, or a list such as `[256:1,512:2,>:4]`),
//! `garbage_collection_threshold`, `expandable_segments`, `backend` (`native`
//! only), `release_lock_on_cudamalloc` (accepted; the engine never calls the
//! backend's allocate with pools in an inconsistent state). Keys of this
//! engine: `per_process_memory_fraction` (0–1], `max_reserved_mb` (a byte cap on
//! reserved memory), `trace_buffer_entries` (the trace ring buffer's length,
//! 0 = off) and `max_cached_fraction` (expandable segments: before mapping
//! more pages, unmap free pages until cached ≤ this fraction of reserved).

use crate::size_class::ROUNDUP_INTERVALS;

/// The environment variable [`Config::from_env`] reads.
pub const ENV_VAR: &str = "ALLOC_CONF";

/// The smallest `max_split_size_mb` PyTorch accepts (the large-segment size).
pub const MIN_MAX_SPLIT_MB: usize = 20;

/// Default of `max_cached_fraction` (chosen by replaying the shipped traces,
/// see `benches/RESULTS.md`).
pub const DEFAULT_MAX_CACHED_FRACTION: f64 = 0.05;

/// The longest trace ring buffer `trace_buffer_entries` may ask for (16 Mi
/// entries, 640 MiB).
pub const MAX_TRACE_ENTRIES: usize = 1 << 24;

/// The keys [`Config::parse`] accepts.
pub const KEYS: &[&str] = &[
    "max_split_size_mb",
    "roundup_power2_divisions",
    "garbage_collection_threshold",
    "expandable_segments",
    "backend",
    "release_lock_on_cudamalloc",
    "per_process_memory_fraction",
    "max_reserved_mb",
    "trace_buffer_entries",
    "max_cached_fraction",
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
    /// Accepted for compatibility; no effect.
    pub release_lock_on_device_alloc: bool,
    /// Expandable segments: before mapping more pages, unmap free pages until
    /// cached memory is at most this fraction of reserved memory.
    pub max_cached_fraction: f64,
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
            max_cached_fraction: DEFAULT_MAX_CACHED_FRACTION,
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
    /// Reads [`ENV_VAR`]; unset or empty gives the default.
    pub fn from_env() -> Result<Config, ConfigError> {
        match std::env::var(ENV_VAR) {
            Ok(s) => Config::parse(&s),
            Err(std::env::VarError::NotPresent) => Ok(Config::default()),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::NotUnicode { var: ENV_VAR }),
        }
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
        match key {
            "max_split_size_mb" => {
                let mb = parse_uint(key, value)?;
                if mb < MIN_MAX_SPLIT_MB {
                    return Err(bad(
                        key,
                        value,
                        format!(
                            "must be at least {MIN_MAX_SPLIT_MB} (MiB, the large-segment size)"
                        ),
                    ));
                }
                self.max_split_size = mb.checked_mul(1 << 20).ok_or_else(|| {
                    bad(
                        key,
                        value,
                        "must fit in the address space when multiplied by 1 MiB",
                    )
                })?;
            }
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
            "backend" => {
                if value != "native" {
                    return Err(bad(key, value, "only `native` (this engine) is supported"));
                }
            }
            "release_lock_on_cudamalloc" => {
                self.release_lock_on_device_alloc = parse_bool(key, value)?
            }
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
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key.to_string(),
                    value: value.to_string(),
                });
            }
        }
        Ok(())
    }
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
    let mut out = [0u32; ROUNDUP_INTERVALS];
    let mut last = 0usize;
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
            out[last..].fill(d);
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
        if idx < last && last > 0 {
            return Err(bad(key, value, "intervals must be in increasing order"));
        }
        out[last.min(idx)..=idx].fill(d);
        last = idx + 1;
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
