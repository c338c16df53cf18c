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

/// PyTorch's cap on `pinned_num_register_threads`.
pub const MAX_PINNED_REGISTER_THREADS: usize = 128;

/// What a key does here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Every accepted value does this.
    Engine(&'static str),
    /// The values named in `effect` do what it says; any other accepted value
    /// has no effect here (it warns, and the conf string leaves it out), for
    /// the reason `why`.
    Partly {
        /// What the implemented values do.
        effect: &'static str,
        /// Why the other values have no effect.
        why: &'static str,
    },
    /// Accepted (the value checked with its rule), with a warning; no effect
    /// here, for the reason given; the conf string leaves it out.
    NoEffect(&'static str),
}

/// Whether a parsed value takes effect here (else it warns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applied {
    /// The engine does what the key says.
    Yes,
    /// Accepted without an effect: a warning gives the row's reason.
    NoEffect,
}

/// One configuration key: everything about it, written once. See
/// [`KEY_TABLE`].
#[derive(Clone, Copy)]
pub struct Key {
    /// The key as written in a config string.
    pub name: &'static str,
    /// The values it accepts (Markdown).
    pub values: &'static str,
    /// The setting when the key is not given (Markdown; a lone literal such as
    /// `` `0` `` is a value that parses to the default config).
    pub default: &'static str,
    /// What it does here.
    pub effect: Effect,
    /// Values it accepts, one per kind of value (the tests parse each).
    pub examples: &'static [&'static str],
    /// Checks `value` and stores it in the config: `(config, key, value)`.
    parse: fn(&mut Config, &str, &str) -> Result<Applied, ConfigError>,
    /// How [`Config::to_conf_string`] writes this key: a function giving its
    /// value, or `None` when the setting is the default. `None` instead of a
    /// function: the key is never written (it has no effect here).
    conf: Option<fn(&Config) -> Option<String>>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("values", &self.values)
            .field("default", &self.default)
            .field("effect", &self.effect)
            .field("examples", &self.examples)
            .field("in_conf_string", &self.conf.is_some())
            .finish()
    }
}

impl Key {
    /// Whether [`Config::to_conf_string`] writes this key (when its setting
    /// differs from the default); keys without any effect here are left out.
    pub fn in_conf_string(&self) -> bool {
        self.conf.is_some()
    }

    /// The warning for `value` when it has no effect here.
    fn warning(&self, value: &str) -> String {
        let why = match self.effect {
            Effect::Partly { why, .. } | Effect::NoEffect(why) => why,
            // A parser of an `Engine` key never says `NoEffect`; the tests
            // check it.
            Effect::Engine(_) => "",
        };
        format!("`{}:{value}` has no effect here: {why}", self.name)
    }

    /// The effect column of the Markdown table.
    fn effect_text(&self) -> String {
        const NONE: &str = "accepted with a warning; no effect here:";
        match self.effect {
            Effect::Engine(effect) => effect.to_string(),
            Effect::Partly { effect, why } => format!("{effect}; other values: {NONE} {why}"),
            Effect::NoEffect(why) => format!("{NONE} {why}"),
        }
    }
}

/// Why the pinned host allocator's keys change nothing here.
const PINNED: &str =
    "it configures PyTorch's pinned host allocator; alloc-cuda's PinnedPool is configured in code";
/// Why the lock keys change nothing here.
const LOCK: &str =
    "the engine never holds its lock across a blocking device allocation it could avoid";
/// Why the reserve keys change nothing here.
const RESERVE: &str = "the engine sizes its own expandable reservations";
/// The values of a boolean key.
const BOOL: &str = "`True` or `False` (also `true`, `1`, `false`, `0`)";

/// Every key [`Config::parse`] accepts, in the order of the docs and of
/// [`Config::to_conf_string`]. The crate's README shows it as rendered by
/// [`markdown_table`].
pub const KEY_TABLE: &[Key] = &[
    Key {
        name: "max_split_size_mb",
        values: "an integer ≥ 20 (MiB)",
        default: "no limit",
        effect: Effect::Engine(
            "free blocks of fixed segments at least this large are never split and serve no request below this size (as in PyTorch)",
        ),
        examples: &["128"],
        parse: |c, key, value| {
            c.max_split_size = parse_mib_at_least_20(key, value)?;
            Ok(Applied::Yes)
        },
        conf: Some(|c| {
            (c.max_split_size != usize::MAX).then(|| (c.max_split_size >> 20).to_string())
        }),
    },
    Key {
        name: "roundup_power2_divisions",
        values: "0, 1 or a power of two; or a list such as `[64:8,256:4,>:1]` (power-of-two MiB sizes, `>` for the rest)",
        default: "`0`",
        effect: Effect::Engine(
            "as in PyTorch: each power-of-two size interval from 1 MiB up is split into this many divisions and a request is rounded up to one (0 or 1: to 512 B only); in a list the first interval also covers those below it and intervals not named are not rounded",
        ),
        examples: &["4", "[64:8,256:4,1024:4,>:1]"],
        parse: |c, key, value| {
            c.roundup_power2_divisions = parse_divisions(key, value)?;
            Ok(Applied::Yes)
        },
        conf: Some(|c| {
            (c.roundup_power2_divisions != [0; ROUNDUP_INTERVALS]).then(|| {
                let items: Vec<String> = c
                    .roundup_power2_divisions
                    .iter()
                    .enumerate()
                    .map(|(i, n)| format!("{}:{n}", 1u64 << i))
                    .collect();
                format!("[{}]", items.join(","))
            })
        }),
    },
    Key {
        name: "garbage_collection_threshold",
        values: "a number strictly between 0 and 1",
        default: "off",
        effect: Effect::Engine(
            "with a cap: when an allocation that misses the cache would take reserved memory past this fraction of the cap, cached memory is released first",
        ),
        examples: &["0.6"],
        parse: |c, key, value| {
            let t = parse_f64(key, value)?;
            if !(t > 0.0 && t < 1.0) {
                return Err(bad(key, value, "must be strictly between 0 and 1"));
            }
            c.garbage_collection_threshold = Some(t);
            Ok(Applied::Yes)
        },
        conf: Some(|c| c.garbage_collection_threshold.map(|t| t.to_string())),
    },
    Key {
        name: "expandable_segments",
        values: BOOL,
        default: "on where the backend can map pages",
        effect: Effect::Engine(
            "`True`: segments grow by mapping pages, where the backend can; `False`: fixed segments (PyTorch's native policy)",
        ),
        examples: &["True", "false"],
        parse: |c, key, value| {
            c.expandable_segments = Some(parse_bool(key, value)?);
            Ok(Applied::Yes)
        },
        conf: Some(|c| c.expandable_segments.map(|e| py_bool(e).to_string())),
    },
    Key {
        name: "backend",
        values: "`native`, `cudaMallocAsync` or `async`",
        default: "`native`",
        effect: Effect::Partly {
            effect: "`native`: this engine (a native caching allocator)",
            why: "`cudaMallocAsync` / `async` is a different allocator; this engine is the native one",
        },
        examples: &["native", "cudaMallocAsync", "async"],
        parse: |_, key, value| match value {
            "native" => Ok(Applied::Yes),
            "cudaMallocAsync" | "async" => Ok(Applied::NoEffect),
            _ => Err(bad(
                key,
                value,
                "must be `native`, `cudaMallocAsync` or `async` (PyTorch's backends)",
            )),
        },
        conf: None,
    },
    Key {
        name: "per_process_memory_fraction",
        values: "a number in (0, 1]",
        default: "no cap",
        effect: Effect::Engine(
            "caps reserved memory at this fraction of the device's total (with `max_reserved_mb` the lower cap holds); past the cap an allocation is out of memory",
        ),
        examples: &["0.5", "1"],
        parse: |c, key, value| {
            let f = parse_f64(key, value)?;
            if !(f > 0.0 && f <= 1.0) {
                return Err(bad(key, value, "must be in (0, 1]"));
            }
            c.memory_fraction = Some(f);
            Ok(Applied::Yes)
        },
        conf: Some(|c| c.memory_fraction.map(|f| f.to_string())),
    },
    Key {
        name: "max_non_split_rounding_mb",
        values: "an integer ≥ 20 (MiB)",
        default: "`20`",
        effect: Effect::Partly {
            effect: "`20`: an oversize cached block serves only requests at most 20 MiB smaller than itself (PyTorch's default)",
            why: "the engine serves a request from an oversize cached block only within 20 MiB (PyTorch's default)",
        },
        examples: &["20", "64"],
        parse: |_, key, value| mib_is_large_segment(key, value),
        conf: None,
    },
    Key {
        name: "large_segment_size_mb",
        values: "an integer ≥ 20 (MiB)",
        default: "`20`",
        effect: Effect::Partly {
            effect: "`20`: large-pool segments are 20 MiB (PyTorch's default)",
            why: "large-pool segments are 20 MiB here (PyTorch's default)",
        },
        examples: &["20", "32"],
        parse: |_, key, value| mib_is_large_segment(key, value),
        conf: None,
    },
    Key {
        name: "release_lock_on_cudamalloc",
        values: BOOL,
        default: "`False`",
        effect: Effect::NoEffect(LOCK),
        examples: &["True", "False"],
        parse: |c, key, value| {
            c.release_lock_on_device_alloc = parse_bool(key, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "release_lock_on_hipmalloc",
        values: BOOL,
        default: "`False`",
        effect: Effect::NoEffect(LOCK),
        examples: &["True", "False"],
        parse: |c, key, value| {
            c.release_lock_on_device_alloc = parse_bool(key, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "pinned_use_cuda_host_register",
        values: BOOL,
        default: "`False`",
        effect: Effect::NoEffect(PINNED),
        examples: &["True", "False"],
        parse: |c, key, value| {
            c.pinned_use_host_register = parse_bool(key, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "pinned_use_hip_host_register",
        values: BOOL,
        default: "`False`",
        effect: Effect::NoEffect(PINNED),
        examples: &["True", "False"],
        parse: |c, key, value| {
            c.pinned_use_host_register = parse_bool(key, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "pinned_num_register_threads",
        values: "a power of two from 1 to 128",
        default: "`1`",
        effect: Effect::NoEffect(PINNED),
        examples: &["8", "1", "128"],
        parse: |c, key, value| {
            let n = parse_uint(key, value)?;
            if !n.is_power_of_two() || n > MAX_PINNED_REGISTER_THREADS {
                return Err(bad(
                    key,
                    value,
                    format!("must be a power of two from 1 to {MAX_PINNED_REGISTER_THREADS}"),
                ));
            }
            c.pinned_num_register_threads = n;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "pinned_use_background_threads",
        values: BOOL,
        default: "—",
        effect: Effect::NoEffect(PINNED),
        examples: &["True"],
        parse: |_, key, value| {
            parse_bool(key, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "pinned_reserve_segment_size_mb",
        values: "a non-negative integer (MiB)",
        default: "—",
        effect: Effect::NoEffect(PINNED),
        examples: &["64"],
        parse: |_, key, value| {
            parse_uint(key, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "pinned_free_catch_all",
        values: BOOL,
        default: "—",
        effect: Effect::NoEffect(PINNED),
        examples: &["True"],
        parse: |_, key, value| {
            parse_bool(key, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "graph_capture_record_stream_reuse",
        values: BOOL,
        default: "`False`",
        effect: Effect::NoEffect("this engine has no CUDA graph capture pools"),
        examples: &["True"],
        parse: |c, key, value| {
            c.graph_capture_record_stream_reuse = parse_bool(key, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "throw_on_cudamalloc_oom",
        values: BOOL,
        default: "—",
        effect: Effect::NoEffect(
            "the engine already checks its cap (per_process_memory_fraction, max_reserved_mb) before asking the device",
        ),
        examples: &["True"],
        parse: |_, key, value| {
            parse_bool(key, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "expandable_segments_reserve",
        values: "a fraction of device memory in (0, 1], or GiB such as `40G`",
        default: "—",
        effect: Effect::NoEffect(RESERVE),
        examples: &["0.5", "40G"],
        parse: |_, key, value| {
            parse_reserve(key, value, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "expandable_segments_reserve_by_class",
        values: "a list of `class:reserve` such as `[0:0.5,1:40G]`",
        default: "—",
        effect: Effect::NoEffect(RESERVE),
        examples: &["[0:0.5,1:40G]"],
        parse: |_, key, value| {
            parse_reserve_by_class(key, value)?;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
    Key {
        name: "max_reserved_mb",
        values: "a positive integer (MiB)",
        default: "no cap",
        effect: Effect::Engine(
            "this engine's key: caps reserved memory at this many MiB (with `per_process_memory_fraction` the lower cap holds); past the cap an allocation is out of memory",
        ),
        examples: &["4096"],
        parse: |c, key, value| {
            let mb = parse_uint(key, value)?;
            let b = mb.checked_mul(1 << 20).filter(|&b| b > 0).ok_or_else(|| {
                bad(
                    key,
                    value,
                    "must be a positive number of MiB that fits in the address space",
                )
            })?;
            c.max_reserved_bytes = Some(b);
            Ok(Applied::Yes)
        },
        conf: Some(|c| c.max_reserved_bytes.map(|b| (b >> 20).to_string())),
    },
    Key {
        name: "trace_buffer_entries",
        values: "an integer from 0 to 16777216",
        default: "`0`",
        effect: Effect::Engine(
            "this engine's key: the length of the trace ring buffer of allocator events (0 = off)",
        ),
        examples: &["1000", "0", "16777216"],
        parse: |c, key, value| {
            let n = parse_uint(key, value)?;
            if n > MAX_TRACE_ENTRIES {
                return Err(bad(
                    key,
                    value,
                    format!("must be at most {MAX_TRACE_ENTRIES}"),
                ));
            }
            c.trace_entries = n;
            Ok(Applied::Yes)
        },
        conf: Some(|c| (c.trace_entries != 0).then(|| c.trace_entries.to_string())),
    },
    Key {
        name: "max_cached_fraction",
        values: "a number in [0, 1]",
        default: "`0.05`",
        effect: Effect::NoEffect(
            "an earlier key of this engine; the engine now unmaps cached pages only when a map would raise reserved memory past its peak or the cap",
        ),
        examples: &["0.2", "1"],
        parse: |c, key, value| {
            let f = parse_f64(key, value)?;
            if !(0.0..=1.0).contains(&f) {
                return Err(bad(key, value, "must be in [0, 1]"));
            }
            c.max_cached_fraction = f;
            Ok(Applied::NoEffect)
        },
        conf: None,
    },
];

/// The names of [`KEY_TABLE`]'s keys, in its order.
const KEY_NAMES: [&str; KEY_TABLE.len()] = {
    let mut out = [""; KEY_TABLE.len()];
    let mut i = 0;
    while i < KEY_TABLE.len() {
        out[i] = KEY_TABLE[i].name;
        i += 1;
    }
    out
};

/// The keys [`Config::parse`] accepts: the names of [`KEY_TABLE`].
pub const KEYS: &[&str] = &KEY_NAMES;

/// How many rows of [`KEY_TABLE`] have a setting without an effect.
const NO_EFFECT_COUNT: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < KEY_TABLE.len() {
        if !matches!(KEY_TABLE[i].effect, Effect::Engine(_)) {
            n += 1;
        }
        i += 1;
    }
    n
};

/// [`NO_EFFECT_KEYS`] as an array.
const NO_EFFECT_ROWS: [(&str, &str); NO_EFFECT_COUNT] = {
    let mut out = [("", ""); NO_EFFECT_COUNT];
    let (mut i, mut n) = (0, 0);
    while i < KEY_TABLE.len() {
        match KEY_TABLE[i].effect {
            Effect::Partly { why, .. } | Effect::NoEffect(why) => {
                out[n] = (KEY_TABLE[i].name, why);
                n += 1;
            }
            Effect::Engine(_) => {}
        }
        i += 1;
    }
    out
};

/// The keys of [`KEY_TABLE`] with a value or all values without an effect
/// here, and why ([`Effect::Partly`] and [`Effect::NoEffect`] rows).
pub const NO_EFFECT_KEYS: &[(&str, &str)] = &NO_EFFECT_ROWS;

/// The row of `key`.
pub fn key(name: &str) -> Option<&'static Key> {
    KEY_TABLE.iter().find(|k| k.name == name)
}

/// [`KEY_TABLE`] as a Markdown table (key | accepted values | default |
/// effect), one line per key, ending in a newline: what the crate's README
/// shows between its `config-keys` marker comments.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | accepted values | default | effect |\n|---|---|---|---|\n");
    for k in KEY_TABLE {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.name,
            k.values,
            k.default,
            k.effect_text()
        ));
    }
    out
}

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
        let readme = include_str!("../README.md");
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
        let src = include_str!("config.rs");
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
        assert_eq!(fields, 13);
    }
}
