//! The picture-book world: the embedded default for the vision phases. A seeded
//! generator of scenes (shapes, colours, sizes, counts, positions, relations), their
//! pictures, captions in child-directed language, unlabeled pictures whose true scene is
//! kept aside, question-answer items with distractors, Winoground-style caption pairs,
//! and a text corpus about the same world.
//!
//! [`World::write`] lays it out in storage in the same formats real data uses, so every
//! phase reads real files:
//!
//! ```text
//! captions/train.jsonl, captions/test.jsonl   {"image": "images/...png", "caption": ...}
//! unlabeled/images/*.png                      pictures only
//! vqa/train.jsonl                             {"image", "question", "answer", "distractors"}
//! eval/...                                    held-out benchmarks (see [`eval`])
//! text/world.txt                              utterances, one exchange a line
//! truth/{test,unlabeled}.jsonl                {"image", "scene"}: for scoring only
//! ```
//! Image paths are relative to the JSONL file's folder.

pub mod eval;
pub mod language;
pub mod render;
pub mod scene;

use std::io::Cursor;

use outloud_core::storage::Location;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::WorkerError;
use crate::rng::Rng;
pub use eval::EVAL_FOLDER;
use language::{Question, SwapPair};
use scene::Scene;

/// How much of the world to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldSize {
    pub seed: u64,
    /// Pixels per side.
    pub image_size: u32,
    pub train_pictures: usize,
    pub test_pictures: usize,
    pub unlabeled_pictures: usize,
    pub text_lines: usize,
}

/// A picture with what it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    pub name: String,
    pub scene: Scene,
    pub caption: String,
    pub questions: Vec<Question>,
}

pub struct World {
    pub size: WorldSize,
    pub train: Vec<Picture>,
    pub test: Vec<Picture>,
    pub unlabeled: Vec<Picture>,
    pub pairs: Vec<SwapPair>,
    pub text: String,
}

fn pictures(rng: &mut Rng, prefix: &str, count: usize) -> Vec<Picture> {
    (0..count)
        .map(|i| {
            let scene = Scene::random(rng);
            let caption = language::caption(&scene, rng);
            let questions = language::questions(&scene);
            Picture {
                name: format!("{prefix}-{i:06}.png"),
                scene,
                caption,
                questions,
            }
        })
        .collect()
}

/// A caregiver talking about scenes: captions, questions and their answers.
fn utterances(rng: &mut Rng, lines: usize) -> String {
    let mut text = String::new();
    for _ in 0..lines {
        let scene = Scene::random(rng);
        let mut line = language::caption(&scene, rng);
        let questions = language::questions(&scene);
        let q = &questions[rng.below(questions.len() as u64) as usize];
        line += &format!(" {} {}!\n", q.question, q.answer);
        text += &line;
    }
    text
}

/// JSON Lines: one value a line.
fn jsonl(rows: &[serde_json::Value]) -> Vec<u8> {
    rows.iter()
        .map(|r| format!("{r}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Every question about `pictures` as a row of the questions format, the picture named
/// under `images` (relative to the file the rows go in).
fn question_rows(pictures: &[Picture], images: &str) -> Vec<serde_json::Value> {
    pictures
        .iter()
        .flat_map(|p| {
            p.questions.iter().map(move |q| {
                json!({"image": format!("{images}/{}", p.name), "question": q.question, "answer": q.answer, "distractors": q.distractors})
            })
        })
        .collect()
}

impl World {
    pub fn generate(size: WorldSize) -> Self {
        let mut rng = Rng::new(size.seed);
        let train = pictures(&mut rng, "train", size.train_pictures);
        let test = pictures(&mut rng, "test", size.test_pictures);
        let unlabeled = pictures(&mut rng, "unlabeled", size.unlabeled_pictures);
        let pairs = test
            .iter()
            .filter_map(|p| language::swap_pair(&p.scene))
            .collect();
        let text = utterances(&mut rng, size.text_lines);
        Self {
            size,
            train,
            test,
            unlabeled,
            pairs,
            text,
        }
    }

    /// The picture as PNG bytes.
    pub fn png(&self, scene: &Scene) -> Result<Vec<u8>, WorkerError> {
        let side = self.size.image_size;
        let image = image::RgbImage::from_raw(side, side, render::render(scene, side))
            .ok_or_else(|| WorkerError::Data("rendered image has the wrong size".into()))?;
        let mut bytes = Cursor::new(Vec::new());
        image
            .write_to(&mut bytes, image::ImageFormat::Png)
            .map_err(|e| WorkerError::Data(format!("encoding PNG: {e}")))?;
        Ok(bytes.into_inner())
    }

    async fn put_pictures(
        &self,
        folder: &Location,
        pictures: &[Picture],
    ) -> Result<(), WorkerError> {
        for picture in pictures {
            folder
                .join(&format!("images/{}", picture.name))
                .put(self.png(&picture.scene)?)
                .await?;
        }
        Ok(())
    }

    /// Writes everything under `root` in the formats real data uses.
    pub async fn write(&self, root: &Location) -> Result<(), WorkerError> {
        let captions = |pictures: &[Picture]| {
            let rows: Vec<_> = pictures
                .iter()
                .map(|p| json!({"image": format!("images/{}", p.name), "caption": p.caption}))
                .collect();
            jsonl(&rows)
        };
        let truth = |folder: &str, pictures: &[Picture]| {
            let rows: Vec<_> = pictures.iter().map(|p| json!({"image": format!("../{folder}/images/{}", p.name), "scene": p.scene})).collect();
            jsonl(&rows)
        };

        let captioned = root.join("captions");
        self.put_pictures(&captioned, &self.train).await?;
        self.put_pictures(&captioned, &self.test).await?;
        captioned
            .join("train.jsonl")
            .put(captions(&self.train))
            .await?;
        captioned
            .join("test.jsonl")
            .put(captions(&self.test))
            .await?;
        self.put_pictures(&root.join("unlabeled"), &self.unlabeled)
            .await?;
        // Held-out questions are a benchmark (eval/world_vqa), not training data.
        let questions = question_rows(&self.train, "../captions/images");
        root.join("vqa/train.jsonl").put(jsonl(&questions)).await?;
        root.join("truth/test.jsonl")
            .put(truth("captions", &self.test))
            .await?;
        root.join("truth/unlabeled.jsonl")
            .put(truth("unlabeled", &self.unlabeled))
            .await?;
        self.write_eval(root).await?;
        root.join("text/world.txt")
            .put(self.text.clone().into_bytes())
            .await?;
        Ok(())
    }
}

/// The true scenes of a world's `split` (`test` or `unlabeled`), by picture file name:
/// what scoring reads (captions are scored against them), never what training reads.
pub async fn truth(
    world: &Location,
    split: &str,
) -> Result<std::collections::BTreeMap<String, Scene>, WorkerError> {
    #[derive(Deserialize)]
    struct Row {
        image: String,
        scene: Scene,
    }
    let bytes = world.join(&format!("truth/{split}.jsonl")).get().await?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str::<Row>(l).ok())
        .map(|t| (crate::loaders::file_name(&t.image).to_string(), t.scene))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(seed: u64) -> WorldSize {
        WorldSize {
            seed,
            image_size: 32,
            train_pictures: 20,
            test_pictures: 10,
            unlabeled_pictures: 5,
            text_lines: 50,
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_world() {
        let (a, b, c) = (
            World::generate(size(1)),
            World::generate(size(1)),
            World::generate(size(2)),
        );
        assert_eq!(a.train, b.train);
        assert_eq!(a.text, b.text);
        assert_eq!(
            a.png(&a.test[0].scene).unwrap(),
            b.png(&b.test[0].scene).unwrap()
        );
        assert_ne!(a.train, c.train);
    }

    #[test]
    fn pictures_show_their_scene() {
        let world = World::generate(size(3));
        for picture in &world.train {
            let pixels = render::render(&picture.scene, 32);
            for thing in &picture.scene.things {
                let (x, y, _) = render::placement(thing, 32);
                let at = ((y as usize) * 32 + x as usize) * 3;
                assert_eq!(
                    &pixels[at..at + 3],
                    &thing.colour.rgb(),
                    "{:?} in {}",
                    thing,
                    picture.name
                );
            }
            assert_eq!(
                language::caption_score(&picture.caption, &picture.scene),
                1.0,
                "{}",
                picture.caption
            );
        }
    }

    #[tokio::test]
    async fn it_writes_real_files_in_the_data_formats() {
        let dir = tempfile::tempdir().unwrap();
        let root =
            Location::open(url::Url::from_directory_path(dir.path()).unwrap().as_str()).unwrap();
        let world = World::generate(size(4));
        world.write(&root).await.unwrap();
        let train = std::fs::read_to_string(dir.path().join("captions/train.jsonl")).unwrap();
        assert_eq!(train.lines().count(), 20);
        let first: serde_json::Value = serde_json::from_str(train.lines().next().unwrap()).unwrap();
        let png = dir
            .path()
            .join("captions")
            .join(first["image"].as_str().unwrap());
        let decoded = image::open(&png).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (32, 32));
        let vqa = dir.path().join("eval/world_vqa");
        let questions = std::fs::read_to_string(vqa.join("vqa.jsonl")).unwrap();
        let item: serde_json::Value =
            serde_json::from_str(questions.lines().next().unwrap()).unwrap();
        assert!(vqa.join(item["image"].as_str().unwrap()).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("unlabeled/images"))
                .unwrap()
                .count(),
            5
        );
        let winoground = dir.path().join("eval/world_winoground");
        let rows = std::fs::read_to_string(winoground.join("winoground.jsonl")).unwrap();
        assert_eq!(rows.lines().count(), 2 * world.pairs.len());
        for row in rows.lines() {
            let row: serde_json::Value = serde_json::from_str(row).unwrap();
            let name = format!(
                "{}_{}.png",
                row["image_idx"],
                row["image_key"].as_str().unwrap()
            );
            assert!(winoground.join("images").join(name).exists());
        }
        let choices = std::fs::read_to_string(
            dir.path()
                .join("eval/world_picture_choice/picture_choice.jsonl"),
        )
        .unwrap();
        assert_eq!(choices.lines().count(), 10);
    }
}
