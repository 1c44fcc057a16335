//! Decoding: batched generation with a key-value cache; greedy, temperature and top-p
//! sampling; each row stops at end-of-text or after `max_new_tokens`.
//!
//! Prompts of different lengths are left-padded. A boolean mask keeps padding out of
//! every real position's attention and positions count real tokens only, so a prompt
//! decodes to the same tokens alone or in a batch. Sampling draws from torch's
//! generator, or, given a stream per row ([`generate_scored`]), from that row's own
//! numbers: then a row samples the same tokens whatever batch it is decoded in.

use tch::{Device, Kind, Tensor};

use crate::error::WorkerError;
use crate::model::{Attend, Gpt, KvCache};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    pub top_p: f64,
}

impl Sampling {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
        }
    }
}

/// Left-padded prompts: ids (B, L), and which of them are real (B, L).
struct Batch {
    ids: Tensor,
    real: Tensor,
}

/// Positions count real tokens: a padded prompt sees the positions it would alone.
fn positions_of(real: &Tensor) -> Tensor {
    (real.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0)
}

/// The prefill's input embeddings and which positions are real: visual tokens (all
/// real) when there is a `prefix`, then the left-padded prompts.
fn prefill_inputs(model: &Gpt, prefix: Option<&Tensor>, batch: &Batch) -> (Tensor, Tensor) {
    let text = model.embed(&batch.ids);
    match prefix {
        Some(visual) => {
            let seen = visual.size();
            let real = Tensor::ones([seen[0], seen[1]], (Kind::Bool, visual.device()));
            (
                Tensor::cat(&[visual, &text], 1),
                Tensor::cat(&[&real, &batch.real], 1),
            )
        }
        None => (text, batch.real.shallow_clone()),
    }
}

fn left_pad(prompts: &[Vec<i64>], pad: i64, device: Device) -> Batch {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * longest);
    let mut real = Vec::with_capacity(prompts.len() * longest);
    for prompt in prompts {
        let padding = longest - prompt.len();
        ids.extend(std::iter::repeat_n(pad, padding).chain(prompt.iter().copied()));
        real.extend(
            std::iter::repeat_n(false, padding).chain(std::iter::repeat_n(true, prompt.len())),
        );
    }
    let shape = [prompts.len() as i64, longest as i64];
    Batch {
        ids: Tensor::from_slice(&ids).view(shape).to_device(device),
        real: Tensor::from_slice(&real).view(shape).to_device(device),
    }
}

/// (B, 1, T, T): causal, real keys only; each position may also see itself, so rows of
/// padding stay finite (a row with nothing to attend would be NaN).
fn prefill_mask(real: &Tensor) -> Tensor {
    let t = real.size()[1];
    let causal = Tensor::ones([t, t], (Kind::Bool, real.device())).tril(0);
    let itself = Tensor::eye(t, (Kind::Bool, real.device()));
    let keys = real.unsqueeze(1).unsqueeze(1); // (B, 1, 1, T)
    causal.logical_and(&keys).logical_or(&itself)
}

/// The next token of each row. `uniforms` (B): each row's own number in [0, 1) for
/// this step, else torch's generator draws.
fn pick(logits: &Tensor, sampling: &Sampling, uniforms: Option<&Tensor>) -> Tensor {
    if sampling.temperature <= 0.0 {
        return logits.argmax(-1, false);
    }
    let probs = (logits.to_kind(Kind::Float) / sampling.temperature).softmax(-1, Kind::Float);
    let (sorted, order) = probs.sort(-1, true);
    // Drop tokens once the mass before them already reaches top_p.
    let before = sorted.cumsum(-1, Kind::Float) - &sorted;
    let kept = sorted.masked_fill(&before.gt(sampling.top_p), 0.0);
    // An index into the sorted order.
    let choice = match uniforms {
        None => kept.multinomial(1, false),
        Some(u) => {
            // The inverse of the kept tokens' cumulative distribution at u.
            let total = kept.sum_dim_intlist(-1, true, Kind::Float);
            let below = (kept.cumsum(-1, Kind::Float) / total).lt_tensor(&u.unsqueeze(-1));
            let last = kept.size()[1] - 1;
            below.sum_dim_intlist(-1, true, Kind::Int64).clamp_max(last)
        }
    };
    order.gather(-1, &choice, false).squeeze_dim(-1)
}

/// Each row's number in [0, 1) for decoding step `step`, from its own stream.
fn uniforms(streams: &[u64], step: usize, device: Device) -> Tensor {
    let numbers: Vec<f32> = streams
        .iter()
        .map(|&s| Rng::for_stream(s, step as u64).unit() as f32)
        .collect();
    Tensor::from_slice(&numbers).to_device(device)
}

fn check_room(
    model: &Gpt,
    prefix: Option<&Tensor>,
    prompts: &[Vec<i64>],
    sampling: &Sampling,
) -> Result<(), WorkerError> {
    let seen = prefix.map(|p| p.size()[1] as usize).unwrap_or(0);
    let longest = seen + prompts.iter().map(Vec::len).max().unwrap_or(0);
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(WorkerError::Config(
            "every prompt needs at least one token".into(),
        ));
    }
    if longest + sampling.max_new_tokens > model.config.context as usize {
        return Err(WorkerError::Config(format!(
            "a {longest}-token prompt plus {} new tokens exceeds the context of {}",
            sampling.max_new_tokens, model.config.context
        )));
    }
    Ok(())
}

/// Whether prompts differ in length, so that the batch carries padding.
fn is_padded(prompts: &[Vec<i64>]) -> bool {
    prompts.windows(2).any(|w| w[0].len() != w[1].len())
}

/// Appends one step's tokens to unfinished rows; true when every row has stopped.
fn collect(next: &Tensor, stop: i64, out: &mut [Vec<i64>], done: &mut [bool]) -> bool {
    let next: Vec<i64> = Vec::try_from(next.to_device(Device::Cpu)).expect("token ids are int64");
    for ((row, token), finished) in out.iter_mut().zip(next).zip(done.iter_mut()) {
        if !*finished {
            if token == stop {
                *finished = true;
            } else {
                row.push(token);
            }
        }
    }
    done.iter().all(|d| *d)
}

/// A decoded continuation and how likely the model found it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub tokens: Vec<i64>,
    /// Summed log-probability (under the model, before temperature or top-p) of every
    /// token picked, the stop token included when it was picked.
    pub logprob: f64,
    pub picked: usize,
}

impl Decoded {
    /// Mean log-probability per picked token.
    pub fn mean_logprob(&self) -> f64 {
        self.logprob / self.picked.max(1) as f64
    }
}

/// New tokens for every prompt, decoded with the KV cache. `prefix` (B, N, C): visual
/// tokens each prompt follows, for captions and answers about pictures.
pub fn generate(
    model: &Gpt,
    prefix: Option<&Tensor>,
    prompts: &[Vec<i64>],
    sampling: &Sampling,
    stop: i64,
) -> Result<Vec<Vec<i64>>, WorkerError> {
    let decoded = decode(model, prefix, prompts, sampling, stop, None, false)?;
    Ok(decoded.into_iter().map(|d| d.tokens).collect())
}

/// [`generate`], with each continuation's log-probability (one more softmax and a
/// device read a step, which plain decoding does not pay for). Row `r` samples from
/// its own random stream `streams[r]`, so it decodes the same tokens in any batch.
pub fn generate_scored(
    model: &Gpt,
    prefix: Option<&Tensor>,
    prompts: &[Vec<i64>],
    sampling: &Sampling,
    stop: i64,
    streams: &[u64],
) -> Result<Vec<Decoded>, WorkerError> {
    if streams.len() != prompts.len() {
        return Err(WorkerError::Config(format!(
            "{} random streams for {} prompts",
            streams.len(),
            prompts.len()
        )));
    }
    decode(model, prefix, prompts, sampling, stop, Some(streams), true)
}

fn decode(
    model: &Gpt,
    prefix: Option<&Tensor>,
    prompts: &[Vec<i64>],
    sampling: &Sampling,
    stop: i64,
    streams: Option<&[u64]>,
    scored: bool,
) -> Result<Vec<Decoded>, WorkerError> {
    check_room(model, prefix, prompts, sampling)?;
    tch::no_grad(|| {
        let batch = left_pad(prompts, stop, model.device());
        let (x, mut real) = prefill_inputs(model, prefix, &batch);
        let positions = positions_of(&real);
        let mut cache = KvCache::new(model.config.n_layers);
        // Without padding plain causal attention does, on the fast kernels.
        let padded = is_padded(prompts);
        let mask = padded.then(|| prefill_mask(&real));
        let attend = mask.as_ref().map_or(Attend::Causal, Attend::Mask);
        let logits = model.forward_embeddings(&x, &positions, attend, Some(&mut cache));
        let mut last = logits.select(1, -1); // (B, vocab)
        let mut position = positions.select(1, -1); // (B)
        let (mut out, mut done) = (vec![Vec::new(); prompts.len()], vec![false; prompts.len()]);
        let mut scores = vec![(0.0, 0); prompts.len()];
        for step in 0..sampling.max_new_tokens {
            let sampled = streams.filter(|_| sampling.temperature > 0.0);
            let drawn = sampled.map(|s| uniforms(s, step, model.device()));
            let next = pick(&last, sampling, drawn.as_ref());
            if scored {
                score(&last, &next, &done, &mut scores);
            }
            if collect(&next, stop, &mut out, &mut done) {
                break;
            }
            // One new position per row: it sees every real past position and itself.
            position += 1;
            let mask = padded.then(|| {
                real = Tensor::cat(&[&real, &real.ones_like().narrow(1, 0, 1)], 1);
                real.unsqueeze(1).unsqueeze(1) // (B, 1, 1, S)
            });
            let attend = mask.as_ref().map_or(Attend::Everything, Attend::Mask);
            let logits = model.forward_with(
                &next.unsqueeze(1),
                &position.unsqueeze(1),
                attend,
                Some(&mut cache),
            );
            last = logits.select(1, 0);
        }
        Ok(out
            .into_iter()
            .zip(scores)
            .map(|(tokens, (logprob, picked))| Decoded {
                tokens,
                logprob,
                picked,
            })
            .collect())
    })
}

/// Adds the log-probability of each unfinished row's picked token to its score.
fn score(logits: &Tensor, picked: &Tensor, done: &[bool], scores: &mut [(f64, usize)]) {
    let logprobs = logits
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float)
        .gather(-1, &picked.unsqueeze(-1), false)
        .squeeze_dim(-1)
        .to_device(Device::Cpu);
    let logprobs: Vec<f32> = Vec::try_from(logprobs).expect("log-probabilities are f32");
    for ((score, lp), finished) in scores.iter_mut().zip(logprobs).zip(done) {
        if !*finished {
            score.0 += f64::from(lp);
            score.1 += 1;
        }
    }
}

/// The same decoding without a cache: every step recomputes the whole sequence. The
/// reference the cache must match, and the baseline it is benchmarked against.
pub fn generate_without_cache(
    model: &Gpt,
    prefix: Option<&Tensor>,
    prompts: &[Vec<i64>],
    sampling: &Sampling,
    stop: i64,
) -> Result<Vec<Vec<i64>>, WorkerError> {
    check_room(model, prefix, prompts, sampling)?;
    tch::no_grad(|| {
        let batch = left_pad(prompts, stop, model.device());
        let (mut x, mut real) = prefill_inputs(model, prefix, &batch);
        let padded = is_padded(prompts);
        let (mut out, mut done) = (vec![Vec::new(); prompts.len()], vec![false; prompts.len()]);
        for _ in 0..sampling.max_new_tokens {
            let mask = padded.then(|| prefill_mask(&real));
            let attend = mask.as_ref().map_or(Attend::Causal, Attend::Mask);
            let logits = model.forward_embeddings(&x, &positions_of(&real), attend, None);
            let next = pick(&logits.select(1, -1), sampling, None);
            if collect(&next, stop, &mut out, &mut done) {
                break;
            }
            x = Tensor::cat(&[&x, &model.embed(&next.unsqueeze(1))], 1);
            real = Tensor::cat(&[&real, &real.ones_like().narrow(1, 0, 1)], 1);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    fn model(vs: &nn::VarStore) -> Gpt {
        tch::manual_seed(5);
        let config = crate::model::test_config(48);
        Gpt::new(&vs.root(), config)
    }

    fn prompts() -> Vec<Vec<i64>> {
        vec![vec![5, 17, 42, 8, 99, 3], vec![250, 12], vec![7, 7, 7, 64]]
    }

    #[test]
    fn cached_greedy_decoding_gives_exactly_the_tokens_of_recomputation() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model(&vs);
        let sampling = Sampling::greedy(32);
        let cached = generate(&model, None, &prompts(), &sampling, 299).unwrap();
        let recomputed = generate_without_cache(&model, None, &prompts(), &sampling, 299).unwrap();
        assert_eq!(cached, recomputed);
        assert!(
            cached.iter().all(|row| row.len() == 32),
            "random weights rarely say stop: {cached:?}"
        );
    }

    #[test]
    fn a_prompt_decodes_the_same_alone_and_in_a_padded_batch() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model(&vs);
        let sampling = Sampling::greedy(16);
        let together = generate(&model, None, &prompts(), &sampling, 299).unwrap();
        for (i, prompt) in prompts().into_iter().enumerate() {
            let alone = generate(&model, None, &[prompt], &sampling, 299).unwrap();
            assert_eq!(alone[0], together[i], "prompt {i}");
        }
    }

    #[test]
    fn sampling_stops_at_end_of_text_and_respects_the_context() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model(&vs);
        let hot = Sampling {
            max_new_tokens: 40,
            temperature: 1.0,
            top_p: 0.9,
        };
        let rows = generate(&model, None, &prompts(), &hot, 299).unwrap();
        assert!(rows.iter().all(|r| r.len() <= 40 && !r.contains(&299)));
        let too_long = Sampling::greedy(45);
        assert!(generate(&model, None, &prompts(), &too_long, 299).is_err());
    }

    #[test]
    fn a_row_with_its_own_stream_samples_the_same_in_any_batch() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = model(&vs);
        let hot = Sampling {
            max_new_tokens: 24,
            temperature: 1.0,
            top_p: 0.9,
        };
        let tokens = |prompts: &[Vec<i64>], streams: &[u64]| -> Vec<Vec<i64>> {
            let decoded = generate_scored(&model, None, prompts, &hot, 299, streams).unwrap();
            decoded.into_iter().map(|d| d.tokens).collect()
        };
        let same_length = vec![vec![5, 17, 42]; 4];
        let batch = tokens(&same_length, &[11, 12, 13, 14]);
        // Torch's generator is drawn from in between: it must not matter.
        let _ = Tensor::rand([100], (Kind::Float, Device::Cpu));
        for (i, streams) in [[12u64], [14]].iter().enumerate() {
            let alone = tokens(&same_length[..1], streams);
            assert_eq!(alone[0], batch[2 * i + 1], "row {}", 2 * i + 1);
        }
        // One prompt, four streams: four different continuations.
        let distinct: std::collections::BTreeSet<_> = batch.iter().collect();
        assert!(distinct.len() > 1, "{batch:?}");
        assert!(generate_scored(&model, None, &same_length, &hot, 299, &[1]).is_err());
    }
}

#[cfg(test)]
mod with_pictures {
    use super::*;
    use tch::nn;

    #[test]
    fn decoding_after_visual_tokens_matches_recomputation() {
        tch::manual_seed(8);
        let vs = nn::VarStore::new(Device::Cpu);
        let vlm = crate::vlm::test_vlm(&vs, 4);
        let images = Tensor::rand([3, 3, 16, 16], (Kind::Float, Device::Cpu));
        let visual = tch::no_grad(|| vlm.visual_tokens(&images));
        let prompts = vec![vec![299], vec![299, 10, 11], vec![299, 5]];
        let sampling = Sampling::greedy(20);
        let cached = generate(&vlm.lm, Some(&visual), &prompts, &sampling, 299).unwrap();
        let recomputed =
            generate_without_cache(&vlm.lm, Some(&visual), &prompts, &sampling, 299).unwrap();
        assert_eq!(cached, recomputed);
        // What follows depends on the picture.
        let other = tch::no_grad(|| vlm.visual_tokens(&images.flip([0])));
        assert_ne!(
            generate(&vlm.lm, Some(&other), &prompts, &sampling, 299).unwrap(),
            cached
        );
    }
}
