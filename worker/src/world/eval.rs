//! The picture-book world's held-out benchmarks, laid out like BabyLM's
//! `evaluation_data` so the evaluation reads them like any other benchmark folder:
//!
//! ```text
//! eval/world_grammar/{agreement,adjective_order,word_order}.jsonl   minimal pairs
//! eval/world_winoground/winoground.jsonl + images/{idx}_image_{k}.png   colour swaps
//! eval/world_vqa/vqa.jsonl                         questions about held-out pictures
//! eval/world_picture_choice/picture_choice.jsonl   a caption and four pictures
//!                                                  (scored as captions are taught)
//! ```
//!
//! Everything comes from the held-out test pictures, never from training pictures.

use serde_json::{Value, json};

use super::scene::Scene;
use super::{Picture, World, jsonl, question_rows};
use crate::error::WorkerError;
use outloud_core::storage::Location;

/// The folder, under a world's root, that holds its benchmarks.
pub const EVAL_FOLDER: &str = "eval";

/// Pictures offered per picture-choice item (the right one and distractors).
const PICTURE_CHOICES: usize = 4;

/// Grammatical and ungrammatical versions of sentences about held-out scenes.
fn minimal_pairs(test: &[Picture]) -> Vec<(&'static str, Vec<Value>)> {
    let pair = |good: String, bad: String| json!({"sentence_good": good, "sentence_bad": bad});
    let (mut agreement, mut order, mut words) = (Vec::new(), Vec::new(), Vec::new());
    for picture in test {
        let things = &picture.scene.things;
        let first = &things[0];
        let (size, colour, shape) = (first.size.word(), first.colour.word(), first.shape.word());
        if things.len() > 1 {
            let count = super::language::NUMBERS[things.len()];
            agreement.push(pair(
                format!("there are {count} things."),
                format!("there is {count} things."),
            ));
        } else {
            agreement.push(pair(
                format!("there is a {colour} {shape}."),
                format!("there are a {colour} {shape}."),
            ));
        }
        order.push(pair(
            format!("i see a {size} {colour} {shape}."),
            format!("i see a {colour} {size} {shape}."),
        ));
        words.push(pair(
            format!("look, a {colour} {shape}!"),
            format!("look, {colour} a {shape}!"),
        ));
    }
    vec![
        ("agreement", agreement),
        ("adjective_order", order),
        ("word_order", words),
    ]
}

impl World {
    /// Writes the world's benchmarks under `root`/[`EVAL_FOLDER`]. Test pictures are
    /// already under `captions/images/`.
    pub(super) async fn write_eval(&self, root: &Location) -> Result<(), WorkerError> {
        let eval = root.join(EVAL_FOLDER);
        for (name, rows) in minimal_pairs(&self.test) {
            let file = eval.join(&format!("world_grammar/{name}.jsonl"));
            file.put(jsonl(&rows)).await?;
        }
        self.write_winoground(&eval.join("world_winoground"))
            .await?;
        // Test pictures are already under `captions/images/`.
        let pictures = "../../captions/images";
        let questions = question_rows(&self.test, pictures);
        eval.join("world_vqa/vqa.jsonl")
            .put(jsonl(&questions))
            .await?;
        let n = self.test.len();
        let choices: Vec<Value> = (0..n)
            .map(|i| {
                let images: Vec<String> = (0..PICTURE_CHOICES.min(n))
                    .map(|k| format!("{pictures}/{}", self.test[(i + k) % n].name))
                    .collect();
                // The caption as phase 2 teaches it, not under DevBench's prompt.
                json!({"text": self.test[i].caption, "images": images, "template": "{text}"})
            })
            .collect();
        eval.join("world_picture_choice/picture_choice.jsonl")
            .put(jsonl(&choices))
            .await?;
        Ok(())
    }

    /// BabyLM's Winoground layout: a row per (example, picture), `caption_0` the caption
    /// true of that picture.
    async fn write_winoground(&self, folder: &Location) -> Result<(), WorkerError> {
        let mut rows = Vec::new();
        for (i, pair) in self.pairs.iter().enumerate() {
            let sides: [(&Scene, &str, &str); 2] = [
                (&pair.scene_0, &pair.caption_0, &pair.caption_1),
                (&pair.scene_1, &pair.caption_1, &pair.caption_0),
            ];
            for (k, (scene, right, wrong)) in sides.into_iter().enumerate() {
                let key = format!("image_{k}");
                let picture = folder.join(&format!("images/{i}_{key}.png"));
                picture.put(self.png(scene)?).await?;
                rows.push(json!({"id": 2 * i + k, "caption_0": right, "caption_1": wrong, "image_idx": i, "image_key": key}));
            }
        }
        folder.join("winoground.jsonl").put(jsonl(&rows)).await?;
        Ok(())
    }
}
