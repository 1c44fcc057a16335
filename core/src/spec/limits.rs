//! Upper bounds on what a spec may ask for. A client must not be able to make the
//! coordinator (or a worker) allocate, loop or overflow without bound: a spec over any
//! of these is refused like any other mistake, with the field's location.

use super::JobSpec;

/// Bytes of YAML a spec may have.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;
pub const MAX_PHASES: usize = 64;
pub const MAX_DATA_SOURCES: usize = 64;
pub const MAX_BENCHMARK_SOURCES: usize = 64;
/// Tasks of one step (each is a record the coordinator keeps and leases).
pub const MAX_SHARDS: u32 = 10_000;
pub const MAX_STEPS: u64 = 1_000_000_000;
/// Words one phase, one generated source or the whole budget may name.
pub const MAX_WORDS: u64 = 1_000_000_000_000;
pub const MAX_PICTURES: u64 = 100_000_000;
pub const MAX_BATCH_SIZE: u32 = 65_536;
pub const MAX_ATTEMPTS: u32 = 100;
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
pub fn problems(spec: &JobSpec) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut check = |field: String, problem: Option<String>| {
        if let Some(message) = problem {
            found.push((field, message));
        }
    };
    check(
        "phases".into(),
        over(spec.phases.len(), MAX_PHASES).map(|m| format!("{m} phases")),
    );
    check(
        "data".into(),
        over(spec.data.len(), MAX_DATA_SOURCES).map(|m| format!("{m} sources")),
    );
    check("word_budget".into(), over(spec.word_budget, MAX_WORDS));
    for (i, source) in spec.data.iter().enumerate() {
        check(
            format!("data[{i}].words"),
            source.words.and_then(|w| over(w, MAX_WORDS)),
        );
        let pictures = source.pictures.and_then(|p| over(p, MAX_PICTURES));
        check(format!("data[{i}].pictures"), pictures);
    }
    for (i, phase) in spec.phases.iter().enumerate() {
        let field = |name: &str| format!("phases[{i}].{name}");
        check(field("shards"), over(phase.shards, MAX_SHARDS));
        check(field("steps"), over(phase.steps, MAX_STEPS));
        check(field("words"), phase.words.and_then(|w| over(w, MAX_WORDS)));
        check(field("batch_size"), over(phase.batch_size, MAX_BATCH_SIZE));
        check(field("warmup_steps"), over(phase.warmup_steps, MAX_STEPS));
        check(
            field("checkpoint_every"),
            over(phase.checkpoint_every, MAX_STEPS),
        );
        check(
            field("max_attempts"),
            over(phase.max_attempts, MAX_ATTEMPTS),
        );
    }
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
        let problem = over(sources, MAX_BENCHMARK_SOURCES).map(|m| format!("{m} sources"));
        check("evaluation.benchmarks".into(), problem);
        check(
            "evaluation.batch_size".into(),
            over(evaluation.batch_size, MAX_BATCH_SIZE),
        );
        check(
            "evaluation.max_attempts".into(),
            over(evaluation.max_attempts, MAX_ATTEMPTS),
        );
    }
    found
}
