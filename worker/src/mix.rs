//! Weighted mixing: each row of a batch draws its source at the phase's weights
//! (`data: [{source: dreams, weight: 0.5}, ...]`), from a generator seeded by the phase's
//! seed, its step's name and the optimizer step, so a run (and a resumed run) draws the
//! same sources, and two phases reading one source draw different parts of it
//! ([`crate::rng::draw_seed`]). Text phases (1 and 3b) draw windows of each source's token stream
//! ([`text_batch`]).

use tch::{Device, Tensor};

use outloud_core::task_spec::DataInput;

use crate::error::WorkerError;
use crate::fit::Consumed;
use crate::ledger::{self, Ledger, Seen};
use crate::rng::Rng;

/// The weights to draw a phase's sources at: the spec's (a source without one counts
/// 1), or with none given at all, the sources' sizes (as if they were one).
fn weights(given: &[Option<f64>], sizes: &[f64]) -> Vec<f64> {
    if given.iter().all(Option::is_none) {
        return sizes.to_vec();
    }
    given.iter().map(|w| w.unwrap_or(1.0)).collect()
}

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

    /// A phase's mixture: the weights its spec gives (a source without one counts 1), or
    /// with none given at all, the sources' sizes.
    pub fn of(given: &[Option<f64>], sizes: &[f64]) -> Self {
        Self::new(&weights(given, sizes))
    }

    /// The mixture of a text phase's sources, a stream each, in order.
    pub fn of_streams(sources: &[DataInput], streams: &[TextStream]) -> Self {
        let given: Vec<Option<f64>> = sources.iter().map(|d| d.weight).collect();
        let sizes: Vec<f64> = streams.iter().map(|s| s.tokens() as f64).collect();
        Self::of(&given, &sizes)
    }

    /// Each source's share of draws.
    pub fn shares(&self) -> Vec<f64> {
        let mut before = 0.0;
        self.cumulative
            .iter()
            .map(|&c| {
                let share = c - before;
                before = c;
                share
            })
            .collect()
    }

    /// The source the next draw of `rng` picks.
    pub fn pick(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.cumulative.len().saturating_sub(1))
    }
}

/// One source's text as one token stream, and how many words a token stands for.
pub struct TextStream {
    tokens: Tensor,
    words_per_token: f64,
    /// Captions the model synthesized (counted apart in the word ledger).
    synthetic: bool,
    /// The source's number in the word ledger (real sources only).
    counted: Option<usize>,
}

impl TextStream {
    /// Tokens in the stream: its size, for drawing by size.
    fn tokens(&self) -> usize {
        self.tokens.size()[0] as usize
    }

    /// `docs` of source `name` as `tokens` (their ids, [`crate::token_shards`]);
    /// refused when too short for one window.
    pub fn new(
        tokens: Vec<i64>,
        name: &str,
        docs: &[String],
        context: i64,
        synthetic: bool,
    ) -> Result<Self, WorkerError> {
        let words: usize = docs.iter().map(|d| d.split_whitespace().count()).sum();
        if (tokens.len() as i64) < 2 * (context + 1) {
            return Err(WorkerError::Data(format!(
                "source `{name}` has {} tokens, too little text for a context of {context}",
                tokens.len()
            )));
        }
        Ok(Self {
            words_per_token: words as f64 / tokens.len() as f64,
            tokens: Tensor::from_slice(&tokens),
            synthetic,
            counted: None,
        })
    }

    /// Counts what batches read of this real source in `ledger`, under `source`'s key.
    pub fn counted_in(mut self, ledger: &mut Ledger, source: &DataInput) -> Self {
        if !self.synthetic {
            let key = ledger::key(source, "tokens");
            self.counted = Some(ledger.register(&key, self.tokens() as u64));
        }
        self
    }
}

/// A text batch: inputs and targets (B, T), and what it holds.
pub struct TextBatch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub consumed: Consumed,
}

/// The batch of `step`: each of `rows` rows a random window of the source the mixture
/// draws for it.
pub fn text_batch(
    streams: &[TextStream],
    mixture: &Mixture,
    seed: u64,
    step: u64,
    rows: usize,
    context: i64,
    device: Device,
) -> TextBatch {
    let mut rng = Rng::for_stream(seed, step);
    let mut windows = Vec::with_capacity(rows);
    let (mut words, mut synthetic) = (0.0, 0.0);
    let mut seen = Vec::new();
    for _ in 0..rows {
        let source = &streams[mixture.pick(&mut rng)];
        let span = source.tokens.size()[0] - context - 1;
        let start = rng.below(span as u64) as i64;
        windows.push(source.tokens.narrow(0, start, context + 1));
        if let Some(counted) = source.counted {
            seen.push(Seen {
                source: counted,
                start: start as u64,
                len: context as u64 + 1,
                words_per_unit: source.words_per_token,
            });
        }
        let held = source.words_per_token * context as f64;
        words += held;
        if source.synthetic {
            synthetic += held;
        }
    }
    let windows = Tensor::stack(&windows, 0).to_device(device);
    TextBatch {
        inputs: windows.narrow(1, 0, context),
        targets: windows.narrow(1, 1, context),
        consumed: Consumed {
            tokens: (rows as i64 * context) as u64,
            words: words.round() as u64,
            synthetic_words: synthetic.round() as u64,
            seen,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_batches_draw_sources_at_their_weights_and_repeat_by_seed() {
        // Two sources told apart by their tokens: all 1s and all 2s.
        let streams = [1i64, 2].map(|id| TextStream {
            tokens: Tensor::from_slice(&vec![id; 64]),
            words_per_token: 1.0,
            synthetic: id == 2,
            counted: (id == 1).then_some(0),
        });
        let mixture = Mixture::new(&[0.25, 0.75]);
        let draw = |seed| text_batch(&streams, &mixture, seed, 3, 4_000, 8, Device::Cpu);
        let batch = draw(5);
        let x = batch.inputs;
        assert!(
            x.equal(&draw(5).inputs),
            "the same seed and step draw the same batch"
        );
        let first: Vec<i64> = Vec::try_from(x.select(1, 0)).unwrap();
        let share = first.iter().filter(|&&t| t == 1).count() as f64 / first.len() as f64;
        let sd = (0.25f64 * 0.75 / 4_000.0).sqrt();
        assert!((share - 0.25).abs() < 4.0 * sd, "{share}");
        // The ledger: every row holds 8 words; the synthetic rows are counted apart.
        assert_eq!(batch.consumed.words, 4_000 * 8);
        let synthetic_rows = first.iter().filter(|&&t| t == 2).count() as u64;
        assert_eq!(batch.consumed.synthetic_words, synthetic_rows * 8);
        // The ledger hears of the real rows only, each a window of 9 tokens.
        assert_eq!(batch.consumed.seen.len() as u64, 4_000 - synthetic_rows);
        assert!(
            batch
                .consumed
                .seen
                .iter()
                .all(|s| s.len == 9 && s.start + 9 <= 64)
        );
    }

    #[test]
    fn two_steps_reading_one_source_draw_different_windows() {
        let streams = [TextStream {
            tokens: Tensor::arange(10_000, (tch::Kind::Int64, Device::Cpu)),
            words_per_token: 1.0,
            synthetic: false,
            counted: Some(0),
        }];
        let one = Mixture::new(&[1.0]);
        let starts = |step_name: &str| -> Vec<u64> {
            let seed = crate::rng::draw_seed(0, step_name);
            let batch = text_batch(&streams, &one, seed, 0, 32, 8, Device::Cpu);
            batch.consumed.seen.iter().map(|s| s.start).collect()
        };
        assert_eq!(starts("language"), starts("language"));
        assert_ne!(starts("language"), starts("control"));
        assert_ne!(starts("seed1/control"), starts("seed2/control"));
    }

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
        assert_eq!(weights(&[None, None], &[10.0, 30.0]), [10.0, 30.0]);
        assert_eq!(weights(&[Some(0.2), None], &[10.0, 30.0]), [0.2, 1.0]);
        let shares = Mixture::of(&[None, None], &[10.0, 30.0]).shares();
        assert!((shares[0] - 0.25).abs() < 1e-12 && (shares[1] - 0.75).abs() < 1e-12);
    }
}
