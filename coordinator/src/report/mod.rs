//! `outloud report JOB`: the eval steps' results as benchmarks x phases, beside the
//! BabyLM 2024 multimodal baselines, each training step's loss curve ([`curves`]) and
//! what each step cost ([`cost`]);
//! as text, JSON, or a self-contained HTML page with a plot of every benchmark across
//! the phases and a loss chart per phase.
//!
//! It reads the typed results eval tasks report, so it needs only the coordinator;
//! per-item scores stay in the results JSON in the job's storage.

mod compare;
pub mod cost;
pub mod curves;
pub mod glue;
mod html;
pub mod ledger;

use outloud_core::results::{BenchmarkScore, ScoreMode, TaskResults, percent};
use serde::Serialize;

pub use compare::Comparison;
pub use cost::CostRow;
pub use curves::PhaseCurve;
pub use ledger::LedgerRow;

use crate::scheduler::{Job, RunState, StepKind};

/// Published scores (accuracy, %) of the BabyLM 2024 multimodal-track baselines.
pub const BASELINES: [(&str, f64, f64); 5] = [
    // (benchmark, GIT, Flamingo)
    ("blimp", 65.2, 70.9),
    ("blimp_supplement", 62.7, 65.0),
    ("ewok", 52.4, 52.7),
    ("winoground", 55.5, 51.6),
    ("vqa", 54.1, 52.3),
];

/// What the baselines score on image-conditioned benchmarks without the pictures: each
/// Winoground pair appears twice with its captions swapped, so a text-only model is at
/// exactly 50% by construction.
pub const TEXT_ONLY_BASELINES: [(&str, f64, f64); 1] = [("winoground", 50.0, 50.0)];

/// A report row: a benchmark, and whether these are its text-only scores.
type RowKey = (String, bool);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileRow {
    pub name: String,
    /// Accuracy after each evaluated phase (`None`: not scored there), the mean over
    /// the runs.
    pub accuracy: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchmarkRow {
    /// The benchmark; `(text-only)` follows the name of an image-conditioned benchmark
    /// scored without its pictures.
    pub name: String,
    pub items: Option<u64>,
    /// Items found but not scorable (malformed, picture missing), in the first phase
    /// that scored the benchmark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unusable: Option<u64>,
    pub chance: Option<f64>,
    /// Accuracy after each evaluated phase: with several runs (`seeds`), their mean.
    pub accuracy: Vec<Option<f64>>,
    /// With several runs: the sample standard deviation over them, per phase.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sd: Vec<Option<f64>>,
    /// With several runs: each run's accuracy, per phase (runs in `Report::seeds` order).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<Vec<Option<f64>>>,
    /// Published GIT and Flamingo baselines (accuracy, %).
    pub git: Option<f64>,
    pub flamingo: Option<f64>,
    pub files: Vec<FileRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub job: String,
    pub state: RunState,
    /// The phases whose checkpoints were evaluated, in order.
    pub phases: Vec<String>,
    /// The job's runs, when it has several (`seeds`); every figure is then a mean.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    pub benchmarks: Vec<BenchmarkRow>,
    /// What each training step read: the word ledger.
    pub ledger: Vec<LedgerRow>,
    /// Distinct real words one lineage may read.
    pub word_budget: u64,
    /// Each training step's loss over its optimizer steps.
    pub curves: Vec<PhaseCurve>,
    /// What each step cost: device time, tokens, words.
    pub cost: Vec<CostRow>,
    /// The job's wall time, once it has finished.
    pub wall_seconds: Option<f64>,
    /// GLUE, per fine-tuning step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub glue: Vec<glue::GlueColumn>,
}

/// An evaluated phase: its results in each run (`None`: not scored yet).
struct Column {
    phase: String,
    runs: Vec<Option<TaskResults>>,
}

/// The eval steps' results, a column per evaluated phase, a run per seed.
fn columns(job: &Job) -> Vec<Column> {
    let runs = job.spec.runs();
    let mut columns: Vec<Column> = Vec::new();
    for step in &job.steps {
        let StepKind::Evaluate { phase } = step.kind else {
            continue;
        };
        let phase = job.spec.phases[phase as usize].name.clone();
        let run = runs.iter().position(|&s| s == step.seed).unwrap_or(0);
        let at = match columns.iter().position(|c| c.phase == phase) {
            Some(at) => at,
            None => {
                let runs = vec![None; runs.len()];
                columns.push(Column { phase, runs });
                columns.len() - 1
            }
        };
        columns[at].runs[run] = Some(step.results());
    }
    columns
}

/// The mean and sample standard deviation of the values present (sd: of two or more).
pub fn mean_sd(values: &[Option<f64>]) -> (Option<f64>, Option<f64>) {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    if present.is_empty() {
        return (None, None);
    }
    let n = present.len() as f64;
    let mean = present.iter().sum::<f64>() / n;
    let sd = (present.len() > 1).then(|| {
        let squares: f64 = present.iter().map(|v| (v - mean).powi(2)).sum();
        (squares / (n - 1.0)).sqrt()
    });
    (Some(mean), sd)
}

impl Report {
    pub fn of(job: &Job) -> Self {
        let columns = columns(job);
        let several = job.spec.seeds.len() > 1;
        let all = || columns.iter().flat_map(|c| c.runs.iter().flatten());
        // An image-conditioned benchmark scored without pictures gets a row of its own.
        let seen_with_pictures: Vec<&str> = all()
            .flat_map(|results| results.overall())
            .filter(|b| b.mode == Some(ScoreMode::WithPictures))
            .map(|b| b.benchmark.as_str())
            .collect();
        let key = |b: &BenchmarkScore| -> RowKey {
            let pictured = seen_with_pictures.contains(&b.benchmark.as_str())
                || TEXT_ONLY_BASELINES.iter().any(|t| t.0 == b.benchmark);
            let text_only = b.mode == Some(ScoreMode::TextOnly) && pictured;
            (b.benchmark.clone(), text_only)
        };
        let mut keys: Vec<RowKey> = all()
            .flat_map(|results| results.overall())
            .map(key)
            .collect();
        keys.sort_by_key(|(n, text_only)| {
            let published = BASELINES.iter().position(|b| b.0 == n);
            (published.unwrap_or(usize::MAX), n.clone(), *text_only)
        });
        keys.dedup();
        // Each run's accuracy after each evaluated phase.
        let across = |score: &dyn Fn(&TaskResults) -> Option<f64>| -> Vec<Vec<Option<f64>>> {
            let run = |r: &Option<TaskResults>| r.as_ref().and_then(score);
            columns
                .iter()
                .map(|c| c.runs.iter().map(run).collect())
                .collect()
        };
        let means = |runs: &[Vec<Option<f64>>]| -> Vec<Option<f64>> {
            runs.iter().map(|r| mean_sd(r).0).collect()
        };
        let benchmarks = keys
            .iter()
            .map(|row| {
                let name = row.0.as_str();
                let overall = |r: &'_ TaskResults| -> Option<BenchmarkScore> {
                    r.overall().find(|b| key(b) == *row).cloned()
                };
                let first = all().find_map(overall);
                let mut files: Vec<String> = all()
                    .flat_map(|r| r.files(name).filter(|f| key(f) == *row))
                    .filter_map(|f| f.file.clone())
                    .collect();
                files.sort();
                files.dedup();
                let baseline = if row.1 {
                    TEXT_ONLY_BASELINES.iter().find(|b| b.0 == name)
                } else {
                    BASELINES.iter().find(|b| b.0 == name)
                };
                let runs = across(&|r| overall(r).map(|b| b.accuracy));
                BenchmarkRow {
                    name: if row.1 {
                        format!("{name} (text-only)")
                    } else {
                        name.to_string()
                    },
                    items: first.as_ref().map(|b| b.items),
                    unusable: first.as_ref().map(|b| b.unusable),
                    chance: first.as_ref().map(|b| b.chance),
                    accuracy: means(&runs),
                    sd: match several {
                        true => runs.iter().map(|r| mean_sd(r).1).collect(),
                        false => Vec::new(),
                    },
                    runs: if several { runs } else { Vec::new() },
                    git: baseline.map(|b| b.1),
                    flamingo: baseline.map(|b| b.2),
                    files: files
                        .into_iter()
                        .map(|file| FileRow {
                            accuracy: means(&across(&|r| {
                                let mut files = r.files(name).filter(|f| key(f) == *row);
                                let found = files.find(|f| f.file.as_deref() == Some(&file));
                                found.map(|f| f.accuracy)
                            })),
                            name: file,
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            job: job.id.clone(),
            state: job.state,
            phases: columns.into_iter().map(|c| c.phase).collect(),
            seeds: job.spec.seeds.clone(),
            benchmarks,
            ledger: ledger::ledger(job),
            word_budget: job.spec.word_budget,
            curves: curves::curves(job),
            cost: cost::rows(job),
            wall_seconds: cost::wall_seconds(job),
            glue: glue::columns(job),
        }
    }

    /// Benchmarks x phases, accuracy in %; `detail` adds a row per file (paradigm).
    pub fn table(&self, detail: bool) -> String {
        let mut out = format!("job {}  {}  (accuracy, %", self.job, self.state);
        if !self.seeds.is_empty() {
            out += &format!("; mean ± sd over seeds {}", list(&self.seeds));
        }
        out += ")\n";
        if self.benchmarks.is_empty() {
            if self.glue.is_empty() {
                out += "no evaluation results yet\n";
            }
            out += &glue::table(&self.glue, detail);
            out += &curves::table(&self.curves);
            out += &cost::table(&self.cost, self.wall_seconds);
            return out + &ledger::table(&self.ledger, self.word_budget);
        }
        let spread = if self.seeds.is_empty() { 0 } else { 6 };
        let width = |name: &str| name.len().max(8 + spread);
        let mut header = format!(
            "{:<32} {:>7} {:>8} {:>6}",
            "BENCHMARK", "ITEMS", "UNUSABLE", "CHANCE"
        );
        for phase in &self.phases {
            header += &format!(" {:>w$}", phase, w = width(phase));
        }
        out += &format!("{header} {:>6} {:>8}\n", "GIT", "FLAMINGO");
        for row in &self.benchmarks {
            let count = |n: Option<u64>| n.map_or("-".into(), |n| n.to_string());
            let mut line = format!(
                "{:<32} {:>7} {:>8} {:>6}",
                row.name,
                count(row.items),
                count(row.unusable),
                percent(row.chance)
            );
            for (i, phase) in self.phases.iter().enumerate() {
                let sd = row.sd.get(i).copied().flatten();
                let cell = with_sd(row.accuracy[i], sd);
                line += &format!(" {:>w$}", cell, w = width(phase));
            }
            let published = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            out += &format!(
                "{line} {:>6} {:>8}\n",
                published(row.git),
                published(row.flamingo)
            );
            if detail {
                for file in &row.files {
                    let mut line = format!("  {:<30} {:>7} {:>8} {:>6}", file.name, "", "", "");
                    for (phase, value) in self.phases.iter().zip(&file.accuracy) {
                        line += &format!(" {:>w$}", percent(*value), w = width(phase));
                    }
                    out += &format!("{line}\n");
                }
            }
        }
        out += &glue::table(&self.glue, detail);
        out += &curves::table(&self.curves);
        out += &cost::table(&self.cost, self.wall_seconds);
        out += &ledger::table(&self.ledger, self.word_budget);
        out
    }
}

/// A percentage, with its standard deviation when there is one: `61.2 ± 1.3`.
pub fn with_sd(value: Option<f64>, sd: Option<f64>) -> String {
    match sd {
        Some(sd) => format!("{} ± {:.1}", percent(value), 100.0 * sd),
        None => percent(value),
    }
}

/// `1, 2, 3`.
fn list(seeds: &[u64]) -> String {
    let seeds: Vec<String> = seeds.iter().map(u64::to_string).collect();
    seeds.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Metrics, Scheduler, SchedulerConfig, WorkerInfo};

    /// The report of a job of two language phases, `language` and `more`, whose eval
    /// steps report what `evaluated` gives, in order.
    fn report_of(mut evaluated: impl FnMut() -> TaskResults) -> Report {
        report_of_runs("", |_| evaluated())
    }

    /// The same job with `extra` spec lines; `evaluated` is given the eval step's name.
    fn report_of_runs(extra: &str, mut evaluated: impl FnMut(&str) -> TaskResults) -> Report {
        let yaml = format!(
            "name: r\nstorage: /tmp/r\ndata: [{{name: t, kind: generated_text, words: 9}}]\n{extra}\
            evaluation: {{benchmarks: [{{path: /e}}]}}\nphases:\n\
            - {{name: language, kind: language, data: [t], steps: 1}}\n\
            - {{name: more, kind: language, data: [t], steps: 1}}\n"
        );
        let mut s = Scheduler::new(SchedulerConfig {
            lease_timeout_ms: 1000,
            instance: 0,
        });
        let w = s.register(WorkerInfo::for_tests("h"), 0);
        let job = s
            .submit(outloud_core::spec::parse(&yaml, "r.yaml").unwrap(), 0)
            .unwrap();
        while let Some(a) = s.lease(&w, 1).unwrap() {
            let given = if matches!(a.spec.work, outloud_core::task_spec::Work::Evaluate(_)) {
                evaluated(&a.step)
            } else {
                TaskResults::default()
            };
            s.complete(
                &w,
                &a.lease,
                Metrics::default(),
                a.output_root.clone(),
                given,
                2,
            )
            .unwrap();
        }
        Report::of(s.job(&job).unwrap())
    }

    #[test]
    fn benchmarks_by_phase_with_baselines_and_paradigms() {
        let score = |benchmark: &str, file: Option<&str>, accuracy: f64| BenchmarkScore {
            benchmark: benchmark.into(),
            file: file.map(str::to_string),
            mode: Some(ScoreMode::TextOnly),
            items: 840,
            correct: (accuracy * 840.0) as u64,
            accuracy,
            chance: 0.5,
            unusable: 0,
        };
        let scores = |blimp: f64| TaskResults {
            benchmarks: vec![
                score("blimp", None, blimp),
                score("blimp", Some("passive_1"), blimp),
                score("world_vqa", None, 0.25),
            ],
            ..TaskResults::default()
        };
        let mut blimp = [0.6, 0.7].into_iter();
        let report = report_of(|| scores(blimp.next().unwrap()));
        assert_eq!(report.phases, ["language", "more"]);
        let names: Vec<&str> = report.benchmarks.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["blimp", "world_vqa"]);
        assert_eq!(report.benchmarks[0].accuracy, [Some(0.6), Some(0.7)]);
        assert_eq!(
            (report.benchmarks[0].git, report.benchmarks[0].flamingo),
            (Some(65.2), Some(70.9))
        );
        let table = report.table(true);
        assert!(
            table.contains("blimp") && table.contains("60.0") && table.contains("70.9"),
            "{table}"
        );
        assert!(table.contains("  passive_1"), "{table}");
        assert!(!report.table(false).contains("passive_1"));
        let html = report.html();
        assert!(html.contains("<svg") && html.contains("<polyline") && !html.contains("<script"));
        let compared = report.compare("more", "language").unwrap();
        let blimp = &compared.benchmarks[0];
        assert!((blimp.difference.unwrap() - 0.1).abs() < 1e-9, "{blimp:?}");
        assert!(compared.table().contains("+10.0"), "{}", compared.table());
        assert!(
            report
                .compare("more", "nope")
                .unwrap_err()
                .contains("evaluated: language, more")
        );
    }

    #[test]
    fn text_only_scores_of_a_picture_benchmark_get_their_own_row_and_baselines() {
        let mut modes = [
            (ScoreMode::TextOnly, 0.5, 3),
            (ScoreMode::WithPictures, 0.6, 0),
        ]
        .into_iter();
        let report = report_of(|| {
            let (mode, accuracy, unusable) = modes.next().unwrap();
            TaskResults {
                benchmarks: vec![BenchmarkScore {
                    benchmark: "winoground".into(),
                    file: None,
                    mode: Some(mode),
                    items: 100,
                    correct: (accuracy * 100.0) as u64,
                    accuracy,
                    chance: 0.5,
                    unusable,
                }],
                ..TaskResults::default()
            }
        });
        let [pictured, text_only] = &report.benchmarks[..] else {
            panic!("two rows: {:?}", report.benchmarks)
        };
        assert_eq!(pictured.name, "winoground");
        assert_eq!(pictured.accuracy, [None, Some(0.6)]);
        assert_eq!((pictured.git, pictured.unusable), (Some(55.5), Some(0)));
        assert_eq!(text_only.name, "winoground (text-only)");
        assert_eq!(text_only.accuracy, [Some(0.5), None]);
        assert_eq!(
            (text_only.git, text_only.flamingo),
            (Some(50.0), Some(50.0))
        );
        assert_eq!(text_only.unusable, Some(3));
        let table = report.table(false);
        assert!(table.contains("UNUSABLE"), "{table}");
    }

    fn blimp(accuracy: f64) -> TaskResults {
        TaskResults {
            benchmarks: vec![BenchmarkScore {
                benchmark: "blimp".into(),
                file: None,
                mode: Some(ScoreMode::TextOnly),
                items: 100,
                correct: (accuracy * 100.0).round() as u64,
                accuracy,
                chance: 0.5,
                unusable: 0,
            }],
            ..TaskResults::default()
        }
    }

    #[test]
    fn several_seeds_give_means_and_sds_and_paired_differences() {
        // Run k scores 0.5 + 0.1k after `language` and 0.02k more after `more`: the
        // difference grows with the seed, so its sd is not the sd of either phase.
        let report = report_of_runs("seeds: [1, 2, 3]\n", |step| {
            let (run, phase) = step.split_once('/').unwrap();
            let k: f64 = run.trim_start_matches("seed").parse().unwrap();
            match phase {
                "language.eval" => blimp(0.5 + 0.1 * k),
                "more.eval" => blimp(0.5 + 0.12 * k),
                other => panic!("{other}"),
            }
        });
        assert_eq!(report.phases, ["language", "more"]);
        assert_eq!(report.seeds, [1, 2, 3]);
        let row = &report.benchmarks[0];
        let close = |x: Option<f64>, y: f64| (x.unwrap() - y).abs() < 1e-9;
        assert!(close(row.accuracy[0], 0.7) && close(row.accuracy[1], 0.74));
        assert!(close(row.sd[0], 0.1) && close(row.sd[1], 0.12), "{row:?}");
        assert_eq!(row.runs[0].len(), 3);
        let compared = report.compare("more", "language").unwrap();
        let compared_row = &compared.benchmarks[0];
        assert!(close(compared_row.difference, 0.04));
        assert!(close(compared_row.sd_difference, 0.02));
        assert_eq!(compared_row.paired_runs, 3);
        let table = compared.table();
        assert!(table.contains("+4.0 ± 2.0"), "{table}");
        assert!(table.contains("74.0 ± 12.0"), "{table}");
        assert!(report.table(false).contains("70.0 ± 10.0"));
        // One run: no spreads, and the comparison is that run's.
        let single = report_of_runs("", |_| blimp(0.6));
        assert!(single.benchmarks[0].sd.is_empty() && single.seeds.is_empty());
        let compared = single.compare("more", "language").unwrap();
        assert_eq!(compared.benchmarks[0].paired_runs, 1);
        assert_eq!(compared.benchmarks[0].sd_difference, None);
    }
}
