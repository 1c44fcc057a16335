//! A task's JSONL split read as the pipeline reads it: one example a line, in line
//! order (predictions are scored by line). A line that is not a JSON object with the
//! task's fields is counted and named by its number; a label outside the task's set
//! refuses the whole file, since the pipeline would train on it as a class id.

use serde_json::Value;

use super::tasks::GlueTask;

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub first: String,
    pub second: String,
    /// The class id (None in a file read only to predict, without labels).
    pub label: Option<u32>,
}

/// A split: every line's example, or why the line is unusable (line numbers from 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub lines: Vec<Result<Example, String>>,
}

impl Split {
    /// The usable examples, with their line index.
    pub fn examples(&self) -> impl Iterator<Item = (usize, &Example)> {
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(i, line)| line.as_ref().ok().map(|e| (i, e)))
    }

    /// The usable examples that carry a label, with it.
    pub fn labelled(&self) -> impl Iterator<Item = (&Example, u32)> {
        self.examples().filter_map(|(_, e)| e.label.map(|l| (e, l)))
    }

    /// Each line's label, in line order (None: unreadable or unlabelled).
    pub fn labels(&self) -> Vec<Option<u32>> {
        self.lines
            .iter()
            .map(|l| l.as_ref().ok().and_then(|e| e.label))
            .collect()
    }

    /// "line N: why" for each unusable line.
    pub fn malformed(&self) -> Vec<String> {
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(i, line)| {
                line.as_ref()
                    .err()
                    .map(|why| format!("line {}: {why}", i + 1))
            })
            .collect()
    }
}

/// Reads `text` (the file `name`) as `task`'s split. Blank lines end nothing and are
/// skipped, as a JSONL reader does; every other line keeps its place.
pub fn parse(task: GlueTask, name: &str, text: &str) -> Result<Split, String> {
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = match serde_json::from_str(line) {
            Ok(row) => row,
            Err(e) => {
                lines.push(Err(format!("not JSON ({e})")));
                continue;
            }
        };
        let label = match row.get("label") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let label = value.as_u64().filter(|l| *l < u64::from(task.labels()));
                Some(label.ok_or_else(|| {
                    format!(
                        "{name}:{}: label {value} is not one of {}'s labels 0..{}",
                        i + 1,
                        task.name(),
                        task.labels() - 1
                    )
                })? as u32)
            }
        };
        lines.push(task.pair(&row).map(|(first, second)| Example {
            first,
            second,
            label,
        }));
    }
    Ok(Split { lines })
}
