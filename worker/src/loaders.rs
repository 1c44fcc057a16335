//! Reading image data in the formats real datasets use, through the storage layer:
//!
//! - image-caption pairs: JSONL (`image`, `caption`) with images beside it, or
//!   WebDataset-style tar shards (`key.png|jpg` + `key.txt`);
//! - unlabeled images: a folder of images, or tar shards;
//! - task data: JSONL of `image`, `question`, `answer` (and optional `distractors`);
//! - precomputed features: safetensors, one tensor per image id.
//!
//! Images are decoded (PNG, JPEG) and resized here. A corrupt or missing image is
//! skipped and counted in [`Skipped`], never fatal and never silent.

use std::collections::BTreeMap;
use std::io::Read;

use outloud_core::storage::Location;
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::checkpoint;
use crate::error::WorkerError;

/// Images that could not be used, with the first few reasons.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub count: u64,
    pub examples: Vec<String>,
}

impl Skipped {
    pub fn add(&mut self, what: &str, reason: impl std::fmt::Display) {
        self.count += 1;
        if self.examples.len() < 5 {
            self.examples.push(format!("{what}: {reason}"));
        }
        tracing::warn!(image = what, %reason, "image skipped");
    }
}

/// Bytes of a PNG or JPEG -> (3, size, size) floats in [0, 1].
pub fn decode(bytes: &[u8], size: u32) -> Result<Tensor, String> {
    let image = image::load_from_memory(bytes)
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let image = if image.dimensions() == (size, size) {
        image
    } else {
        image::imageops::resize(&image, size, size, image::imageops::FilterType::Triangle)
    };
    let pixels = Tensor::from_slice(image.as_raw()).view([size as i64, size as i64, 3]);
    Ok(pixels.permute([2, 0, 1]).to_kind(Kind::Float) / 255.0)
}

pub fn is_image(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// An image with its caption.
pub struct Captioned {
    pub key: String,
    pub pixels: Tensor,
    pub caption: String,
}

/// A question about an image.
pub struct Asked {
    pub key: String,
    pub pixels: Tensor,
    pub question: String,
    pub answer: String,
    pub distractors: Vec<String>,
}

/// An image without words.
pub struct Unlabeled {
    pub key: String,
    pub pixels: Tensor,
}

#[derive(Deserialize)]
struct CaptionRow {
    image: String,
    caption: String,
}

#[derive(Deserialize)]
struct QuestionRow {
    image: String,
    question: String,
    answer: String,
    #[serde(default)]
    distractors: Vec<String>,
}

async fn read_jsonl<T: for<'de> Deserialize<'de>>(file: &Location) -> Result<Vec<T>, WorkerError> {
    let text = String::from_utf8_lossy(&file.get().await?).into_owned();
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| WorkerError::Data(format!("{}:{}: {e}", file.url(), i + 1)))
        })
        .collect()
}

/// The image a JSONL row names, decoded; `None` (counted) when missing or corrupt.
async fn image_beside(
    file: &Location,
    relative: &str,
    size: u32,
    skipped: &mut Skipped,
) -> Option<Tensor> {
    let location = match file.beside(relative) {
        Ok(location) => location,
        Err(e) => return decode_counted(relative, Err::<Vec<u8>, _>(e.to_string()), size, skipped),
    };
    let bytes = location.get().await.map_err(|e| e.to_string());
    decode_counted(location.url(), bytes, size, skipped)
}

/// Decodes an image's bytes, or counts under `what` why there is no image.
fn decode_counted(
    what: &str,
    bytes: Result<impl AsRef<[u8]>, String>,
    size: u32,
    skipped: &mut Skipped,
) -> Option<Tensor> {
    match bytes.and_then(|bytes| decode(bytes.as_ref(), size)) {
        Ok(pixels) => Some(pixels),
        Err(e) => {
            skipped.add(what, e);
            None
        }
    }
}

/// Members of a tar shard grouped by key (the name before the first '.').
fn tar_members(bytes: &[u8]) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, String> {
    let mut archive = tar::Archive::new(bytes);
    let mut groups: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let name = entry
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        let Some((key, extension)) = name.split_once('.') else {
            continue;
        };
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
        groups
            .entry(key.to_string())
            .or_default()
            .insert(extension.to_ascii_lowercase(), data);
    }
    Ok(groups)
}

/// The image member of a shard group, decoded; `None` (counted) when absent or corrupt.
fn shard_image(
    key: &str,
    members: &BTreeMap<String, Vec<u8>>,
    size: u32,
    skipped: &mut Skipped,
) -> Option<Tensor> {
    let bytes = ["png", "jpg", "jpeg"]
        .iter()
        .find_map(|ext| members.get(*ext))
        .ok_or_else(|| "no image in the shard group".to_string());
    decode_counted(key, bytes, size, skipped)
}

/// Image-caption pairs from a JSONL file, a tar shard, or a folder of either.
pub async fn captioned(
    location: &Location,
    size: u32,
) -> Result<(Vec<Captioned>, Skipped), WorkerError> {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for file in location.objects().await? {
        if file.url().ends_with(".jsonl") {
            for row in read_jsonl::<CaptionRow>(&file).await? {
                if let Some(pixels) = image_beside(&file, &row.image, size, &mut skipped).await {
                    out.push(Captioned {
                        key: row.image,
                        pixels,
                        caption: row.caption,
                    });
                }
            }
        } else if file.url().ends_with(".tar") {
            let groups = tar_members(&file.get().await?)
                .map_err(|e| WorkerError::Data(format!("{}: {e}", file.url())))?;
            for (key, members) in groups {
                let Some(caption) = members
                    .get("txt")
                    .map(|t| String::from_utf8_lossy(t).trim().to_string())
                else {
                    continue;
                };
                if let Some(pixels) = shard_image(&key, &members, size, &mut skipped) {
                    out.push(Captioned {
                        key,
                        pixels,
                        caption,
                    });
                }
            }
        }
    }
    Ok((out, skipped))
}

/// Questions about images from JSONL files (one, or a folder of them).
pub async fn questions(
    location: &Location,
    size: u32,
) -> Result<(Vec<Asked>, Skipped), WorkerError> {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for file in location
        .objects()
        .await?
        .into_iter()
        .filter(|f| f.url().ends_with(".jsonl"))
    {
        for row in read_jsonl::<QuestionRow>(&file).await? {
            if let Some(pixels) = image_beside(&file, &row.image, size, &mut skipped).await {
                out.push(Asked {
                    key: row.image,
                    pixels,
                    question: row.question,
                    answer: row.answer,
                    distractors: row.distractors,
                });
            }
        }
    }
    Ok((out, skipped))
}

/// Images from a folder of image files and/or tar shards.
pub async fn unlabeled(
    location: &Location,
    size: u32,
) -> Result<(Vec<Unlabeled>, Skipped), WorkerError> {
    unlabeled_files(location.objects().await?, size).await
}

/// The picture files (images and tar shards) of a folder, by name: what a synthesize
/// step splits into shards, a file each (a tar shard stays whole).
pub async fn picture_files(location: &Location) -> Result<Vec<Location>, WorkerError> {
    let mut files = location.objects().await?;
    files.retain(|f| is_image(f.url()) || f.url().ends_with(".tar"));
    Ok(files)
}

/// Images from these files (image files and/or tar shards).
pub async fn unlabeled_files(
    files: Vec<Location>,
    size: u32,
) -> Result<(Vec<Unlabeled>, Skipped), WorkerError> {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for file in files {
        if is_image(file.url()) {
            let bytes = file.get().await.map_err(|e| e.to_string());
            if let Some(pixels) = decode_counted(file.url(), bytes, size, &mut skipped) {
                out.push(Unlabeled {
                    key: file.url().to_string(),
                    pixels,
                });
            }
        } else if file.url().ends_with(".tar") {
            let groups = tar_members(&file.get().await?)
                .map_err(|e| WorkerError::Data(format!("{}: {e}", file.url())))?;
            for (key, members) in groups {
                if let Some(pixels) = shard_image(&key, &members, size, &mut skipped) {
                    out.push(Unlabeled { key, pixels });
                }
            }
        }
    }
    Ok((out, skipped))
}

/// Precomputed features: a safetensors file with one (N, D) tensor per image id.
pub async fn features(location: &Location) -> Result<BTreeMap<String, Tensor>, WorkerError> {
    let tensors = checkpoint::tensors_from(&location.get().await?)
        .map_err(|e| WorkerError::Data(format!("{}: {e}", location.url())))?;
    Ok(tensors.into_iter().collect())
}

/// An image's file name, its key across captions, questions, truth and features.
pub fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{World, WorldSize};

    fn root(dir: &std::path::Path) -> Location {
        Location::open(url::Url::from_directory_path(dir).unwrap().as_str()).unwrap()
    }

    async fn world(dir: &std::path::Path) -> World {
        let size = WorldSize {
            seed: 9,
            image_size: 32,
            train_pictures: 6,
            test_pictures: 3,
            unlabeled_pictures: 4,
            text_lines: 5,
        };
        let world = World::generate(size);
        world.write(&root(dir)).await.unwrap();
        world
    }

    #[tokio::test]
    async fn captions_load_from_jsonl_and_a_corrupt_image_is_counted_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let world = world(dir.path()).await;
        // Break one picture and lose another.
        std::fs::write(
            dir.path().join("captions/images/train-000001.png"),
            b"not a png",
        )
        .unwrap();
        std::fs::remove_file(dir.path().join("captions/images/train-000002.png")).unwrap();
        let (pairs, skipped) = captioned(&root(dir.path()).join("captions/train.jsonl"), 16)
            .await
            .unwrap();
        assert_eq!(pairs.len(), 4);
        assert_eq!(skipped.count, 2, "{skipped:?}");
        assert!(
            skipped
                .examples
                .iter()
                .any(|e| e.contains("train-000001.png")),
            "{skipped:?}"
        );
        assert_eq!(pairs[0].caption, world.train[0].caption);
        assert_eq!(pairs[0].pixels.size(), vec![3, 16, 16]);
        let (max, min) = (
            pairs[0].pixels.max().double_value(&[]),
            pairs[0].pixels.min().double_value(&[]),
        );
        assert!(max <= 1.0 && min >= 0.0 && max > min);
    }

    #[tokio::test]
    async fn a_row_naming_a_picture_outside_its_data_source_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        world(dir.path()).await;
        // A readable picture beside the source, and rows that reach for it.
        let outside = dir.path().join("captions/images/train-000000.png");
        std::fs::copy(&outside, dir.path().join("private.png")).unwrap();
        let rows = [
            r#"{"image": "images/train-000000.png", "caption": "fine"}"#,
            r#"{"image": "../private.png", "caption": "escapes"}"#,
            &format!(
                r#"{{"image": "{}", "caption": "absolute"}}"#,
                dir.path().join("private.png").display()
            ),
        ];
        let file = dir.path().join("captions/hostile.jsonl");
        std::fs::write(&file, rows.join("\n")).unwrap();
        let url = url::Url::from_file_path(&file).unwrap();
        let source = Location::open_source(url.as_str()).await.unwrap();
        let (pairs, skipped) = captioned(&source, 16).await.unwrap();
        assert_eq!((pairs.len(), skipped.count), (1, 2), "{skipped:?}");
        assert!(
            skipped
                .examples
                .iter()
                .all(|e| e.contains("outside its data source")),
            "{skipped:?}"
        );
    }

    #[tokio::test]
    async fn questions_and_unlabeled_images_load_from_their_folders() {
        let dir = tempfile::tempdir().unwrap();
        let world = world(dir.path()).await;
        let (asked, skipped) = questions(&root(dir.path()).join("eval/world_vqa/vqa.jsonl"), 32)
            .await
            .unwrap();
        let expected: usize = world.test.iter().map(|p| p.questions.len()).sum();
        assert_eq!((asked.len(), skipped.count), (expected, 0));
        assert!(!asked[0].distractors.is_empty());
        // The decoded picture is the rendered one, pixel for pixel.
        let rendered = crate::world::render::render(&world.test[0].scene, 32);
        let decoded: Vec<u8> = Vec::try_from(
            (&asked[0].pixels * 255.0)
                .round()
                .to_kind(Kind::Uint8)
                .permute([1, 2, 0])
                .reshape([-1]),
        )
        .unwrap();
        assert_eq!(decoded, rendered);
        let (images, skipped) = unlabeled(&root(dir.path()).join("unlabeled"), 32)
            .await
            .unwrap();
        assert_eq!((images.len(), skipped.count), (4, 0));
    }

    #[tokio::test]
    async fn webdataset_shards_pair_images_with_captions() {
        let dir = tempfile::tempdir().unwrap();
        let world = world(dir.path()).await;
        let mut shard = tar::Builder::new(Vec::new());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            shard.append_data(&mut header, name, bytes).unwrap();
        };
        add("a.png", &world.png(&world.train[0].scene).unwrap());
        add("a.txt", world.train[0].caption.as_bytes());
        add("b.png", b"corrupt");
        add("b.txt", b"a broken picture");
        add("c.txt", b"a caption without a picture");
        let bytes = shard.into_inner().unwrap();
        std::fs::create_dir_all(dir.path().join("shards")).unwrap();
        std::fs::write(dir.path().join("shards/000000.tar"), bytes).unwrap();
        let (pairs, skipped) = captioned(&root(dir.path()).join("shards"), 32)
            .await
            .unwrap();
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].caption, world.train[0].caption);
        assert_eq!(skipped.count, 2, "{skipped:?}");
    }

    #[tokio::test]
    async fn features_load_one_tensor_per_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.safetensors");
        let rows = vec![(
            "img-1".to_string(),
            Tensor::ones([4, 8], (Kind::Float, tch::Device::Cpu)),
        )];
        Tensor::write_safetensors(&rows, &path).unwrap();
        let loaded = features(&root(dir.path()).join("features.safetensors"))
            .await
            .unwrap();
        assert_eq!(loaded["img-1"].size(), vec![4, 8]);
    }
}
