//! Typed, validated experiment configuration for sam_trainer.
//!
//! One YAML file per experiment describes everything a run needs: data, augmentation, model,
//! training, distributed set-up, hardware, SLURM resources, evaluation and inference. This
//! crate owns that format:
//!
//! - [`ExperimentConfig`] and its section structs are the typed config (serde with
//!   `deny_unknown_fields`; defaults where they make sense).
//! - [`load_config`] is the one function that parses config YAML. It reports **every**
//!   problem at once, each as `file:line:column: dotted.key: message (did you mean ...)`:
//!   YAML syntax, unknown keys, wrong types and missing keys (checked with the `jsonschema`
//!   crate against [`json_schema`], the same schema editors use), then the semantic rules of
//!   [`ExperimentConfig::validate`] (ranges, consistency, accelerator presets, cluster limits,
//!   data folders, a wall-time estimate).
//! - [`RunPaths`] resolves the run folder, checkpoint folder, logs and export path against
//!   the repository root.
//!
//! The crate does not link libtorch; the model and training crates map its values onto their
//! own config structs.
//!
//! # Example
//!
//! ```
//! use sam_config::{parse_config, RunPaths, ValidateOptions};
//!
//! let yaml = "
//! experiment_name: demo
//! output_base_dir: runs
//! checkpoint_name: demo_ckpt
//! export_path: final_models/demo.pt
//! training:
//!   lr: 2.0e-5
//! ";
//! let loaded = parse_config(yaml, None, &ValidateOptions::without_path_checks()).unwrap();
//! assert_eq!(loaded.config.training.lr, 2.0e-5);
//! assert_eq!(loaded.config.training.n_sub_iteration, 8); // a default
//!
//! let paths = RunPaths::new("/repo", &loaded.config);
//! assert_eq!(paths.checkpoint_dir, std::path::Path::new("/repo/runs/demo/checkpoints/demo_ckpt"));
//!
//! // Every problem is reported, each with its line and key.
//! let bad = "experiment_name: demo\noutput_base_dir: runs\ncheckpoint_name: c\n\
//!            export_path: final_models/demo.pt\ntraining:\n  batch_sise: 2\n  lr: fast\n";
//! let err = parse_config(bad, None, &ValidateOptions::without_path_checks()).unwrap_err();
//! let text = err.to_string();
//! assert!(text.contains("<config>:6:3: training.batch_sise: unknown key"));
//! assert!(text.contains("(did you mean `batch_size`?)"));
//! assert!(text.contains("<config>:7:7: training.lr: expected a number"));
//! ```
#![deny(missing_docs)]

mod cluster;
mod diagnostics;
mod estimate;
mod evaluation;
mod experiment;
mod load;
mod model;
mod paths;
mod positions;
mod schema;
#[cfg(test)]
mod test_support;
mod training;
mod validate;

pub use crate::{
    cluster::{
        parse_slurm_memory_gb, parse_slurm_time, Accelerator, AcceleratorPreset, Backend,
        DistributedConfig, GradientAllreduceDtype, HardwareConfig, SlurmConfig, MAX_GPUS_PER_NODE,
        MAX_MEMORY_GB, MAX_NODES, MAX_WALL_TIME_SECONDS,
    },
    diagnostics::{ConfigError, Diagnostic, Problem, Severity},
    estimate::{
        parameter_counts, MemoryEstimate, MemoryKind, WallTimeEstimate, ASSUMED_RAW_IMAGES,
        ATTENTION_CHUNK_ENTRIES,
    },
    evaluation::{
        AisConfig, AmgConfig, ApgConfig, EvaluationConfig, GridRange, GridSearchConfig,
        InferenceConfig, InferenceMode, IterativePromptingConfig, PromptStart,
    },
    experiment::{
        AugmentationConfig, AugmentationOps, DataConfig, ElasticOp, ExperimentConfig,
        NormalizationConfig, ProbabilityOp, RangeOp, ValidationSource, ValidationSplit,
    },
    load::{load_config, load_config_with, parse_config, Loaded},
    model::{
        AllBlocks, Architecture, ArchitectureOverride, Backbone, CheckpointSource, EncoderInput,
        ModelConfig, PeftBlocks, PeftConfig, PeftMethod,
    },
    paths::{find_root, find_root_for, find_root_from, is_repository_root, RunPaths, ROOT_ENV_VAR},
    schema::json_schema,
    training::{
        ActivationCheckpointing, Device, Precision, SchedulerConfig, SchedulerKind, TrainingConfig,
    },
    validate::{Report, ValidateOptions, FREEZE_ROOTS},
};
