//! sam-model: Segment Anything (SAM, MobileSAM, micro_sam UNETR decoder) in tch, with checkpoint
//! import/export.
//!
//! The model is a line-by-line port of the Python `segment-anything` package, MobileSAM's TinyViT
//! and micro_sam's UNETR decoder: every variable path equals its PyTorch state_dict key, so a
//! checkpoint loads by name. The main types:
//!
//! - [`Sam`] (built from a [`SamConfig`] preset: [`SamConfig::vit_b`], `vit_l`, `vit_h`, `vit_t`)
//!   with its [`ImageEncoder`], [`PromptEncoder`] and [`MaskDecoder`];
//! - [`SamPredictor`]: grey image → embedding → masks for batched prompts;
//! - [`UnetrDecoder`]: foreground / centre-distance / boundary-distance maps from embeddings;
//! - [`SamModel`]: a checkpointed model, SAM plus the optional UNETR decoder, each in its own
//!   `VarStore`; [`SamModel::load`] infers both architectures from a checkpoint file and loads
//!   it strictly.
//!
//! Checkpoints: [`read_checkpoint`] reads `torch.save` files (never running code from them) and
//! our safetensors files; the `write_*` functions write what segment_anything and micro_sam
//! read. Named micro_sam models resolve to files of the shared model cache
//! ([`resolve_checkpoint`]); downloading them (`download_model`) needs the `download` feature.
//! [`flops`] counts the floating-point operations of a forward pass from the architecture;
//! [`Precision`] runs inference forward passes in fp32 or under bf16 autocast; [`seeded`] draws
//! seeded random weights while other threads draw too.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sam_model::{Sam, SamConfig};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let sam = Sam::new(&vs.root(), &SamConfig::tiny())?;
//! let image = Tensor::rand([1, 3, 256, 256], (Kind::Float, Device::Cpu)) * 255.0;
//! let embeddings = sam.image_encoder.forward(&sam.preprocess(&image)?); // [1, 32, 16, 16]
//! let coords = Tensor::from_slice(&[40.0f32, 60.0]).view([1, 1, 2]);
//! let labels = Tensor::from_slice(&[1i64]).view([1, 1]);
//! let (low_res_masks, iou) =
//!     sam.forward_prompts(&embeddings, Some((&coords, &labels)), None, None, true)?;
//! assert_eq!(low_res_masks.size(), [1, 3, 64, 64]);
//! assert_eq!(iou.size(), [1, 3]);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod cache;
mod checkpoint;
mod common;
#[cfg(feature = "download")]
mod download;
mod error;
pub mod flops;
mod image_encoder;
mod mask_decoder;
mod model;
pub mod peft;
mod precision;
mod predictor;
mod prompt_encoder;
mod sam;
mod seeded;
mod state_dict;
mod tiny_vit;
mod transformer;
mod unetr;

pub use cache::{
    known_models, model_cache_dir, model_info, resolve_checkpoint, resolve_checkpoint_in,
    resolve_decoder_checkpoint_in, verify_file_hash, CacheError, ModelInfo,
};
pub use checkpoint::{
    infer_architecture, infer_unetr_config, mask_decoder_heads, read_checkpoint,
    write_micro_sam_checkpoint, write_safetensors_checkpoint, write_sam_state_dict,
    write_torch_checkpoint, Backbone, CheckpointError, CheckpointKind, ImageEncoderArchitecture,
    InferredArchitecture, TinyVitArchitecture, TorchCheckpoint, VitArchitecture,
};
pub use common::{AttentionMode, BatchNorm2d, LayerNorm2d, MLPBlock};
#[cfg(feature = "download")]
pub use download::{download_model, DownloadOptions, DownloadProgress};
pub use error::ModelError;
pub use image_encoder::{ImageEncoderViT, ImageEncoderViTConfig, ATTENTION_CHUNK_ENTRIES};
pub use mask_decoder::{MaskDecoder, MaskDecoderConfig};
pub use model::{
    ModelPart, SamModel, SamModelError, StateDict, StateLoadReport, DECODER_PREFIX, PEFT_PREFIX,
};
pub use peft::{PeftMethod, PeftSpec};
pub use precision::Precision;
pub use predictor::{
    ImageEmbedding, ImageView, Prediction, Prompts, ResizeLongestSide, SamPredictor,
};
pub use prompt_encoder::{PositionEmbeddingRandom, PromptEncoder, PromptEncoderConfig};
pub use sam::{
    ImageEncoder, ImageEncoderConfig, MaskPrediction, Sam, SamConfig, PIXEL_MEAN, PIXEL_STD,
};
pub use seeded::seeded;
pub use state_dict::{
    apply_state_dict, named_tensors, LoadError, LoadMode, LoadReport, ShapeMismatch, UnmatchedKey,
};
pub use tiny_vit::{TinyViT, TinyViTConfig};
pub use transformer::{Attention, TwoWayTransformer, TwoWayTransformerConfig};
pub use unetr::{UnetrConfig, UnetrDecoder};
