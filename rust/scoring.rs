//! PACS, per-prompt z-scores, prompt conflict and per-prompt Kendall tau-b (SPEC section 2).

use crate::groups::{for_each_group_range, GroupOutputs};
use crate::kendall;
use crate::real::Real;

/// Added to the standard deviation before dividing, as in the paper.
pub const Z_EPSILON: f64 = 1e-8;
/// A prompt whose log-prob or reward standard deviation is below this is degenerate.
pub const DEGENERATE_STD: f64 = 1e-6;

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

fn mean_and_std<T: Real>(values: &[T]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = values.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
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
            let (mean_l, std_l) = mean_and_std(l);
            let (mean_r, std_r) = mean_and_std(r);
            let degenerate = std_l < DEGENERATE_STD || std_r < DEGENERATE_STD;
            let (scale_l, scale_r) = (1.0 / (std_l + Z_EPSILON), 1.0 / (std_r + Z_EPSILON));
            let mut abs_sum = 0.0;
            for (k, i) in ((start - base)..(end - base)).enumerate() {
                let z_l = (l[k].to_f64() - mean_l) * scale_l;
                let z_r = (r[k].to_f64() - mean_r) * scale_r;
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
    let zeros = |yes: bool, len: usize| if yes { vec![0.0; len] } else { Vec::new() };
    let mut s = Scores {
        z_logprob: zeros(wanted.z_scores, n),
        z_reward: zeros(wanted.z_scores, n),
        pacs: zeros(wanted.pacs, n),
        group_conflict: zeros(wanted.conflict, g),
        kendall_tau: zeros(wanted.kendall, g),
        degenerate: if wanted.conflict { vec![false; g] } else { Vec::new() },
    };
    let out = ScoreOutputs {
        z_logprob: wanted.z_scores.then_some(s.z_logprob.as_mut_slice()),
        z_reward: wanted.z_scores.then_some(s.z_reward.as_mut_slice()),
        pacs: wanted.pacs.then_some(s.pacs.as_mut_slice()),
        group_conflict: wanted.conflict.then_some(s.group_conflict.as_mut_slice()),
        kendall_tau: wanted.kendall.then_some(s.kendall_tau.as_mut_slice()),
        degenerate: wanted.conflict.then_some(s.degenerate.as_mut_slice()),
    };
    score_into(logprobs, rewards, offsets, out);
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
