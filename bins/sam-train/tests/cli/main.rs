//! Integration tests of the `sam-train` executable, one test binary (libtorch is linked once):
//! distributed training, kills and resumes, refusals ([`dist`]) and the SLURM submit script,
//! the stop marker and the thread budget ([`submit`]), and the rehearsal of
//! `scripts/gpu_check.sh` ([`gpu_check`]), and `sam-train fit` with the memory estimate of
//! `validate` ([`fit`]).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use sam_testkit::{ConfigBuilder, SynthDataset, TempRepo};

mod dist;
mod fit;
mod gpu_check;
mod submit;

/// The executable under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sam-train");

/// A repository-like temp folder: 3 training images (`data/train`, seeds 1..) and 2 validation
/// images (`data/val`, seeds 100..) of 96 px, and `config` written to `<name>.yaml`. Returns the
/// folder and the config path.
pub(crate) fn repo_with_config(name: &str, config: &ConfigBuilder) -> (TempRepo, PathBuf) {
    let repo = TempRepo::new().unwrap();
    SynthDataset::new(repo.join("data"))
        .split("train", 3, 96, 1)
        .split("val", 2, 96, 100)
        .write()
        .unwrap();
    let config = repo.write_config(format!("{name}.yaml"), config).unwrap();
    (repo, config)
}
