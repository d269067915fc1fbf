//! Automatic mixed precision (autocast), as Python's `torch.autocast(device_type, dtype)`.
//!
//! libtorch keeps the autocast state per thread; the guard is therefore neither `Send` nor
//! `Sync` and must be dropped on the thread that made it. Backward passes belong outside the
//! region (autograd replays the casts recorded in the forward pass); [`AutocastPause`] lifts
//! autocast for one inside it without ending the region and its cast cache.
use std::ffi::c_int;
use std::marker::PhantomData;

use tch::{Device, Kind};

use crate::error::Error;
use crate::ffi::{self, take};

/// c10's `ScalarType` codes of the kinds autocast supports (c10/core/ScalarType.h).
const SCALAR_HALF: c_int = 5;
const SCALAR_BFLOAT16: c_int = 15;

fn device_code(device: Device) -> Result<c_int, Error> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        other => Err(Error::AutocastDevice { device: other }),
    }
}

fn kind_code(kind: Kind) -> Result<c_int, Error> {
    match kind {
        Kind::BFloat16 => Ok(SCALAR_BFLOAT16),
        Kind::Half => Ok(SCALAR_HALF),
        other => Err(Error::AutocastKind { kind: other }),
    }
}

/// Whether autocast is enabled for `device`'s type on the calling thread.
pub fn is_autocast_enabled(device: Device) -> Result<bool, Error> {
    let code = device_code(device)?;
    let mut out: c_int = 0;
    // SAFETY: `out` is a valid pointer for the call.
    take("autocast_is_enabled", unsafe {
        ffi::sam_torch_autocast_is_enabled(code, &mut out)
    })?;
    Ok(out != 0)
}

/// Enables autocast for one device type on the calling thread until dropped, then restores
/// the previous state (enabled flag, dtype, cache flag) and, when the outermost guard ends,
/// clears the cast cache — what Python's `torch.autocast` does on `__enter__`/`__exit__`.
///
/// ```no_run
/// # fn main() -> Result<(), sam_torch::Error> {
/// use tch::{Device, Kind, Tensor};
/// let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
/// let y = {
///     let _amp = sam_torch::AutocastGuard::new(Device::Cpu, Kind::BFloat16)?;
///     a.matmul(&a)
/// };
/// assert_eq!(y.kind(), Kind::BFloat16);
/// # Ok(()) }
/// ```
#[must_use = "autocast ends when the guard is dropped"]
pub struct AutocastGuard {
    device: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
    prev_cache: c_int,
    // The state is thread-local: keep the guard on its thread.
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for AutocastGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutocastGuard")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl AutocastGuard {
    /// Enables autocast to `kind` (`BFloat16` or `Half`) for `device`'s type (`Cpu` or any
    /// `Cuda(_)`) on the calling thread, with the cast cache on.
    pub fn new(device: Device, kind: Kind) -> Result<Self, Error> {
        let device = device_code(device)?;
        let dtype = kind_code(kind)?;
        let (mut prev_enabled, mut prev_dtype, mut prev_cache, mut nesting) = (0, 0, 0, 0);
        // SAFETY (all calls below): out-pointers are valid locals.
        take("autocast_is_enabled", unsafe {
            ffi::sam_torch_autocast_is_enabled(device, &mut prev_enabled)
        })?;
        take("autocast_get_dtype", unsafe {
            ffi::sam_torch_autocast_get_dtype(device, &mut prev_dtype)
        })?;
        take("autocast_cache_enabled", unsafe {
            ffi::sam_torch_autocast_cache_enabled(&mut prev_cache)
        })?;
        take("autocast_set_dtype", unsafe {
            ffi::sam_torch_autocast_set_dtype(device, dtype)
        })?;
        take("autocast_set_enabled", unsafe {
            ffi::sam_torch_autocast_set_enabled(device, 1)
        })?;
        take("autocast_set_cache_enabled", unsafe {
            ffi::sam_torch_autocast_set_cache_enabled(1)
        })?;
        take("autocast_increment_nesting", unsafe {
            ffi::sam_torch_autocast_increment_nesting(&mut nesting)
        })?;
        Ok(Self {
            device,
            prev_enabled,
            prev_dtype,
            prev_cache,
            _not_send: PhantomData,
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // Errors cannot surface from drop; these calls only fail on invalid codes, which `new`
        // has ruled out. Messages are still freed by `take`.
        let mut nesting: c_int = 1;
        // SAFETY (all calls below): codes were validated in `new`; `nesting` is a valid local.
        let _ = take("autocast_decrement_nesting", unsafe {
            ffi::sam_torch_autocast_decrement_nesting(&mut nesting)
        });
        if nesting == 0 {
            let _ = take("autocast_clear_cache", unsafe {
                ffi::sam_torch_autocast_clear_cache()
            });
        }
        let _ = take("autocast_set_enabled", unsafe {
            ffi::sam_torch_autocast_set_enabled(self.device, self.prev_enabled)
        });
        let _ = take("autocast_set_dtype", unsafe {
            ffi::sam_torch_autocast_set_dtype(self.device, self.prev_dtype)
        });
        let _ = take("autocast_set_cache_enabled", unsafe {
            ffi::sam_torch_autocast_set_cache_enabled(self.prev_cache)
        });
    }
}

/// Turns autocast off for `device`'s type on the calling thread until dropped, keeping the cast
/// cache and the nesting of the enclosing [`AutocastGuard`]: what a backward pass started inside
/// an autocast region needs. (The autograd engine runs a CPU backward on the calling thread with
/// that thread's autocast state, so without the pause every matmul of the backward pass would be
/// cast again; Python's advice is to call `backward()` outside `torch.autocast`.)
///
/// ```no_run
/// # fn main() -> Result<(), sam_torch::Error> {
/// use tch::{Device, Kind, Tensor};
/// let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
/// let _amp = sam_torch::AutocastGuard::new(Device::Cpu, Kind::BFloat16)?;
/// let loss = a.matmul(&a).sum(Kind::Float);
/// {
///     let _pause = sam_torch::AutocastPause::new(Device::Cpu)?;
///     loss.backward();
/// }
/// # Ok(()) }
/// ```
#[must_use = "autocast resumes when the pause is dropped"]
pub struct AutocastPause {
    device: c_int,
    prev_enabled: c_int,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for AutocastPause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutocastPause")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl AutocastPause {
    /// Turns autocast off for `device`'s type (`Cpu` or any `Cuda(_)`) on the calling thread.
    pub fn new(device: Device) -> Result<Self, Error> {
        let device = device_code(device)?;
        let mut prev_enabled = 0;
        // SAFETY: `prev_enabled` is a valid local; the code was validated above.
        take("autocast_is_enabled", unsafe {
            ffi::sam_torch_autocast_is_enabled(device, &mut prev_enabled)
        })?;
        // SAFETY: as above.
        take("autocast_set_enabled", unsafe {
            ffi::sam_torch_autocast_set_enabled(device, 0)
        })?;
        Ok(Self {
            device,
            prev_enabled,
            _not_send: PhantomData,
        })
    }
}

impl Drop for AutocastPause {
    fn drop(&mut self) {
        // SAFETY: the code was validated in `new`.
        let _ = take("autocast_set_enabled", unsafe {
            ffi::sam_torch_autocast_set_enabled(self.device, self.prev_enabled)
        });
    }
}

/// Runs `f` with autocast to `kind` enabled for `device`'s type on the calling thread.
///
/// ```no_run
/// # fn main() -> Result<(), sam_torch::Error> {
/// use tch::{Device, Kind, Tensor};
/// let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
/// let y = sam_torch::autocast(Device::Cpu, Kind::BFloat16, || a.matmul(&a))?;
/// assert_eq!(y.kind(), Kind::BFloat16);
/// # Ok(()) }
/// ```
pub fn autocast<T>(device: Device, kind: Kind, f: impl FnOnce() -> T) -> Result<T, Error> {
    let _guard = AutocastGuard::new(device, kind)?;
    Ok(f())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn cpu_bf16_matmul_is_bf16_inside_and_f32_outside() {
        let a = Tensor::ones([8, 8], (Kind::Float, Device::Cpu));
        assert!(!is_autocast_enabled(Device::Cpu).unwrap());
        let inside = autocast(Device::Cpu, Kind::BFloat16, || {
            assert!(is_autocast_enabled(Device::Cpu).unwrap());
            a.matmul(&a)
        })
        .unwrap();
        assert_eq!(inside.kind(), Kind::BFloat16);
        // 8 ones summed: exact in bf16.
        assert_eq!(inside.double_value(&[0, 0]), 8.0);
        assert!(!is_autocast_enabled(Device::Cpu).unwrap());
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }

    #[test]
    fn nested_guards_restore_the_outer_state() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let outer = AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
        {
            let _inner = AutocastGuard::new(Device::Cpu, Kind::Half).unwrap();
            assert_eq!(a.matmul(&a).kind(), Kind::Half);
        }
        assert!(is_autocast_enabled(Device::Cpu).unwrap());
        assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
        drop(outer);
        assert!(!is_autocast_enabled(Device::Cpu).unwrap());
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }

    #[test]
    fn pause_lifts_autocast_and_keeps_the_region() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let _amp = AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
        {
            let _pause = AutocastPause::new(Device::Cpu).unwrap();
            assert!(!is_autocast_enabled(Device::Cpu).unwrap());
            assert_eq!(a.matmul(&a).kind(), Kind::Float);
        }
        assert!(is_autocast_enabled(Device::Cpu).unwrap());
        assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
    }

    #[test]
    fn backward_in_a_pause_runs_in_the_forward_kinds() {
        // y = x·W in fp32 outside autocast; its backward inside a bare autocast region would cast
        // the gradient matmuls to bf16 (the autograd engine runs them on this thread with its
        // autocast state), inside a pause it stays fp32: the gradient is exact.
        let x = Tensor::from_slice(&[1.0f32 + 1.0 / 1024.0; 16]).view([4, 4]);
        let mut w = Tensor::ones([4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut grad_with = |pause: bool| {
            w.zero_grad();
            let loss = x.matmul(&w).sum(Kind::Float);
            let _amp = AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
            let _pause = pause.then(|| AutocastPause::new(Device::Cpu).unwrap());
            loss.backward();
            w.grad().double_value(&[0, 0])
        };
        // d(sum xW)/dW[0,0] = sum of column 0 of x = 4·(1 + 2⁻¹⁰), not representable in bf16.
        let exact = 4.0 * (1.0 + 1.0 / 1024.0);
        assert_eq!(grad_with(true), exact);
        assert_ne!(grad_with(false), exact);
    }

    #[test]
    fn cpu_autocast_leaves_cuda_autocast_off() {
        let _g = AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
        assert!(!is_autocast_enabled(Device::Cuda(0)).unwrap());
    }

    #[test]
    fn unsupported_kind_and_device_are_errors() {
        let err = AutocastGuard::new(Device::Cpu, Kind::Float).unwrap_err();
        assert!(
            matches!(err, Error::AutocastKind { kind: Kind::Float }),
            "{err}"
        );
        let err = AutocastGuard::new(Device::Mps, Kind::BFloat16).unwrap_err();
        assert!(matches!(err, Error::AutocastDevice { .. }), "{err}");
        assert!(!is_autocast_enabled(Device::Cpu).unwrap());
    }
}
