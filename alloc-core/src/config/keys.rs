//! The key table: every configuration key written once, as one row of
//! [`KEY_TABLE`] (name, accepted values, default, effect, examples, parser,
//! place in the conf string), and what is derived from it at compile time
//! ([`KEYS`], [`NO_EFFECT_KEYS`]) or on demand ([`markdown_table`]). The
//! parsers of the values are in the parent module, beside [`Config`].

use super::*;

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
pub(crate) enum Applied {
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
    pub(super) parse: fn(&mut Config, &str, &str) -> Result<Applied, ConfigError>,
    /// How [`Config::to_conf_string`] writes this key: a function giving its
    /// value, or `None` when the setting is the default. `None` instead of a
    /// function: the key is never written (it has no effect here).
    pub(super) conf: Option<fn(&Config) -> Option<String>>,
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
    pub(super) fn warning(&self, value: &str) -> String {
        let why = match self.effect {
            Effect::Partly { why, .. } | Effect::NoEffect(why) => why,
            // A parser of an `Engine` key never says `NoEffect`; the tests
            // check it.
            Effect::Engine(_) => "",
        };
        format!("`{}:{value}` has no effect here: {why}", self.name)
    }

    /// The effect column of the Markdown table.
    pub(super) fn effect_text(&self) -> String {
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
        name: "front_cache_mb",
        values: "an integer from 0 to 65536 (MiB)",
        default: "`64`",
        effect: Effect::Engine(
            "this engine's key: the byte cap of each thread's front-cache shard (0 = off; 64 by measurement: the replayed traces' efficiency no lower than with the cache off, in both segment kinds): a thread's repeated request of one size on one stream is served from its shard without the engine lock, and a free without `record_stream` uses goes back there; whatever looks at the engine or releases memory drains the shards first",
        ),
        examples: &["0", "16", "65536"],
        parse: |c, key, value| {
            let mb = parse_uint(key, value)?;
            if mb > MAX_FRONT_CACHE_MB {
                return Err(bad(
                    key,
                    value,
                    format!(
                        "must be at most {MAX_FRONT_CACHE_MB} (MiB per shard); use 0 to turn the front cache off"
                    ),
                ));
            }
            c.front_cache_bytes = mb << 20;
            Ok(Applied::Yes)
        },
        conf: Some(|c| {
            (c.front_cache_bytes != DEFAULT_FRONT_CACHE_MB << 20)
                .then(|| (c.front_cache_bytes >> 20).to_string())
        }),
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
