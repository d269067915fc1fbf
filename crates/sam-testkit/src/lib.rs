//! Test fixtures for sam_trainer.
//!
//! Tests of the libraries and executables need the same few things on disk: a small synthetic
//! dataset, a tiny random-weight checkpoint, an experiment config and a repository root to put
//! them in. This crate builds each of them from the parameters a test varies:
//!
//! - [`SynthDataset`]: images and labels from [`sam_data::synthesize`] in
//!   `<root>/<split>/{images,labels}`, sizes and seeds chosen by the caller.
//! - [`ConfigBuilder`]: experiment config YAML from the minimal valid config, with typed
//!   setters, [`ConfigBuilder::set`] for any dotted key and the
//!   [`ConfigBuilder::tiny_cpu_training`] preset.
//! - [`TempRepo`]: a temporary repository root, removed on drop.
//! - [`venv_python`]: the repository's Python environment, for reference fixtures.
//! - [`script_fixtures`]: a folder of reference fixtures a Python script writes, kept until
//!   the script (or a [shared module](shared_python_modules) of the scripts) changes.
//!
//! The kit does not link libtorch. Tiny random-weight checkpoints are written by
//! `sam_testkit_model::TinyCheckpoint`, a crate of its own: Cargo unifies a dependency's
//! features over a whole workspace build, so a `model` feature here would link libtorch into
//! the tests of sam-config and sam-augment as soon as any torch crate's tests asked for it.
//!
//! The kit is a dev-dependency only. It depends on sam-config and sam-data, so their
//! integration tests may use it but their unit tests may not (they would see two copies of
//! the crate's types).
//!
//! # Example
//!
//! ```
//! use sam_testkit::{ConfigBuilder, SynthDataset, TempRepo};
//!
//! let repo = TempRepo::new()?;
//! let data = SynthDataset::new(repo.join("data"))
//!     .split("train", 2, 64, 1)
//!     .split("val", 1, 64, 100);
//! data.write()?;
//! assert!(data.images_dir("train").join("img1.tif").is_file());
//!
//! let config = ConfigBuilder::named("t").tiny_cpu_training().set("training.epochs", 2);
//! let path = repo.write_config("configs/t.yaml", &config)?;
//! assert!(path.is_file());
//! assert_eq!(config.parse().ok().and_then(|c| c.training.epochs), Some(2));
//! # Ok::<(), sam_testkit::Error>(())
//! ```
#![deny(missing_docs)]

mod config;
mod dataset;
mod error;
mod python;
mod repo;

pub use crate::{
    config::ConfigBuilder,
    dataset::{SynthDataset, SynthImage},
    error::Error,
    python::{script_fixtures, script_stamp, shared_python_modules, venv_python, workspace_root},
    repo::TempRepo,
};
