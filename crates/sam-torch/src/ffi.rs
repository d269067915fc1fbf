//! Raw declarations of `csrc/bridge.cpp`. Every function returns null on success or a
//! `malloc`ed message that [`take`] turns into an [`Error`] and frees.
use std::ffi::{c_char, c_int, CStr};

use torch_sys::C_tensor;

use crate::error::Error;

/// Opaque `SamStore` of the bridge (holds a `c10::intrusive_ptr<c10d::Store>`).
#[repr(C)]
pub struct RawStore {
    _private: [u8; 0],
}

/// Opaque `SamGroup` of the bridge (holds a `c10::intrusive_ptr<c10d::Backend>`).
#[repr(C)]
pub struct RawGroup {
    _private: [u8; 0],
}

/// Opaque `SamReducer` of the bridge (holds the gradient reducer's shared state).
#[repr(C)]
pub struct RawReducer {
    _private: [u8; 0],
}

extern "C" {
    pub fn sam_torch_free_string(s: *mut c_char);

    pub fn sam_torch_autocast_is_enabled(device: c_int, out: *mut c_int) -> *mut c_char;
    pub fn sam_torch_autocast_set_enabled(device: c_int, enabled: c_int) -> *mut c_char;
    pub fn sam_torch_autocast_get_dtype(device: c_int, out: *mut c_int) -> *mut c_char;
    pub fn sam_torch_autocast_set_dtype(device: c_int, dtype: c_int) -> *mut c_char;
    pub fn sam_torch_autocast_cache_enabled(out: *mut c_int) -> *mut c_char;
    pub fn sam_torch_autocast_set_cache_enabled(enabled: c_int) -> *mut c_char;
    pub fn sam_torch_autocast_increment_nesting(out: *mut c_int) -> *mut c_char;
    pub fn sam_torch_autocast_decrement_nesting(out: *mut c_int) -> *mut c_char;
    pub fn sam_torch_autocast_clear_cache() -> *mut c_char;

    pub fn sam_torch_cuda_is_available(out: *mut c_int) -> *mut c_char;
    pub fn sam_torch_cuda_device_count(out: *mut c_int) -> *mut c_char;
    pub fn sam_torch_cuda_set_device(index: c_int) -> *mut c_char;
    pub fn sam_torch_cuda_current_device(out: *mut c_int) -> *mut c_char;
    pub fn sam_torch_cuda_synchronize(index: c_int) -> *mut c_char;
    pub fn sam_torch_cuda_memory_stats(index: c_int, out: *mut i64) -> *mut c_char;
    pub fn sam_torch_cuda_reset_peak_memory_stats(index: c_int) -> *mut c_char;
    pub fn sam_torch_cuda_empty_cache() -> *mut c_char;

    pub fn sam_torch_clear_grad(tensor: *mut C_tensor) -> *mut c_char;

    #[allow(clippy::too_many_arguments)]
    pub fn sam_torch_fused_adamw_(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        state_steps: *const *mut C_tensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> *mut c_char;
    pub fn sam_torch_foreach_norm(
        tensors: *const *mut C_tensor,
        n: usize,
        ord: f64,
        outs: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub fn sam_torch_foreach_sqrt(
        tensors: *const *mut C_tensor,
        n: usize,
        outs: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub fn sam_torch_foreach_add_scalar_(
        tensors: *const *mut C_tensor,
        n: usize,
        value: f64,
    ) -> *mut c_char;
    pub fn sam_torch_foreach_mul_scalar_(
        tensors: *const *mut C_tensor,
        n: usize,
        value: f64,
    ) -> *mut c_char;
    pub fn sam_torch_foreach_mul_tensor_(
        tensors: *const *mut C_tensor,
        n: usize,
        value: *const C_tensor,
    ) -> *mut c_char;
    pub fn sam_torch_foreach_div_scalars_(
        tensors: *const *mut C_tensor,
        n: usize,
        values: *const f64,
    ) -> *mut c_char;
    pub fn sam_torch_foreach_lerp_scalar_(
        tensors: *const *mut C_tensor,
        ends: *const *mut C_tensor,
        n: usize,
        weight: f64,
    ) -> *mut c_char;
    pub fn sam_torch_foreach_addcmul_scalar_(
        tensors: *const *mut C_tensor,
        tensor1: *const *mut C_tensor,
        tensor2: *const *mut C_tensor,
        n: usize,
        value: f64,
    ) -> *mut c_char;
    pub fn sam_torch_foreach_addcdiv_scalars_(
        tensors: *const *mut C_tensor,
        tensor1: *const *mut C_tensor,
        tensor2: *const *mut C_tensor,
        n: usize,
        values: *const f64,
    ) -> *mut c_char;

    pub fn sam_torch_set_allow_tf32(cublas: c_int, cudnn: c_int) -> *mut c_char;
    pub fn sam_torch_get_allow_tf32(cublas: *mut c_int, cudnn: *mut c_int) -> *mut c_char;

    pub fn sam_torch_tcp_store_new(
        host: *const c_char,
        port: c_int,
        world: c_int,
        is_master: c_int,
        timeout_ms: i64,
        out: *mut *mut RawStore,
    ) -> *mut c_char;
    pub fn sam_torch_store_free(store: *mut RawStore);
    pub fn sam_torch_store_set(
        store: *mut RawStore,
        key: *const c_char,
        data: *const u8,
        len: usize,
    ) -> *mut c_char;
    pub fn sam_torch_store_get(
        store: *mut RawStore,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut usize,
    ) -> *mut c_char;
    pub fn sam_torch_store_add(
        store: *mut RawStore,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
    ) -> *mut c_char;

    #[allow(clippy::too_many_arguments)]
    pub fn sam_torch_pg_gloo_new(
        store: *mut RawStore,
        prefix: *const c_char,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        iface: *const c_char,
        hostname: *const c_char,
        threads: c_int,
        out: *mut *mut RawGroup,
    ) -> *mut c_char;
    pub fn sam_torch_pg_nccl_new(
        store: *mut RawStore,
        prefix: *const c_char,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        out: *mut *mut RawGroup,
    ) -> *mut c_char;
    pub fn sam_torch_pg_free(group: *mut RawGroup);
    pub fn sam_torch_pg_allreduce(group: *mut RawGroup, t: *mut C_tensor, op: c_int)
        -> *mut c_char;
    pub fn sam_torch_pg_broadcast(
        group: *mut RawGroup,
        t: *mut C_tensor,
        root: c_int,
    ) -> *mut c_char;
    pub fn sam_torch_pg_allgather(
        group: *mut RawGroup,
        t: *const C_tensor,
        outs: *mut *mut C_tensor,
    ) -> *mut c_char;
    pub fn sam_torch_pg_barrier(group: *mut RawGroup) -> *mut c_char;

    pub fn sam_torch_reducer_new(
        group: *mut RawGroup,
        params: *const *mut C_tensor,
        n: usize,
        bucket_bytes: i64,
        wire_dtype: c_int,
        out: *mut *mut RawReducer,
    ) -> *mut c_char;
    pub fn sam_torch_reducer_free(reducer: *mut RawReducer);
    pub fn sam_torch_reducer_arm(reducer: *mut RawReducer, root: *const C_tensor) -> *mut c_char;
    pub fn sam_torch_reducer_finish(reducer: *mut RawReducer) -> *mut c_char;
    pub fn sam_torch_reducer_report(
        reducer: *mut RawReducer,
        points: *mut c_int,
        sizes: *mut i64,
        capacity: usize,
        count: *mut usize,
    ) -> *mut c_char;
}

/// Converts the status of a bridge call into a `Result`, freeing the message.
pub fn take(op: &'static str, status: *mut c_char) -> Result<(), Error> {
    if status.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null status is a NUL-terminated string malloc'ed by the bridge, owned by us.
    let message = unsafe { CStr::from_ptr(status) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed exactly once, with the allocator that made it.
    unsafe { sam_torch_free_string(status) };
    Err(Error::Torch { op, message })
}
