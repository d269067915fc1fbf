//! sam-data: everything between brightfield files on disk and tensors in the trainer.
//!
//! - [`read_image`] / [`read_labels`] / [`pair_by_stem`] read 8/16-bit grey or RGB images and
//!   u8/u16/u32 instance label images (TIFF, PNG); [`write_image`] / [`write_labels`] write them
//!   atomically.
//! - [`preprocess`] is the one preprocessing step (percentile normalisation and clipping)
//!   shared by training, evaluation and inference.
//! - [`synthesize`] draws synthetic brightfield images with exact instance labels.
//! - [`augment_pair`] and [`augment_folder`] run the offline augmentation.
//! - [`gaussian_blur`] is the Gaussian filter of the augmentation and of AIS post-processing.
//! - [`check_folders`] checks a dataset before training (pairs, files, contrast, labels,
//!   patches, normalisation) and returns every finding at once as a [`DataCheck`].
//! - [`PatchSampler`], [`ais_targets`], [`PromptSampler`], [`split_by_image`] / [`hold_out`] and
//!   [`Prefetcher`] make training samples.
//!
//! The crate hands out plain buffers ([`GreyImage`], [`LabelImage`], `Vec<f32>`); it links no
//! torch. Images, label images and masks are [`Plane`]s: `rows × cols`, row-major, indexed
//! `(row, col)` as numpy and torch index an `[H, W]` array; positions and sizes are given row
//! first everywhere (`crop(top, left, height, width)`). The label toolkit
//! ([`connected_components`] with one [`Connectivity`], [`relabel_consecutive`],
//! [`label_sizes`], [`size_filter`], [`inner_boundaries`], …) is the one evaluation and
//! inference use too.
//!
//! # Example
//! ```
//! use sam_data::{ais_targets, preprocess, synthesize, Normalization, SynthConfig};
//!
//! let sample = synthesize(&SynthConfig { size: 128, ..SynthConfig::default() }, 7);
//! let input = preprocess(&sample.image, &Normalization::default())?;
//! assert_eq!(input.len(), 128 * 128);
//! let targets = ais_targets(&sample.labels, 25);
//! assert_eq!(targets.data.len(), 3 * 128 * 128);
//! # Ok::<(), sam_data::DataError>(())
//! ```
#![deny(missing_docs)]

mod augment;
mod blur;
mod check;
mod error;
mod folder;
mod image;
mod io;
mod labels;
mod overlay;
mod pipeline;
mod plane;
mod preprocess;
mod prompts;
mod rng;
mod samples;
mod synth;
mod targets;

pub use crate::augment::{
    apply_ops, augment_pair, plan_ops, AffineOp, AppliedOp, AugmentConfig, Augmented, ElasticOp,
    RangeOp,
};
pub use crate::blur::{gaussian_blur, gaussian_kernel};
pub use crate::check::{
    check_folders, CheckOptions, CheckSummary, Contrast, DataCheck, Distribution, Finding,
    FindingKind, ImageCheck, ImageStats, LabelStats, Severity, CONTRAST_MARGIN,
    RANGE_OUTLIER_FACTOR, RARE_PATCH_MISS_PROBABILITY, SATURATION_SHARE,
};
pub use crate::error::{DataError, Result};
pub use crate::folder::{
    augment_folder, AugmentJob, AugmentSummary, Manifest, ManifestEntry, Progress,
};
pub use crate::image::{BitDepth, GreyImage, LabelImage};
pub use crate::io::{
    file_info, image_dimensions, pair_by_stem, read_image, read_image_region, read_labels,
    read_pair, write_atomic, write_image, write_labels, FileInfo, ImagePair, SampleFormat,
};
pub use crate::labels::{
    connected_components, inner_boundaries, label_sizes, object_stats, prepare_instances,
    relabel_consecutive, remove_small_objects, size_filter, split_fragments, Connectivity,
    ObjectStats,
};
pub use crate::overlay::{outline_overlay, write_overlay_png};
pub use crate::pipeline::Prefetcher;
pub use crate::plane::Plane;
pub use crate::preprocess::{
    normalization_bounds, normalize_with_bounds, percentiles, preprocess, Normalization,
};
pub use crate::prompts::{BoxPrompt, Point, PromptSampler};
pub use crate::rng::derive_seed;
pub use crate::samples::{
    hold_out, split_by_image, Dataset, Patch, PatchConfig, PatchPositions, PatchSampler,
    SampleConfig, TrainingSample,
};
pub use crate::synth::{synthesize, SynthConfig, SynthSample};
pub use crate::targets::{ais_targets, distance_transform, AisTargets};
