#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod adaptive;
pub mod cgroup;
pub mod cleanup;
pub mod columns;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dashboard;
pub mod device;
pub mod error;
pub mod estimator;
pub mod export;
pub mod guards;
pub mod info;
mod invariant;
#[cfg(feature = "criterion")]
pub mod measurement;
#[cfg(feature = "metal")]
pub mod metal;
#[cfg(feature = "prometheus")]
pub mod metrics;
pub mod monitor;
pub mod observed;
pub mod plan;
pub mod pool;
pub mod recommend;
pub mod report;
pub mod retry;
#[cfg(feature = "async")]
pub mod retry_async;
pub mod scope_figures;
pub mod svg;
pub mod threshold;
#[cfg(feature = "tracing")]
pub mod tracing_layer;

pub use adaptive::{AdaptiveBatch, Adjustment, BatchLimits, Ceiling, CeilingDecay};
pub use cgroup::{CgroupLimit, CgroupVersion, cgroup_limit, cgroup_limit_at};
pub use cleanup::{
    CleanupReport, cleanup_all, collect_host_heap, empty_device_caches, register_cleanup,
    unregister_cleanup,
};
pub use columns::{DEVICE_COLUMNS, DeviceColumn};
#[cfg(feature = "cuda")]
pub use cuda::{pinned_hook_name, register_pinned_pool};
pub use dashboard::{DashboardData, render_html};
pub use device::{
    DeviceInfo, DeviceMemory, device, device_infos, devices, register_device, unregister_device,
};
pub use error::ToolkitError;
pub use estimator::{Estimator, Fit};
pub use export::{json, json_text};
pub use guards::{
    BudgetScope, DEFAULT_SAFETY_FACTOR, ensure_available, ensure_available_in,
    ensure_device_available, ensure_device_available_in,
};
pub use info::{
    MemoryInfo, MemorySources, ProcessMemory, SystemMemory, TrackedHost, memory_info,
    memory_info_from,
};
pub use invariant::ToolkitInvariant;
#[cfg(feature = "criterion")]
pub use measurement::HostAllocs;
#[cfg(feature = "prometheus")]
pub use metrics::{Metrics, prometheus};
pub use monitor::{
    MemoryMonitor, Metric, MonitorConfig, MonitorGuard, MonitorSummary, ProcessSource, Sample,
    SampleSource,
};
pub use observed::ObservedDevice;
pub use plan::{ChunkPlan, plan_chunks};
pub use pool::{BufferPool, PoolStats, Pooled};
pub use recommend::{Facts, Recommendation, Severity, recommend, recommendations};
pub use report::{memory_report, render_memory_report};
pub use retry::{
    Attempts, OomError, RetryError, RetryPolicy, retry_counts, retry_on_oom, retry_on_oom_or,
};
#[cfg(feature = "async")]
pub use retry_async::retry_on_oom_async;
pub use svg::plot_svg;
pub use threshold::{DeviceFigure, DeviceReading, Level, Threshold, ThresholdEvent, Watched};
#[cfg(feature = "tracing")]
pub use tracing_layer::ScopeLayer;
