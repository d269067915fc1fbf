//! c10d rendezvous and process groups: the engine of `torch.distributed`, from Rust.
//!
//! A [`TcpStore`] (hosted by rank 0) lets the ranks find each other; a [`ProcessGroup`] over it
//! runs collectives on tch tensors: Gloo on CPU tensors, NCCL on CUDA tensors. Every collective
//! blocks until done and fails, rather than hangs, when a peer dies: Gloo notices a closed
//! connection at once and a silent peer after the group's timeout.
use std::ffi::{c_char, c_int, CString};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tch::Tensor;

use crate::error::Error;
use crate::ffi::{self, take, RawGroup, RawStore};

fn c_string(op: &'static str, what: &str, s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Torch {
        op,
        message: format!("{what} {s:?} contains a NUL byte"),
    })
}

fn millis(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

fn c_rank(op: &'static str, what: &str, v: usize) -> Result<c_int, Error> {
    c_int::try_from(v).map_err(|_| Error::Torch {
        op,
        message: format!("{what} {v} too large"),
    })
}

/// The key-value store through which the ranks of a job meet (c10d's `TCPStore`): rank 0
/// hosts it on `port` and every rank, rank 0 included, connects to `host:port`.
pub struct TcpStore {
    raw: *mut RawStore,
    groups_made: AtomicU64,
}

// SAFETY: c10d's TCPStore client serialises its requests internally; the handle is a heap
// object owned by this value only.
unsafe impl Send for TcpStore {}
// SAFETY: see above; every method takes `&self` and the C++ store is thread-safe.
unsafe impl Sync for TcpStore {}

impl std::fmt::Debug for TcpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStore").finish_non_exhaustive()
    }
}

impl TcpStore {
    /// Hosts (when `is_master`) or joins the store at `host:port` for `world_size` ranks. The
    /// master waits up to `timeout` for all of them; the others retry connecting for as long.
    pub fn new(
        host: &str,
        port: u16,
        world_size: usize,
        is_master: bool,
        timeout: Duration,
    ) -> Result<Self, Error> {
        const OP: &str = "TcpStore::new";
        let c_host = c_string(OP, "host", host)?;
        let world = c_rank(OP, "world size", world_size)?;
        let mut raw = ptr::null_mut();
        // SAFETY: valid C string and out-pointer; the bridge checks the values.
        take(OP, unsafe {
            ffi::sam_torch_tcp_store_new(
                c_host.as_ptr(),
                c_int::from(port),
                world,
                c_int::from(is_master),
                millis(timeout),
                &mut raw,
            )
        })
        .map_err(|e| match e {
            Error::Torch { op, message } => Error::Torch {
                op,
                message: format!("{message} (store {host}:{port}, master: {is_master})"),
            },
            other => other,
        })?;
        Ok(Self {
            raw,
            groups_made: AtomicU64::new(0),
        })
    }

    /// Stores `value` under `key` for every rank to read.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        const OP: &str = "TcpStore::set";
        let c_key = c_string(OP, "key", key)?;
        // SAFETY: `value` is valid for `len` bytes during the call.
        take(OP, unsafe {
            ffi::sam_torch_store_set(self.raw, c_key.as_ptr(), value.as_ptr(), value.len())
        })
    }

    /// Reads `key`, waiting (up to the store timeout) until some rank has set it.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        const OP: &str = "TcpStore::get";
        let c_key = c_string(OP, "key", key)?;
        let (mut data, mut len) = (ptr::null_mut(), 0usize);
        // SAFETY: out-pointers are valid locals.
        take(OP, unsafe {
            ffi::sam_torch_store_get(self.raw, c_key.as_ptr(), &mut data, &mut len)
        })?;
        // SAFETY: on success the bridge hands over a malloc'ed buffer of `len` bytes.
        let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        // SAFETY: freed once, with the allocator that made it.
        unsafe { ffi::sam_torch_free_string(data.cast::<c_char>()) };
        Ok(value)
    }

    /// Atomically adds `delta` to the counter `key` (created at 0) and returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64, Error> {
        const OP: &str = "TcpStore::add";
        let c_key = c_string(OP, "key", key)?;
        let mut out = 0i64;
        // SAFETY: valid C string and out-pointer.
        take(OP, unsafe {
            ffi::sam_torch_store_add(self.raw, c_key.as_ptr(), delta, &mut out)
        })?;
        Ok(out)
    }

    /// A fresh key prefix per process group, the same on every rank as long as all ranks create
    /// their groups in the same order (as with `torch.distributed.new_group`).
    fn next_prefix(&self) -> String {
        format!(
            "sam_torch/pg{}/",
            self.groups_made.fetch_add(1, Ordering::SeqCst)
        )
    }
}

impl Drop for TcpStore {
    fn drop(&mut self) {
        // SAFETY: `raw` came from the bridge and is released once. Process groups hold their
        // own reference to the C++ store, so they may outlive this handle.
        unsafe { ffi::sam_torch_store_free(self.raw) };
    }
}

/// The reduction of [`ProcessGroup::all_reduce_`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum over ranks.
    Sum,
    /// Element-wise mean over ranks (floating-point tensors; Gloo sums then divides).
    Avg,
    /// Element-wise product.
    Product,
    /// Element-wise minimum.
    Min,
    /// Element-wise maximum.
    Max,
}

impl ReduceOp {
    /// c10d's `ReduceOp::RedOpType` codes (torch/csrc/distributed/c10d/Types.hpp).
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
            ReduceOp::Product => 2,
            ReduceOp::Min => 3,
            ReduceOp::Max => 4,
        }
    }
}

/// Which c10d backend a [`ProcessGroup`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors, TCP.
    Gloo,
    /// NCCL: CUDA tensors on the current device, NVLink/InfiniBand/TCP.
    Nccl,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        })
    }
}

/// Whether this build of sam-torch includes the Gloo backend (Debian's libgloo-dev headers were
/// found at build time).
pub const HAS_GLOO: bool = cfg!(sam_torch_gloo);
/// Whether this build of sam-torch includes the NCCL backend (CUDA/NCCL headers were found at
/// build time). Running it also needs a GPU.
pub const HAS_NCCL: bool = cfg!(sam_torch_nccl);

/// A c10d process group over all ranks of the job: collectives on tch tensors.
///
/// Collectives block until complete. A peer that dies makes them fail: at once when its
/// connection closes, otherwise after the group's timeout. (NCCL's own watchdog may instead end
/// the process after the timeout, as it does under torchrun.)
pub struct ProcessGroup {
    raw: *mut RawGroup,
    rank: usize,
    world_size: usize,
    backend: Backend,
    timeout: Duration,
}

// SAFETY: the C++ backend may be used from any thread (torch.distributed calls it from whatever
// thread Python runs on); the handle is owned by this value only.
unsafe impl Send for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.backend)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ProcessGroup {
    /// A Gloo group (CPU tensors). The local transport address follows torch.distributed:
    /// the interface named by `GLOO_SOCKET_IFNAME` if set, otherwise the address this host's
    /// name resolves to (loopback as the fallback).
    pub fn new_gloo(
        store: &TcpStore,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let iface = std::env::var("GLOO_SOCKET_IFNAME")
            .ok()
            .filter(|s| !s.is_empty());
        Self::gloo_with(store, rank, world_size, timeout, iface.as_deref(), None)
    }

    /// A Gloo group whose transport binds to `hostname` (a host name or IP address of this
    /// machine, e.g. `127.0.0.1` for single-machine tests).
    pub fn new_gloo_on(
        store: &TcpStore,
        rank: usize,
        world_size: usize,
        timeout: Duration,
        hostname: &str,
    ) -> Result<Self, Error> {
        Self::gloo_with(store, rank, world_size, timeout, None, Some(hostname))
    }

    fn gloo_with(
        store: &TcpStore,
        rank: usize,
        world_size: usize,
        timeout: Duration,
        iface: Option<&str>,
        hostname: Option<&str>,
    ) -> Result<Self, Error> {
        const OP: &str = "ProcessGroup::new_gloo";
        let prefix = c_string(OP, "prefix", &store.next_prefix())?;
        let iface = iface.map(|s| c_string(OP, "interface", s)).transpose()?;
        let hostname = hostname.map(|s| c_string(OP, "hostname", s)).transpose()?;
        let (c_rank_, c_world) = (
            c_rank(OP, "rank", rank)?,
            c_rank(OP, "world size", world_size)?,
        );
        let mut raw = ptr::null_mut();
        // SAFETY: valid C strings (or null) and out-pointer; the bridge checks the values.
        take(OP, unsafe {
            ffi::sam_torch_pg_gloo_new(
                store.raw,
                prefix.as_ptr(),
                c_rank_,
                c_world,
                millis(timeout),
                iface.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                hostname.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                0,
                &mut raw,
            )
        })?;
        Ok(Self {
            raw,
            rank,
            world_size,
            backend: Backend::Gloo,
            timeout,
        })
    }

    /// An NCCL group (CUDA tensors). Call [`crate::set_cuda_device`] with the local rank first.
    /// Fails with a clear error when this build has no NCCL ([`HAS_NCCL`]) or there is no GPU.
    pub fn new_nccl(
        store: &TcpStore,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Self, Error> {
        const OP: &str = "ProcessGroup::new_nccl";
        let prefix = c_string(OP, "prefix", &store.next_prefix())?;
        let (c_rank_, c_world) = (
            c_rank(OP, "rank", rank)?,
            c_rank(OP, "world size", world_size)?,
        );
        let mut raw = ptr::null_mut();
        // SAFETY: valid C string and out-pointer; the bridge checks the values.
        take(OP, unsafe {
            ffi::sam_torch_pg_nccl_new(
                store.raw,
                prefix.as_ptr(),
                c_rank_,
                c_world,
                millis(timeout),
                &mut raw,
            )
        })?;
        Ok(Self {
            raw,
            rank,
            world_size,
            backend: Backend::Nccl,
            timeout,
        })
    }

    /// The bridge handle, for the gradient reducer.
    pub(crate) fn raw(&self) -> *mut RawGroup {
        self.raw
    }

    /// This process's rank, 0-based.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks in the group.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The timeout of each collective.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reduces `tensor` over all ranks in place: afterwards every rank holds the result.
    /// The tensor must be dense and contiguous, on the group's device type.
    pub fn all_reduce_(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), Error> {
        // SAFETY: `tensor` is a live tch tensor (an `at::Tensor*`) for the call.
        take("all_reduce", unsafe {
            ffi::sam_torch_pg_allreduce(self.raw, tensor.as_mut_ptr(), op.code())
        })
    }

    /// Copies `tensor` of rank `root` into `tensor` of every other rank, in place.
    pub fn broadcast_(&self, tensor: &mut Tensor, root: usize) -> Result<(), Error> {
        let root = c_rank("broadcast", "root", root)?;
        // SAFETY: `tensor` is a live tch tensor for the call.
        take("broadcast", unsafe {
            ffi::sam_torch_pg_broadcast(self.raw, tensor.as_mut_ptr(), root)
        })
    }

    /// Gathers `tensor` from every rank: element `r` of the result is rank `r`'s tensor. All
    /// ranks must pass tensors of the same shape and dtype.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>, Error> {
        let mut outs: Vec<*mut torch_sys::C_tensor> = vec![ptr::null_mut(); self.world_size];
        // SAFETY: `outs` has `world_size` slots, which the bridge fills on success.
        take("all_gather", unsafe {
            ffi::sam_torch_pg_allgather(self.raw, tensor.as_ptr(), outs.as_mut_ptr())
        })?;
        // SAFETY: each slot is a fresh heap `at::Tensor` that tch's `Tensor` now owns.
        Ok(outs
            .into_iter()
            .map(|p| unsafe { Tensor::from_ptr(p) })
            .collect())
    }

    /// Waits until every rank has reached this point.
    pub fn barrier(&self) -> Result<(), Error> {
        // SAFETY: plain call on a live handle.
        take("barrier", unsafe { ffi::sam_torch_pg_barrier(self.raw) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from the bridge and is released once; the bridge swallows errors.
        unsafe { ffi::sam_torch_pg_free(self.raw) };
    }
}
