//! A driver without the virtual-memory functions (the stub built with
//! `-DSTUB_NO_VM`): expandable segments are disabled cleanly, with the reason,
//! and fixed segments work.

use alloc_core::{Config, DeviceBackend};
use alloc_cuda::{CudaAllocator, CudaBackend};
use alloc_cuda_stub::stub;

#[test]
fn missing_vm_symbols_disable_expandable_segments() {
    let (stub, _g) = stub(true);
    let b = CudaBackend::new(0).expect("stub device");
    assert_eq!(b.page_size(), None);
    let why = b.vm_unavailable_reason().expect("a reason");
    assert!(why.contains("lacks the virtual-memory functions"), "{why}");
    let e = b.reserve(2 << 20).expect_err("no reserve without VM");
    assert!(e.to_string().contains("no expandable segments"), "{e}");

    // asked for expandable segments, the engine falls back to fixed ones
    let a = CudaAllocator::with_config(0, Config::parse("expandable_segments:true").expect("cfg"))
        .expect("allocator");
    assert!(!a.uses_expandable_segments());
    let s = a.context().default_stream();
    let x = a.allocate(30 << 20, &s).expect("fixed segment");
    assert_eq!(stub.used(), 30 << 20);
    assert_eq!(stub.calls("cuMemAlloc_v2"), 1);
    drop(x);
    a.empty_cache();
    assert_eq!(stub.used(), 0);
    assert_eq!(a.backend().driver_errors(), 0);
}
