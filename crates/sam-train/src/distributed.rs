//! Data-parallel training over c10d (sam-torch): rendezvous, parameter broadcast, gradient
//! averaging in flat buckets that overlaps the image encoder's backward, and agreement on stop
//! requests.

use std::time::Duration;

use sam_config::GradientAllreduceDtype;
use sam_torch::{Backend, GradReducer, LaunchEnv, ProcessGroup, ReduceOp, TcpStore, WireDtype};
use tch::{Device, Tensor};

use crate::optim::AdamW;
use crate::TrainError;

/// Bytes per gradient bucket: DDP's default (`bucket_cap_mb=25`). Small enough that the first
/// buckets of the image encoder leave early in its backward (a vit_b encoder fills about 14 of
/// them in fp32), large enough that each all-reduce moves megabytes.
pub const GRADIENT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// The process group of a distributed run and this process's place in it.
pub struct Collective {
    group: ProcessGroup,
    _store: TcpStore,
    env: LaunchEnv,
    device: Device,
}

impl std::fmt::Debug for Collective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collective")
            .field("env", &self.env)
            .field("device", &self.device)
            .finish()
    }
}

fn dist_err(what: &str, e: impl Into<crate::BoxError>) -> TrainError {
    TrainError::collective(what, e)
}

impl Collective {
    /// Joins the job described by `env` with `backend` (`Nccl` needs a GPU; the group's
    /// tensors then live on `cuda:<local_rank>`). A peer that does not answer within `timeout`
    /// makes every collective fail instead of hanging.
    pub fn init(env: &LaunchEnv, backend: Backend, timeout: Duration) -> Result<Self, TrainError> {
        let store = TcpStore::new(
            &env.master_addr,
            env.master_port,
            env.world_size,
            env.rank == 0,
            timeout,
        )
        .map_err(|e| dist_err("rendezvous", e))?;
        let (group, device) = match backend {
            Backend::Nccl => {
                // The same GPU the trainer computes on: local_rank % visible GPUs (SLURM's
                // one-GPU-per-task binding shows every task its GPU as device 0).
                let gpu = sam_torch::select_device(sam_torch::DeviceRequest::Cuda, env.local_rank)
                    .map_err(|e| dist_err("CUDA device", e))?
                    .device;
                let Device::Cuda(index) = gpu else {
                    return Err(dist_err("CUDA device", "NCCL needs a GPU"));
                };
                sam_torch::set_cuda_device(index).map_err(|e| dist_err("CUDA device", e))?;
                (
                    ProcessGroup::new_nccl(&store, env.rank, env.world_size, timeout)
                        .map_err(|e| dist_err("NCCL", e))?,
                    gpu,
                )
            }
            _ => (
                ProcessGroup::new_gloo(&store, env.rank, env.world_size, timeout)
                    .map_err(|e| dist_err("Gloo", e))?,
                Device::Cpu,
            ),
        };
        Ok(Self {
            group,
            _store: store,
            env: env.clone(),
            device,
        })
    }

    /// Global rank.
    pub fn rank(&self) -> usize {
        self.env.rank
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.env.world_size
    }

    /// Rank on this node.
    pub fn local_rank(&self) -> usize {
        self.env.local_rank
    }

    /// Overwrites every variable with rank 0's value.
    pub fn broadcast_variables(&self, vars: &[(String, Tensor)]) -> Result<(), TrainError> {
        let _guard = tch::no_grad_guard();
        for (name, var) in vars {
            let mut t = var.detach().to_device(self.device).contiguous();
            self.group
                .broadcast_(&mut t, 0)
                .map_err(|e| dist_err(&format!("broadcast of {name}"), e))?;
            let mut v = var.detach();
            v.copy_(&t);
        }
        Ok(())
    }

    /// The [`GradientReducer`] of `optim`'s parameters, whose gradients then travel as
    /// `dtype` in buckets of [`GRADIENT_BUCKET_BYTES`].
    pub fn gradient_reducer(
        &self,
        optim: &AdamW,
        dtype: GradientAllreduceDtype,
    ) -> Result<GradientReducer, TrainError> {
        let params: Vec<Tensor> = optim.variables().map(|(_, v)| v.shallow_clone()).collect();
        let wire = match dtype {
            GradientAllreduceDtype::Fp32 => WireDtype::Fp32,
            GradientAllreduceDtype::Bf16 => WireDtype::Bf16,
        };
        let inner = GradReducer::new(&self.group, &params, GRADIENT_BUCKET_BYTES, wire)
            .map_err(|e| dist_err("gradient reducer", e))?;
        Ok(GradientReducer { inner })
    }

    /// True on every rank when `flag` is true on any rank (stop requests).
    pub fn any(&self, flag: bool) -> Result<bool, TrainError> {
        let mut t = sam_torch::upload(
            &Tensor::from_slice(&[f32::from(u8::from(flag))]),
            self.device,
        );
        self.group
            .all_reduce_(&mut t, ReduceOp::Max)
            .map_err(|e| dist_err("stop agreement", e))?;
        Ok(sam_torch::read_f64(&t).map_err(|e| dist_err("stop agreement", e))? > 0.0)
    }

    /// Element-wise sum of `values` over ranks; every rank gets the same result.
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        let mut t = sam_torch::upload(&Tensor::from_slice(values), self.device);
        self.group
            .all_reduce_(&mut t, ReduceOp::Sum)
            .map_err(|e| dist_err("sum", e))?;
        sam_torch::read_f64s(&t).map_err(|e| dist_err("sum", e))
    }

    /// Rank 0's `values` on every rank: the numbers every rank then decides from are the same
    /// bits, whatever the reduction order of the backend.
    pub fn broadcast_f64(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        let mut t = sam_torch::upload(&Tensor::from_slice(values), self.device);
        self.group
            .broadcast_(&mut t, 0)
            .map_err(|e| dist_err("broadcast", e))?;
        sam_torch::read_f64s(&t).map_err(|e| dist_err("broadcast", e))
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<(), TrainError> {
        self.group.barrier().map_err(|e| dist_err("barrier", e))
    }
}

/// Averages the gradients of a step over ranks while the step's last backward (the image
/// encoder's) still runs, as PyTorch's DistributedDataParallel does:
/// [`GradientReducer::arm`] when the heads' gradients are final (the step calls it through
/// [`crate::StepInputs::before_encoder_backward`]), then [`GradientReducer::finish`] after the
/// backward. Buckets of the heads' gradients leave at arming, the encoder's as its backward
/// fills them (reverse forward order); each is one asynchronous all-reduce with its gradients
/// copied in once, and in fp32 the averages stay in the bucket, `.grad` being a view of it.
///
/// After `finish` a parameter whose gradient exists on some rank has the mean over ranks on
/// every rank (zeros count where a rank had none); one without a gradient on any rank keeps
/// none, so the optimiser skips it. The means are the same bits on every rank. Non-finite
/// values propagate into every rank's mean, so the finiteness check that follows sees them on
/// all ranks.
pub struct GradientReducer {
    inner: GradReducer,
}

impl std::fmt::Debug for GradientReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradientReducer").finish_non_exhaustive()
    }
}

impl GradientReducer {
    /// Starts the step's reduction right before the backward from `root` (`None`: no backward
    /// follows). The first call lays out the buckets (one broadcast from rank 0).
    pub fn arm(&self, root: Option<&Tensor>) -> Result<(), TrainError> {
        self.inner
            .arm(root)
            .map_err(|e| dist_err("gradient all-reduce", e))
    }

    /// Sends what is left, waits for every bucket and leaves the means in `.grad`.
    pub fn finish(&self) -> Result<(), TrainError> {
        self.inner
            .finish()
            .map_err(|e| dist_err("gradient all-reduce", e))
    }
}
