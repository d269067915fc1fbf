//! Checkpoint import and export: Python `torch.save` files read directly (zip + pickle, no code
//! ever executed), architecture inference from the weights, and export to files that
//! `torch.load(..., weights_only=True)`, segment_anything and micro_sam read.

mod arch;
mod archive;
mod error;
mod pickle_read;
mod read;
mod storage;
mod write;

pub use arch::{
    infer_architecture, mask_decoder_heads, Backbone, ImageEncoderArchitecture,
    InferredArchitecture, TinyVitArchitecture, VitArchitecture,
};
pub use error::CheckpointError;
pub use read::{read_checkpoint, CheckpointKind, TorchCheckpoint};
pub use write::{write_micro_sam_checkpoint, write_safetensors_checkpoint, write_sam_state_dict};
