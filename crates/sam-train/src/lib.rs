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
//! runs/<experiment>/logs/comparison.csv                  validation of the starting and exported model
//! runs/<experiment>/logs/tensorboard/events.out.tfevents.*  the same numbers and image panels
//! ```
//!
//! and exports the best model to `export_path` with [`export_model`]. The run is a sequence of
//! short phases (setup, step, end of epoch, stop, finish; see the crate README), built from
//! pieces that are small and testable on their own: [`step_backward`] (one step of the
//! iterative-prompting recipe on its [`StepInputs`], back-propagated round by round;
//! [`step_loss`] builds the same loss as one graph), [`AdamW`] (an optimiser whose state we
//! own), [`LossScaler`] (fp16 dynamic loss scaling), [`LrScheduler`], [`EarlyStopping`],
//! [`checkpoint_decision`], the losses in [`losses`], atomic checkpoints in [`CheckpointStore`],
//! data-parallel training over c10d in [`Collective`], and in [`fit`] the probe and the search
//! behind `sam-train fit` (the largest batch size and objects per image that fit in memory). Errors are [`TrainError`]s whose
//! `source()` is the underlying error.
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

mod board;
mod checkpoint;
mod comparison;
mod corrective;
mod data;
mod distributed;
mod error;
mod export;
mod export_bioimageio;
mod export_torchscript;
mod faults;
pub mod fit;
pub mod losses;
mod optim;
mod report;
mod run_folder;
mod scaler;
mod schedule;
mod setup;
mod signals;
mod step;
pub mod tensorboard;
mod throughput;
mod trainer;
mod validation;

pub use board::{panel, PANEL_GAP, PANEL_OBJECTS, PANEL_TAG, TENSORBOARD_DIR};
pub use checkpoint::{Checkpoint, CheckpointStore, EpochSums, Slot, TrainState};
pub use comparison::{
    best_epoch, comparison_line, ComparisonLog, ComparisonRecord, ComparisonStage,
};
pub use distributed::{Collective, GradientReducer, GRADIENT_BUCKET_BYTES};
pub use error::{BoxError, TrainError};
pub use export::{export_model, ExportOptions, PeftLayout};
pub use export_bioimageio::{export_bioimageio, BioImageIoOptions, PYTORCH_VERSION};
pub use export_torchscript::{
    export_torchscript, files as torchscript_files, ExportNormalization, TorchScriptOptions,
};
pub use optim::{AdamW, AdamWConfig};
pub use report::{draw_curves, EpochRecord, MetricsLog};
pub use run_folder::{prepare_run, PreparedRun, RUN_MARKER};
pub use scaler::{LossScaler, ScalerState, ScalerUpdate, GROWTH_INTERVAL};
pub use schedule::{
    checkpoint_decision, CheckpointDecision, EarlyStopping, LrScheduler, ScheduleKind,
};
pub use setup::{
    base_digest, device_for, load_initial, load_resumed, native_input_size, new_model, peft_spec,
    sam_config, unetr_config,
};
pub use signals::StopFlag;
pub use step::{
    autocast_kind, model_input, step_backward, step_loss, BeforeEncoderBackward, LossValues,
    RecipeConfig, StepInputs, StepLoss, StepPrecision,
};
pub use throughput::{
    dense_bf16_peak_tflops, training_step_flops, EncoderPiece, StepShape, Throughput, TrainedParts,
};
pub use trainer::{
    train, NoProgress, StepTiming, TrainOptions, TrainOutcome, TrainProgress, TrainSummary,
    REQUEUE_EXIT_CODE,
};
pub use validation::{validate, validation_totals, ValidationScores, ValidationTotals};
