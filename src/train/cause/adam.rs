//! Adam (L2 weight decay as in `torch.optim.Adam`) with optional global
//! gradient-norm clipping, over candle `Var`s.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Adam settings.
#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (None: no clipping).
    pub clip_norm: Option<f64>,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, clip_norm: None }
    }
}

/// Adam state for a fixed list of variables.
pub struct Adam {
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
    /// Settings (the learning rate may be changed between steps).
    pub config: AdamConfig,
}

impl Adam {
    /// Optimises `vars`.
    pub fn new(vars: Vec<Var>, config: AdamConfig) -> candle_core::Result<Self> {
        let m = vars.iter().map(|v| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(|v| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Adam { vars, m, v, step: 0, config })
    }

    /// The optimised variables.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// One update from `grads` (variables without a gradient are left
    /// alone). Returns the global gradient norm before clipping.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<f64> {
        let gs: Vec<Option<Tensor>> = self.vars.iter().map(|v| grads.get(v.as_tensor()).cloned()).collect();
        let mut total = 0f64;
        for g in gs.iter().flatten() {
            total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = total.sqrt();
        let scale = match self.config.clip_norm {
            Some(c) if norm > c => c / (norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let c = self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, g) in gs.into_iter().enumerate() {
            let Some(g) = g else { continue };
            let var = &self.vars[i];
            let mut g = if scale != 1.0 { g.affine(scale, 0.0)? } else { g };
            if c.weight_decay != 0.0 {
                g = (g + var.as_tensor().affine(c.weight_decay, 0.0)?)?;
            }
            self.m[i] = (self.m[i].affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?;
            self.v[i] = (self.v[i].affine(c.beta2, 0.0)? + g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
            let m_hat = self.m[i].affine(1.0 / bias1, 0.0)?;
            let denom = self.v[i].affine(1.0 / bias2, 0.0)?.sqrt()?.affine(1.0, c.eps)?;
            let update = (m_hat / denom)?.affine(c.lr, 0.0)?;
            var.set(&(var.as_tensor() - update)?)?;
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn minimises_a_quadratic() {
        let x = Var::from_slice(&[3.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![x.clone()], AdamConfig { lr: 0.1, ..Default::default() }).unwrap();
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            adam.step(&loss.backward().unwrap()).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|v| v.abs() < 0.05), "{v:?}");
    }

    #[test]
    fn first_step_moves_by_the_learning_rate() {
        // Adam's first update is lr * sign(g) whatever the gradient's size.
        let x = Var::from_slice(&[1.0f32], 1, &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![x.clone()], AdamConfig { lr: 0.01, clip_norm: Some(1e-3), ..Default::default() }).unwrap();
        let loss = x.as_tensor().affine(100.0, 0.0).unwrap().sum_all().unwrap();
        let norm = adam.step(&loss.backward().unwrap()).unwrap();
        assert!((norm - 100.0).abs() < 1e-3);
        let v = x.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((v - 0.99).abs() < 1e-4, "{v}");
    }
}
