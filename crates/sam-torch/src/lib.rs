//! sam-torch: the one C++ bridge to the libtorch features that tch does not bind.
//!
//! - **Mixed precision**: [`AutocastGuard`] / [`autocast`] enable bf16 (or f16) autocast on CPU
//!   or CUDA for the calling thread, like Python's `torch.autocast`.
//! - **CUDA**: [`select_device`] (a config's or flag's `auto` / `cpu` / `cuda` / `cuda:N` for
//!   a local rank: GPU `local_rank % device_count`, or a [`DeviceError`] naming the libtorch
//!   build, the NVIDIA driver and `CUDA_VISIBLE_DEVICES`), [`set_cuda_device`],
//!   [`cuda_memory_stats`] / [`reset_peak_memory_stats`], [`cuda_device_name`], [`cuda_total_memory`], and the TF32
//!   switches [`set_tf32`].
//! - **Multi-tensor kernels**: [`fused_adamw_`] (the kernel of `torch.optim.AdamW(fused=True)`)
//!   and the `_foreach_*` operations an optimiser and gradient clipping are made of
//!   ([`foreach_norm`], [`foreach_mul_tensor_`], ...): one call for a whole list of tensors.
//! - **Distributed** (c10d, the engine of `torch.distributed`): [`TcpStore`] rendezvous and
//!   [`ProcessGroup`] over Gloo (CPU) or NCCL (CUDA) with `all_reduce_`, `broadcast_`,
//!   `all_gather`, `barrier`; [`LaunchEnv`] reads rank, world size, local rank and the master
//!   address from SLURM (`srun`) or torchrun-style variables. [`GradReducer`] averages
//!   gradients over a group in buckets sent while the backward still runs (DDP's reducer).
//! - **Host traffic**: [`read_f64s`] / [`read_f64`] (device→host reads, counted per thread by
//!   [`host_reads`]) and [`upload`] (host→device from pinned memory without blocking on CUDA).
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
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use sam_torch::{LaunchEnv, ProcessGroup, ReduceOp, TcpStore};
//! let env = LaunchEnv::from_env()?;
//! let timeout = Duration::from_secs(300);
//! let store =
//!     TcpStore::new(&env.master_addr, env.master_port, env.world_size, env.is_master(), timeout)?;
//! let pg = ProcessGroup::new_gloo(&store, env.rank, env.world_size, timeout)?;
//! let mut grads = tch::Tensor::ones([1024], (tch::Kind::Float, tch::Device::Cpu));
//! pg.all_reduce_(&mut grads, ReduceOp::Avg)?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod autocast;
mod cuda;
mod dist;
mod error;
mod ffi;
mod foreach;
mod grad;
mod host;
mod launch;
mod reducer;

// The build script's header search, unit-tested on fake directory trees.
#[cfg(test)]
#[path = "../build/cuda_headers.rs"]
mod build_cuda_headers;

pub use autocast::{autocast, is_autocast_enabled, AutocastGuard, AutocastPause};
pub use cuda::{
    cuda_device_count, cuda_device_name, cuda_is_available, cuda_memory_stats, cuda_synchronize,
    cuda_total_memory, current_cuda_device, empty_cuda_cache, reset_peak_memory_stats,
    resolve_device, select_device, set_cuda_device, set_tf32, tf32, CudaMemoryStats, CudaStatus,
    CudaVersion, DeviceChoice, DeviceError, DeviceRequest, Tf32,
};
pub use dist::{Backend, ProcessGroup, ReduceOp, TcpStore, HAS_GLOO, HAS_NCCL};
pub use error::Error;
pub use foreach::{
    foreach_add_scalar_, foreach_addcdiv_scalars_, foreach_addcmul_scalar_, foreach_div_scalars_,
    foreach_lerp_scalar_, foreach_mul_scalar_, foreach_mul_tensor_, foreach_norm, foreach_sqrt,
    fused_adamw_, AdamWHyper,
};
pub use grad::clear_grad;
pub use host::{host_reads, read_f64, read_f64s, upload};
pub use launch::{
    available_cores, expand_nodelist, CpuBudget, CpuBudgetSource, LaunchEnv, LaunchError,
    LaunchSource, DEFAULT_MASTER_PORT, SLURM_PORT_BASE, SLURM_PORT_SPAN,
};
pub use reducer::{BucketLaunch, BucketReport, GradReducer, WireDtype};
