//! Answers that could outgrow a client's message limit: a job (its tasks and history)
//! and the lists of jobs and workers. A job is summarised ([`Job::summarised`]) and the
//! lists are paged by key; both shrink until they fit the coordinator's
//! `--max-message-bytes`, so no answer is ever refused for its size.

use serde::Serialize;

use super::json;
use crate::scheduler::Job;

/// (default, most) tasks a step in a job's answer.
pub const TASKS_PER_STEP: (u32, u32) = (100, 1_000);
/// (default, most) newest events in a job's answer.
pub const HISTORY_TAIL: (u32, u32) = (1_000, 10_000);
/// (default, most) items a page.
pub const PAGE: (u32, u32) = (100, 1_000);

/// What a request asked for, 0 meaning the default, capped at the most.
pub fn asked(given: u32, (default, most): (u32, u32)) -> usize {
    (if given == 0 { default } else { given.min(most) }) as usize
}

/// Room for the protobuf framing around a JSON document.
const FRAMING: usize = 1024;

/// `job` as JSON in at most `budget` bytes: summarised as asked, then halved until it fits.
pub fn job_within(job: &Job, mut tasks: usize, mut tail: usize, budget: usize) -> String {
    loop {
        let text = json(&job.summarised(tasks, tail));
        if text.len() + FRAMING <= budget || (tasks == 0 && tail == 0) {
            return text;
        }
        (tasks, tail) = (tasks / 2, tail / 2);
    }
}

/// A page of `items` (in key order, starting after the page token) as JSON in at most
/// `budget` bytes, and the token of the next page ("" when this one is the last).
pub fn page<'a, T: Serialize + 'a>(
    items: impl Iterator<Item = (&'a str, T)>,
    mut size: usize,
    budget: usize,
) -> (String, String) {
    let mut items: Vec<(&str, T)> = items.take(size + 1).collect();
    loop {
        let more = items.len() > size;
        let shown: Vec<&T> = items.iter().take(size).map(|(_, item)| item).collect();
        let text = json(&shown);
        if text.len() + FRAMING <= budget || size <= 1 {
            let next = match (more, items.get(size.saturating_sub(1))) {
                (true, Some((key, _))) => key.to_string(),
                _ => String::new(),
            };
            return (text, next);
        }
        size /= 2;
        items.truncate(size + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_keys_and_shrink_to_fit() {
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let items = || keys.iter().map(|k| (k.as_str(), k.repeat(100)));
        let (first, next) = page(items(), 4, 1 << 20);
        assert_eq!(
            serde_json::from_str::<Vec<String>>(&first).unwrap().len(),
            4
        );
        assert_eq!(next, "k3");
        let (last, next) = page(items().skip(8), 4, 1 << 20);
        assert_eq!(serde_json::from_str::<Vec<String>>(&last).unwrap().len(), 2);
        assert_eq!(next, "");
        // 4 items of ~200 bytes do not fit 1,500 bytes: the page halves, and says where
        // the next one starts.
        let (small, next) = page(items(), 4, FRAMING + 500);
        let shown = serde_json::from_str::<Vec<String>>(&small).unwrap();
        assert_eq!((shown.len(), next.as_str()), (2, "k1"));
    }
}
