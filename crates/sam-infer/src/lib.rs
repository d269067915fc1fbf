//! sam-infer: automatic instance segmentation (AIS, AMG, APG), prompted segmentation and tiling
//! for SAM.
//!
//! The post-processing is plain Rust on sam-data's [`Plane`](sam_data::Plane)s (indexed
//! `(row, col)`), usable without a model:
//!
//! - [`ais_segment`] turns the UNETR decoder's foreground / centre-distance / boundary-distance
//!   maps ([`DecoderMaps`]) into instance labels exactly as micro_sam's
//!   `InstanceSegmentationWithDecoder.generate` does (smoothing, seeds, seeded watershed, size filter).
//! - [`apg_point_prompts`] derives micro_sam's APG point prompts from the same maps, and
//!   [`apg_segment`] turns the masks SAM predicts for them ([`InferenceModel::apg_masks`]) into
//!   instance labels (mask NMS, exclusive merge), as `AutomaticPromptGenerator.generate` does.
//! - [`seeded_watershed`] and [`gaussian_smoothing`] are the building blocks, with sam-data's
//!   label toolkit ([`sam_data::connected_components`], [`sam_data::size_filter`]).
//!
//! # Example
//!
//! ```
//! use sam_data::Plane;
//! use sam_infer::{ais_segment, AisParams, DecoderMaps};
//!
//! // Two foreground blobs in one row, each with a low centre and boundary distance.
//! let fg = Plane::from_vec(1, 7, vec![0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0])?;
//! let dist = Plane::from_vec(1, 7, vec![1.0, 0.1, 0.3, 1.0, 0.3, 0.1, 1.0])?;
//! let maps = DecoderMaps {
//!     foreground: fg,
//!     center_distances: dist.clone(),
//!     boundary_distances: dist,
//! };
//! let params = AisParams { foreground_smoothing: 0.0, distance_smoothing: 0.0, ..Default::default() };
//! let labels = ais_segment(&maps, &params)?;
//! assert_eq!(labels.as_slice(), &[0, 1, 1, 0, 2, 2, 0]);
//! # Ok::<(), sam_infer::InferError>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod ais;
mod amg;
mod apg;
mod error;
mod filters;
mod model;
mod objects;
mod prompts;
mod runner;
mod tiling;
mod watershed;

pub use crate::{
    ais::{ais_segment, ais_segment_debug, AisDebug, AisParams, DecoderMaps},
    amg::{
        amg_segment, box_iou, build_point_grid, is_box_near_crop_edge, mask_box, merge_masks, nms,
        remove_small_regions, stability_score, AmgOutput, AmgParams, CropMasks, MaskRecord,
        RegionMode,
    },
    apg::{apg_box_prompts, apg_point_prompts, apg_segment, mask_nms, ApgOutput, ApgParams},
    error::InferError,
    filters::{gaussian_kernel, gaussian_smoothing},
    model::{ApgPrompts, InferenceModel},
    objects::{mean_per_object, write_objects_csv, OBJECTS_CSV_HEADER},
    prompts::{read_prompts, PromptFile, PromptSet},
    runner::{
        file_sha256, list_inputs, load_image, output_paths, run_auto, run_prompts, scan_inputs,
        segment_auto, AutoMode, AutoOptions, AutoSegmentation, Downscale, ImageReport, Inputs,
        Outcome, Progress, TileSpec, Timings, MODEL_RECORD,
    },
    tiling::{crop_outer, paste_inner, Rect, Tile, Tiling},
    watershed::seeded_watershed,
};
/// The precision of the forward passes ([`InferenceModel::with_precision`]).
pub use sam_model::Precision;
