//! The built-in backends: real host memory and a simulated device.

pub mod host;
pub mod sim;

pub use host::HostBackend;
pub use sim::{SimBackend, SimEvent, SimStream};
