//! A camera to label maps with the library API, no CLI: each frame of a
//! V4L2 camera goes through the default model; the dominant concept and the
//! model time are printed, and the latest label map (mono8 concept ids) is
//! kept in `labels.png`. A camera that is unplugged is reopened with backoff.
//!
//! ```sh
//! cargo run --release --features camera --example camera_to_labels -- /dev/video0
//! ```

use std::sync::{atomic::AtomicBool, Arc};

use causeseg::model::{backbone, bundled};
use causeseg::pipeline::postprocess::concept_fractions;
use causeseg::source::{self, Capture, SourceOptions, SourceUri};
use causeseg::{EngineChoice, EngineConfig, Model, Segmenter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = std::env::args().nth(1).unwrap_or_else(|| "/dev/video0".into());
    let camera = source::open(&SourceUri::parse(&device)?, &SourceOptions::default())?;
    let cache = backbone::cache_dir(None);
    let model = Model::load(&bundled::default_model_dir(&cache)?)?;
    let names = model.manifest.concepts.names.clone();
    let mut segmenter = Segmenter::new(model, &EngineConfig::new(EngineChoice::Auto, &cache), &cache)?;
    // Set the flag (e.g. from a ctrlc handler) to end the loop.
    let mut capture = Capture::new(camera, Arc::new(AtomicBool::new(false)));
    while let Some(frame) = capture.next_frame()? {
        let result = segmenter.segment(&frame.data.image, &device, None)?;
        let fractions = concept_fractions(&result.labels, names.len());
        let (top, share) = fractions.iter().enumerate().fold((0, 0.0), |best, (k, &f)| if f > best.1 { (k, f) } else { best });
        println!("frame {}: {} {:.0} % | inference {:.1} ms", frame.index, names[top], share * 100.0, result.times.inference_ms);
        result.labels.save("labels.png")?;
    }
    Ok(())
}
