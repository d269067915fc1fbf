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
//! - [`check_options`], [`CostEstimate`] and [`CheckReport`]: `sam-augment check`, sam-data's
//!   dataset check with a config's settings and its cost estimate, for the console and JSON.
//!
//! The crate links no torch, so that sam-augment (and `sam-eval` built for labels only) stay
//! free of libtorch: what needs it (`--device`, `--checkpoint NAME`, the options of sam-infer
//! and sam-eval) is in `sam-cli-torch`, which reports through [`CliError`] and [`Failure`] too.
//! (Cargo builds a crate once per build with the union of the features its users ask for, so a
//! torch feature here would link libtorch into every executable of a workspace build.)
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
mod check;
mod error;
mod failure;
pub mod memory;
mod progress;

pub use crate::augment::{augment_config, augment_job};
pub use crate::check::{
    check_options, config_folders, kind_name, CheckReport, CheckedSet, CostEstimate,
};
pub use crate::error::{check_rules, flag_of, BoxedError, CliError};
pub use crate::failure::{exit, exit_with_prefix, Failure, EXIT_FAILURE, EXIT_USAGE};
pub use crate::progress::{bar_style, progress_bar};

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
