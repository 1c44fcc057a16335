//! Weighted mixing: each row of a batch draws its source at the phase's weights
//! (`data: [{source: dreams, weight: 0.5}, ...]`), from a generator seeded by the phase's
//! seed and the step, so a run (and a resumed run) draws the same sources.

use crate::rng::Rng;

/// Sources by their share of draws.
#[derive(Debug, Clone)]
pub struct Mixture {
    /// Running totals of the normalised weights; the last is 1.
    cumulative: Vec<f64>,
}

impl Mixture {
    /// Weights need not sum to 1; each must be positive (the spec checks it).
    pub fn new(weights: &[f64]) -> Self {
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                running += w / total;
                running
            })
            .collect();
        Self { cumulative }
    }

    /// The source the next draw of `rng` picks.
    pub fn pick(&self, rng: &mut Rng) -> usize {
        // 53 random bits make a uniform number in [0, 1).
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        self.cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.cumulative.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_weights_and_repeat_by_seed() {
        let mixture = Mixture::new(&[0.5, 0.3, 0.2]);
        let draws = |seed: u64| -> Vec<usize> {
            (0..20_000)
                .map(|step| mixture.pick(&mut Rng::for_stream(seed, step)))
                .collect()
        };
        let first = draws(7);
        assert_eq!(first, draws(7), "the same seed draws the same sources");
        assert_ne!(first, draws(8));
        for (source, weight) in [(0, 0.5), (1, 0.3), (2, 0.2)] {
            let share = first.iter().filter(|&&s| s == source).count() as f64 / 20_000.0;
            // Four standard errors of a binomial share at n = 20,000.
            let sd = (weight * (1.0 - weight) / 20_000.0f64).sqrt();
            assert!(
                (share - weight).abs() < 4.0 * sd,
                "source {source}: {share} vs {weight}"
            );
        }
        assert!(Mixture::new(&[2.0]).pick(&mut Rng::new(1)) == 0);
    }
}
