//! What the vision encoder reads for a picture: its pixels, or precomputed features
//! (e.g. a frozen DINOv2's) that users supply as safetensors, found by the picture's
//! file name.

use std::collections::BTreeMap;

use outloud_core::spec::DataKind;
use outloud_core::task_spec::DataInput;
use tch::Tensor;

use crate::data;
use crate::error::WorkerError;
use crate::loaders;
use crate::vlm::{EncoderKind, VisionPath};

/// What the encoder reads for a picture: its pixels (ViT), or its precomputed
/// features, found by the picture's file name (with or without its extension).
pub struct VisualInputs {
    features: Option<BTreeMap<String, Tensor>>,
    /// Each features source read, by name -> SHA-256 of what was read of it.
    pub checksums: BTreeMap<String, String>,
}

impl VisualInputs {
    /// Pixels for a ViT; for a features encoder, the features of every
    /// `image_features` source among `sources`.
    pub async fn load(
        storage: &str,
        sources: &[DataInput],
        vision: &VisionPath,
    ) -> Result<Self, WorkerError> {
        if vision.encoder != EncoderKind::Features {
            return Ok(Self::pixels());
        }
        let mut features = BTreeMap::new();
        let mut checksums = BTreeMap::new();
        for source in sources.iter().filter(|s| s.kind == DataKind::ImageFeatures) {
            let (location, read) = data::source_root(storage, source).await?.logging_reads();
            features.extend(loaders::features(&location).await?);
            checksums.extend(read.digest().map(|sha| (source.name.clone(), sha)));
        }
        Ok(Self {
            checksums,
            ..Self::with_features(features)
        })
    }

    /// Pictures are read as pixels.
    pub fn pixels() -> Self {
        Self {
            features: None,
            checksums: BTreeMap::new(),
        }
    }

    pub fn with_features(features: BTreeMap<String, Tensor>) -> Self {
        Self {
            features: Some(features),
            checksums: BTreeMap::new(),
        }
    }

    /// The encoder's input for the picture `key`; `None` when its features are missing.
    pub fn for_picture(&self, key: &str, pixels: Tensor) -> Option<Tensor> {
        let Some(features) = &self.features else {
            return Some(pixels);
        };
        let name = loaders::file_name(key);
        let stem = name.split('.').next().unwrap_or(name);
        let found = features
            .get(name)
            .or_else(|| features.get(stem))
            .map(Tensor::shallow_clone);
        if found.is_none() {
            tracing::warn!(
                image = key,
                "no precomputed features for this picture; skipped"
            );
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GptConfig;
    use crate::vlm::{VisionConfig, Vlm};
    use tch::{Device, Kind, nn};

    #[test]
    fn precomputed_features_stand_in_for_pixels_by_file_name() {
        let row = |v: f64| Tensor::full([4, 6], v, (Kind::Float, Device::Cpu));
        let inputs = VisualInputs::with_features(BTreeMap::from([
            ("a.png".to_string(), row(1.0)),
            ("b".to_string(), row(2.0)),
        ]));
        let pixels = Tensor::zeros([3, 8, 8], (Kind::Float, Device::Cpu));
        let a = inputs
            .for_picture("images/a.png", pixels.shallow_clone())
            .unwrap();
        assert_eq!(a.size(), vec![4, 6]);
        let b = inputs
            .for_picture("shards/b.jpg", pixels.shallow_clone())
            .unwrap();
        assert_eq!(b.double_value(&[0, 0]), 2.0);
        assert!(
            inputs.for_picture("c.png", pixels).is_none(),
            "missing features are skipped"
        );

        // A model over features trains like one over pixels.
        let vs = nn::VarStore::new(Device::Cpu);
        let lm = GptConfig {
            vocab_size: 300,
            context: 32,
            d_model: 32,
            n_layers: 1,
            n_heads: 4,
        };
        let model = Vlm::new(&vs.root(), lm, VisionConfig::Features { width: 6 });
        let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, 4]);
        let loss = model.loss(&a.unsqueeze(0), &ids, &ids);
        loss.backward();
        assert!(
            vs.variables()["projector.fc1.weight"]
                .grad()
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
    }
}
