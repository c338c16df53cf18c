//! [`MetalError`]: why a Metal allocator could not be created or used, with
//! the values involved and what to do.

use alloc_core::ConfigError;

/// A failure of the Metal allocator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetalError {
    /// The crate was built for a target without Metal.
    #[error(
        "Metal is only available on Apple platforms (this build targets `{target}`); use alloc-cuda or alloc-core's HostBackend here"
    )]
    Unsupported {
        /// The operating system the crate was built for.
        target: &'static str,
    },
    /// The system has no Metal device (a virtual machine without GPU
    /// pass-through, or a headless session without access to the GPU).
    #[error("no Metal device: the system reports none; run on a Mac with a Metal GPU")]
    NoDevice,
    /// A device index beyond the devices the system reports.
    #[error(
        "Metal device {index} does not exist: the system reports {count} device(s); use an index below {count}"
    )]
    DeviceOutOfRange {
        /// The index asked for.
        index: usize,
        /// Devices the system reports.
        count: usize,
    },
    /// Metal returned nil when asked for a command queue or a shared event.
    #[error("Metal device `{device}` could not create {what}; the device may be out of resources")]
    Resource {
        /// The device's name.
        device: String,
        /// What was asked for (`a command queue`, `a shared event`).
        what: &'static str,
    },
    /// A stream that this allocator never created or named.
    #[error("stream {stream} is unknown to Metal device `{device}`; create it with new_stream")]
    UnknownStream {
        /// The device's name.
        device: String,
        /// The stream's number.
        stream: u32,
    },
    /// A watermark ratio that is negative or not a number.
    #[error(
        "high watermark ratio {ratio} is invalid: use 0 (no limit) or a positive multiple of recommendedMaxWorkingSetSize, such as 1.7"
    )]
    Watermark {
        /// The ratio given.
        ratio: f64,
    },
    /// The configuration (`ALLOC_CONF`) did not parse.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl MetalError {
    /// The error every constructor returns on targets without Metal.
    pub const fn unsupported() -> MetalError {
        MetalError::Unsupported {
            target: std::env::consts::OS,
        }
    }
}
