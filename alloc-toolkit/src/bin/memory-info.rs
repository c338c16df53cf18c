//! `memory-info`: system, container, process and device memory with
//! recommendations, as tables, as JSON (`--json`), or refreshed in place
//! (`--watch [SECONDS]`, until Ctrl-C or `--count N` refreshes).
//!
//! GPUs are observed through the driver's free/total figures
//! (`ObservedDevice::cuda`) where a CUDA driver is present.

use std::io::Write as _;
use std::time::Duration;

use alloc_toolkit::{Facts, memory_info, recommend, render_memory_report};

const USAGE: &str = "usage: memory-info [--json] [--watch [SECONDS]] [--count N]
  --json             one JSON document: memory, devices, recommendations
  --watch [SECONDS]  refresh in place every SECONDS (default 1) until Ctrl-C
  --count N          stop after N refreshes (with --watch)";

struct Options {
    json: bool,
    watch: Option<Duration>,
    count: Option<u64>,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        json: false,
        watch: None,
        count: None,
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--json" => o.json = true,
            "--watch" => {
                let secs = args.get(i + 1).and_then(|v| v.parse::<f64>().ok());
                if secs.is_some() {
                    i += 1;
                }
                let secs = secs.unwrap_or(1.0);
                if !(secs.is_finite() && secs > 0.0) {
                    return Err(format!("--watch {secs}: give a positive number of seconds"));
                }
                o.watch = Some(Duration::from_secs_f64(secs));
            }
            "--count" => {
                let n = args
                    .get(i + 1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|n| *n > 0);
                o.count = Some(n.ok_or("--count needs a positive number")?);
                i += 1;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
        i += 1;
    }
    Ok(o)
}

/// Registers every CUDA device as an observed device; says what it found.
fn observe_gpus() -> String {
    #[cfg(feature = "cuda")]
    {
        let mut n = 0;
        while n < 64 {
            match alloc_toolkit::ObservedDevice::cuda(n) {
                Ok(d) => {
                    alloc_toolkit::register_device(&format!("cuda:{n}"), std::sync::Arc::new(d))
                }
                Err(e) if n == 0 => return format!("no GPU observed ({e})"),
                Err(_) => break,
            }
            n += 1;
        }
        format!("{n} GPU(s) observed through the CUDA driver")
    }
    #[cfg(not(feature = "cuda"))]
    "no GPU observed (built without the `cuda` feature)".to_owned()
}

/// The rules, less the one about this program's own allocator.
fn advice(facts: &Facts) -> Vec<alloc_toolkit::Recommendation> {
    let mut r = recommend(facts);
    r.retain(|r| r.rule != "tracking-off");
    r
}

fn text(gpus: &str) -> String {
    let facts = Facts::now();
    let mut out = render_memory_report(&facts.memory, None);
    out.push_str(&format!("\n{gpus}\n\nrecommendations:\n"));
    let recs = advice(&facts);
    if recs.is_empty() {
        out.push_str("  none (no rule fired)\n");
    }
    for r in recs {
        out.push_str(&format!(
            "  [{:?}] {} ({}): {}\n      -> {}\n",
            r.severity, r.subject, r.rule, r.evidence, r.remedy
        ));
    }
    out
}

fn json() -> String {
    let facts = Facts::now();
    let v = serde_json::json!({
        "memory": facts.memory,
        "recommendations": advice(&facts),
    });
    v.to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("memory-info: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    let gpus = observe_gpus();
    let _ = memory_info(); // warm the readers before the first frame
    let Some(every) = o.watch else {
        println!("{}", if o.json { json() } else { text(&gpus) });
        return;
    };
    let mut shown = 0u64;
    let mut stdout = std::io::stdout().lock();
    loop {
        let frame = if o.json { json() } else { text(&gpus) };
        // Clear the screen and go home, then draw: the figures refresh in place.
        let _ = write!(
            stdout,
            "\x1b[H\x1b[2J{frame}\n(refreshing every {:.1} s; Ctrl-C stops)\n",
            every.as_secs_f64()
        );
        let _ = stdout.flush();
        shown += 1;
        if o.count.is_some_and(|c| shown >= c) {
            return;
        }
        std::thread::sleep(every);
    }
}
