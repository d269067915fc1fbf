//! Gradient bookkeeping tch does not bind.

use tch::Tensor;

use crate::error::Error;
use crate::ffi::{self, take};

/// Drops the gradient of `var`, as Python's `param.grad = None` (PyTorch's
/// `zero_grad(set_to_none=True)` default). Unlike zeroing, a parameter that the next backward
/// does not reach then has no gradient at all, so an optimiser skips it instead of applying
/// weight decay and momentum to a zero gradient.
pub fn clear_grad(var: &Tensor) -> Result<(), Error> {
    let mut var = var.shallow_clone();
    // SAFETY: `var` is a live tch tensor (an `at::Tensor*`) for the call; the shallow clone
    // shares the autograd metadata that holds the gradient.
    take("clear_grad", unsafe {
        ffi::sam_torch_clear_grad(var.as_mut_ptr())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn cleared_gradients_are_undefined_until_the_next_backward() {
        let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&w * 2.0).sum(Kind::Float).backward();
        assert!(w.grad().defined());
        clear_grad(&w).unwrap();
        assert!(!w.grad().defined());
        // A fresh gradient, not an accumulation onto the old one.
        (&w * 3.0).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(w.grad()).unwrap(), vec![3.0; 3]);
        // Clearing twice is harmless.
        clear_grad(&w).unwrap();
        clear_grad(&w).unwrap();
        assert!(!w.grad().defined());
    }
}
