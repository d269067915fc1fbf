//! AdamW whose state we own, so that it can be checkpointed and restored exactly.
//!
//! tch's optimisers keep their moments inside libtorch where they cannot be saved; resumable
//! training needs the moments as named tensors. The update is `torch.optim.AdamW(fused=True)`'s
//! (decoupled weight decay, bias-corrected moments, one step counter per parameter), computed
//! by the same libtorch kernel: `_fused_adamw_`, once per group of parameters that share a
//! device and a dtype, as PyTorch groups them. A parameter that kernel cannot take (a strided
//! tensor, a gradient or moments of another dtype) gets the update of `AdamW(foreach=True)`
//! from `_foreach_*` operations instead. Gradient clipping is
//! `torch.nn.utils.clip_grad_norm_(foreach=True)`'s. Every one of these is a handful of
//! kernel calls per step for the whole model, not a dozen per parameter.

use std::collections::HashMap;

use sam_torch::{
    foreach_add_scalar_, foreach_addcdiv_scalars_, foreach_addcmul_scalar_, foreach_div_scalars_,
    foreach_lerp_scalar_, foreach_mul_scalar_, foreach_mul_tensor_, foreach_norm, foreach_sqrt,
    fused_adamw_, AdamWHyper,
};
use tch::{Device, Kind, Tensor};

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

/// The largest step count that the float32 counter holds exactly (2^24), as in PyTorch.
const MAX_STEP: f64 = 16_777_216.0;

struct ParamState {
    name: String,
    var: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Updates applied so far: a 0-dim float32 tensor on the parameter's device, as PyTorch
    /// keeps `state["step"]` for the fused kernel (which reads it there).
    step: Tensor,
}

impl ParamState {
    /// Whether libtorch's fused kernel takes this parameter: on CPU or CUDA, a floating dtype
    /// shared by gradient and moments, everything contiguous (the CPU kernel walks raw memory).
    fn fusable(&self, grad: &Tensor) -> bool {
        let (kind, device) = (self.var.kind(), self.var.device());
        matches!(device, Device::Cpu | Device::Cuda(_))
            && matches!(
                kind,
                Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
            )
            && [grad, &self.exp_avg, &self.exp_avg_sq]
                .iter()
                .all(|t| t.kind() == kind && t.device() == device)
            && [&self.var, grad, &self.exp_avg, &self.exp_avg_sq]
                .iter()
                .all(|t| t.is_contiguous())
    }
}

/// Parameters updated by one kernel call: one device and dtype (PyTorch's
/// `_group_tensors_by_device_and_dtype`), all taken by the fused kernel or none.
struct Batch {
    device: Device,
    kind: Kind,
    fused: bool,
    /// Indices into [`AdamW::params`], in name order.
    members: Vec<usize>,
    /// The members' gradients.
    grads: Vec<Tensor>,
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
                let step = Tensor::zeros([], (Kind::Float, var.device()));
                ParamState {
                    name,
                    var,
                    exp_avg,
                    exp_avg_sq,
                    step,
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

    /// The defined gradients, in name order.
    fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.var.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// Multiplies every defined gradient by `factor` (loss-scale removal, gradient averaging),
    /// in one multi-tensor call.
    pub fn scale_grads(&mut self, factor: f64) -> Result<(), TrainError> {
        let grads = self.grads();
        tch::no_grad(|| foreach_mul_scalar_(&grads, factor)).map_err(TrainError::Optimizer)
    }

    /// Whether every defined gradient is finite: a boolean scalar on the device (true without
    /// gradients), to read together with the other numbers of a step.
    pub fn grads_finite_flag(&self) -> Tensor {
        tch::no_grad(|| {
            let flags: Vec<Tensor> = self.grads().iter().map(|g| g.isfinite().all()).collect();
            match flags.first() {
                None => Tensor::from(true),
                Some(first) => Tensor::stack(&flags, 0).all().to_device(first.device()),
            }
        })
    }

    /// Scales gradients so that their global L2 norm is at most `max_norm`, as
    /// `torch.nn.utils.clip_grad_norm_(foreach=True)` does: one norm per gradient from
    /// `_foreach_norm` (per device and dtype), the norm of those, and every gradient multiplied
    /// by `min(1, max_norm / (norm + 1e-6))`, a factor that stays on the device. Returns the
    /// norm before clipping as a float scalar on the device (nothing is read to the host); 0
    /// without gradients.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<Tensor, TrainError> {
        let _no_grad = tch::no_grad_guard();
        let mut groups: Vec<((Device, Kind), Vec<Tensor>)> = Vec::new();
        for grad in self.grads() {
            let key = (grad.device(), grad.kind());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, group)) => group.push(grad),
                None => groups.push((key, vec![grad])),
            }
        }
        let Some(&((first_device, _), _)) = groups.first() else {
            return Ok(Tensor::from(0.0f32));
        };
        let mut norms = Vec::new();
        for (_, group) in &groups {
            let group_norms = foreach_norm(group, 2.0).map_err(TrainError::Optimizer)?;
            norms.extend(group_norms.iter().map(|n| n.to_device(first_device)));
        }
        let total = Tensor::stack(&norms, 0).norm();
        // torch: clip_coef = max_norm / (total_norm + 1e-6), which Python evaluates as
        // (total_norm + 1e-6).reciprocal() * max_norm; then clamp(clip_coef, max=1.0).
        let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        for ((device, _), group) in &groups {
            foreach_mul_tensor_(group, &coef.to_device(*device)).map_err(TrainError::Optimizer)?;
        }
        Ok(total)
    }

    /// The parameters that have a gradient, in batches for one kernel call each (first
    /// appearance in name order decides the batch order).
    fn batches(&self) -> Vec<Batch> {
        let mut batches: Vec<Batch> = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let grad = p.var.grad();
            if !grad.defined() {
                continue;
            }
            let (device, kind, fused) = (p.var.device(), p.var.kind(), p.fusable(&grad));
            match batches
                .iter_mut()
                .find(|b| b.device == device && b.kind == kind && b.fused == fused)
            {
                Some(b) => {
                    b.members.push(i);
                    b.grads.push(grad);
                }
                None => batches.push(Batch {
                    device,
                    kind,
                    fused,
                    members: vec![i],
                    grads: vec![grad],
                }),
            }
        }
        batches
    }

    /// One AdamW update of every parameter that has a gradient; the others, their moments and
    /// their step counts stay as they are.
    pub fn step(&mut self) -> Result<(), TrainError> {
        let AdamWConfig {
            lr,
            betas: (beta1, beta2),
            eps,
            weight_decay,
        } = self.config;
        let hyper = AdamWHyper {
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
        };
        let _no_grad = tch::no_grad_guard();
        for batch in self.batches() {
            let members: Vec<&ParamState> =
                batch.members.iter().map(|&i| &self.params[i]).collect();
            let vars: Vec<&Tensor> = members.iter().map(|p| &p.var).collect();
            let exp_avgs: Vec<&Tensor> = members.iter().map(|p| &p.exp_avg).collect();
            let exp_avg_sqs: Vec<&Tensor> = members.iter().map(|p| &p.exp_avg_sq).collect();
            let steps: Vec<&Tensor> = members.iter().map(|p| &p.step).collect();
            // As torch.optim.AdamW: the kernels see the number of this update.
            foreach_add_scalar_(&steps, 1.0).map_err(TrainError::Optimizer)?;
            if batch.fused {
                fused_adamw_(&vars, &batch.grads, &exp_avgs, &exp_avg_sqs, &steps, &hyper)
                    .map_err(TrainError::Optimizer)?;
            } else {
                foreach_adamw(&vars, &batch.grads, &exp_avgs, &exp_avg_sqs, &steps, &hyper)?;
            }
        }
        Ok(())
    }

    /// The optimiser state as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`,
    /// `step.<param>`), for checkpoints. A step count is written as an int64 tensor of shape
    /// `[1]`, as it always was.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 3);
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
            out.push((
                format!("step.{}", p.name),
                p.step.to_kind(Kind::Int64).reshape([1]),
            ));
        }
        out
    }

    /// Restores state written by [`AdamW::state_tensors`]; every parameter must be present
    /// with the right shape. A step count may be any one-element tensor holding a whole
    /// number (the int64 `[1]` we write, or a float like PyTorch's `state["step"]`).
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
            let count = step_count(&p.name, &step)?;
            tch::no_grad(|| {
                p.exp_avg.copy_(&exp_avg);
                p.exp_avg_sq.copy_(&exp_avg_sq);
                let _ = p.step.fill_(count);
            });
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

/// The step count saved for parameter `name`: one whole number from 0 to [`MAX_STEP`].
fn step_count(name: &str, step: &Tensor) -> Result<f64, TrainError> {
    if step.numel() != 1 {
        return Err(TrainError::State(format!(
            "optimiser state `step.{name}` has {} values, expected one step count",
            step.numel()
        )));
    }
    let count = step
        .to_kind(Kind::Double)
        .reshape([1])
        .f_double_value(&[0])?;
    if !(0.0..=MAX_STEP).contains(&count) || count.fract() != 0.0 {
        return Err(TrainError::State(format!(
            "optimiser state `step.{name}` is {count}, expected a whole number of steps from 0 \
             to {MAX_STEP}"
        )));
    }
    Ok(count)
}

/// The update of `torch.optim.AdamW(foreach=True)` (`_multi_tensor_adam`, not capturable),
/// for parameters the fused kernel does not take; `steps` already count this update. The
/// gradients are converted to the moments' dtype first, as the update always did.
fn foreach_adamw(
    params: &[&Tensor],
    grads: &[Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    steps: &[&Tensor],
    hyper: &AdamWHyper,
) -> Result<(), TrainError> {
    let AdamWHyper {
        lr,
        beta1,
        beta2,
        weight_decay,
        eps,
    } = *hyper;
    let grads: Vec<Tensor> = grads
        .iter()
        .zip(exp_avgs)
        .map(|(g, m)| {
            if g.kind() == m.kind() {
                g.shallow_clone()
            } else {
                g.to_kind(m.kind())
            }
        })
        .collect();
    let kernels = || -> Result<(), sam_torch::Error> {
        if weight_decay != 0.0 {
            foreach_mul_scalar_(params, 1.0 - lr * weight_decay)?;
        }
        // exp_avg = beta1 * exp_avg + (1 - beta1) * grad
        foreach_lerp_scalar_(exp_avgs, &grads, 1.0 - beta1)?;
        // exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad²
        foreach_mul_scalar_(exp_avg_sqs, beta2)?;
        foreach_addcmul_scalar_(exp_avg_sqs, &grads, &grads, 1.0 - beta2)
    };
    kernels().map_err(TrainError::Optimizer)?;
    // The bias corrections are host numbers, as in PyTorch (which reads the steps one by one;
    // one read for the batch here).
    let counts = sam_torch::read_f64s(&Tensor::stack(steps, 0))?;
    // step_size = -(lr / (1 - beta1^t)), bias_correction2_sqrt = (1 - beta2^t) ** 0.5
    let step_size: Vec<f64> = counts
        .iter()
        .map(|&t| -(lr / (1.0 - beta1.powf(t))))
        .collect();
    let bias2_sqrt: Vec<f64> = counts
        .iter()
        .map(|&t| (1.0 - beta2.powf(t)).powf(0.5))
        .collect();
    let update = || -> Result<(), sam_torch::Error> {
        // param += step_size * exp_avg / (sqrt(exp_avg_sq) / bias_correction2_sqrt + eps)
        let denom = foreach_sqrt(exp_avg_sqs)?;
        foreach_div_scalars_(&denom, &bias2_sqrt)?;
        foreach_add_scalar_(&denom, eps)?;
        foreach_addcdiv_scalars_(params, exp_avgs, &denom, &step_size)
    };
    update().map_err(TrainError::Optimizer)
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
            opt.step().unwrap();
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
                opt.step().unwrap();
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
        let before = opt.clip_grad_norm(1.0).unwrap().double_value(&[]);
        assert!((before - 5.0).abs() < 1e-12);
        let g: Vec<f64> = Vec::try_from(&p.grad()).unwrap();
        assert!(
            (g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6,
            "{g:?}"
        );
    }

    /// Runs `steps` updates of `opt` on the loss sum(p³) (a gradient that changes each step).
    fn cube_steps(opt: &mut AdamW, p: &Tensor, steps: usize) {
        for _ in 0..steps {
            opt.zero_grad().unwrap();
            (p * p * p).sum(p.kind()).backward();
            opt.step().unwrap();
        }
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    /// A strided parameter (which the fused kernel cannot take) gets the `_foreach_` update:
    /// the same numbers as the fused kernel gives its contiguous copy, to rounding.
    #[test]
    fn strided_parameters_get_the_same_update_from_the_foreach_path() {
        tch::manual_seed(3);
        let base = Tensor::randn([3, 4], (Kind::Double, Device::Cpu));
        let contiguous = base.tr().contiguous().set_requires_grad(true);
        let strided = base.tr().detach().set_requires_grad(true);
        assert!(!strided.is_contiguous());
        let cfg = AdamWConfig {
            lr: 0.05,
            ..AdamWConfig::default()
        };
        let mut fused = AdamW::new(vec![("w".into(), contiguous.shallow_clone())], cfg);
        let mut foreach = AdamW::new(vec![("w".into(), strided.shallow_clone())], cfg);
        cube_steps(&mut fused, &contiguous, 4);
        cube_steps(&mut foreach, &strided, 4);
        assert!(
            !strided.grad().is_contiguous(),
            "the gradient follows the strides"
        );
        let (a, b) = (values(&contiguous), values(&strided));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-12, "fused {a:?}\nforeach {b:?}");
        for ((name, x), (_, y)) in fused.state_tensors().iter().zip(&foreach.state_tensors()) {
            let diff = (x.to_kind(Kind::Double) - y.to_kind(Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-12, "{name} differs by {diff}");
        }
    }

    /// Checkpoints hold an int64 step count of shape [1]; a float count (PyTorch's 0-dim
    /// `state["step"]`) reads the same. Anything but a whole number of steps is refused.
    #[test]
    fn step_counts_load_from_integers_and_floats_and_nonsense_is_refused() {
        let make = || Tensor::from_slice(&[0.5f32, 1.5, -1.0]).set_requires_grad(true);
        let p = make();
        let mut opt = AdamW::new(
            vec![("w".into(), p.shallow_clone())],
            AdamWConfig::default(),
        );
        cube_steps(&mut opt, &p, 3);
        let state: Vec<(String, Tensor)> = opt
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let saved_step = &state.iter().find(|(n, _)| n == "step.w").unwrap().1;
        assert_eq!(saved_step.kind(), Kind::Int64);
        assert_eq!(saved_step.size(), [1]);
        assert_eq!(saved_step.int64_value(&[0]), 3);
        cube_steps(&mut opt, &p, 2);

        let with_step = |step: Tensor| -> Vec<(String, Tensor)> {
            state
                .iter()
                .map(|(n, t)| {
                    let t = if n == "step.w" { step.copy() } else { t.copy() };
                    (n.clone(), t)
                })
                .collect()
        };
        for step in [Tensor::from_slice(&[3i64]), Tensor::from(3.0f32)] {
            // The weights after 3 steps, replayed on a fresh optimiser.
            let r = make();
            let mut replay = AdamW::new(
                vec![("w".into(), r.shallow_clone())],
                AdamWConfig::default(),
            );
            cube_steps(&mut replay, &r, 3);
            let mut resumed = AdamW::new(
                vec![("w".into(), r.shallow_clone())],
                AdamWConfig::default(),
            );
            resumed.load_state_tensors(with_step(step)).unwrap();
            cube_steps(&mut resumed, &r, 2);
            assert_eq!(values(&r), values(&p));
        }
        for bad in [
            Tensor::from_slice(&[-1i64]),
            Tensor::from(2.5f64),
            Tensor::from(f32::NAN),
            Tensor::from_slice(&[1i64, 2]),
        ] {
            let mut fresh = AdamW::new(vec![("w".into(), make())], AdamWConfig::default());
            let err = fresh
                .load_state_tensors(with_step(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains("step.w"), "{err}");
        }
    }

    /// torch clamps the coefficient at 1: a norm below `max_norm` leaves the gradients as they
    /// were, bit for bit. Without gradients the norm is 0 and nothing happens.
    #[test]
    fn clip_grad_norm_leaves_small_gradients_alone() {
        let p = Tensor::from_slice(&[0.3f32, -0.4]).set_requires_grad(true);
        let q = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![
                ("p".into(), p.shallow_clone()),
                ("q".into(), q.shallow_clone()),
            ],
            AdamWConfig::default(),
        );
        assert_eq!(opt.clip_grad_norm(1.0).unwrap().double_value(&[]), 0.0);
        (&p * &p).sum(Kind::Float).g_mul_scalar(0.5).backward(); // grad = p, norm 0.5; q none
        let before = values(&p.grad());
        let norm = opt.clip_grad_norm(1.0).unwrap().double_value(&[]);
        assert!((norm - 0.5).abs() < 1e-7, "{norm}");
        assert_eq!(values(&p.grad()), before);
        assert!(!q.grad().defined());
    }
}
