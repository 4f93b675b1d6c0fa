//! Top-k selection: indices of the k largest values, descending, ties to the lower index, NaN never.
//!
//! Each thread streams its chunk once, keeping at most 2k candidates; whenever the buffer fills, a
//! linear-time selection keeps the best k and raises the admission bar. Later equal values never
//! enter (their index is higher), so ties resolve to the lower index without sorting the input.

use std::cmp::Ordering;

use rayon::prelude::*;

use crate::real::Real;

/// Best first: larger value, then lower index.
#[inline]
fn best_first(a: &(f64, usize), b: &(f64, usize)) -> Ordering {
    b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1))
}

fn keep_best(candidates: &mut Vec<(f64, usize)>, k: usize) {
    if candidates.len() > k {
        candidates.select_nth_unstable_by(k, best_first);
        candidates.truncate(k);
    }
}

/// The best `k` of one chunk (unordered); `base` is the chunk's first index.
fn chunk_top_k<T: Real>(values: &[T], base: usize, k: usize) -> Vec<(f64, usize)> {
    let capacity = (2 * k).min(values.len());
    let mut candidates: Vec<(f64, usize)> = Vec::with_capacity(capacity);
    let mut bar = f64::NEG_INFINITY; // after the first trim, admit only values strictly above it
    let mut trimmed = false;
    for (offset, value) in values.iter().enumerate() {
        let v = value.to_f64();
        if v.is_nan() || (trimmed && v <= bar) {
            continue;
        }
        candidates.push((v, base + offset));
        if candidates.len() == capacity && capacity > k {
            keep_best(&mut candidates, k);
            // The worst kept candidate sets the bar.
            bar = candidates.iter().map(|c| c.0).fold(f64::INFINITY, f64::min);
            trimmed = true;
        }
    }
    keep_best(&mut candidates, k);
    candidates
}

/// Indices of the `k` largest non-NaN values, best first. Call inside the engine's pool.
pub fn top_k<T: Real>(values: &[T], k: usize) -> Vec<i64> {
    if k == 0 || values.is_empty() {
        return Vec::new();
    }
    let chunk = (values.len() / (4 * rayon::current_num_threads())).max(k.max(1 << 16));
    let mut candidates: Vec<(f64, usize)> = values
        .par_chunks(chunk)
        .enumerate()
        .flat_map_iter(|(i, part)| chunk_top_k(part, i * chunk, k))
        .collect();
    keep_best(&mut candidates, k);
    candidates.sort_unstable_by(best_first);
    candidates.into_iter().map(|(_, i)| i as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(values: &[f64], k: usize) -> Vec<i64> {
        let mut idx: Vec<(f64, usize)> = values.iter().copied().zip(0..).filter(|(v, _)| !v.is_nan()).collect();
        idx.sort_by(best_first);
        idx.into_iter().take(k).map(|(_, i)| i as i64).collect()
    }

    #[test]
    fn ties_go_to_the_lower_index_and_nan_is_never_chosen() {
        let v = [1.0, f64::NAN, 3.0, 3.0, -1.0, 3.0, f64::NAN];
        assert_eq!(top_k(&v, 2), vec![2, 3]);
        assert_eq!(top_k(&v, 10), vec![2, 3, 5, 0, 4]);
        assert!(top_k(&v, 0).is_empty());
        assert!(top_k(&[f64::NAN; 3], 2).is_empty());
    }

    #[test]
    fn matches_sorting_on_large_tied_input() {
        let values: Vec<f64> = (0..300_000u64).map(|i| ((i * 2654435761) % 1000) as f64).collect();
        for k in [1, 7, 1000, 5000] {
            assert_eq!(top_k(&values, k), brute(&values, k), "k={k}");
        }
        let ascending: Vec<f64> = (0..200_000).map(|i| i as f64).collect();
        assert_eq!(top_k(&ascending, 100), brute(&ascending, 100));
    }
}
