//! Gradient averaging over a [`ProcessGroup`] that overlaps the backward, as PyTorch's
//! `DistributedDataParallel` does with its c10d `Reducer`.
//!
//! A [`GradReducer`] lays the parameters' gradients out in flat buckets (at the first
//! [`GradReducer::arm`]) and, for every step:
//!
//! 1. [`GradReducer::arm`] right before the step's last backward (with that backward's root):
//!    the buckets of the parameters the backward cannot reach leave at once, the others from
//!    post-accumulate-grad hooks as soon as their last gradient lands, each as one asynchronous
//!    all-reduce with its gradients copied in once;
//! 2. the backward runs, sending buckets as it goes;
//! 3. [`GradReducer::finish`] sends what is left, waits, and leaves in every parameter's `.grad`
//!    the mean over ranks: a view of its bucket when the wire dtype is the parameter's (no copy
//!    back), a widened copy otherwise.
//!
//! A parameter with a gradient on some rank gets the mean on every rank (zeros stand in where a
//! rank had none); a parameter with no gradient on any rank keeps none. Buckets are sent in one
//! order on every rank (rank 0's layout), which c10d needs to pair the ranks' collectives.
//!
//! On CUDA (NCCL) the collectives are ordered after the copies by the streams and
//! [`GradReducer::finish`] makes the calling thread's current stream wait for them, so kernels
//! queued after it (the optimiser) read the averages; its one host synchronisation reads the
//! "has a gradient" flags (counted by [`crate::host_reads`]). With Gloo, CUDA tensors go
//! through c10d's Gloo CUDA path (staged in host memory).
use std::ffi::c_int;
use std::ptr;

use tch::{Kind, Tensor};
use torch_sys::C_tensor;

use crate::dist::ProcessGroup;
use crate::error::Error;
use crate::ffi::{self, take, RawReducer};

/// c10's `ScalarType` codes (c10/core/ScalarType.h) of the wire dtypes.
const SCALAR_FLOAT: c_int = 6;
const SCALAR_BFLOAT16: c_int = 15;

/// The dtype gradients travel in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireDtype {
    /// float32: the averages equal a sum over ranks in float32, divided by the world size.
    Fp32,
    /// bfloat16: half the bytes; each gradient is rounded to bfloat16 before the sum (which is
    /// also bfloat16), the mean is widened back to the parameter's dtype.
    Bf16,
}

impl WireDtype {
    fn code(self) -> c_int {
        match self {
            WireDtype::Fp32 => SCALAR_FLOAT,
            WireDtype::Bf16 => SCALAR_BFLOAT16,
        }
    }

    /// The tch kind of the buckets.
    pub fn kind(self) -> Kind {
        match self {
            WireDtype::Fp32 => Kind::Float,
            WireDtype::Bf16 => Kind::BFloat16,
        }
    }
}

/// When a bucket of the last step was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketLaunch {
    /// Not sent (no step armed yet).
    NotSent,
    /// At [`GradReducer::arm`]: its gradients were final before the backward.
    AtArm,
    /// From a hook, while the backward was running.
    InBackward,
    /// At [`GradReducer::finish`], after the backward (gradients the backward never reached).
    AtFinish,
}

/// A bucket of the last step: how many parameters it holds and when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketReport {
    /// Parameters in the bucket.
    pub parameters: usize,
    /// When it was sent.
    pub launch: BucketLaunch,
}

/// Averages the gradients of a fixed list of parameters over the ranks of a group, overlapping
/// the last backward of each step (module docs).
///
/// It holds its own reference to the group's backend: dropping the [`ProcessGroup`] first shuts
/// the backend down and makes later steps fail with an error, never crash.
pub struct GradReducer {
    raw: *mut RawReducer,
    world_size: usize,
    /// Whether the buckets are laid out (the first arming reads rank 0's layout back).
    laid_out: std::cell::Cell<bool>,
}

// SAFETY: the C++ state is guarded by its own mutex (the hooks reach it from autograd's
// threads); the handle is owned by this value only.
unsafe impl Send for GradReducer {}

impl std::fmt::Debug for GradReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradReducer")
            .field("world_size", &self.world_size)
            .finish_non_exhaustive()
    }
}

impl GradReducer {
    /// A reducer over `params` (leaf tensors that require grad, on one device, floating point;
    /// the same list in the same order on every rank) in buckets of at most `bucket_bytes` of
    /// `wire`. It installs a post-accumulate-grad hook on each parameter (replacing an earlier
    /// reducer's).
    pub fn new(
        group: &ProcessGroup,
        params: &[Tensor],
        bucket_bytes: usize,
        wire: WireDtype,
    ) -> Result<Self, Error> {
        const OP: &str = "GradReducer::new";
        let handles: Vec<*mut C_tensor> = params.iter().map(|t| t.as_ptr().cast_mut()).collect();
        let bytes = i64::try_from(bucket_bytes).unwrap_or(i64::MAX);
        let mut raw = ptr::null_mut();
        // SAFETY: `handles` holds `params.len()` live tensors for the call (the bridge keeps its
        // own references); the group handle is live while `group` is.
        take(OP, unsafe {
            ffi::sam_torch_reducer_new(
                group.raw(),
                handles.as_ptr(),
                handles.len(),
                bytes,
                wire.code(),
                &mut raw,
            )
        })?;
        Ok(Self {
            raw,
            world_size: group.world_size(),
            laid_out: std::cell::Cell::new(false),
        })
    }

    /// Counts the read of rank 0's bucket layout, which the first arming of the run makes.
    fn count_layout_read(&self) {
        if !self.laid_out.replace(true) {
            crate::host::count_read();
        }
    }

    /// Starts a step's reduction right before the backward from `root` (the step's last
    /// backward; `None` when none follows). The first call also lays out the buckets, with one
    /// broadcast from rank 0 read back to the host (a device→host read, counted in
    /// [`crate::host_reads`]), so every rank must arm its first step at the same point.
    pub fn arm(&self, root: Option<&Tensor>) -> Result<(), Error> {
        let root = root.map_or(ptr::null(), |t| t.as_ptr());
        self.count_layout_read();
        // SAFETY: `root` is null or a live tensor for the call.
        take("GradReducer::arm", unsafe {
            ffi::sam_torch_reducer_arm(self.raw, root)
        })
    }

    /// Completes the step: sends the remaining buckets, waits for every one, and sets each
    /// parameter's `.grad` to its mean over ranks. Arms first when the step did not. Its one
    /// device→host read (the flags) counts in [`crate::host_reads`].
    pub fn finish(&self) -> Result<(), Error> {
        self.count_layout_read(); // arming here lays the buckets out
        crate::host::count_read();
        // SAFETY: plain call on a live handle.
        take("GradReducer::finish", unsafe {
            ffi::sam_torch_reducer_finish(self.raw)
        })
    }

    /// The buckets, in the order they are sent, and when each was sent in the last step
    /// (empty before the first arming).
    pub fn report(&self) -> Result<Vec<BucketReport>, Error> {
        let mut count = 0usize;
        // SAFETY: capacity 0: the bridge writes only the count.
        take("GradReducer::report", unsafe {
            ffi::sam_torch_reducer_report(self.raw, ptr::null_mut(), ptr::null_mut(), 0, &mut count)
        })?;
        let mut points: Vec<c_int> = vec![-1; count];
        let mut sizes: Vec<i64> = vec![0; count];
        // SAFETY: both buffers have `count` slots; the layout does not change between calls.
        take("GradReducer::report", unsafe {
            ffi::sam_torch_reducer_report(
                self.raw,
                points.as_mut_ptr(),
                sizes.as_mut_ptr(),
                count,
                &mut count,
            )
        })?;
        Ok(points
            .iter()
            .zip(&sizes)
            .map(|(&p, &n)| BucketReport {
                parameters: usize::try_from(n).unwrap_or(0),
                launch: match p {
                    0 => BucketLaunch::AtArm,
                    1 => BucketLaunch::InBackward,
                    2 => BucketLaunch::AtFinish,
                    _ => BucketLaunch::NotSent,
                },
            })
            .collect())
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        // SAFETY: `raw` came from the bridge and is released once.
        unsafe { ffi::sam_torch_reducer_free(self.raw) };
    }
}
