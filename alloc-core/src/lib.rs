#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod scope;
#[cfg(not(loom))]
pub mod replay;
