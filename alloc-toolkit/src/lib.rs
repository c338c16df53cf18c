#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod adaptive;
pub mod cgroup;
pub mod cleanup;
pub mod device;
pub mod error;
pub mod estimator;
pub mod guards;
pub mod info;
pub mod monitor;
pub mod plan;
pub mod pool;
pub mod retry;

pub use adaptive::{AdaptiveBatch, Adjustment, BatchLimits};
pub use cgroup::{CgroupLimit, CgroupVersion, cgroup_limit, cgroup_limit_at};
pub use cleanup::{CleanupReport, cleanup_all, collect_host_heap, empty_device_caches};
pub use device::{
    DeviceInfo, DeviceMemory, device, device_infos, devices, register_device, unregister_device,
};
pub use error::ToolkitError;
pub use estimator::{Estimator, Fit};
pub use guards::{
    BudgetScope, DEFAULT_SAFETY_FACTOR, ensure_available, ensure_available_in,
    ensure_device_available, ensure_device_available_in,
};
pub use info::{
    MemoryInfo, MemorySources, ProcessMemory, SystemMemory, TrackedHost, memory_info,
    memory_info_from,
};
pub use monitor::{
    MemoryMonitor, Metric, MonitorConfig, MonitorGuard, MonitorSummary, ProcessSource, Sample,
    SampleSource, ThresholdEvent,
};
pub use plan::{ChunkPlan, plan_chunks};
pub use pool::{BufferPool, PoolStats, Pooled};
pub use retry::{Attempts, OomError, RetryError, RetryPolicy, retry_on_oom, retry_on_oom_or};
