//! Following a job: a live progress bar per phase on a terminal, a line per change
//! elsewhere (CI logs), until the job finishes.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::scheduler::{Job, RunState, Step};
use outloud_core::client::Connection;

const POLL: Duration = Duration::from_millis(300);
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub async fn watch(connection: &Connection, job_id: &str) -> anyhow::Result<Job> {
    let mut view = if std::io::stderr().is_terminal() {
        View::Bars(Bars::default())
    } else {
        View::Plain(HashMap::new(), Instant::now())
    };
    loop {
        let job = super::get_job(connection, job_id).await?;
        view.show(&job);
        if job.state.is_finished() {
            return Ok(job);
        }
        tokio::time::sleep(POLL).await;
    }
}

enum View {
    Bars(Bars),
    /// Last state printed per phase, and when progress was last printed.
    Plain(HashMap<String, RunState>, Instant),
}

#[derive(Default)]
struct Bars {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
}

impl View {
    fn show(&mut self, job: &Job) {
        match self {
            View::Bars(bars) => bars.show(job),
            View::Plain(states, last) => {
                for phase in &job.steps {
                    let m = phase.metrics();
                    let changed =
                        states.insert(phase.name.clone(), phase.state) != Some(phase.state);
                    if changed || (phase.state == RunState::Running && last.elapsed() > PLAIN_EVERY)
                    {
                        let progress = match (phase.is_evaluation(), m.total_steps, m.total_items) {
                            (true, _, 0) | (false, 0, _) => String::new(),
                            (true, _, _) => format!(" items {}/{}", m.items, m.total_items),
                            _ => format!(" step {}/{}{}", m.step, m.total_steps, loss(phase)),
                        };
                        eprintln!("{} {}: {}{progress}", job.id, phase.name, phase.state);
                        *last = Instant::now();
                    }
                }
            }
        }
    }
}

impl Bars {
    fn show(&mut self, job: &Job) {
        let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg}")
            .expect("the template is valid")
            .progress_chars("=> ");
        for phase in &job.steps {
            let bar = self.bars.entry(phase.name.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(1));
                bar.set_style(style.clone());
                bar.set_prefix(phase.name.clone());
                bar
            });
            let m = phase.metrics();
            let (done, total) = if phase.is_evaluation() {
                (m.items, m.total_items)
            } else {
                (m.step, m.total_steps)
            };
            bar.set_length(total.max(1));
            bar.set_position(done);
            bar.set_message(format!("{}{}", phase.state, loss(phase)));
            if phase.state.is_finished() && !bar.is_finished() {
                bar.finish();
            }
        }
    }
}

/// A training phase's last loss, once it has reported; nothing for eval steps.
fn loss(phase: &Step) -> String {
    let m = phase.metrics();
    if m.total_steps > 0 && !phase.is_evaluation() {
        format!(" loss {:.3}", m.loss)
    } else {
        String::new()
    }
}
