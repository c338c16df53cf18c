//! The `/debug/memory` page in a real headless browser (Chromium from the
//! distribution's packages): served over HTTP on 127.0.0.1, rendered, its DOM
//! read back and a screenshot taken (`$CARGO_TARGET_TMPDIR/dashboard.png`),
//! after ten minutes of monitor samples fed through the monitor's clock.
//! Without a Chromium binary the test says so loudly and passes; set
//! `ALLOC_REQUIRE_BROWSER=1` to make a missing browser a failure.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};
use alloc_host::{ScopeBuilder, TrackingAllocator};
use alloc_toolkit::{DashboardData, MemoryMonitor, MonitorConfig, register_device, render_html};
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

fn chromium() -> Option<String> {
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "headless_shell",
    ]
    .into_iter()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .map(str::to_owned)
}

fn browser(bin: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        // Any host name other than the loopback address fails to resolve:
        // a page that needed an external resource would render without it.
        .arg("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        .args(args)
        .output()
        .expect("chromium runs")
}

#[test]
fn the_dashboard_renders_in_headless_chromium() {
    let Some(bin) = chromium() else {
        eprintln!(
            "\n*** SKIPPED: no Chromium found (apt-get install chromium); the dashboard was not checked in a browser ***\n"
        );
        assert!(
            std::env::var_os("ALLOC_REQUIRE_BROWSER").is_none(),
            "ALLOC_REQUIRE_BROWSER is set but no Chromium is installed"
        );
        return;
    };
    // Some figures to show: a device, closed request scopes, a monitor series.
    let engine = Arc::new(CachingAllocator::new(
        SimBackend::new(1 << 30),
        Config::default(),
    ));
    register_device("gpu0", engine.clone());
    // Ten minutes of samples, one a second, on the monitor's injectable
    // clock (`tick_at`); it keeps the last two minutes, as a server's would.
    let monitor = MemoryMonitor::new(MonitorConfig {
        interval: Duration::from_secs(1),
        capacity: 120,
    })
    .unwrap();
    let mut left_behind = Vec::new();
    for i in 0..600usize {
        let s = ScopeBuilder::new("dash-request").build().unwrap();
        let _in = s.enter();
        let host = vec![1u8; (i % 40 + 1) * 8192];
        let dev = engine.allocate((i % 7 + 1) << 20, SimStream(0)).unwrap();
        monitor.tick_at(Duration::from_secs(i as u64));
        std::hint::black_box(&host);
        drop(dev);
        if i % 100 == 0 {
            // Memory that outlives its scope (a cache filled in a request).
            left_behind.push(vec![2u8; 4096 + i]);
        }
    }
    let _open = ScopeBuilder::new("dash-open-scope").build().unwrap();
    let series = monitor.summary().series;
    assert_eq!(series.first().map(|s| s.t), Some(Duration::from_secs(480)));
    let page = render_html(&DashboardData::now("dashboard test", series));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let router =
        Router::new().route(
            "/debug/memory",
            get(move || {
                let page = page.clone();
                async move {
                    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
                }
            }),
        );
    rt.spawn(async move { axum::serve(listener, router).await });
    let url = format!("http://{addr}/debug/memory");

    let dom = browser(&bin, &["--dump-dom", &url]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    for needle in [
        "dashboard test: memory",
        "Recommendations",
        "Over time",
        "<svg",
        "gpu0 (sim)",
        "dash-request",
        "Closed scopes by name",
        "dash-open-scope",
        "estimate, ±1%",
        "Memory that outlived its scope",
        "closed scope(s) still own",
        ">480 s<",
        ">599 s<",
    ] {
        assert!(
            dom_text.contains(needle),
            "{needle} not in the rendered page:\n{dom_text}"
        );
    }
    // Every line spans the chart's width (x from 80 to 880 px): the x-axis
    // starts at the first sample shown, not at the monitor's start.
    let mut lines = 0;
    for rest in dom_text.split("points=\"").skip(1) {
        let xs: Vec<f64> = rest[..rest.find('"').unwrap()]
            .split_whitespace()
            .map(|p| p.split(',').next().unwrap().parse().unwrap())
            .collect();
        let (lo, hi) = xs
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        assert!(
            lo <= 80.5 && hi >= 879.5,
            "a line spans x = {lo}..{hi} of the chart's 80..880"
        );
        lines += 1;
    }
    assert!(lines >= 2, "{lines} lines in the chart");
    // The 600 closed request scopes are not listed one by one: one row by
    // name, and the largest of those that left memory behind.
    let rows = dom_text.matches("dash-request").count();
    assert!(rows <= 21, "{rows} rows name dash-request");
    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let shot = browser(
        &bin,
        &[
            "--window-size=1280,1700",
            "--hide-scrollbars",
            &format!("--screenshot={}", png.display()),
            &url,
        ],
    );
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "{} bytes",
        bytes.len()
    );
    eprintln!("screenshot: {}", png.display());
    std::hint::black_box(left_behind);
    rt.shutdown_background();
}
