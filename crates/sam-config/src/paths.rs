//! Run paths, resolved against the repository root.

use std::path::{Path, PathBuf};

use crate::diagnostics::ConfigError;
use crate::experiment::ExperimentConfig;
use crate::model::{CheckpointSource, ModelConfig};

/// Environment variable naming the repository root explicitly.
pub const ROOT_ENV_VAR: &str = "SAM_TRAINER_ROOT";

/// Every path of a run, absolute, resolved against the repository root.
///
/// The root is, in this order: an explicit root; `$SAM_TRAINER_ROOT`; the nearest ancestor of
/// the working directory (itself included) that holds both a `configs/` and a `dat/` folder.
/// Relative config paths are joined to the root; absolute ones are kept.
///
/// ```text
/// <root>/<output_base_dir>/<experiment_name>/config.yaml
/// <root>/<output_base_dir>/<experiment_name>/checkpoints/<checkpoint_name>/
/// <root>/<output_base_dir>/<experiment_name>/logs/
/// <root>/<output_base_dir>/<experiment_name>/evaluation/
/// <root>/<export_path>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    /// The repository root.
    pub root: PathBuf,
    /// `<root>/<output_base_dir>/<experiment_name>/`.
    pub run_dir: PathBuf,
    /// The resolved config saved for the run: `<run_dir>/config.yaml`.
    pub config: PathBuf,
    /// `<run_dir>/checkpoints/<checkpoint_name>/` (holds `latest.*` and `best.*`).
    pub checkpoint_dir: PathBuf,
    /// `<run_dir>/logs/`.
    pub logs_dir: PathBuf,
    /// `<run_dir>/evaluation/`.
    pub evaluation_dir: PathBuf,
    /// `<root>/<export_path>`.
    pub export_path: PathBuf,
}

impl RunPaths {
    /// Resolve against an explicit repository root.
    pub fn new(root: impl Into<PathBuf>, config: &ExperimentConfig) -> Self {
        let root = root.into();
        let run_dir = join(&root, &config.output_base_dir).join(&config.experiment_name);
        Self {
            config: run_dir.join("config.yaml"),
            checkpoint_dir: run_dir.join("checkpoints").join(&config.checkpoint_name),
            logs_dir: run_dir.join("logs"),
            evaluation_dir: run_dir.join("evaluation"),
            export_path: join(&root, &config.export_path),
            run_dir,
            root,
        }
    }

    /// Resolve against the root found by [`find_root`] from the working directory.
    pub fn discover(config: &ExperimentConfig) -> Result<Self, ConfigError> {
        Ok(Self::new(find_root(None)?, config))
    }

    /// Resolve any config path (a data folder, a checkpoint file) against the root.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        join(&self.root, path)
    }

    /// `model.checkpoint` as the model loaders take it: a micro_sam model name as it is, a
    /// file path resolved against the root, `None` for random weights.
    pub fn model_checkpoint(&self, model: &ModelConfig) -> Option<String> {
        match model.checkpoint_source() {
            CheckpointSource::Random => None,
            CheckpointSource::ModelName(name) => Some(name),
            CheckpointSource::Path(p) => Some(self.resolve(&p).to_string_lossy().into_owned()),
        }
    }
}

fn join(root: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// True when `dir` looks like the repository root (holds `configs/` and `dat/`).
pub fn is_repository_root(dir: &Path) -> bool {
    dir.join("configs").is_dir() && dir.join("dat").is_dir()
}

/// Find the repository root: `explicit` if given, else `$SAM_TRAINER_ROOT`, else the nearest
/// ancestor of the working directory that holds both `configs/` and `dat/`.
pub fn find_root(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(ROOT_ENV_VAR).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let cwd = std::env::current_dir().map_err(|source| ConfigError::Io {
        path: PathBuf::from("."),
        source,
    })?;
    find_root_from(&cwd).ok_or(ConfigError::NoRoot { start: cwd })
}

/// Find the repository root for a command that reads the config file `config`: as
/// [`find_root`], then the nearest ancestor of the config file's folder that holds `configs/`
/// and `dat/` (so that `sam-train validate /repo/configs/x.yaml` works from any folder, and
/// every command finds the same root for the same config).
pub fn find_root_for(
    explicit: Option<&Path>,
    config: Option<&Path>,
) -> Result<PathBuf, ConfigError> {
    let first = find_root(explicit);
    if first.is_ok() {
        return first;
    }
    config
        .and_then(|c| std::fs::canonicalize(c).ok())
        .and_then(|c| find_root_from(c.parent()?))
        .map_or(first, Ok)
}

/// The nearest ancestor of `start` (itself included) that holds `configs/` and `dat/`.
pub fn find_root_from(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| is_repository_root(d))
        .map(Path::to_path_buf)
}
