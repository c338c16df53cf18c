//! Where a block's owner goes (the place of its size, the slack, the side
//! table), exposed only for the floor measured beside this allocator in
//! alloc-benches (`block_owner.rs`: an allocator that does nothing but keep
//! an owner per block and a scope's live bytes). Not an API: hidden, and
//! free to change with `owner.rs` and `classes.rs`.

pub use crate::classes::{Place, place};
pub use crate::owner::{entry, entry_or_create, read_slack, write_slack};
