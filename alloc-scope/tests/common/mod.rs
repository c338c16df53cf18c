//! Host blocks charged the way a global allocator charges them, for the test
//! binaries that include this module (`mod common;`).

use alloc_scope::{charge_host_free_compact, track_host_alloc};

/// A host block charged through the thread's batch, as a global allocator
/// does: its compact owner and size, to free it later.
pub struct Block(u32, usize);

/// Charges a block of `bytes` to the calling thread's current scope.
pub fn alloc(bytes: usize) -> Block {
    let mut id = 0;
    // SAFETY: as a global allocator would: once per block, freed by `free`
    // with the id and size it was charged with (no memory behind it).
    unsafe {
        track_host_alloc(bytes, |c| {
            id = c;
            (core::ptr::NonNull::<u8>::dangling().as_ptr(), true)
        })
    };
    Block(id, bytes)
}

/// Charges the free of a block from [`alloc`] to its owner.
pub fn free(b: Block) {
    // SAFETY: the block was charged by `alloc` with this id and size.
    unsafe { charge_host_free_compact(b.0, b.1) };
}
