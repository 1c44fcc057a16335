//! Upper bounds on what a spec may ask for. A client must not be able to make the
//! coordinator (or a worker) allocate, loop or overflow without bound: a spec over any
//! of these is refused like any other mistake, with the field's location.

use super::JobSpec;

/// What one spec may ask for. The defaults suit a shared coordinator; an operator sets
/// others with the coordinator's flags (`outloud coordinator --max-shards ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of YAML.
    pub spec_bytes: usize,
    pub phases: usize,
    pub data_sources: usize,
    pub benchmark_sources: usize,
    /// Tasks of one step (each is a record the coordinator keeps and leases).
    pub shards: u32,
    /// Tasks of the whole job, every step's shards together.
    pub tasks: u64,
    /// Optimizer steps of one phase (and its warm-up and checkpoint intervals).
    pub steps: u64,
    /// Words one phase, one generated source or the whole budget may name.
    pub words: u64,
    pub pictures: u64,
    pub batch_size: u32,
    pub attempts: u32,
    /// Runs of one job (`seeds`): each repeats every phase.
    pub seeds: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            spec_bytes: 256 * 1024,
            phases: 64,
            data_sources: 64,
            benchmark_sources: 64,
            shards: 10_000,
            tasks: 20_000,
            steps: 1_000_000_000,
            words: 1_000_000_000_000,
            pictures: 100_000_000,
            batch_size: 65_536,
            attempts: 100,
            seeds: 16,
        }
    }
}

/// Model dimensions: (field, most).
const MODEL: [(&str, u32); 5] = [
    ("vocab_size", 1 << 20),
    ("context", 1 << 17),
    ("d_model", 1 << 16),
    ("n_layers", 1 << 10),
    ("n_heads", 1 << 10),
];
const VISION: [(&str, u32); 5] = [
    ("image_size", 4_096),
    ("patch_size", 4_096),
    ("d_model", 1 << 16),
    ("n_layers", 1 << 10),
    ("n_heads", 1 << 10),
];

fn over<T: PartialOrd + std::fmt::Display>(value: T, most: T) -> Option<String> {
    (value > most).then(|| format!("must be at most {most}, got {value}"))
}

/// What in `spec` is over a bound, as (field path, message).
pub fn problems(spec: &JobSpec, limits: &Limits) -> Vec<(String, String)> {
    let l = limits;
    let mut found = Vec::new();
    let mut check = |field: String, problem: Option<String>| {
        if let Some(message) = problem {
            found.push((field, message));
        }
    };
    check(
        "phases".into(),
        over(spec.phases.len(), l.phases).map(|m| format!("{m} phases")),
    );
    check(
        "data".into(),
        over(spec.data.len(), l.data_sources).map(|m| format!("{m} sources")),
    );
    check("word_budget".into(), over(spec.word_budget, l.words));
    let synthetic = spec.synthetic_word_budget;
    check(
        "synthetic_word_budget".into(),
        synthetic.and_then(|w| over(w, l.words)),
    );
    check(
        "seeds".into(),
        over(spec.seeds.len(), l.seeds).map(|m| format!("{m} seeds")),
    );
    for (i, source) in spec.data.iter().enumerate() {
        check(
            format!("data[{i}].words"),
            source.words.and_then(|w| over(w, l.words)),
        );
        let pictures = source.pictures.and_then(|p| over(p, l.pictures));
        check(format!("data[{i}].pictures"), pictures);
    }
    for (i, phase) in spec.phases.iter().enumerate() {
        let field = |name: &str| format!("phases[{i}].{name}");
        check(field("shards"), over(phase.shards, l.shards));
        let dream_shards = phase.synthesis.as_ref().map(|y| y.shards);
        check(
            field("synthesis.shards"),
            dream_shards.and_then(|n| over(n, l.shards)),
        );
        check(field("steps"), over(phase.steps, l.steps));
        check(field("words"), phase.words.and_then(|w| over(w, l.words)));
        check(field("batch_size"), over(phase.batch_size, l.batch_size));
        check(field("warmup_steps"), over(phase.warmup_steps, l.steps));
        check(
            field("checkpoint_every"),
            over(phase.checkpoint_every, l.steps),
        );
        check(field("max_attempts"), over(phase.max_attempts, l.attempts));
    }
    // Shards multiply: each step of each phase (and its eval step) keeps its tasks.
    let tasks = spec
        .phases
        .iter()
        .map(|p| {
            let dreams = p.synthesis.as_ref().map_or(0, |y| u64::from(y.shards));
            u64::from(p.shards).saturating_add(dreams.saturating_mul(u64::from(p.rounds)))
        })
        .fold(0u64, u64::saturating_add)
        .saturating_mul(spec.seeds.len().max(1) as u64);
    let problem = over(tasks, l.tasks)
        .map(|m| format!("{m} tasks in all, every phase's shards in every run (`seeds`)"));
    check("phases".into(), problem);
    let model = &spec.model;
    let given = [
        model.vocab_size,
        model.context,
        model.d_model,
        model.n_layers,
        model.n_heads,
    ];
    for ((name, most), value) in MODEL.iter().zip(given) {
        check(format!("model.{name}"), value.and_then(|v| over(v, *most)));
    }
    if let Some(vision) = &model.vision {
        let given = [
            vision.image_size,
            vision.patch_size,
            vision.d_model,
            vision.n_layers,
            vision.n_heads,
        ];
        for ((name, most), value) in VISION.iter().zip(given) {
            check(format!("model.vision.{name}"), over(value, *most));
        }
    }
    if let Some(evaluation) = &spec.evaluation {
        let sources = evaluation.benchmarks.len();
        let problem = over(sources, l.benchmark_sources).map(|m| format!("{m} sources"));
        check("evaluation.benchmarks".into(), problem);
        check(
            "evaluation.batch_size".into(),
            over(evaluation.batch_size, l.batch_size),
        );
        check(
            "evaluation.max_attempts".into(),
            over(evaluation.max_attempts, l.attempts),
        );
    }
    found
}
