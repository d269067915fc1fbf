//! sam-cli-torch: the part of the executables' plumbing that links libtorch, beside
//! [`sam_cli`] (exit codes, config rules for flags, progress bars, allocator setup), whose
//! [`CliError`](sam_cli::CliError) it returns.
//!
//! - [`select_device`] / [`parse_device`]: `--device` (`auto`, `cpu`, `cuda`, `cuda:N`), one
//!   parser for every executable; a GPU that cannot be had is a usage error that says why.
//!   [`parse_precision`] / [`device_line`]: `--precision` (`fp32`, `bf16`) and the line that
//!   prints both.
//! - [`resolve_checkpoint`]: `--checkpoint NAME`, one rule for every executable: a file, a file
//!   under the repository root, a name under `final_models/`, a micro_sam model in the cache.
//! - [`auto_options`], [`normalization`], [`shrunk_images`]: the config's `inference` and
//!   `data.normalization` sections as sam-infer's options, after the config's own rules.
//! - With the `eval` feature (default): [`model_eval_options`], [`eval_checkpoint`],
//!   [`validation_images`] for `sam-eval model`; [`eval_baseline`] for its `--baseline` (by
//!   default the config's `model.checkpoint`, found by the same rule).
//!
//! It is a crate of its own because cargo builds a crate once per build, with the union of the
//! features its users ask for: were these helpers a feature of sam-cli, every executable of a
//! workspace build would link libtorch, sam-augment included.
//!
//! # Example
//! ```
//! let options = sam_cli_torch::auto_options(
//!     &sam_config::InferenceConfig::default(),
//!     &sam_config::NormalizationConfig::default(),
//! )?;
//! assert_eq!(options.amg.points_per_side, 32);
//! let device = sam_cli_torch::select_device("cpu")?;
//! assert_eq!(device.device, tch::Device::Cpu);
//! # Ok::<(), sam_cli::CliError>(())
//! ```
#![deny(missing_docs)]

#[cfg(feature = "eval")]
mod baseline;
mod checkpoint;
mod device;
#[cfg(feature = "eval")]
mod eval;
mod infer;

#[cfg(feature = "eval")]
pub use crate::baseline::{eval_baseline, BaselineChoice, BaselineOrigin};
pub use crate::checkpoint::resolve_checkpoint;
pub use crate::device::{apply_tf32, device_line, parse_device, parse_precision, select_device};
#[cfg(feature = "eval")]
pub use crate::eval::{
    eval_checkpoint, grid_values, iterative_options, model_eval_options, validation_images,
    ModelEvalFlags, OBJECTS_PER_BATCH,
};
pub use crate::infer::{
    auto_mode, auto_options, normalization, shrunk_images, tiles_for_model, ShrunkImage,
};

#[cfg(test)]
pub(crate) mod tests {
    /// The smallest valid experiment config (`experiment_name: exp`, checkpoint `c`, seed 42),
    /// from the test kit.
    #[allow(clippy::unwrap_used)]
    pub(crate) fn minimal_config() -> sam_config::ExperimentConfig {
        sam_testkit::ConfigBuilder::new()
            .checkpoint_name("c")
            .parse()
            .unwrap()
    }
}
