//! `alloc-replay`: replays allocation traces through the caching engine and
//! reports peak requested and reserved bytes, efficiency, backend calls and
//! time per op, for one or more configurations side by side.
//!
//! ```text
//! alloc-replay [--backend sim|host] [--config STR]... [--json] [--capacity BYTES] [--repeat N]
//!              [--dump-snapshot OUT.pickle] FILE...
//! ```
//!
//! Reading PyTorch snapshot pickles needs the crate's `pickle` feature
//! (`cargo run -p alloc-core --features pickle --bin alloc-replay -- FILE`);
//! CSV traces and `--dump-snapshot` work in every build.
//!
//! The arguments are parsed by hand: a handful of options do not justify a
//! dependency, and this keeps the messages in the project's own words.

fn main() {
    std::process::exit(cli::main(std::env::args().skip(1).collect()));
}

mod cli {
    use std::io::{self, Write as _};
    use std::path::{Path, PathBuf};

    use alloc_core::replay::{self, ReplayResult, Trace};
    use alloc_core::stats::format_size;
    use alloc_core::{CachingAllocator, Config, DeviceBackend, HostBackend, SimBackend};

    const USAGE: &str = "\
usage: alloc-replay [--backend sim|host] [--config STR]... [--json] [--capacity BYTES] [--repeat N]
                    [--dump-snapshot OUT.pickle] FILE...

Replays allocation traces (CSV `op,id,bytes,stream`, or PyTorch memory snapshot
pickles from torch.cuda.memory._dump_snapshot; those need a build with
`--features pickle`) through the caching allocator.

options:
  --backend sim|host   sim: a simulated device, no memory touched (default);
                       host: real host memory
  --config STR         an ALLOC_CONF string such as `expandable_segments:False`;
                       repeat to compare configs side by side (default: the
                       default config, labelled `default`)
  --json               print one JSON object per trace and config, one per line
  --capacity BYTES     the simulated device's memory, e.g. 85899345920, 80GiB,
                       512MiB (default 80GiB; sim backend only)
  --repeat N           replay each trace and config N times, each on a fresh
                       allocator, and report the median ns/op (default 1; the
                       byte and call counts are the same in every run)
  --dump-snapshot OUT  after the replay, write the allocator's state and its
                       history (the last 100000 events) as the pickle
                       torch.cuda.memory._dump_snapshot writes, for PyTorch's
                       memory_viz (`python _memory_viz.py stats OUT`, or the
                       page pytorch.org/memory_viz); one trace, one config
  -h, --help           print this help";

    /// The simulated device's memory unless `--capacity` says otherwise: an
    /// 80 GiB device (an A100 or H100), larger than any shipped trace needs.
    const DEFAULT_CAPACITY: usize = 80 << 30;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Backend {
        Sim,
        Host,
    }

    #[derive(Debug)]
    struct Args {
        backend: Backend,
        configs: Vec<String>,
        json: bool,
        capacity: Option<usize>,
        repeat: usize,
        dump_snapshot: Option<PathBuf>,
        files: Vec<PathBuf>,
    }

    /// What `main` does after parsing.
    enum Parsed {
        Run(Args),
        Help,
    }

    pub(crate) fn main(argv: Vec<String>) -> i32 {
        let args = match parse_args(argv) {
            Ok(Parsed::Run(args)) => args,
            Ok(Parsed::Help) => {
                println!("{USAGE}");
                return 0;
            }
            Err(message) => return usage_error(&message),
        };
        let mut configs = Vec::new();
        for text in &args.configs {
            match Config::parse(text) {
                Ok(config) => configs.push((label(text), config)),
                Err(e) => return usage_error(&format!("--config `{text}`: {e}")),
            }
        }
        if configs.is_empty() {
            configs.push(("default".to_owned(), Config::default()));
        }
        let mut traces = Vec::new();
        for file in &args.files {
            match replay::load(file) {
                Ok(t) => traces.extend(t),
                Err(e) => {
                    eprintln!("alloc-replay: {e}");
                    return 1;
                }
            }
        }
        if let Some(out) = &args.dump_snapshot {
            if traces.len() != 1 || configs.len() != 1 {
                return usage_error(&format!(
                    "--dump-snapshot writes one snapshot, but there are {} traces and {} configs; \
                     expected one trace (one file, one device) and at most one --config",
                    traces.len(),
                    configs.len()
                ));
            }
            let (label, config) = &configs[0];
            if let Err(e) = dump(&args, &traces[0], label, config, out) {
                eprintln!("alloc-replay: cannot write {}: {e}", out.display());
                return 1;
            }
        }
        for trace in &traces {
            let results: Vec<ReplayResult> = configs
                .iter()
                .map(|(label, config)| run(&args, trace, label, config))
                .collect();
            match print_results(&args, trace, &results) {
                Ok(()) => {}
                // The reader went away (`alloc-replay ... | head`): stop quietly.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return 0,
                Err(e) => {
                    eprintln!("alloc-replay: cannot write the report: {e}");
                    return 1;
                }
            }
        }
        0
    }

    fn usage_error(message: &str) -> i32 {
        eprintln!("alloc-replay: {message}\n\n{USAGE}");
        2
    }

    /// The label of a config string: itself, or `default` when empty.
    fn label(text: &str) -> String {
        if text.trim().is_empty() {
            "default".to_owned()
        } else {
            text.to_owned()
        }
    }

    /// Replays `trace` `args.repeat` times; the first run's result with the
    /// median ns/op of all runs.
    fn run(args: &Args, trace: &Trace, label: &str, config: &Config) -> ReplayResult {
        let mut runs: Vec<ReplayResult> = (0..args.repeat)
            .map(|_| run_once(args, trace, label, config.clone()))
            .collect();
        let mut ns: Vec<f64> = runs.iter().map(|r| r.ns_per_op).collect();
        ns.sort_by(f64::total_cmp);
        let mut result = runs.swap_remove(0);
        result.ns_per_op = ns[ns.len() / 2];
        result
    }

    fn run_once(args: &Args, trace: &Trace, label: &str, config: Config) -> ReplayResult {
        match args.backend {
            Backend::Sim => {
                let capacity = args.capacity.unwrap_or(DEFAULT_CAPACITY);
                replay_on(SimBackend::new(capacity), config, trace, label)
            }
            Backend::Host => replay_on(HostBackend::new(), config, trace, label),
        }
    }

    /// Events a dumped snapshot's history keeps (PyTorch's documented
    /// `max_entries` example).
    const HISTORY_ENTRIES: usize = 100_000;

    /// Replays `trace` once with history on, inside a scope named after the
    /// trace, and writes the snapshot to `out`.
    fn dump(
        args: &Args,
        trace: &Trace,
        label: &str,
        config: &Config,
        out: &Path,
    ) -> io::Result<()> {
        fn on<B: DeviceBackend>(
            backend: B,
            config: Config,
            trace: &Trace,
            label: &str,
            out: &Path,
        ) -> io::Result<()> {
            let allocator = CachingAllocator::new(backend, config);
            allocator.record_memory_history(true, HISTORY_ENTRIES);
            let scope = alloc_scope::scope(&format!("replay {}", trace.name()));
            replay::replay(trace, &allocator, label);
            drop(scope);
            allocator.dump_snapshot(out)
        }
        match args.backend {
            Backend::Sim => {
                let capacity = args.capacity.unwrap_or(DEFAULT_CAPACITY);
                on(SimBackend::new(capacity), config.clone(), trace, label, out)
            }
            Backend::Host => on(HostBackend::new(), config.clone(), trace, label, out),
        }
    }

    fn replay_on<B: DeviceBackend>(
        backend: B,
        config: Config,
        trace: &Trace,
        label: &str,
    ) -> ReplayResult {
        let allocator = CachingAllocator::new(backend, config);
        replay::replay(trace, &allocator, label)
    }

    /// Writes the results of one trace: JSON lines or a table.
    fn print_results(args: &Args, trace: &Trace, results: &[ReplayResult]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if args.json {
            for r in results {
                let line = serde_json::to_string(r).map_err(io::Error::other)?;
                writeln!(out, "{line}")?;
            }
            return out.flush();
        }
        let backend = match args.backend {
            Backend::Sim => {
                let capacity = args.capacity.unwrap_or(DEFAULT_CAPACITY);
                format!("backend sim ({} capacity)", format_size(capacity))
            }
            Backend::Host => "backend host".to_owned(),
        };
        let header = replay::trace_header(trace.name(), &trace.stats());
        writeln!(out, "{header}; {backend}")?;
        writeln!(out, "{}", replay::table(results))?;
        out.flush()
    }

    fn parse_args(argv: Vec<String>) -> Result<Parsed, String> {
        let mut args = Args {
            backend: Backend::Sim,
            configs: Vec::new(),
            json: false,
            capacity: None,
            repeat: 1,
            dump_snapshot: None,
            files: Vec::new(),
        };
        let mut it = argv.into_iter();
        while let Some(arg) = it.next() {
            // `--name=value` and `--name value` are both accepted.
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |what: &str| -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{name} needs a value: {what}"))
            };
            match name.as_str() {
                "-h" | "--help" => return Ok(Parsed::Help),
                "--json" if inline.is_none() => args.json = true,
                "--backend" => args.backend = parse_backend(&value("sim or host")?)?,
                "--config" => args.configs.push(value(
                    "an ALLOC_CONF string such as expandable_segments:False",
                )?),
                "--capacity" => args.capacity = Some(parse_bytes(&value("bytes such as 80GiB")?)?),
                "--repeat" => args.repeat = parse_repeat(&value("a number of runs such as 5")?)?,
                "--dump-snapshot" => {
                    args.dump_snapshot = Some(PathBuf::from(value(
                        "a file to write, such as snap.pickle",
                    )?))
                }
                "--" => args.files.extend(it.by_ref().map(PathBuf::from)),
                flag if flag.starts_with('-') && flag.len() > 1 => {
                    return Err(format!("unknown option `{arg}`"));
                }
                _ => args.files.push(PathBuf::from(arg)),
            }
        }
        if args.files.is_empty() {
            return Err("no trace file given; expected one or more FILE arguments".to_owned());
        }
        if args.capacity.is_some() && args.backend != Backend::Sim {
            return Err(
                "--capacity applies to --backend sim only (host memory is the machine's)"
                    .to_owned(),
            );
        }
        Ok(Parsed::Run(args))
    }

    fn parse_repeat(text: &str) -> Result<usize, String> {
        match text.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(format!(
                "--repeat `{text}` is not a number of runs; expected an integer from 1 to 1000"
            )),
        }
    }

    fn parse_backend(text: &str) -> Result<Backend, String> {
        match text {
            "sim" => Ok(Backend::Sim),
            "host" => Ok(Backend::Host),
            "cuda" => Err("--backend cuda: the CUDA backend is not built into this binary; it comes with the \
                 alloc-cuda crate. Use --backend sim or --backend host here"
                .to_owned()),
            other => Err(format!("--backend `{other}` is not a backend; expected sim or host")),
        }
    }

    /// Parses bytes with an optional binary suffix: `85899345920`, `80GiB`,
    /// `512MiB`, `64K`.
    fn parse_bytes(text: &str) -> Result<usize, String> {
        let bad = || {
            format!(
                "--capacity `{text}` is not a size; expected an unsigned integer of bytes with an optional \
                 KiB, MiB, GiB or TiB suffix, e.g. 80GiB"
            )
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, suffix) = text.split_at(split);
        let shift = match suffix.trim() {
            "" | "B" => 0,
            "K" | "KiB" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            "T" | "TiB" => 40,
            _ => return Err(bad()),
        };
        let n: usize = digits.parse().map_err(|_| bad())?;
        let bytes = n.checked_mul(1usize << shift).ok_or_else(bad)?;
        if bytes == 0 {
            return Err(format!(
                "--capacity `{text}` is zero; expected a positive size such as 80GiB"
            ));
        }
        Ok(bytes)
    }
}
