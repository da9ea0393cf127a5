//! CAUSE training (`causeseg fit --method cause`), on cached backbone
//! features, with candle's autodiff on the CPU.
//!
//! Stages (CAUSE, Kim, Lee & Ro 2023, as this project implements it):
//! 0. [`whiten`]: optional centring / PCA whitening of the backbone tokens
//!    (label-free; folded into the head afterwards).
//! 1. [`modularity`]: the concept clusterbook (K vectors of size D) by
//!    modularity maximisation on per-image affinity graphs of grid-sampled
//!    tokens; initialised from sampled, normalised tokens.
//! 2. [`head_training`] with [`contrastive`]: the MLP or TR segmentation
//!    head (its forward in [`crate::head::candle`]), its projection head and
//!    EMA teacher ([`ema`]), trained with the concept-wise contrastive loss
//!    against in-batch teacher tokens and the concept bank.
//! 3. [`probe`]: N concept vectors on the head's features, by spherical
//!    k-means, a Gaussian mixture ([`mixture`]) or the modularity loss.
//! 4. [`self_training`] (optional): the probe self-trained on principal
//!    mask proposals of the training images (PriMaPs-EM), label-free.
//!
//! [`run`] runs the stages; [`fit`] is the whole `fit --method cause`
//! (features, stages, optional measurement, the model directory).
//! [`evaluate`] measures a trained head + probe on labelled images (labels
//! are only read there and by the protocol's supervised [`reference`](mod@reference),
//! never by a training stage).

pub mod adam;
pub mod contrastive;
pub mod ema;
pub mod evaluate;
pub mod fit;
pub mod head_training;
pub mod mixture;
pub mod modularity;
pub mod probe;
pub mod protocol;
pub mod reference;
pub mod run;
pub mod self_training;
pub mod whiten;

use candle_core::{Tensor, D};

pub use super::{Result, TrainError};

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
