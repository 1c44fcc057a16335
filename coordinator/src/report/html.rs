//! The report as a self-contained HTML page: the table, an SVG plot of every benchmark
//! across the phases and a loss chart per training step, no scripts or links.

use outloud_core::results::percent;

use super::{Report, with_sd};

impl Report {
    /// A self-contained page: the table and an SVG plot, no scripts or links.
    pub fn html(&self) -> String {
        let mut rows = String::new();
        for row in &self.benchmarks {
            let cells: String = row
                .accuracy
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let sd = row.sd.get(i).copied().flatten();
                    format!("<td>{}</td>", with_sd(*v, sd))
                })
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
             {glue}<h2>Training loss</h2>\n{curves}\
             </body></html>\n",
            job = escape(&self.job),
            state = self.state,
            plot = self.plot(),
            curves = super::curves::svg(&self.curves),
            glue = self.glue_html(),
        )
    }

    /// GLUE per fine-tuning step: the mean over the tasks that ran, then each task.
    fn glue_html(&self) -> String {
        if self.glue.is_empty() {
            return String::new();
        }
        let (git, flamingo) = super::glue::BASELINES_2024;
        let mut rows = String::new();
        for column in &self.glue {
            rows += &format!(
                "<tr><th>{}</th><td>{}</td><td>{}/{} tasks</td></tr>\n",
                escape(&column.step),
                percent(column.mean),
                column.tasks_run,
                column.tasks.len()
            );
            for task in &column.tasks {
                let score = match &task.not_run {
                    Some(why) => format!("not run: {}", escape(why)),
                    None => percent(task.accuracy),
                };
                let chance = task
                    .majority
                    .map_or(String::new(), |m| format!("majority {}", percent(Some(m))));
                rows += &format!(
                    "<tr><td>{}</td><td>{score}</td><td>{chance}</td></tr>\n",
                    escape(&task.task)
                );
            }
        }
        format!(
            "<h2>GLUE (accuracy, %)</h2>\n<p>GIT {git:.1}, Flamingo {flamingo:.1}: 2024 means over 11 \
             tasks, not directly comparable.</p>\n<table>{rows}</table>\n"
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

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
