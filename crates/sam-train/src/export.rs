//! Export to the formats the Python world reads: a plain segment_anything state_dict, or
//! micro_sam's `{model_state, decoder_state}` when the decoder is included.

use std::path::Path;

use sam_model::{read_checkpoint, write_micro_sam_checkpoint, write_sam_state_dict};
use tch::Tensor;

use crate::setup::DECODER_PREFIX;
use crate::TrainError;

/// Exports `source` to `output`. `source` is one of our checkpoint folders (`latest/`, `best/`),
/// or a checkpoint file: ours (safetensors), micro_sam's, or an original SAM `.pth`.
/// `with_decoder` writes micro_sam's format and requires decoder weights in the source.
pub fn export_model(source: &Path, output: &Path, with_decoder: bool) -> Result<(), TrainError> {
    let (model, decoder) = if source.is_dir() {
        let file = source.join("model.safetensors");
        if !file.is_file() {
            return Err(TrainError::MissingCheckpoint(format!(
                "{} is not a checkpoint folder (no model.safetensors)",
                source.display()
            )));
        }
        let tensors = Tensor::read_safetensors(&file)
            .map_err(|e| TrainError::Io(format!("{}: {e}", file.display())))?;
        let (dec, sam): (Vec<_>, Vec<_>) = tensors
            .into_iter()
            .partition(|(k, _)| k.starts_with(DECODER_PREFIX));
        let dec: Vec<(String, Tensor)> = dec
            .into_iter()
            .map(|(k, t)| (k[DECODER_PREFIX.len()..].to_string(), t))
            .collect();
        (sam, (!dec.is_empty()).then_some(dec))
    } else if source.is_file() {
        let ck = read_checkpoint(source).map_err(|e| TrainError::Model(e.to_string()))?;
        (ck.model_state, ck.decoder_state)
    } else {
        return Err(TrainError::MissingCheckpoint(format!(
            "checkpoint {} does not exist",
            source.display()
        )));
    };
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| TrainError::Io(format!("{}: {e}", parent.display())))?;
    }
    if with_decoder {
        let decoder = decoder.ok_or_else(|| {
            TrainError::Model(format!(
                "{} has no decoder weights; export without --with-decoder",
                source.display()
            ))
        })?;
        write_micro_sam_checkpoint(output, &model, &decoder)
    } else {
        write_sam_state_dict(output, &model)
    }
    .map_err(|e| TrainError::Model(e.to_string()))
}
