//! Targets without Metal: the device type has no values, so every method
//! below is unreachable by construction; the constructors say why.

use std::ptr::NonNull;

use alloc_core::{BackendError, DevicePtr, MemInfo};

use crate::error::MetalError;
use crate::stream::MetalStream;

/// A completion marker; it has no values on targets without Metal.
#[derive(Debug)]
pub struct MetalEvent {
    never: core::convert::Infallible,
}

impl MetalEvent {
    /// The value the queue's shared event will reach.
    pub fn value(&self) -> u64 {
        match self.never {}
    }
}

/// A segment; it has no values on targets without Metal.
#[derive(Clone)]
pub(crate) enum Segment {}

impl Segment {
    pub(crate) fn length(&self) -> usize {
        match *self {}
    }

    pub(crate) fn contents(&self, _cpu_visible: bool) -> Option<NonNull<u8>> {
        match *self {}
    }
}

/// A Metal device; it has no values on targets without Metal.
pub(crate) enum Device {}

impl Device {
    pub(crate) fn system_default() -> Result<Device, MetalError> {
        Err(MetalError::unsupported())
    }

    pub(crate) fn nth(_index: usize) -> Result<Device, MetalError> {
        Err(MetalError::unsupported())
    }

    pub(crate) fn name(&self) -> &str {
        match *self {}
    }

    pub(crate) fn unified(&self) -> bool {
        match *self {}
    }

    pub(crate) fn cpu_visible(&self) -> bool {
        match *self {}
    }

    pub(crate) fn recommended_max_memory(&self) -> u64 {
        match *self {}
    }

    pub(crate) fn driver_allocated_memory(&self) -> u64 {
        match *self {}
    }

    pub(crate) fn set_watermark_ratio(&self, _ratio: f64) -> Result<Option<u64>, MetalError> {
        match *self {}
    }

    pub(crate) fn watermark(&self) -> Option<u64> {
        match *self {}
    }

    pub(crate) fn new_stream(&self) -> Result<MetalStream, MetalError> {
        match *self {}
    }

    pub(crate) fn allocate(&self, _bytes: usize) -> Result<DevicePtr, BackendError> {
        match *self {}
    }

    pub(crate) fn deallocate(&self, _ptr: DevicePtr, _bytes: usize) {
        match *self {}
    }

    pub(crate) fn segment(&self, _ptr: DevicePtr) -> Option<(Segment, usize)> {
        match *self {}
    }

    pub(crate) fn record_event(&self, _stream: MetalStream) -> Result<MetalEvent, BackendError> {
        match *self {}
    }

    pub(crate) fn event_done(&self, _event: &MetalEvent) -> bool {
        match *self {}
    }

    pub(crate) fn wait_event(&self, _event: &MetalEvent) {
        match *self {}
    }

    pub(crate) fn synchronize_stream(&self, _stream: MetalStream) -> Result<(), MetalError> {
        match *self {}
    }

    pub(crate) fn synchronize(&self) {
        match *self {}
    }

    pub(crate) fn mem_info(&self) -> Option<MemInfo> {
        match *self {}
    }
}
