//! The training run: run folder, data, model, the epoch loop with validation, checkpoints,
//! resume, stop requests and the final export.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sam_config::{ExperimentConfig, Precision, RunPaths, SchedulerKind};
use sam_data::{
    derive_seed, pair_by_stem, split_by_image, Dataset, Normalization, PatchConfig, Prefetcher,
    SampleConfig, TrainingSample,
};
use tch::Kind;

use crate::checkpoint::{CheckpointStore, EpochSums, ScalerState, Slot, TrainState};
use crate::distributed::Collective;
use crate::optim::{AdamW, AdamWConfig};
use crate::report::{EpochRecord, MetricsLog};
use crate::schedule::{checkpoint_decision, EarlyStopping, LrScheduler, ScheduleKind};
use crate::setup::{device_for, Model};
use crate::signals::StopFlag;
use crate::step::{step_backward, RecipeConfig, StepPrecision};
use crate::validation::{validation_totals, ValidationScores, ValidationTotals};
use crate::{export_model, ExportOptions, TrainError};

/// Exit status of a run stopped by SIGTERM/SIGUSR1 after checkpointing: the SLURM script
/// requeues the job on it (`RequeueExit`).
pub const REQUEUE_EXIT_CODE: i32 = 42;

/// Receives progress; the command-line shell draws a progress bar from it.
pub trait TrainProgress {
    /// Training starts (or resumes) at `done` of `total` iterations.
    fn start(&self, _total: u64, _done: u64) {}
    /// An iteration finished.
    fn step(&self, _iteration: u64, _loss: f64, _lr: f64) {}
    /// A line for the console and the log (already sent to `tracing`).
    fn message(&self, _line: &str) {}
    /// Training ended.
    fn finish(&self) {}
}

/// A progress sink that ignores everything.
#[derive(Debug, Default)]
pub struct NoProgress;
impl TrainProgress for NoProgress {}

/// How to run.
pub struct TrainOptions<'a> {
    /// Repository root all config paths are relative to.
    pub root: PathBuf,
    /// Continue from the run's `latest` checkpoint.
    pub resume: bool,
    /// Delete an existing run folder first.
    pub overwrite: bool,
    /// Raised by SIGTERM/SIGUSR1.
    pub stop: StopFlag,
    /// Progress sink.
    pub progress: &'a dyn TrainProgress,
    /// The process group of a distributed run (`None`: one process).
    pub collective: Option<&'a Collective>,
    /// Stop after this many iterations in this process (tests simulate a kill with it).
    pub max_iterations_this_run: Option<u64>,
}

impl std::fmt::Debug for TrainOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("root", &self.root)
            .field("resume", &self.resume)
            .finish()
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainOutcome {
    /// All epochs done (or early-stopped); the best model was exported.
    Finished(TrainSummary),
    /// A stop was requested; `latest` holds the state to resume from.
    Interrupted(TrainSummary),
}

/// Numbers at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Completed epochs.
    pub epochs: u64,
    /// Completed iterations.
    pub iterations: u64,
    /// Best validation mSA.
    pub best_msa: Option<f64>,
    /// Validation scores of the last epoch.
    pub last_validation: Option<ValidationScores>,
    /// Where the model was exported.
    pub export_path: Option<PathBuf>,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Early stopping ended the run.
    pub early_stopped: bool,
    /// Wall-clock seconds of this process's training.
    pub seconds: f64,
    /// Where this process's training steps spent their time.
    pub timing: StepTiming,
}

/// Time spent in the training steps of one process (validation and checkpoints excluded).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTiming {
    /// Steps this process ran.
    pub iterations: u64,
    /// Seconds from asking for a step's batch to the end of its optimiser update.
    pub step_seconds: f64,
    /// Of those, the seconds spent waiting for the sample pipeline.
    pub data_wait_seconds: f64,
}

impl StepTiming {
    /// Mean seconds per training step (0 before the first).
    pub fn seconds_per_iteration(&self) -> f64 {
        if self.iterations == 0 {
            0.0
        } else {
            self.step_seconds / self.iterations as f64
        }
    }

    /// Share of the step time spent waiting for data, 0..1 (0 before the first step).
    pub fn data_wait_share(&self) -> f64 {
        if self.step_seconds > 0.0 {
            self.data_wait_seconds / self.step_seconds
        } else {
            0.0
        }
    }
}

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
    let io = |p: &Path, e: std::io::Error| TrainError::Io(format!("{}: {e}", p.display()));
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
    let io = |p: &Path, e: std::io::Error| TrainError::Io(format!("{}: {e}", p.display()));
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

fn sample_config(cfg: &ExperimentConfig) -> SampleConfig {
    let d = &cfg.data;
    SampleConfig {
        patch: PatchConfig {
            height: d.patch_shape[0] as usize,
            width: d.patch_shape[1] as usize,
            min_objects: d.min_objects_per_patch.max(1) as usize,
            min_object_size: d.min_object_size as usize,
            ..PatchConfig::default()
        },
        normalization: Normalization {
            lower_percentile: d.normalization.lower_percentile,
            upper_percentile: d.normalization.upper_percentile,
        },
        min_object_size: d.min_object_size as usize,
        with_targets: cfg.model.with_segmentation_decoder,
    }
}

/// Opens the training and validation images (headers only: nothing is loaded). Without a
/// validation folder the split is by file, from the sorted file list and the seed.
fn open_data(cfg: &ExperimentConfig, root: &Path) -> Result<(Dataset, Dataset), TrainError> {
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        }
    };
    let data_err = |e: sam_data::DataError| TrainError::Data(e.to_string());
    let d = &cfg.data;
    let pairs = pair_by_stem(resolve(&d.train_images_dir), resolve(&d.train_labels_dir))
        .map_err(data_err)?;
    match (&d.validation.images_dir, &d.validation.labels_dir) {
        (Some(vi), Some(vl)) => {
            let vpairs = pair_by_stem(resolve(vi), resolve(vl)).map_err(data_err)?;
            Ok((
                Dataset::open(&pairs).map_err(data_err)?,
                Dataset::open(&vpairs).map_err(data_err)?,
            ))
        }
        _ => {
            let fraction = d.validation.fraction.unwrap_or(0.1);
            let (train, val) = split_by_image(pairs.len(), fraction, cfg.seed).map_err(data_err)?;
            let pick = |idx: &[usize]| idx.iter().map(|&i| pairs[i].clone()).collect::<Vec<_>>();
            Ok((
                Dataset::open(&pick(&train)).map_err(data_err)?,
                Dataset::open(&pick(&val)).map_err(data_err)?,
            ))
        }
    }
}

/// Reads every image once, before training, to check that it decodes and to cache its
/// normalisation bounds. Each rank reads its share (image `i` on rank `i % world`) and the
/// bounds are then shared, so a job of 8 ranks reads the dataset once, not 8 times.
fn prepare_bounds(
    data: &Dataset,
    norm: &Normalization,
    collective: Option<&Collective>,
) -> Result<(), TrainError> {
    let (rank, world) = collective.map_or((0, 1), |c| (c.rank(), c.world_size()));
    let mine = data.compute_bounds(norm, |i| i % world == rank);
    let Some(c) = collective else {
        return mine.map_err(|e| TrainError::Data(e.to_string()));
    };
    // Every rank takes part in the exchange even when its share failed, so that the others
    // get the failure instead of waiting; the error is then reported by every rank.
    let failed = mine.as_ref().err().map(|e| e.to_string());
    if c.any(failed.is_some())? {
        return Err(TrainError::Data(failed.unwrap_or_else(|| {
            "another rank could not read its share of the images (see its log)".into()
        })));
    }
    // f32 bounds are exact in f64, and adding zeros changes nothing: the sum is rank i%world's
    // value, bit for bit.
    let mut mine = vec![0f64; 2 * data.len()];
    for i in (0..data.len()).filter(|i| i % world == rank) {
        let (lo, hi) = data
            .cached_bounds(i, norm)
            .ok_or_else(|| TrainError::Data(format!("no bounds for image {i}")))?;
        mine[2 * i] = f64::from(lo);
        mine[2 * i + 1] = f64::from(hi);
    }
    let all = c.sum_f64(&mine)?;
    for i in 0..data.len() {
        data.set_bounds(i, norm, (all[2 * i] as f32, all[2 * i + 1] as f32));
    }
    Ok(())
}

fn schedule_kind(cfg: &ExperimentConfig, epochs: u64) -> ScheduleKind {
    let s = &cfg.training.scheduler;
    match s.kind {
        SchedulerKind::ReduceOnPlateau => ScheduleKind::ReduceOnPlateau {
            factor: s.factor,
            patience: s.patience,
        },
        SchedulerKind::Cosine => ScheduleKind::Cosine {
            total_epochs: epochs as u32,
            min_lr: s.min_lr,
        },
        SchedulerKind::Constant => ScheduleKind::Constant,
    }
}

/// Number of validation patches: two per validation image, between 4 and 32.
fn n_validation_patches(n_images: usize) -> usize {
    (2 * n_images).clamp(4, 32)
}

/// Validation scores that every rank holds identically: each rank scores its share of the
/// patches, the totals are summed over ranks, and rank 0's resulting scores are broadcast, so
/// the scheduler, early stopping and the best-checkpoint choice see the same bits everywhere.
/// `offset` is added to this rank's mSA and Dice totals (fault injection in tests).
fn shared_validation(
    sam: &sam_model::Sam,
    patches: &[TrainingSample],
    device: tch::Device,
    collective: Option<&Collective>,
    offset: f64,
) -> Result<ValidationScores, TrainError> {
    let mut mine = validation_totals(sam, patches, device)?;
    mine.msa_sum += offset * mine.patches;
    mine.dice_sum += offset * mine.objects;
    let Some(c) = collective else {
        return Ok(mine.scores());
    };
    let total = ValidationTotals::from_array(
        c.sum_f64(&mine.to_array())?
            .try_into()
            .map_err(|_| TrainError::Distributed("validation totals: wrong length".into()))?,
    );
    let s = total.scores();
    let shared = c.broadcast_f64(&[s.dice, s.box_iou, s.msa, s.sa50])?;
    Ok(ValidationScores {
        dice: shared[0],
        box_iou: shared[1],
        msa: shared[2],
        sa50: shared[3],
    })
}

/// Faults a test can inject into one rank through `SAM_TRAIN_INJECT_FAULTS`, to prove that
/// ranks still decide together: `rank=R;validation_offset=X;nonfinite_at=I,J` makes rank R
/// add X to its validation mSA and Dice, and see a NaN loss and gradients at (0-based)
/// iterations I, J; and that a kill during a checkpoint write loses nothing:
/// `pause_checkpoint_write_at=N` makes the write of `latest` after iteration N stop half-way
/// for a minute (the test kills the process there). Unset in real runs.
#[derive(Debug, Default, Clone, PartialEq)]
struct FaultInjection {
    rank: Option<usize>,
    validation_offset: f64,
    nonfinite_at: Vec<u64>,
    pause_checkpoint_write_at: Option<u64>,
}

/// How long a checkpoint write injected with `pause_checkpoint_write_at` stops.
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_secs(60);

/// The variable [`FaultInjection`] is read from.
const FAULTS_VAR: &str = "SAM_TRAIN_INJECT_FAULTS";

impl FaultInjection {
    fn from_env() -> Result<Self, TrainError> {
        match std::env::var(FAULTS_VAR) {
            Ok(v) => Self::parse(&v),
            Err(_) => Ok(Self::default()),
        }
    }

    fn parse(spec: &str) -> Result<Self, TrainError> {
        let bad = |part: &str| {
            TrainError::Usage(format!(
                "{FAULTS_VAR}: cannot read `{part}` (expected \
                 rank=R;validation_offset=X;nonfinite_at=I,J;pause_checkpoint_write_at=N)"
            ))
        };
        let mut f = Self::default();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| bad(part))?;
            match key.trim() {
                "rank" => f.rank = Some(value.trim().parse().map_err(|_| bad(part))?),
                "validation_offset" => {
                    f.validation_offset = value.trim().parse().map_err(|_| bad(part))?
                }
                "nonfinite_at" => {
                    f.nonfinite_at = value
                        .split(',')
                        .map(|i| i.trim().parse().map_err(|_| bad(part)))
                        .collect::<Result<_, _>>()?
                }
                "pause_checkpoint_write_at" => {
                    f.pause_checkpoint_write_at = Some(value.trim().parse().map_err(|_| bad(part))?)
                }
                _ => return Err(bad(part)),
            }
        }
        Ok(f)
    }

    fn applies_to(&self, rank: usize) -> bool {
        self.rank.is_none_or(|r| r == rank)
    }

    fn validation_offset(&self, rank: usize) -> f64 {
        if self.applies_to(rank) {
            self.validation_offset
        } else {
            0.0
        }
    }

    fn nonfinite_at(&self, rank: usize, iteration: u64) -> bool {
        self.applies_to(rank) && self.nonfinite_at.contains(&iteration)
    }

    /// The pause of the write of `slot` after `iteration` completed steps.
    fn checkpoint_pause(
        &self,
        rank: usize,
        slot: Slot,
        iteration: u64,
    ) -> Option<std::time::Duration> {
        (self.applies_to(rank)
            && slot == Slot::Latest
            && self.pause_checkpoint_write_at == Some(iteration))
        .then_some(CHECKPOINT_PAUSE)
    }
}

/// Trains as the config says. See the crate documentation for the run folder layout.
pub fn train(
    cfg: &ExperimentConfig,
    paths: &RunPaths,
    opts: &TrainOptions<'_>,
) -> Result<TrainOutcome, TrainError> {
    let started = Instant::now();
    let (rank, world) = opts
        .collective
        .map_or((0, 1), |c| (c.rank(), c.world_size()));
    let is_main = rank == 0;
    let say = |line: String| {
        tracing::info!("{line}");
        opts.progress.message(&line);
    };
    let t = &cfg.training;
    let faults = FaultInjection::from_env()?;
    let local_rank = opts.collective.map_or(0, |c| c.local_rank());
    let device = device_for(t.device, local_rank)?;
    if t.precision == Precision::Tf32 && device.is_cuda() {
        sam_torch::set_tf32(sam_torch::Tf32 {
            cublas: true,
            cudnn: true,
        })
        .map_err(|e| TrainError::Model(e.to_string()))?;
    }
    let store = CheckpointStore::new(&paths.checkpoint_dir);
    // `--resume` of a run stopped before its first checkpoint starts it from the beginning in
    // the same folder. Every rank looks at the same (shared) folder; they must agree.
    let resuming = opts.resume && store.exists(Slot::Latest);
    if let Some(c) = opts.collective {
        if c.any(resuming)? == c.any(!resuming)? {
            return Err(TrainError::Distributed(format!(
                "the ranks disagree whether {} holds a checkpoint to resume from: the run \
                 folder must be on a file system that every rank sees",
                store.slot_dir(Slot::Latest).display()
            )));
        }
    }
    if is_main {
        if opts.resume && !resuming {
            say(format!(
                "--resume: no checkpoint in {} yet (the run stopped before its first one): \
                 starting from the beginning in the same folder",
                store.slot_dir(Slot::Latest).display()
            ));
        }
        for stale in store.remove_stale_temporaries()? {
            say(format!(
                "removed {}: a checkpoint write that was killed half-way (the checkpoint it \
                 was to replace is intact)",
                stale.display()
            ));
        }
        if !resuming {
            let yaml = cfg.to_yaml().map_err(|e| TrainError::Io(e.to_string()))?;
            fs::write(&paths.config, yaml)
                .map_err(|e| TrainError::Io(format!("{}: {e}", paths.config.display())))?;
        }
        if paths.export_path.exists() {
            say(format!(
                "note: {} exists; this run replaces it with its best model when it finishes",
                paths.export_path.display()
            ));
        }
    }

    // Data: opened, not loaded. Each image is read once up front (by one rank) to check it
    // and cache its normalisation bounds; samples are then read on demand by the loader.
    let (train_set, val_set) = open_data(cfg, &paths.root)?;
    if train_set.is_empty() {
        return Err(TrainError::Data(
            "no training images after the validation split".into(),
        ));
    }
    if val_set.is_empty() {
        return Err(TrainError::Data(
            "no validation images: set data.validation.fraction or data.validation.images_dir"
                .into(),
        ));
    }
    let sample_cfg = sample_config(cfg);
    let read_started = Instant::now();
    prepare_bounds(&train_set, &sample_cfg.normalization, opts.collective)?;
    prepare_bounds(&val_set, &sample_cfg.normalization, opts.collective)?;
    if is_main {
        say(format!(
            "checked {} images and cached their normalisation bounds in {:.1} s ({} process(es))",
            train_set.len() + val_set.len(),
            read_started.elapsed().as_secs_f64(),
            world
        ));
    }
    // This rank's share of the validation patches: patch j is scored on rank j % world, and
    // the ranks' totals are combined into one set of scores (see `shared_validation`).
    let val_patches: Vec<TrainingSample> = (0..n_validation_patches(val_set.len()))
        .filter(|j| j % world == rank)
        .map(|j| {
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(
                derive_seed(cfg.seed, &[3, j as u64]),
            );
            val_set.sample(
                &SampleConfig {
                    with_targets: false,
                    ..sample_cfg.clone()
                },
                &mut rng,
            )
        })
        .collect::<Result<_, _>>()
        .map_err(|e| TrainError::Data(e.to_string()))?;

    // Model, optimiser, state.
    tch::manual_seed(derive_seed(cfg.seed, &[0]) as i64 & i64::MAX);
    let mut model = Model::new(&cfg.model, device)?;
    // A file path relative to the repository root, as every path of the config; a model name
    // as it is.
    if let Some(spec) = paths.model_checkpoint(&cfg.model) {
        for w in model.load_initial(&spec)? {
            say(format!("warning: {w}"));
        }
    }
    let frozen = |name: &str| {
        cfg.model
            .freeze
            .iter()
            .any(|p| name.starts_with(p.as_str()))
    };
    let mut trainable = Vec::new();
    for (name, var) in model.named_variables() {
        if !var.requires_grad() {
            continue; // buffers
        }
        if frozen(&name) {
            let _ = var.set_requires_grad(false);
        } else {
            trainable.push((name, var));
        }
    }
    let n_params: i64 = trainable.iter().map(|(_, v)| v.numel() as i64).sum();
    let mut optim = AdamW::new(
        trainable,
        AdamWConfig {
            lr: t.lr,
            betas: (t.betas[0], t.betas[1]),
            eps: t.eps,
            weight_decay: t.weight_decay,
        },
    );
    let global_batch = u64::from(t.batch_size) * world as u64;
    let samples_per_epoch = cfg
        .data
        .samples_per_epoch
        .unwrap_or(train_set.len() as u64 * 16);
    let iters_per_epoch = samples_per_epoch.div_ceil(global_batch).max(1);
    let epochs = match (t.epochs, t.iterations) {
        (_, Some(it)) => it.div_ceil(iters_per_epoch),
        (Some(e), None) => u64::from(e),
        (None, None) => 1,
    };
    let total_iterations = t.iterations.unwrap_or(epochs * iters_per_epoch);
    let mut state = TrainState {
        epoch: 0,
        iteration: 0,
        best_metric: None,
        best_dice: None,
        scheduler: LrScheduler::new(schedule_kind(cfg, epochs), t.lr),
        early_stopping: EarlyStopping::new(t.early_stopping_patience),
        scaler: ScalerState::default(),
        seed: cfg.seed,
        metric: None,
        finished: false,
        epoch_sums: EpochSums::default(),
        nonfinite_streak: 0,
        intra_op_threads: None,
    };
    let threads = u32::try_from(tch::get_num_threads()).ok();
    if resuming {
        let ck = store.load(Slot::Latest)?;
        let source = store.slot_dir(Slot::Latest);
        model.load_named(&ck.model, &source)?;
        optim.load_state_tensors(ck.optimizer)?;
        state = ck.state;
        say(format!(
            "resumed from {} at epoch {}, iteration {}",
            source.display(),
            state.epoch,
            state.iteration
        ));
        if let (Some(was), Some(now)) = (state.intra_op_threads, threads) {
            if was != now && device == tch::Device::Cpu && is_main {
                say(format!(
                    "warning: the checkpoint was written by a process with {was} intra-op \
                     threads, this one has {now}: on the CPU the sums then run in another \
                     order, and the run ends within rounding of an uninterrupted one, not bit \
                     for bit"
                ));
            }
        }
    } else if let Some(c) = opts.collective {
        // Every rank starts from rank 0's weights.
        c.broadcast_variables(&model.named_variables())?;
    }
    state.intra_op_threads = threads;
    optim.set_lr(state.scheduler.lr());
    if is_main {
        say(format!(
            "training {} ({} trainable parameters) on {:?}, {} process(es): {} train / {} validation images, \
             {} iterations of global batch {} ({} epochs × {})",
            cfg.experiment_name, n_params, device, world, train_set.len(), val_set.len(),
            total_iterations, global_batch, epochs, iters_per_epoch
        ));
    }
    let recipe = RecipeConfig {
        n_objects_per_batch: t.n_objects_per_batch as usize,
        n_sub_iteration: t.n_sub_iteration as usize,
        mask_prob: t.mask_prob,
        box_distortion: t.box_distortion_factor,
        focal_weight: t.focal_loss_weight,
    };

    // Samples for iterations from here on, built ahead on worker threads. Sample k of the global
    // batch of iteration i depends only on (seed, i, k); this rank takes its slice of k.
    let first = state.iteration;
    let per_rank = t.batch_size as u64;
    let train_arc = std::sync::Arc::new(train_set);
    let sample_cfg_arc = sample_cfg.clone();
    let seed = cfg.seed;
    let remaining = total_iterations.saturating_sub(first);
    let prefetch = {
        let train_arc = std::sync::Arc::clone(&train_arc);
        Prefetcher::spawn(
            cfg.data.num_workers.max(1) as usize,
            cfg.data.prefetch_batches.max(1) as usize,
            seed,
            Some(remaining * per_rank),
            move |j, _| {
                let i = first + j / per_rank;
                let k = rank as u64 * per_rank + j % per_rank;
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(
                    derive_seed(seed, &[4, i, k]),
                );
                train_arc.sample(&sample_cfg_arc, &mut rng).map(|s| (k, s))
            },
        )
    };
    let mut prefetch = prefetch;
    let metrics = MetricsLog::new(&paths.logs_dir);
    opts.progress.start(total_iterations, state.iteration);
    let autocast_kind = match t.precision {
        Precision::Bf16 => Some(Kind::BFloat16),
        Precision::Fp16 => Some(Kind::Half),
        _ => None,
    };
    let mut last_validation = None;
    let mut early_stopped = false;
    let mut epoch_started = Instant::now();
    // Also counts this process's steps (`max_iterations_this_run`).
    let mut timing = StepTiming::default();
    let snapshot =
        |model: &Model, optim: &AdamW, state: &TrainState, slot: Slot| -> Result<(), TrainError> {
            if is_main {
                store.save_pausing(
                    slot,
                    &model.named_variables(),
                    &optim.state_tensors(),
                    state,
                    faults.checkpoint_pause(rank, slot, state.iteration),
                )?;
            }
            Ok(())
        };

    while state.iteration < total_iterations {
        // One iteration.
        let step_started = Instant::now();
        let mut batch = Vec::with_capacity(per_rank as usize);
        let mut index = Vec::with_capacity(per_rank as usize);
        for _ in 0..per_rank {
            let (k, s) = prefetch
                .next()
                .ok_or_else(|| TrainError::Data("the sample pipeline ended early".into()))?
                .map_err(|e| TrainError::Data(e.to_string()))?;
            index.push(k);
            batch.push(s);
        }
        let data_wait = step_started.elapsed().as_secs_f64();
        let refs: Vec<&TrainingSample> = batch.iter().collect();
        optim.zero_grad()?;
        // torch's own generator (dropout and any other random op of a model) restarts every
        // step from (seed, iteration, rank), so that a resumed run draws what the
        // uninterrupted one drew without saving the generator. No module draws from it today.
        tch::manual_seed(derive_seed(seed, &[5, state.iteration, rank as u64]) as i64 & i64::MAX);
        let scale = if t.precision == Precision::Fp16 {
            state.scaler.scale
        } else {
            1.0
        };
        // Forward and backward: each prompting round is back-propagated as it ends.
        let loss = step_backward(
            &model.sam,
            model.decoder.as_ref().map(|(_, d)| d),
            &refs,
            &recipe,
            seed,
            state.iteration,
            &index,
            device,
            StepPrecision {
                autocast: autocast_kind,
                loss_scale: scale,
            },
        )?;
        let mut value = loss.total.double_value(&[]);
        if faults.nonfinite_at(rank, state.iteration) {
            value = f64::NAN;
            optim.scale_grads(f64::NAN);
        }
        // Whether this step is usable is decided from every rank's loss and gradients
        // together: a non-finite value anywhere skips the step everywhere.
        let local_ok = value.is_finite() && optim.grads_finite();
        let step_ok = match opts.collective {
            Some(c) => !c.any(!local_ok)?,
            None => local_ok,
        };
        if step_ok {
            if let Some(c) = opts.collective {
                c.average_gradients(&optim)?;
            }
            if t.precision == Precision::Fp16 {
                optim.scale_grads(1.0 / scale);
                // torch.amp.GradScaler: double the scale after 2000 clean steps.
                state.scaler.growth_tracker += 1;
                if state.scaler.growth_tracker >= 2000 {
                    state.scaler.scale *= 2.0;
                    state.scaler.growth_tracker = 0;
                }
            }
            if let Some(max) = t.grad_clip_norm {
                optim.clip_grad_norm(max);
            }
            optim.step();
            state.nonfinite_streak = 0;
        } else if t.precision == Precision::Fp16 {
            // GradScaler on overflow: skip the step, halve the scale; never stop.
            state.scaler.scale *= 0.5;
            state.scaler.growth_tracker = 0;
            say(format!(
                "iteration {}: non-finite loss or gradients (on {}), step skipped, loss scale \
                 lowered to {}",
                state.iteration + 1,
                if local_ok {
                    "another rank"
                } else {
                    "this rank"
                },
                state.scaler.scale
            ));
        } else {
            state.nonfinite_streak += 1;
            say(format!(
                "warning: iteration {}: non-finite loss or gradients (on {}), step skipped \
                 ({} of {} in a row allowed)",
                state.iteration + 1,
                if local_ok {
                    "another rank"
                } else {
                    "this rank"
                },
                state.nonfinite_streak,
                t.max_nonfinite_steps
            ));
            if state.nonfinite_streak >= t.max_nonfinite_steps {
                // Every rank is here at the same iteration; `latest` is left as it was
                // after the last good step.
                return Err(TrainError::NonFinite {
                    first_iteration: state.iteration + 1 - u64::from(state.nonfinite_streak),
                    steps: state.nonfinite_streak,
                    value,
                    checkpoint: store.slot_dir(Slot::Latest),
                });
            }
        }
        timing.iterations += 1;
        timing.step_seconds += step_started.elapsed().as_secs_f64();
        timing.data_wait_seconds += data_wait;
        state.iteration += 1;
        if step_ok {
            let sums = &mut state.epoch_sums;
            sums.loss += value;
            sums.dice_loss += loss.dice;
            sums.decoder_loss += loss.decoder;
            sums.steps += 1.0;
        }
        opts.progress.step(state.iteration, value, optim.lr());
        if t.log_every_iterations > 0
            && state.iteration % u64::from(t.log_every_iterations) == 0
            && is_main
        {
            tracing::info!(
                "iteration {}/{}: loss {:.4} (dice {:.4}, iou-mse {:.4}, decoder {:.4}), lr {:.3e}",
                state.iteration,
                total_iterations,
                value,
                loss.dice,
                loss.iou_mse,
                loss.decoder,
                optim.lr()
            );
        }

        let epoch_end =
            state.iteration % iters_per_epoch == 0 || state.iteration == total_iterations;
        if epoch_end {
            state.epoch += 1;
            let validate_now = t.validate_every_epochs <= 1
                || state.epoch % u64::from(t.validate_every_epochs) == 0
                || state.iteration == total_iterations;
            let scores = if validate_now {
                Some(shared_validation(
                    &model.sam,
                    &val_patches,
                    device,
                    opts.collective,
                    faults.validation_offset(rank),
                )?)
            } else {
                None
            };
            let sums = state.epoch_sums;
            let n = sums.steps.max(1.0);
            let record = EpochRecord {
                epoch: state.epoch,
                iteration: state.iteration,
                lr: optim.lr(),
                train_loss: sums.loss / n,
                train_dice_loss: sums.dice_loss / n,
                train_decoder_loss: sums.decoder_loss / n,
                val_dice: scores.map_or(f64::NAN, |s| s.dice),
                val_box_iou: scores.map_or(f64::NAN, |s| s.box_iou),
                val_msa: scores.map_or(f64::NAN, |s| s.msa),
                val_sa50: scores.map_or(f64::NAN, |s| s.sa50),
                seconds: epoch_started.elapsed().as_secs_f64(),
            };
            state.epoch_sums = EpochSums::default();
            epoch_started = Instant::now();
            if let Some(s) = scores {
                last_validation = Some(s);
                if is_main {
                    say(format!(
                        "epoch {}/{}: train loss {:.4}, validation mSA {:.4}, SA50 {:.4}, box IoU {:.4}, Dice {:.4}",
                        state.epoch, epochs, record.train_loss, s.msa, s.sa50, s.box_iou, s.dice
                    ));
                    metrics.append(&record)?;
                }
                let decision = checkpoint_decision(
                    (s.msa, s.dice),
                    state
                        .best_metric
                        .zip(state.best_dice.or(Some(f64::NEG_INFINITY))),
                );
                state.metric = Some(s.msa);
                let lr = state.scheduler.step(s.msa);
                optim.set_lr(lr);
                early_stopped = state.early_stopping.update(s.msa);
                if decision.save_best {
                    state.best_metric = Some(s.msa);
                    state.best_dice = Some(s.dice);
                    snapshot(&model, &optim, &state, Slot::Best)?;
                }
            }
            if early_stopped {
                state.finished = true;
            }
            // During a run of skipped steps `latest` stays the last good state.
            if state.nonfinite_streak == 0 {
                snapshot(&model, &optim, &state, Slot::Latest)?;
            }
            if early_stopped {
                say(format!(
                    "early stopping after epoch {}: no improvement for {} epochs",
                    state.epoch,
                    t.early_stopping_patience.unwrap_or(0)
                ));
                break;
            }
        } else if t.checkpoint_every_iterations > 0
            && state.iteration % u64::from(t.checkpoint_every_iterations) == 0
            && state.nonfinite_streak == 0
        {
            snapshot(&model, &optim, &state, Slot::Latest)?;
        }

        let stop_requested = opts.stop.is_raised();
        let stop_all = match opts.collective {
            Some(c) => c.any(stop_requested)?,
            None => stop_requested,
        };
        let limit_hit = opts
            .max_iterations_this_run
            .is_some_and(|m| timing.iterations >= m);
        if (stop_all || limit_hit) && state.iteration < total_iterations {
            if !epoch_end {
                snapshot(&model, &optim, &state, Slot::Latest)?;
            }
            if let Some(c) = opts.collective {
                // No rank leaves before rank 0 has written the checkpoint: a launcher that
                // kills the job when its first task exits (srun --kill-on-bad-exit) would
                // otherwise cut the write short.
                c.barrier()?;
            }
            if stop_all {
                say(format!(
                    "stop requested: checkpointed at iteration {} in {}",
                    state.iteration,
                    store.slot_dir(Slot::Latest).display()
                ));
            }
            opts.progress.finish();
            return Ok(TrainOutcome::Interrupted(TrainSummary {
                epochs: state.epoch,
                iterations: state.iteration,
                best_msa: state.best_metric,
                last_validation,
                export_path: None,
                run_dir: paths.run_dir.clone(),
                early_stopped: false,
                seconds: started.elapsed().as_secs_f64(),
                timing,
            }));
        }
    }
    opts.progress.finish();
    state.finished = true;
    snapshot(&model, &optim, &state, Slot::Latest)?;
    let skipped = train_arc.skipped_images();
    if is_main && !skipped.is_empty() {
        say(format!(
            "{} training image(s) had no patch with enough objects and were passed over by this \
             rank's loader: {}",
            skipped.len(),
            skipped.join("; ")
        ));
    }
    let export_path = if is_main {
        let slot = if store.exists(Slot::Best) {
            Slot::Best
        } else {
            Slot::Latest
        };
        let source = store.slot_dir(slot);
        if paths.export_path.exists() {
            say(format!(
                "replacing {} (an earlier export) with this run's {} model",
                paths.export_path.display(),
                slot.name()
            ));
        }
        export_model(
            &source,
            &paths.export_path,
            ExportOptions {
                with_decoder: model.decoder.is_some(),
                replace: true,
            },
        )?;
        say(format!(
            "exported {} to {}",
            source.display(),
            paths.export_path.display()
        ));
        Some(paths.export_path.clone())
    } else {
        None
    };
    if let Some(c) = opts.collective {
        c.barrier()?;
    }
    // Every rank states the decisions it took; they must be the same on all of them.
    tracing::info!(
        "rank {rank} of {world} finished: {} epochs, {} iterations, lr {:e}, best validation \
         mSA {}, early stopped {early_stopped}",
        state.epoch,
        state.iteration,
        optim.lr(),
        state
            .best_metric
            .map_or("none".into(), |m| format!("{m:.6}"))
    );
    Ok(TrainOutcome::Finished(TrainSummary {
        epochs: state.epoch,
        iterations: state.iteration,
        best_msa: state.best_metric,
        last_validation,
        export_path,
        run_dir: paths.run_dir.clone(),
        early_stopped,
        seconds: started.elapsed().as_secs_f64(),
        timing,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{FaultInjection, Slot, StepTiming, CHECKPOINT_PAUSE};

    #[test]
    fn fault_injection_spec() {
        let f = FaultInjection::parse(
            "rank=1; validation_offset=0.25;nonfinite_at=2,5;pause_checkpoint_write_at=4",
        )
        .unwrap();
        assert_eq!(f.validation_offset(1), 0.25);
        assert_eq!(
            f.checkpoint_pause(1, Slot::Latest, 4),
            Some(CHECKPOINT_PAUSE)
        );
        assert_eq!(f.checkpoint_pause(1, Slot::Best, 4), None);
        assert_eq!(f.checkpoint_pause(1, Slot::Latest, 3), None);
        assert_eq!(f.checkpoint_pause(0, Slot::Latest, 4), None);
        assert_eq!(f.validation_offset(0), 0.0);
        assert!(f.nonfinite_at(1, 5) && !f.nonfinite_at(1, 3) && !f.nonfinite_at(0, 5));
        assert_eq!(
            FaultInjection::parse("").unwrap(),
            FaultInjection::default()
        );
        let err = FaultInjection::parse("rank=one").unwrap_err().to_string();
        assert!(err.contains("rank=one"), "{err}");
        assert!(FaultInjection::parse("colour=red").is_err());
    }

    #[test]
    fn step_timing_means_and_shares() {
        let none = StepTiming::default();
        assert_eq!(none.seconds_per_iteration(), 0.0);
        assert_eq!(none.data_wait_share(), 0.0);
        let t = StepTiming {
            iterations: 4,
            step_seconds: 2.0,
            data_wait_seconds: 0.5,
        };
        assert!((t.seconds_per_iteration() - 0.5).abs() < 1e-12);
        assert!((t.data_wait_share() - 0.25).abs() < 1e-12);
    }
}
