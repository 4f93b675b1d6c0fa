//! The floating-point element types the core accepts, widened to f64 for every computation.

use crate::buffers::Zeroable;

/// A float the engine reads: f32 or f64. All arithmetic is done in f64.
pub trait Real: Zeroable + Default + Send + Sync + 'static {
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// A key whose unsigned order is the numeric order of non-NaN floats, with -0.0 == 0.0.
#[inline(always)]
pub fn order_key(value: f64) -> u64 {
    let bits = (value + 0.0).to_bits(); // -0.0 + 0.0 == +0.0: the two zeros tie, as in numpy
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_is_monotone_and_merges_zeros() {
        let values = [f64::NEG_INFINITY, -3.5, -1e-300, -0.0, 0.0, 1e-300, 2.0, f64::INFINITY];
        for pair in values.windows(2) {
            assert!(order_key(pair[0]) <= order_key(pair[1]), "{pair:?}");
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
        assert!(order_key(-1e-300) < order_key(0.0));
    }
}
