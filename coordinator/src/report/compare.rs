//! `outloud report JOB --compare A B`: two evaluated phases side by side. With several
//! runs (`seeds`), each run's difference is taken first (the runs pair up: run k of A
//! and of B share a seed and every step before the branches part), then averaged.

use serde::Serialize;

use super::{Report, mean_sd, with_sd};

/// Two evaluated phases side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub job: String,
    pub a: String,
    pub b: String,
    /// The runs compared (`seeds`); empty for a job of one run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    pub benchmarks: Vec<ComparedRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparedRow {
    pub name: String,
    /// Accuracy after A and after B (means over the runs).
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// a - b, as a fraction (the mean of the runs' differences).
    pub difference: Option<f64>,
    /// Sample standard deviations over the runs (two runs or more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sd_a: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sd_b: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sd_difference: Option<f64>,
    /// Runs that scored the benchmark after both phases.
    pub paired_runs: usize,
}

impl Report {
    /// Each benchmark's accuracy after phase `a` and after phase `b`, and the difference.
    pub fn compare(&self, a: &str, b: &str) -> Result<Comparison, String> {
        let column = |name: &str| {
            self.phases.iter().position(|p| p == name).ok_or_else(|| {
                format!(
                    "no evaluated phase `{name}` in {}; evaluated: {}",
                    self.job,
                    self.phases.join(", ")
                )
            })
        };
        let (ia, ib) = (column(a)?, column(b)?);
        let rows = self
            .benchmarks
            .iter()
            .map(|row| {
                // One run: the row's own figures are that run's.
                let single = [vec![row.accuracy[ia]], vec![row.accuracy[ib]]];
                let (runs_a, runs_b) = match row.runs.is_empty() {
                    true => (&single[0], &single[1]),
                    false => (&row.runs[ia], &row.runs[ib]),
                };
                let differences: Vec<Option<f64>> = runs_a
                    .iter()
                    .zip(runs_b)
                    .map(|(x, y)| x.zip(*y).map(|(x, y)| x - y))
                    .collect();
                let ((mean_a, sd_a), (mean_b, sd_b)) = (mean_sd(runs_a), mean_sd(runs_b));
                let (difference, sd_difference) = mean_sd(&differences);
                ComparedRow {
                    name: row.name.clone(),
                    a: mean_a,
                    b: mean_b,
                    difference,
                    sd_a,
                    sd_b,
                    sd_difference,
                    paired_runs: differences.iter().flatten().count(),
                }
            })
            .collect();
        Ok(Comparison {
            job: self.job.clone(),
            a: a.into(),
            b: b.into(),
            seeds: self.seeds.clone(),
            benchmarks: rows,
        })
    }
}

impl Comparison {
    pub fn table(&self) -> String {
        let spread = if self.seeds.is_empty() { 0 } else { 8 };
        let w = |name: &str| name.len().max(8 + spread);
        let mut out = format!("job {}  {} vs {}  (accuracy, %", self.job, self.a, self.b);
        if !self.seeds.is_empty() {
            let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
            out += &format!(
                "; mean ± sd over seeds {}, A - B paired by seed",
                seeds.join(", ")
            );
        }
        out += ")\n";
        out += &format!(
            "{:<32} {:>wa$} {:>wb$} {:>wd$}\n",
            "BENCHMARK",
            self.a,
            self.b,
            "A - B",
            wa = w(&self.a),
            wb = w(&self.b),
            wd = 8 + spread,
        );
        for row in &self.benchmarks {
            let difference = match (row.difference, row.sd_difference) {
                (None, _) => "-".into(),
                (Some(d), None) => format!("{:+.1}", 100.0 * d),
                (Some(d), Some(sd)) => format!("{:+.1} ± {:.1}", 100.0 * d, 100.0 * sd),
            };
            out += &format!(
                "{:<32} {:>wa$} {:>wb$} {:>wd$}\n",
                row.name,
                with_sd(row.a, row.sd_a),
                with_sd(row.b, row.sd_b),
                difference,
                wa = w(&self.a),
                wb = w(&self.b),
                wd = 8 + spread,
            );
        }
        out
    }
}
