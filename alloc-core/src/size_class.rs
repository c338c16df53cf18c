//! Size rounding, pool choice and segment sizing: PyTorch's constants, with
//! their units and reasons.

/// Every size is rounded up to a multiple of 512 B (and at least 512 B).
pub const MIN_BLOCK: usize = 512;
/// Requests of at most 1 MiB (after rounding) go to the small pool.
pub const SMALL_SIZE: usize = 1 << 20;
/// Small-pool segments are 2 MiB: many small blocks share one segment.
pub const SMALL_SEGMENT: usize = 2 << 20;
/// Large requests below 10 MiB share 20 MiB segments.
pub const MIN_LARGE_ALLOC: usize = 10 << 20;
/// The segment size for large requests below [`MIN_LARGE_ALLOC`].
pub const LARGE_SEGMENT: usize = 20 << 20;
/// Larger requests get a segment of their own, rounded up to 2 MiB.
pub const ROUND_LARGE: usize = 2 << 20;
/// Number of power-of-two intervals `roundup_power2_divisions` configures,
/// starting at 1 MiB (the last interval also covers everything above).
pub const ROUNDUP_INTERVALS: usize = 16;

/// The two pools: blocks of one pool are never handed out for the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Pool {
    /// Rounded sizes of at most [`SMALL_SIZE`].
    #[serde(rename = "small_pool")]
    Small,
    /// Rounded sizes above [`SMALL_SIZE`].
    #[serde(rename = "large_pool")]
    Large,
}

impl Pool {
    /// 0 for small, 1 for large (index into per-pool arrays).
    #[inline]
    pub const fn index(self) -> usize {
        match self {
            Pool::Small => 0,
            Pool::Large => 1,
        }
    }

    /// The pool a rounded size belongs to.
    #[inline]
    pub const fn of(rounded: usize) -> Pool {
        if rounded <= SMALL_SIZE {
            Pool::Small
        } else {
            Pool::Large
        }
    }

    /// The name used in statistics keys.
    pub const fn key(self) -> &'static str {
        match self {
            Pool::Small => "small_pool",
            Pool::Large => "large_pool",
        }
    }
}

/// Rounds `bytes` to a block size: 512 B multiples, or (where `divisions` for
/// the size's interval is at least 2) the next of `divisions` equal steps
/// between two powers of two. `None` on overflow.
#[inline]
pub fn round_size(bytes: usize, divisions: &[u32; ROUNDUP_INTERVALS]) -> Option<usize> {
    if bytes < MIN_BLOCK {
        return Some(MIN_BLOCK);
    }
    let d = divisions[interval(bytes)] as usize;
    if d > 1 && bytes > MIN_BLOCK.saturating_mul(d) {
        return round_power2_division(bytes, d);
    }
    bytes.checked_next_multiple_of(MIN_BLOCK)
}

/// The `roundup_power2_divisions` interval of `bytes`, as PyTorch picks it:
/// floor(log2(bytes)) − 20, so [1, 2) MiB (and below) is 0, [2, 4) MiB is 1,
/// and so on, capped at the last.
#[inline]
fn interval(bytes: usize) -> usize {
    let log = usize::BITS - 1 - bytes.max(1).leading_zeros(); // floor(log2)
    (log.saturating_sub(20) as usize).min(ROUNDUP_INTERVALS - 1)
}

fn round_power2_division(bytes: usize, divisions: usize) -> Option<usize> {
    if bytes.is_power_of_two() {
        return Some(bytes);
    }
    let floor = 1usize << (usize::BITS - 1 - bytes.leading_zeros());
    // divisions rounded down to a power of two, as PyTorch does
    let div_pow = 1usize << (usize::BITS - 1 - divisions.leading_zeros());
    let step = floor / div_pow;
    if step == 0 {
        return floor.checked_mul(2);
    }
    let down = bytes & !(step - 1);
    if down == bytes {
        Some(bytes)
    } else {
        down.checked_add(step)
    }
}

/// The size of a fixed (non-expandable) segment for a rounded request.
#[inline]
pub fn segment_size(rounded: usize) -> Option<usize> {
    if rounded <= SMALL_SIZE {
        Some(SMALL_SEGMENT)
    } else if rounded < MIN_LARGE_ALLOC {
        Some(LARGE_SEGMENT)
    } else {
        rounded.checked_next_multiple_of(ROUND_LARGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [u32; ROUNDUP_INTERVALS] = [0; ROUNDUP_INTERVALS];

    #[test]
    fn rounds_to_512() {
        assert_eq!(round_size(0, &NONE), Some(512));
        assert_eq!(round_size(1, &NONE), Some(512));
        assert_eq!(round_size(512, &NONE), Some(512));
        assert_eq!(round_size(513, &NONE), Some(1024));
        assert_eq!(round_size(usize::MAX, &NONE), None);
    }

    #[test]
    fn power2_divisions() {
        let four = [4; ROUNDUP_INTERVALS];
        // 1.1 MiB between 1 and 2 MiB in quarters → 1.25 MiB
        assert_eq!(round_size(1_153_434, &four), Some(1_310_720));
        assert_eq!(round_size(1 << 21, &four), Some(1 << 21));
        // below 512 × divisions: plain 512 rounding
        assert_eq!(round_size(1000, &four), Some(1024));
    }

    #[test]
    fn interval_is_floor_log2() {
        assert_eq!(interval(1), 0);
        assert_eq!(interval((2 << 20) - 1), 0);
        assert_eq!(interval(2 << 20), 1);
        assert_eq!(interval((4 << 20) - 1), 1);
        assert_eq!(interval(usize::MAX), ROUNDUP_INTERVALS - 1);
    }

    #[test]
    fn segments() {
        assert_eq!(segment_size(512), Some(SMALL_SEGMENT));
        assert_eq!(segment_size(SMALL_SIZE + 512), Some(LARGE_SEGMENT));
        assert_eq!(segment_size(11 << 20), Some(12 << 20));
        assert_eq!(Pool::of(SMALL_SIZE), Pool::Small);
        assert_eq!(Pool::of(SMALL_SIZE + 512), Pool::Large);
    }
}
