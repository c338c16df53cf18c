//! Configuration in PyTorch's `PYTORCH_CUDA_ALLOC_CONF` syntax:
//! `key:value,key:value`, from a string or the environment
//! ([`Config::from_env`]: [`ENV_VAR`], else `PYTORCH_CUDA_ALLOC_CONF`, else
//! `PYTORCH_ALLOC_CONF`).
//!
//! Every key is one row of [`KEY_TABLE`]: its name, the values it accepts,
//! its default, its effect here, its parser and its place in
//! [`Config::to_conf_string`]. Parsing, the conf string, the warnings for
//! settings without an effect and the key table of the crate's README
//! ([`markdown_table`]) all come from those rows.
//!
//! Every key PyTorch 2.x accepts is accepted, with PyTorch's rule for its
//! value. A setting without an effect here (a whole key, such as the pinned
//! host allocator's, or one value of a key, such as `backend:cudaMallocAsync`)
//! is accepted with a warning in [`Config::warnings`] that says so and why;
//! [`Config::from_env`] prints each warning once, and
//! [`Config::to_conf_string`] leaves such settings out. Unknown keys and bad
//! values are errors naming the key, the value and the rule.

use crate::size_class::ROUNDUP_INTERVALS;

mod keys;

use keys::Applied;
pub use keys::{Effect, KEY_TABLE, KEYS, Key, NO_EFFECT_KEYS, key, markdown_table};

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

/// Default of `max_cached_fraction`, an earlier key of this engine that is
/// still accepted and has no effect (its row in [`KEY_TABLE`]).
pub const DEFAULT_MAX_CACHED_FRACTION: f64 = 0.05;

/// The longest trace ring buffer `trace_buffer_entries` may ask for (16 Mi
/// entries).
pub const MAX_TRACE_ENTRIES: usize = 1 << 24;

/// The default of `front_cache_mb`: the byte cap of one front-cache shard,
/// in MiB. Chosen by replaying every shipped trace (`traces/`) at caps 0,
/// 4, 8, 16, 32, 64, 128 and 256 in both segment kinds: at 64 no trace's
/// efficiency is below its efficiency with the cache off (smaller caps
/// change which blocks are reused, and cost up to 0.09 on one trace).
pub const DEFAULT_FRONT_CACHE_MB: usize = 64;

/// The most `front_cache_mb` accepts (MiB per shard).
pub const MAX_FRONT_CACHE_MB: usize = 1 << 16;

/// PyTorch's cap on `pinned_num_register_threads`.
pub const MAX_PINNED_REGISTER_THREADS: usize = 128;

/// The engine's settings. `Config::default()` is the measured default. Each
/// field holds what the keys named in its docs set; what they do is their
/// row of [`KEY_TABLE`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    /// `max_split_size_mb`, in bytes; `usize::MAX` = not set ([`KEY_TABLE`]).
    pub max_split_size: usize,
    /// `roundup_power2_divisions`: the divisions of each power-of-two interval
    /// from 1 MiB up ([`KEY_TABLE`]).
    pub roundup_power2_divisions: [u32; ROUNDUP_INTERVALS],
    /// `garbage_collection_threshold`; `None` = not set ([`KEY_TABLE`]).
    pub garbage_collection_threshold: Option<f64>,
    /// `expandable_segments`; `None` = not set ([`KEY_TABLE`]).
    pub expandable_segments: Option<bool>,
    /// `per_process_memory_fraction`; `None` = not set ([`KEY_TABLE`]).
    pub memory_fraction: Option<f64>,
    /// `max_reserved_mb`, in bytes; `None` = not set ([`KEY_TABLE`]).
    pub max_reserved_bytes: Option<usize>,
    /// `trace_buffer_entries` ([`KEY_TABLE`]).
    pub trace_entries: usize,
    /// `release_lock_on_cudamalloc` / `release_lock_on_hipmalloc`, as parsed
    /// (a snapshot reports it; [`KEY_TABLE`]).
    pub release_lock_on_device_alloc: bool,
    /// `pinned_use_cuda_host_register` / `pinned_use_hip_host_register`, as
    /// parsed (a snapshot reports it; [`KEY_TABLE`]).
    pub pinned_use_host_register: bool,
    /// `pinned_num_register_threads`, as parsed (a snapshot reports it;
    /// [`KEY_TABLE`]).
    pub pinned_num_register_threads: usize,
    /// `graph_capture_record_stream_reuse`, as parsed (a snapshot reports it;
    /// [`KEY_TABLE`]).
    pub graph_capture_record_stream_reuse: bool,
    /// `max_cached_fraction`, as parsed ([`KEY_TABLE`]).
    pub max_cached_fraction: f64,
    /// `front_cache_mb`, in bytes per shard; 0 = off ([`KEY_TABLE`]).
    pub front_cache_bytes: usize,
    /// One line per accepted setting that has no effect here, naming it and
    /// why (its row of [`KEY_TABLE`]); [`Config::from_env`] prints them once.
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
            front_cache_bytes: DEFAULT_FRONT_CACHE_MB << 20,
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

    /// Sets one key: its row's parser checks and stores the value; a setting
    /// without an effect here adds a warning.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let Some(row) = self::key(key) else {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
                value: value.to_string(),
            });
        };
        if (row.parse)(self, key, value)? == Applied::NoEffect {
            self.warnings.push(row.warning(value));
        }
        Ok(())
    }

    /// The settings that differ from the default, in this syntax (what a
    /// snapshot reports as `PYTORCH_CUDA_ALLOC_CONF`), in [`KEY_TABLE`]'s
    /// order. Settings without an effect here are left out.
    pub fn to_conf_string(&self) -> String {
        let out: Vec<String> = KEY_TABLE
            .iter()
            .filter_map(|k| Some(format!("{}:{}", k.name, (k.conf?)(self)?)))
            .collect();
        out.join(",")
    }
}

/// PyTorch's spelling of a boolean.
fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// A size that must be at least 20 MiB, of which only 20 MiB is implemented.
fn mib_is_large_segment(key: &str, value: &str) -> Result<Applied, ConfigError> {
    Ok(
        if parse_mib_at_least_20(key, value)? == LARGE_SEGMENT_MB << 20 {
            Applied::Yes
        } else {
            Applied::NoEffect
        },
    )
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

    /// The README's key table, between these marker lines.
    const README_BEGIN: &str = "<!-- config-keys:begin";
    const README_END: &str = "<!-- config-keys:end -->";

    /// The crate README's config table is [`markdown_table`]'s output, so the
    /// docs cannot drift from the table the parser uses.
    #[test]
    fn readme_table_is_the_rendered_key_table() {
        let readme = include_str!("../../README.md");
        let fresh = markdown_table();
        let shown = readme.find(README_BEGIN).and_then(|b| {
            let body = &readme[b..];
            let start = body.find('\n')? + 1;
            let end = body.find(README_END)?;
            Some(body[start..end].trim())
        });
        assert!(
            shown == Some(fresh.trim()),
            "alloc-core/README.md's config table (between `{README_BEGIN} ... -->` and \
             `{README_END}`) is not the table config.rs parses with; replace it with:\n\n{fresh}"
        );
    }

    /// Each row says one thing: its parser, its warnings, its conf string and
    /// its effect column agree, for every example value.
    #[test]
    fn every_row_agrees_with_itself() {
        let mut names = std::collections::HashSet::new();
        for k in KEY_TABLE {
            assert!(names.insert(k.name), "{} has two rows", k.name);
            assert!(!k.examples.is_empty(), "{}: no example values", k.name);
            for cell in [k.values, k.default, &k.effect_text()] {
                assert!(!cell.contains(['|', '\n']), "{}: `{cell}`", k.name);
            }
            // A key written into the conf string must have an effect.
            assert_eq!(
                k.in_conf_string(),
                matches!(k.effect, Effect::Engine(_)),
                "{}: written into the conf string iff it has an effect",
                k.name
            );
            let mut warned = false;
            for v in k.examples {
                let entry = format!("{}:{v}", k.name);
                let c = Config::parse(&entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
                let conf = c.to_conf_string();
                if c.warnings.is_empty() {
                    assert!(
                        !matches!(k.effect, Effect::NoEffect(_)),
                        "{entry}: a no-effect key must warn"
                    );
                } else {
                    warned = true;
                    assert_eq!(c.warnings, [k.warning(v)], "{entry}");
                    let w = &c.warnings[0];
                    assert!(w.contains(&entry) && w.contains("no effect here"), "{w}");
                    assert!(
                        !matches!(k.effect, Effect::Engine(_)),
                        "{entry} warns but its row says it has an effect"
                    );
                    assert_eq!(conf, "", "{entry}: no effect, yet written");
                }
                assert_eq!(
                    Config::parse(&conf).unwrap(),
                    without_no_effect_settings(&c),
                    "{entry}"
                );
            }
            if matches!(k.effect, Effect::Partly { .. }) {
                assert!(warned, "{}: no example shows the values that warn", k.name);
            }
        }
    }

    /// `c` less its settings without an effect (the fields only no-effect
    /// keys set, and the warnings): what its conf string keeps.
    fn without_no_effect_settings(c: &Config) -> Config {
        let d = Config::default();
        Config {
            release_lock_on_device_alloc: d.release_lock_on_device_alloc,
            pinned_use_host_register: d.pinned_use_host_register,
            pinned_num_register_threads: d.pinned_num_register_threads,
            graph_capture_record_stream_reuse: d.graph_capture_record_stream_reuse,
            max_cached_fraction: d.max_cached_fraction,
            warnings: d.warnings,
            ..c.clone()
        }
    }

    /// Every key round-trips: parse → `to_conf_string` → parse gives the same
    /// config, less the settings without an effect, which the conf string
    /// leaves out.
    #[test]
    fn every_key_round_trips_and_no_effect_settings_are_left_out() {
        let entries: Vec<String> = KEY_TABLE
            .iter()
            .flat_map(|k| k.examples.iter().map(|v| format!("{}:{v}", k.name)))
            .collect();
        let all = Config::parse(&entries.join(",")).unwrap();
        let effective: Vec<&str> = entries
            .iter()
            .map(String::as_str)
            .filter(|e| Config::parse(e).unwrap().warnings.is_empty())
            .collect();
        let conf = all.to_conf_string();
        let back = Config::parse(&conf).unwrap();
        assert_eq!(back, Config::parse(&effective.join(",")).unwrap(), "{conf}");
        assert_eq!(back.to_conf_string(), conf);
        assert!(back.warnings.is_empty(), "{:?}", back.warnings);
        assert_eq!(
            all.warnings.len(),
            entries.len() - effective.len(),
            "one warning per setting without an effect"
        );
        for k in KEY_TABLE.iter().filter(|k| !k.in_conf_string()) {
            assert!(!conf.contains(k.name), "{} written: {conf}", k.name);
        }
        for k in KEY_TABLE.iter().filter(|k| k.in_conf_string()) {
            let last = format!("{}:{}", k.name, k.examples[k.examples.len() - 1]);
            if Config::parse(&last).unwrap() != Config::default() {
                assert!(
                    conf.contains(&format!("{}:", k.name)),
                    "{last} missing: {conf}"
                );
            }
        }
    }

    /// A default written as a lone literal (`` `0` ``) parses to the default
    /// config, field for field (warnings aside).
    #[test]
    fn literal_defaults_are_the_default_config() {
        let mut checked = 0;
        for k in KEY_TABLE {
            let Some(v) = k
                .default
                .strip_prefix('`')
                .and_then(|d| d.strip_suffix('`'))
                .filter(|d| !d.contains('`'))
            else {
                continue;
            };
            let entry = format!("{}:{v}", k.name);
            let c = Config::parse(&entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
            let kept = Config {
                warnings: Vec::new(),
                ..c.clone()
            };
            assert_eq!(kept, Config::default(), "{entry}");
            assert_eq!(c.to_conf_string(), "", "{entry}");
            checked += 1;
        }
        assert!(checked >= 10, "{checked}");
        assert_eq!(Config::default().to_conf_string(), "");
    }

    /// The field docs of `Config` name their keys (rows of the table) and
    /// point to the table for what the keys do, saying nothing of their own
    /// about effects.
    #[test]
    fn field_docs_point_to_the_table() {
        let src = include_str!("mod.rs");
        let start = src.find("pub struct Config {").unwrap();
        let body = &src[start..start + src[start..].find("\n}").unwrap()];
        let mut doc = String::new();
        let mut fields = 0;
        for line in body.lines().skip(1).map(str::trim) {
            if let Some(d) = line.strip_prefix("///") {
                doc.push_str(d);
                doc.push(' ');
                continue;
            }
            let field = line.strip_prefix("pub ").and_then(|l| l.split_once(':'));
            let Some((field, _)) = field else { continue };
            fields += 1;
            assert!(doc.contains("[`KEY_TABLE`]"), "{field}: {doc}");
            assert!(
                !doc.contains("effect") || field == "warnings",
                "{field}: {doc}"
            );
            let named: Vec<&str> = doc
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|w| {
                    w.contains('_')
                        && w.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                })
                .collect();
            if field != "warnings" {
                assert!(!named.is_empty(), "{field} names no key: {doc}");
            }
            for name in named {
                assert!(key(name).is_some(), "{field}: `{name}` is not a key");
            }
            doc.clear();
        }
        assert_eq!(fields, 14);
    }
}
