//! The calibration report (`calibration_report.{md,json,png}` in an int8
//! model directory): per-tensor ranges and scales, the nodes left float,
//! and the int8 graph measured against the float one on held-out images:
//! per-token score cosine, concept-label agreement, per-layer error.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;

use super::{for_each_image, preprocessor, probe::Probe, Calibration, CalibrationError, Method, Settings};
use crate::engine::EngineConfig;
use crate::eval::plot::bar_chart;
use crate::model::Model;
use crate::onnx::pb;
use crate::pipeline::postprocess::upsample_argmax;
use crate::pipeline::Segmenter;

/// One calibrated activation tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorSummary {
    /// Tensor name in the float fused graph.
    pub tensor: String,
    /// Smallest value seen.
    pub min: f32,
    /// Largest value seen.
    pub max: f32,
    /// The threshold each method picks: min-max, percentile, entropy.
    pub amax_minmax: f32,
    /// See `amax_minmax`.
    pub amax_percentile: f32,
    /// See `amax_minmax`.
    pub amax_entropy: f32,
    /// The threshold in the table.
    pub amax: f32,
    /// The int8 scale in the table.
    pub scale: f32,
    /// Values beyond the threshold (clipped), percent.
    pub clipped_percent: f64,
}

/// A node left in float, and why.
#[derive(Debug, Clone, Serialize)]
pub struct FloatNode {
    /// Node name.
    pub node: String,
    /// Why it is not quantized.
    pub reason: String,
}

/// The int8 graph against the float one on held-out images.
#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    /// Engine both graphs ran on.
    pub engine: String,
    /// Images compared.
    pub images: usize,
    /// Mean over patches of the cosine between float and int8 concept scores.
    pub score_cosine: f64,
    /// Patches with the same concept (argmax), percent.
    pub patch_agreement: f64,
    /// Pixels with the same concept (bilinear upsampling, argmax), percent.
    pub pixel_agreement: f64,
}

/// One quantized node's output against float.
#[derive(Debug, Clone, Serialize)]
pub struct LayerError {
    /// Node name.
    pub node: String,
    /// Cosine between its float and int8 outputs over the images.
    pub cosine: f64,
}

/// What `calibration_report.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Model name.
    pub model: String,
    /// The float graph the table belongs to.
    pub float_graph_sha256: String,
    /// Calibration settings.
    pub settings: Settings,
    /// Images that failed to decode and were skipped.
    pub skipped_images: usize,
    /// Seconds spent collecting statistics.
    pub calibration_seconds: f64,
    /// Nodes given int8 inputs.
    pub quantized_nodes: usize,
    /// MatMul/Gemm/Conv nodes left float.
    pub float_nodes: Vec<FloatNode>,
    /// Every calibrated tensor.
    pub tensors: Vec<TensorSummary>,
    /// Held-out comparison, one per engine (empty without held-out images).
    pub accuracy: Vec<Accuracy>,
    /// Per-layer error on held-out images, in graph order.
    pub layers: Vec<LayerError>,
    /// Tensors smoothed by SmoothQuant (LayerNorm and GELU outputs).
    pub smoothed_tensors: Vec<String>,
}

impl Report {
    /// The report of `calibration` on `model`, without held-out measurements.
    pub fn new(model: &Model, calibration: &Calibration) -> Self {
        let settings = &calibration.table.settings;
        let tensors = calibration
            .stats
            .iter()
            .map(|(name, s)| {
                let entry = calibration.table.activations[name];
                let h = &s.histogram;
                let first_clipped = if h.width > 0.0 { ((entry.amax / h.width).ceil() as usize).min(h.bins.len()) } else { h.bins.len() };
                let clipped: u64 = h.bins[first_clipped..].iter().sum();
                TensorSummary {
                    tensor: name.clone(),
                    min: s.min,
                    max: s.max,
                    amax_minmax: s.amax(Method::MinMax, settings.percentile),
                    amax_percentile: s.amax(Method::Percentile, settings.percentile),
                    amax_entropy: s.amax(Method::Entropy, settings.percentile),
                    amax: entry.amax,
                    scale: entry.scale,
                    clipped_percent: 100.0 * clipped as f64 / s.count.max(1) as f64,
                }
            })
            .collect();
        Report {
            model: model.manifest.name.clone(),
            float_graph_sha256: calibration.table.float_graph_sha256.clone(),
            settings: settings.clone(),
            skipped_images: calibration.skipped_images,
            calibration_seconds: calibration.seconds,
            quantized_nodes: calibration.plan.nodes.len(),
            float_nodes: calibration.plan.skipped.iter().map(|(node, reason)| FloatNode { node: node.clone(), reason: reason.clone() }).collect(),
            tensors,
            accuracy: vec![],
            layers: vec![],
            smoothed_tensors: calibration.table.smoothing.keys().cloned().collect(),
        }
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let s = &self.settings;
        let mut md = format!("# INT8 calibration of {}\n\n", self.model);
        let percentile = if s.method == Method::Percentile { format!(" {}", s.percentile) } else { String::new() };
        md += &format!(
            "- method: {}{percentile}, {} calibration images ({} skipped), {:.1} s\n- float graph: {}\n- {} MatMul/Gemm/Conv nodes quantized, {} left float\n",
            s.method.name(),
            s.images,
            self.skipped_images,
            self.calibration_seconds,
            self.float_graph_sha256,
            self.quantized_nodes,
            self.float_nodes.len()
        );
        if let Some(alpha) = s.smooth {
            md += &format!("- SmoothQuant, α = {alpha}: {} LayerNorm and GELU outputs smoothed\n", self.smoothed_tensors.len());
        }
        if !s.exclude.is_empty() {
            md += &format!("- excluded: {}\n", s.exclude.join(", "));
        }
        if self.accuracy.is_empty() {
            md += "\n(no held-out images: accuracy not measured)\n";
        } else {
            md += "\n## Int8 against float on held-out images\n\n| engine | images | per-patch score cosine | patch label agreement | pixel label agreement |\n|---|---|---|---|---|\n";
            for a in &self.accuracy {
                md += &format!("| {} | {} | {:.5} | {:.2} % | {:.2} % |\n", a.engine, a.images, a.score_cosine, a.patch_agreement, a.pixel_agreement);
            }
        }
        if !self.layers.is_empty() {
            md += "\n## Per-layer output cosine, int8 against float (worst 10; all in the JSON and the PNG)\n\n| node | cosine |\n|---|---|\n";
            let mut worst: Vec<&LayerError> = self.layers.iter().collect();
            worst.sort_by(|a, b| a.cosine.total_cmp(&b.cosine));
            for l in worst.iter().take(10) {
                md += &format!("| `{}` | {:.5} |\n", l.node, l.cosine);
            }
        }
        if !self.float_nodes.is_empty() {
            md += "\n## Left float\n\n| node | reason |\n|---|---|\n";
            for n in &self.float_nodes {
                md += &format!("| `{}` | {} |\n", n.node, n.reason);
            }
        }
        md += "\n## Activation ranges\n\n| tensor | min | max | amax min-max | amax percentile | amax entropy | scale | clipped % |\n|---|---|---|---|---|---|---|---|\n";
        for t in &self.tensors {
            md += &format!(
                "| `{}` | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3e} | {:.4} |\n",
                t.tensor, t.min, t.max, t.amax_minmax, t.amax_percentile, t.amax_entropy, t.scale, t.clipped_percent
            );
        }
        md
    }

    /// A bar chart of per-layer error (1 - cosine), in graph order.
    pub fn chart(&self) -> Option<RgbImage> {
        (!self.layers.is_empty()).then(|| {
            let errors: Vec<f64> = self.layers.iter().map(|l| 1.0 - l.cosine).collect();
            bar_chart(&errors, "1 - cosine of each quantized node's output, int8 vs float, in graph order")
        })
    }
}

/// Runs `float` and `int8` on the first `limit` decodable images of `files`
/// (in `dir`) on `engine` and compares their concept scores and labels.
pub fn accuracy(float: &Model, int8: &Model, engine: &EngineConfig, cache: &Path, dir: &Path, files: &[PathBuf], limit: usize) -> Result<Accuracy, CalibrationError> {
    let mut float_run = Segmenter::new(float.clone(), engine, cache)?;
    let mut int8_run = Segmenter::new(int8.clone(), engine, cache)?;
    let patch = float.manifest.backbone.patch_size;
    let (mut cosine, mut patches, mut same_patches, mut pixels, mut same_pixels) = (0.0, 0usize, 0usize, 0usize, 0usize);
    let (_, images, _) = for_each_image(dir, files, limit, "compare", |path, image| {
        let what = path.display().to_string();
        let (a, placement, _) = float_run.inference_mut().run(image, &what)?;
        let (b, _, _) = int8_run.inference_mut().run(image, &what)?;
        let k = a.dim().2;
        for (x, y) in a.as_slice().expect("standard layout").chunks(k).zip(b.as_slice().expect("standard layout").chunks(k)) {
            cosine += cosine_of(x, y);
            same_patches += usize::from(crate::linalg::argmax(x) == crate::linalg::argmax(y));
            patches += 1;
        }
        let (w, h) = image.dimensions();
        let (la, lb) = (upsample_argmax(&a, &placement, patch, w, h), upsample_argmax(&b, &placement, patch, w, h));
        same_pixels += la.as_raw().iter().zip(lb.as_raw()).filter(|(p, q)| p == q).count();
        pixels += la.as_raw().len();
        Ok(())
    })?;
    Ok(Accuracy {
        engine: int8_run.inference_mut().backend(),
        images,
        score_cosine: cosine / patches as f64,
        patch_agreement: 100.0 * same_patches as f64 / patches as f64,
        pixel_agreement: 100.0 * same_pixels as f64 / pixels as f64,
    })
}

/// The cosine between each quantized node's output in `float_graph` and in
/// `int8_graph` (tract), over the first `limit` decodable images of `files`.
pub fn layer_errors(
    model: &Model,
    float_graph: &pb::ModelProto,
    int8_graph: &pb::ModelProto,
    calibration: &Calibration,
    dir: &Path,
    files: &[PathBuf],
    limit: usize,
) -> Result<Vec<LayerError>, CalibrationError> {
    let outputs: Vec<String> = calibration.plan.nodes.iter().map(|n| n.output.clone()).collect();
    let input = &model.manifest.input;
    let mut float_probe = Probe::load(float_graph, &outputs, input.width, input.height)?;
    let mut int8_probe = Probe::load(int8_graph, &outputs, input.width, input.height)?;
    let mut preprocessor = preprocessor(model);
    // Per layer: dot product and both squared norms.
    let mut sums = vec![(0f64, 0f64, 0f64); outputs.len()];
    for_each_image(dir, files, limit, "layers", |path, image| {
        let (tensor, _) = preprocessor.run(image, &path.display().to_string())?;
        let a = float_probe.run(tensor.clone())?;
        let b = int8_probe.run(tensor)?;
        for ((x, y), sum) in a.iter().zip(&b).zip(&mut sums) {
            for (&p, &q) in x.iter().zip(y) {
                let (p, q) = (p as f64, q as f64);
                sum.0 += p * q;
                sum.1 += p * p;
                sum.2 += q * q;
            }
        }
        Ok(())
    })?;
    Ok(calibration
        .plan
        .nodes
        .iter()
        .zip(sums)
        .map(|(n, (dot, a, b))| LayerError { node: n.name.clone(), cosine: dot / (a.sqrt() * b.sqrt()).max(f64::MIN_POSITIVE) })
        .collect())
}

/// Cosine similarity of two vectors (1 when both are zero).
fn cosine_of(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += x as f64 * y as f64;
        na += x as f64 * x as f64;
        nb += y as f64 * y as f64;
    }
    if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        dot / (na.sqrt() * nb.sqrt()).max(f64::MIN_POSITIVE)
    }
}
