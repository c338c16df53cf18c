//! `memory-info`: system, container, process and device memory with
//! recommendations, as tables, as JSON (`--json`), or every SECONDS
//! (`--watch [SECONDS]`, 0.1 s to one day, until Ctrl-C, `--count N`
//! refreshes, or the reader of a pipe going away): redrawn in place on a
//! terminal, one frame after another into a file or a pipe, one JSON
//! document per line with `--json`.
//!
//! GPUs are observed through the driver's free/total figures
//! (`ObservedDevice::cuda`) where a CUDA driver is present.

use std::io::{IsTerminal as _, Write};
use std::process::ExitCode;
use std::time::Duration;

use alloc_toolkit::{Facts, memory_info, recommend, render_memory_report};
use clap::Parser;

/// The shortest and longest refresh intervals `--watch` takes, seconds.
const WATCH_RANGE: (f64, f64) = (0.1, 86_400.0);

/// The usage line, kept on every error so a mistyped command shows the way.
const USAGE: &str = "usage: memory-info [--json] [--watch [SECONDS]] [--count N]";

/// System, container, process and device memory with recommendations.
#[derive(Parser, Debug)]
#[command(name = "memory-info", version, after_help = USAGE)]
struct Options {
    /// One JSON document: memory, devices, recommendations (with --watch:
    /// one document per line).
    #[arg(long)]
    json: bool,
    /// Refresh every SECONDS (default 1; from 0.1 to 86400, one day) until
    /// Ctrl-C, or until the reader of a pipe goes away.
    #[arg(
        long,
        value_name = "SECONDS",
        num_args = 0..=1,
        default_missing_value = "1",
        allow_negative_numbers = true,
        value_parser = watch_interval
    )]
    watch: Option<Duration>,
    /// Stop after N refreshes (with --watch).
    #[arg(long, value_name = "N", value_parser = refresh_count)]
    count: Option<u64>,
}

/// `--count`'s value: a positive whole number.
fn refresh_count(v: &str) -> Result<u64, String> {
    match v.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "`{v}` is not a positive whole number of refreshes; give one such as --count 10"
        )),
    }
}

/// `--watch`'s value: a number of seconds within [`WATCH_RANGE`].
fn watch_interval(v: &str) -> Result<Duration, String> {
    let (lo, hi) = WATCH_RANGE;
    let fix =
        format!("give a refresh interval from {lo} to {hi:.0} seconds (one day), e.g. --watch 2");
    let secs: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("`{v}` is not a number of seconds; {fix}"))?;
    if !(lo..=hi).contains(&secs) {
        return Err(format!("`{v}` seconds is out of range; {fix}"));
    }
    Ok(Duration::from_secs_f64(secs))
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

/// Writes `frame`; `false` when stdout is gone (a closed pipe: `| head`).
fn show(out: &mut impl Write, frame: &str) -> bool {
    out.write_all(frame.as_bytes())
        .and_then(|()| out.flush())
        .is_ok()
}

fn main() -> ExitCode {
    let o = match Options::try_parse() {
        Ok(o) => o,
        Err(e) => {
            // Help and version go to stderr too: stdout is for figures.
            eprintln!("{}", e.render().to_string().trim_end());
            if e.use_stderr() {
                eprintln!("\n{USAGE}");
            }
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let gpus = observe_gpus();
    let _ = memory_info(); // warm the readers before the first frame
    let stdout = std::io::stdout();
    let terminal = stdout.is_terminal();
    let mut stdout = stdout.lock();
    let frame = || {
        if o.json { json() + "\n" } else { text(&gpus) }
    };
    let Some(every) = o.watch else {
        // A reader that went away is no error worth a message.
        show(&mut stdout, &frame());
        return ExitCode::SUCCESS;
    };
    let mut shown = 0u64;
    loop {
        let body = frame();
        let frame = if o.json {
            // JSON lines: one document per line, nothing else.
            body
        } else if terminal {
            // Clear the screen and go home, then draw: the figures refresh in place.
            format!(
                "\x1b[H\x1b[2J{body}\n(refreshing every {:.1} s; Ctrl-C stops)\n",
                every.as_secs_f64()
            )
        } else {
            // Into a file or a pipe: the frames one after another.
            format!("{body}\n")
        };
        if !show(&mut stdout, &frame) {
            return ExitCode::SUCCESS;
        }
        shown += 1;
        if o.count.is_some_and(|c| shown >= c) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(every);
    }
}
