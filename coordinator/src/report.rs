//! `outloud report JOB`: the eval steps' results as benchmarks x phases, beside the
//! BabyLM 2024 multimodal baselines; as text, JSON, or a self-contained HTML page with
//! a plot of every benchmark across the phases.
//!
//! It reads the scores eval tasks report (named as [`score_names`] says), so it needs
//! only the coordinator; per-item scores stay in the results JSON in the job's storage.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::scheduler::{Job, RunState};
use crate::spec::BASELINES;

/// How an eval step's scores are named: the contract between the worker that reports
/// them and the report and tables that read them.
pub mod score_names {
    /// A benchmark's accuracy (macro average over its files).
    pub fn accuracy(benchmark: &str) -> String {
        benchmark.to_string()
    }
    /// One file's (paradigm's) accuracy.
    pub fn file(benchmark: &str, file: &str) -> String {
        format!("{benchmark}/{file}")
    }
    pub fn chance(benchmark: &str) -> String {
        format!("{benchmark}:chance")
    }
    pub fn items(benchmark: &str) -> String {
        format!("{benchmark}:items")
    }
    /// Whether `name` is a benchmark's accuracy (not a file's, chance or count).
    pub fn is_accuracy(name: &str) -> bool {
        !name.contains('/') && !name.contains(':')
    }
    /// The file a name belongs to, when it is `benchmark`'s per-file accuracy.
    pub fn file_of<'a>(benchmark: &str, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(benchmark)?.strip_prefix('/')
    }
}

/// Accuracies are fractions; the report shows percentages (`-`: not scored).
pub fn percent(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{:.1}", 100.0 * v))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileRow {
    pub name: String,
    /// Accuracy after each evaluated phase (`None`: not scored there).
    pub accuracy: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchmarkRow {
    pub name: String,
    pub items: Option<u64>,
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
        let evals: Vec<(String, BTreeMap<String, f64>)> = job
            .phases
            .iter()
            .filter(|p| p.evaluation)
            .map(|p| {
                let trained = &job.spec.phases[p.spec_phase as usize].name;
                (trained.clone(), p.scores())
            })
            .collect();
        let mut names: Vec<String> = evals
            .iter()
            .flat_map(|(_, scores)| scores.keys())
            .filter(|k| score_names::is_accuracy(k))
            .cloned()
            .collect();
        names.sort_by_key(|n| {
            (
                BASELINES
                    .iter()
                    .position(|b| b.0 == n)
                    .unwrap_or(usize::MAX),
                n.clone(),
            )
        });
        names.dedup();
        let across = |key: &str| -> Vec<Option<f64>> {
            evals.iter().map(|(_, s)| s.get(key).copied()).collect()
        };
        let first = |key: &str| evals.iter().find_map(|(_, s)| s.get(key).copied());
        let benchmarks = names
            .iter()
            .map(|name| {
                let mut files: Vec<String> = evals
                    .iter()
                    .flat_map(|(_, s)| s.keys())
                    .filter_map(|k| score_names::file_of(name, k).map(str::to_string))
                    .collect();
                files.sort();
                files.dedup();
                let baseline = BASELINES.iter().find(|b| b.0 == name);
                BenchmarkRow {
                    name: name.clone(),
                    items: first(&score_names::items(name)).map(|n| n as u64),
                    chance: first(&score_names::chance(name)),
                    accuracy: across(&score_names::accuracy(name)),
                    git: baseline.map(|b| b.1),
                    flamingo: baseline.map(|b| b.2),
                    files: files
                        .into_iter()
                        .map(|file| FileRow {
                            accuracy: across(&score_names::file(name, &file)),
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

    /// Benchmarks x phases, accuracy in %; `detail` adds a row per file (paradigm).
    pub fn table(&self, detail: bool) -> String {
        let mut out = format!("job {}  {}  (accuracy, %)\n", self.job, self.state);
        if self.benchmarks.is_empty() {
            out += "no evaluation results yet\n";
            return out;
        }
        let width = |name: &str| name.len().max(8);
        let mut header = format!("{:<32} {:>7} {:>6}", "BENCHMARK", "ITEMS", "CHANCE");
        for phase in &self.phases {
            header += &format!(" {:>w$}", phase, w = width(phase));
        }
        out += &format!("{header} {:>6} {:>8}\n", "GIT", "FLAMINGO");
        for row in &self.benchmarks {
            let items = row.items.map_or("-".into(), |n| n.to_string());
            let mut line = format!("{:<32} {:>7} {:>6}", row.name, items, percent(row.chance));
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
                    let mut line = format!("  {:<30} {:>7} {:>6}", file.name, "", "");
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

    #[test]
    fn benchmarks_by_phase_with_baselines_and_paradigms() {
        let yaml = "name: r\nstorage: /tmp/r\ndata: [{name: t, kind: generated_text, words: 9}]\n\
            evaluation: {benchmarks: [{path: /e}]}\nphases:\n\
            - {name: language, kind: language, data: [t], steps: 1}\n\
            - {name: more, kind: language, data: [t], steps: 1}\n";
        let mut s = Scheduler::new(SchedulerConfig {
            lease_timeout_ms: 1000,
        });
        let w = s.register(WorkerInfo::for_tests("h"), 0);
        let job = s.submit(crate::spec::parse(yaml, "r.yaml").unwrap(), 0);
        let scores = |blimp: f64| -> BTreeMap<String, f64> {
            [
                ("blimp", blimp),
                ("blimp/passive_1", blimp),
                ("blimp:items", 840.0),
                ("blimp:chance", 0.5),
                ("world_vqa", 0.25),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
        };
        let mut blimp = [0.6, 0.7].into_iter();
        while let Some(a) = s.lease(&w, 1).unwrap() {
            let given = if a.evaluation {
                scores(blimp.next().unwrap())
            } else {
                BTreeMap::new()
            };
            s.complete(&w, &a.lease, Metrics::default(), "out".into(), given, 2)
                .unwrap();
        }
        let report = Report::of(s.job(&job).unwrap());
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
    }
}
