//! The training run: [`train`] and the phases of [`Trainer`] it runs (setup, step, end of
//! epoch, stop, finish), with the types a caller passes in and gets back.
//!
//! The run folder is prepared by [`crate::prepare_run`] (run_folder.rs), the data opened in
//! data.rs, one step computed in step.rs, the fp16 loss scale kept in scaler.rs, validation
//! in validation.rs, checkpoints written in checkpoint.rs.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sam_config::{ExperimentConfig, ModelConfig, Precision, RunPaths, SchedulerKind};
use sam_data::{derive_seed, Dataset, Prefetcher, SampleConfig, TrainingSample};
use tch::{Device, Kind, Tensor};

use crate::board::Board;
use crate::checkpoint::{CheckpointStore, EpochSums, Slot, TrainState};
use crate::comparison::{
    best_epoch, comparison_line, ComparisonLog, ComparisonRecord, ComparisonStage,
};
use crate::data::{n_validation_patches, open_data, prepare_bounds, sample_config};
use crate::distributed::{Collective, GradientReducer};
use crate::faults::FaultInjection;
use crate::optim::{AdamW, AdamWConfig};
use crate::report::{EpochRecord, MetricsLog};
use crate::scaler::{LossScaler, ScalerState, ScalerUpdate};
use crate::schedule::{checkpoint_decision, EarlyStopping, LrScheduler, ScheduleKind};
use crate::setup::{
    base_digest, device_for, load_initial, load_resumed, native_input_size, new_model,
};
use crate::signals::StopFlag;
use crate::step::{
    autocast_kind, step_backward, BeforeEncoderBackward, LossValues, RecipeConfig, StepInputs,
    StepPrecision,
};
use crate::throughput::{Meter, Throughput};
use crate::validation::{shared_validation, ValidationScores};
use crate::{export_model, ExportOptions, TrainError};
use sam_model::SamModel;

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
    /// Images/s, s/step and achieved model TFLOP/s of this process's steps in this run.
    pub throughput: Option<Throughput>,
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
    /// The most device→host reads one step made (each waits for the device; counted by
    /// [`sam_torch::host_reads`]): a small constant, whatever the number of objects, prompting
    /// rounds and parameter tensors.
    pub max_host_reads_per_step: u64,
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

/// Trains as the config says. See the crate documentation for the run folder layout.
///
/// The run goes through the phases of the crate's `Trainer`: setup (device, run folder, data, model,
/// optimiser, fresh or resumed state, sample pipeline), then per iteration a step, at the end
/// of each epoch validation, checkpoints, scheduler and early stopping, after each iteration
/// the stop check, and at the end the export.
pub fn train(
    cfg: &ExperimentConfig,
    paths: &RunPaths,
    opts: &TrainOptions<'_>,
) -> Result<TrainOutcome, TrainError> {
    Trainer::setup(cfg, paths, opts)?.run()
}

/// Sends a line to the log and the progress sink.
fn say(progress: &dyn TrainProgress, line: String) {
    tracing::info!("{line}");
    progress.message(&line);
}

/// How many iterations a run has and how they divide into epochs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plan {
    /// Samples per optimiser step on this rank (`training.batch_size` ×
    /// `training.gradient_accumulation`).
    per_rank: u64,
    /// Samples per forward and backward on this rank (`training.batch_size`).
    micro_batch: u64,
    /// Samples per optimiser step over all ranks.
    global_batch: u64,
    /// Steps per epoch.
    iters_per_epoch: u64,
    /// Epochs of the run.
    epochs: u64,
    /// Steps of the run.
    total_iterations: u64,
}

impl Plan {
    fn new(cfg: &ExperimentConfig, n_train_images: usize, world: usize) -> Self {
        let t = &cfg.training;
        let micro_batch = u64::from(t.batch_size);
        let per_rank = micro_batch * u64::from(t.gradient_accumulation.max(1));
        let global_batch = per_rank * world as u64;
        let samples_per_epoch = cfg
            .data
            .samples_per_epoch
            .unwrap_or(n_train_images as u64 * 16);
        let iters_per_epoch = samples_per_epoch.div_ceil(global_batch).max(1);
        let epochs = match (t.epochs, t.iterations) {
            (_, Some(it)) => it.div_ceil(iters_per_epoch),
            (Some(e), None) => u64::from(e),
            (None, None) => 1,
        };
        Self {
            per_rank,
            micro_batch,
            global_batch,
            iters_per_epoch,
            epochs,
            total_iterations: t.iterations.unwrap_or(epochs * iters_per_epoch),
        }
    }

    /// Whether `iteration` completed steps end an epoch (the last step always does).
    fn is_epoch_end(&self, iteration: u64) -> bool {
        iteration % self.iters_per_epoch == 0 || iteration == self.total_iterations
    }
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

/// The device of this process (`cuda:<local_rank>` on a GPU node), with TF32 for its fp32 work
/// as the config says.
fn open_device(
    cfg: &ExperimentConfig,
    collective: Option<&Collective>,
) -> Result<Device, TrainError> {
    let t = &cfg.training;
    let local_rank = collective.map_or(0, |c| c.local_rank());
    let device = device_for(t.device, local_rank)?;
    if device.is_cuda() {
        let on = tf32_for(t.precision, &cfg.hardware);
        sam_torch::set_tf32(sam_torch::Tf32 {
            cublas: on,
            cudnn: on,
        })?;
        tracing::info!(
            "TF32 for fp32 work: {}",
            if on {
                "on"
            } else {
                "off (hardware.tf32: false)"
            }
        );
    }
    Ok(device)
}

/// Whether fp32 work on a GPU uses TF32: `hardware.tf32` (on by default), and always for
/// `precision: tf32`.
fn tf32_for(precision: Precision, hardware: &sam_config::HardwareConfig) -> bool {
    hardware.tf32 || precision == Precision::Tf32
}

/// Looks at the run folder before training: whether there is a checkpoint to resume from (every
/// rank must see the same), and on rank 0 the notes, the removal of half-written checkpoints
/// and the resolved config of a new run. Returns whether the run resumes.
fn open_run_folder(
    cfg: &ExperimentConfig,
    paths: &RunPaths,
    opts: &TrainOptions<'_>,
    store: &CheckpointStore,
    is_main: bool,
) -> Result<bool, TrainError> {
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
    if !is_main {
        return Ok(resuming);
    }
    let note = |line| say(opts.progress, line);
    if opts.resume && !resuming {
        note(format!(
            "--resume: no checkpoint in {} yet (the run stopped before its first one): \
             starting from the beginning in the same folder",
            store.slot_dir(Slot::Latest).display()
        ));
    }
    for stale in store.remove_stale_temporaries()? {
        note(format!(
            "removed {}: a checkpoint write that was killed half-way (the checkpoint it \
             was to replace is intact)",
            stale.display()
        ));
    }
    if !resuming {
        let yaml = cfg.to_yaml()?;
        fs::write(&paths.config, yaml).map_err(|e| TrainError::io(&paths.config, e))?;
    }
    if paths.export_path.exists() {
        note(format!(
            "note: {} exists; this run replaces it with its best model when it finishes",
            paths.export_path.display()
        ));
    }
    Ok(resuming)
}

/// The data of a run once set up.
struct RunData {
    /// The training images (opened, bounds cached).
    train: Dataset,
    /// Number of validation images.
    val_images: usize,
    /// This rank's share of the validation patches.
    val_patches: Vec<TrainingSample>,
    /// How samples are cut.
    sample: SampleConfig,
}

impl RunData {
    /// Opens the images (headers only), reads each once up front (by one rank) to check it
    /// and cache its normalisation bounds, and cuts this rank's validation patches. Samples
    /// for training are then read on demand by the loader.
    fn open(
        cfg: &ExperimentConfig,
        paths: &RunPaths,
        progress: &dyn TrainProgress,
        collective: Option<&Collective>,
    ) -> Result<Self, TrainError> {
        let (rank, world) = collective.map_or((0, 1), |c| (c.rank(), c.world_size()));
        let (train, val) = open_data(cfg, &paths.root)?;
        if train.is_empty() {
            return Err(TrainError::Samples(
                "no training images after the validation split".into(),
            ));
        }
        if val.is_empty() {
            return Err(TrainError::Samples(
                "no validation images: set data.validation.fraction or data.validation.images_dir"
                    .into(),
            ));
        }
        let sample = sample_config(cfg);
        let read_started = Instant::now();
        prepare_bounds(&train, &sample.normalization, collective)?;
        prepare_bounds(&val, &sample.normalization, collective)?;
        if rank == 0 {
            say(
                progress,
                format!(
                    "checked {} images and cached their normalisation bounds in {:.1} s ({} \
                     process(es))",
                    train.len() + val.len(),
                    read_started.elapsed().as_secs_f64(),
                    world
                ),
            );
        }
        // This rank's share of the validation patches: patch j is scored on rank j % world,
        // and the ranks' totals are combined into one set of scores (see
        // `shared_validation`).
        let val_sample = SampleConfig {
            with_targets: false,
            ..sample.clone()
        };
        let val_patches = (0..n_validation_patches(val.len()))
            .filter(|j| j % world == rank)
            .map(|j| {
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(
                    derive_seed(cfg.seed, &[3, j as u64]),
                );
                val.sample(&val_sample, &mut rng)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            train,
            val_images: val.len(),
            val_patches,
            sample,
        })
    }
}

/// The model the config builds with its initial weights: torch's generator seeded from the
/// run's seed (through [`sam_model::seeded`]), the model built (with its adapters under
/// `model.peft`), `model.checkpoint` loaded. Warnings go to `progress`. Rebuilding it from the same config gives the same base
/// weights (what [`crate::export_model`] does for a checkpoint with adapters).
pub(crate) fn initial_model(
    cfg: &ExperimentConfig,
    paths: &RunPaths,
    device: Device,
    progress: &dyn TrainProgress,
) -> Result<SamModel, TrainError> {
    // Seeded under sam_model's process-wide lock: trainers built in parallel threads (a lab
    // tool's, the tests') each get the weights of their own seed.
    let mut model = sam_model::seeded(derive_seed(cfg.seed, &[0]) as i64 & i64::MAX, || {
        new_model(&cfg.model, device)
    })?;
    if let Some(side) = native_input_size(cfg) {
        model.set_input_size(side)?;
    }
    // A file path relative to the repository root, as every path of the config; a model name
    // as it is.
    if let Some(spec) = paths.model_checkpoint(&cfg.model) {
        for w in load_initial(&model, &cfg.model, &spec)? {
            say(progress, format!("warning: {w}"));
        }
    }
    Ok(model)
}

/// The model built from the config and its initial checkpoint, the parameters that are not
/// frozen in an optimiser, and their number. With adapters (`model.peft`) the image encoder's
/// own weights are frozen already and only the adapters and heads train.
fn build_model(
    cfg: &ExperimentConfig,
    paths: &RunPaths,
    device: Device,
    progress: &dyn TrainProgress,
) -> Result<(SamModel, AdamW, i64), TrainError> {
    let model = initial_model(cfg, paths, device, progress)?;
    let (optim, n_params) = optimizer_for(cfg, &model);
    Ok((model, optim, n_params))
}

/// Freezes the parameters `model.freeze` names and puts the others into an AdamW with the
/// config's settings; returns it and the number of trainable parameter values.
pub(crate) fn optimizer_for(cfg: &ExperimentConfig, model: &SamModel) -> (AdamW, i64) {
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
    let t = &cfg.training;
    let optim = AdamW::new(
        trainable,
        AdamWConfig {
            lr: t.lr,
            betas: (t.betas[0], t.betas[1]),
            eps: t.eps,
            weight_decay: t.weight_decay,
        },
    );
    (optim, n_params)
}

/// The state of a run that starts from the beginning.
fn fresh_state(cfg: &ExperimentConfig, plan: &Plan) -> TrainState {
    let t = &cfg.training;
    TrainState {
        epoch: 0,
        iteration: 0,
        best_metric: None,
        best_dice: None,
        scheduler: LrScheduler::new(schedule_kind(cfg, plan.epochs), t.lr),
        early_stopping: EarlyStopping::new(t.early_stopping_patience),
        scaler: ScalerState::default(),
        seed: cfg.seed,
        metric: None,
        finished: false,
        epoch_sums: EpochSums::default(),
        nonfinite_streak: 0,
        intra_op_threads: None,
        input_size: native_input_size(cfg),
        base_model: None,
    }
}

/// Restores weights, optimiser and state from `latest`; `model` was built from `config`.
fn resume(
    store: &CheckpointStore,
    model: &SamModel,
    config: &ModelConfig,
    optim: &mut AdamW,
    device: Device,
    progress: &dyn TrainProgress,
    is_main: bool,
) -> Result<TrainState, TrainError> {
    let ck = store.load(Slot::Latest)?;
    let source = store.slot_dir(Slot::Latest);
    let built = model.peft().is_some().then(|| base_digest(model));
    check_base_model(&source, ck.state.base_model.as_deref(), built.as_deref())?;
    load_resumed(model, config, &ck.model, &source)?;
    optim.load_state_tensors(ck.optimizer)?;
    let state = ck.state;
    say(
        progress,
        format!(
            "resumed from {} at epoch {}, iteration {}",
            source.display(),
            state.epoch,
            state.iteration
        ),
    );
    let threads = u32::try_from(tch::get_num_threads()).ok();
    if let (Some(was), Some(now)) = (state.intra_op_threads, threads) {
        if was != now && device == Device::Cpu && is_main {
            say(
                progress,
                format!(
                    "warning: the checkpoint was written by a process with {was} intra-op \
                     threads, this one has {now}: on the CPU the sums then run in another \
                     order, and the run ends within rounding of an uninterrupted one, not bit \
                     for bit"
                ),
            );
        }
    }
    Ok(state)
}

/// Refuses to resume (or export) adapters onto another base image encoder than the one they
/// were trained on: `saved` is the checkpoint's base digest, `built` the model's.
pub(crate) fn check_base_model(
    source: &Path,
    saved: Option<&str>,
    built: Option<&str>,
) -> Result<(), TrainError> {
    match (saved, built) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (None, None) => Ok(()),
        (Some(a), Some(b)) => Err(TrainError::State(format!(
            "{}: the checkpoint's adapters were trained on another base model (image-encoder \
             digest {a}) than the one model.checkpoint gives now ({b}). Resume with the base \
             model and seed the run was started with (runs/<experiment>/config.yaml holds them)",
            source.display()
        ))),
        (Some(_), None) => Err(TrainError::State(format!(
            "{}: the checkpoint holds image-encoder adapters (model.peft) but the config has \
             none. {RESUME_HINT}",
            source.display()
        ))),
        (None, Some(_)) => Err(TrainError::State(format!(
            "{}: the config has image-encoder adapters (model.peft) but the checkpoint was \
             written without them. {RESUME_HINT}",
            source.display()
        ))),
    }
}

/// The fix when a checkpoint does not fit the config it is resumed with.
const RESUME_HINT: &str = "Resume with the config the run was started with \
     (runs/<experiment>/config.yaml), or start a new run (--overwrite)";

/// Samples for iterations `first..` built ahead on worker threads. Sample k of the global
/// batch of iteration i depends only on (seed, i, k); this rank takes its slice of k.
fn start_prefetch(
    cfg: &ExperimentConfig,
    train: &Arc<Dataset>,
    sample: SampleConfig,
    plan: &Plan,
    first: u64,
    rank: usize,
) -> Prefetcher<(u64, TrainingSample)> {
    let per_rank = plan.per_rank;
    let seed = cfg.seed;
    let remaining = plan.total_iterations.saturating_sub(first);
    let train = Arc::clone(train);
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
            train.sample(&sample, &mut rng).map(|s| (k, s))
        },
    )
}

/// One training run, in phases: [`Trainer::setup`], then per iteration [`Trainer::step`],
/// [`Trainer::end_epoch`] when an epoch ends, [`Trainer::stop_if_requested`], and
/// [`Trainer::finish`] (export) when the iterations are done. [`train`] runs them.
struct Trainer<'a> {
    cfg: &'a ExperimentConfig,
    paths: &'a RunPaths,
    opts: &'a TrainOptions<'a>,
    /// When this process started the run.
    started: Instant,
    rank: usize,
    world: usize,
    device: Device,
    faults: FaultInjection,
    store: CheckpointStore,
    plan: Plan,
    recipe: RecipeConfig,
    /// The kind the forward passes autocast to (bf16, fp16), if any.
    autocast: Option<Kind>,
    model: SamModel,
    optim: AdamW,
    /// Averages gradients over ranks during the encoder's backward (more than one process).
    reducer: Option<GradientReducer>,
    /// Everything saved besides tensors; its `scaler` is copied from `scaler` when saved.
    state: TrainState,
    scaler: LossScaler,
    train_set: Arc<Dataset>,
    val_patches: Vec<TrainingSample>,
    prefetch: Prefetcher<(u64, TrainingSample)>,
    metrics: MetricsLog,
    /// The TensorBoard log (rank 0).
    board: Option<Board>,
    last_validation: Option<ValidationScores>,
    early_stopped: bool,
    epoch_started: Instant,
    /// This process's steps (also what `max_iterations_this_run` counts).
    timing: StepTiming,
    /// Model FLOPs per step and the device's peak, for the throughput in the log.
    meter: Meter,
}

/// The numbers of one step, for the epoch sums, the progress and the log.
struct StepReport {
    /// The step's loss (NaN when injected).
    value: f64,
    loss: LossValues,
    /// Whether the step was taken (finite on every rank).
    taken: bool,
}

impl<'a> Trainer<'a> {
    /// Setup: the device, the run folder, the data, the model with its frozen parts and its
    /// optimiser, the state (fresh, or resumed from `latest`) and the sample pipeline.
    fn setup(
        cfg: &'a ExperimentConfig,
        paths: &'a RunPaths,
        opts: &'a TrainOptions<'a>,
    ) -> Result<Self, TrainError> {
        let started = Instant::now();
        let (rank, world) = opts
            .collective
            .map_or((0, 1), |c| (c.rank(), c.world_size()));
        let is_main = rank == 0;
        let t = &cfg.training;
        let faults = FaultInjection::from_env()?;
        let device = open_device(cfg, opts.collective)?;
        let store = CheckpointStore::new(&paths.checkpoint_dir);
        let resuming = open_run_folder(cfg, paths, opts, &store, is_main)?;
        let data = RunData::open(cfg, paths, opts.progress, opts.collective)?;
        let (model, mut optim, n_params) = build_model(cfg, paths, device, opts.progress)?;
        let plan = Plan::new(cfg, data.train.len(), world);
        let threads = u32::try_from(tch::get_num_threads()).ok();
        let mut state = if resuming {
            resume(
                &store,
                &model,
                &cfg.model,
                &mut optim,
                device,
                opts.progress,
                is_main,
            )?
        } else {
            if let Some(c) = opts.collective {
                // Every rank starts from rank 0's weights.
                c.broadcast_variables(&model.named_variables())?;
            }
            // With adapters the checkpoints hold only the trainable weights and name their
            // base by its digest.
            TrainState {
                base_model: model.peft().is_some().then(|| base_digest(&model)),
                ..fresh_state(cfg, &plan)
            }
        };
        state.intra_op_threads = threads;
        optim.set_lr(state.scheduler.lr());
        let reducer = opts
            .collective
            .filter(|c| c.world_size() > 1)
            .map(|c| c.gradient_reducer(&optim, cfg.distributed.gradient_allreduce_dtype))
            .transpose()?;
        if is_main {
            say(
                opts.progress,
                format!(
                    "training {} ({} trainable parameters) on {:?}, {} process(es): {} train / \
                     {} validation images, {} iterations of global batch {}{} ({} epochs × {})",
                    cfg.experiment_name,
                    n_params,
                    device,
                    world,
                    data.train.len(),
                    data.val_images,
                    plan.total_iterations,
                    plan.global_batch,
                    if plan.per_rank > plan.micro_batch {
                        format!(
                            " ({} micro-batches of {} per process and step)",
                            plan.per_rank / plan.micro_batch.max(1),
                            plan.micro_batch
                        )
                    } else {
                        String::new()
                    },
                    plan.epochs,
                    plan.iters_per_epoch
                ),
            );
        }
        let recipe = RecipeConfig::from_training(t);
        let train_set = Arc::new(data.train);
        let prefetch = start_prefetch(cfg, &train_set, data.sample, &plan, state.iteration, rank);
        let autocast = autocast_kind(t.precision);
        let scaler = LossScaler::new(t.precision == Precision::Fp16, state.scaler.clone());
        let meter = Meter::new(cfg, &model, device, plan.per_rank, plan.global_batch);
        if is_main {
            say(opts.progress, meter.describe());
        }
        let board = if is_main {
            let (board, removed) =
                Board::open(&paths.logs_dir, state.iteration, t.tensorboard_images_every)?;
            if removed > 0 {
                say(
                    opts.progress,
                    format!(
                        "TensorBoard: removed {removed} event(s) after iteration {} that the \
                         interrupted run logged after its last checkpoint (they are logged again)",
                        state.iteration
                    ),
                );
            }
            Some(board)
        } else {
            None
        };
        Ok(Self {
            cfg,
            paths,
            opts,
            started,
            rank,
            world,
            device,
            faults,
            store,
            plan,
            recipe,
            autocast,
            model,
            optim,
            reducer,
            state,
            scaler,
            train_set,
            val_patches: data.val_patches,
            prefetch,
            metrics: MetricsLog::new(&paths.logs_dir),
            board,
            last_validation: None,
            early_stopped: false,
            epoch_started: Instant::now(),
            timing: StepTiming::default(),
            meter,
        })
    }

    /// The iterations, from where the state stands to the end, a requested stop or early
    /// stopping.
    fn run(mut self) -> Result<TrainOutcome, TrainError> {
        if self.state.iteration == 0 {
            self.record_start()?;
        }
        self.opts
            .progress
            .start(self.plan.total_iterations, self.state.iteration);
        self.epoch_started = Instant::now();
        while self.state.iteration < self.plan.total_iterations {
            self.step()?;
            let epoch_end = self.plan.is_epoch_end(self.state.iteration);
            if epoch_end {
                if self.end_epoch()? {
                    break;
                }
            } else if self.periodic_checkpoint_due() {
                self.snapshot(Slot::Latest)?;
            }
            if let Some(summary) = self.stop_if_requested(epoch_end)? {
                return Ok(TrainOutcome::Interrupted(summary));
            }
        }
        self.finish()
    }

    fn is_main(&self) -> bool {
        self.rank == 0
    }

    fn say(&self, line: String) {
        say(self.opts.progress, line);
    }

    /// Writes `slot` (rank 0 only), with the fault injection's pause if one is asked for.
    fn snapshot(&mut self, slot: Slot) -> Result<(), TrainError> {
        self.state.scaler = self.scaler.state().clone();
        if self.is_main() {
            self.store.save_pausing(
                slot,
                &self.model.checkpoint_variables(),
                &self.optim.state_tensors(),
                &self.state,
                self.faults
                    .checkpoint_pause(self.rank, slot, self.state.iteration),
            )?;
        }
        Ok(())
    }

    /// This rank's samples of the next iteration and their indices in the global batch.
    fn next_batch(&mut self) -> Result<(Vec<TrainingSample>, Vec<u64>), TrainError> {
        let per_rank = self.plan.per_rank as usize;
        let mut batch = Vec::with_capacity(per_rank);
        let mut index = Vec::with_capacity(per_rank);
        for _ in 0..per_rank {
            let (k, s) = self
                .prefetch
                .next()
                .ok_or_else(|| TrainError::Samples("the sample pipeline ended early".into()))??;
            index.push(k);
            batch.push(s);
        }
        Ok((batch, index))
    }

    /// Step: one iteration. The batch, forward and backward round by round (gradients averaged
    /// over ranks as the encoder's backward runs), the agreement of all ranks on whether the
    /// loss and gradients are finite, then the update (gradients unscaled, clipped) or the
    /// skip; the epoch sums, progress and log.
    fn step(&mut self) -> Result<(), TrainError> {
        let step_started = Instant::now();
        let reads_before = sam_torch::host_reads();
        let (batch, index) = self.next_batch()?;
        let data_wait = step_started.elapsed().as_secs_f64();
        let refs: Vec<&TrainingSample> = batch.iter().collect();
        self.optim.zero_grad()?;
        let iteration = self.state.iteration;
        let seed = self.cfg.seed;
        // torch's own generator (dropout and any other random op of a model) restarts every
        // step from (seed, iteration, rank), so that a resumed run draws what the
        // uninterrupted one drew without saving the generator. No module draws from it today.
        // Seeded under sam_model's lock, so that it cannot land inside another thread's seeded
        // model build.
        sam_model::seeded(
            derive_seed(seed, &[5, iteration, self.rank as u64]) as i64 & i64::MAX,
            || (),
        );
        // Forward and backward of each micro-batch, its slice of this rank's samples with
        // their global indices and the step's iteration number: the random draws are those of
        // one pass over the whole batch. Each prompting round is back-propagated as it ends;
        // the loss is scaled by 1 / micro-batches so that the gradients sum to the whole
        // batch's. With several ranks, gradients are averaged while the last micro-batch's
        // encoder backward runs: only it arms the reducer, once per optimiser step.
        let arm = self
            .reducer
            .as_ref()
            .map(|r| move |root: Option<&Tensor>| r.arm(root));
        let micro = (self.plan.micro_batch as usize).max(1);
        let n_micro = refs.len().div_ceil(micro).max(1);
        let precision = StepPrecision {
            autocast: self.autocast,
            loss_scale: self.scaler.scale() / n_micro as f64,
            activation_checkpointing: self.cfg.training.activation_checkpointing,
        };
        let mut loss_sum: Option<Tensor> = None;
        for (j, (samples, global_index)) in refs.chunks(micro).zip(index.chunks(micro)).enumerate()
        {
            let last = j + 1 == n_micro;
            let inputs = StepInputs {
                sam: self.model.sam(),
                decoder: self.model.decoder(),
                samples,
                recipe: &self.recipe,
                seed,
                iteration,
                global_index,
                device: self.device,
                before_encoder_backward: arm
                    .as_ref()
                    .filter(|_| last)
                    .map(|f| f as BeforeEncoderBackward<'_>),
            };
            let numbers = step_backward(&inputs, precision)?.numbers();
            loss_sum = Some(match loss_sum {
                Some(sum) => sum + numbers,
                None => numbers,
            });
        }
        let loss_numbers =
            loss_sum.ok_or_else(|| TrainError::Samples("an empty batch".into()))? / n_micro as f64;
        if let Some(r) = &self.reducer {
            r.finish()?;
        }
        let injected = self.faults.nonfinite_at(self.rank, iteration);
        if injected {
            self.optim.scale_grads(f64::NAN)?;
        }
        // The step's numbers and the finiteness of every gradient come to the host in one
        // read: the only time the step waits for the device before the update.
        let numbers = Tensor::cat(
            &[
                loss_numbers,
                self.optim
                    .grads_finite_flag()
                    .to_kind(Kind::Float)
                    .reshape([1]),
            ],
            0,
        );
        let numbers = sam_torch::read_f64s(&numbers)?;
        let mut loss = LossValues::from_numbers(&numbers)?;
        if injected {
            loss.total = f64::NAN;
        }
        let value = loss.total;
        // Whether this step is usable is decided from every rank's loss and gradients
        // together: a non-finite value anywhere skips the step everywhere.
        let local_ok = value.is_finite() && numbers.get(4) == Some(&1.0);
        let taken = match self.opts.collective {
            Some(c) => !c.any(!local_ok)?,
            None => local_ok,
        };
        if taken {
            self.apply_step()?;
        } else {
            self.skip_step(local_ok, value)?;
        }
        self.timing.iterations += 1;
        self.timing.step_seconds += step_started.elapsed().as_secs_f64();
        self.timing.data_wait_seconds += data_wait;
        let reads = sam_torch::host_reads() - reads_before;
        self.timing.max_host_reads_per_step = self.timing.max_host_reads_per_step.max(reads);
        self.state.iteration += 1;
        self.record_step(&StepReport { value, loss, taken })?;
        // The TensorBoard image panel shows the first patch of the batch.
        if let (Some(board), Some(first)) = (self.board.as_mut(), batch.first()) {
            if board.panel_due(self.state.iteration) {
                board.add_panel(self.state.iteration, self.model.sam(), first, self.device)?;
            }
        }
        Ok(())
    }

    /// A step every rank found finite: gradients (averaged over ranks already) unscaled
    /// (fp16), clipped, applied.
    fn apply_step(&mut self) -> Result<(), TrainError> {
        if let ScalerUpdate::Apply { unscale } = self.scaler.update(true) {
            self.optim.scale_grads(unscale)?;
        }
        if let Some(max) = self.cfg.training.grad_clip_norm {
            // The norm stays on the device: reading it would make the step wait.
            let _norm = self.optim.clip_grad_norm(max)?;
        }
        self.optim.step()?;
        self.state.nonfinite_streak = 0;
        Ok(())
    }

    /// A step that was not finite on some rank: skipped. In fp16 the loss scale is halved and
    /// the run goes on; otherwise the run stops after `training.max_nonfinite_steps` in a row.
    fn skip_step(&mut self, local_ok: bool, value: f64) -> Result<(), TrainError> {
        let on = if local_ok {
            "another rank"
        } else {
            "this rank"
        };
        let t = &self.cfg.training;
        let iteration = self.state.iteration;
        if let ScalerUpdate::Skip { new_scale } = self.scaler.update(false) {
            self.say(format!(
                "iteration {}: non-finite loss or gradients (on {on}), step skipped, loss scale \
                 lowered to {new_scale}",
                iteration + 1
            ));
            return Ok(());
        }
        self.state.nonfinite_streak += 1;
        let streak = self.state.nonfinite_streak;
        self.say(format!(
            "warning: iteration {}: non-finite loss or gradients (on {on}), step skipped ({} of \
             {} in a row allowed)",
            iteration + 1,
            streak,
            t.max_nonfinite_steps
        ));
        if streak >= t.max_nonfinite_steps {
            // Every rank is here at the same iteration; `latest` is left as it was after the
            // last good step.
            return Err(TrainError::NonFinite {
                first_iteration: iteration + 1 - u64::from(streak),
                steps: streak,
                value,
                checkpoint: self.store.slot_dir(Slot::Latest),
            });
        }
        Ok(())
    }

    /// Adds a taken step to the epoch sums; reports it to the progress sink, the log and
    /// TensorBoard.
    fn record_step(&mut self, step: &StepReport) -> Result<(), TrainError> {
        if step.taken {
            let sums = &mut self.state.epoch_sums;
            sums.loss += step.value;
            sums.dice_loss += step.loss.dice;
            sums.decoder_loss += step.loss.decoder;
            sums.steps += 1.0;
        }
        let iteration = self.state.iteration;
        self.opts
            .progress
            .step(iteration, step.value, self.optim.lr());
        let every = self.cfg.training.log_every_iterations;
        if every > 0 && iteration % u64::from(every) == 0 && self.is_main() {
            // Throughput over the steps since the previous line: images/s of the global
            // batch, s/step, model TFLOP/s (and share of the GPU's bf16 peak), peak memory.
            let throughput = self
                .meter
                .since_last_line(self.timing.iterations, self.timing.step_seconds);
            let mut speed = throughput
                .as_ref()
                .map(|t| format!("; {}", t.describe()))
                .unwrap_or_default();
            if let Some(memory) = self.meter.peak_memory() {
                speed += &format!(", {memory}");
            }
            if let Some(board) = self.board.as_mut() {
                board.log_line(
                    iteration,
                    &step.loss,
                    self.optim.lr(),
                    throughput.as_ref(),
                    self.meter.peak_memory_bytes(),
                )?;
            }
            tracing::info!(
                "iteration {}/{}: loss {:.4} (dice {:.4}, iou-mse {:.4}, decoder {:.4}), lr {:.3e}{speed}",
                iteration,
                self.plan.total_iterations,
                step.value,
                step.loss.dice,
                step.loss.iou_mse,
                step.loss.decoder,
                self.optim.lr()
            );
        }
        Ok(())
    }

    /// Whether `latest` is written after this (mid-epoch) iteration: every
    /// `training.checkpoint_every_iterations`, except during a run of skipped steps.
    fn periodic_checkpoint_due(&self) -> bool {
        let every = self.cfg.training.checkpoint_every_iterations;
        every > 0
            && self.state.iteration % u64::from(every) == 0
            && self.state.nonfinite_streak == 0
    }

    /// End of epoch: validation (every `training.validate_every_epochs` and at the end), the
    /// metrics row, the scheduler, early stopping and `best`, then `latest`. Returns whether
    /// early stopping ends the run.
    fn end_epoch(&mut self) -> Result<bool, TrainError> {
        let t = &self.cfg.training;
        self.state.epoch += 1;
        let validate_now = t.validate_every_epochs <= 1
            || self.state.epoch % u64::from(t.validate_every_epochs) == 0
            || self.state.iteration == self.plan.total_iterations;
        let scores = if validate_now {
            Some(shared_validation(
                self.model.sam(),
                &self.val_patches,
                self.device,
                self.opts.collective,
                self.faults.validation_offset(self.rank),
            )?)
        } else {
            None
        };
        let record = self.epoch_record(scores);
        self.state.epoch_sums = EpochSums::default();
        self.epoch_started = Instant::now();
        if let Some(s) = scores {
            self.early_stopped = self.after_validation(s, &record)?;
        }
        if self.early_stopped {
            self.state.finished = true;
        }
        // During a run of skipped steps `latest` stays the last good state.
        if self.state.nonfinite_streak == 0 {
            self.snapshot(Slot::Latest)?;
        }
        if self.early_stopped {
            self.say(format!(
                "early stopping after epoch {}: no improvement for {} epochs",
                self.state.epoch,
                self.cfg.training.early_stopping_patience.unwrap_or(0)
            ));
        }
        Ok(self.early_stopped)
    }

    /// The metrics row of the epoch that just ended.
    fn epoch_record(&self, scores: Option<ValidationScores>) -> EpochRecord {
        let sums = self.state.epoch_sums;
        let n = sums.steps.max(1.0);
        EpochRecord {
            epoch: self.state.epoch,
            iteration: self.state.iteration,
            lr: self.optim.lr(),
            train_loss: sums.loss / n,
            train_dice_loss: sums.dice_loss / n,
            train_decoder_loss: sums.decoder_loss / n,
            val_dice: scores.map_or(f64::NAN, |s| s.dice),
            val_box_iou: scores.map_or(f64::NAN, |s| s.box_iou),
            val_msa: scores.map_or(f64::NAN, |s| s.msa),
            val_sa50: scores.map_or(f64::NAN, |s| s.sa50),
            seconds: self.epoch_started.elapsed().as_secs_f64(),
        }
    }

    /// The decisions a validation takes: the log line and metrics row, the scheduler's
    /// learning rate, early stopping, and `best` when the scores beat it. Returns whether
    /// early stopping ends the run.
    fn after_validation(
        &mut self,
        s: ValidationScores,
        record: &EpochRecord,
    ) -> Result<bool, TrainError> {
        self.last_validation = Some(s);
        if self.is_main() {
            self.say(format!(
                "epoch {}/{}: train loss {:.4}, validation mSA {:.4}, SA50 {:.4}, box IoU {:.4}, Dice {:.4}",
                self.state.epoch, self.plan.epochs, record.train_loss, s.msa, s.sa50, s.box_iou, s.dice
            ));
            self.metrics.append(record)?;
            if let Some(board) = self.board.as_mut() {
                board.epoch_row(record)?;
            }
        }
        let state = &mut self.state;
        let decision = checkpoint_decision(
            (s.msa, s.dice),
            state
                .best_metric
                .zip(state.best_dice.or(Some(f64::NEG_INFINITY))),
        );
        state.metric = Some(s.msa);
        let lr = state.scheduler.step(s.msa);
        self.optim.set_lr(lr);
        let stop = state.early_stopping.update(s.msa);
        if decision.save_best {
            state.best_metric = Some(s.msa);
            state.best_dice = Some(s.dice);
            self.snapshot(Slot::Best)?;
        }
        Ok(stop)
    }

    /// Stop: after each iteration the ranks agree whether any was asked to stop
    /// (SIGTERM/SIGUSR1) or this process reached `max_iterations_this_run`; then `latest` is
    /// written (if this iteration did not already), every rank waits for it, and the run ends
    /// as interrupted. `None`: go on.
    fn stop_if_requested(&mut self, epoch_end: bool) -> Result<Option<TrainSummary>, TrainError> {
        let stop_requested = self.opts.stop.is_raised();
        let stop_all = match self.opts.collective {
            Some(c) => c.any(stop_requested)?,
            None => stop_requested,
        };
        let limit_hit = self
            .opts
            .max_iterations_this_run
            .is_some_and(|m| self.timing.iterations >= m);
        if !(stop_all || limit_hit) || self.state.iteration >= self.plan.total_iterations {
            return Ok(None);
        }
        if !epoch_end {
            self.snapshot(Slot::Latest)?;
        }
        if let Some(c) = self.opts.collective {
            // No rank leaves before rank 0 has written the checkpoint: a launcher that kills
            // the job when its first task exits (srun --kill-on-bad-exit) would otherwise cut
            // the write short.
            c.barrier()?;
        }
        if stop_all {
            self.say(format!(
                "stop requested: checkpointed at iteration {} in {}",
                self.state.iteration,
                self.store.slot_dir(Slot::Latest).display()
            ));
        }
        self.opts.progress.finish();
        Ok(Some(self.summary(None, false)))
    }

    /// Finish: the final `latest` (marked finished), the note on images the loader passed
    /// over, the export of the best model (rank 0), and every rank's statement of its
    /// decisions.
    fn finish(mut self) -> Result<TrainOutcome, TrainError> {
        self.opts.progress.finish();
        self.state.finished = true;
        self.snapshot(Slot::Latest)?;
        let skipped = self.train_set.skipped_images();
        if self.is_main() && !skipped.is_empty() {
            self.say(format!(
                "{} training image(s) had no patch with enough objects and were passed over by \
                 this rank's loader: {}",
                skipped.len(),
                skipped.join("; ")
            ));
        }
        let export_path = if self.is_main() {
            let exported = self.export()?;
            self.record_end()?;
            Some(exported)
        } else {
            None
        };
        if let Some(c) = self.opts.collective {
            c.barrier()?;
        }
        // Every rank states the decisions it took; they must be the same on all of them.
        tracing::info!(
            "rank {} of {} finished: {} epochs, {} iterations, lr {:e}, best validation mSA {}, \
             early stopped {}",
            self.rank,
            self.world,
            self.state.epoch,
            self.state.iteration,
            self.optim.lr(),
            self.state
                .best_metric
                .map_or("none".into(), |m| format!("{m:.6}")),
            self.early_stopped
        );
        Ok(TrainOutcome::Finished(
            self.summary(export_path, self.early_stopped),
        ))
    }

    /// The validation scores of the starting model, before the first step, as the `start` row
    /// of `logs/comparison.csv` (every rank validates its share, rank 0 writes). A run that
    /// starts again from the beginning keeps the row it wrote first.
    fn record_start(&mut self) -> Result<(), TrainError> {
        let s = shared_validation(
            self.model.sam(),
            &self.val_patches,
            self.device,
            self.opts.collective,
            self.faults.validation_offset(self.rank),
        )?;
        let record = ComparisonRecord::new(
            ComparisonStage::Start,
            self.state.epoch,
            self.state.iteration,
            &s,
        );
        if self.is_main() && ComparisonLog::new(&self.paths.logs_dir).record(&record)? {
            self.say(format!(
                "starting model: validation mSA {:.4}, SA50 {:.4}, box IoU {:.4}, Dice {:.4}",
                s.msa, s.sa50, s.box_iou, s.dice
            ));
        }
        Ok(())
    }

    /// The validation scores of the exported model (the epoch of `best`, from metrics.csv) as
    /// the `end` row of `logs/comparison.csv`, and the line comparing it with the start (rank 0).
    fn record_end(&self) -> Result<(), TrainError> {
        let rows = self.metrics.read()?;
        let best = self
            .state
            .best_metric
            .and_then(|msa| best_epoch(&rows, msa, self.state.best_dice))
            .or_else(|| rows.iter().rev().find(|r| r.val_msa.is_finite()));
        let Some(best) = best else {
            return Ok(());
        };
        let end = ComparisonRecord::from_epoch(ComparisonStage::End, best);
        let log = ComparisonLog::new(&self.paths.logs_dir);
        log.record(&end)?;
        if let Some(start) = log.get(ComparisonStage::Start)? {
            self.say(comparison_line(&start, &end));
        }
        Ok(())
    }

    /// Exports `best` (or `latest` when no validation ever ran) to the config's export path.
    fn export(&self) -> Result<PathBuf, TrainError> {
        let slot = if self.store.exists(Slot::Best) {
            Slot::Best
        } else {
            Slot::Latest
        };
        let source = self.store.slot_dir(slot);
        let target = &self.paths.export_path;
        if target.exists() {
            self.say(format!(
                "replacing {} (an earlier export) with this run's {} model",
                target.display(),
                slot.name()
            ));
        }
        export_model(
            &source,
            target,
            ExportOptions {
                with_decoder: self.model.has_decoder(),
                replace: true,
                peft_layout: Default::default(),
            },
        )?;
        self.say(format!(
            "exported {} to {}",
            source.display(),
            target.display()
        ));
        Ok(target.clone())
    }

    fn summary(&self, export_path: Option<PathBuf>, early_stopped: bool) -> TrainSummary {
        TrainSummary {
            epochs: self.state.epoch,
            iterations: self.state.iteration,
            best_msa: self.state.best_metric,
            last_validation: self.last_validation,
            export_path,
            run_dir: self.paths.run_dir.clone(),
            early_stopped,
            seconds: self.started.elapsed().as_secs_f64(),
            timing: self.timing,
            throughput: self
                .meter
                .throughput(self.timing.iterations, self.timing.step_seconds),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{tf32_for, Precision, StepTiming};

    #[test]
    fn tf32_follows_the_hardware_switch_and_the_tf32_precision() {
        let on = sam_config::HardwareConfig::default();
        assert!(on.tf32, "TF32 is on by default");
        let off = sam_config::HardwareConfig {
            tf32: false,
            ..on.clone()
        };
        assert!(tf32_for(Precision::Fp32, &on));
        assert!(tf32_for(Precision::Bf16, &on));
        assert!(!tf32_for(Precision::Fp32, &off));
        assert!(!tf32_for(Precision::Bf16, &off));
        assert!(tf32_for(Precision::Tf32, &off));
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
            ..StepTiming::default()
        };
        assert!((t.seconds_per_iteration() - 0.5).abs() < 1e-12);
        assert!((t.data_wait_share() - 0.25).abs() < 1e-12);
    }
}
