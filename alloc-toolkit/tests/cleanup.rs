//! `cleanup_all` releases every pool in the process, so it runs in its own
//! test binary, away from the pool unit tests that count their buffers.

use std::sync::Arc;

use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};
use alloc_toolkit::{
    BufferPool, cleanup_all, register_cleanup, register_device, unregister_cleanup,
    unregister_device,
};

#[test]
fn releases_devices_hooks_and_pools() {
    let engine = Arc::new(CachingAllocator::new(
        SimBackend::new(64 << 20),
        Config::default(),
    ));
    register_device("cleanup-test", engine.clone());
    drop(engine.allocate(6 << 20, SimStream(0)).unwrap());
    let pool = BufferPool::<u64>::new("cleanup-test", 1 << 20).unwrap();
    pool.put(Vec::with_capacity(1000));
    register_cleanup("pinned-test", || 4096);

    let r = cleanup_all();
    let mine = r.devices.iter().find(|d| d.0 == "cleanup-test").unwrap();
    assert!(mine.1 >= 6 << 20, "{r:?}");
    assert_eq!(engine.stats().reserved_bytes.all.current, 0);
    assert!(r.hooks.contains(&("pinned-test".to_owned(), 4096)), "{r:?}");
    assert_eq!(r.pool_bytes, 8000, "{r:?}");
    assert_eq!(pool.stats().pooled_bytes, 0);
    let text = r.to_string();
    assert!(
        text.contains("cleanup-test") && text.contains("pinned-test"),
        "{text}"
    );

    assert!(unregister_cleanup("pinned-test"));
    assert!(unregister_device("cleanup-test"));
    let again = cleanup_all();
    assert!(again.devices.iter().all(|d| d.0 != "cleanup-test"));
    assert_eq!(again.pool_bytes, 0);
}
