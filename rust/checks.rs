//! Input checks that must be fast enough to run on every call.

use rayon::prelude::*;

use crate::real::Real;

/// Values per parallel task; each task first scans for any bad value with a vectorised fold.
const CHUNK: usize = 1 << 16;

/// Index of the first NaN or infinite value.
pub fn first_non_finite<T: Real>(values: &[T]) -> Option<usize> {
    // A branch-free "any" over each chunk vectorises; only the chunk that has one is searched.
    let has_non_finite = |chunk: &[T]| chunk.iter().fold(false, |bad, v| bad | !v.to_f64().is_finite());
    let chunk = values.par_chunks(CHUNK).position_first(has_non_finite)?;
    let start = chunk * CHUNK;
    values[start..]
        .iter()
        .position(|v| !v.to_f64().is_finite())
        .map(|i| start + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_bad_value_across_chunks() {
        let mut values = vec![1.0f64; 3 * CHUNK + 5];
        assert_eq!(first_non_finite(&values), None);
        values[2 * CHUNK + 3] = f64::INFINITY;
        values[3 * CHUNK + 1] = f64::NAN;
        assert_eq!(first_non_finite(&values), Some(2 * CHUNK + 3));
        values[7] = f64::NEG_INFINITY;
        assert_eq!(first_non_finite(&values), Some(7));
        assert_eq!(first_non_finite(&[f32::NAN]), Some(0));
        assert_eq!(first_non_finite::<f32>(&[]), None);
    }
}
