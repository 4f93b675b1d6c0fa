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

/// The best `k` of one chunk (unordered) among its values at or above `floor`, and how many values
/// are at or above `floor`; `base` is the chunk's first index.
fn chunk_top_k<T: Real>(values: &[T], base: usize, k: usize, floor: f64) -> (Vec<(f64, usize)>, usize) {
    let capacity = (2 * k).min(values.len());
    let mut candidates: Vec<(f64, usize)> = Vec::with_capacity(capacity);
    let mut bar = f64::NEG_INFINITY; // after the first trim, admit only values strictly above it
    let mut trimmed = false;
    let mut at_or_above_floor = 0usize;
    for (offset, value) in values.iter().enumerate() {
        let v = value.to_f64();
        if v.is_nan() || v < floor {
            continue;
        }
        at_or_above_floor += 1;
        if trimmed && v <= bar {
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
    (candidates, at_or_above_floor)
}

/// Values spread evenly over the input that [`sampled_floor`] reads.
const FLOOR_SAMPLE: usize = 1 << 16;

/// A value that about `4k` of `values` reach, estimated from an even sample; -inf when `k` is too
/// large a share of the input for a sample to help. Values below it cannot be among the best `k`
/// whenever at least `k` values reach it, which the sample's size makes all but certain (about 260
/// sampled values lie above it at 10M values and k = 10,000), so the chunks skip them without
/// touching their candidate buffers.
fn sampled_floor<T: Real>(values: &[T], k: usize) -> f64 {
    let n = values.len();
    let stride = n / FLOOR_SAMPLE;
    if stride < 2 {
        return f64::NEG_INFINITY;
    }
    let mut sample: Vec<f64> = (0..FLOOR_SAMPLE)
        .map(|i| values[i * stride].to_f64())
        .filter(|v| !v.is_nan())
        .collect();
    let rank = (4 * k).saturating_mul(sample.len()) / n; // the sample's rank of the n values' 4k-th best
    if rank >= sample.len() / 2 {
        return f64::NEG_INFINITY;
    }
    let (_, &mut floor, _) = sample.select_nth_unstable_by(rank, |a, b| b.total_cmp(a));
    floor
}

/// Indices of the `k` largest non-NaN values, best first. Call inside the engine's pool.
pub fn top_k<T: Real>(values: &[T], k: usize) -> Vec<i64> {
    if k == 0 || values.is_empty() {
        return Vec::new();
    }
    let chunk = (values.len() / (4 * rayon::current_num_threads())).max(k.max(1 << 16));
    let best_above = |floor: f64| {
        let (candidates, reaching): (Vec<Vec<(f64, usize)>>, Vec<usize>) = values
            .par_chunks(chunk)
            .enumerate()
            .map(|(i, part)| chunk_top_k(part, i * chunk, k, floor))
            .unzip();
        (candidates.concat(), reaching.iter().sum::<usize>())
    };
    let (mut candidates, reaching) = best_above(sampled_floor(values, k));
    if reaching < k {
        // Fewer than k values reach the sampled floor (or it was -inf): the best k of all values
        // may lie below it, so take them without one.
        candidates = best_above(f64::NEG_INFINITY).0;
    }
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

    #[test]
    fn a_misleading_sample_falls_back_to_every_value() {
        // Every sampled value (each `stride`-th) is large, every other value small: fewer than k
        // values reach the sampled floor, so the best k must come from below it.
        let n = 1 << 20;
        let stride = n / FLOOR_SAMPLE;
        let values: Vec<f64> = (0..n)
            .map(|i| if i % stride == 0 { 1e9 } else { (i % 977) as f64 })
            .collect();
        let k = FLOOR_SAMPLE + 500;
        assert!(sampled_floor(&values, k) > 1e6);
        assert_eq!(top_k(&values, k), brute(&values, k));
        // A sample that helps: the floor leaves out most values, and the result is the same.
        let spread: Vec<f64> = (0..n as u64).map(|i| ((i * 2654435761) % 1_000_003) as f64).collect();
        assert!(sampled_floor(&spread, 1000) > 900_000.0);
        for k in [1, 1000, 20_000] {
            assert_eq!(top_k(&spread, k), brute(&spread, k), "k={k}");
        }
        // Ties at the floor: all of them are candidates, the lower indices win.
        let tied: Vec<f64> = (0..n).map(|i| if i % 3 == 0 { 5.0 } else { 1.0 }).collect();
        assert_eq!(top_k(&tied, 10), brute(&tied, 10));
    }
}
