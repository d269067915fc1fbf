//! `--checkpoint NAME`: one rule for every executable that takes a model.

use std::path::{Path, PathBuf};

use sam_cli::CliError;

/// The checkpoint file that `spec` names, tried in this order:
///
/// 1. a file, relative to the working directory;
/// 2. a file relative to the repository `root` (`final_models/m.pt` from any folder of it);
/// 3. a name under `final_models` (as is, or with `.pt`, `.pth`, `.safetensors`), by default
///    `<root>/final_models`, else `final_models/` of the working directory;
/// 4. a micro_sam model name in the model cache (`$MICROSAM_CACHEDIR` or
///    `~/.cache/micro_sam/models`).
pub fn resolve_checkpoint(
    spec: &str,
    root: Option<&Path>,
    final_models: Option<&Path>,
) -> Result<PathBuf, CliError> {
    let final_models = match (final_models, root) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(root)) => root.join("final_models"),
        (None, None) => PathBuf::from("final_models"),
    };
    let direct = Path::new(spec);
    if direct.is_file() {
        return Ok(direct.to_path_buf());
    }
    if let Some(in_root) = root.map(|r| r.join(direct)).filter(|p| p.is_file()) {
        return Ok(in_root);
    }
    for ext in ["", ".pt", ".pth", ".safetensors"] {
        let p = final_models.join(format!("{spec}{ext}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    sam_model::resolve_checkpoint(spec).map_err(|cache| CliError::Checkpoint {
        spec: spec.to_owned(),
        final_models,
        cache: Box::new(cache),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn files_then_the_root_then_named_models() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("repo");
        std::fs::create_dir_all(root.join("final_models")).unwrap();
        std::fs::write(root.join("final_models/tiny.pt"), b"x").unwrap();
        std::fs::write(root.join("final_models/other.safetensors"), b"x").unwrap();
        let file = t.path().join("direct.pt");
        std::fs::write(&file, b"x").unwrap();

        let r = |spec: &str| resolve_checkpoint(spec, Some(&root), None).unwrap();
        assert_eq!(r(file.to_str().unwrap()), file);
        assert_eq!(r("final_models/tiny.pt"), root.join("final_models/tiny.pt"));
        assert_eq!(r("tiny"), root.join("final_models/tiny.pt"));
        assert_eq!(r("other"), root.join("final_models/other.safetensors"));
        // An explicit folder of named models replaces the root's.
        let elsewhere = t.path().join("models");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("tiny.pth"), b"x").unwrap();
        assert_eq!(
            resolve_checkpoint("tiny", Some(&root), Some(&elsewhere)).unwrap(),
            elsewhere.join("tiny.pth")
        );
    }

    #[test]
    fn an_unknown_name_says_where_it_looked() {
        let t = tempfile::tempdir().unwrap();
        let err = resolve_checkpoint("no_such_model_xyz", Some(t.path()), None).unwrap_err();
        let msg = err.to_string();
        let expected = format!(
            "model: checkpoint `no_such_model_xyz`: not a file, not in {}, and not in the \
             model cache: ",
            t.path().join("final_models").display()
        );
        assert!(msg.starts_with(&expected), "{msg}");
    }
}
