//! Test fixtures of sam_trainer that need libtorch.
//!
//! [`TinyCheckpoint`] writes the checkpoint of a random-weight `SamConfig::tiny()` model (with
//! or without micro_sam's UNETR decoder), for tests of the code that loads, segments with or
//! evaluates a checkpoint. The torch-free fixtures (datasets, configs, repository roots) are in
//! `sam-testkit`; this crate is separate so that tests which need none of libtorch do not link
//! it (Cargo unifies a dependency's features over a whole workspace build, so a feature would
//! not keep it out).
//!
//! # Example
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("tiny_ais.pt");
//! sam_testkit_model::TinyCheckpoint::new().with_decoder(true).write(&path)?;
//! assert!(path.is_file());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod checkpoint;

pub use crate::checkpoint::{Error, NamedTensors, TinyCheckpoint};
