//! Replays the CSV allocation traces (`op,id,bytes,stream`) through the engine
//! on the simulated backend and prints, per trace and config, peak requested,
//! peak reserved, efficiency and the backend calls that obtained memory.
//!
//! `cargo run --release -p alloc-core --example engine_traces -- [DIR] [CONFIG...]`
//! (DIR defaults to the repository's `traces/`; configs default to the default config,
//! `expandable_segments:false` and `expandable_segments:false,max_split_size_mb:20`).

use std::collections::HashMap;
use std::time::Instant;

use alloc_core::{CachingAllocator, Config, DeviceBackend, SimBackend};

/// One trace event.
enum Ev {
    Alloc { id: u64, bytes: usize, stream: u32 },
    Free { id: u64 },
}

fn parse(text: &str) -> Result<Vec<Ev>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("op,") {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let bad = || format!("line {}: `{line}` is not op,id,bytes,stream", n + 1);
        let id = f.get(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        match f.first() {
            Some(&"a") => {
                let bytes = f.get(2).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                let stream = f.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
                out.push(Ev::Alloc { id, bytes, stream });
            }
            Some(&"f") => out.push(Ev::Free { id }),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn replay(events: &[Ev], config: &Config) -> Result<(alloc_core::Stats, f64), String> {
    let sim = SimBackend::new(80 << 30);
    let alloc = CachingAllocator::new(sim.clone(), config.clone());
    let mut live = HashMap::new();
    let t = Instant::now();
    for e in events {
        match *e {
            Ev::Alloc { id, bytes, stream } => {
                let b = alloc
                    .allocate(bytes, sim.stream_for_id(stream))
                    .map_err(|e| e.to_string())?;
                live.insert(id, b);
            }
            Ev::Free { id } => {
                live.remove(&id);
            }
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / events.len().max(1) as f64;
    Ok((alloc.stats(), ns))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../traces").into());
    let mut configs: Vec<String> = args.collect();
    if configs.is_empty() {
        configs = vec![
            String::new(),
            "expandable_segments:false".into(),
            "expandable_segments:false,max_split_size_mb:20".into(),
        ];
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read trace dir {dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    println!(
        "| trace | config | peak requested MiB | peak reserved MiB | efficiency | segment allocs | maps (pages) | unmaps | obtains | ns/op |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let events = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for c in &configs {
            let config = Config::parse(c).unwrap_or_else(|e| panic!("{e}"));
            let name = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match replay(&events, &config) {
                Ok((s, ns)) => println!(
                    "| {name} | `{}` | {:.1} | {:.1} | {:.3} | {} | {} ({}) | {} | {} | {ns:.0} |",
                    if c.is_empty() { "default" } else { c },
                    s.requested_bytes.all.peak as f64 / 1048576.0,
                    s.reserved_bytes.all.peak as f64 / 1048576.0,
                    s.efficiency(),
                    s.num_device_alloc,
                    s.num_device_map,
                    s.num_pages_mapped,
                    s.num_device_unmap,
                    s.device_obtains(),
                ),
                Err(e) => println!("| {name} | `{c}` | failed: {e} |"),
            }
        }
    }
}
