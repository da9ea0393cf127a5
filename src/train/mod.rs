//! CAUSE training (`causeseg fit --method cause`), on cached backbone
//! features, with candle's autodiff on the CPU.
//!
//! Stages (DESIGN.md, "CAUSE, as the project implements it"):
//! 0. [`whiten`]: optional centring / PCA whitening of the backbone tokens
//!    (label-free; folded into the head afterwards).
//! 1. [`modularity`]: the concept clusterbook (K vectors of size D) by
//!    modularity maximisation on per-image affinity graphs of grid-sampled
//!    tokens; initialised from sampled, normalised tokens.
//! 2. [`head`] + [`contrastive`]: the MLP segmentation head, its projection
//!    head and EMA teacher, trained with the concept-wise contrastive loss
//!    against in-batch teacher tokens and the concept bank.
//! 3. [`probe`]: N concept vectors on the head's features, by spherical
//!    k-means or by the modularity loss.
//!
//! [`evaluate`] measures a trained head + probe on labelled images (labels
//! are only read there, never by a training stage). [`pipeline`] runs every
//! stage and writes the model directory.

pub mod adam;
pub mod contrastive;
pub mod data;
pub mod evaluate;
pub mod head;
pub mod modularity;
pub mod pipeline;
pub mod probe;
pub mod tr;
pub mod whiten;

use candle_core::{Tensor, D};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed (shape bug or allocation failure).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The loss or its gradient became NaN or infinite: training stops,
    /// nothing is written.
    #[error("{stage}: the loss or its gradient became {value} at step {step}; training stopped (check the features, try a lower learning rate); no model was written")]
    NonFinite { stage: &'static str, step: usize, value: f32 },
    /// Too little data for what was asked.
    #[error("{0}")]
    TooLittleData(String),
    /// Inputs that cannot be used.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Rows scaled to unit L2 norm (a small epsilon keeps zero rows finite).
pub fn normalize_rows(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    x.broadcast_div(&norm)
}

/// Fails with [`TrainError::NonFinite`] unless `value` is finite.
pub fn check_finite(stage: &'static str, step: usize, value: f32) -> Result<f32> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(TrainError::NonFinite { stage, step, value })
    }
}
