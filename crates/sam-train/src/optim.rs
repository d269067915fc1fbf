//! AdamW whose state we own, so that it can be checkpointed and restored exactly.
//!
//! tch's optimisers keep their moments inside libtorch where they cannot be saved; resumable
//! training needs the moments as named tensors. The update follows `torch.optim.AdamW`
//! (decoupled weight decay, bias-corrected moments, one step counter per parameter).

use std::collections::HashMap;

use tch::Tensor;

use crate::TrainError;

/// Hyper-parameters of [`AdamW`]; defaults are `torch.optim.AdamW`'s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Coefficients of the running averages of the gradient and its square.
    pub betas: (f64, f64),
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // torch.optim.AdamW defaults.
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

struct ParamState {
    name: String,
    var: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: i64,
}

/// AdamW over named tch variables.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<ParamState>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("config", &self.config)
            .field("params", &self.params.len())
            .finish()
    }
}

impl AdamW {
    /// An optimiser over `params` (name, variable); frozen parameters should not be passed.
    /// Parameters are sorted by name so that state order never depends on hash-map order.
    pub fn new(mut params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let exp_avg = var.zeros_like().detach();
                let exp_avg_sq = var.zeros_like().detach();
                ParamState {
                    name,
                    var,
                    exp_avg,
                    exp_avg_sq,
                    step: 0,
                }
            })
            .collect();
        Self { config, params }
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    /// Sets the learning rate (schedulers call this).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Names of the optimised parameters, sorted.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// The optimised variables, sorted by name (distributed training averages their gradients).
    pub fn variables(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// Drops every gradient (PyTorch's `zero_grad()`, whose default is `set_to_none=True`):
    /// a parameter the next backward does not reach has no gradient and [`AdamW::step`]
    /// leaves it, its moments and its step count alone, where a zeroed gradient would still
    /// decay its weight and move it by its momentum.
    pub fn zero_grad(&mut self) -> Result<(), TrainError> {
        for p in &self.params {
            sam_torch::clear_grad(&p.var).map_err(|source| TrainError::ClearGradient {
                parameter: p.name.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Multiplies every defined gradient by `factor` (loss-scale removal, gradient averaging).
    pub fn scale_grads(&mut self, factor: f64) {
        tch::no_grad(|| {
            for p in &self.params {
                let mut grad = p.var.grad();
                if grad.defined() {
                    let _ = grad.g_mul_scalar_(factor);
                }
            }
        });
    }

    /// Whether every defined gradient is finite (one host read for all of them).
    pub fn grads_finite(&self) -> bool {
        tch::no_grad(|| {
            let flags: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.var.grad())
                .filter(|g| g.defined())
                .map(|g| g.isfinite().all())
                .collect();
            flags.is_empty() || Tensor::stack(&flags, 0).all().int64_value(&[]) == 1
        })
    }

    /// Scales gradients so that their global L2 norm is at most `max_norm`, as
    /// `torch.nn.utils.clip_grad_norm_` does. Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let total = tch::no_grad(|| {
            let mut sum = 0f64;
            for p in &self.params {
                let grad = p.var.grad();
                if grad.defined() {
                    sum += grad
                        .to_kind(tch::Kind::Double)
                        .square()
                        .sum(None)
                        .double_value(&[]);
                }
            }
            sum.sqrt()
        });
        // torch: clip_coef = max_norm / (total_norm + 1e-6), applied when < 1.
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            self.scale_grads(coef);
        }
        total
    }

    /// One AdamW update of every parameter that has a gradient.
    pub fn step(&mut self) {
        let AdamWConfig {
            lr,
            betas: (b1, b2),
            eps,
            weight_decay,
        } = self.config;
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.var.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = grad.to_kind(p.exp_avg.kind());
                p.step += 1;
                let _ = p.var.g_mul_scalar_(1.0 - lr * weight_decay);
                // exp_avg = b1 * exp_avg + (1 - b1) * grad
                let _ = p.exp_avg.lerp_(&grad, 1.0 - b1);
                // exp_avg_sq = b2 * exp_avg_sq + (1 - b2) * grad²
                let _ = p.exp_avg_sq.g_mul_scalar_(b2);
                let _ = p.exp_avg_sq.addcmul_(&grad, &grad.g_mul_scalar(1.0 - b2));
                let bias1 = 1.0 - b1.powi(p.step as i32);
                let bias2 = 1.0 - b2.powi(p.step as i32);
                let step_size = lr / bias1;
                let denom = (p.exp_avg_sq.sqrt() / bias2.sqrt()) + eps;
                let update = (&p.exp_avg / &denom).to_kind(p.var.kind());
                let _ = p.var.g_add_(&update.g_mul_scalar(-step_size));
            }
        });
    }

    /// The optimiser state as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`,
    /// `step.<param>`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 3);
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
            out.push((format!("step.{}", p.name), Tensor::from_slice(&[p.step])));
        }
        out
    }

    /// Restores state written by [`AdamW::state_tensors`]; every parameter must be present
    /// with the right shape.
    pub fn load_state_tensors(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), TrainError> {
        let mut map: HashMap<String, Tensor> = tensors.into_iter().collect();
        for p in &mut self.params {
            let mut take = |kind: &str| {
                map.remove(&format!("{kind}.{}", p.name)).ok_or_else(|| {
                    TrainError::State(format!("optimiser state has no `{kind}.{}`", p.name))
                })
            };
            let exp_avg = take("exp_avg")?;
            let exp_avg_sq = take("exp_avg_sq")?;
            let step = take("step")?;
            if exp_avg.size() != p.var.size() || exp_avg_sq.size() != p.var.size() {
                return Err(TrainError::State(format!(
                    "optimiser state for `{}` has shape {:?}, the parameter has {:?}",
                    p.name,
                    exp_avg.size(),
                    p.var.size()
                )));
            }
            tch::no_grad(|| {
                p.exp_avg.copy_(&exp_avg);
                p.exp_avg_sq.copy_(&exp_avg_sq);
            });
            p.step = step.int64_value(&[0]);
        }
        if let Some(extra) = map.keys().next() {
            return Err(TrainError::State(format!(
                "optimiser state has `{extra}`, which is not an optimised parameter (was the \
                 freeze configuration changed?)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// torch.optim.AdamW on p=[1,-2], grad=2p (loss p²), lr 0.1, wd 0.01, two steps, computed by
    /// hand from the update rule in torch's documentation.
    #[test]
    fn matches_torch_update_rule_by_hand() {
        let p = Tensor::from_slice(&[1.0f64, -2.0]).set_requires_grad(true);
        let cfg = AdamWConfig {
            lr: 0.1,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], cfg);
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            opt.zero_grad().unwrap();
            let loss = p.square().sum(Kind::Double);
            loss.backward();
            opt.step();
            for i in 0..2 {
                let g = 2.0 * expect[i];
                expect[i] *= 1.0 - 0.1 * 0.01;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                expect[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f64> = Vec::try_from(&p.detach()).unwrap();
        for i in 0..2 {
            assert!(
                (got[i] - expect[i]).abs() < 1e-12,
                "expected {expect:?}\n     got {got:?}"
            );
        }
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let make = || Tensor::from_slice(&[0.5f32, 1.5, -1.0]).set_requires_grad(true);
        let run = |opt: &mut AdamW, p: &Tensor, steps: usize| {
            for _ in 0..steps {
                opt.zero_grad().unwrap();
                (p * p * p).sum(Kind::Float).backward();
                opt.step();
            }
        };
        let p1 = make();
        let mut o1 = AdamW::new(
            vec![("w".into(), p1.shallow_clone())],
            AdamWConfig::default(),
        );
        run(&mut o1, &p1, 5);

        let p2 = make();
        let mut o2 = AdamW::new(
            vec![("w".into(), p2.shallow_clone())],
            AdamWConfig::default(),
        );
        run(&mut o2, &p2, 3);
        let state: Vec<(String, Tensor)> = o2
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let p3 = p2.detach().copy().set_requires_grad(true);
        let mut o3 = AdamW::new(
            vec![("w".into(), p3.shallow_clone())],
            AdamWConfig::default(),
        );
        o3.load_state_tensors(state).unwrap();
        run(&mut o3, &p3, 2);
        let diff = (&p1 - &p3).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn missing_state_is_an_error_naming_the_parameter() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("enc.w".into(), p)], AdamWConfig::default());
        let err = opt.load_state_tensors(vec![]).unwrap_err().to_string();
        assert!(err.contains("exp_avg.enc.w"), "{err}");
    }

    #[test]
    fn clip_grad_norm_scales_to_max_norm() {
        let p = Tensor::from_slice(&[3.0f64, 4.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![("p".into(), p.shallow_clone())],
            AdamWConfig::default(),
        );
        (&p * &p).sum(Kind::Double).g_mul_scalar(0.5).backward(); // grad = p = [3, 4], norm 5
        let before = opt.clip_grad_norm(1.0);
        assert!((before - 5.0).abs() < 1e-12);
        let g: Vec<f64> = Vec::try_from(&p.grad()).unwrap();
        assert!(
            (g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6,
            "{g:?}"
        );
    }
}
