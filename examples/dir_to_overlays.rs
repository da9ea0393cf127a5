//! A directory of images to overlays with the library API, no CLI: every
//! JPEG/PNG in `IMAGE_DIR` is segmented with the default model and written
//! as `OUTPUT_DIR/<stem>_overlay.png` (concept colours over the image).
//! Corrupt images are skipped.
//!
//! ```sh
//! cargo run --release --example dir_to_overlays -- examples/images /tmp/overlays
//! ```

use std::path::Path;
use std::sync::Arc;

use causeseg::model::{backbone, bundled};
use causeseg::pipeline::postprocess::{colorize, overlay};
use causeseg::source::{Capture, ImageFiles};
use causeseg::{EngineChoice, EngineConfig, Model, Segmenter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        return Err("usage: dir_to_overlays IMAGE_DIR OUTPUT_DIR".into());
    };
    let cache = backbone::cache_dir(None);
    let model = Model::load(&bundled::default_model_dir(&cache)?)?;
    let colors = model.manifest.concepts.colors.clone();
    let mut segmenter = Segmenter::new(model, &EngineConfig::new(EngineChoice::Auto, &cache), &cache)?;
    std::fs::create_dir_all(&output)?;
    let mut images = Capture::new(Box::new(ImageFiles::open(&input, false)?), Arc::default());
    while let Some(frame) = images.next_frame()? {
        let stem = frame.data.name.unwrap_or_else(|| frame.index.to_string());
        let result = segmenter.segment(&frame.data.image, &stem, None)?;
        let path = Path::new(&output).join(format!("{stem}_overlay.png"));
        overlay(&frame.data.image, &colorize(&result.labels, &colors), 0.5).save(&path)?;
        println!("{} ({:.0} ms)", path.display(), result.times.total_ms());
    }
    Ok(())
}
