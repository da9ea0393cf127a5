//! `model.toml`: what a model directory contains and how to feed it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ModelError;
use crate::head::HeadSpec;

/// The manifest format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The ImageNet mean every supported backbone was trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// The ImageNet standard deviation every supported backbone was trained with.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The longest concept name, in characters: legends, ROS messages and the
/// preview page stay readable.
pub const MAX_CONCEPT_NAME: usize = 64;

/// Why a concept cannot be renamed ([`Manifest::rename_concept`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenameError {
    /// The model has no concept with this id.
    #[error("concept {id} does not exist: the model has concepts 0 to {}", count - 1)]
    UnknownConcept {
        /// The id asked for.
        id: usize,
        /// How many concepts the model has.
        count: usize,
    },
    /// The new name is empty (or only spaces).
    #[error("concept {id}: the name is empty")]
    EmptyName {
        /// The concept.
        id: usize,
    },
    /// The new name is longer than [`MAX_CONCEPT_NAME`].
    #[error("concept {id}: the name has {chars} characters; at most {MAX_CONCEPT_NAME}")]
    NameTooLong {
        /// The concept.
        id: usize,
        /// The name's length in characters.
        chars: usize,
    },
}

/// Parses a display colour written `#RRGGBB` (hex, either case).
pub fn parse_color(text: &str) -> Result<[u8; 3], String> {
    let bad = || format!("'{text}' is not a colour #RRGGBB (e.g. #804080)");
    let hex = text.strip_prefix('#').filter(|h| h.len() == 6 && h.bytes().all(|b| b.is_ascii_hexdigit())).ok_or_else(bad)?;
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
    Ok([byte(0)?, byte(2)?, byte(4)?])
}

/// A display colour as `#rrggbb` (what [`parse_color`] reads).
pub fn color_hex([r, g, b]: [u8; 3]) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// One concept as the live preview's `/concepts` and the ROS 2 node's
/// `~/concepts` list it: `{"id": 0, "name": "sky", "color": "#4682b4"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConceptEntry {
    /// The concept id (its value in label maps).
    pub id: usize,
    /// Its display name.
    pub name: String,
    /// Its display colour, `#rrggbb`.
    pub color: String,
}

/// The concept table of `names` and `colors` (by id) as entries.
pub fn concept_entries(names: &[String], colors: &[[u8; 3]]) -> Vec<ConceptEntry> {
    names.iter().zip(colors).enumerate().map(|(id, (name, &color))| ConceptEntry { id, name: name.clone(), color: color_hex(color) }).collect()
}

/// The parsed `model.toml` of a model directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format; must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Short model name, shown in logs.
    pub name: String,
    /// Free text: how the model was made.
    #[serde(default)]
    pub description: String,
    /// Precision of the inference graph; an int8 model keeps its
    /// calibration table in `calibration.json` (written by `causeseg calibrate`).
    #[serde(default, skip_serializing_if = "ModelPrecision::is_float")]
    pub precision: ModelPrecision,
    /// The backbone network this model runs on.
    pub backbone: BackboneRef,
    /// Input size and normalisation.
    pub input: InputSpec,
    /// How patch features map to concepts.
    pub concepts: ConceptSpec,
    /// A trained CAUSE head applied to the patch features before the
    /// concepts (absent: the concepts act on the raw backbone features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadSpec>,
}

/// Precision of a model's inference graph (`precision` in `model.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelPrecision {
    /// The float fused graph.
    #[default]
    Float,
    /// The fused graph with int8 Q/DQ from the model's calibration table.
    Int8,
}

impl ModelPrecision {
    /// True for [`ModelPrecision::Float`] (the default, left out of `model.toml`).
    pub fn is_float(&self) -> bool {
        *self == ModelPrecision::Float
    }
}

/// A backbone ONNX file in the backbone cache, pinned by hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneRef {
    /// File name inside the backbone cache directory.
    pub file: String,
    /// sha256 of that file (hex); checked before the file is used.
    pub sha256: String,
    /// ViT patch size in pixels.
    pub patch_size: u32,
    /// Token feature dimension.
    pub feature_dim: usize,
}

/// Network input size and normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Input width in pixels (a multiple of the patch size).
    pub width: u32,
    /// Input height in pixels (a multiple of the patch size).
    pub height: u32,
    /// Per-channel RGB mean, on the [0, 1] scale.
    pub mean: [f32; 3],
    /// Per-channel RGB standard deviation, on the [0, 1] scale.
    pub std: [f32; 3],
    /// How images of another aspect ratio are fitted to the input.
    #[serde(default)]
    pub resize: ResizePolicy,
}

/// How an image is fitted to the model input when its aspect ratio differs
/// (see `pipeline::preprocess`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ResizePolicy {
    /// Scale each axis to fill the input (aspect ratio not kept).
    #[default]
    Stretch,
    /// Keep the aspect ratio, pad to the input size.
    Letterbox,
    /// Keep the aspect ratio, crop the centre.
    CenterCrop,
}

/// The concept mapping: centroid vectors plus display names and colours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConceptSpec {
    /// `.npy` file, float32 `[K, feature_dim]`: one vector per concept; a
    /// patch belongs to the concept of highest cosine similarity.
    pub centroids: String,
    /// One display name per concept.
    pub names: Vec<String>,
    /// One RGB display colour per concept.
    pub colors: Vec<[u8; 3]>,
}

impl Manifest {
    /// The manifest of a new model with `concepts` concepts (centroids in
    /// `centroids.npy`, names "concept i", the default palette), no head.
    pub fn for_concepts(name: &str, backbone: BackboneRef, input: InputSpec, concepts: usize, description: String) -> Self {
        Manifest {
            format_version: FORMAT_VERSION,
            name: name.into(),
            description,
            precision: ModelPrecision::Float,
            backbone,
            input,
            concepts: ConceptSpec {
                centroids: "centroids.npy".into(),
                names: (0..concepts).map(|i| format!("concept {i}")).collect(),
                colors: (0..concepts).map(super::default_color).collect(),
            },
            head: None,
        }
    }

    /// Parses manifest text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::InvalidManifest { path: path.into(), reason };
        let table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        match table.get("format_version") {
            None => return Err(invalid("missing field `format_version`".into())),
            Some(toml::Value::Integer(v)) if *v == FORMAT_VERSION as i64 => {}
            Some(v) => {
                return Err(ModelError::UnsupportedVersion { path: path.into(), found: v.to_string() });
            }
        }
        let manifest: Manifest = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        manifest.validate().map_err(invalid)?;
        Ok(manifest)
    }

    /// Renames concept `id` (a display name: never used in training; trimmed,
    /// at most [`MAX_CONCEPT_NAME`] characters) and, when given, sets its
    /// display colour.
    pub fn rename_concept(&mut self, id: usize, name: &str, color: Option<[u8; 3]>) -> Result<(), RenameError> {
        let count = self.concepts.names.len();
        if id >= count {
            return Err(RenameError::UnknownConcept { id, count });
        }
        let name = name.trim();
        let chars = name.chars().count();
        if chars == 0 {
            return Err(RenameError::EmptyName { id });
        }
        if chars > MAX_CONCEPT_NAME {
            return Err(RenameError::NameTooLong { id, chars });
        }
        self.concepts.names[id] = name.to_string();
        if let Some(color) = color {
            self.concepts.colors[id] = color;
        }
        Ok(())
    }

    /// Serialises the manifest as TOML, arrays (mean, std, colours) inline
    /// so a person can read and edit it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serialises")
    }

    fn validate(&self) -> Result<(), String> {
        let p = self.backbone.patch_size;
        if p == 0 || !self.input.width.is_multiple_of(p) || !self.input.height.is_multiple_of(p) || self.input.width == 0 || self.input.height == 0 {
            return Err(format!(
                "input size {}x{} is not a positive multiple of the patch size {p}",
                self.input.width, self.input.height
            ));
        }
        let k = self.concepts.names.len();
        if k == 0 || k > 255 {
            return Err(format!("{k} concept names; expected between 1 and 255"));
        }
        if self.concepts.colors.len() != k {
            return Err(format!("{k} concept names but {} colours", self.concepts.colors.len()));
        }
        if self.head.as_ref().is_some_and(|h| h.output_dim == 0) {
            return Err("head output_dim must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            name: "toy".into(),
            description: String::new(),
            precision: ModelPrecision::Float,
            backbone: BackboneRef { file: "b.onnx".into(), sha256: "00".into(), patch_size: 14, feature_dim: 384 },
            input: InputSpec {
                width: 448,
                height: 336,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
                resize: ResizePolicy::Stretch,
            },
            concepts: ConceptSpec { centroids: "c.npy".into(), names: vec!["a".into()], colors: vec![[1, 2, 3]] },
            head: None,
        }
    }

    #[test]
    fn renaming_checks_the_concept_id() {
        let mut m = sample();
        m.rename_concept(0, " road ", Some([128, 64, 128])).unwrap();
        assert_eq!((m.concepts.names[0].as_str(), m.concepts.colors[0]), ("road", [128, 64, 128]));
        assert_eq!(m.rename_concept(1, "sky", None).unwrap_err().to_string(), "concept 1 does not exist: the model has concepts 0 to 0");
        assert_eq!(m.rename_concept(0, " ", None).unwrap_err().to_string(), "concept 0: the name is empty");
        m.rename_concept(0, &"é".repeat(MAX_CONCEPT_NAME), None).unwrap();
        let long = "x".repeat(MAX_CONCEPT_NAME + 1);
        assert_eq!(m.rename_concept(0, &long, None).unwrap_err().to_string(), "concept 0: the name has 65 characters; at most 64");
    }

    #[test]
    fn colours_are_hex_triplets() {
        assert_eq!(parse_color("#804080"), Ok([0x80, 0x40, 0x80]));
        assert_eq!(parse_color("#A0b0C0"), Ok([0xa0, 0xb0, 0xc0]));
        for bad in ["804080", "#80408", "#8040800", "#zzzzzz", "#+f+f+f", "#ééé", ""] {
            assert_eq!(parse_color(bad).unwrap_err(), format!("'{bad}' is not a colour #RRGGBB (e.g. #804080)"));
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_toml(), Path::new("m.toml")).unwrap(), m);
    }

    #[test]
    fn arrays_are_written_inline() {
        let text = sample().to_toml();
        assert!(text.contains("mean = [0.485, 0.456, 0.406]"), "{text}");
        assert!(text.contains("colors = [[1, 2, 3]]"), "{text}");
    }

    #[test]
    fn precision_defaults_to_float_and_round_trips() {
        assert!(!sample().to_toml().contains("precision"));
        let int8 = Manifest { precision: ModelPrecision::Int8, ..sample() };
        let text = int8.to_toml();
        assert!(text.contains("precision = \"int8\""), "{text}");
        assert_eq!(Manifest::parse(&text, Path::new("m.toml")).unwrap(), int8);
    }

    #[test]
    fn unknown_version_is_named() {
        let text = sample().to_toml().replace("format_version = 1", "format_version = 7");
        let err = Manifest::parse(&text, Path::new("m.toml")).unwrap_err().to_string();
        assert!(err.contains("format_version 7") && err.contains("reads version 1"), "{err}");
    }

    #[test]
    fn missing_field_is_named() {
        let text = sample().to_toml().replace("patch_size = 14\n", "");
        let err = Manifest::parse(&text, Path::new("m.toml")).unwrap_err().to_string();
        assert!(err.contains("patch_size"), "{err}");
    }

    #[test]
    fn input_must_be_a_multiple_of_the_patch() {
        let text = sample().to_toml().replace("width = 448", "width = 450");
        let err = Manifest::parse(&text, Path::new("m.toml")).unwrap_err().to_string();
        assert!(err.contains("450x336"), "{err}");
    }
}
