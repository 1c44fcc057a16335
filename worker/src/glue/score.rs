//! Scoring predictions as the pipelines do, by line: accuracy for every task (the 2025
//! scorer), binary F1 with 1 as the positive class (MRPC and QQP select their best
//! epoch by it), and the 2025 `predictions.json` layout its scorer reads.

use serde_json::{Value, json};

use super::tasks::GlueTask;

/// Of the lines with a label, the share predicted right; None without any.
pub fn accuracy(predictions: &[u32], labels: &[Option<u32>]) -> Option<f64> {
    let scored: Vec<(u32, u32)> = predictions
        .iter()
        .zip(labels)
        .filter_map(|(p, l)| l.map(|l| (*p, l)))
        .collect();
    if scored.is_empty() {
        return None;
    }
    let right = scored.iter().filter(|(p, l)| p == l).count();
    Some(right as f64 / scored.len() as f64)
}

/// F1 of class 1: 2 TP / (2 TP + FP + FN); 0 when nothing is positive either way.
pub fn binary_f1(predictions: &[u32], labels: &[Option<u32>]) -> Option<f64> {
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    let mut any = false;
    for (p, l) in predictions.iter().zip(labels) {
        let Some(l) = l else { continue };
        any = true;
        match (*p == 1, *l == 1) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    if !any {
        return None;
    }
    let denominator = 2 * tp + fp + fn_;
    Some(if denominator == 0 {
        0.0
    } else {
        2.0 * tp as f64 / denominator as f64
    })
}

/// `{"<task>": {"predictions": [{"id": "<task>_<i>", "pred": p}, ...]}}`, one per
/// line of the validation file, in line order.
pub fn predictions_json(task: GlueTask, predictions: &[u32]) -> Value {
    let rows: Vec<Value> = predictions
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"id": format!("{}_{i}", task.name()), "pred": p}))
        .collect();
    json!({ task.name(): { "predictions": rows } })
}
