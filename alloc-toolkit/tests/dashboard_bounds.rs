//! The dashboard's size is bounded, whatever the number of closed scopes
//! whose memory outlived them (a server's request scopes leave caches,
//! interned strings, pooled buffers behind).

use alloc_host::{ScopeBuilder, TrackingAllocator};
use alloc_toolkit::dashboard::LEFT_BEHIND_ROWS;
use alloc_toolkit::{DashboardData, render_html};

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

const CLOSED: usize = 2_000;

#[test]
fn two_thousand_closed_scopes_holding_memory_keep_the_page_and_json_small() {
    // Each closed scope leaves 96 B to 1.2 KiB behind, as after a soak; a
    // few open scopes stay, as in-flight requests would.
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(CLOSED);
    for i in 0..CLOSED {
        let _g = ScopeBuilder::new("leftover-request").enter().unwrap();
        kept.push(vec![1u8; 96 + (i * 37) % 1100]);
    }
    let _open: Vec<_> = (0..3)
        .map(|_| ScopeBuilder::new("open-request").build().unwrap())
        .collect();
    let left_behind: u64 = kept.iter().map(|v| v.capacity() as u64).sum();

    let data = DashboardData::now("bounds", Vec::new());
    let json = data.to_json();
    // One row in the per-name table, and the largest closed scopes.
    let rows = json.matches("\"leftover-request\"").count();
    assert!(
        rows <= 1 + LEFT_BEHIND_ROWS,
        "{rows} rows of closed scopes in the JSON"
    );
    assert!(
        json.len() < 64 << 10,
        "the JSON is {} bytes with {CLOSED} closed scopes holding memory",
        json.len()
    );
    let html = render_html(&data);
    eprintln!("JSON {} bytes, page {} bytes", json.len(), html.len());
    let html_rows = html.matches("leftover-request").count();
    assert!(
        html_rows <= 1 + LEFT_BEHIND_ROWS,
        "{html_rows} rows of closed scopes in the page"
    );
    assert!(html.len() < 96 << 10, "the page is {} bytes", html.len());
    assert_eq!(
        json.matches("\"open-request\"").count(),
        3,
        "open scopes stay listed"
    );
    // What they all add up to, with their count, and the largest first.
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let left = &v["scopes"]["left_behind"];
    assert_eq!(left["scopes"], CLOSED as u64, "{left}");
    assert_eq!(left["live_bytes"], left_behind, "{left}");
    let largest: Vec<u64> = left["largest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(largest.len(), LEFT_BEHIND_ROWS);
    let biggest = kept.iter().map(|v| v.capacity() as u64).max().unwrap();
    assert_eq!(largest[0], biggest, "{largest:?}");
    assert!(largest.windows(2).all(|w| w[0] >= w[1]), "{largest:?}");
    assert!(
        html.contains("2000 closed scope(s) still own"),
        "the page gives the count and the sum"
    );
    std::hint::black_box(kept);
}
