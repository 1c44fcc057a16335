//! Loss curves in the report: each training step's loss over its optimizer steps, as
//! the coordinator kept them ([`crate::scheduler::LossCurve`]), in the text table (from
//! and to, and the lowest) and in the HTML page (a small chart per phase).

use serde::Serialize;

use super::html::escape;
use crate::scheduler::{CurvePoint, Job, StepKind};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseCurve {
    /// The training step (a phase, or a round of one, per run).
    pub step: String,
    pub points: Vec<CurvePoint>,
}

/// The curve of every training step that reported one, in the job's order.
pub fn curves(job: &Job) -> Vec<PhaseCurve> {
    job.steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Train { .. }))
        .filter_map(|s| {
            let curve = &s.tasks.first()?.curve;
            (!curve.is_empty()).then(|| PhaseCurve {
                step: s.name.clone(),
                points: curve.points().to_vec(),
            })
        })
        .collect()
}

/// A line per step: the loss at its first and last reported steps, and the lowest.
pub fn table(curves: &[PhaseCurve]) -> String {
    if curves.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{:<32} {:>10} {:>10} {:>10} {:>8}\n",
        "TRAINING LOSS", "FIRST", "LAST", "LOWEST", "STEPS"
    );
    for curve in curves {
        let (Some(first), Some(last)) = (curve.points.first(), curve.points.last()) else {
            continue;
        };
        let lowest = curve
            .points
            .iter()
            .map(|p| p.loss)
            .fold(f64::INFINITY, f64::min);
        out += &format!(
            "{:<32} {:>10.3} {:>10.3} {:>10.3} {:>8}\n",
            curve.step, first.loss, last.loss, lowest, last.step
        );
    }
    out
}

/// A small SVG chart per step: loss against optimizer step, each on its own scales.
pub fn svg(curves: &[PhaseCurve]) -> String {
    let (w, h, left, top, bottom) = (340.0, 200.0, 48.0, 24.0, 30.0);
    let (plot_w, plot_h) = (w - left - 10.0, h - top - bottom);
    let mut out = String::new();
    for curve in curves {
        let (Some(first), Some(last)) = (curve.points.first(), curve.points.last()) else {
            continue;
        };
        let (low, high) = curve
            .points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.loss), hi.max(p.loss))
            });
        let span = (high - low).max(1e-9);
        let steps = (last.step.saturating_sub(first.step)).max(1) as f64;
        let x = |step: u64| left + plot_w * (step.saturating_sub(first.step)) as f64 / steps;
        let y = |loss: f64| top + plot_h * (1.0 - (loss - low) / span);
        let points: Vec<String> = curve
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.step), y(p.loss)))
            .collect();
        out += &format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" \
             aria-label=\"training loss of {name}\" class=\"loss-curve\">\n\
             <text x=\"{left}\" y=\"14\" font-size=\"12\">{name}: loss</text>\n\
             <rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#ccc\"/>\n\
             <text x=\"{lx}\" y=\"{ty}\" font-size=\"10\" text-anchor=\"end\">{high:.2}</text>\n\
             <text x=\"{lx}\" y=\"{by}\" font-size=\"10\" text-anchor=\"end\">{low:.2}</text>\n\
             <text x=\"{left}\" y=\"{sy}\" font-size=\"10\">{s0}</text>\n\
             <text x=\"{rx}\" y=\"{sy}\" font-size=\"10\" text-anchor=\"end\">step {s1}</text>\n\
             <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{points}\"/>\n</svg>\n",
            name = escape(&curve.step),
            lx = left - 4.0,
            ty = top + 8.0,
            by = top + plot_h,
            sy = h - 10.0,
            rx = left + plot_w,
            s0 = first.step,
            s1 = last.step,
            points = points.join(" "),
        );
    }
    out
}
