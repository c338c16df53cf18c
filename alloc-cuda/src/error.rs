//! [`CudaError`]: why the CUDA allocator could not be created or used, with
//! the values involved and what to do.

use alloc_core::{AllocError, ConfigError};

/// A failure of the CUDA allocator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    /// No CUDA driver library could be loaded.
    #[error(
        "CUDA unavailable: libcuda not found; install the NVIDIA driver, or add the directory holding libcuda.so to LD_LIBRARY_PATH"
    )]
    Unavailable,
    /// A driver call failed.
    #[error("CUDA driver call {call} failed with {code} ({text}); {hint}")]
    Driver {
        /// The driver function.
        call: &'static str,
        /// The `CUresult` as its enum name.
        code: String,
        /// The driver's description of the code.
        text: String,
        /// What to check.
        hint: &'static str,
    },
    /// A device ordinal beyond the devices the driver reports.
    #[error(
        "CUDA device {device} does not exist: the driver reports {count} device(s); use an ordinal below {count}"
    )]
    NoDevice {
        /// The ordinal asked for.
        device: usize,
        /// Devices the driver reports.
        count: usize,
    },
    /// A device ordinal beyond what the process-wide allocators cover.
    #[error(
        "CUDA device {device}: the process-wide allocators cover ordinals below {max}; create a CudaAllocator for it instead"
    )]
    DeviceOutOfRange {
        /// The ordinal asked for.
        device: usize,
        /// The number of process-wide slots.
        max: usize,
    },
    /// A stream of another context was passed to an allocator.
    #[error(
        "stream belongs to CUDA device {stream_device}, but this allocator serves device {device}; allocate from that device's allocator"
    )]
    ForeignStream {
        /// The allocator's device.
        device: usize,
        /// The stream's device.
        stream_device: usize,
    },
    /// Setting up a device's resources failed.
    #[error("setting up CUDA device {device} failed while {action}: {source}")]
    Setup {
        /// The device ordinal.
        device: usize,
        /// What was being set up.
        action: &'static str,
        /// The driver's failure.
        source: alloc_core::BackendError,
    },
    /// The engine failed (out of memory after its reclaim ladder, or a
    /// backend failure).
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// `ALLOC_CONF` could not be parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl CudaError {
    /// A driver failure of `call` with `err`.
    pub(crate) fn driver(
        call: &'static str,
        err: cudarc::driver::DriverError,
        hint: &'static str,
    ) -> CudaError {
        CudaError::Driver {
            call,
            code: format!("{:?}", err.0),
            text: crate::driver::error_text(err),
            hint,
        }
    }

    /// Whether this is [`CudaError::Unavailable`].
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CudaError::Unavailable)
    }
}
