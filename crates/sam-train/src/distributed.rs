//! Data-parallel training over c10d (sam-torch): rendezvous, parameter broadcast, gradient
//! averaging in flat buckets, and agreement on stop requests.

use std::time::Duration;

use sam_torch::{Backend, LaunchEnv, ProcessGroup, ReduceOp, TcpStore};
use tch::{Device, Kind, Tensor};

use crate::optim::AdamW;
use crate::TrainError;

/// Elements per gradient bucket (100 MB of fp32, DDP's order of magnitude).
const BUCKET_ELEMENTS: i64 = 25 * 1024 * 1024;

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

    /// Averages gradients over ranks. A parameter whose gradient exists on some rank gets one on
    /// every rank (zeros where it had none), so that every rank steps the same parameters, as a
    /// single process over the whole global batch would. Gradients travel in flat buckets in
    /// name order, the same on every rank.
    pub fn average_gradients(&self, optim: &AdamW) -> Result<(), TrainError> {
        let vars: Vec<(&str, &Tensor)> = optim.variables().collect();
        let defined: Vec<f32> = vars
            .iter()
            .map(|(_, v)| f32::from(u8::from(v.grad().defined())))
            .collect();
        let mut flags = Tensor::from_slice(&defined).to_device(self.device);
        self.group
            .all_reduce_(&mut flags, ReduceOp::Max)
            .map_err(|e| dist_err("gradient flags", e))?;
        let flags = sam_torch::read_f64s(&flags).map_err(|e| dist_err("gradient flags", e))?;
        for ((_, var), (&local, &any)) in vars.iter().zip(defined.iter().zip(&flags)) {
            if any > 0.0 && local == 0.0 {
                // Accumulating a zero defines the gradient without changing anything.
                (var.sum(Kind::Float) * 0.0).backward();
            }
        }
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|(_, v)| v.grad())
            .filter(|g| g.defined())
            .collect();
        let world = self.world_size() as f64;
        let mut start = 0;
        while start < grads.len() {
            let mut end = start;
            let mut numel = 0i64;
            while end < grads.len()
                && (end == start || numel + grads[end].numel() as i64 <= BUCKET_ELEMENTS)
            {
                numel += grads[end].numel() as i64;
                end += 1;
            }
            let flat: Vec<Tensor> = grads[start..end]
                .iter()
                .map(|g| g.to_kind(Kind::Float).flatten(0, -1))
                .collect();
            let mut bucket = Tensor::cat(&flat, 0).to_device(self.device);
            self.group
                .all_reduce_(&mut bucket, ReduceOp::Sum)
                .map_err(|e| dist_err("gradient all-reduce", e))?;
            let bucket = bucket / world;
            let mut offset = 0i64;
            for g in &grads[start..end] {
                let n = g.numel() as i64;
                let mut g = g.shallow_clone();
                let part = bucket
                    .narrow(0, offset, n)
                    .view_as(&g)
                    .to_kind(g.kind())
                    .to_device(g.device());
                g.copy_(&part);
                offset += n;
            }
            start = end;
        }
        Ok(())
    }

    /// True on every rank when `flag` is true on any rank (stop requests).
    pub fn any(&self, flag: bool) -> Result<bool, TrainError> {
        let mut t = Tensor::from_slice(&[f32::from(u8::from(flag))]).to_device(self.device);
        self.group
            .all_reduce_(&mut t, ReduceOp::Max)
            .map_err(|e| dist_err("stop agreement", e))?;
        Ok(sam_torch::read_f64(&t).map_err(|e| dist_err("stop agreement", e))? > 0.0)
    }

    /// Element-wise sum of `values` over ranks; every rank gets the same result.
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        let mut t = Tensor::from_slice(values).to_device(self.device);
        self.group
            .all_reduce_(&mut t, ReduceOp::Sum)
            .map_err(|e| dist_err("sum", e))?;
        sam_torch::read_f64s(&t).map_err(|e| dist_err("sum", e))
    }

    /// Rank 0's `values` on every rank: the numbers every rank then decides from are the same
    /// bits, whatever the reduction order of the backend.
    pub fn broadcast_f64(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        let mut t = Tensor::from_slice(values).to_device(self.device);
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
