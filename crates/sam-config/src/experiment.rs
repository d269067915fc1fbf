//! The top-level experiment config and the data and augmentation sections.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cluster::{DistributedConfig, HardwareConfig, SlurmConfig};
use crate::evaluation::{EvaluationConfig, InferenceConfig};
use crate::model::ModelConfig;
use crate::training::TrainingConfig;

/// One experiment: what to train on, which model, how to train, where it runs and where the
/// results go. All relative paths are relative to the repository root (see `RunPaths`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "sam_trainer experiment config")]
pub struct ExperimentConfig {
    /// Name of the experiment: the run folder is `<output_base_dir>/<experiment_name>/`.
    /// Letters, digits, `_`, `-` and `.` only.
    pub experiment_name: String,
    /// Folder that holds the run folders, relative to the repository root (normally `runs`).
    /// It may not be, contain or lie inside a data, model or config folder.
    pub output_base_dir: PathBuf,
    /// Name of the checkpoint folder inside the run: `<run>/checkpoints/<checkpoint_name>/`.
    /// Letters, digits, `_`, `-` and `.` only.
    pub checkpoint_name: String,
    /// Where the final model is exported, relative to the repository root. Must lie under
    /// `final_models/`, contain the experiment name and end in `.pt` or `.pth`.
    pub export_path: PathBuf,
    /// Seed for every random choice (data split, patch sampling, prompts, initialisation).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Training and validation data.
    #[serde(default)]
    pub data: DataConfig,
    /// Offline augmentation of the raw annotated data (`sam-augment`).
    #[serde(default)]
    pub augmentation: AugmentationConfig,
    /// The SAM model: backbone, initial weights, decoder, frozen parts.
    #[serde(default)]
    pub model: ModelConfig,
    /// The optimisation: batch, prompts, learning rate, schedule, precision, cadence.
    #[serde(default)]
    pub training: TrainingConfig,
    /// Multi-process training: backend, nodes and GPUs per node.
    #[serde(default)]
    pub distributed: DistributedConfig,
    /// The accelerator the run is sized for; selects the preset limits.
    #[serde(default)]
    pub hardware: HardwareConfig,
    /// SLURM resources for `scripts/submit_training_a100.sh`.
    #[serde(default)]
    pub slurm: SlurmConfig,
    /// Evaluation on held-out test images (`sam-eval`).
    #[serde(default)]
    pub evaluation: EvaluationConfig,
    /// Inference on new images (`sam-infer`).
    #[serde(default)]
    pub inference: InferenceConfig,
}

fn default_seed() -> u64 {
    42
}

/// Training and validation data, and how images are turned into network input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Folder of training images (grey or RGB TIFF/PNG), relative to the repository root.
    pub train_images_dir: PathBuf,
    /// Folder of training instance labels (0 = background, 1..N = objects), matched to the
    /// images by file stem.
    pub train_labels_dir: PathBuf,
    /// Where validation images come from: explicit folders, or a fraction of the training
    /// images held out by image (never by patch).
    pub validation: ValidationSplit,
    /// Expected size of every image, `[height, width]` in pixels.
    pub image_shape: [u32; 2],
    /// Size of the training patches cut from the images, `[height, width]` in pixels.
    pub patch_shape: [u32; 2],
    /// Objects smaller than this many pixels are ignored when sampling patches and prompts.
    pub min_object_size: u32,
    /// A patch is only used when it holds at least this many objects of `min_object_size`
    /// (micro_sam's `MinInstanceSampler` default: 2; at least 1). An image without such a
    /// patch is skipped with a warning.
    pub min_objects_per_patch: u32,
    /// Training patches per epoch. `null`: max(number of training images, 100), as micro_sam.
    pub samples_per_epoch: Option<u64>,
    /// Percentile normalisation, identical in training, evaluation and inference.
    pub normalization: NormalizationConfig,
    /// Data-loading worker threads per training process.
    pub num_workers: u32,
    /// Batches prepared ahead of the accelerator per training process.
    pub prefetch_batches: u32,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train_images_dir: PathBuf::from("dat/augmented_training_data/images"),
            train_labels_dir: PathBuf::from("dat/augmented_training_data/labels"),
            validation: ValidationSplit::default(),
            image_shape: [2048, 2048],
            patch_shape: [512, 512],
            min_object_size: 25,
            min_objects_per_patch: 2,
            samples_per_epoch: None,
            normalization: NormalizationConfig::default(),
            num_workers: 4,
            prefetch_batches: 4,
        }
    }
}

/// Where validation images come from. Give either both folders, or neither and a fraction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationSplit {
    /// Folder of validation images; `null` to hold out a fraction of the training images.
    pub images_dir: Option<PathBuf>,
    /// Folder of validation labels; set together with `images_dir`.
    pub labels_dir: Option<PathBuf>,
    /// Fraction of training images (whole images, chosen with `seed`) held out for
    /// validation when no folders are given. Must be `null` when folders are given.
    pub fraction: Option<f64>,
}

impl Default for ValidationSplit {
    fn default() -> Self {
        Self {
            images_dir: None,
            labels_dir: None,
            fraction: Some(0.1),
        }
    }
}

/// Where the validation images of a run come from, as resolved from [`ValidationSplit`].
#[derive(Debug, Clone, PartialEq)]
pub enum ValidationSource {
    /// Explicit folders.
    Dirs {
        /// Validation images.
        images: PathBuf,
        /// Validation labels.
        labels: PathBuf,
    },
    /// This fraction of the training images, split by image.
    Fraction(f64),
}

impl ValidationSplit {
    /// The validation source, or `None` when the split is inconsistent (see `validate`).
    pub fn source(&self) -> Option<ValidationSource> {
        match (&self.images_dir, &self.labels_dir, self.fraction) {
            (Some(i), Some(l), None) => Some(ValidationSource::Dirs {
                images: i.clone(),
                labels: l.clone(),
            }),
            (None, None, Some(f)) => Some(ValidationSource::Fraction(f)),
            _ => None,
        }
    }
}

/// Percentile normalisation: `(x - p_low) / (p_high - p_low)`, optionally clipped to `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NormalizationConfig {
    /// Lower percentile (0–100) mapped to 0.
    pub lower_percentile: f64,
    /// Upper percentile (0–100) mapped to 1; greater than `lower_percentile`.
    pub upper_percentile: f64,
    /// Clip the normalised values to `[0, 1]`.
    pub clip: bool,
}

impl Default for NormalizationConfig {
    fn default() -> Self {
        Self {
            lower_percentile: 1.0,
            upper_percentile: 99.8,
            clip: true,
        }
    }
}

/// Offline augmentation: writes `copies_per_image` transformed copies of every raw image and
/// label into the augmented folders. The raw folders are only read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentationConfig {
    /// Raw annotated images (never written to).
    pub source_images_dir: PathBuf,
    /// Raw annotated labels (never written to).
    pub source_labels_dir: PathBuf,
    /// Where augmented images are written.
    pub output_images_dir: PathBuf,
    /// Where augmented labels are written.
    pub output_labels_dir: PathBuf,
    /// Augmented copies written per raw image.
    pub copies_per_image: u32,
    /// Also copy each original image unchanged into the output folders.
    pub include_original: bool,
    /// The operations, each applied to a copy with its own probability.
    pub operations: AugmentationOps,
}

impl Default for AugmentationConfig {
    fn default() -> Self {
        Self {
            source_images_dir: PathBuf::from("dat/training_data/images"),
            source_labels_dir: PathBuf::from("dat/training_data/labels"),
            output_images_dir: PathBuf::from("dat/augmented_training_data/images"),
            output_labels_dir: PathBuf::from("dat/augmented_training_data/labels"),
            copies_per_image: 8,
            include_original: true,
            operations: AugmentationOps::default(),
        }
    }
}

/// An operation without parameters, applied with a probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbabilityOp {
    /// Probability (0–1) that the operation is applied to a copy.
    pub probability: f64,
}

/// An operation with one parameter drawn uniformly from `range`, applied with a probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RangeOp {
    /// Probability (0–1) that the operation is applied to a copy.
    pub probability: f64,
    /// `[low, high]` of the uniformly drawn parameter; `low <= high`.
    pub range: [f64; 2],
}

/// Elastic deformation: a random displacement field smoothed with a Gaussian.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElasticOp {
    /// Probability (0–1) that the operation is applied to a copy.
    pub probability: f64,
    /// Displacement magnitude in pixels.
    pub alpha: f64,
    /// Smoothing sigma of the displacement field in pixels.
    pub sigma: f64,
}

/// The augmentation operations. Geometric operations move image and label together (labels
/// with nearest-neighbour sampling); intensity operations touch the image only and keep the
/// objects darker than the background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentationOps {
    /// Mirror left–right.
    pub flip_horizontal: ProbabilityOp,
    /// Mirror top–bottom.
    pub flip_vertical: ProbabilityOp,
    /// Rotate by a random multiple of 90 degrees.
    pub rotate90: ProbabilityOp,
    /// Rotate by an angle in degrees drawn from `range`.
    pub rotation: RangeOp,
    /// Zoom by a factor drawn from `range` (1 = unchanged), keeping the image size.
    pub scale: RangeOp,
    /// Add an offset drawn from `range`, in units of the image's intensity span.
    pub brightness: RangeOp,
    /// Multiply the contrast around the mean by a factor drawn from `range`.
    pub contrast: RangeOp,
    /// Gamma correction with an exponent drawn from `range`.
    pub gamma: RangeOp,
    /// Additive Gaussian noise with a sigma drawn from `range` (units of the intensity span).
    pub gaussian_noise: RangeOp,
    /// Gaussian blur with a sigma in pixels drawn from `range`.
    pub gaussian_blur: RangeOp,
    /// Elastic deformation.
    pub elastic: ElasticOp,
}

impl Default for AugmentationOps {
    fn default() -> Self {
        let p = |probability| ProbabilityOp { probability };
        let r = |probability, low, high| RangeOp {
            probability,
            range: [low, high],
        };
        Self {
            flip_horizontal: p(0.5),
            flip_vertical: p(0.5),
            rotate90: p(0.5),
            rotation: r(0.3, -45.0, 45.0),
            scale: r(0.3, 0.8, 1.25),
            brightness: r(0.5, -0.1, 0.1),
            contrast: r(0.5, 0.8, 1.25),
            gamma: r(0.3, 0.8, 1.25),
            gaussian_noise: r(0.3, 0.0, 0.03),
            gaussian_blur: r(0.2, 0.5, 1.5),
            elastic: ElasticOp {
                probability: 0.0,
                alpha: 30.0,
                sigma: 5.0,
            },
        }
    }
}
