//! sam-train: fine-tuning Segment Anything the micro_sam way, resumable and distributed.
//!
//! [`train`] runs an experiment from its [`sam_config::ExperimentConfig`] into
//! `runs/<experiment>/`:
//!
//! ```text
//! runs/<experiment>/.sam-train-run                       marks the folder as a run (RUN_MARKER)
//! runs/<experiment>/config.yaml                          the resolved config used
//! runs/<experiment>/checkpoints/<checkpoint_name>/latest/  model, optimiser, state (resume)
//! runs/<experiment>/checkpoints/<checkpoint_name>/best/    best validation mSA
//! runs/<experiment>/logs/{train.log,metrics.csv,curves.png}
//! ```
//!
//! and exports the best model to `export_path` with [`export_model`]. The pieces are small and
//! testable on their own: [`step_backward`] (one step of the iterative-prompting recipe,
//! back-propagated round by round; [`step_loss`] builds the same loss as one graph), [`AdamW`]
//! (an optimiser whose state we own), [`LrScheduler`], [`EarlyStopping`],
//! [`checkpoint_decision`], the losses in [`losses`], atomic checkpoints in [`CheckpointStore`],
//! data-parallel training over c10d in [`Collective`].
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sam_train::{prepare_run, train, NoProgress, StopFlag, TrainOptions};
//! let root = std::path::PathBuf::from(".");
//! let cfg = sam_config::load_config("configs/demo_cpu.yaml")?.config;
//! let paths = prepare_run(&cfg, &root, false, false)?.paths;
//! let opts = TrainOptions {
//!     root, resume: false, overwrite: false, stop: StopFlag::new(), progress: &NoProgress,
//!     collective: None, max_iterations_this_run: None,
//! };
//! let outcome = train(&cfg, &paths, &opts)?;
//! # let _ = outcome; Ok(()) }
//! ```
#![deny(missing_docs)]

mod checkpoint;
mod distributed;
mod export;
pub mod losses;
mod optim;
mod report;
mod schedule;
mod setup;
mod signals;
mod step;
mod trainer;
mod validation;

pub use checkpoint::{Checkpoint, CheckpointStore, EpochSums, ScalerState, Slot, TrainState};
pub use distributed::Collective;
pub use export::{export_model, ExportOptions};
pub use optim::{AdamW, AdamWConfig};
pub use report::{draw_curves, EpochRecord, MetricsLog};
pub use schedule::{
    checkpoint_decision, CheckpointDecision, EarlyStopping, LrScheduler, ScheduleKind,
};
pub use setup::{device_for, sam_config, unetr_config, Model, DECODER_PREFIX};
pub use signals::StopFlag;
pub use step::{model_input, step_backward, step_loss, RecipeConfig, StepLoss, StepPrecision};
pub use trainer::{
    prepare_run, train, NoProgress, PreparedRun, StepTiming, TrainOptions, TrainOutcome,
    TrainProgress, TrainSummary, REQUEUE_EXIT_CODE, RUN_MARKER,
};
pub use validation::{validate, validation_totals, ValidationScores, ValidationTotals};

use std::path::PathBuf;

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written (the message names it).
    #[error("{0}")]
    Io(String),
    /// A checkpoint that was asked for does not exist.
    #[error("{0}")]
    MissingCheckpoint(String),
    /// Saved state does not fit the model or optimiser.
    #[error("{0}")]
    State(String),
    /// The run folder exists and neither resume nor overwrite was asked for.
    #[error("run folder {0} already exists: pass --resume to continue it or --overwrite to start over (nothing was changed)")]
    RunExists(PathBuf),
    /// The run folder exists without a checkpoint (stopped before its first one) and neither
    /// resume nor overwrite was asked for.
    #[error("run folder {0} already exists but holds no checkpoint yet (its run stopped before the first one): pass --resume to start it again from the beginning in this folder, or --overwrite to clear it first (nothing was changed)")]
    RunWithoutCheckpoint(PathBuf),
    /// The run folder path holds something that this tool did not create as a run.
    #[error("{} is not a run folder of sam-train ({reason}): sam-train neither writes into it nor deletes it, --overwrite included. Set another output_base_dir or experiment_name in the config, or move the folder away (nothing was changed)", dir.display())]
    NotARunFolder {
        /// The folder.
        dir: PathBuf,
        /// Why it is not a run.
        reason: String,
    },
    /// Contradictory options.
    #[error("{0}")]
    Usage(String),
    /// Building or loading the model failed.
    #[error("model: {0}")]
    Model(String),
    /// Reading or sampling the data failed.
    #[error("data: {0}")]
    Data(String),
    /// The loss or the gradients stopped being numbers for too many steps in a row.
    #[error(
        "the loss or gradients were not finite for {steps} consecutive steps (from iteration \
         {}, on at least one rank; this rank's last loss {value}); every rank stopped and the \
         last good checkpoint is kept in {} (lower training.lr, enable \
         training.grad_clip_norm, or use fp32)",
        first_iteration + 1,
        checkpoint.display()
    )]
    NonFinite {
        /// Completed steps before the first skipped one (0-based index of that step).
        first_iteration: u64,
        /// Consecutive skipped steps.
        steps: u32,
        /// This rank's last loss value.
        value: f64,
        /// The last good checkpoint.
        checkpoint: PathBuf,
    },
    /// A collective operation failed (a peer died or timed out).
    #[error("distributed: {0}")]
    Distributed(String),
}

impl TrainError {
    /// Whether the error is the user's request or config, not a failure of the run (the
    /// executable exits 2 for these): contradictory flags, a run folder that exists or is not a
    /// run, an export that would overwrite its input or an existing file.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            TrainError::Usage(_)
                | TrainError::RunExists(_)
                | TrainError::RunWithoutCheckpoint(_)
                | TrainError::NotARunFolder { .. }
        )
    }
}
