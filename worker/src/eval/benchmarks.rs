//! Finding benchmark files and reading their items.
//!
//! A benchmark is a folder of files, each a paradigm or sub-task; the folder's name
//! names the benchmark ([`benchmark_name`]), so pointing at a BabyLM `evaluation_data`
//! folder finds every benchmark in it. What a file holds is read from its fields:
//!
//! | fields                                   | format          | candidates (right first) |
//! |------------------------------------------|-----------------|--------------------------|
//! | `sentence_good`, `sentence_bad`          | minimal pairs   | good, bad                |
//! | `Context1`, `Target1`, `Target2`         | EWoK            | Target1, Target2 after Context1 |
//! | `caption_0`, `caption_1`                 | Winoground      | caption_0, caption_1 (given the picture when there is one) |
//! | `question`, `distractors`, an answer     | VQA             | answer, distractors after "Question: ... Answer:" |
//! | `text`, `images` (`template`)            | picture choice  | the text after each picture |
//!
//! DevBench task folders (`manifest.csv`, see [`super::devbench`]) are files of the
//! `devbench` benchmark, named by their folder.
//!
//! Pictures are named by an `image` path (relative to the file), or looked up by id in
//! an image folder (the spec's `images`, else `images/` beside the file): VQA's
//! `image_id` by file stem or trailing number, Winoground's `{image_idx}_{image_key}`.

use std::collections::BTreeMap;

use outloud_core::results::benchmark_name;
use outloud_core::storage::Location;
use serde_json::Value;

use super::devbench;
use crate::error::WorkerError;
use crate::loaders::is_image;

/// How picture-choice text is scored under each picture (DevBench's wording).
pub const PICTURE_CHOICE_TEMPLATE: &str = "The caption for this image is: {text}.";

/// What kind of multiple choice a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    MinimalPairs,
    Ewok,
    Winoground,
    Vqa,
    PictureChoice,
}

impl Format {
    fn detect(record: &Value) -> Option<Self> {
        let has = |field: &str| record.get(field).is_some();
        if has("sentence_good") && has("sentence_bad") {
            Some(Self::MinimalPairs)
        } else if has("Context1") && has("Target1") && has("Target2") {
            Some(Self::Ewok)
        } else if has("caption_0") && has("caption_1") {
            Some(Self::Winoground)
        } else if has("question") && has("distractors") {
            Some(Self::Vqa)
        } else if has("text") && has("images") {
            Some(Self::PictureChoice)
        } else {
            None
        }
    }

    /// Whether the file cannot be scored without pictures.
    pub fn needs_pictures(self) -> bool {
        matches!(self, Self::Vqa | Self::PictureChoice)
    }
}

/// One way to complete an item: text scored after a context, maybe after a picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// URL of the picture the text is conditioned on.
    pub image: Option<String>,
    pub context: String,
    pub continuation: String,
}

impl Candidate {
    fn text(context: &str, continuation: &str) -> Self {
        Self {
            image: None,
            context: context.into(),
            // lm-evaluation-harness joins context and choice with one space.
            continuation: format!(" {continuation}"),
        }
    }

    fn seeing(mut self, image: Option<&str>) -> Self {
        self.image = image.map(str::to_string);
        self
    }
}

/// One multiple-choice item; candidate 0 is the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub candidates: Vec<Candidate>,
}

/// One file of a benchmark: a paradigm (BLiMP), a domain (EWoK), a task.
#[derive(Debug)]
pub struct BenchmarkFile {
    pub name: String,
    pub format: Format,
    pub items: Vec<Item>,
    /// Items that could not be used (malformed, picture missing), with reasons.
    pub unusable: Vec<String>,
}

#[derive(Debug)]
pub struct Benchmark {
    pub name: String,
    pub files: Vec<BenchmarkFile>,
}

/// Files found but not scored, and why.
pub type Ignored = Vec<(String, String)>;

/// Every benchmark under `root`: a folder laid out like `evaluation_data`, one
/// benchmark's folder, or one file. `images` overrides where pictures are looked up.
pub async fn discover(
    root: &Location,
    images: Option<&Location>,
    limit: Option<u64>,
) -> Result<(Vec<Benchmark>, Ignored), WorkerError> {
    let objects = root.objects().await?;
    let mut by_folder: BTreeMap<String, Vec<Location>> = BTreeMap::new();
    for object in objects {
        let url = object.url();
        let in_images = url.split('/').any(|part| part == "images");
        if is_manifest(url) {
            by_folder.entry("devbench".into()).or_default().push(object);
        } else if (url.ends_with(".jsonl") || url.ends_with(".json")) && !in_images {
            by_folder.entry(folder_of(url)).or_default().push(object);
        }
    }
    let mut benchmarks = Vec::new();
    let mut ignored = Vec::new();
    for (folder, files) in by_folder {
        let mut benchmark = Benchmark {
            name: benchmark_name(&folder),
            files: Vec::new(),
        };
        for file in files {
            match read_file(&file, images, limit).await? {
                Ok(read) => benchmark.files.push(read),
                Err(reason) => {
                    tracing::warn!(file = file.url(), %reason, "benchmark file ignored");
                    ignored.push((file.url().to_string(), reason));
                }
            }
        }
        if !benchmark.files.is_empty() {
            benchmarks.push(benchmark);
        }
    }
    Ok((benchmarks, ignored))
}

/// The name of the folder a file is in.
fn folder_of(url: &str) -> String {
    let mut parts = url.rsplit('/');
    parts.next();
    parts.next().unwrap_or("benchmark").to_string()
}

fn is_manifest(url: &str) -> bool {
    url.rsplit('/').next() == Some(devbench::MANIFEST)
}

fn stem(url: &str) -> &str {
    let name = url.rsplit('/').next().unwrap_or(url);
    name.split('.').next().unwrap_or(name)
}

/// Reads one file's items; `Ok(Err(reason))` when it is not a benchmark we can score.
async fn read_file(
    file: &Location,
    images: Option<&Location>,
    limit: Option<u64>,
) -> Result<Result<BenchmarkFile, String>, WorkerError> {
    let bytes = file.get().await?;
    let text = String::from_utf8_lossy(&bytes);
    let records: Vec<Result<Value, String>> = if is_manifest(file.url()) {
        match devbench::records(&text) {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(reason) => return Ok(Err(reason)),
        }
    } else if file.url().ends_with(".json") {
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(rows)) => rows.into_iter().map(Ok).collect(),
            Ok(_) => return Ok(Err("a JSON file must hold an array of items".into())),
            Err(e) => return Ok(Err(format!("not JSON: {e}"))),
        }
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
            .collect()
    };
    let limit = limit.map_or(usize::MAX, |n| n as usize);
    let Some(format) = records.iter().flatten().next().and_then(Format::detect) else {
        let reason = if file.url().contains("glue") {
            "GLUE needs fine-tuning, not zero-shot scoring"
        } else {
            "no known benchmark fields"
        };
        return Ok(Err(reason.into()));
    };
    let pictures = match format {
        Format::Vqa | Format::Winoground => Some(picture_index(file, images).await),
        _ => None,
    };
    // A DevBench task is named by its folder; other files by their own names.
    let named = if is_manifest(file.url()) {
        folder_of(file.url())
    } else {
        stem(file.url()).to_string()
    };
    let mut read = BenchmarkFile {
        name: named,
        format,
        items: Vec::new(),
        unusable: Vec::new(),
    };
    for (line, record) in records.into_iter().enumerate().take(limit) {
        let item = record.and_then(|r| parse_item(format, &r, file, pictures.as_ref()));
        match item {
            Ok(item) => read.items.push(item),
            Err(reason) => read.unusable.push(format!("item {}: {reason}", line + 1)),
        }
    }
    if !read.unusable.is_empty() {
        tracing::warn!(file = file.url(), count = read.unusable.len(), first = %read.unusable[0], "benchmark items unusable");
    }
    Ok(Ok(read))
}

/// Pictures by file stem, and by the number a stem ends with (COCO-style names).
#[derive(Debug, Default)]
struct PictureIndex {
    by_stem: BTreeMap<String, String>,
    by_number: BTreeMap<u64, String>,
}

async fn picture_index(file: &Location, images: Option<&Location>) -> PictureIndex {
    let folder = match images {
        Some(images) => images.clone(),
        None => match file.beside("images") {
            Ok(folder) => folder,
            Err(_) => return PictureIndex::default(),
        },
    };
    let mut index = PictureIndex::default();
    for object in folder.list().await.unwrap_or_default() {
        let url = object.url().to_string();
        if !is_image(&url) {
            continue;
        }
        let stem = stem(&url).to_string();
        let digits: String = stem
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(number) = digits.chars().rev().collect::<String>().parse() {
            index.by_number.entry(number).or_insert_with(|| url.clone());
        }
        index.by_stem.insert(stem, url);
    }
    index
}

fn field<'a>(record: &'a Value, name: &str) -> Result<&'a str, String> {
    record
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{name}` is missing or not text"))
}

fn strings(record: &Value, name: &str) -> Result<Vec<String>, String> {
    let list = record
        .get(name)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{name}` is missing or not a list"))?;
    list.iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("`{name}` must list text"))
}

fn parse_item(
    format: Format,
    record: &Value,
    file: &Location,
    pictures: Option<&PictureIndex>,
) -> Result<Item, String> {
    let candidates = match format {
        Format::MinimalPairs => vec![
            Candidate::text("", field(record, "sentence_good")?),
            Candidate::text("", field(record, "sentence_bad")?),
        ],
        Format::Ewok => {
            let context = field(record, "Context1")?;
            vec![
                Candidate::text(context, field(record, "Target1")?),
                Candidate::text(context, field(record, "Target2")?),
            ]
        }
        Format::Winoground => {
            // Without its picture the pair is scored text-only (BabyLM's unpaired score).
            let image = winoground_picture(record, pictures);
            ["caption_0", "caption_1"]
                .iter()
                .map(|f| Ok(Candidate::text("", field(record, f)?).seeing(image.as_deref())))
                .collect::<Result<_, String>>()?
        }
        Format::Vqa => {
            let image = vqa_picture(record, file, pictures)?;
            let question = field(record, "question")?;
            let answer = ["target_ans", "multiple_choice_answer", "answer"]
                .iter()
                .find_map(|f| field(record, f).ok())
                .ok_or("no answer (`target_ans`, `multiple_choice_answer` or `answer`)")?;
            let prompt = crate::prompts::question_text(question);
            std::iter::once(answer.to_string())
                .chain(strings(record, "distractors")?)
                .map(|choice| Candidate::text(&prompt, &choice).seeing(Some(&image)))
                .collect()
        }
        Format::PictureChoice => {
            let text = field(record, "text")?;
            // DevBench's prompt, unless the file names the one its model learned.
            let template = field(record, "template").unwrap_or(PICTURE_CHOICE_TEMPLATE);
            let sentence = template.replace("{text}", text);
            strings(record, "images")?
                .iter()
                .map(|path| {
                    let url = file.beside(path).map_err(|e| e.to_string())?;
                    Ok(Candidate::text("", &sentence).seeing(Some(url.url())))
                })
                .collect::<Result<_, String>>()?
        }
    };
    if candidates.len() < 2 {
        return Err("fewer than two choices".into());
    }
    Ok(Item { candidates })
}

fn winoground_picture(record: &Value, pictures: Option<&PictureIndex>) -> Option<String> {
    let index = record.get("image_idx")?.as_u64()?;
    let key = record.get("image_key")?.as_str()?;
    pictures?.by_stem.get(&format!("{index}_{key}")).cloned()
}

fn vqa_picture(
    record: &Value,
    file: &Location,
    pictures: Option<&PictureIndex>,
) -> Result<String, String> {
    if let Ok(path) = field(record, "image") {
        return file
            .beside(path)
            .map(|l| l.url().to_string())
            .map_err(|e| e.to_string());
    }
    let id = record.get("image_id").ok_or("no `image` or `image_id`")?;
    let found = pictures.and_then(|p| match id {
        Value::Number(n) => n.as_u64().and_then(|n| p.by_number.get(&n)),
        Value::String(s) => p.by_stem.get(s),
        _ => None,
    });
    found
        .cloned()
        .ok_or_else(|| format!("no picture for image_id {id} in the image folder"))
}
