//! The CAUSE-MLP head and its projection head as candle tensors: student
//! (trainable `Var`s), EMA teacher, dropout, and the export to the runtime's
//! [`MlpHead`](crate::pipeline::head::MlpHead).

use candle_core::{Device, Tensor, Var};
use ndarray::{Array1, Array2};
use rand::Rng;

use crate::pipeline::head::{Linear, MlpHead};

/// Parameter order: f1 (w, b), f2a (w, b), f2b (w, b), projection (w, b).
pub const PARAMETERS: usize = 8;

/// Sizes of the head.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    /// Backbone feature size D.
    pub input: usize,
    /// Head output size R (90 in CAUSE).
    pub reduced: usize,
    /// Projection size (2048 in CAUSE).
    pub projection: usize,
}

/// PyTorch's default initialisation of `Linear(fan_in, fan_out)`:
/// weight and bias uniform in `±1/sqrt(fan_in)`.
fn linear_init(fan_in: usize, fan_out: usize, rng: &mut impl Rng, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let w: Vec<f32> = (0..fan_in * fan_out).map(|_| rng.random_range(-bound..bound)).collect();
    let b: Vec<f32> = (0..fan_out).map(|_| rng.random_range(-bound..bound)).collect();
    Ok((Tensor::from_vec(w, (fan_out, fan_in), device)?, Tensor::from_vec(b, fan_out, device)?))
}

/// Freshly initialised parameters (see [`PARAMETERS`] for the order).
pub fn init(shape: HeadShape, rng: &mut impl Rng, device: &Device) -> candle_core::Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(PARAMETERS);
    for (i, o) in [(shape.input, shape.reduced), (shape.input, shape.input), (shape.input, shape.reduced), (shape.reduced, shape.projection)] {
        let (w, b) = linear_init(i, o, rng, device)?;
        out.push(w);
        out.push(b);
    }
    Ok(out)
}

fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&w.t()?)?.broadcast_add(b)
}

/// Inverted-dropout mask `[n, d]`: 0 with probability `p`, else `1/(1-p)`.
pub fn dropout_mask(n: usize, d: usize, p: f64, rng: &mut impl Rng, device: &Device) -> candle_core::Result<Tensor> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let v: Vec<f32> = (0..n * d).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
    Tensor::from_vec(v, (n, d), device)
}

/// Head features `[n, R]` of tokens `x [n, D]`; `drop` holds the dropout
/// masks of the two branches' inputs (as the reference applies dropout
/// separately to each branch).
pub fn head_forward(params: &[Tensor], x: &Tensor, drop: Option<(&Tensor, &Tensor)>) -> candle_core::Result<Tensor> {
    let (x1, x2) = match drop {
        Some((m1, m2)) => ((x * m1)?, (x * m2)?),
        None => (x.clone(), x.clone()),
    };
    let f1 = linear(&x1, &params[0], &params[1])?;
    let hidden = linear(&x2, &params[2], &params[3])?.relu()?;
    f1 + linear(&hidden, &params[4], &params[5])?
}

/// Projection `[n, P]` of head features.
pub fn project(params: &[Tensor], head: &Tensor) -> candle_core::Result<Tensor> {
    linear(head, &params[6], &params[7])
}

/// The trainable student.
pub struct Student {
    /// Parameters as variables, in [`PARAMETERS`] order.
    pub vars: Vec<Var>,
}

impl Student {
    /// A student starting from `params`.
    pub fn new(params: &[Tensor]) -> candle_core::Result<Self> {
        Ok(Student { vars: params.iter().map(Var::from_tensor).collect::<candle_core::Result<_>>()? })
    }

    /// The parameters as tensors (tracked for gradients).
    pub fn tensors(&self) -> Vec<Tensor> {
        self.vars.iter().map(|v| v.as_tensor().clone()).collect()
    }
}

/// The EMA teacher: plain tensors, never differentiated.
pub struct Teacher {
    /// Parameters in [`PARAMETERS`] order.
    pub params: Vec<Tensor>,
}

impl Teacher {
    /// A teacher equal to the student (the reference's `ema_init`).
    pub fn from_student(student: &Student) -> candle_core::Result<Self> {
        Ok(Teacher { params: student.vars.iter().map(|v| v.as_tensor().detach().copy()).collect::<candle_core::Result<_>>()? })
    }

    /// `teacher = decay * teacher + (1 - decay) * student`.
    pub fn update(&mut self, student: &Student, decay: f64) -> candle_core::Result<()> {
        for (t, s) in self.params.iter_mut().zip(&student.vars) {
            *t = (t.affine(decay, 0.0)? + s.as_tensor().detach().affine(1.0 - decay, 0.0)?)?;
        }
        Ok(())
    }
}

fn to_array2(t: &Tensor) -> candle_core::Result<Array2<f32>> {
    let (r, c) = t.dims2()?;
    Ok(Array2::from_shape_vec((r, c), t.flatten_all()?.to_vec1::<f32>()?).expect("r*c values"))
}

/// The runtime head (f1, f2a, f2b; the projection is training-only).
pub fn to_runtime(params: &[Tensor]) -> candle_core::Result<MlpHead> {
    let layer = |i: usize| -> candle_core::Result<Linear> {
        Ok(Linear { weight: to_array2(&params[2 * i])?, bias: Array1::from(params[2 * i + 1].to_vec1::<f32>()?) })
    };
    Ok(MlpHead { f1: layer(0)?, f2a: layer(1)?, f2b: layer(2)? })
}

/// The head parameters of a runtime head as tensors (f1, f2a, f2b; no
/// projection), for [`head_forward`] on a saved model.
pub fn from_runtime(head: &MlpHead, device: &Device) -> candle_core::Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(6);
    for layer in [&head.f1, &head.f2a, &head.f2b] {
        out.push(Tensor::from_vec(layer.weight.iter().copied().collect(), layer.weight.dim(), device)?);
        out.push(Tensor::from_vec(layer.bias.to_vec(), layer.bias.len(), device)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn shape() -> HeadShape {
        HeadShape { input: 4, reduced: 3, projection: 5 }
    }

    #[test]
    fn ema_moves_one_percent_towards_the_student() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let params = init(shape(), &mut rng, &Device::Cpu).unwrap();
        let student = Student::new(&params).unwrap();
        let mut teacher = Teacher::from_student(&student).unwrap();
        let before = teacher.params[1].to_vec1::<f32>().unwrap();
        student.vars[1].set(&student.vars[1].as_tensor().affine(0.0, 1.0).unwrap()).unwrap(); // bias := 1
        teacher.update(&student, 0.99).unwrap();
        let after = teacher.params[1].to_vec1::<f32>().unwrap();
        for (b, a) in before.iter().zip(&after) {
            assert!((a - (0.99 * b + 0.01)).abs() < 1e-6, "{b} -> {a}");
        }
        // The teacher is a copy: changing the student did not change it directly.
        assert_ne!(after, vec![1.0; 3]);
    }

    #[test]
    fn candle_forward_matches_the_runtime_head() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let params = init(shape(), &mut rng, &Device::Cpu).unwrap();
        let x: Vec<f32> = (0..8).map(|i| (i as f32 - 3.5) / 2.0).collect();
        let tensor = Tensor::from_vec(x.clone(), (2, 4), &Device::Cpu).unwrap();
        let candle = head_forward(&params, &tensor, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let runtime = to_runtime(&params).unwrap().forward(Array2::from_shape_vec((2, 4), x).unwrap().view());
        for (a, b) in candle.iter().zip(runtime.iter()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn dropout_mask_keeps_the_expectation() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mask = dropout_mask(100, 100, 0.1, &mut rng, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let zeros = mask.iter().filter(|&&v| v == 0.0).count();
        assert!((800..1200).contains(&zeros), "{zeros}");
        let mean: f32 = mask.iter().sum::<f32>() / mask.len() as f32;
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
    }
}
