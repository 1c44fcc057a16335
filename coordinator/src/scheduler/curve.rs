//! A training task's loss curve, kept by the coordinator from the progress reports:
//! bounded (past [`MAX_POINTS`] it keeps every other point, so the resolution halves and
//! the whole run stays in view) and true to what was trained (a lease that resumes from
//! an earlier checkpoint replaces the points past it).

use serde::{Deserialize, Serialize};

/// Points a curve keeps at most; a task record stays a few kilobytes.
pub const MAX_POINTS: usize = 256;

/// The mean training loss reported at an optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: u64,
    pub loss: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LossCurve {
    points: Vec<CurvePoint>,
}

impl LossCurve {
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn points(&self) -> &[CurvePoint] {
        &self.points
    }

    /// Adds the loss reported at `step` (nothing for step 0 or a loss that is not a
    /// number): a step at or before the last point's is a resumed lease retracing its
    /// steps, so the points from it on go.
    pub fn record(&mut self, step: u64, loss: f64) {
        if step == 0 || !loss.is_finite() {
            return;
        }
        let kept = self.points.partition_point(|p| p.step < step);
        self.points.truncate(kept);
        self.points.push(CurvePoint { step, loss });
        if self.points.len() > MAX_POINTS {
            self.halve();
        }
    }

    /// Keeps every other point, the first and the newest always.
    fn halve(&mut self) {
        let newest = self.points.last().copied();
        let mut index = 0;
        self.points.retain(|_| {
            index += 1;
            index % 2 == 1
        });
        if let Some(newest) = newest
            && self.points.last() != Some(&newest)
        {
            self.points.push(newest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_run_stays_bounded_with_its_ends_in_view() {
        let mut curve = LossCurve::default();
        for step in 1..=10_000 {
            curve.record(step, 10.0 / step as f64);
        }
        let points = curve.points();
        assert!(points.len() <= MAX_POINTS && points.len() > MAX_POINTS / 4);
        assert_eq!(points[0].step, 1);
        assert_eq!(points.last().unwrap().step, 10_000);
        assert!(points.windows(2).all(|w| w[0].step < w[1].step));
    }

    #[test]
    fn a_resumed_lease_replaces_the_steps_it_retraces() {
        let mut curve = LossCurve::default();
        for step in [10, 20, 30, 40] {
            curve.record(step, 1.0);
        }
        curve.record(25, 0.5);
        let steps: Vec<u64> = curve.points().iter().map(|p| p.step).collect();
        assert_eq!(steps, [10, 20, 25]);
        curve.record(0, 3.0);
        curve.record(26, f64::NAN);
        assert_eq!(curve.points().len(), 3);
    }
}
