//! What the trainer's test binaries share: the tiny CPU config, a repository with synthetic
//! images, one run, and the checkpoint reads the tests compare.
// Each test binary uses part of this.
#![allow(dead_code)]

use std::path::Path;

use sam_config::{ExperimentConfig, RunPaths};
use sam_testkit::ConfigBuilder;
use sam_train::{
    prepare_run, train, CheckpointStore, NoProgress, Slot, StopFlag, TrainError, TrainOptions,
    TrainOutcome,
};
use tch::Tensor;

/// A fresh repository-like temp dir with `n` synthetic training and 2 validation images.
macro_rules! setup {
    ($n:expr) => {{
        let repo = sam_testkit::TempRepo::new().unwrap();
        sam_testkit::SynthDataset::new(repo.join("data"))
            .split("train", $n, 96, 1)
            .split("val", 2, 96, 100)
            .write()
            .unwrap();
        repo
    }};
}

/// The tiny CPU run `t` (seed 3, checkpoint `ck`), with or without the UNETR decoder, changed
/// by `edit`, as the trainer gets it.
pub fn config(
    decoder: bool,
    edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> ExperimentConfig {
    let config = ConfigBuilder::named("t")
        .tiny_cpu_training()
        .checkpoint_name("ck")
        .seed(3)
        .with_decoder(decoder);
    match edit(config).parse() {
        Ok(config) => config,
        Err(e) => panic!("test config invalid:\n{e}"),
    }
}

pub fn opts(root: &Path, resume: bool, limit: Option<u64>) -> TrainOptions<'static> {
    TrainOptions {
        root: root.to_path_buf(),
        resume,
        overwrite: false,
        stop: StopFlag::new(),
        progress: &NoProgress,
        collective: None,
        max_iterations_this_run: limit,
    }
}

pub fn run(
    cfg: &ExperimentConfig,
    root: &Path,
    resume: bool,
    limit: Option<u64>,
) -> Result<TrainOutcome, TrainError> {
    let paths = prepare_run(cfg, root, resume, false)?.paths;
    train(cfg, &paths, &opts(root, resume, limit))
}

/// The model `cfg` builds with the random weights of `seed`, drawn under sam_model's generator
/// lock: the trainers other tests of the binary run in parallel cannot draw in between, nor
/// this draw land inside theirs.
pub fn seeded_model(seed: i64, cfg: &ExperimentConfig) -> sam_model::SamModel {
    sam_model::seeded(seed, || sam_train::new_model(&cfg.model, tch::Device::Cpu)).unwrap()
}

pub fn latest_model(root: &Path, cfg: &ExperimentConfig) -> Vec<(String, Tensor)> {
    let paths = RunPaths::new(root, cfg);
    let mut m = CheckpointStore::new(paths.checkpoint_dir)
        .load(Slot::Latest)
        .unwrap()
        .model;
    m.sort_by(|a, b| a.0.cmp(&b.0));
    m
}

pub fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}
