//! The trainable student and its EMA teacher, as named head parameters
//! ([`Params`]), plus the dropout masks of training.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use rand::Rng;

use crate::head::candle::Params;
use crate::head::Weights;

/// The trainable student: one variable per named weight.
pub struct Student {
    /// The variables, by weight name.
    pub vars: BTreeMap<String, Var>,
}

impl Student {
    /// A student starting from `weights`.
    pub fn new(weights: &Weights, device: &Device) -> candle_core::Result<Self> {
        let params = Params::from_weights(weights, device)?;
        Ok(Student { vars: params.0.into_iter().map(|(name, t)| Ok((name, Var::from_tensor(&t)?))).collect::<candle_core::Result<_>>()? })
    }

    /// The parameters as tensors (tracked for gradients).
    pub fn params(&self) -> Params {
        Params(self.vars.iter().map(|(name, v)| (name.clone(), v.as_tensor().clone())).collect())
    }

    /// Every variable, for the optimiser.
    pub fn variables(&self) -> Vec<Var> {
        self.vars.values().cloned().collect()
    }
}

/// The EMA teacher: plain tensors, never differentiated.
pub struct Teacher {
    /// The parameters, by weight name.
    pub params: Params,
}

impl Teacher {
    /// A teacher equal to the student (the reference's `ema_init`).
    pub fn from_student(student: &Student) -> candle_core::Result<Self> {
        let tensors = student.vars.iter().map(|(name, v)| Ok((name.clone(), v.as_tensor().detach().copy()?))).collect::<candle_core::Result<_>>()?;
        Ok(Teacher { params: Params(tensors) })
    }

    /// `teacher = decay * teacher + (1 - decay) * student`, weight by weight.
    pub fn update(&mut self, student: &Student, decay: f64) -> candle_core::Result<()> {
        for (name, t) in self.params.0.iter_mut() {
            let s = student.vars[name].as_tensor().detach();
            *t = (t.affine(decay, 0.0)? + s.affine(1.0 - decay, 0.0)?)?;
        }
        Ok(())
    }
}

/// Inverted-dropout mask `[n, d]`: 0 with probability `p`, else `1/(1-p)`.
pub fn dropout_mask(n: usize, d: usize, p: f64, rng: &mut impl Rng, device: &Device) -> candle_core::Result<Tensor> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let v: Vec<f32> = (0..n * d).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
    Tensor::from_vec(v, (n, d), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn ema_moves_one_percent_towards_the_student() {
        let mut weights = Weights::default();
        weights.insert("b", array![0.2f32, -0.4, 0.6]);
        let student = Student::new(&weights, &Device::Cpu).unwrap();
        let mut teacher = Teacher::from_student(&student).unwrap();
        student.vars["b"].set(&Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
        teacher.update(&student, 0.99).unwrap();
        let after = teacher.params.get("b").to_vec1::<f32>().unwrap();
        for (b, a) in [0.2f32, -0.4, 0.6].iter().zip(&after) {
            assert!((a - (0.99 * b + 0.01)).abs() < 1e-6, "{b} -> {a}");
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
