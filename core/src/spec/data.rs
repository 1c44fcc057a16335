//! Data in a spec: the sources a job declares (their kinds and where they are) and the
//! entries by which a phase reads them (with weights, and for a picture-book world, what
//! it gives the phase).

use serde::{Deserialize, Serialize};

use super::spelled;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// Plain text files (BabyLM `.train` files): `path` is a file or a folder of them.
    Text,
    /// The embedded child-directed corpus, generated from `seed` into the job's storage.
    GeneratedText,
    /// The embedded picture-book world (pictures, captions, questions, text), generated
    /// from `seed` with `pictures` captioned training pictures into the job's storage.
    PictureBook,
    /// Image-caption pairs: a JSONL file (`image`, `caption`), tar shards, or a folder.
    ImageCaptions,
    /// Questions about images: JSONL (`image`, `question`, `answer`, `distractors`).
    Questions,
    /// Images without words: a folder of images or tar shards.
    UnlabeledImages,
    /// Precomputed image features (`model.vision.encoder: features`): a safetensors file
    /// with one (N, D) tensor per image, named by the image's file name.
    ImageFeatures,
}

impl DataKind {
    /// The name a spec uses.
    pub fn name(self) -> String {
        spelled(&self)
    }

    /// Kinds read from a user-given `path` (the others are generated).
    pub fn has_path(self) -> bool {
        !matches!(self, DataKind::GeneratedText | DataKind::PictureBook)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    pub name: String,
    pub kind: DataKind,
    /// `text`: a file or folder, as a URL or a path (relative to the submitting directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `generated_text`: the generator's seed.
    #[serde(default)]
    pub seed: u64,
    /// `generated_text`: how many words to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<u64>,
    /// `picture_book`: how many captioned training pictures to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pictures: Option<u64>,
}

/// A phase's data entry: a source's name, the share of batches drawn from it, and for
/// a picture-book world in a phase that sees pictures, what it gives (`as`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataRef {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(rename = "as", skip_serializing_if = "Option::is_none")]
    pub read_as: Option<ReadAs>,
}

/// What a picture-book world gives a phase that sees pictures: its captions (phase 2's
/// default; in phase 4, replay of what phase 2 taught) or its questions (phase 4's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadAs {
    Captions,
    Questions,
}

impl DataRef {
    pub fn named(source: &str) -> Self {
        Self {
            source: source.into(),
            weight: None,
            read_as: None,
        }
    }
}

impl<'de> Deserialize<'de> for DataRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Name(String),
            Weighted(Weighted),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Weighted {
            source: String,
            #[serde(default)]
            weight: Option<f64>,
            #[serde(default, rename = "as")]
            read_as: Option<ReadAs>,
        }
        Ok(match Written::deserialize(d)? {
            Written::Name(source) => DataRef::named(&source),
            Written::Weighted(w) => DataRef {
                source: w.source,
                weight: w.weight,
                read_as: w.read_as,
            },
        })
    }
}
