//! Helpers for unit tests.

use std::path::PathBuf;

use crate::experiment::ExperimentConfig;
use crate::model::ModelConfig;

/// A valid config with every section at its default.
pub(crate) fn minimal() -> ExperimentConfig {
    ExperimentConfig {
        experiment_name: "exp".into(),
        output_base_dir: PathBuf::from("runs"),
        checkpoint_name: "ckpt".into(),
        export_path: PathBuf::from("final_models/exp.pt"),
        seed: 42,
        data: Default::default(),
        augmentation: Default::default(),
        model: ModelConfig::default(),
        training: Default::default(),
        distributed: Default::default(),
        hardware: Default::default(),
        slurm: Default::default(),
        evaluation: Default::default(),
        inference: Default::default(),
    }
}
