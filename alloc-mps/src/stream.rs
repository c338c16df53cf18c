//! [`MetalStream`]: the engine's name for a Metal command queue.

/// A command queue of one [`MetalBackend`](crate::MetalBackend), by number.
///
/// Stream `0` is the queue the backend creates with the device; others come
/// from [`MetalAllocator::new_stream`](crate::MetalAllocator::new_stream) or,
/// in trace replay, from a trace's stream ids (a queue is created on first
/// use). Work committed to one queue runs in commit order, so a block freed
/// on a stream is reused on that stream at once and on other streams only
/// after the queue's shared event has passed the value signalled at free time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetalStream(pub u32);

impl MetalStream {
    /// The queue created with the device.
    pub const DEFAULT: MetalStream = MetalStream(0);
}
