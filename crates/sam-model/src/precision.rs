//! The precision of inference forward passes: fp32, or bf16 autocast with fp32 weights.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::error::ModelError;

/// How the forward passes of inference run.
///
/// The weights stay fp32 either way. [`Precision::Bf16`] runs the forward passes under bf16
/// autocast (Python's `torch.autocast(device_type, dtype=torch.bfloat16)`): matrix products and
/// convolutions in bf16, reductions and normalisations in fp32; what a forward pass hands on
/// (embeddings, mask logits, IoU predictions, decoder maps) is cast back to fp32 before any
/// resizing or thresholding.
///
/// ```
/// use sam_model::Precision;
/// let p: Precision = "bf16".parse()?;
/// assert_eq!(p, Precision::Bf16);
/// assert_eq!(p.to_string(), "bf16");
/// assert_eq!(p.autocast_kind(), Some(tch::Kind::BFloat16));
/// assert_eq!(Precision::default(), Precision::Fp32);
/// # Ok::<(), sam_model::ModelError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// fp32 throughout (TF32 matrix products on a GPU when `hardware.tf32` allows them).
    #[default]
    Fp32,
    /// bf16 autocast around the forward passes, fp32 weights and outputs.
    Bf16,
}

impl Precision {
    /// Every precision, in the order of the flag's help.
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Bf16];

    /// The name used by flags, logs and cache keys (`fp32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The kind the forward passes autocast to, if any.
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
        }
    }

    /// Runs `f` (a forward pass on `device`) in this precision: as is for fp32, under bf16
    /// autocast for `device`'s type for bf16. The caller casts what it keeps back to fp32.
    ///
    /// # Errors
    /// bf16 on a device without autocast (neither CPU nor CUDA).
    pub fn run<T>(self, device: Device, f: impl FnOnce() -> T) -> Result<T, ModelError> {
        match self.autocast_kind() {
            None => Ok(f()),
            Some(kind) => sam_torch::autocast(device, kind, f).map_err(|e| ModelError::Argument {
                argument: "precision",
                message: format!("{}: {e}", self.name()),
            }),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| ModelError::Argument {
                argument: "precision",
                message: format!("unknown precision `{s}`: expected fp32 or bf16"),
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        let err = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("unknown precision `fp16`"), "{err}");
    }

    #[test]
    fn bf16_runs_matrix_products_in_bf16_and_fp32_leaves_them() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let y = Precision::Bf16.run(Device::Cpu, || a.matmul(&a)).unwrap();
        assert_eq!(y.kind(), Kind::BFloat16);
        let y = Precision::Fp32.run(Device::Cpu, || a.matmul(&a)).unwrap();
        assert_eq!(y.kind(), Kind::Float);
        // Autocast ends with the call.
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }
}
