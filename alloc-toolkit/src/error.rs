//! [`ToolkitError`]: every way a toolkit call can refuse or fail, each with the
//! numbers involved and what to do about it.

use alloc_host::format_bytes;

/// Why a toolkit call refused its input or could not do what was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolkitError {
    /// A budget of zero bytes could never be met.
    #[error("{what} is 0 bytes; give a positive number of bytes")]
    ZeroBudget {
        /// Which budget (`"plan_chunks budget"`, `"device budget"`, ...).
        what: &'static str,
    },
    /// A safety factor must be a finite number of at least 1.0.
    #[error(
        "safety factor {factor} is not usable; give a finite number >= 1.0 (1.0 = no margin, 1.2 = 20% margin)"
    )]
    BadSafetyFactor {
        /// The value given.
        factor: f64,
    },
    /// A monitor interval of zero would spin a core.
    #[error("monitor interval is 0; give a positive duration such as 10 ms")]
    ZeroInterval,
    /// A count that must be positive was zero.
    #[error("{what} is 0; give a positive number")]
    Zero {
        /// Which count (`"bytes_per_item"`, `"series capacity"`, ...).
        what: &'static str,
    },
    /// A fraction must lie in (0, 1].
    #[error("{what} {value} is not in (0, 1]; give a fraction such as 0.8")]
    BadFraction {
        /// Which fraction.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// Not enough host memory for the step about to run.
    #[error(
        "not enough host memory: need {} ({} x safety factor {factor}), {} available ({source_name}); {} missing; free memory, lower the batch, or raise the limit",
        format_bytes(*needed), format_bytes(*requested), format_bytes(*available), format_bytes(needed.saturating_sub(*available))
    )]
    HostUnavailable {
        /// Bytes asked for.
        requested: u64,
        /// `requested` × safety factor.
        needed: u64,
        /// Bytes available.
        available: u64,
        /// The safety factor applied.
        factor: f64,
        /// Where `available` came from (`"cgroup limit"`, `"/proc/meminfo"`).
        source_name: &'static str,
    },
    /// Not enough device memory for the step about to run.
    #[error(
        "not enough memory on device `{device}`: need {} ({} x safety factor {factor}), {} available ({} free + {} cached); {} missing; free buffers, lower the batch, or use another device",
        format_bytes(*needed), format_bytes(*requested), format_bytes(*available), format_bytes(*free), format_bytes(*cached), format_bytes(needed.saturating_sub(*available))
    )]
    DeviceUnavailable {
        /// The device's registered name.
        device: String,
        /// Bytes asked for.
        requested: u64,
        /// `requested` × safety factor.
        needed: u64,
        /// Free + cached bytes.
        available: u64,
        /// Bytes the device reports free.
        free: u64,
        /// Bytes the engine caches (reserved − in use), reusable at once.
        cached: u64,
        /// The safety factor applied.
        factor: f64,
    },
    /// No device is registered under this name.
    #[error(
        "no device registered as `{name}`; registered: [{registered}]; call register_device first"
    )]
    UnknownDevice {
        /// The name asked for.
        name: String,
        /// The names registered, comma-separated.
        registered: String,
    },
    /// A device charge would take a scope over its device budget.
    #[error(
        "device budget of scope `{scope}` exceeded: {} live + {} requested > budget {}; {} over; free device buffers in this scope or raise the budget",
        format_bytes(*live), format_bytes(*requested), format_bytes(*budget), format_bytes((live + requested).saturating_sub(*budget))
    )]
    DeviceBudgetExceeded {
        /// The scope's name.
        scope: String,
        /// Device bytes the scope holds now.
        live: u64,
        /// Bytes asked for.
        requested: u64,
        /// The device budget.
        budget: u64,
    },
    /// A single item does not fit in the budget.
    #[error(
        "one item needs {} but the budget is {}; raise the budget to at least {} or shrink the items",
        format_bytes(*bytes_per_item), format_bytes(*budget), format_bytes(*bytes_per_item)
    )]
    ItemTooLarge {
        /// Bytes one item needs.
        bytes_per_item: u64,
        /// The budget.
        budget: u64,
    },
    /// The device engine refused an allocation (out of memory, backend failure).
    #[error(transparent)]
    Alloc(#[from] alloc_core::AllocError),
    /// A scope could not be opened.
    #[error(transparent)]
    Scope(#[from] alloc_host::ScopeError),
    /// The OS could not be asked (a /proc file missing or unreadable).
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS's words.
        message: String,
    },
    /// A device to observe could not be opened (no driver, no such device).
    #[error("cannot observe device `{device}`: {reason}")]
    CannotObserve {
        /// The device asked for.
        device: String,
        /// Why, with what to check.
        reason: String,
    },
}

/// Checks a safety factor: finite and at least 1.0.
pub(crate) fn check_factor(factor: f64) -> Result<f64, ToolkitError> {
    if factor.is_finite() && factor >= 1.0 {
        Ok(factor)
    } else {
        Err(ToolkitError::BadSafetyFactor { factor })
    }
}

/// `bytes × factor`, saturating.
pub(crate) fn scaled(bytes: u64, factor: f64) -> u64 {
    let v = bytes as f64 * factor;
    if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v.ceil() as u64
    }
}
