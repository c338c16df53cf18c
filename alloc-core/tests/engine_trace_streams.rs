//! The trace ring keeps whole stream slots: an allocation on the 70,000th
//! distinct stream is recorded with its own slot, not a saturated one that
//! would merge streams in snapshots.

use alloc_core::trace::TraceAction;
use alloc_core::{CachingAllocator, Config, SimBackend, SimStream};

#[test]
fn trace_entries_keep_stream_slots_past_u16() {
    let a = CachingAllocator::new(
        SimBackend::without_vm(1 << 30),
        Config::parse("expandable_segments:false,trace_buffer_entries:8").unwrap(),
    );
    let holder = a.allocate(1000, SimStream(0)).unwrap();
    for i in 1..70_000u32 {
        holder.record_stream(SimStream(i)); // registers the stream: slot i
    }
    let b = a.allocate(1000, SimStream(70_000)).unwrap();
    let last = a
        .trace()
        .into_iter()
        .rev()
        .find(|e| e.action == TraceAction::Alloc)
        .expect("the allocation is traced");
    assert_eq!(last.stream, 70_000, "{last:?}");
    drop((b, holder));
}
