//! GLUE's inputs, data checks, scores and fine-tuning, on the real BabyLM files in
//! `../shared/data/glue` where a test reads data.

use std::path::PathBuf;

use tch::{Device, nn};

use super::classifier::Classifier;
use super::data::{self, Split};
use super::finetune::{Tunable, finetune};
use super::score::{accuracy, binary_f1, predictions_json};
use super::tasks::GlueTask;
use crate::model::GptConfig;
use crate::tokenizer::Tokenizer;

fn glue_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/glue")
}

fn split(task: GlueTask, file: &str) -> Split {
    let text = std::fs::read_to_string(glue_dir().join(file)).unwrap();
    data::parse(task, file, &text).unwrap()
}

/// The first line of each validation file, as the 2025 pipeline's dataset builds it.
#[test]
fn inputs_are_the_pipelines_strings() {
    let first = |task: GlueTask| {
        let split = split(task, &task.valid_file());
        let example = split.lines[0].clone().unwrap();
        (example.first, example.second, example.label)
    };
    let (a, b, label) = first(GlueTask::Wsc);
    assert_eq!(a, "Does \"he\" refer to \"Joe\" in this passage?");
    assert_eq!(
        b,
        "Joe Joe's uncle can still beat him at tennis, even though he is 30 years older."
    );
    assert_eq!(label, Some(0));
    let (a, b, label) = first(GlueTask::Multirc);
    assert_eq!(
        a,
        "Question: What communication could not be sent? Answer: Wire"
    );
    assert!(b.starts_with("He read the telegram again.  In desperation he went back"));
    assert!(label.is_some());
    let (a, b, label) = first(GlueTask::Boolq);
    assert_eq!(a, "can u get held back in 8th grade");
    assert!(b.starts_with("Grade retention -- In most countries"));
    assert_eq!(label, Some(1));
    let (a, b, label) = first(GlueTask::Mnli);
    assert_eq!(
        a,
        "You'll even be able to consult a traditional herbalist to cure your ailments."
    );
    assert_eq!(
        b,
        "You will not be allowed to consult with traditional herbalists."
    );
    assert_eq!(label, Some(2));
    let (a, b, _) = first(GlueTask::Mrpc);
    assert!(a.starts_with("\" I don 't know if the person") && b.ends_with("Parrish said ."));
    let (a, b, label) = first(GlueTask::Qqp);
    assert_eq!(
        (a.as_str(), b.as_str()),
        (
            "What is the solution of Kashmir problem?",
            "What is solution to Kashmir issue?"
        )
    );
    assert_eq!(label, Some(1));
    let (a, b, label) = first(GlueTask::Rte);
    assert!(a.starts_with("Deceased U.S. soldiers"));
    assert_eq!(b, "The U.S. military evacuated U.S. citizens.");
    assert_eq!(label, Some(1));
    // Every line of every staged file reads.
    for task in GlueTask::ALL {
        for file in [task.train_file(), task.valid_file()] {
            if glue_dir().join(&file).exists() {
                let split = split(task, &file);
                assert!(split.malformed().is_empty(), "{file}");
                assert!(!split.lines.is_empty(), "{file}");
            }
        }
    }
}

#[test]
fn malformed_lines_are_named_and_a_label_outside_the_set_is_refused() {
    let text = "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": 0}\n\
                not json\n\
                {\"sentence1\": \"a\", \"label\": 1}\n\
                \n\
                {\"sentence1\": \"c\", \"sentence2\": \"d\", \"label\": 1}\n";
    let split = data::parse(GlueTask::Rte, "rte.train.jsonl", text).unwrap();
    assert_eq!(split.lines.len(), 4, "blank lines are skipped");
    let malformed = split.malformed();
    assert_eq!(malformed.len(), 2, "{malformed:?}");
    assert!(
        malformed[0].starts_with("line 2: not JSON"),
        "{malformed:?}"
    );
    assert_eq!(malformed[1], "line 3: no `sentence2`");
    assert_eq!(split.examples().count(), 2);
    let bad = "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": 3}\n";
    let refused = data::parse(GlueTask::Mnli, "mnli.train.jsonl", bad).unwrap_err();
    assert_eq!(
        refused,
        "mnli.train.jsonl:1: label 3 is not one of mnli's labels 0..2"
    );
    let negative = "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": -1}\n";
    assert!(data::parse(GlueTask::Mrpc, "mrpc.valid.jsonl", negative).is_err());
}

#[test]
fn scores_and_the_predictions_file() {
    let labels = [Some(1), Some(0), Some(1), Some(1), None];
    let predictions = [1, 1, 0, 1, 0];
    assert_eq!(accuracy(&predictions, &labels), Some(0.5));
    // TP 2, FP 1, FN 1: 4 / 6.
    assert!((binary_f1(&predictions, &labels).unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(binary_f1(&[0, 0], &[Some(0), Some(0)]), Some(0.0));
    assert_eq!(accuracy(&[1], &[None]), None);
    let json = predictions_json(GlueTask::Rte, &[1, 0]);
    assert_eq!(
        json,
        serde_json::json!({"rte": {"predictions": [
            {"id": "rte_0", "pred": 1}, {"id": "rte_1", "pred": 0}
        ]}})
    );
}

/// A tiny random GPT and a tokenizer trained on the task's own text. Its weights come
/// from our own seeded generator and it has no dropout: torch's global generator is
/// shared with the tests running beside this one, so nothing here may draw from it.
fn tiny(task: GlueTask, train: &Split) -> Tunable {
    let texts: Vec<String> = train
        .examples()
        .take(300)
        .flat_map(|(_, e)| [e.first.clone(), e.second.clone()])
        .collect();
    let tokenizer = Tokenizer::train(&texts, 400).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let config = GptConfig {
        vocab_size: tokenizer.vocab_size() as u32,
        ..crate::model::test_config(128)
    };
    let model = Classifier::new(&vs.root(), config, task.labels(), 0.0);
    let mut rng = crate::rng::Rng::new(7);
    tch::no_grad(|| {
        let mut variables = vs.variables().into_iter().collect::<Vec<_>>();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        // The GPT's matrices uniform with sd 0.02, the head's as PyTorch's `Linear`
        // draws them (bound 1/sqrt(fan-in)); norms and biases keep their constant init.
        for (name, mut var) in variables.into_iter().filter(|(_, v)| v.dim() >= 2) {
            let bound = match name.starts_with(super::classifier::HEAD) {
                true => 1.0 / (var.size()[1] as f64).sqrt(),
                false => 0.02 * 3f64.sqrt(),
            };
            let values: Vec<f32> = (0..var.numel())
                .map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32)
                .collect();
            var.copy_(&tch::Tensor::from_slice(&values).view(var.size().as_slice()));
        }
    });
    Tunable {
        model,
        vs,
        tokenizer,
    }
}

#[test]
fn fine_tuning_rte_and_wsc_moves_accuracy_and_predicts_every_line_in_order() {
    for task in [GlueTask::Rte, GlueTask::Wsc] {
        let train = split(task, &task.train_file());
        let valid = split(task, &task.valid_file());
        let tunable = tiny(task, &train);
        let settings = super::tasks::Settings {
            learning_rate: 1e-3,
            batch_size: 16,
            epochs: 2,
            sequence_length: 128,
            max_steps: Some(20),
            ..task.defaults()
        };
        let mut losses = Vec::new();
        let outcome = finetune(&tunable, task, &train, &valid, &settings, |_, _, loss| {
            losses.push(loss);
            Ok(())
        })
        .unwrap();
        assert_eq!(outcome.steps, 20);
        assert_eq!(losses.len(), 20);
        assert_eq!(outcome.predictions.len(), valid.lines.len(), "{task:?}");
        assert_ne!(
            outcome.accuracy, outcome.initial_accuracy,
            "{task:?}: fine-tuning did not move accuracy"
        );
        // The predictions are the kept epoch's, line by line: scoring them again gives
        // the accuracy reported.
        let labels: Vec<Option<u32>> = valid
            .lines
            .iter()
            .map(|l| l.as_ref().unwrap().label)
            .collect();
        assert_eq!(accuracy(&outcome.predictions, &labels), outcome.accuracy);
        assert!(outcome.best_epoch >= 1);
    }
}

/// The spec checks task names against core's list; this crate's tasks are the same.
#[test]
fn the_tasks_are_the_ones_specs_may_name() {
    let names: Vec<&str> = GlueTask::ALL.iter().map(|t| t.name()).collect();
    assert_eq!(names, outloud_core::spec::GLUE_TASKS);
}
