//! Writing checkpoints the Python world reads: a plain SAM state_dict or micro_sam's
//! `{"model_state", "decoder_state"}` (both `torch.save` archives, written by
//! `super::torch_file`), and our safetensors files.

use super::error::CheckpointError;
use super::torch_file::TorchSave;
use std::path::Path;
use tch::{Device, Tensor};

/// Key prefix of decoder tensors in our safetensors checkpoints.
pub(crate) const SAFETENSORS_DECODER_PREFIX: &str = "decoder_state.";

/// Writes a file atomically: `write` fills a temporary file next to `path`, which is renamed
/// onto `path` only when complete. On failure nothing is left behind.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File, &Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".sam-checkpoint-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| CheckpointError::io(path, e))?;
    let temp_path = temp.path().to_path_buf();
    write(temp.as_file_mut(), &temp_path)?;
    temp.as_file()
        .sync_all()
        .map_err(|e| CheckpointError::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // tempfile creates 0600; a model file is meant to be shared like any other output.
        std::fs::set_permissions(&temp_path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| CheckpointError::io(path, e))?;
    }
    temp.persist(path)
        .map_err(|e| CheckpointError::io(path, e.error))?;
    Ok(())
}

/// Writes a plain segment_anything state_dict in the `torch.save` format.
///
/// The keys are written as given (use segment_anything's names, e.g. from
/// [`named_tensors`](crate::named_tensors)); Python reads the file with
/// `torch.load(path, weights_only=True)` and `Sam.load_state_dict(sd, strict=True)` accepts it.
/// Tensors may live on any device and have any layout; they are written contiguous from the
/// CPU. The file is written atomically (temporary file, then rename).
pub fn write_sam_state_dict(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let archive = TorchSave::state_dict(path, tensors)?;
    write_atomically(path, |file, _| archive.write(path, file))
}

/// Writes micro_sam's checkpoint with the instance-segmentation decoder:
/// `{"model_state": <SAM state_dict>, "decoder_state": <decoder state_dict>}` in the
/// `torch.save` format (what micro_sam's `export_custom_sam_model(..., with_segmentation_decoder=True)`
/// writes). `model_state` keys are segment_anything's, without a `sam.` prefix, as micro_sam
/// expects them there.
pub fn write_micro_sam_checkpoint(
    path: impl AsRef<Path>,
    model_state: &[(String, Tensor)],
    decoder_state: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let archive = TorchSave::state_dicts(
        path,
        &[
            ("model_state", model_state),
            ("decoder_state", decoder_state),
        ],
    )?;
    write_atomically(path, |file, _| archive.write(path, file))
}

/// Writes a checkpoint for the Python world and records how the model is fed: a plain SAM
/// state_dict ([`write_sam_state_dict`]) without `decoder_state`, micro_sam's
/// `{model_state, decoder_state}` ([`write_micro_sam_checkpoint`]) with it. With `input_size`
/// (a model trained at its native patch side, [`crate::Sam::set_input_size`]) the archive also
/// holds a small JSON record saying so, which torch.load, segment_anything and micro_sam ignore
/// and [`read_checkpoint`](crate::read_checkpoint) reads back as
/// [`TorchCheckpoint::input_size`](crate::TorchCheckpoint::input_size).
pub fn write_torch_checkpoint(
    path: impl AsRef<Path>,
    model_state: &[(String, Tensor)],
    decoder_state: Option<&[(String, Tensor)]>,
    input_size: Option<i64>,
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let archive = match decoder_state {
        None => TorchSave::state_dict(path, model_state)?,
        Some(decoder_state) => TorchSave::state_dicts(
            path,
            &[
                ("model_state", model_state),
                ("decoder_state", decoder_state),
            ],
        )?,
    };
    let archive = match input_size {
        Some(input_size) => {
            let record = super::layout::ModelInputRecord { input_size };
            let json = serde_json::to_vec(&record).map_err(|e| {
                CheckpointError::format(path, format!("cannot write the input record: {e}"))
            })?;
            archive.with_record(super::layout::MODEL_INPUT_RECORD, json)
        }
        None => archive,
    };
    write_atomically(path, |file, _| archive.write(path, file))
}

/// Writes our internal checkpoint format, safetensors: SAM tensors under their own keys,
/// decoder tensors under `decoder_state.<key>`. [`read_checkpoint`](crate::read_checkpoint)
/// reads it back. Written atomically.
pub fn write_safetensors_checkpoint(
    path: impl AsRef<Path>,
    model_state: &[(String, Tensor)],
    decoder_state: Option<&[(String, Tensor)]>,
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let mut named: Vec<(String, Tensor)> = Vec::new();
    let decoder = decoder_state.unwrap_or(&[]);
    let mut seen = std::collections::HashSet::new();
    let prepared = model_state.iter().map(|(k, t)| (k.clone(), t)).chain(
        decoder
            .iter()
            .map(|(k, t)| (format!("{SAFETENSORS_DECODER_PREFIX}{k}"), t)),
    );
    for (name, t) in prepared {
        if name.starts_with(SAFETENSORS_DECODER_PREFIX)
            && model_state.iter().any(|(k, _)| *k == name)
        {
            return Err(CheckpointError::entry(
                path,
                &name,
                "model key clashes with the decoder prefix",
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(CheckpointError::entry(path, &name, "the key occurs twice"));
        }
        let t = t
            .detach()
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_contiguous())
            .map_err(|source| CheckpointError::Torch {
                path: path.to_path_buf(),
                key: name.clone(),
                source,
            })?;
        named.push((name, t));
    }
    write_atomically(path, |_, temp_path| {
        Tensor::write_safetensors(&named, temp_path).map_err(|source| CheckpointError::Torch {
            path: path.to_path_buf(),
            key: String::new(),
            source,
        })
    })
}
