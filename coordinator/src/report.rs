//! `outloud report JOB`: the eval steps' results as benchmarks x phases, beside the
//! BabyLM 2024 multimodal baselines; as text, JSON, or a self-contained HTML page with
//! a plot of every benchmark across the phases.
//!
//! It reads the typed results eval tasks report, so it needs only the coordinator;
//! per-item scores stay in the results JSON in the job's storage.

use outloud_core::results::{BenchmarkScore, ScoreMode, TaskResults, percent};
use serde::Serialize;

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
    /// Accuracy after each evaluated phase (`None`: not scored there).
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
    pub accuracy: Vec<Option<f64>>,
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
    pub benchmarks: Vec<BenchmarkRow>,
}

impl Report {
    pub fn of(job: &Job) -> Self {
        let evals: Vec<(String, TaskResults)> = job
            .steps
            .iter()
            .filter_map(|step| match step.kind {
                StepKind::Evaluate { phase } => {
                    Some((job.spec.phases[phase as usize].name.clone(), step.results()))
                }
                _ => None,
            })
            .collect();
        // An image-conditioned benchmark scored without pictures gets a row of its own.
        let seen_with_pictures: Vec<&str> = evals
            .iter()
            .flat_map(|(_, results)| results.overall())
            .filter(|b| b.mode == Some(ScoreMode::WithPictures))
            .map(|b| b.benchmark.as_str())
            .collect();
        let key = |b: &BenchmarkScore| -> RowKey {
            let pictured = seen_with_pictures.contains(&b.benchmark.as_str())
                || TEXT_ONLY_BASELINES.iter().any(|t| t.0 == b.benchmark);
            let text_only = b.mode == Some(ScoreMode::TextOnly) && pictured;
            (b.benchmark.clone(), text_only)
        };
        let mut keys: Vec<RowKey> = evals
            .iter()
            .flat_map(|(_, results)| results.overall())
            .map(key)
            .collect();
        keys.sort_by_key(|(n, text_only)| {
            let published = BASELINES.iter().position(|b| b.0 == n);
            (published.unwrap_or(usize::MAX), n.clone(), *text_only)
        });
        keys.dedup();
        // Accuracy after each evaluated phase.
        let across = |score: &dyn Fn(&TaskResults) -> Option<f64>| -> Vec<Option<f64>> {
            evals.iter().map(|(_, results)| score(results)).collect()
        };
        let benchmarks = keys
            .iter()
            .map(|row| {
                let name = row.0.as_str();
                let overall = |r: &'_ TaskResults| -> Option<BenchmarkScore> {
                    r.overall().find(|b| key(b) == *row).cloned()
                };
                let first = evals.iter().find_map(|(_, r)| overall(r));
                let mut files: Vec<String> = evals
                    .iter()
                    .flat_map(|(_, r)| r.files(name).filter(|f| key(f) == *row))
                    .filter_map(|f| f.file.clone())
                    .collect();
                files.sort();
                files.dedup();
                let baseline = if row.1 {
                    TEXT_ONLY_BASELINES.iter().find(|b| b.0 == name)
                } else {
                    BASELINES.iter().find(|b| b.0 == name)
                };
                BenchmarkRow {
                    name: if row.1 {
                        format!("{name} (text-only)")
                    } else {
                        name.to_string()
                    },
                    items: first.as_ref().map(|b| b.items),
                    unusable: first.as_ref().map(|b| b.unusable),
                    chance: first.as_ref().map(|b| b.chance),
                    accuracy: across(&|r| overall(r).map(|b| b.accuracy)),
                    git: baseline.map(|b| b.1),
                    flamingo: baseline.map(|b| b.2),
                    files: files
                        .into_iter()
                        .map(|file| FileRow {
                            accuracy: across(&|r| {
                                let mut files = r.files(name).filter(|f| key(f) == *row);
                                let found = files.find(|f| f.file.as_deref() == Some(&file));
                                found.map(|f| f.accuracy)
                            }),
                            name: file,
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            job: job.id.clone(),
            state: job.state,
            phases: evals.into_iter().map(|(name, _)| name).collect(),
            benchmarks,
        }
    }

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
                let (x, y) = (row.accuracy[ia], row.accuracy[ib]);
                ComparedRow {
                    name: row.name.clone(),
                    a: x,
                    b: y,
                    difference: x.zip(y).map(|(x, y)| x - y),
                }
            })
            .collect();
        Ok(Comparison {
            job: self.job.clone(),
            a: a.into(),
            b: b.into(),
            benchmarks: rows,
        })
    }

    /// Benchmarks x phases, accuracy in %; `detail` adds a row per file (paradigm).
    pub fn table(&self, detail: bool) -> String {
        let mut out = format!("job {}  {}  (accuracy, %)\n", self.job, self.state);
        if self.benchmarks.is_empty() {
            out += "no evaluation results yet\n";
            return out;
        }
        let width = |name: &str| name.len().max(8);
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
            for (phase, value) in self.phases.iter().zip(&row.accuracy) {
                line += &format!(" {:>w$}", percent(*value), w = width(phase));
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
        out
    }

    /// A self-contained page: the table and an SVG plot, no scripts or links.
    pub fn html(&self) -> String {
        let mut rows = String::new();
        for row in &self.benchmarks {
            let cells: String = row
                .accuracy
                .iter()
                .map(|v| format!("<td>{}</td>", percent(*v)))
                .collect();
            let published = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            rows += &format!(
                "<tr><th>{}</th><td>{}</td>{cells}<td>{}</td><td>{}</td></tr>\n",
                escape(&row.name),
                percent(row.chance),
                published(row.git),
                published(row.flamingo)
            );
        }
        let heads: String = self
            .phases
            .iter()
            .map(|p| format!("<th>after {}</th>", escape(p)))
            .collect();
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Outloud report: {job}</title>\n\
             <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th:first-child{{text-align:left}}</style>\n\
             </head><body>\n<h1>Zero-shot evaluation: {job}</h1>\n<p>Job state: {state}. Accuracy in %, \
             BabyLM 2024 multimodal baselines (GIT, Flamingo) beside ours.</p>\n\
             {plot}\n<table><tr><th>benchmark</th><th>chance</th>{heads}<th>GIT</th><th>Flamingo</th></tr>\n{rows}</table>\n\
             </body></html>\n",
            job = escape(&self.job),
            state = self.state,
            plot = self.plot(),
        )
    }

    /// Every benchmark's accuracy across the phases, one line each, on 0-100 %.
    fn plot(&self) -> String {
        const COLOURS: [&str; 8] = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
        ];
        let (w, h, left, top, bottom) = (720.0, 360.0, 50.0, 20.0, 40.0);
        let plot_w = w - left - 200.0;
        let plot_h = h - top - bottom;
        let n = self.phases.len().max(1);
        let x = |i: usize| left + plot_w * (i as f64 + 0.5) / n as f64;
        let y = |v: f64| top + plot_h * (1.0 - v);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"accuracy across phases\">\n"
        );
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
            svg += &format!(
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n",
                left + plot_w,
                left - 6.0,
                y(tick) + 4.0,
                tick * 100.0,
                y = y(tick)
            );
        }
        svg += &format!(
            "<text transform=\"translate(14,{}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">accuracy, %</text>\n",
            top + plot_h / 2.0
        );
        for (i, phase) in self.phases.iter().enumerate() {
            svg += &format!(
                "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n",
                x(i),
                h - 15.0,
                escape(phase)
            );
        }
        for (k, row) in self.benchmarks.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let points: Vec<(f64, f64)> = row
                .accuracy
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (x(i), y(v))))
                .collect();
            let path: Vec<String> = points
                .iter()
                .map(|(a, b)| format!("{a:.1},{b:.1}"))
                .collect();
            svg += &format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
                path.join(" ")
            );
            for (a, b) in &points {
                svg +=
                    &format!("<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"3\" fill=\"{colour}\"/>\n");
            }
            svg += &format!(
                "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{colour}\">{}</text>\n",
                left + plot_w + 12.0,
                top + 16.0 * k as f64 + 10.0,
                escape(&row.name)
            );
        }
        svg + "</svg>"
    }
}

/// Two evaluated phases side by side (`outloud report JOB --compare A B`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub job: String,
    pub a: String,
    pub b: String,
    pub benchmarks: Vec<ComparedRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparedRow {
    pub name: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// a - b, as a fraction.
    pub difference: Option<f64>,
}

impl Comparison {
    pub fn table(&self) -> String {
        let w = |name: &str| name.len().max(8);
        let mut out = format!(
            "job {}  {} vs {}  (accuracy, %)\n",
            self.job, self.a, self.b
        );
        out += &format!(
            "{:<32} {:>wa$} {:>wb$} {:>8}\n",
            "BENCHMARK",
            self.a,
            self.b,
            "A - B",
            wa = w(&self.a),
            wb = w(&self.b)
        );
        for row in &self.benchmarks {
            let difference = row
                .difference
                .map_or("-".into(), |d| format!("{:+.1}", 100.0 * d));
            out += &format!(
                "{:<32} {:>wa$} {:>wb$} {:>8}\n",
                row.name,
                percent(row.a),
                percent(row.b),
                difference,
                wa = w(&self.a),
                wb = w(&self.b)
            );
        }
        out
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Metrics, Scheduler, SchedulerConfig, WorkerInfo};

    /// The report of a job of two language phases, `language` and `more`, whose eval
    /// steps report what `evaluated` gives, in order.
    fn report_of(mut evaluated: impl FnMut() -> TaskResults) -> Report {
        let yaml = "name: r\nstorage: /tmp/r\ndata: [{name: t, kind: generated_text, words: 9}]\n\
            evaluation: {benchmarks: [{path: /e}]}\nphases:\n\
            - {name: language, kind: language, data: [t], steps: 1}\n\
            - {name: more, kind: language, data: [t], steps: 1}\n";
        let mut s = Scheduler::new(SchedulerConfig {
            lease_timeout_ms: 1000,
            instance: 0,
        });
        let w = s.register(WorkerInfo::for_tests("h"), 0);
        let job = s
            .submit(outloud_core::spec::parse(yaml, "r.yaml").unwrap(), 0)
            .unwrap();
        while let Some(a) = s.lease(&w, 1).unwrap() {
            let given = if matches!(a.spec.work, outloud_core::task_spec::Work::Evaluate(_)) {
                evaluated()
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
}
