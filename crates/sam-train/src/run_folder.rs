//! The run folder `runs/<experiment>/`: created, recognised as a run, continued or cleared
//! ([`prepare_run`]), never a folder this tool did not create.

use std::fs;
use std::path::Path;

use sam_config::{ExperimentConfig, RunPaths};

use crate::checkpoint::{CheckpointStore, Slot};
use crate::TrainError;

/// The file that marks a folder as a run of this tool, written into the run folder when the
/// run is created. `--overwrite` deletes only folders that hold it (or, for runs made before
/// it existed, that have exactly a run's layout, see [`prepare_run`]).
pub const RUN_MARKER: &str = ".sam-train-run";

/// Files the trainer and the SLURM batch script leave at the top of a run folder besides
/// `config.yaml`, `checkpoints/` and `logs/`: the stop marker (bins/sam-train) and its
/// temporary file.
const RUN_TOP_LEVEL_FILES: [&str; 3] = [
    RUN_MARKER,
    "stopped_for_requeue",
    ".stopped_for_requeue.tmp",
];

/// The folder `sam-eval model` writes into a run folder (`RunPaths::evaluation_dir`).
const EVALUATION_DIR: &str = "evaluation";

/// A run folder made ready by [`prepare_run`].
#[derive(Debug, Clone)]
pub struct PreparedRun {
    /// Its paths.
    pub paths: RunPaths,
    /// What was done to it besides creating it, for the log (a symbolic link removed, an
    /// earlier version's run recognised).
    pub notes: Vec<String>,
}

/// What a run folder path holds.
#[derive(Debug, Clone, PartialEq)]
enum RunDir {
    /// Nothing, or a folder that holds only SLURM output files in `logs/`.
    Unused,
    /// A run of this tool: with the marker, or with the exact layout of a run made before the
    /// marker existed (`marked: false`).
    Ours { marked: bool },
    /// Something else; the reason it is not a run.
    Foreign(String),
}

/// Checks the run folder against `resume`/`overwrite` and creates it, with the [`RUN_MARKER`]
/// file. Nothing is touched when the run is refused.
///
/// - A folder that does not exist, or holds only SLURM output files (`logs/slurm-*`, written by
///   the submission script before the job starts) and an `evaluation/` folder (`sam-eval
///   model` before any training), is unused: every mode starts there and keeps those.
/// - A run folder of this tool is one holding [`RUN_MARKER`], or, made by a version before the
///   marker, one holding exactly `config.yaml` (naming this experiment), `checkpoints/`,
///   `logs/` and possibly `evaluation/` and the stop marker, none of them a symbolic link;
///   such a folder gets the marker when it is resumed or overwritten. Without a flag it is refused; `resume`
///   continues it (from the beginning, in the same folder, when it has no checkpoint yet);
///   `overwrite` deletes its contents except SLURM output files being written.
/// - Any other folder or file is refused in every mode, named, with the fix.
/// - Deleting never follows a symbolic link: a link inside the run folder is removed as a
///   link, and a run folder that is itself a link is, with `overwrite`, replaced by a new
///   folder, its target untouched (a link to an unused folder is simply used).
pub fn prepare_run(
    cfg: &ExperimentConfig,
    root: &Path,
    resume: bool,
    overwrite: bool,
) -> Result<PreparedRun, TrainError> {
    let paths = RunPaths::new(root, cfg);
    if resume && overwrite {
        return Err(TrainError::Usage(
            "--resume and --overwrite exclude each other".into(),
        ));
    }
    let dir = &paths.run_dir;
    let io = |p: &Path, e: std::io::Error| TrainError::io(p, e);
    let link_target = match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Some(fs::read_link(dir).map_err(|e| io(dir, e))?),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(dir, e)),
    };
    let kind = classify_run_dir(dir, cfg);
    let mut notes = Vec::new();
    let has_checkpoint = || CheckpointStore::new(&paths.checkpoint_dir).exists(Slot::Latest);
    match (&kind, &link_target) {
        (RunDir::Unused, _) => {}
        // Never through a link: the link goes, whatever it points to stays.
        (_, Some(target)) if overwrite => {
            fs::remove_file(dir).map_err(|e| io(dir, e))?;
            notes.push(format!(
                "--overwrite: {} was a symbolic link to {}: removed the link (nothing in {} was \
                 touched) and started a new run folder in its place",
                dir.display(),
                target.display(),
                target.display()
            ));
        }
        (RunDir::Foreign(reason), _) => {
            return Err(TrainError::NotARunFolder {
                dir: dir.clone(),
                reason: reason.clone(),
            })
        }
        (RunDir::Ours { .. }, _) if !resume && !overwrite => {
            return Err(if has_checkpoint() {
                TrainError::RunExists(dir.clone())
            } else {
                TrainError::RunWithoutCheckpoint(dir.clone())
            });
        }
        (RunDir::Ours { marked }, _) => {
            if !marked {
                notes.push(format!(
                    "{} is a run folder of an earlier sam-train (config.yaml, checkpoints/, logs/, \
                     no {RUN_MARKER}): recognised as a run and marked",
                    dir.display()
                ));
            }
            if overwrite {
                clear_run_dir(dir)?;
            }
        }
    }
    for d in [&paths.run_dir, &paths.checkpoint_dir, &paths.logs_dir] {
        fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    let marker = paths.run_dir.join(RUN_MARKER);
    if !marker.is_file() {
        let text = format!(
            "sam-train run folder of experiment `{}` (sam-train {}).\n\
             `sam-train train --overwrite` deletes only folders that hold this file: do not \
             copy it into other folders.\n",
            cfg.experiment_name,
            env!("CARGO_PKG_VERSION")
        );
        fs::write(&marker, text).map_err(|e| io(&marker, e))?;
    }
    Ok(PreparedRun { paths, notes })
}

/// SLURM's own output files (`logs/slurm-<job>.out`): the submission script creates them before
/// the trainer starts, and they are the job's, not the run's.
fn is_slurm_log(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("slurm-"))
}

/// The entries of a folder with their types (links not followed); empty when unreadable.
fn entries(dir: &Path) -> Vec<(String, fs::FileType)> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().into_owned(),
                e.file_type().ok()?,
            ))
        })
        .collect()
}

/// What `dir` holds (a link to a folder is judged by the folder).
fn classify_run_dir(dir: &Path, cfg: &ExperimentConfig) -> RunDir {
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if fs::symlink_metadata(dir).is_ok() {
                RunDir::Foreign("it is a symbolic link to nothing".into())
            } else {
                RunDir::Unused
            };
        }
        Err(e) => return RunDir::Foreign(format!("it cannot be read: {e}")),
    };
    if !meta.is_dir() {
        return RunDir::Foreign("it is a file, not a folder".into());
    }
    let top = entries(dir);
    let is = |name: &str, dir_wanted: bool| {
        top.iter()
            .any(|(n, t)| n == name && if dir_wanted { t.is_dir() } else { t.is_file() })
    };
    let logs_only_slurm = || {
        entries(&dir.join("logs"))
            .iter()
            .all(|(n, t)| t.is_file() && is_slurm_log(Path::new(n)))
    };
    // SLURM output files, and an evaluation (sam-eval model) done before any training.
    let before_training = top
        .iter()
        .all(|(n, t)| t.is_dir() && (n == EVALUATION_DIR || (n == "logs" && logs_only_slurm())));
    if before_training {
        return RunDir::Unused;
    }
    if is(RUN_MARKER, false) {
        return RunDir::Ours { marked: true };
    }
    // A run of a version before the marker: exactly what prepare_run and train wrote.
    let layout = is("config.yaml", false)
        && is("checkpoints", true)
        && is("logs", true)
        && top.iter().all(|(n, t)| {
            matches!(n.as_str(), "config.yaml" | "checkpoints" | "logs")
                || (t.is_dir() && n == EVALUATION_DIR)
                || (t.is_file() && RUN_TOP_LEVEL_FILES.contains(&n.as_str()))
        });
    let names_experiment = || {
        fs::read_to_string(dir.join("config.yaml")).is_ok_and(|text| {
            text.lines().any(|l| {
                l.strip_prefix("experiment_name:")
                    .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"'))
                    == Some(cfg.experiment_name.as_str())
            })
        })
    };
    if layout && names_experiment() {
        return RunDir::Ours { marked: false };
    }
    RunDir::Foreign(format!(
        "it holds other files and no {RUN_MARKER} file, which sam-train writes into every run \
         folder it creates"
    ))
}

/// Deletes everything of a run (`--overwrite`) except SLURM output files being written. Links
/// are removed as links: nothing outside the run folder is ever deleted.
fn clear_run_dir(run_dir: &Path) -> Result<(), TrainError> {
    let io = |p: &Path, e: std::io::Error| TrainError::io(p, e);
    let remove = |p: &Path, t: fs::FileType| {
        // remove_dir_all does not follow links inside the folder; a link is a file to remove.
        if t.is_dir() {
            fs::remove_dir_all(p)
        } else {
            fs::remove_file(p)
        }
        .map_err(|e| io(p, e))
    };
    for entry in fs::read_dir(run_dir).map_err(|e| io(run_dir, e))? {
        let entry = entry.map_err(|e| io(run_dir, e))?;
        let p = entry.path();
        let t = entry.file_type().map_err(|e| io(&p, e))?;
        if p.file_name().is_some_and(|n| n == "logs") && t.is_dir() {
            for log in fs::read_dir(&p).map_err(|e| io(&p, e))? {
                let log = log.map_err(|e| io(&p, e))?;
                let l = log.path();
                let lt = log.file_type().map_err(|e| io(&l, e))?;
                if lt.is_file() && is_slurm_log(&l) {
                    continue;
                }
                remove(&l, lt)?;
            }
        } else {
            remove(&p, t)?;
        }
    }
    Ok(())
}
