//! libtorch's multi-tensor kernels, which tch does not bind (its generator skips every
//! `_foreach_*` operation and `_fused_adam*`): one call updates a whole list of tensors where a
//! loop would launch one or more small kernels per tensor. These are the operations that
//! `torch.optim.AdamW(foreach=True)` / `AdamW(fused=True)` and
//! `torch.nn.utils.clip_grad_norm_(foreach=True)` are made of.
//!
//! The in-place operations (names ending in `_`) take their lists by shared reference, as tch's
//! own list operations do: they change the tensors' data, never the handles. An empty list is
//! a no-op (libtorch refuses one).

use std::borrow::Borrow;
use std::ffi::c_char;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::Error;
use crate::ffi::{self, take};

/// Hyper-parameters of one [`fused_adamw_`] call: `torch.optim.AdamW`'s, without `amsgrad`
/// and `maximize` (both off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWHyper {
    /// Learning rate.
    pub lr: f64,
    /// Coefficient of the running average of the gradient.
    pub beta1: f64,
    /// Coefficient of the running average of the squared gradient.
    pub beta2: f64,
    /// Decoupled weight decay (the parameter is multiplied by `1 - lr * weight_decay`).
    pub weight_decay: f64,
    /// Added to the denominator for numerical stability.
    pub eps: f64,
}

/// The `at::Tensor*` handles of a list, for the bridge.
fn handles(list: &[impl Borrow<Tensor>]) -> Vec<*mut C_tensor> {
    // The bridge copies each handle (sharing the storage) and never writes through the pointer.
    list.iter()
        .map(|t| t.borrow().as_ptr().cast_mut())
        .collect()
}

/// Checks that every list has `expected` entries (the bridge reads `expected` from each).
fn same_length(op: &'static str, expected: usize, lengths: &[usize]) -> Result<(), Error> {
    match lengths.iter().find(|&&got| got != expected) {
        Some(&got) => Err(Error::ListLength { op, expected, got }),
        None => Ok(()),
    }
}

/// Runs a bridge call that hands out `n` new tensors.
fn outputs(
    op: &'static str,
    n: usize,
    call: impl FnOnce(*mut *mut C_tensor) -> *mut c_char,
) -> Result<Vec<Tensor>, Error> {
    let mut outs: Vec<*mut C_tensor> = vec![std::ptr::null_mut(); n];
    take(op, call(outs.as_mut_ptr()))?;
    // SAFETY: on success the bridge filled each of the `n` slots with a new `at::Tensor*`
    // that nothing else owns; each becomes one tch tensor, which frees it.
    Ok(outs
        .into_iter()
        .map(|t| unsafe { Tensor::from_ptr(t) })
        .collect())
}

/// One AdamW update of every parameter in the list with libtorch's fused kernel
/// (`torch._fused_adamw_`, what `torch.optim.AdamW(fused=True)` calls per device and dtype).
///
/// Entry `i` of each list belongs to parameter `i`. `state_steps` are 0-dim float32 tensors on
/// the parameters' device holding the step number of *this* update: like PyTorch, add 1 first
/// (e.g. [`foreach_add_scalar_`]); the kernel reads them and leaves them alone.
///
/// All tensors must be on one device (CPU or CUDA); each parameter's gradient and moments must
/// have its dtype and shape, and all must be contiguous (the CPU kernel walks raw memory:
/// libtorch would read a strided tensor in the wrong order, so the bridge refuses one).
pub fn fused_adamw_(
    params: &[impl Borrow<Tensor>],
    grads: &[impl Borrow<Tensor>],
    exp_avgs: &[impl Borrow<Tensor>],
    exp_avg_sqs: &[impl Borrow<Tensor>],
    state_steps: &[impl Borrow<Tensor>],
    hyper: &AdamWHyper,
) -> Result<(), Error> {
    const OP: &str = "fused_adamw_";
    let n = params.len();
    same_length(
        OP,
        n,
        &[
            grads.len(),
            exp_avgs.len(),
            exp_avg_sqs.len(),
            state_steps.len(),
        ],
    )?;
    if n == 0 {
        return Ok(());
    }
    let (p, g, m, v, s) = (
        handles(params),
        handles(grads),
        handles(exp_avgs),
        handles(exp_avg_sqs),
        handles(state_steps),
    );
    // SAFETY: five arrays of `n` live tensor handles (borrowed for the call), as the bridge
    // expects.
    take(OP, unsafe {
        ffi::sam_torch_fused_adamw_(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            hyper.lr,
            hyper.beta1,
            hyper.beta2,
            hyper.weight_decay,
            hyper.eps,
        )
    })
}

/// The `ord`-norm of each tensor (`torch._foreach_norm`), each a 0-dim tensor of the tensor's
/// dtype on its device.
pub fn foreach_norm(tensors: &[impl Borrow<Tensor>], ord: f64) -> Result<Vec<Tensor>, Error> {
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    let t = handles(tensors);
    // SAFETY: `t` holds `t.len()` live handles; `outs` has room for as many results.
    outputs("foreach_norm", t.len(), |outs| unsafe {
        ffi::sam_torch_foreach_norm(t.as_ptr(), t.len(), ord, outs)
    })
}

/// The element-wise square root of each tensor (`torch._foreach_sqrt`), as new tensors.
pub fn foreach_sqrt(tensors: &[impl Borrow<Tensor>]) -> Result<Vec<Tensor>, Error> {
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    let t = handles(tensors);
    // SAFETY: `t` holds `t.len()` live handles; `outs` has room for as many results.
    outputs("foreach_sqrt", t.len(), |outs| unsafe {
        ffi::sam_torch_foreach_sqrt(t.as_ptr(), t.len(), outs)
    })
}

/// Adds `value` to every tensor in place (`torch._foreach_add_(tensors, value)`).
pub fn foreach_add_scalar_(tensors: &[impl Borrow<Tensor>], value: f64) -> Result<(), Error> {
    if tensors.is_empty() {
        return Ok(());
    }
    let t = handles(tensors);
    // SAFETY: `t` holds `t.len()` live handles.
    take("foreach_add_", unsafe {
        ffi::sam_torch_foreach_add_scalar_(t.as_ptr(), t.len(), value)
    })
}

/// Multiplies every tensor by `value` in place (`torch._foreach_mul_(tensors, value)`).
pub fn foreach_mul_scalar_(tensors: &[impl Borrow<Tensor>], value: f64) -> Result<(), Error> {
    if tensors.is_empty() {
        return Ok(());
    }
    let t = handles(tensors);
    // SAFETY: `t` holds `t.len()` live handles.
    take("foreach_mul_", unsafe {
        ffi::sam_torch_foreach_mul_scalar_(t.as_ptr(), t.len(), value)
    })
}

/// Multiplies every tensor in place by the 0-dim tensor `value`
/// (`torch._foreach_mul_(tensors, value)`; the factor never leaves its device).
pub fn foreach_mul_tensor_(tensors: &[impl Borrow<Tensor>], value: &Tensor) -> Result<(), Error> {
    if tensors.is_empty() {
        return Ok(());
    }
    let t = handles(tensors);
    // SAFETY: `t` holds `t.len()` live handles; `value` is a live tensor for the call.
    take("foreach_mul_", unsafe {
        ffi::sam_torch_foreach_mul_tensor_(t.as_ptr(), t.len(), value.as_ptr())
    })
}

/// Divides tensor `i` by `values[i]` in place (`torch._foreach_div_(tensors, values)`).
pub fn foreach_div_scalars_(tensors: &[impl Borrow<Tensor>], values: &[f64]) -> Result<(), Error> {
    const OP: &str = "foreach_div_";
    same_length(OP, tensors.len(), &[values.len()])?;
    if tensors.is_empty() {
        return Ok(());
    }
    let t = handles(tensors);
    // SAFETY: `t` holds `t.len()` live handles and `values` as many numbers.
    take(OP, unsafe {
        ffi::sam_torch_foreach_div_scalars_(t.as_ptr(), t.len(), values.as_ptr())
    })
}

/// `tensors[i] += weight * (ends[i] - tensors[i])` in place (`torch._foreach_lerp_`).
pub fn foreach_lerp_scalar_(
    tensors: &[impl Borrow<Tensor>],
    ends: &[impl Borrow<Tensor>],
    weight: f64,
) -> Result<(), Error> {
    const OP: &str = "foreach_lerp_";
    same_length(OP, tensors.len(), &[ends.len()])?;
    if tensors.is_empty() {
        return Ok(());
    }
    let (t, e) = (handles(tensors), handles(ends));
    // SAFETY: two arrays of `t.len()` live handles.
    take(OP, unsafe {
        ffi::sam_torch_foreach_lerp_scalar_(t.as_ptr(), e.as_ptr(), t.len(), weight)
    })
}

/// `tensors[i] += value * tensor1[i] * tensor2[i]` in place (`torch._foreach_addcmul_`).
pub fn foreach_addcmul_scalar_(
    tensors: &[impl Borrow<Tensor>],
    tensor1: &[impl Borrow<Tensor>],
    tensor2: &[impl Borrow<Tensor>],
    value: f64,
) -> Result<(), Error> {
    const OP: &str = "foreach_addcmul_";
    same_length(OP, tensors.len(), &[tensor1.len(), tensor2.len()])?;
    if tensors.is_empty() {
        return Ok(());
    }
    let (t, a, b) = (handles(tensors), handles(tensor1), handles(tensor2));
    // SAFETY: three arrays of `t.len()` live handles.
    take(OP, unsafe {
        ffi::sam_torch_foreach_addcmul_scalar_(t.as_ptr(), a.as_ptr(), b.as_ptr(), t.len(), value)
    })
}

/// `tensors[i] += values[i] * tensor1[i] / tensor2[i]` in place (`torch._foreach_addcdiv_`).
pub fn foreach_addcdiv_scalars_(
    tensors: &[impl Borrow<Tensor>],
    tensor1: &[impl Borrow<Tensor>],
    tensor2: &[impl Borrow<Tensor>],
    values: &[f64],
) -> Result<(), Error> {
    const OP: &str = "foreach_addcdiv_";
    same_length(
        OP,
        tensors.len(),
        &[tensor1.len(), tensor2.len(), values.len()],
    )?;
    if tensors.is_empty() {
        return Ok(());
    }
    let (t, a, b) = (handles(tensors), handles(tensor1), handles(tensor2));
    // SAFETY: three arrays of `t.len()` live handles and `values` as many numbers.
    take(OP, unsafe {
        ffi::sam_torch_foreach_addcdiv_scalars_(
            t.as_ptr(),
            a.as_ptr(),
            b.as_ptr(),
            t.len(),
            values.as_ptr(),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    const HYPER: AdamWHyper = AdamWHyper {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        weight_decay: 0.01,
        eps: 1e-8,
    };

    /// Step 1 from zero moments, by the update rule of torch.optim.AdamW's documentation:
    /// m = 0.1 g, v = 0.001 g², p ← p (1 - lr wd) - lr (m / 0.1) / (sqrt(v / 0.001) + eps).
    #[test]
    fn fused_adamw_follows_the_documented_update() {
        let p = Tensor::from_slice(&[1.0f64, -2.0, 0.5]);
        let g = Tensor::from_slice(&[0.5f64, 0.25, -4.0]);
        let (m, v) = (p.zeros_like(), p.zeros_like());
        let step = Tensor::ones([], (Kind::Float, Device::Cpu));
        fused_adamw_(&[&p], &[&g], &[&m], &[&v], &[&step], &HYPER).unwrap();
        let (pv, gv) = ([1.0f64, -2.0, 0.5], [0.5f64, 0.25, -4.0]);
        for i in 0..3 {
            let want = pv[i] * (1.0 - 0.1 * 0.01) - 0.1 * gv[i] / (gv[i].abs() + 1e-8);
            assert!((values(&p)[i] - want).abs() < 1e-12, "{:?}", values(&p));
            assert!((values(&m)[i] - 0.1 * gv[i]).abs() < 1e-15);
            assert!((values(&v)[i] - 0.001 * gv[i] * gv[i]).abs() < 1e-15);
        }
        // The kernel leaves the step count to the caller.
        assert_eq!(step.double_value(&[]), 1.0);
    }

    #[test]
    fn fused_adamw_refuses_strided_tensors_and_ragged_lists() {
        let p = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)).tr();
        let g = p.ones_like();
        let (m, v) = (p.zeros_like(), p.zeros_like());
        let step = Tensor::ones([], (Kind::Float, Device::Cpu));
        let err = fused_adamw_(&[&p], &[&g], &[&m], &[&v], &[&step], &HYPER).unwrap_err();
        assert!(err.to_string().contains("not contiguous"), "{err}");
        assert_eq!(values(&p), vec![0.0; 6], "nothing was written");

        let err = fused_adamw_(&[&p], &[&g, &g], &[&m], &[&v], &[&step], &HYPER).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ListLength {
                    expected: 1,
                    got: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn foreach_operations_match_their_single_tensor_twins() {
        let a = Tensor::from_slice(&[3.0f32, 4.0]);
        let b = Tensor::from_slice(&[1.0f32, 2.0, 2.0]);
        let norms = foreach_norm(&[&a, &b], 2.0).unwrap();
        assert_eq!(
            norms
                .iter()
                .map(|n| n.double_value(&[]))
                .collect::<Vec<_>>(),
            [5.0, 3.0]
        );

        foreach_mul_scalar_(&[&a, &b], 2.0).unwrap();
        assert_eq!(values(&a), [6.0, 8.0]);
        foreach_mul_tensor_(&[&a], &Tensor::from(0.5f32)).unwrap();
        assert_eq!(values(&a), [3.0, 4.0]);
        foreach_add_scalar_(&[&a], 1.0).unwrap();
        assert_eq!(values(&a), [4.0, 5.0]);
        foreach_div_scalars_(&[&a, &b], &[2.0, 4.0]).unwrap();
        assert_eq!(
            (values(&a), values(&b)),
            (vec![2.0, 2.5], vec![0.5, 1.0, 1.0])
        );
        let roots = foreach_sqrt(&[&Tensor::from_slice(&[4.0f32, 9.0])]).unwrap();
        assert_eq!(values(&roots[0]), [2.0, 3.0]);

        let t = Tensor::from_slice(&[1.0f32, 1.0]);
        let e = Tensor::from_slice(&[3.0f32, -1.0]);
        foreach_lerp_scalar_(&[&t], &[&e], 0.5).unwrap();
        assert_eq!(values(&t), [2.0, 0.0]);
        foreach_addcmul_scalar_(&[&t], &[&e], &[&e], 0.5).unwrap();
        assert_eq!(values(&t), [6.5, 0.5]);
        foreach_addcdiv_scalars_(&[&t], &[&e], &[&e], &[-1.0]).unwrap();
        assert_eq!(values(&t), [5.5, -0.5]);

        let none: [&Tensor; 0] = [];
        assert!(foreach_norm(&none, 2.0).unwrap().is_empty());
        foreach_mul_scalar_(&none, 2.0).unwrap();
        let err = foreach_div_scalars_(&[&a], &[1.0, 2.0]).unwrap_err();
        assert!(matches!(err, Error::ListLength { .. }), "{err}");
    }
}
