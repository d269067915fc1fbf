//! Checkpoint import and export, in two layers:
//!
//! - `torch_file`: the file formats (Python `torch.save` archives read directly, zip + pickle,
//!   no code ever executed; written so that `torch.load(..., weights_only=True)` accepts
//!   them; safetensors recognised). It knows nothing of SAM.
//! - the SAM layouts on top: `layout` (which files hold which weights: segment_anything,
//!   MobileSAM, micro_sam / torch_em, decoder-only, ours), `write` (the files segment_anything
//!   and micro_sam read, and ours), `arch` (the architecture of SAM and of the UNETR decoder
//!   inferred from the weights' shapes).

mod arch;
mod error;
mod layout;
mod torch_file;
mod write;

pub use arch::{
    infer_architecture, infer_unetr_config, mask_decoder_heads, Backbone, ImageEncoderArchitecture,
    InferredArchitecture, TinyVitArchitecture, VitArchitecture,
};
pub use error::CheckpointError;
pub use layout::{read_checkpoint, CheckpointKind, TorchCheckpoint};
pub use write::{
    write_micro_sam_checkpoint, write_safetensors_checkpoint, write_sam_state_dict,
    write_torch_checkpoint,
};
