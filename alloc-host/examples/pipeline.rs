//! A small text pipeline with the tracking allocator installed: load a "model"
//! (an embedding table and a vocabulary), then serve requests on a pool of
//! worker threads, each request a scope entered on whichever worker runs it.
//! Prints each request's host peak and the whole scope report.
//!
//! Run: `cargo run --release -p alloc-host --example pipeline`

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use alloc_host::{ScopeHandle, TrackingAllocator, format_bytes, scope};

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::new();

const DIM: usize = 128;
const WORKERS: usize = 4;
const REQUESTS: usize = 24;

struct Model {
    vocab: HashMap<String, usize>,
    table: Vec<f32>,
}

fn load_model() -> Model {
    let _g = scope("load-model");
    let vocab: HashMap<String, usize> = {
        let _g = scope("vocabulary");
        (0..50_000).map(|i| (format!("tok{i}"), i)).collect()
    };
    let table = {
        let _g = scope("embedding-table");
        (0..vocab.len() * DIM)
            .map(|i| (i % 97) as f32 * 0.01)
            .collect()
    };
    Model { vocab, table }
}

/// Tokenises a synthetic request of `words` words and mean-pools the embeddings.
fn serve(model: &Model, id: usize, words: usize) -> Vec<f32> {
    let text: String = (0..words)
        .map(|w| format!("tok{} ", (id * 7919 + w * 31) % 60_000))
        .collect();
    let tokens: Vec<usize> = {
        let _g = scope("tokenize");
        text.split_whitespace()
            .map(|t| model.vocab.get(t).copied().unwrap_or(0))
            .collect()
    };
    let _g = scope("embed");
    let rows: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&t| model.table[t * DIM..(t + 1) * DIM].to_vec())
        .collect();
    let mut pooled = vec![0.0f32; DIM];
    for r in &rows {
        for (p, v) in pooled.iter_mut().zip(r) {
            *p += v / rows.len() as f32;
        }
    }
    pooled
}

fn main() {
    let model = Arc::new(load_model());
    let serving = scope("serving");
    let (tx, rx) = mpsc::channel::<(usize, ScopeHandle)>();
    let rx = Arc::new(Mutex::new(rx));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (rx, model, results) = (rx.clone(), model.clone(), results.clone());
            std::thread::spawn(move || {
                loop {
                    let job = rx.lock().map(|r| r.recv());
                    let Ok(Ok((id, request))) = job else { break };
                    let _in_request = request.enter();
                    let words = 200 + (id * 997) % 4000;
                    let out = serve(&model, id, words);
                    let stats = request.stats();
                    if let Ok(mut r) = results.lock() {
                        r.push((id, words, stats.peak_bytes, stats.allocations, out[0]));
                    }
                }
            })
        })
        .collect();
    for id in 0..REQUESTS {
        let request = alloc_host::ScopeBuilder::new(&format!("request {id}"))
            .build()
            .expect("a request scope without budgets always opens");
        tx.send((id, request)).expect("workers are running");
    }
    drop(tx);
    for w in workers {
        w.join().expect("worker finished");
    }
    let mut results = results.lock().map(|r| r.clone()).unwrap_or_default();
    results.sort_by_key(|r| r.0);
    println!(
        "{:<10} {:>7} {:>12} {:>8}",
        "request", "words", "host peak", "allocs"
    );
    for (id, words, peak, allocs, _) in &results {
        println!(
            "{:<10} {:>7} {:>12} {:>8}",
            id,
            words,
            format_bytes(*peak),
            allocs
        );
    }
    let s = serving.stats();
    println!(
        "\nserving: {} requests, peak {} across {} workers, {} allocations\n",
        results.len(),
        format_bytes(s.peak_bytes),
        WORKERS,
        s.allocations
    );
    drop(serving);
    print!("{}", alloc_host::report());
    drop(model);
    let p = alloc_host::process_stats();
    println!(
        "\nafter dropping the model: process live {}, peak {}",
        format_bytes(p.live_bytes),
        format_bytes(p.peak_bytes)
    );
}
