use super::*;

fn errors(yaml: &str) -> Vec<SpecError> {
    parse(yaml, "job.yaml")
        .expect_err("the spec should be refused")
        .0
}

const GOOD: &str = "\
name: demo
storage: /tmp/outloud
data:
  - name: story
    kind: generated_text
    words: 1000
phases:
  - name: language
    kind: language
    data: [story]
    steps: 10
";

#[test]
fn a_good_spec_parses_with_defaults() {
    let spec = parse(GOOD, "job.yaml").unwrap();
    assert_eq!(spec.phases[0].batch_size, 16);
    assert_eq!(spec.model.shape().unwrap().d_model, 64);
}

#[test]
fn unknown_fields_are_located() {
    let yaml = GOOD.replace("    steps: 10", "    steps: 10\n    stpes: 3");
    let e = &errors(&yaml)[0];
    assert_eq!((e.line, e.field.as_str()), (12, "phases[0]"), "{e}");
    assert!(e.message.contains("unknown field `stpes`"), "{e}");
    assert!(e.to_string().starts_with("job.yaml:12:5: "), "{e}");
}

#[test]
fn wrong_types_and_negative_numbers_are_located() {
    let e = &errors(&GOOD.replace("steps: 10", "steps: ten"))[0];
    assert_eq!(e.line, 11, "{e}");
    assert!(e.message.contains("invalid type"), "{e}");
    let e = &errors(&GOOD.replace("words: 1000", "words: -5"))[0];
    assert_eq!(e.line, 6, "{e}");
}

#[test]
fn semantic_problems_name_their_field_and_line() {
    let yaml = GOOD
        .replace("data: [story]", "data: [stroy]")
        .replace("steps: 10", "steps: 0");
    let found = errors(&yaml);
    let fields: Vec<&str> = found.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"phases[0].steps"), "{fields:?}");
    let data = found
        .iter()
        .find(|e| e.field == "phases[0].data[0]")
        .unwrap();
    assert_eq!((data.line, data.column), (10, 12), "{data}");
    assert!(data.message.contains("stroy"));
}

#[test]
fn retention_keeps_at_least_one_checkpoint() {
    let keep = |n: &str| {
        GOOD.replace(
            "steps: 10",
            &format!("steps: 10\n    keep_checkpoints: {n}"),
        )
    };
    assert_eq!(
        parse(&keep("3"), "job.yaml").unwrap().phases[0].keep_checkpoints,
        Some(3)
    );
    let e = &errors(&keep("0"))[0];
    assert_eq!(
        (e.field.as_str(), e.line),
        ("phases[0].keep_checkpoints", 12),
        "{e}"
    );
}

#[test]
fn model_shapes_are_checked() {
    let yaml = GOOD.replace("phases:", "model: {preset: tiny, n_heads: 3}\nphases:");
    assert_eq!(errors(&yaml)[0].field, "model.n_heads");
    let yaml = GOOD.replace("phases:", "model: {preset: huge}\nphases:");
    assert_eq!(errors(&yaml)[0].field, "model.preset");
}

#[test]
fn a_missing_required_field_is_refused() {
    let e = &errors(&GOOD.replace("storage: /tmp/outloud\n", ""))[0];
    assert!(e.message.contains("missing field `storage`"), "{e}");
}

#[test]
fn phases_may_not_plan_more_words_than_the_budget() {
    let yaml = GOOD
        .replace("name: demo\n", "name: demo\nword_budget: 1000\n")
        .replace("steps: 10", "steps: 10\n    words: 1500");
    let e = &errors(&yaml)[0];
    assert_eq!(e.field, "phases");
    assert!(
        e.message
            .contains("plan 1500 words, more than the word_budget of 1000"),
        "{e}"
    );
    let fits = GOOD.replace("steps: 10", "steps: 10\n    words: 900");
    assert_eq!(parse(&fits, "job.yaml").unwrap().phases[0].words, Some(900));
}

#[test]
fn pictures_need_a_vision_path_and_phases_read_only_their_kinds_of_data() {
    let yaml = GOOD.replace("kind: language", "kind: vision_language");
    let fields: Vec<String> = errors(&yaml).into_iter().map(|e| e.field).collect();
    assert!(fields.contains(&"phases[0].kind".to_string()), "{fields:?}");
    assert!(
        fields.contains(&"phases[0].data[0]".to_string()),
        "generated text has no pictures: {fields:?}"
    );
    let yaml = GOOD.replace("phases:", "model: {vision: {image_size: 30}}\nphases:");
    assert_eq!(errors(&yaml)[0].field, "model.vision.patch_size");
    let yaml = GOOD.replace(
        "kind: generated_text\n    words: 1000",
        "kind: picture_book\n    pictures: 0",
    );
    assert!(errors(&yaml)[0].message.contains("`pictures` > 0"));
}

#[test]
fn evaluation_sources_are_checked_and_located() {
    let yaml = format!(
        "{GOOD}evaluation:\n  benchmarks:\n    - {{path: /x, data: story}}\n    - {{data: story}}\n    - {{path: /y, limit: 0}}\n"
    );
    let found = errors(&yaml);
    let at = |field: &str| {
        found
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error for {field}: {found:?}"))
    };
    assert_eq!(at("evaluation.benchmarks[0]").line, 14);
    assert!(
        at("evaluation.benchmarks[1].data")
            .message
            .contains("picture_book")
    );
    assert_eq!(at("evaluation.benchmarks[2].limit").line, 16);
    let fine = format!("{GOOD}evaluation: {{benchmarks: [{{path: /x}}]}}\n");
    let spec = parse(&fine, "job.yaml").unwrap();
    assert!(spec.evaluates_after(0));
    let off = fine.replace("steps: 10", "steps: 10\n    eval: false");
    assert!(!parse(&off, "job.yaml").unwrap().evaluates_after(0));
}

const TREE: &str = "\
name: tree
storage: /tmp/outloud
word_budget: 1000
data:
  - {name: book, kind: picture_book, pictures: 10}
model:
  vision: {image_size: 16, patch_size: 8}
phases:
  - {name: language, kind: language, data: [book], steps: 1, words: 400}
  - {name: vision, kind: vision_language, data: [book], steps: 1, words: 300}
  - {name: tasks, kind: tasks, data: [book], steps: 1, words: 300}
  - {name: tasks-long, kind: tasks, data: [book], steps: 1, words: 300, from: vision}
";

#[test]
fn branches_start_from_a_named_phase_and_the_budget_is_per_path() {
    let spec = parse(TREE, "tree.yaml").unwrap();
    assert_eq!(spec.starts_from(2), Some("vision"));
    assert_eq!(spec.starts_from(3), Some("vision"));
    assert_eq!(spec.lineage(3), Some(vec![0, 1, 3]));
    // Each path plans 1000 words; all four phases together plan 1300.
    let over = TREE.replace("words: 300, from", "words: 301, from");
    let error = &errors(&over)[0];
    assert_eq!(error.field, "phases");
    assert!(
        error.message.contains("up to `tasks-long` plan 1001 words"),
        "{error}"
    );
}

#[test]
fn from_must_name_another_phase_without_a_circle() {
    let unknown = TREE.replace("from: vision", "from: visoin");
    let error = &errors(&unknown)[0];
    assert_eq!(
        (error.field.as_str(), error.line),
        ("phases[3].from", 12),
        "{error}"
    );
    assert!(error.message.contains("no phase named `visoin`"));
    let circle = TREE.replace("from: vision", "from: tasks").replace(
        "{name: tasks, kind: tasks, data: [book], steps: 1, words: 300}",
        "{name: tasks, kind: tasks, data: [book], steps: 1, words: 300, from: tasks-long}",
    );
    let fields: Vec<String> = errors(&circle).into_iter().map(|e| e.to_string()).collect();
    assert!(
        fields
            .iter()
            .any(|e| e.contains("phases[2].from") && e.contains("circle")),
        "{fields:?}"
    );
    let language = TREE.replace(
        "{name: language, kind: language, data: [book], steps: 1, words: 400}",
        "{name: language, kind: language, data: [book], steps: 1, words: 400, from: vision}",
    );
    assert!(errors(&language)[0].message.contains("starts from scratch"));
    let first = TREE.replace(
        "  - {name: language, kind: language, data: [book], steps: 1, words: 400}\n",
        "",
    );
    let error = &errors(&first)[0];
    assert_eq!(error.field, "phases[0].kind", "{error}");
}

#[test]
fn init_from_starts_a_phase_from_outside_the_job() {
    // A vision phase may lead the job when it names a checkpoint to start from.
    let imported = TREE
        .replace(
            "  - {name: language, kind: language, data: [book], steps: 1, words: 400}\n",
            "",
        )
        .replace(
            "words: 300}\n  - {name: tasks,",
            "words: 300, init_from: ckpt/a}\n  - {name: tasks,",
        );
    let mut spec = parse(&imported, "tree.yaml").unwrap();
    assert_eq!(spec.starts_from(0), None);
    assert_eq!(spec.starts_from(1), Some("vision"));
    spec.resolve("/work").unwrap();
    assert_eq!(
        spec.phases[0].init_from.as_deref(),
        Some("file:///work/ckpt/a/")
    );

    // A language phase that imports follows nothing, not the phase listed before it.
    let language = TREE.replace(
        "words: 300, from: vision}",
        "words: 300, from: vision}\n  - {name: more, kind: language, data: [book], steps: 1, init_from: s3://b/x}",
    );
    let spec = parse(&language, "tree.yaml").unwrap();
    assert_eq!(spec.starts_from(4), None);

    let both = TREE.replace("from: vision}", "from: vision, init_from: ckpt/a}");
    let error = &errors(&both)[0];
    assert_eq!(
        (error.field.as_str(), error.line),
        ("phases[3].init_from", 12)
    );
    assert!(error.message.contains("not both"), "{error}");
}

mod random {
    use super::*;
    use proptest::prelude::*;

    /// A spec with every number, name and kind drawn at random (most are nonsense).
    fn spec_text() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            Just("0".to_string()),
            Just("1.0e+300".to_string()),
            Just("-1".to_string()),
            Just("nan".to_string()),
        ];
        let word = prop_oneof![
            Just("language".to_string()),
            Just("vision_language".to_string()),
            Just("tasks".to_string()),
            Just("noop".to_string()),
            Just("picture_book".to_string()),
            Just("generated_text".to_string()),
            Just("a".to_string()),
            "[a-z-]{0,12}",
        ];
        (
            prop::collection::vec(number, 12),
            prop::collection::vec(word, 8),
        )
            .prop_map(|(n, w)| {
                format!(
                    "name: {w0}\nstorage: /tmp/x\nword_budget: {n0}\n\
                     data: [{{name: {w1}, kind: {w2}, words: {n1}, pictures: {n2}, seed: {n3}}}]\n\
                     model: {{d_model: {n4}, n_heads: {n5}, context: {n6},\
                     vision: {{image_size: {n7}, patch_size: {n8}}}}}\n\
                     evaluation: {{benchmarks: [{{data: {w3}, limit: {n9}}}]}}\n\
                     phases:\n\
                     - {{name: {w4}, kind: {w5}, data: [{w1}], steps: {n10}, shards: {n11}}}\n\
                     - {{name: {w6}, kind: {w7}, data: [{w1}], from: {w4}}}\n",
                    w0 = w[0],
                    w1 = w[1],
                    w2 = w[2],
                    w3 = w[3],
                    w4 = w[4],
                    w5 = w[5],
                    w6 = w[6],
                    w7 = w[7],
                    n0 = n[0],
                    n1 = n[1],
                    n2 = n[2],
                    n3 = n[3],
                    n4 = n[4],
                    n5 = n[5],
                    n6 = n[6],
                    n7 = n[7],
                    n8 = n[8],
                    n9 = n[9],
                    n10 = n[10],
                    n11 = n[11],
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_specs_never_panic_the_validator(yaml in spec_text()) {
            if let Ok(spec) = parse(&yaml, "random.yaml") {
                // What passes can be planned.
                for i in 0..spec.phases.len() {
                    crate::task_spec::TaskSpec::train(&spec, i).unwrap();
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics_the_parser(yaml in "\\PC{0,400}") {
            let _ = parse(&yaml, "random.yaml");
        }
    }
}
