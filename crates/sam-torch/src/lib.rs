//! sam-torch: the one C++ bridge to the libtorch features that tch does not bind.
//!
//! - **Mixed precision**: [`AutocastGuard`] / [`autocast`] enable bf16 (or f16) autocast on CPU
//!   or CUDA for the calling thread, like Python's `torch.autocast`.
//! - **CUDA**: [`set_cuda_device`], [`cuda_memory_stats`] / [`reset_peak_memory_stats`], and
//!   the TF32 switches [`set_tf32`].
//!
//! The bridge (`csrc/bridge.cpp`) is compiled with `cc` against the headers of the libtorch that
//! tch links; every C++ exception becomes an [`Error`], never an abort.
//!
//! ```no_run
//! # fn main() -> Result<(), sam_torch::Error> {
//! use tch::{Device, Kind, Tensor};
//! let x = Tensor::randn([16, 32], (Kind::Float, Device::Cpu));
//! let w = Tensor::randn([32, 8], (Kind::Float, Device::Cpu));
//! let y = sam_torch::autocast(Device::Cpu, Kind::BFloat16, || x.matmul(&w))?;
//! assert_eq!(y.kind(), Kind::BFloat16);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod autocast;
mod cuda;
mod dist;
mod error;
mod ffi;
mod launch;

pub use autocast::{autocast, is_autocast_enabled, AutocastGuard};
pub use cuda::{
    cuda_device_count, cuda_is_available, cuda_memory_stats, cuda_synchronize, current_cuda_device,
    empty_cuda_cache, reset_peak_memory_stats, set_cuda_device, set_tf32, tf32, CudaMemoryStats,
    Tf32,
};
pub use dist::{Backend, ProcessGroup, ReduceOp, TcpStore, HAS_GLOO, HAS_NCCL};
pub use error::Error;
pub use launch::{
    expand_nodelist, LaunchEnv, LaunchError, LaunchSource, DEFAULT_MASTER_PORT, SLURM_PORT_BASE,
    SLURM_PORT_SPAN,
};
