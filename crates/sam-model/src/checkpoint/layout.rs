//! What the files mean: which layouts of SAM weights are accepted (plain segment_anything and
//! MobileSAM state_dicts, micro_sam and torch_em training checkpoints, decoder-only files, our
//! safetensors checkpoints) and how their entries map onto `model_state` and `decoder_state`.
//!
//! The file formats themselves are read by `super::torch_file`, which knows nothing of SAM.

use super::error::CheckpointError;
use super::torch_file::{check_globals, describe, is_str, sniff, FileFormat, Object, TorchFile};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// What kind of checkpoint a file held.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointKind {
    /// A plain segment_anything state_dict with a ViT image encoder (the original
    /// `sam_vit_{b,l,h}_*.pth` files, and what [`write_sam_state_dict`](crate::write_sam_state_dict) writes).
    SamStateDict,
    /// A plain MobileSAM state_dict (TinyViT image encoder, keys `image_encoder.layers.*`).
    MobileSam,
    /// A micro_sam / torch_em checkpoint: a dict with `model_state` (and optionally
    /// `decoder_state` and training state).
    MicroSam {
        /// The prefix stripped from the `model_state` keys: `sam.`, `module.sam.`, `module.`
        /// or empty.
        prefix: String,
    },
    /// A state_dict of the instance-segmentation decoder alone (micro_sam's `*_decoder` files).
    DecoderOnly,
    /// A safetensors checkpoint written by [`write_safetensors_checkpoint`](crate::write_safetensors_checkpoint).
    Safetensors,
}

/// The weights read from a checkpoint file.
#[derive(Debug)]
pub struct TorchCheckpoint {
    /// The file read.
    pub path: PathBuf,
    /// What kind of file it was.
    pub kind: CheckpointKind,
    /// SAM weights with segment_anything's keys (`image_encoder.*`, `prompt_encoder.*`,
    /// `mask_decoder.*`), prefixes such as `sam.` or `module.sam.` stripped, in file order.
    /// Empty for a decoder-only file.
    pub model_state: Vec<(String, Tensor)>,
    /// The instance-segmentation (UNETR) decoder weights with micro_sam's keys, if present.
    pub decoder_state: Option<Vec<(String, Tensor)>>,
    /// Things skipped while reading (e.g. the optimiser state of a training checkpoint).
    pub warnings: Vec<String>,
    /// The square input side the model was trained at when it is not the one it was built for
    /// (`model.encoder_input: native`), as recorded by [`write_torch_checkpoint`](crate::write_torch_checkpoint);
    /// `None`: the built side (1024 for SAM).
    pub input_size: Option<i64>,
}

/// The record of a `torch.save` archive in which [`write_torch_checkpoint`](crate::write_torch_checkpoint)
/// notes how the model is fed: `{"input_size": 512}`. torch.load ignores it.
pub(crate) const MODEL_INPUT_RECORD: &str = "sam_trainer_model_input.json";

/// The contents of [`MODEL_INPUT_RECORD`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ModelInputRecord {
    pub(crate) input_size: i64,
}

/// Entries of micro_sam / torch_em training checkpoints that hold training state, not weights
/// (torch_em `DefaultTrainer.save_checkpoint`). They are skipped with a warning.
const TRAINING_STATE_ENTRIES: &[&str] = &[
    "optimizer_state",
    "scheduler_state",
    "scaler_state",
    "iteration",
    "epoch",
    "best_epoch",
    "best_metric",
    "current_metric",
    "init",
    "train_time",
    "timestamp",
    "config",
];

/// Key prefixes of the SAM model's three parts.
const SAM_PARTS: &[&str] = &["image_encoder.", "prompt_encoder.", "mask_decoder."];

/// Reads a checkpoint file: a `torch.save` archive or a safetensors file.
///
/// Accepted `torch.save` contents: a plain SAM or MobileSAM state_dict; a micro_sam / torch_em
/// dict with `model_state` (keys prefixed `sam.`, `module.sam.` or `module.`, stripped here),
/// optional `decoder_state` and training state (skipped with a warning); a decoder-only
/// state_dict. The pickle is interpreted without running any code, and only the globals a
/// state_dict needs are accepted in the weights (tensor rebuild functions, storage types,
/// `OrderedDict`): anything else is a [`CheckpointError::ForbiddenGlobal`].
///
/// Tensors come back on the CPU in the file's dtype (fp32, fp16, bf16, int64, ...), contiguous.
pub fn read_checkpoint(path: impl AsRef<Path>) -> Result<TorchCheckpoint, CheckpointError> {
    let ckpt = read_any(path.as_ref())?;
    check_finite(&ckpt)?;
    Ok(ckpt)
}

/// Refuses floating-point weights with NaN or infinite values, naming the first such tensor.
fn check_finite(ckpt: &TorchCheckpoint) -> Result<(), CheckpointError> {
    let model = ckpt.model_state.iter().map(|(k, t)| (k.clone(), t));
    let decoder = ckpt
        .decoder_state
        .iter()
        .flatten()
        .map(|(k, t)| (format!("decoder_state/{k}"), t));
    for (key, t) in model.chain(decoder) {
        if !t.is_floating_point() || t.numel() == 0 {
            continue;
        }
        let torch = |source| CheckpointError::Torch {
            path: ckpt.path.clone(),
            key: key.clone(),
            source,
        };
        let finite = t.f_isfinite().map_err(torch)?;
        let all = finite.f_all().map_err(torch)?;
        if !bool::try_from(&all).map_err(torch)? {
            let count = finite
                .f_logical_not()
                .and_then(|n| n.f_sum(tch::Kind::Int64))
                .and_then(|n| i64::try_from(&n))
                .map_err(torch)?;
            return Err(CheckpointError::NonFinite {
                path: ckpt.path.clone(),
                key,
                count,
                total: t.numel() as i64,
            });
        }
    }
    Ok(())
}

fn read_any(path: &Path) -> Result<TorchCheckpoint, CheckpointError> {
    match sniff(path)? {
        FileFormat::TorchZip => read_torch_zip(path),
        FileFormat::Safetensors => read_safetensors(path),
    }
}

fn read_safetensors(path: &Path) -> Result<TorchCheckpoint, CheckpointError> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| CheckpointError::format(path, format!("bad safetensors file: {e}")))?;
    let mut model_state = Vec::new();
    let mut decoder_state = Vec::new();
    for (name, tensor) in tensors {
        match name.strip_prefix(super::write::SAFETENSORS_DECODER_PREFIX) {
            Some(key) => decoder_state.push((key.to_string(), tensor)),
            None => model_state.push((name, tensor)),
        }
    }
    crate::state_dict::sort_state_dict(&mut model_state);
    crate::state_dict::sort_state_dict(&mut decoder_state);
    Ok(TorchCheckpoint {
        path: path.to_path_buf(),
        kind: CheckpointKind::Safetensors,
        model_state,
        decoder_state: (!decoder_state.is_empty()).then_some(decoder_state),
        warnings: Vec::new(),
        input_size: None,
    })
}

fn read_torch_zip(path: &Path) -> Result<TorchCheckpoint, CheckpointError> {
    let (mut file, root) = TorchFile::open(path)?;
    let mut ckpt = interpret(&mut file, path, root)?;
    if let Some(bytes) = file.optional_record(MODEL_INPUT_RECORD)? {
        let record: ModelInputRecord = serde_json::from_slice(&bytes).map_err(|e| {
            CheckpointError::format(path, format!("bad record {MODEL_INPUT_RECORD}: {e}"))
        })?;
        ckpt.input_size = Some(record.input_size);
    }
    Ok(ckpt)
}

/// Reads the SAM layouts out of a parsed `torch.save` file.
fn interpret(
    file: &mut TorchFile<'_>,
    path: &Path,
    root: Object,
) -> Result<TorchCheckpoint, CheckpointError> {
    let items = match root {
        Object::Dict(items) => items,
        other => {
            check_globals(path, &other, "<file>")?;
            return Err(CheckpointError::format(
                path,
                format!(
                    "it holds {} instead of a state_dict (a dict of tensors)",
                    describe(&other)
                ),
            ));
        }
    };
    let is_training = items.iter().any(|(k, _)| is_str(k, "model_state"));
    if is_training {
        interpret_training(file, path, items)
    } else {
        interpret_plain(file, path, items)
    }
}

/// A micro_sam / torch_em dict with `model_state`.
fn interpret_training(
    file: &mut TorchFile<'_>,
    path: &Path,
    items: Vec<(Object, Object)>,
) -> Result<TorchCheckpoint, CheckpointError> {
    let mut warnings = Vec::new();
    let mut model_state = None;
    let mut decoder_state = None;
    for (key, value) in items {
        let key = match key {
            Object::Unicode(key) => key,
            other => {
                return Err(CheckpointError::format(
                    path,
                    format!("a top-level key is {}, expected a string", describe(&other)),
                ))
            }
        };
        match key.as_str() {
            "model_state" => {
                check_globals(path, &value, "model_state")?;
                model_state = Some(file.state_dict(value, "model_state")?);
            }
            "decoder_state" => {
                check_globals(path, &value, "decoder_state")?;
                decoder_state = Some(file.state_dict(value, "decoder_state")?);
            }
            known if TRAINING_STATE_ENTRIES.contains(&known) => {
                warnings.push(format!("skipped `{known}` (training state, not weights)"));
            }
            other => {
                // Unknown entries are skipped too, but only if harmless.
                check_globals(path, &value, other)?;
                warnings.push(format!(
                    "skipped unknown entry `{other}` ({}); only model_state and \
                     decoder_state are read",
                    describe(&value)
                ));
            }
        }
    }
    let model_state = model_state.unwrap_or_default();
    let (model_state, prefix) = strip_model_prefix(model_state);
    Ok(TorchCheckpoint {
        path: path.to_path_buf(),
        kind: CheckpointKind::MicroSam { prefix },
        model_state,
        decoder_state,
        warnings,
        input_size: None,
    })
}

/// A plain state_dict: SAM, MobileSAM, or a decoder alone.
fn interpret_plain(
    file: &mut TorchFile<'_>,
    path: &Path,
    items: Vec<(Object, Object)>,
) -> Result<TorchCheckpoint, CheckpointError> {
    let dict = Object::Dict(items);
    check_globals(path, &dict, "")?;
    let mut tensors = file.state_dict(dict, "")?;
    let mut warnings = Vec::new();
    if !tensors.is_empty() && tensors.iter().all(|(k, _)| k.starts_with("module.")) {
        for (k, _) in tensors.iter_mut() {
            k.drain(.."module.".len());
        }
        warnings
            .push("stripped the `module.` prefix (a DistributedDataParallel state_dict)".into());
    }
    let is_sam = tensors
        .iter()
        .any(|(k, _)| SAM_PARTS.iter().any(|p| k.starts_with(p)));
    let (kind, model_state, decoder_state) = if !is_sam {
        (CheckpointKind::DecoderOnly, Vec::new(), Some(tensors))
    } else if tensors
        .iter()
        .any(|(k, _)| k.starts_with("image_encoder.layers."))
    {
        (CheckpointKind::MobileSam, tensors, None)
    } else {
        (CheckpointKind::SamStateDict, tensors, None)
    };
    Ok(TorchCheckpoint {
        path: path.to_path_buf(),
        kind,
        model_state,
        decoder_state,
        warnings,
        input_size: None,
    })
}

/// Strips `module.sam.`, `sam.` or `module.` from each key, as micro_sam does with `sam.`.
/// Returns the prefix of the first key that had one (empty if none had).
fn strip_model_prefix(tensors: Vec<(String, Tensor)>) -> (Vec<(String, Tensor)>, String) {
    const PREFIXES: &[&str] = &["module.sam.", "sam.", "module."];
    let mut seen: Option<&str> = None;
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| match PREFIXES.iter().find(|p| k.starts_with(*p)) {
            Some(p) => {
                seen.get_or_insert(p);
                (k[p.len()..].to_string(), t)
            }
            None => (k, t),
        })
        .collect();
    (tensors, seen.unwrap_or("").to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn prefixes_are_stripped_per_key() {
        let t = || Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
        let (out, prefix) = strip_model_prefix(vec![
            ("module.sam.image_encoder.pos_embed".into(), t()),
            ("sam.mask_decoder.iou_token.weight".into(), t()),
            ("prompt_encoder.no_mask_embed.weight".into(), t()),
        ]);
        let keys: Vec<_> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "image_encoder.pos_embed",
                "mask_decoder.iou_token.weight",
                "prompt_encoder.no_mask_embed.weight"
            ]
        );
        assert_eq!(prefix, "module.sam.");
    }
}
