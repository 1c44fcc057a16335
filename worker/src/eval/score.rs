//! Zero-shot scoring, as the BabyLM pipeline (a fork of lm-evaluation-harness) does it:
//! a candidate's score is the summed, unnormalised log-likelihood of its continuation's
//! tokens given its context.
//!
//! Tokens, per candidate ([`requests`]):
//! - trailing spaces of the context move to the continuation;
//! - an empty context becomes the BOS token (`<|endoftext|>`) and the continuation is
//!   tokenized alone; otherwise the continuation's tokens are those of
//!   `context + continuation` after the context's own tokens;
//! - after a picture, the text starts with BOS, as phases 2 and 4 train it;
//! - too long for the context window: the oldest tokens go, as the harness cuts them.
//!
//! Batching ([`Scorer`]) sorts requests by length and pads on the right: causal
//! attention never lets a position see the padding after it, so a request scores the
//! same alone or in any batch.

use tch::{Kind, Tensor};

use crate::error::WorkerError;
use crate::model::{Attend, Gpt};
use crate::tokenizer::Tokenizer;

/// One sequence to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Context then continuation.
    pub tokens: Vec<i64>,
    /// How many of the last tokens are the continuation (the part scored).
    pub continuation: usize,
    /// Row of the picture's visual tokens, for a request conditioned on a picture.
    pub picture: Option<usize>,
}

/// Text to tokenize for one request.
#[derive(Debug, Clone)]
pub struct Text<'a> {
    pub context: &'a str,
    pub continuation: &'a str,
    pub picture: Option<usize>,
}

/// Tokenizes texts into requests that fit `window` tokens (`visual` of them taken by a
/// picture's tokens when there is one).
pub fn requests(
    tokenizer: &Tokenizer,
    texts: &[Text],
    window: usize,
    visual: usize,
) -> Result<Vec<Request>, WorkerError> {
    let bos = i64::from(tokenizer.end_of_text());
    let split: Vec<(&str, String)> = texts
        .iter()
        .map(|t| {
            let context = t.context.trim_end();
            let moved = &t.context[context.len()..];
            (context, format!("{moved}{}", t.continuation))
        })
        .collect();
    // Every text the harness would tokenize, in one parallel batch.
    let mut wanted = Vec::new();
    for (context, continuation) in &split {
        if context.is_empty() {
            wanted.push(continuation.clone());
        } else {
            wanted.push(context.to_string());
            wanted.push(format!("{context}{continuation}"));
        }
    }
    let mut encoded = tokenizer.encode_batch(wanted)?.into_iter();
    let mut out = Vec::with_capacity(texts.len());
    for (text, (context, _)) in texts.iter().zip(&split) {
        let as_i64 = |ids: Vec<u32>| ids.into_iter().map(i64::from).collect::<Vec<_>>();
        let (mut head, tail) = if context.is_empty() {
            (vec![bos], as_i64(encoded.next().unwrap_or_default()))
        } else {
            let context_ids = as_i64(encoded.next().unwrap_or_default());
            let mut whole = as_i64(encoded.next().unwrap_or_default());
            let tail = whole.split_off(context_ids.len().min(whole.len()));
            (context_ids, tail)
        };
        if text.picture.is_some() && !context.is_empty() {
            head.insert(0, bos);
        }
        let room = window.saturating_sub(if text.picture.is_some() { visual } else { 0 });
        let continuation = tail.len();
        let mut tokens = head;
        tokens.extend(tail);
        let cut = tokens.len().saturating_sub(room + 1);
        tokens.drain(..cut);
        out.push(Request {
            continuation: continuation.min(tokens.len().saturating_sub(1)),
            tokens,
            picture: text.picture,
        });
    }
    Ok(out)
}

/// Scores requests in batches of `batch_size` sequences.
pub struct Scorer<'a> {
    pub lm: &'a Gpt,
    pub batch_size: usize,
}

impl Scorer<'_> {
    /// The summed log-likelihood of each request's continuation. `visual` holds the
    /// visual tokens (pictures, N, C) that requests' `picture` rows name.
    pub fn score(&self, requests: &[Request], visual: Option<&Tensor>) -> Vec<f64> {
        let mut order: Vec<usize> = (0..requests.len()).collect();
        // Pictures apart from text, then longest first: batches pad little.
        order.sort_by_key(|&i| {
            let r = &requests[i];
            (r.picture.is_some(), std::cmp::Reverse(r.tokens.len()))
        });
        let mut scores = vec![0.0; requests.len()];
        let mut start = 0;
        while start < order.len() {
            let seeing = requests[order[start]].picture.is_some();
            let end = (start + self.batch_size.max(1)).min(order.len());
            let end = start
                + order[start..end]
                    .iter()
                    .take_while(|&&i| requests[i].picture.is_some() == seeing)
                    .count();
            let batch: Vec<&Request> = order[start..end].iter().map(|&i| &requests[i]).collect();
            let sums = self.score_batch(&batch, visual.filter(|_| seeing));
            for (&i, sum) in order[start..end].iter().zip(sums) {
                scores[i] = sum;
            }
            start = end;
        }
        scores
    }

    fn score_batch(&self, batch: &[&Request], visual: Option<&Tensor>) -> Vec<f64> {
        let device = self.lm.device();
        let inputs = batch.iter().map(|r| r.tokens.len().saturating_sub(1));
        let width = inputs.max().unwrap_or(0).max(1);
        let (mut ids, mut targets) = (Vec::new(), Vec::new());
        for request in batch {
            let n = request.tokens.len().saturating_sub(1);
            ids.extend(&request.tokens[..n]);
            targets.extend(&request.tokens[1..=n]);
            // Padding after the text: no real position attends to it.
            ids.extend(std::iter::repeat_n(0, width - n));
            targets.extend(std::iter::repeat_n(0, width - n));
        }
        let shape = [batch.len() as i64, width as i64];
        let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
        let targets = Tensor::from_slice(&targets).view(shape).to_device(device);
        let picked = tch::no_grad(|| {
            let mut x = self.lm.embed(&ids); // (B, T, C)
            if let Some(visual) = visual {
                let rows: Vec<i64> = batch
                    .iter()
                    .map(|r| r.picture.unwrap_or(0) as i64)
                    .collect();
                let rows = Tensor::from_slice(&rows).to_device(visual.device());
                let prefix = visual.index_select(0, &rows).to_kind(x.kind()); // (B, N, C)
                x = Tensor::cat(&[prefix, x], 1);
            }
            let n = x.size()[1] - width as i64;
            let positions = Tensor::arange(x.size()[1], (Kind::Int64, device));
            let logits = self
                .lm
                .forward_embeddings(&x, &positions, Attend::Causal, None)
                .narrow(1, n, width as i64); // position i predicts targets[i]
            logits
                .log_softmax(-1, Kind::Float)
                .gather(2, &targets.unsqueeze(2), false)
                .squeeze_dim(2) // (B, T) log-probabilities
        });
        let picked = Vec::<f32>::try_from(picked.to_device(tch::Device::Cpu).flatten(0, -1))
            .expect("log-probabilities are f32");
        batch
            .iter()
            .enumerate()
            .map(|(row, request)| {
                let n = request.tokens.len().saturating_sub(1);
                let from = row * width + n - request.continuation;
                picked[from..row * width + n]
                    .iter()
                    .map(|&p| f64::from(p))
                    .sum()
            })
            .collect()
    }
}
