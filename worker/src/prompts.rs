//! How the model is taught and asked about pictures: `[visual tokens] <|endoftext|>
//! prompt answer <|endoftext|>`, teaching only the answer (the caption, for phase 2).
//! The question prompt is BabyLM's VQA prompt, so phase 4 trains on the format the
//! evaluation scores.

use tch::Tensor;

use crate::error::WorkerError;
use crate::tokenizer::Tokenizer;

/// One training sequence: a picture, its tokens, and where the taught part starts.
pub struct Example {
    pub pixels: Tensor,
    pub ids: Vec<i64>,
    pub taught_from: usize,
    /// Words in the taught text: what the word budget counts.
    pub words: u64,
}

/// `<|endoftext|> caption <|endoftext|>`, the caption taught.
pub fn caption_example(
    tokenizer: &Tokenizer,
    pixels: Tensor,
    caption: &str,
) -> Result<Example, WorkerError> {
    let bos = tokenizer.end_of_text() as i64;
    let mut ids = vec![bos];
    ids.extend(tokenizer.encode(caption)?.into_iter().map(i64::from));
    ids.push(bos);
    Ok(Example {
        pixels,
        ids,
        taught_from: 1,
        words: caption.split_whitespace().count() as u64,
    })
}

/// How a question is asked: the BabyLM VQA prompt, so phase 4 trains on the format
/// the evaluation scores.
pub fn question_text(question: &str) -> String {
    format!("Question: {question} Answer:")
}

/// The prompt a question is asked with.
pub fn question_prompt(tokenizer: &Tokenizer, question: &str) -> Result<Vec<i64>, WorkerError> {
    let mut ids = vec![tokenizer.end_of_text() as i64];
    ids.extend(
        tokenizer
            .encode(&question_text(question))?
            .into_iter()
            .map(i64::from),
    );
    Ok(ids)
}

/// An answer's tokens as they follow the prompt, ending the text.
pub fn answer_tokens(tokenizer: &Tokenizer, answer: &str) -> Result<Vec<i64>, WorkerError> {
    let mut ids: Vec<i64> = tokenizer
        .encode(&format!(" {answer}"))?
        .into_iter()
        .map(i64::from)
        .collect();
    ids.push(tokenizer.end_of_text() as i64);
    Ok(ids)
}

/// `<|endoftext|> question: ... answer: <answer> <|endoftext|>`, the answer taught.
pub fn question_example(
    tokenizer: &Tokenizer,
    pixels: Tensor,
    question: &str,
    answer: &str,
) -> Result<Example, WorkerError> {
    let mut ids = question_prompt(tokenizer, question)?;
    let taught_from = ids.len();
    ids.extend(answer_tokens(tokenizer, answer)?);
    Ok(Example {
        pixels,
        ids,
        taught_from,
        words: answer.split_whitespace().count() as u64,
    })
}
