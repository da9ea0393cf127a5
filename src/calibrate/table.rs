//! The calibration table an int8 model directory stores instead of int8
//! weights: one activation scale per quantized tensor, the settings that
//! chose them, and the hash of the float graph they were measured on.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::stats::Method;
use crate::model::ModelError;

/// File name of the table inside an int8 model directory.
pub const TABLE_FILE: &str = "calibration.json";
/// The table format this build reads and writes.
pub const TABLE_VERSION: u32 = 1;

/// How a table was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How activation ranges were chosen.
    pub method: Method,
    /// The percentile of |x| for [`Method::Percentile`].
    pub percentile: f64,
    /// Nodes left in float: node or output names, `prefix*` for every name
    /// that starts with `prefix`.
    pub exclude: Vec<String>,
    /// Calibration images actually used.
    pub images: usize,
    /// SmoothQuant's migration strength α on the LayerNorms that feed
    /// quantized products (`super::smooth`); None: not smoothed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smooth: Option<f32>,
}

/// One activation tensor's range: int8 value `q` stands for `q * scale`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationScale {
    /// The clipping threshold: the largest magnitude represented.
    pub amax: f32,
    /// `amax / 127`.
    pub scale: f32,
}

impl ActivationScale {
    /// The symmetric int8 scale of threshold `amax` (1 for an all-zero tensor).
    pub fn from_amax(amax: f32) -> Self {
        ActivationScale { amax, scale: if amax > 0.0 { amax / 127.0 } else { 1.0 } }
    }
}

/// `calibration.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationTable {
    /// Must equal [`TABLE_VERSION`].
    pub format_version: u32,
    /// `model::fused::source_hash` of the float model the scales belong to.
    pub float_graph_sha256: String,
    /// How the table was made.
    pub settings: Settings,
    /// Scale per activation tensor name of the float fused graph (of the
    /// smoothed graph, for the smoothed tensors).
    pub activations: BTreeMap<String, ActivationScale>,
    /// SmoothQuant's per-channel factors by LayerNorm output name: the
    /// channels are divided by them, the readers' weight rows multiplied.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub smoothing: BTreeMap<String, Vec<f32>>,
}

impl CalibrationTable {
    /// The table as pretty JSON (also what the int8 graph's cache key hashes).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a table always serialises")
    }

    /// Reads `path`; `expected_hash` is the float graph hash of the model
    /// directory it sits in (a table made for another model is an error).
    pub fn load(path: &Path, expected_hash: &str) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::BadFile { path: path.into(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read the calibration table of this int8 model: {e}")))?;
        let table: CalibrationTable = serde_json::from_str(&text).map_err(|e| bad(format!("not a calibration table: {e}")))?;
        if table.format_version != TABLE_VERSION {
            return Err(bad(format!("table format_version {}; this causeseg reads version {TABLE_VERSION}", table.format_version)));
        }
        if table.float_graph_sha256 != expected_hash {
            return Err(bad(format!(
                "calibration table of another model: made for the float graph {}, this model's is {} (recalibrate with `causeseg calibrate`)",
                short(&table.float_graph_sha256),
                short(expected_hash)
            )));
        }
        Ok(table)
    }
}

/// File name of TensorRT's legacy calibration cache written beside the table.
pub const TENSORRT_CACHE_FILE: &str = "calibration.cache";
/// The TensorRT version named in that cache's header (8.6.1: the last
/// release before implicit calibration was deprecated in 10.1).
const TENSORRT_CACHE_VERSION: &str = "8601";

impl CalibrationTable {
    /// The scales as TensorRT's legacy (implicit quantization) calibration
    /// cache: a `TRT-<version>-EntropyCalibration2` header, then one
    /// `tensor: <float32 scale, 8 big-endian hex digits>` line per tensor.
    pub fn tensorrt_cache(&self) -> String {
        let mut text = format!("TRT-{TENSORRT_CACHE_VERSION}-EntropyCalibration2\n");
        for (name, entry) in &self.activations {
            text += &format!("{name}: {:08x}\n", entry.scale.to_bits());
        }
        text
    }
}

/// The first 16 hex digits of a hash, for messages.
fn short(hash: &str) -> &str {
    &hash[..hash.len().min(16)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CalibrationTable {
        CalibrationTable {
            format_version: TABLE_VERSION,
            float_graph_sha256: "ab".repeat(32),
            settings: Settings { method: Method::Percentile, percentile: 99.99, exclude: vec!["head*".into()], images: 3, smooth: Some(0.5) },
            activations: [("x".to_string(), ActivationScale::from_amax(2.54))].into_iter().collect(),
            smoothing: [("ln".to_string(), vec![0.5, 2.0])].into_iter().collect(),
        }
    }

    #[test]
    fn round_trips_and_checks_the_model_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TABLE_FILE);
        std::fs::write(&path, table().to_json()).unwrap();
        assert_eq!(CalibrationTable::load(&path, &"ab".repeat(32)).unwrap(), table());
        let err = CalibrationTable::load(&path, &"cd".repeat(32)).unwrap_err().to_string();
        assert!(err.contains("calibration table of another model") && err.contains("abababab") && err.contains("cdcdcdcd"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn tensorrt_cache_lines_are_big_endian_float_bits() {
        let mut t = table();
        t.activations.insert("y".into(), ActivationScale { amax: 127.0, scale: 1.0 });
        let cache = t.tensorrt_cache();
        let lines: Vec<&str> = cache.lines().collect();
        assert_eq!(lines[0], "TRT-8601-EntropyCalibration2");
        // IEEE 754: 1.0f32 is 0x3f800000, the most significant digit first.
        assert_eq!(lines[2], "y: 3f800000");
        assert_eq!(lines[1], format!("x: {:08x}", t.activations["x"].scale.to_bits()));
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn scale_maps_amax_to_127() {
        let s = ActivationScale::from_amax(2.54);
        assert!((s.scale * 127.0 - 2.54).abs() < 1e-6);
        assert_eq!(ActivationScale::from_amax(0.0).scale, 1.0);
    }
}
