//! [`HostAllocs`]: a criterion `Measurement` of host bytes allocated or host
//! allocations per iteration, read from the tracking allocator's process
//! totals. The benchmark binary must install `alloc_host::TrackingAllocator`
//! (without it every figure is zero).

use criterion::Throughput;
use criterion::measurement::{Measurement, ValueFormatter};

/// What [`HostAllocs`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// Host bytes allocated (realloc growth included).
    Bytes,
    /// Host allocations.
    Allocations,
}

/// Criterion measurement of host allocation per iteration:
/// `Criterion::default().with_measurement(HostAllocs::bytes())`.
#[derive(Clone, Copy, Debug)]
pub struct HostAllocs {
    counted: Counted,
}

impl HostAllocs {
    /// Bytes allocated per iteration.
    pub fn bytes() -> Self {
        HostAllocs {
            counted: Counted::Bytes,
        }
    }

    /// Allocations per iteration.
    pub fn allocations() -> Self {
        HostAllocs {
            counted: Counted::Allocations,
        }
    }

    fn read(&self) -> u64 {
        let s = alloc_host::process_stats();
        match self.counted {
            Counted::Bytes => s.bytes_allocated,
            Counted::Allocations => s.allocations,
        }
    }
}

impl Measurement for HostAllocs {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        self.read()
    }

    fn end(&self, start: u64) -> u64 {
        self.read().saturating_sub(start)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        match self.counted {
            Counted::Bytes => &BytesFormatter,
            Counted::Allocations => &CountFormatter,
        }
    }
}

struct BytesFormatter;

impl ValueFormatter for BytesFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = match typical {
            t if t >= (1u64 << 30) as f64 => ((1u64 << 30) as f64, "GiB"),
            t if t >= (1u64 << 20) as f64 => ((1u64 << 20) as f64, "MiB"),
            t if t >= 1024.0 => (1024.0, "KiB"),
            _ => (1.0, "B"),
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }

    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        per_element(t, values, "B/elem")
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "B"
    }
}

struct CountFormatter;

impl ValueFormatter for CountFormatter {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "allocs"
    }

    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        per_element(t, values, "allocs/elem")
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "allocs"
    }
}

fn per_element(t: &Throughput, values: &mut [f64], unit: &'static str) -> &'static str {
    let n = match t {
        Throughput::Bits(n)
        | Throughput::Bytes(n)
        | Throughput::BytesDecimal(n)
        | Throughput::Elements(n) => *n,
        Throughput::ElementsAndBytes { elements, .. } => *elements,
    };
    values.iter_mut().for_each(|v| *v /= n.max(1) as f64);
    unit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_bytes_with_binary_units() {
        let mut v = [3.0 * 1048576.0, 1048576.0];
        assert_eq!(BytesFormatter.scale_values(v[0], &mut v), "MiB");
        assert_eq!(v, [3.0, 1.0]);
        let mut v = [100.0];
        assert_eq!(
            CountFormatter.scale_throughputs(100.0, &Throughput::Elements(10), &mut v),
            "allocs/elem"
        );
        assert_eq!(v, [10.0]);
        let m = HostAllocs::bytes();
        assert_eq!(m.add(&2, &3), 5);
        assert_eq!(
            m.end(m.start()),
            0,
            "nothing allocated without the tracking allocator"
        );
    }
}
