//! Kendall's tau-b with ties, exactly as `scipy.stats.kendalltau` (variant "b").
//!
//! Small groups use the O(n^2) pair scan (faster below a few dozen items); larger ones sort by
//! (x, y) and count discordant pairs as the strict inversions of y with a merge sort, O(n log n),
//! in parallel. Pair counts are 128-bit: n (n - 1) / 2 exceeds 64 bits from n = 6.1e9 (and the
//! product n (n - 1) from n = 2^32), so no count of any input that fits in memory can overflow.

use rayon::prelude::*;

use crate::real::{order_key, Real};

/// Below this many items the pairwise scan beats sorting.
pub const PAIRWISE_MAX: usize = 48;
/// Below this many items a sort or merge runs on one thread.
const PARALLEL_MIN: usize = 1 << 16;

/// Pair counts that determine tau-b.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PairCounts {
    /// n (n - 1) / 2.
    pub total: u128,
    /// Pairs tied in x.
    pub x_ties: u128,
    /// Pairs tied in y.
    pub y_ties: u128,
    /// Pairs tied in both.
    pub joint_ties: u128,
    /// Pairs ordered oppositely by x and y.
    pub discordant: u128,
}

impl PairCounts {
    /// tau-b, computed in scipy's order of operations; NaN when x or y is constant (or n < 2).
    pub fn tau_b(&self) -> f64 {
        if self.x_ties == self.total || self.y_ties == self.total {
            return f64::NAN;
        }
        let concordant_minus_discordant = self.total as i128 - self.x_ties as i128 - self.y_ties as i128
            + self.joint_ties as i128
            - 2 * self.discordant as i128;
        let tau = concordant_minus_discordant as f64
            / ((self.total - self.x_ties) as f64).sqrt()
            / ((self.total - self.y_ties) as f64).sqrt();
        tau.clamp(-1.0, 1.0)
    }
}

/// tau-b of one group, choosing the algorithm by size.
pub fn tau_b<T: Real>(x: &[T], y: &[T]) -> f64 {
    if x.len() <= PAIRWISE_MAX {
        pair_counts_pairwise(x, y).tau_b()
    } else {
        pair_counts_sorted(x, y).tau_b()
    }
}

/// O(n^2) pair counts, branch-free (signs of random data are unpredictable); for small n.
pub fn pair_counts_pairwise<T: Real>(x: &[T], y: &[T]) -> PairCounts {
    let n = x.len();
    // 64-bit counters in the loop: this path never sees 2^32 items.
    let (mut x_ties, mut y_ties, mut joint_ties, mut discordant) = (0u64, 0u64, 0u64, 0u64);
    let sign = |d: f64| (d > 0.0) as i32 - (d < 0.0) as i32;
    for i in 0..n {
        let (xi, yi) = (x[i].to_f64(), y[i].to_f64());
        for j in (i + 1)..n {
            // A difference that overflows to +-inf still has the right sign.
            let sx = sign(xi - x[j].to_f64());
            let sy = sign(yi - y[j].to_f64());
            x_ties += (sx == 0) as u64;
            y_ties += (sy == 0) as u64;
            joint_ties += ((sx | sy) == 0) as u64;
            discordant += (sx * sy < 0) as u64;
        }
    }
    PairCounts {
        total: pairs(n as u64),
        x_ties: x_ties.into(),
        y_ties: y_ties.into(),
        joint_ties: joint_ties.into(),
        discordant: discordant.into(),
    }
}

/// O(n log n) pair counts (Knight's algorithm), parallel for large n.
pub fn pair_counts_sorted<T: Real>(x: &[T], y: &[T]) -> PairCounts {
    let n = x.len();
    let mut keyed: Vec<(u64, u64)> = if n >= PARALLEL_MIN {
        x.par_iter()
            .zip(y.par_iter())
            .map(|(a, b)| (order_key(a.to_f64()), order_key(b.to_f64())))
            .collect()
    } else {
        x.iter()
            .zip(y.iter())
            .map(|(a, b)| (order_key(a.to_f64()), order_key(b.to_f64())))
            .collect()
    };
    if n >= PARALLEL_MIN {
        keyed.par_sort_unstable();
    } else {
        keyed.sort_unstable();
    }
    let x_ties = tied_pairs(&keyed, |a, b| a.0 == b.0);
    let joint_ties = tied_pairs(&keyed, |a, b| a == b);
    let mut ys: Vec<u64> = keyed.iter().map(|&(_, b)| b).collect();
    drop(keyed);
    // Within a run of tied x the y keys are ascending, so x-tied pairs are never counted here.
    let mut scratch = vec![0u64; n];
    let discordant = sort_counting_inversions(&mut ys, &mut scratch);
    let y_ties = tied_pairs(&ys, |a, b| a == b);
    PairCounts {
        total: pairs(n as u64),
        x_ties,
        y_ties,
        joint_ties,
        discordant,
    }
}

/// count (count - 1) / 2, exact for every count (the product needs up to 128 bits).
#[inline]
pub fn pairs(count: u64) -> u128 {
    u128::from(count) * u128::from(count.saturating_sub(1)) / 2
}

/// Sum of t (t - 1) / 2 over the runs of equal neighbours of a sorted slice.
fn tied_pairs<T>(sorted: &[T], equal: impl Fn(&T, &T) -> bool) -> u128 {
    let mut total = 0u128;
    let mut run = 1u64;
    for pair in sorted.windows(2) {
        if equal(&pair[0], &pair[1]) {
            run += 1;
        } else {
            total += pairs(run);
            run = 1;
        }
    }
    if !sorted.is_empty() {
        total += pairs(run);
    }
    total
}

/// Sorts `values` ascending and returns the number of pairs i < j with values[i] > values[j].
///
/// `scratch` must be as long as `values`; its contents are overwritten.
pub fn sort_counting_inversions(values: &mut [u64], scratch: &mut [u64]) -> u128 {
    sort_counting_into(values, scratch, false)
}

/// Merge sort that alternates between the two buffers instead of copying back after each merge:
/// sorts the contents of `values` into `values` (or into `scratch` when `into_scratch`).
fn sort_counting_into(values: &mut [u64], scratch: &mut [u64], into_scratch: bool) -> u128 {
    let n = values.len();
    if n <= 32 {
        let inversions = u128::from(insertion_sort_counting(values));
        if into_scratch {
            scratch.copy_from_slice(values);
        }
        return inversions;
    }
    let mid = n / 2;
    let (left, right) = values.split_at_mut(mid);
    let (left_scratch, right_scratch) = scratch.split_at_mut(mid);
    // The halves land in the buffer we are not merging into.
    let halves_into_scratch = !into_scratch;
    let (left_inv, right_inv) = if n >= PARALLEL_MIN {
        rayon::join(
            || sort_counting_into(left, left_scratch, halves_into_scratch),
            || sort_counting_into(right, right_scratch, halves_into_scratch),
        )
    } else {
        (
            sort_counting_into(left, left_scratch, halves_into_scratch),
            sort_counting_into(right, right_scratch, halves_into_scratch),
        )
    };
    let cross = if into_scratch {
        merge_counting(&values[..mid], &values[mid..], scratch)
    } else {
        merge_counting(&scratch[..mid], &scratch[mid..], values)
    };
    left_inv + right_inv + cross
}

fn insertion_sort_counting(values: &mut [u64]) -> u64 {
    let mut inversions = 0u64;
    for i in 1..values.len() {
        let value = values[i];
        let mut j = i;
        while j > 0 && values[j - 1] > value {
            values[j] = values[j - 1];
            j -= 1;
        }
        inversions += (i - j) as u64;
        values[j] = value;
    }
    inversions
}

/// Merges two sorted runs into `out`, counting pairs (a in left, b in right) with a > b.
///
/// The count reaches left.len() * right.len(), past 64 bits once both runs exceed 2^32 items; the
/// 128-bit sum is off the loop's critical path (the comparisons and index updates), so it is free.
fn merge_counting(left: &[u64], right: &[u64], out: &mut [u64]) -> u128 {
    let (mut i, mut j, mut k) = (0, 0, 0);
    let mut inversions = 0u128;
    let (left_len, right_len) = (left.len(), right.len());
    assert_eq!(out.len(), left_len + right_len);
    // Branch-free (the comparison is unpredictable on random data) and without bounds checks, which
    // cost a third of the time here.
    // SAFETY: inside the loop i < left_len and j < right_len, so k = i + j < out.len().
    unsafe {
        while i < left_len && j < right_len {
            let (a, b) = (*left.get_unchecked(i), *right.get_unchecked(j));
            let take_right = b < a;
            *out.get_unchecked_mut(k) = if take_right { b } else { a };
            inversions += if take_right { (left_len - i) as u128 } else { 0 };
            j += take_right as usize;
            i += !take_right as usize;
            k += 1;
        }
    }
    out[k..k + left.len() - i].copy_from_slice(&left[i..]);
    k += left.len() - i;
    out[k..].copy_from_slice(&right[j..]);
    inversions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn known_value_from_scipy_docs() {
        let x = [12.0, 2.0, 1.0, 12.0, 2.0];
        let y = [1.0, 4.0, 7.0, 1.0, 0.0];
        let expected = -0.47140452079103173;
        assert!((pair_counts_pairwise(&x, &y).tau_b() - expected).abs() < 1e-15);
        assert!((pair_counts_sorted(&x, &y).tau_b() - expected).abs() < 1e-15);
    }

    #[test]
    fn sorted_counts_equal_pairwise_counts_with_heavy_ties() {
        let mut seed = 7;
        for n in [0usize, 1, 2, 3, 17, 33, 64, 200, 1000] {
            for levels in [1u64, 2, 5, 1000] {
                let x: Vec<f64> = (0..n).map(|_| (lcg(&mut seed) % levels) as f64).collect();
                let y: Vec<f32> = (0..n).map(|_| (lcg(&mut seed) % levels) as f32 - 1.5).collect();
                let xf: Vec<f64> = x.clone();
                let yf: Vec<f64> = y.iter().map(|&v| v as f64).collect();
                assert_eq!(
                    pair_counts_pairwise(&xf, &yf),
                    pair_counts_sorted(&xf, &yf),
                    "n={n} levels={levels}"
                );
            }
        }
    }

    #[test]
    fn nan_when_constant_or_short() {
        assert!(tau_b::<f64>(&[], &[]).is_nan());
        assert!(tau_b(&[1.0], &[2.0]).is_nan());
        assert!(tau_b(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
        assert_eq!(tau_b(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert_eq!(tau_b(&[1.0, 2.0], &[4.0, 3.0]), -1.0);
    }

    #[test]
    fn signed_zeros_tie() {
        assert!(tau_b(&[-0.0, 0.0, 1.0], &[1.0, 2.0, 3.0]) < 1.0);
        let counts = pair_counts_sorted(&[-0.0, 0.0, 1.0], &[1.0, 2.0, 3.0]);
        assert_eq!(counts.x_ties, 1);
    }

    #[test]
    fn pair_counts_are_exact_where_64_bit_products_overflow() {
        // 2^32 + 1 items: n (n - 1) overflows u64 although n (n - 1) / 2 = 2^63 + 2^31 fits.
        let n = (1u64 << 32) + 1;
        assert_eq!(pairs(n), (1u128 << 63) + (1u128 << 31));
        assert!(n.checked_mul(n - 1).is_none());
        // 6.1e9 items: n (n - 1) / 2 itself is past u64::MAX.
        let n = 6_100_000_000u64;
        assert_eq!(pairs(n), 18_604_999_996_950_000_000u128);
        assert!(pairs(n) > u128::from(u64::MAX));
        assert_eq!(pairs(1u64 << 40), (1u128 << 79) - (1u128 << 39));
        assert_eq!((pairs(0), pairs(1), pairs(2), pairs(3)), (0, 0, 1, 3));
    }

    #[test]
    fn tau_b_is_exact_from_counts_past_64_bits() {
        // Synthetic counts of 2^40 items (no array): every count is past u64::MAX.
        let total = pairs(1u64 << 40);
        let untied = |discordant| PairCounts {
            total,
            discordant,
            ..Default::default()
        };
        // Up to the rounding of scipy's c / sqrt(a) / sqrt(b).
        let close = |tau: f64, expected: f64| (tau - expected).abs() < 1e-15;
        assert!(close(untied(0).tau_b(), 1.0));
        assert!(close(untied(total).tau_b(), -1.0));
        assert!(close(untied(total / 4).tau_b(), 0.5));
        // Half the pairs tied in x, a quarter of the rest discordant: tau-b = (1/2 - 2/8) / sqrt(1/2).
        let tied = PairCounts {
            total,
            x_ties: total / 2,
            discordant: total / 8,
            ..Default::default()
        };
        assert!(close(tied.tau_b(), 0.25 / 0.5f64.sqrt()));
        assert!(PairCounts {
            total,
            x_ties: total,
            ..Default::default()
        }
        .tau_b()
        .is_nan());
    }

    #[test]
    fn inversion_count_matches_brute_force() {
        let mut seed = 11;
        for n in [0usize, 1, 5, 31, 32, 33, 100, 70_000] {
            let original: Vec<u64> = (0..n).map(|_| lcg(&mut seed) % 50).collect();
            let mut values = original.clone();
            let mut scratch = vec![0; n];
            let counted = sort_counting_inversions(&mut values, &mut scratch);
            assert!(values.windows(2).all(|w| w[0] <= w[1]));
            if n <= 100 {
                let brute: u128 = (0..n)
                    .flat_map(|i| ((i + 1)..n).map(move |j| (i, j)))
                    .filter(|&(i, j)| original[i] > original[j])
                    .count() as u128;
                assert_eq!(counted, brute);
            }
        }
    }
}
