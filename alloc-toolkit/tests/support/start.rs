// Starting the flagship server for a test: included with `include!` by the
// tests that drive it over loopback (`server_load`, `server_pprof`), after
// `mod server` (the example's `server.rs`) and the imports it names.

/// A runtime with the server on a free loopback port. `device_cap`: the
/// engine's cap on reserved bytes.
fn start(config: server::ServerConfig, device_cap: usize) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let engine = Arc::new(CachingAllocator::new(
        HostBackend::new(),
        Config {
            max_reserved_bytes: Some(device_cap),
            ..Config::default()
        },
    ));
    let monitor = MemoryMonitor::new(MonitorConfig::default())
        .unwrap()
        .start()
        .unwrap();
    let app = Arc::new(server::App {
        model: Arc::new(server::Model::load()),
        engine,
        stream: (),
        monitor,
        metrics: alloc_toolkit::Metrics::new(),
    });
    let router = server::router(app, &config);
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server::serve(listener, router, config));
        addr
    });
    (rt, addr)
}
