//! The evaluation against the BabyLM slices in ../shared/data/eval: discovery, item
//! counts, the harness's tokenization, and batching that changes no score.

use std::path::PathBuf;

use tch::{Device, Tensor, nn};

use super::benchmarks::{self, Format};
use super::score::{self, Request, Scorer, Text};
use crate::model::{Gpt, test_config};
use crate::tokenizer::Tokenizer;
use outloud_core::storage::Location;

fn shared_eval() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/eval")
}

fn location(path: &std::path::Path) -> Location {
    let path = path.canonicalize().unwrap();
    Location::open(url::Url::from_directory_path(path).unwrap().as_str()).unwrap()
}

fn tokenizer() -> Tokenizer {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/babylm-text/train/simple_wiki.train"),
    )
    .unwrap();
    let docs = vec![text.chars().take(200_000).collect()];
    Tokenizer::train(&docs, 300).unwrap()
}

fn lines(path: PathBuf) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[tokio::test]
async fn every_file_of_the_babylm_slices_is_found_and_every_item_read() {
    let root = shared_eval();
    let (found, ignored) = benchmarks::discover(&location(&root), None, None)
        .await
        .unwrap();
    assert!(ignored.is_empty(), "{ignored:?}");
    let names: Vec<(&str, usize)> = found
        .iter()
        .map(|b| (b.name.as_str(), b.files.len()))
        .collect();
    assert_eq!(
        names,
        [
            ("blimp", 12),
            ("ewok", 2),
            ("blimp_supplement", 5),
            ("winoground", 1)
        ]
    );
    for benchmark in &found {
        let folder = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                outloud_core::results::benchmark_name(p.file_name().unwrap().to_str().unwrap())
                    == benchmark.name
            })
            .unwrap();
        for file in &benchmark.files {
            let expected = lines(folder.join(format!("{}.jsonl", file.name)));
            assert_eq!(file.items.len(), expected, "{}", file.name);
            assert!(file.unusable.is_empty(), "{:?}", file.unusable);
        }
    }
    let ewok = &found[1].files[0];
    assert_eq!(ewok.format, Format::Ewok);
    let first = &ewok.items[0].candidates;
    assert_eq!(first[0].context, first[1].context);
    assert_ne!(first[0].continuation, first[1].continuation);
    // No pictures given: Winoground is scored text-only.
    assert!(
        found[3].files[0]
            .items
            .iter()
            .all(|i| i.candidates.iter().all(|c| c.image.is_none()))
    );
    let blimp = &found[0].files[0].items[0].candidates;
    assert_eq!((blimp[0].context.as_str(), blimp.len()), ("", 2));
}

#[tokio::test]
async fn a_limit_scores_the_first_items_only() {
    let root = shared_eval().join("ewok_filtered");
    let (found, _) = benchmarks::discover(&location(&root), None, Some(7))
        .await
        .unwrap();
    assert_eq!(found[0].name, "ewok");
    assert!(found[0].files.iter().all(|f| f.items.len() == 7));
}

#[test]
fn candidates_are_tokenized_as_the_harness_does() {
    let tokenizer = tokenizer();
    let bos = i64::from(tokenizer.end_of_text());
    let encode = |t: &str| -> Vec<i64> {
        tokenizer
            .encode(t)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect()
    };
    let texts = [
        Text {
            context: "",
            continuation: " The cat sleeps.",
            picture: None,
        },
        Text {
            context: "Ali talks a lot. ",
            continuation: "Ali is boastful.",
            picture: None,
        },
        Text {
            context: "Question: what is it? Answer:",
            continuation: " a cat",
            picture: Some(0),
        },
    ];
    let requests = score::requests(&tokenizer, &texts, 64, 4).unwrap();
    // Empty context: BOS, then the continuation alone.
    let alone = encode(" The cat sleeps.");
    assert_eq!(requests[0].tokens[0], bos);
    assert_eq!(&requests[0].tokens[1..], alone.as_slice());
    assert_eq!(requests[0].continuation, alone.len());
    // The context's trailing space moves to the continuation; the continuation's
    // tokens are the whole's after the context's.
    let whole = encode("Ali talks a lot. Ali is boastful.");
    let context = encode("Ali talks a lot.");
    assert_eq!(requests[1].tokens, whole);
    assert_eq!(requests[1].continuation, whole.len() - context.len());
    // After a picture the text starts with BOS.
    assert_eq!(requests[2].tokens[0], bos);
    // Too long: the oldest tokens go, the window (less the visual tokens) is kept.
    let long = " the cat".repeat(100);
    let cut = score::requests(
        &tokenizer,
        &[Text {
            context: "",
            continuation: &long,
            picture: Some(0),
        }],
        64,
        4,
    )
    .unwrap();
    assert_eq!(cut[0].tokens.len(), 61);
    assert_eq!(cut[0].continuation, 60);
}

fn blimp_requests(tokenizer: &Tokenizer, n: usize) -> Vec<Request> {
    let file = shared_eval().join("blimp_filtered/anaphor_gender_agreement.jsonl");
    let text = std::fs::read_to_string(file).unwrap();
    let pairs: Vec<serde_json::Value> = text
        .lines()
        .take(n)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sentences: Vec<String> = pairs
        .iter()
        .flat_map(|p| {
            [
                format!(" {}", p["sentence_good"].as_str().unwrap()),
                format!(" {}", p["sentence_bad"].as_str().unwrap()),
            ]
        })
        .collect();
    let texts: Vec<Text> = sentences
        .iter()
        .map(|s| Text {
            context: "",
            continuation: s,
            picture: None,
        })
        .collect();
    score::requests(tokenizer, &texts, 64, 0).unwrap()
}

#[test]
fn batching_changes_no_score() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let lm = Gpt::new(&vs.root(), test_config(64));
    let tokenizer = tokenizer();
    let requests = blimp_requests(&tokenizer, 60);
    let one = Scorer {
        lm: &lm,
        batch_size: 1,
    }
    .score(&requests, None);
    let many = Scorer {
        lm: &lm,
        batch_size: 64,
    }
    .score(&requests, None);
    let odd = Scorer {
        lm: &lm,
        batch_size: 7,
    }
    .score(&requests, None);
    let worst = one
        .iter()
        .zip(&many)
        .chain(one.iter().zip(&odd))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("largest batched-unbatched difference: {worst:e}");
    assert!(worst < 1e-4, "batched and unbatched differ by {worst}");
    // Float rounding never changes which sentence of a pair wins.
    let picks = |s: &[f64]| s.chunks(2).map(|p| p[0] >= p[1]).collect::<Vec<_>>();
    assert_eq!(picks(&one), picks(&many));
    assert_eq!(picks(&one), picks(&odd));
    assert!(one.iter().all(|s| s.is_finite() && *s < 0.0));
}

#[test]
fn batching_changes_no_score_after_a_picture() {
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let vlm = crate::vlm::test_vlm(&vs, 8);
    let tokenizer = tokenizer();
    let pictures = Tensor::rand([3, 3, 16, 16], (tch::Kind::Float, Device::Cpu));
    let visual = tch::no_grad(|| vlm.visual_tokens(&pictures));
    let mut requests = blimp_requests(&tokenizer, 12);
    for (i, r) in requests.iter_mut().enumerate() {
        r.picture = (i % 4 != 0).then_some(i % 3);
    }
    let one = Scorer {
        lm: &vlm.lm,
        batch_size: 1,
    }
    .score(&requests, Some(&visual));
    let many = Scorer {
        lm: &vlm.lm,
        batch_size: 16,
    }
    .score(&requests, Some(&visual));
    for (a, b) in one.iter().zip(&many) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // The picture matters: the same text scores differently after another picture.
    let mut other = requests[1].clone();
    other.picture = Some((requests[1].picture.unwrap() + 1) % 3);
    let moved = Scorer {
        lm: &vlm.lm,
        batch_size: 1,
    }
    .score(&[requests[1].clone(), other], Some(&visual));
    assert_ne!(moved[0], moved[1]);
}

#[tokio::test]
async fn babylm_vqa_and_winoground_find_their_pictures_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let vqa = dir.path().join("vqa_filtered");
    std::fs::create_dir_all(vqa.join("images")).unwrap();
    std::fs::write(vqa.join("images/COCO_val2014_000000262148.png"), b"png").unwrap();
    let items = serde_json::json!([
        {"question_id": 1, "image_id": 262148, "question": "What is it?", "target_ans": "a dog", "distractors": ["a cat", "a car"]},
        {"question_id": 2, "image_id": 999, "question": "Where?", "target_ans": "here", "distractors": ["there"]},
    ]);
    std::fs::write(vqa.join("vqa_distractors_info.json"), items.to_string()).unwrap();
    let wino = dir.path().join("winoground_filtered");
    std::fs::create_dir_all(wino.join("images")).unwrap();
    std::fs::write(wino.join("images/0_image_1.png"), b"png").unwrap();
    let row = r#"{"caption_0": "a b", "caption_1": "b a", "image_idx": 0, "image_key": "image_1"}"#;
    std::fs::write(wino.join("winoground.jsonl"), format!("{row}\n")).unwrap();

    let trog = dir.path().join("devbench/assets/gram-trog");
    std::fs::create_dir_all(&trog).unwrap();
    std::fs::write(trog.join("manifest.csv"), "text1,image1,image2,image3,image4\n\"the boy, not the girl\",p/1.png,p/2.png,p/3.png,p/4.png\n").unwrap();
    let things = dir.path().join("devbench/assets/sem-things");
    std::fs::create_dir_all(&things).unwrap();
    std::fs::write(things.join("manifest.csv"), "image1\nx.png\n").unwrap();

    let (found, ignored) = benchmarks::discover(&location(dir.path()), None, None)
        .await
        .unwrap();
    let devbench = found.iter().find(|b| b.name == "devbench").unwrap();
    assert_eq!(devbench.files.len(), 1);
    let trial = &devbench.files[0];
    assert_eq!(
        (trial.name.as_str(), trial.format),
        ("gram-trog", Format::PictureChoice)
    );
    let choices = &trial.items[0].candidates;
    assert_eq!(choices.len(), 4);
    assert_eq!(
        choices[0].continuation,
        " The caption for this image is: the boy, not the girl."
    );
    assert!(
        choices[0]
            .image
            .as_deref()
            .unwrap()
            .ends_with("gram-trog/p/1.png")
    );
    assert!(
        ignored.iter().any(|(file, _)| file.contains("sem-things")),
        "{ignored:?}"
    );
    let vqa = found.iter().find(|b| b.name == "vqa").unwrap();
    let file = &vqa.files[0];
    assert_eq!(
        (file.format, file.items.len(), file.unusable.len()),
        (Format::Vqa, 1, 1)
    );
    let first = &file.items[0].candidates;
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].context, "Question: What is it? Answer:");
    assert_eq!(first[0].continuation, " a dog");
    assert!(first.iter().all(|c| {
        c.image
            .as_deref()
            .unwrap()
            .ends_with("COCO_val2014_000000262148.png")
    }));
    let wino = found.iter().find(|b| b.name == "winoground").unwrap();
    let pair = &wino.files[0].items[0].candidates;
    assert!(pair.iter().all(|c| {
        c.image
            .as_deref()
            .unwrap()
            .ends_with("/images/0_image_1.png")
    }));
}

/// A checkpoint whose weights are all NaN: every item is wrong (never "right" because a
/// NaN comparison picked the first candidate), counted as non-finite, and the checkpoint
/// is refused before scoring.
#[tokio::test]
async fn nan_weights_score_every_item_wrong_and_are_refused() {
    let tokenizer = tokenizer();
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = Gpt::new(&vs.root(), test_config(64));
    tch::no_grad(|| {
        for (_, mut var) in vs.variables() {
            let _ = var.fill_(f64::NAN);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ckpt = location(dir.path()).join("ckpt");
    let weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let manifest: crate::checkpoint::Manifest = serde_json::from_value(serde_json::json!({
        "format": crate::checkpoint::FORMAT, "job": "j", "phase": "language", "step": 1,
        "total_steps": 1, "model": test_config(64), "loss": 0.0, "tokens": 0, "words": 0,
        "files": {}
    }))
    .unwrap();
    let pieces = crate::checkpoint::ToSave {
        weights: &weights,
        optimizer: None,
        tokenizer: &tokenizer.to_json().unwrap(),
        ledger: None,
    };
    crate::checkpoint::save(&ckpt, pieces, manifest)
        .await
        .unwrap();
    let loaded = crate::checkpoint::load(&ckpt).await.unwrap();

    let refused = crate::inputs::require_finite(&loaded, ckpt.url()).unwrap_err();
    assert!(
        refused.to_string().contains("non-finite weights"),
        "{refused}"
    );

    let model = super::EvalModel::from_checkpoint(&loaded, Device::Cpu).unwrap();
    let blimp = shared_eval().join("blimp_filtered");
    let (found, _) = benchmarks::discover(&location(&blimp), None, Some(20))
        .await
        .unwrap();
    let pictures = super::Pictures::default();
    let result = super::score_benchmark(&model, &found[0], &pictures, 16).unwrap();
    assert!(result.items > 0);
    assert_eq!(result.accuracy, Some(0.0), "NaN never counts as right");
    let non_finite: usize = result.files.iter().map(|f| f.non_finite).sum();
    assert_eq!(non_finite, result.items, "every item is counted non-finite");
}
