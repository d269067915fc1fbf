//! The training section.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Numeric precision of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Full fp32 everywhere (the only choice on CPU).
    Fp32,
    /// fp32 weights, TF32 matrix products on Ampere or newer GPUs.
    Tf32,
    /// bf16 autocast on the GPU, fp32 weights; no loss scaling needed (A100, A40).
    Bf16,
    /// fp16 autocast on the GPU with a dynamic loss scaler.
    Fp16,
}

impl Precision {
    /// The name used in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The device a training process runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// CUDA when available, else CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA GPU (the local rank's GPU in distributed runs).
    Cuda,
}

/// Which image-encoder blocks recompute their activations in the backward instead of keeping
/// them from the forward (activation checkpointing): less memory for more compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActivationCheckpointing {
    /// Every block keeps its activations (fastest).
    #[default]
    None,
    /// The global-attention blocks (`global_attn_indexes`, the largest activations) recompute.
    Global,
    /// Every transformer block recomputes (least memory; about one more encoder forward).
    All,
}

impl ActivationCheckpointing {
    /// The name used in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationCheckpointing::None => "none",
            ActivationCheckpointing::Global => "global",
            ActivationCheckpointing::All => "all",
        }
    }
}

impl fmt::Display for ActivationCheckpointing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// Multiply the learning rate by `factor` after `patience` validations without improvement
    /// (micro_sam's default: factor 0.9, patience 3).
    ReduceOnPlateau,
    /// Cosine decay from `lr` to `min_lr` over the whole run.
    Cosine,
    /// Keep `lr` fixed.
    Constant,
}

/// Learning-rate schedule and its parameters. Fields that the chosen `kind` does not use are
/// ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Which schedule.
    pub kind: SchedulerKind,
    /// `reduce_on_plateau`: factor (0–1, exclusive) applied on a plateau.
    pub factor: f64,
    /// `reduce_on_plateau`: validations without improvement before the learning rate drops.
    pub patience: u32,
    /// Lower bound of the learning rate (`reduce_on_plateau`) or its final value (`cosine`).
    pub min_lr: f64,
    /// Iterations of linear warm-up from 0 to `lr` before the schedule starts (0 = none).
    pub warmup_iterations: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            kind: SchedulerKind::ReduceOnPlateau,
            factor: 0.9,
            patience: 3,
            min_lr: 0.0,
            warmup_iterations: 0,
        }
    }
}

/// The optimisation (micro_sam's recipe by default: AdamW, lr 1e-5, 8 prompt sub-iterations,
/// mask input with p = 0.5, ReduceLROnPlateau(0.9, 3), early stopping after 10 epochs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// Patches per micro-batch and per training process: one forward and backward. The global
    /// batch of an optimiser step is this times `gradient_accumulation` times the world size.
    pub batch_size: u32,
    /// Micro-batches of `batch_size` patches whose gradients are summed before each optimiser
    /// step (≥ 1): the step equals one over the `gradient_accumulation`-times larger batch
    /// (the UNETR decoder's batch norms excepted: they see each micro-batch). Iterations,
    /// schedule, logging and checkpoints count optimiser steps.
    pub gradient_accumulation: u32,
    /// Image-encoder blocks whose activations are recomputed in the backward instead of kept:
    /// `none`, `global` (the global-attention blocks) or `all` (every block). Gradients are
    /// the same; memory goes down, compute up. ViT encoders only (not `vit_t`).
    pub activation_checkpointing: ActivationCheckpointing,
    /// Objects sampled per patch for the prompted loss (micro_sam: 25).
    pub n_objects_per_batch: u32,
    /// Iterative prompting rounds per batch (micro_sam: 8).
    pub n_sub_iteration: u32,
    /// Probability (0–1) that the previous round's low-resolution logits are given as mask
    /// input (micro_sam: 0.5).
    pub mask_prob: f64,
    /// Boxes derived from the labels are jittered by up to this fraction of their size
    /// (micro_sam: 0.025).
    pub box_distortion_factor: f64,
    /// Number of epochs. Ignored when `iterations` is set.
    pub epochs: Option<u32>,
    /// Number of optimiser steps; overrides `epochs` when set.
    pub iterations: Option<u64>,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW `[beta1, beta2]`.
    pub betas: [f64; 2],
    /// AdamW epsilon.
    pub eps: f64,
    /// Learning-rate schedule.
    pub scheduler: SchedulerConfig,
    /// Stop after this many validations without a better validation mSA; `null` never stops.
    pub early_stopping_patience: Option<u32>,
    /// Numeric precision.
    pub precision: Precision,
    /// Clip the global gradient norm to this value; `null` disables clipping.
    pub grad_clip_norm: Option<f64>,
    /// A step whose loss or gradients are not finite on any rank is skipped on every rank;
    /// after this many consecutive such steps (fp32/bf16) every rank stops together and the
    /// last good checkpoint is kept. fp16 instead lowers the loss scale, as PyTorch's
    /// GradScaler, and never stops.
    pub max_nonfinite_steps: u32,
    /// Weight of an extra focal-loss term on the masks (0 = Dice + IoU-MSE only).
    pub focal_loss_weight: f64,
    /// Write a log line (and metrics row) every this many iterations.
    pub log_every_iterations: u32,
    /// Add an image panel to the run's TensorBoard log (`logs/tensorboard/`) every this many
    /// iterations: the first patch of the step's batch with the box prompts of up to 4 objects,
    /// their true masks and the masks the model predicts from those boxes (0 = no images).
    pub tensorboard_images_every: u32,
    /// Overwrite `latest` checkpoint every this many iterations (and at every epoch end).
    pub checkpoint_every_iterations: u32,
    /// Also keep a numbered checkpoint every this many epochs; `null` keeps only latest/best.
    pub save_every_kth_epoch: Option<u32>,
    /// Validate every this many epochs.
    pub validate_every_epochs: u32,
    /// Resume from `latest` of this run when it exists.
    pub resume: bool,
    /// Device of each training process.
    pub device: Device,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            batch_size: 1,
            gradient_accumulation: 1,
            activation_checkpointing: ActivationCheckpointing::None,
            n_objects_per_batch: 25,
            n_sub_iteration: 8,
            mask_prob: 0.5,
            box_distortion_factor: 0.025,
            epochs: Some(100),
            iterations: None,
            lr: 1e-5,
            weight_decay: 0.01,
            betas: [0.9, 0.999],
            eps: 1e-8,
            scheduler: SchedulerConfig::default(),
            early_stopping_patience: Some(10),
            precision: Precision::Fp32,
            grad_clip_norm: None,
            max_nonfinite_steps: 5,
            focal_loss_weight: 0.0,
            log_every_iterations: 50,
            tensorboard_images_every: 100,
            checkpoint_every_iterations: 500,
            save_every_kth_epoch: None,
            validate_every_epochs: 1,
            resume: true,
            device: Device::Auto,
        }
    }
}
