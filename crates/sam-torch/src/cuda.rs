//! CUDA device selection, caching-allocator memory statistics and TF32 switches.
//!
//! On a machine without a usable GPU, [`cuda_is_available`] is `false`, [`cuda_device_count`]
//! is 0 and the other device functions return an error saying so.
use std::ffi::c_int;

use crate::error::Error;
use crate::ffi::{self, take};

fn index_arg(op: &'static str, index: usize) -> Result<c_int, Error> {
    c_int::try_from(index).map_err(|_| Error::Torch {
        op,
        message: format!("CUDA device index {index} does not fit a C int"),
    })
}

/// Whether libtorch sees a CUDA driver and at least one GPU.
pub fn cuda_is_available() -> bool {
    let mut out: c_int = 0;
    // SAFETY: `out` is a valid local.
    take("cuda_is_available", unsafe {
        ffi::sam_torch_cuda_is_available(&mut out)
    })
    .is_ok()
        && out != 0
}

/// Number of GPUs this process sees (after `CUDA_VISIBLE_DEVICES`); 0 without CUDA.
pub fn cuda_device_count() -> usize {
    let mut out: c_int = 0;
    // SAFETY: `out` is a valid local.
    match take("cuda_device_count", unsafe {
        ffi::sam_torch_cuda_device_count(&mut out)
    }) {
        Ok(()) => usize::try_from(out).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Makes GPU `index` the current CUDA device of the calling thread (what
/// `torch.cuda.set_device(local_rank)` does); NCCL process groups and `Device::Cuda(index)`
/// allocations then use it.
pub fn set_cuda_device(index: usize) -> Result<(), Error> {
    let index = index_arg("set_cuda_device", index)?;
    // SAFETY: plain value argument.
    take("set_cuda_device", unsafe {
        ffi::sam_torch_cuda_set_device(index)
    })
}

/// The current CUDA device of the calling thread.
pub fn current_cuda_device() -> Result<usize, Error> {
    let mut out: c_int = 0;
    // SAFETY: `out` is a valid local.
    take("current_cuda_device", unsafe {
        ffi::sam_torch_cuda_current_device(&mut out)
    })?;
    Ok(usize::try_from(out).unwrap_or(0))
}

/// Waits until all work queued on GPU `index` has finished.
pub fn cuda_synchronize(index: usize) -> Result<(), Error> {
    let index = index_arg("cuda_synchronize", index)?;
    // SAFETY: plain value argument.
    take("cuda_synchronize", unsafe {
        ffi::sam_torch_cuda_synchronize(index)
    })
}

/// Memory held by libtorch's CUDA caching allocator on one GPU, in bytes (all pools), as
/// `torch.cuda.memory_allocated` / `max_memory_allocated` / `memory_reserved` /
/// `max_memory_reserved` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaMemoryStats {
    /// Bytes in live tensors now.
    pub allocated: u64,
    /// Most bytes in live tensors since start or the last [`reset_peak_memory_stats`].
    pub peak_allocated: u64,
    /// Bytes reserved from the driver by the allocator now.
    pub reserved: u64,
    /// Most bytes reserved since start or the last [`reset_peak_memory_stats`].
    pub peak_reserved: u64,
}

/// Caching-allocator statistics of GPU `index`.
pub fn cuda_memory_stats(index: usize) -> Result<CudaMemoryStats, Error> {
    let c_index = index_arg("cuda_memory_stats", index)?;
    check_index("cuda_memory_stats", index)?;
    let mut out = [0i64; 4];
    // SAFETY: `out` has the 4 slots the bridge writes.
    take("cuda_memory_stats", unsafe {
        ffi::sam_torch_cuda_memory_stats(c_index, out.as_mut_ptr())
    })?;
    let b = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(CudaMemoryStats {
        allocated: b(out[0]),
        peak_allocated: b(out[1]),
        reserved: b(out[2]),
        peak_reserved: b(out[3]),
    })
}

/// Resets the peaks of [`cuda_memory_stats`] for GPU `index` to the current values.
pub fn reset_peak_memory_stats(index: usize) -> Result<(), Error> {
    let c_index = index_arg("reset_peak_memory_stats", index)?;
    check_index("reset_peak_memory_stats", index)?;
    // SAFETY: plain value argument.
    take("reset_peak_memory_stats", unsafe {
        ffi::sam_torch_cuda_reset_peak_memory_stats(c_index)
    })
}

/// Returns the caching allocator's unused cached blocks to the driver.
pub fn empty_cuda_cache() -> Result<(), Error> {
    // SAFETY: no arguments.
    take("empty_cuda_cache", unsafe {
        ffi::sam_torch_cuda_empty_cache()
    })
}

fn check_index(op: &'static str, index: usize) -> Result<(), Error> {
    let count = cuda_device_count();
    if !cuda_is_available() {
        return Err(Error::Torch {
            op,
            message: "CUDA is not available (no GPU or no CUDA driver)".into(),
        });
    }
    if index >= count {
        return Err(Error::Torch {
            op,
            message: format!(
                "CUDA device index {index} out of range: this process sees {count} device(s)"
            ),
        });
    }
    Ok(())
}

/// Where TF32 tensor cores may be used for fp32 work on Ampere and newer GPUs
/// (`torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tf32 {
    /// fp32 matrix products in cuBLAS.
    pub cublas: bool,
    /// fp32 convolutions in cuDNN.
    pub cudnn: bool,
}

/// Sets the process-wide TF32 switches. Harmless without a GPU.
pub fn set_tf32(tf32: Tf32) -> Result<(), Error> {
    // SAFETY: plain value arguments.
    take("set_tf32", unsafe {
        ffi::sam_torch_set_allow_tf32(c_int::from(tf32.cublas), c_int::from(tf32.cudnn))
    })
}

/// The process-wide TF32 switches.
pub fn tf32() -> Result<Tf32, Error> {
    let (mut cublas, mut cudnn): (c_int, c_int) = (0, 0);
    // SAFETY: out-pointers are valid locals.
    take("tf32", unsafe {
        ffi::sam_torch_get_allow_tf32(&mut cublas, &mut cudnn)
    })?;
    Ok(Tf32 {
        cublas: cublas != 0,
        cudnn: cudnn != 0,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cuda_queries_agree_with_tch() {
        assert_eq!(cuda_is_available(), tch::Cuda::is_available());
        assert_eq!(
            cuda_device_count(),
            usize::try_from(tch::Cuda::device_count()).unwrap()
        );
    }

    #[test]
    fn out_of_range_device_is_an_error_not_an_abort() {
        let n = cuda_device_count();
        let err = set_cuda_device(n + 3).unwrap_err();
        assert!(err.to_string().contains("set_cuda_device"), "{err}");
        assert!(cuda_memory_stats(n + 3).is_err());
        assert!(reset_peak_memory_stats(n + 3).is_err());
    }

    #[test]
    fn tf32_switches_round_trip() {
        let before = tf32().unwrap();
        for want in [
            Tf32 {
                cublas: true,
                cudnn: false,
            },
            Tf32 {
                cublas: false,
                cudnn: true,
            },
        ] {
            set_tf32(want).unwrap();
            assert_eq!(tf32().unwrap(), want);
        }
        set_tf32(before).unwrap();
    }
}
