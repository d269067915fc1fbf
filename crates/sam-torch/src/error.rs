//! The error type of the bridge.
use tch::{Device, Kind};

/// An error from the C++ bridge or from checks made before calling it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libtorch raised a C++ exception; `message` is its text without the C++ backtrace.
    #[error("{op} failed: {message}")]
    Torch {
        /// The bridge operation, e.g. `"all_reduce"`.
        op: &'static str,
        /// The C++ exception's message.
        message: String,
    },
    /// The lists of one multi-tensor operation differ in length.
    #[error("{op}: a list of {got} tensors where the first list has {expected}")]
    ListLength {
        /// The operation, e.g. `"fused_adamw_"`.
        op: &'static str,
        /// The first list's length.
        expected: usize,
        /// The length of a list that differs.
        got: usize,
    },
    /// Autocast exists for CPU and CUDA only.
    #[error("autocast: device {device:?} is not supported (expected Cpu or Cuda)")]
    AutocastDevice {
        /// The device asked for.
        device: Device,
    },
    /// Autocast lowers precision to bf16 or f16 only.
    #[error("autocast: dtype {kind:?} is not supported (expected BFloat16 or Half)")]
    AutocastKind {
        /// The dtype asked for.
        kind: Kind,
    },
}
