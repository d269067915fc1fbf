//! Export to the formats the Python world reads: a plain segment_anything state_dict, or
//! micro_sam's `{model_state, decoder_state}` when the decoder is included. A model with
//! image-encoder adapters (`model.peft`) is written either merged (adapters folded into the
//! weights: a plain SAM state_dict) or in micro_sam's PEFT layout ([`PeftLayout`]). The
//! TorchScript modules and the bioimage.io package are written by
//! [`crate::export_torchscript()`] and [`crate::export_bioimageio()`], which read checkpoints
//! through [`read_source`].
//!
//! An export never destroys what it reads: an output that is the checkpoint itself (by path,
//! through a link, or as a hard link) or lies inside the checkpoint folder is refused, and an
//! existing file is replaced only when asked to ([`ExportOptions::replace`]). The file is
//! written to a temporary file and renamed into place.

use std::fs;
use std::path::{Component, Path, PathBuf};

use sam_config::{load_config_with, RunPaths, ValidateOptions};
use sam_model::{read_checkpoint, write_torch_checkpoint, SamModel, StateDict, PEFT_PREFIX};
use tch::{Device, Tensor};

use crate::checkpoint::CheckpointStore;
use crate::trainer::{check_base_model, initial_model, NoProgress};
use crate::TrainError;

/// How the image encoder of a model with adapters is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PeftLayout {
    /// The adapters folded into the encoder's weights: a plain SAM state_dict that
    /// segment_anything and micro_sam load without knowing of adapters.
    #[default]
    Merged,
    /// micro_sam's PEFT state_dict: base weights under the wrapped modules' keys plus the
    /// adapters, what `get_sam_model(..., peft_kwargs=...)` loads.
    MicroSam,
}

/// How [`export_model`] writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Write micro_sam's `{model_state, decoder_state}`; requires decoder weights in the
    /// source. Without it, a plain SAM state_dict.
    pub with_decoder: bool,
    /// Replace the output file when it exists (`sam-train export --force`; a training run
    /// replaces its `export_path` after saying so in its log). Never the source itself.
    pub replace: bool,
    /// The layout of a model with image-encoder adapters (ignored without them).
    pub peft_layout: PeftLayout,
}

/// Exports `source` to `output`. `source` is one of our checkpoint folders (`latest/`, `best/`),
/// or a checkpoint file: ours (safetensors), micro_sam's, or an original SAM `.pth`.
///
/// # Errors
/// [`TrainError::Usage`] before anything is read or written when `output` is `source` (also
/// through a symbolic or hard link), lies inside the `source` folder, is a folder, or exists
/// and `options.replace` is off.
pub fn export_model(
    source: &Path,
    output: &Path,
    options: ExportOptions,
) -> Result<(), TrainError> {
    check_output(source, output, options.replace)?;
    let (model, decoder, input_size) = read_source(source, options.peft_layout)?;
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    }
    // Both writers write a temporary file next to `output` and rename it into place: a kill
    // leaves the old file or the new one, and a link at `output` is replaced, not followed.
    if options.with_decoder {
        let decoder = decoder.ok_or_else(|| {
            TrainError::Model(format!(
                "{} has no decoder weights; export without --with-decoder",
                source.display()
            ))
        })?;
        write_torch_checkpoint(output, &model, Some(&decoder), input_size)
    } else {
        write_torch_checkpoint(output, &model, None, input_size)
    }
    .map_err(TrainError::from)
}

/// The weights of `source` (a checkpoint folder or file, see [`export_model`]): SAM's state
/// (adapters written in `layout`), the decoder's when present, and the recorded input side.
pub(crate) fn read_source(
    source: &Path,
    layout: PeftLayout,
) -> Result<(StateDict, Option<StateDict>, Option<i64>), TrainError> {
    if source.is_dir() {
        let file = source.join("model.safetensors");
        if !file.is_file() {
            return Err(TrainError::MissingCheckpoint(format!(
                "{} is not a checkpoint folder (no model.safetensors)",
                source.display()
            )));
        }
        let tensors = Tensor::read_safetensors(&file).map_err(|e| TrainError::format(&file, e))?;
        let (sam, dec) = SamModel::split_named(&tensors);
        let sam = if tensors.iter().any(|(k, _)| k.starts_with(PEFT_PREFIX)) {
            let model = rebuild_with_adapters(source, &tensors)?;
            sam_state(&model, layout)
        } else {
            sam
        };
        Ok((
            sam,
            (!dec.is_empty()).then_some(dec),
            folder_input_size(source)?,
        ))
    } else if source.is_file() {
        let ck = read_checkpoint(source)?;
        let peft = sam_model::peft::from_micro_sam_layout(&ck.model_state)
            .map_err(|e| TrainError::Model(format!("{}: {e}", source.display())))?;
        let sam = match (peft, layout) {
            (Some((base, adapters, spec)), PeftLayout::Merged) => {
                sam_model::peft::merge_into_base(&base, &adapters, &spec)
            }
            _ => ck.model_state,
        };
        Ok((sam, ck.decoder_state, ck.input_size))
    } else {
        Err(TrainError::MissingCheckpoint(format!(
            "checkpoint {} does not exist",
            source.display()
        )))
    }
}

/// The input side a checkpoint folder's `state.json` records for a model fed at its native
/// patch side (`None`: the built side, or a folder without `state.json`).
fn folder_input_size(folder: &Path) -> Result<Option<i64>, TrainError> {
    #[derive(serde::Deserialize)]
    struct InputSize {
        #[serde(default)]
        input_size: Option<i64>,
    }
    let path = folder.join("state.json");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io(&path, e)),
    };
    let state: InputSize = serde_json::from_str(&text).map_err(|e| TrainError::format(&path, e))?;
    Ok(state.input_size)
}

/// SAM's weights of a model with adapters in `layout`.
fn sam_state(model: &SamModel, layout: PeftLayout) -> StateDict {
    match layout {
        PeftLayout::Merged => model.merged_sam_state(),
        PeftLayout::MicroSam => model
            .micro_sam_peft_state()
            .unwrap_or_else(|| model.merged_sam_state()),
    }
}

/// The `config.yaml` of the run a checkpoint belongs to: the nearest one up to three folders
/// above it (`runs/<experiment>/config.yaml` above `runs/<experiment>/checkpoints/<name>/best`).
pub(crate) fn run_config_above(checkpoint: &Path) -> Option<PathBuf> {
    checkpoint
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("config.yaml"))
        .find(|c| c.is_file())
}

/// The model of a checkpoint folder written by a run with adapters, which holds only the
/// trainable weights: the base is rebuilt from the run's `config.yaml` (found above the folder:
/// `runs/<experiment>/config.yaml`) as training built it, checked against the digest the
/// checkpoint names, and the saved weights loaded on top.
fn rebuild_with_adapters(dir: &Path, tensors: &[(String, Tensor)]) -> Result<SamModel, TrainError> {
    let config = run_config_above(dir).ok_or_else(|| {
        TrainError::MissingCheckpoint(format!(
            "{} holds image-encoder adapters without their base model, and no run \
                 config.yaml was found above it (runs/<experiment>/config.yaml) to rebuild \
                 the base from",
            dir.display()
        ))
    })?;
    let loaded = load_config_with(&config, &ValidateOptions::without_path_checks())
        .map_err(|e| TrainError::Model(format!("{}: {e}", config.display())))?;
    let root = loaded
        .root
        .unwrap_or_else(|| config.parent().map(Path::to_path_buf).unwrap_or_default());
    let paths = RunPaths::new(root, &loaded.config);
    let model = initial_model(&loaded.config, &paths, Device::Cpu, &NoProgress)?;
    let state = CheckpointStore::load_dir(dir)?.state;
    let built = crate::base_digest(&model);
    check_base_model(dir, state.base_model.as_deref(), Some(&built))?;
    crate::load_resumed(&model, &loaded.config.model, tensors, dir)?;
    Ok(model)
}

/// Refuses an output that would destroy the source or replace a file unasked.
pub(crate) fn check_output(source: &Path, output: &Path, replace: bool) -> Result<(), TrainError> {
    let out_exists = fs::symlink_metadata(output).is_ok();
    if output.is_dir() {
        return Err(TrainError::Usage(format!(
            "export --output {} is a folder: give the file to write, e.g. {}",
            output.display(),
            output.join("model.pt").display()
        )));
    }
    // A source that does not exist is reported when it is read.
    if let Ok(src) = fs::canonicalize(source) {
        let out = resolve(output);
        let same_file = out_exists && is_same_file(source, output);
        if out.as_deref() == Some(src.as_path()) || same_file {
            return Err(TrainError::Usage(format!(
                "export --output {} is the checkpoint being exported ({}): writing it would \
                 destroy the input. Choose another output file, e.g. final_models/<name>.pt \
                 (nothing was written)",
                output.display(),
                src.display()
            )));
        }
        if src.is_dir() && out.as_ref().is_some_and(|o| o.starts_with(&src)) {
            return Err(TrainError::Usage(format!(
                "export --output {} lies inside the checkpoint folder being exported ({}): \
                 write it elsewhere, e.g. final_models/<name>.pt (nothing was written)",
                output.display(),
                src.display()
            )));
        }
    }
    if out_exists && !replace {
        return Err(TrainError::Usage(format!(
            "export --output {} exists: pass --force to replace it, or choose another file \
             (nothing was written)",
            output.display()
        )));
    }
    Ok(())
}

/// `path` made absolute with every link resolved, for a path that may not exist yet: its
/// nearest existing ancestor canonicalised, the rest appended. `None` when nothing of it
/// resolves.
pub(crate) fn resolve(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = fs::canonicalize(path) {
        return Some(p);
    }
    let absolute = std::path::absolute(path).ok()?;
    let mut rest = Vec::new();
    let mut base = absolute.as_path();
    loop {
        if let Ok(b) = fs::canonicalize(base) {
            let mut out = b;
            for c in rest.iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    c => out.push(c),
                }
            }
            return Some(out);
        }
        rest.push(base.components().next_back()?);
        base = base.parent()?;
    }
}

/// Whether both paths name the same file (a hard link, or a link to it).
#[cfg(unix)]
fn is_same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn is_same_file(_: &Path, _: &Path) -> bool {
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resolve_handles_paths_that_do_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        assert_eq!(resolve(dir.path()).unwrap(), base);
        assert_eq!(
            resolve(&dir.path().join("a/b/../c.pt")).unwrap(),
            base.join("a/c.pt")
        );
    }
}
