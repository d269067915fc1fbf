//! Export to the formats the Python world reads: a plain segment_anything state_dict, or
//! micro_sam's `{model_state, decoder_state}` when the decoder is included.
//!
//! An export never destroys what it reads: an output that is the checkpoint itself (by path,
//! through a link, or as a hard link) or lies inside the checkpoint folder is refused, and an
//! existing file is replaced only when asked to ([`ExportOptions::replace`]). The file is
//! written to a temporary file and renamed into place.

use std::fs;
use std::path::{Component, Path, PathBuf};

use sam_model::{read_checkpoint, write_torch_checkpoint, SamModel};
use tch::Tensor;

use crate::TrainError;

/// How [`export_model`] writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Write micro_sam's `{model_state, decoder_state}`; requires decoder weights in the
    /// source. Without it, a plain SAM state_dict.
    pub with_decoder: bool,
    /// Replace the output file when it exists (`sam-train export --force`; a training run
    /// replaces its `export_path` after saying so in its log). Never the source itself.
    pub replace: bool,
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
    let (model, decoder, input_size) = if source.is_dir() {
        let file = source.join("model.safetensors");
        if !file.is_file() {
            return Err(TrainError::MissingCheckpoint(format!(
                "{} is not a checkpoint folder (no model.safetensors)",
                source.display()
            )));
        }
        let tensors = Tensor::read_safetensors(&file).map_err(|e| TrainError::format(&file, e))?;
        let (sam, dec) = SamModel::split_named(&tensors);
        (
            sam,
            (!dec.is_empty()).then_some(dec),
            folder_input_size(source)?,
        )
    } else if source.is_file() {
        let ck = read_checkpoint(source)?;
        (ck.model_state, ck.decoder_state, ck.input_size)
    } else {
        return Err(TrainError::MissingCheckpoint(format!(
            "checkpoint {} does not exist",
            source.display()
        )));
    };
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

/// Refuses an output that would destroy the source or replace a file unasked.
fn check_output(source: &Path, output: &Path, replace: bool) -> Result<(), TrainError> {
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
fn resolve(path: &Path) -> Option<PathBuf> {
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
