//! Every message survives the trip to the wire and back; an assignment of another
//! protocol version is refused.

use super::*;
use crate::results::{
    BenchmarkScore, Counts, GlueScore, ProbeScore, ScoreMode, SourceReport, SynthesisCounts,
    TaskResults,
};

fn assignment() -> Assignment {
    let yaml = "name: t\nstorage: /s\n\
        data: [{name: b, kind: picture_book, pictures: 5}]\n\
        model: {vision: {image_size: 16, patch_size: 8}}\n\
        evaluation: {benchmarks: [{data: b}, {path: /e, images: /i, limit: 3}]}\n\
        phases: [{name: l, kind: language, data: [b], steps: 5},\
                 {name: v, kind: vision_language, data: [b], steps: 5, words: 9}]\n";
    let spec = crate::spec::parse(yaml, "t.yaml").unwrap();
    Assignment {
        lease: LeaseRef {
            task: "j/0/0".parse().unwrap(),
            epoch: 3,
        },
        job_id: "j".into(),
        step: "v".into(),
        shards: 1,
        spec: TaskSpec::train(&spec, 1).unwrap(),
        resume_checkpoint: Some("file:///r".into()),
        input_checkpoint: Some("file:///j/l/final".into()),
        input_step: Some("l".into()),
        output_root: "file:///j/v/attempt-3".into(),
        rank: 1,
        world_size: 3,
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    }
}

#[test]
fn assignments_and_task_specs_survive_the_wire() {
    let a = assignment();
    assert_eq!(assignment_from(assignment_to(&a)).unwrap(), a);
    let yaml = "name: t\nstorage: /s\ndata: [{name: b, kind: picture_book, pictures: 5}]\n\
        evaluation: {benchmarks: [{data: b}, {path: /e, images: /i, limit: 3}],\
          glue: {path: /g, tasks: [rte, wsc], settings: {wsc: {epochs: 2, learning_rate: 0.001}}}}\n\
        phases: [{name: l, kind: language, data: [b], steps: 5}, {name: n, kind: noop}]\n";
    let spec = crate::spec::parse(yaml, "t.yaml").unwrap();
    for spec in [
        TaskSpec::prepare(&spec),
        TaskSpec::evaluate(&spec).unwrap(),
        TaskSpec::finetune(&spec).unwrap(),
        TaskSpec::train(&spec, 1).unwrap(),
    ] {
        assert_eq!(task_spec_from(task_spec_to(&spec)).unwrap(), spec);
    }
}

#[test]
fn an_assignment_of_another_protocol_version_is_refused_with_what_to_do() {
    let mut newer = assignment_to(&assignment());
    newer.protocol_version = PROTOCOL_VERSION + 1;
    let error = assignment_from(newer).unwrap_err();
    assert!(
        error.contains(&format!("protocol version {}", PROTOCOL_VERSION + 1))
            && error.contains("upgrade this worker"),
        "{error}"
    );
    let mut older = assignment_to(&assignment());
    older.protocol_version = 0;
    assert!(
        assignment_from(older)
            .unwrap_err()
            .contains("upgrade the coordinator")
    );
}

#[test]
fn results_survive_the_wire() {
    let results = TaskResults {
        benchmarks: vec![BenchmarkScore {
            benchmark: "blimp".into(),
            file: Some("anaphor".into()),
            mode: Some(ScoreMode::TextOnly),
            items: 10,
            correct: 7,
            accuracy: 0.7,
            chance: 0.5,
            unusable: 1,
        }],
        probes: vec![ProbeScore {
            name: "caption_accuracy".into(),
            value: 0.3,
            chance: Some(0.05),
            items: 20,
        }],
        counts: Counts {
            items_scored: 10,
            items_unusable: 1,
            images_skipped: 2,
            synthesis: SynthesisCounts {
                pictures: 4,
                captions: 8,
                kept: 5,
                too_short: 1,
                too_long: 0,
                duplicates: 2,
                unlikely: 0,
            },
        },
        sources: vec![SourceReport {
            name: "book".into(),
            url: "file:///s/data/book".into(),
            files: 9,
        }],
        glue: vec![
            GlueScore {
                task: "mrpc".into(),
                items: 204,
                correct: 140,
                accuracy: Some(140.0 / 204.0),
                f1: Some(0.8),
                majority: Some(139.0 / 204.0),
                best_epoch: 3,
                steps: 120,
                malformed: 1,
                not_run: None,
                predictions: Some("file:///s/p.json".into()),
            },
            GlueScore::not_run("boolq", "no training data".into()),
        ],
    };
    assert_eq!(results_from(Some(results_to(&results))), results);
}
