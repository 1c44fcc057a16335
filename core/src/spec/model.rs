//! The model part of a job spec: a size preset with overrides, and the vision path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Model size presets, kept beside the deployment files.
const MODEL_PRESETS: &str = include_str!("../../../deploy/presets/models.yaml");

/// A preset name plus optional overrides of its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default = "default_preset")]
    pub preset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_model: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_layers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_heads: Option<u32>,
    /// The vision path, for phases that see pictures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<VisionSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionEncoder {
    /// A small ViT trained from scratch on raw pixels.
    Vit,
    /// Precomputed features (e.g. from a frozen DINOv2) supplied with the data.
    Features,
}

/// How pictures become visual tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionSpec {
    #[serde(default = "default_encoder")]
    pub encoder: VisionEncoder,
    /// Pictures are resized to this many pixels per side.
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    #[serde(default = "default_patch_size")]
    pub patch_size: u32,
    #[serde(default = "default_vision_width")]
    pub d_model: u32,
    #[serde(default = "default_vision_layers")]
    pub n_layers: u32,
    #[serde(default = "default_vision_heads")]
    pub n_heads: u32,
    /// Width of precomputed features (`encoder: features`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features_width: Option<u32>,
    /// Keep the encoder's weights fixed while the projector and LM learn.
    #[serde(default)]
    pub frozen: bool,
}

fn default_encoder() -> VisionEncoder {
    VisionEncoder::Vit
}
fn default_image_size() -> u32 {
    32
}
fn default_patch_size() -> u32 {
    8
}
fn default_vision_width() -> u32 {
    64
}
fn default_vision_layers() -> u32 {
    2
}
fn default_vision_heads() -> u32 {
    4
}

impl VisionSpec {
    /// Visual tokens per picture.
    pub fn tokens(&self) -> u32 {
        let side = self.image_size / self.patch_size.max(1);
        side * side
    }

    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            problems.push((
                "patch_size",
                format!("must divide image_size ({}) evenly", self.image_size),
            ));
        }
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            problems.push((
                "n_heads",
                format!("must divide d_model ({}) evenly", self.d_model),
            ));
        }
        if self.encoder == VisionEncoder::Features && self.features_width.unwrap_or(0) == 0 {
            problems.push((
                "features_width",
                "precomputed features need their width".into(),
            ));
        }
        problems
    }
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            preset: default_preset(),
            vocab_size: None,
            context: None,
            d_model: None,
            n_layers: None,
            n_heads: None,
            vision: None,
        }
    }
}

fn default_preset() -> String {
    "tiny".into()
}

/// The concrete model shape a preset plus overrides resolve to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub vocab_size: u32,
    pub context: u32,
    pub d_model: u32,
    pub n_layers: u32,
    pub n_heads: u32,
}

impl ModelSpec {
    /// The preset's shape with this spec's overrides applied.
    pub fn shape(&self) -> Result<ModelShape, String> {
        let presets: BTreeMap<String, ModelShape> =
            serde_yaml::from_str(MODEL_PRESETS).map_err(|e| format!("model presets: {e}"))?;
        let base = presets.get(&self.preset).ok_or_else(|| {
            let names: Vec<_> = presets.keys().map(String::as_str).collect();
            format!(
                "unknown preset `{}`, expected one of {}",
                self.preset,
                names.join(", ")
            )
        })?;
        Ok(ModelShape {
            vocab_size: self.vocab_size.unwrap_or(base.vocab_size),
            context: self.context.unwrap_or(base.context),
            d_model: self.d_model.unwrap_or(base.d_model),
            n_layers: self.n_layers.unwrap_or(base.n_layers),
            n_heads: self.n_heads.unwrap_or(base.n_heads),
        })
    }
}

impl ModelShape {
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.vocab_size < 300 {
            // Byte-level BPE starts from 256 byte tokens plus the special ones.
            problems.push(("vocab_size", "must be at least 300".into()));
        }
        if self.context < 2 {
            problems.push(("context", "must be at least 2".into()));
        }
        if self.n_layers == 0 {
            problems.push(("n_layers", "must be at least 1".into()));
        }
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            problems.push((
                "n_heads",
                format!("must divide d_model ({}) evenly", self.d_model),
            ));
        }
        problems
    }
}
