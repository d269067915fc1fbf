//! sam-cli: the command-line plumbing that the sam_trainer executables share, so that each
//! `main.rs` is its clap definitions and calls.
//!
//! - [`Failure`] and [`exit`]: one error type with its exit status (0 ok, [`EXIT_FAILURE`] 1,
//!   [`EXIT_USAGE`] 2 for usage and config errors), printed with its cause chain.
//! - [`CliError`]: what stops a command before it runs; [`check_rules`] turns the config's
//!   rules (`sam_config`) into it, [`CliError::name_flags`] names each problem by its flag
//!   ([`flag_of`]), so that flags and config keys share one rule set.
//! - [`progress_bar`]: one look for every progress bar.
//! - [`memory`]: the process's allocator (jemalloc linked in with [`use_linked_jemalloc!`], or
//!   glibc) and [`memory::retain_freed_memory`], which every executable calls first in `main`.
//! - [`augment_job`] / [`augment_config`]: the config's `augmentation` section as sam-data's
//!   job.
//! - With the `infer` feature (links libtorch): [`select_device`] for `--device`,
//!   [`resolve_checkpoint`] for `--checkpoint NAME` (one rule, against the repository root),
//!   [`auto_options`] for the config's `inference` and `data.normalization` sections.
//! - With the `eval` feature: [`model_eval_options`] for `sam-eval model`.
//!
//! Unlike the other libraries of the workspace this one prints: progress bars and
//! [`Failure::report`] are what it is for. It never exits.
//!
//! # Example
//! ```
//! use std::process::ExitCode;
//!
//! fn run(copies: u32, originals: bool) -> Result<(), sam_cli::Failure> {
//!     let mut section = sam_config::AugmentationConfig::default();
//!     section.copies_per_image = copies;
//!     section.include_original = originals;
//!     sam_cli::check_rules(section.validate())?; // a usage error when a rule is broken
//!     Ok(())
//! }
//!
//! assert_eq!(sam_cli::exit(run(4, true)), ExitCode::SUCCESS);
//! // Nothing to write: no copies and no originals.
//! let failure = run(0, false).unwrap_err();
//! assert_eq!(failure.code(), sam_cli::EXIT_USAGE);
//! ```
#![deny(missing_docs)]

mod augment;
#[cfg(feature = "infer")]
mod checkpoint;
#[cfg(feature = "infer")]
mod device;
mod error;
#[cfg(feature = "eval")]
mod eval;
mod failure;
#[cfg(feature = "infer")]
mod infer;
pub mod memory;
mod progress;

pub use crate::augment::{augment_config, augment_job};
#[cfg(feature = "infer")]
pub use crate::checkpoint::resolve_checkpoint;
#[cfg(feature = "infer")]
pub use crate::device::{parse_device, select_device};
pub use crate::error::{check_rules, flag_of, CliError};
#[cfg(feature = "eval")]
pub use crate::eval::{
    eval_checkpoint, grid_values, iterative_options, model_eval_options, validation_images,
    ModelEvalFlags, OBJECTS_PER_BATCH,
};
pub use crate::failure::{exit, exit_with_prefix, Failure, EXIT_FAILURE, EXIT_USAGE};
#[cfg(feature = "infer")]
pub use crate::infer::{auto_mode, auto_options, normalization, shrunk_images, ShrunkImage};
pub use crate::progress::{bar_style, progress_bar};

#[cfg(test)]
pub(crate) mod tests {
    /// The smallest valid experiment config (`experiment_name: exp`, seed 42).
    #[allow(clippy::unwrap_used)]
    pub(crate) fn minimal_config() -> sam_config::ExperimentConfig {
        sam_config::parse_config(
            "experiment_name: exp\noutput_base_dir: runs\ncheckpoint_name: c\n\
             export_path: final_models/exp.pt\n",
            None,
            &sam_config::ValidateOptions::without_path_checks(),
        )
        .unwrap()
        .config
    }
}
