//! PACS, per-prompt z-scores, prompt conflict and per-prompt Kendall tau-b.
//!
//! Per prompt: z = (v - mean) / (std + 1e-8) with the population std, PACS = z_r - z_l, conflict =
//! mean |PACS|; a prompt is degenerate (PACS and conflict 0) with fewer than two items or a log-prob
//! or reward spread below [`DEGENERATE_STD`] or [`DEGENERATE_RELATIVE_STD`].

use crate::buffers::zeroed;
use crate::groups::{for_each_group_range, GroupOutputs};
use crate::kendall;
use crate::real::Real;

/// Added to the standard deviation before dividing, as in the paper.
pub const Z_EPSILON: f64 = 1e-8;
/// A prompt whose log-prob or reward standard deviation is below this is degenerate.
pub const DEGENERATE_STD: f64 = 1e-6;
/// A prompt of `n` items whose log-prob or reward standard deviation is at most
/// `n * DEGENERATE_RELATIVE_STD * |mean|` is degenerate too, at any magnitude.
///
/// The first computed mean of `n` values is off by up to `(n + 1) / 2` ulps of their magnitude
/// (`n - 1` roundings of the sum, two of the scaling by `1 / n`), and a constant prompt's computed
/// standard deviation is exactly that error: a spread this small cannot be told from the rounding
/// of a constant prompt, and the margin keeps a constant prompt of values around 1e9 or more from
/// passing for one with spread. Below `1e-6 / (n * f64::EPSILON)` (5.6e8 for 8 items)
/// the bound is looser than [`DEGENERATE_STD`] and changes nothing.
pub const DEGENERATE_RELATIVE_STD: f64 = f64::EPSILON;

/// Which outputs [`score`] computes.
#[derive(Clone, Copy)]
pub struct Wanted {
    pub z_scores: bool,
    pub pacs: bool,
    pub conflict: bool,
    pub kendall: bool,
}

impl Wanted {
    pub const ALL: Wanted = Wanted {
        z_scores: true,
        pacs: true,
        conflict: true,
        kendall: true,
    };
    pub const PACS: Wanted = Wanted {
        z_scores: false,
        pacs: true,
        conflict: false,
        kendall: false,
    };
    pub const KENDALL: Wanted = Wanted {
        z_scores: false,
        pacs: false,
        conflict: false,
        kendall: true,
    };
}

/// The outputs of [`score`], owned; an output not wanted is empty.
pub struct Scores {
    pub z_logprob: Vec<f64>,
    pub z_reward: Vec<f64>,
    pub pacs: Vec<f64>,
    pub group_conflict: Vec<f64>,
    pub kendall_tau: Vec<f64>,
    pub degenerate: Vec<bool>,
}

impl Scores {
    /// Zeroed outputs for `n` items and `g` groups; the ones not `wanted` are left empty.
    pub fn zeroed(n: usize, g: usize, wanted: Wanted) -> Self {
        let zeros = |yes: bool, len: usize| if yes { zeroed(len) } else { Vec::new() };
        Scores {
            z_logprob: zeros(wanted.z_scores, n),
            z_reward: zeros(wanted.z_scores, n),
            pacs: zeros(wanted.pacs, n),
            group_conflict: zeros(wanted.conflict, g),
            kendall_tau: zeros(wanted.kendall, g),
            degenerate: if wanted.conflict { zeroed(g) } else { Vec::new() },
        }
    }

    /// Where [`score_into`] writes the `wanted` outputs (made by [`Scores::zeroed`] with the same `wanted`).
    pub fn outputs(&mut self, wanted: Wanted) -> ScoreOutputs<'_> {
        ScoreOutputs {
            z_logprob: wanted.z_scores.then_some(self.z_logprob.as_mut_slice()),
            z_reward: wanted.z_scores.then_some(self.z_reward.as_mut_slice()),
            pacs: wanted.pacs.then_some(self.pacs.as_mut_slice()),
            group_conflict: wanted.conflict.then_some(self.group_conflict.as_mut_slice()),
            kendall_tau: wanted.kendall.then_some(self.kendall_tau.as_mut_slice()),
            degenerate: wanted.conflict.then_some(self.degenerate.as_mut_slice()),
        }
    }
}

/// Where [`score_into`] writes: `n` items and `g` groups; a `None` output is not computed.
///
/// Item outputs must hold `n` values and group outputs `g`; outputs must start zeroed (a group of
/// fewer than two items leaves its z-scores, PACS and conflict at 0).
#[derive(Default)]
pub struct ScoreOutputs<'a> {
    pub z_logprob: Option<&'a mut [f64]>,
    pub z_reward: Option<&'a mut [f64]>,
    pub pacs: Option<&'a mut [f64]>,
    pub group_conflict: Option<&'a mut [f64]>,
    pub kendall_tau: Option<&'a mut [f64]>,
    pub degenerate: Option<&'a mut [bool]>,
}

fn split_opt<T>(slice: Option<&mut [T]>, at: usize) -> (Option<&mut [T]>, Option<&mut [T]>) {
    match slice {
        Some(s) => {
            let (a, b) = s.split_at_mut(at);
            (Some(a), Some(b))
        }
        None => (None, None),
    }
}

impl GroupOutputs for ScoreOutputs<'_> {
    fn split_at(self, items: usize, groups: usize) -> (Self, Self) {
        let (zl_a, zl_b) = split_opt(self.z_logprob, items);
        let (zr_a, zr_b) = split_opt(self.z_reward, items);
        let (p_a, p_b) = split_opt(self.pacs, items);
        let (c_a, c_b) = split_opt(self.group_conflict, groups);
        let (t_a, t_b) = split_opt(self.kendall_tau, groups);
        let (d_a, d_b) = split_opt(self.degenerate, groups);
        (
            ScoreOutputs {
                z_logprob: zl_a,
                z_reward: zr_a,
                pacs: p_a,
                group_conflict: c_a,
                kendall_tau: t_a,
                degenerate: d_a,
            },
            ScoreOutputs {
                z_logprob: zl_b,
                z_reward: zr_b,
                pacs: p_b,
                group_conflict: c_b,
                kendall_tau: t_b,
                degenerate: d_b,
            },
        )
    }
}

/// Mean and population standard deviation of one group, both multiplied by `scale`: 1, or for
/// values too large to sum or square a power of two (so scaling is exact) that brings the largest
/// magnitude to [2^400, 2^401), where sums and squares of any number of values stay finite.
struct Moments {
    mean: f64,
    std: f64,
    scale: f64,
}

impl Moments {
    #[inline(always)]
    fn of<T: Real>(values: &[T]) -> Moments {
        Moments::scaled_by(values, 1.0).unwrap_or_else(|| Moments::of_large(values))
    }

    /// The sum or a square overflowed, so the largest magnitude is a normal float above 2^150:
    /// 2^(400 - its exponent) is a normal float too.
    #[cold]
    #[inline(never)]
    fn of_large<T: Real>(values: &[T]) -> Moments {
        let max_abs = values.iter().fold(0.0f64, |max_abs, v| max_abs.max(v.to_f64().abs()));
        let exponent = ((max_abs.to_bits() >> 52) & 0x7ff) as i64 - 1023;
        Moments::scaled_by(values, f64::from_bits(((1023 + 400 - exponent) as u64) << 52))
            .expect("no overflow below 2^401")
    }

    /// Two passes (mean, then squared deviations; one-pass E[x^2] - E[x]^2 would cancel badly),
    /// and the mean corrected by the mean deviation, so a constant group gets its exact value (and
    /// z-scores of exactly 0). The standard deviation keeps the first mean: the correction would
    /// change it by a relative (correction / std)^2 / 2, nothing outside degenerate groups, at the
    /// price of a longer dependency chain. None when the sum or a square overflows.
    #[inline(always)]
    fn scaled_by<T: Real>(values: &[T], scale: f64) -> Option<Moments> {
        // Multiplying by 1 / n keeps divisions off the path from the sums to the z-scores; the
        // corrected mean of a constant group is still exact (the error is far below half an ulp).
        let inverse_n = 1.0 / values.len() as f64;
        let first_mean = values.iter().map(|v| v.to_f64() * scale).sum::<f64>() * inverse_n;
        let (deviations, squares) = values.iter().fold((0.0f64, 0.0f64), |(deviations, squares), v| {
            let deviation = v.to_f64() * scale - first_mean;
            (deviations + deviation, squares + deviation * deviation)
        });
        // A finite sum of squares means that no deviation overflowed, and so neither did the sum.
        squares.is_finite().then(|| Moments {
            mean: first_mean + deviations * inverse_n,
            std: (squares * inverse_n).sqrt(),
            scale,
        })
    }

    /// The degenerate test: [`DEGENERATE_STD`], or [`DEGENERATE_RELATIVE_STD`] for `n` items.
    fn is_degenerate(&self, n: usize) -> bool {
        self.std < DEGENERATE_STD * self.scale || self.std <= n as f64 * DEGENERATE_RELATIVE_STD * self.mean.abs()
    }

    /// z = (value - mean) / (std + Z_EPSILON), in scaled units.
    fn z_scorer(&self) -> impl Fn(f64) -> f64 {
        let (scale, mean, inverse) = (self.scale, self.mean, 1.0 / (self.std + Z_EPSILON * self.scale));
        move |value| (value * scale - mean) * inverse
    }
}

/// Scores every group of `offsets` (validated, length g + 1, ending at `logprobs.len()`) into `out`.
/// Call inside the engine's pool.
pub fn score_into<T: Real>(logprobs: &[T], rewards: &[T], offsets: &[i64], out: ScoreOutputs<'_>) {
    if offsets.len() < 2 {
        return;
    }
    let needs_moments = out.z_logprob.is_some()
        || out.z_reward.is_some()
        || out.pacs.is_some()
        || out.group_conflict.is_some()
        || out.degenerate.is_some();
    for_each_group_range(offsets, out, &|range: &[i64], mut out: ScoreOutputs| {
        let base = range[0] as usize;
        for (group, bounds) in range.windows(2).enumerate() {
            let (start, end) = (bounds[0] as usize, bounds[1] as usize);
            let (l, r) = (&logprobs[start..end], &rewards[start..end]);
            if let Some(tau) = out.kendall_tau.as_deref_mut() {
                tau[group] = kendall::tau_b(l, r);
            }
            if !needs_moments {
                continue;
            }
            if l.len() < 2 {
                // Outputs are already 0: a lone completion has z = 0 and no conflict.
                if let Some(d) = out.degenerate.as_deref_mut() {
                    d[group] = true;
                }
                continue;
            }
            let (moments_l, moments_r) = (Moments::of(l), Moments::of(r));
            let degenerate = moments_l.is_degenerate(l.len()) || moments_r.is_degenerate(r.len());
            let (z_of_l, z_of_r) = (moments_l.z_scorer(), moments_r.z_scorer());
            let mut abs_sum = 0.0;
            for (k, i) in ((start - base)..(end - base)).enumerate() {
                let z_l = z_of_l(l[k].to_f64());
                let z_r = z_of_r(r[k].to_f64());
                let p = if degenerate { 0.0 } else { z_r - z_l };
                abs_sum += p.abs();
                if let Some(zl) = out.z_logprob.as_deref_mut() {
                    zl[i] = z_l;
                }
                if let Some(zr) = out.z_reward.as_deref_mut() {
                    zr[i] = z_r;
                }
                if let Some(pacs) = out.pacs.as_deref_mut() {
                    pacs[i] = p;
                }
            }
            if let Some(c) = out.group_conflict.as_deref_mut() {
                c[group] = abs_sum / l.len() as f64;
            }
            if let Some(d) = out.degenerate.as_deref_mut() {
                d[group] = degenerate;
            }
        }
    });
}

/// The `wanted` outputs of [`score_into`], in freshly allocated vectors.
pub fn score<T: Real>(logprobs: &[T], rewards: &[T], offsets: &[i64], wanted: Wanted) -> Scores {
    let (n, g) = (logprobs.len(), offsets.len().saturating_sub(1));
    let mut s = Scores::zeroed(n, g, wanted);
    score_into(logprobs, rewards, offsets, s.outputs(wanted));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_items_give_plus_minus_two() {
        let s = score(&[-3.0f64, -1.0], &[1.0, 0.0], &[0, 2], Wanted::ALL);
        assert!((s.pacs[0] - 2.0).abs() < 1e-7 && (s.pacs[1] + 2.0).abs() < 1e-7);
        assert!((s.group_conflict[0] - 2.0).abs() < 1e-7);
        assert_eq!(s.kendall_tau[0], -1.0);
        assert!(!s.degenerate[0]);
    }

    #[test]
    fn degenerate_groups_score_zero() {
        // Sizes 0, 1, constant rewards, then a proper group.
        let l = [1.0f32, 1.0, 2.0, 3.0, 0.0, 1.0];
        let r = [5.0f32, 2.0, 2.0, 2.0, 0.0, 1.0];
        let s = score(&l, &r, &[0, 0, 1, 4, 6], Wanted::ALL);
        assert_eq!(s.degenerate, vec![true, true, true, false]);
        assert!(s.pacs[..4].iter().all(|&p| p == 0.0));
        assert_eq!(&s.group_conflict[..3], &[0.0, 0.0, 0.0]);
        assert!(s.kendall_tau[0].is_nan() && s.kendall_tau[1].is_nan() && s.kendall_tau[2].is_nan());
        assert_eq!(s.kendall_tau[3], 1.0);
    }

    #[test]
    fn constant_groups_are_degenerate_with_zero_z_at_any_magnitude() {
        for exponent in [0, 9, 12, 15, 100, 300, 307] {
            for n in 2..=20usize {
                let value = -1.2345678901234567 * 10f64.powi(exponent);
                let r: Vec<f64> = (0..n).map(|i| i as f64).collect();
                let s = score(&vec![value; n], &r, &[0, n as i64], Wanted::ALL);
                assert!(s.degenerate[0], "{value} x {n}");
                assert!(
                    s.z_logprob.iter().all(|&z| z == 0.0),
                    "{value} x {n}: {:?}",
                    s.z_logprob
                );
            }
        }
    }

    #[test]
    fn extreme_magnitudes_give_the_z_scores_of_the_scaled_values() {
        // Unscaled, the sum of the second group and the squares of the first overflow.
        let l = [1.7e308, -1.7e308, 1e308, 0.0, 1.7e308, 1.75e308, 1.79e308, 1.72e308];
        let r = [1.0, 2.0, 3.0, 4.0, 4.0, 1.0, 3.0, 2.0];
        let s = score(&l, &r, &[0, 4, 8], Wanted::ALL);
        for group in l.chunks(4).enumerate() {
            let (g, values) = group;
            let unit: Vec<f64> = values.iter().map(|v| v / 1.79e308).collect();
            let mean = unit.iter().sum::<f64>() / 4.0;
            let std = (unit.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
            for (k, u) in unit.iter().enumerate() {
                let z = s.z_logprob[4 * g + k];
                assert!(
                    (z - (u - mean) / std).abs() < 1e-12,
                    "group {g}: {z} vs {}",
                    (u - mean) / std
                );
            }
            assert!(!s.degenerate[g] && s.group_conflict[g].is_finite());
        }
    }

    #[test]
    fn mean_square_pacs_is_two_minus_two_pearson() {
        let l: Vec<f64> = (0..8).map(|i| ((i * 37) % 11) as f64 * 0.3).collect();
        let r: Vec<f64> = (0..8).map(|i| ((i * 17) % 7) as f64 - 2.0).collect();
        let s = score(&l, &r, &[0, 8], Wanted::ALL);
        let mean_sq = s.pacs.iter().map(|p| p * p).sum::<f64>() / 8.0;
        let rho = s.z_logprob.iter().zip(&s.z_reward).map(|(a, b)| a * b).sum::<f64>() / 8.0;
        assert!((mean_sq - (2.0 - 2.0 * rho)).abs() < 1e-6);
    }

    #[test]
    fn parallel_split_matches_sequential() {
        let sizes: Vec<usize> = (0..20_000).map(|i| (i * 7919) % 13).collect();
        let mut offsets = vec![0i64];
        for s in &sizes {
            offsets.push(offsets.last().unwrap() + *s as i64);
        }
        let n = *offsets.last().unwrap() as usize;
        let l: Vec<f64> = (0..n).map(|i| ((i * 31) % 97) as f64).collect();
        let r: Vec<f64> = (0..n).map(|i| ((i * 53) % 89) as f64).collect();
        let all = score(&l, &r, &offsets, Wanted::ALL);
        for (g, w) in offsets.windows(2).enumerate().step_by(997) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            let single = score(&l[a..b], &r[a..b], &[0, (b - a) as i64], Wanted::ALL);
            assert_eq!(single.pacs, all.pacs[a..b].to_vec());
            assert_eq!(single.group_conflict[0], all.group_conflict[g]);
            assert_eq!(single.kendall_tau[0].to_bits(), all.kendall_tau[g].to_bits());
        }
        let mut pacs_only = vec![0.0; n];
        let out = ScoreOutputs {
            pacs: Some(&mut pacs_only),
            ..Default::default()
        };
        score_into(&l, &r, &offsets, out);
        assert_eq!(pacs_only, all.pacs);
    }
}
