//! `sam-eval model --baseline`: the model a checkpoint is compared with.

use std::path::PathBuf;

use sam_cli::CliError;
use sam_config::{ExperimentConfig, RunPaths};

use crate::resolve_checkpoint;

/// Where the baseline of a comparison was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaselineOrigin {
    /// `--baseline CHECKPOINT|NAME`.
    Flag,
    /// The config's `model.checkpoint`: the model training started from (the default).
    Config,
}

/// The baseline of a comparison, found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineChoice {
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// As it was given (the flag's value or the config's `model.checkpoint`).
    pub spec: String,
    /// Where it was named.
    pub origin: BaselineOrigin,
}

/// The baseline that `sam-eval model` compares the checkpoint with:
///
/// - `--baseline SPEC`: found by the one rule of [`resolve_checkpoint`] in the run's
///   repository root, as `--checkpoint` is ([`crate::eval_checkpoint`]);
/// - `--no-baseline` (`disabled`): none;
/// - else the config's `model.checkpoint` (a micro_sam model name, or a file relative to the
///   repository root), found by the same rule; none when it is `null` (random weights).
///
/// # Errors
/// [`CliError::Baseline`] naming the baseline, where it was named and the fix, with
/// [`CliError::Checkpoint`] (where it was looked for) as its source.
pub fn eval_baseline(
    spec: Option<&str>,
    disabled: bool,
    cfg: &ExperimentConfig,
    paths: &RunPaths,
) -> Result<Option<BaselineChoice>, CliError> {
    if disabled {
        return Ok(None);
    }
    let (given, lookup, origin) = match spec {
        Some(spec) => (spec.to_owned(), spec.to_owned(), BaselineOrigin::Flag),
        None => match (&cfg.model.checkpoint, paths.model_checkpoint(&cfg.model)) {
            (Some(given), Some(lookup)) => (given.clone(), lookup, BaselineOrigin::Config),
            _ => return Ok(None),
        },
    };
    match resolve_checkpoint(&lookup, Some(&paths.root), None) {
        Ok(checkpoint) => Ok(Some(BaselineChoice {
            checkpoint,
            spec: given,
            origin,
        })),
        Err(source) => Err(CliError::Baseline {
            origin: match origin {
                BaselineOrigin::Flag => "--baseline",
                BaselineOrigin::Config => {
                    "the baseline (the config's model.checkpoint, the model training started from)"
                }
            },
            spec: given,
            fix: match origin {
                BaselineOrigin::Flag => {
                    "give a checkpoint file, a name under final_models/ or a micro_sam model \
                     name in the model cache, or leave out --baseline"
                }
                BaselineOrigin::Config => {
                    "put it where the config says (a micro_sam model name is looked up in \
                     $MICROSAM_CACHEDIR or ~/.cache/micro_sam/models), pass --baseline \
                     FILE|NAME, or pass --no-baseline to evaluate without a comparison"
                }
            },
            source: Box::new(source),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tests::minimal_config;

    #[test]
    fn the_flag_then_the_config_checkpoint_and_no_baseline_turns_it_off() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("final_models")).unwrap();
        std::fs::write(t.path().join("final_models/b.pt"), b"x").unwrap();
        std::fs::write(t.path().join("start.pt"), b"x").unwrap();
        let mut cfg = minimal_config();
        cfg.model.checkpoint = Some("start.pt".into());
        let paths = RunPaths::new(t.path(), &cfg);
        let got = eval_baseline(Some("b"), false, &cfg, &paths)
            .unwrap()
            .unwrap();
        assert_eq!(got.checkpoint, t.path().join("final_models/b.pt"));
        assert_eq!(got.origin, BaselineOrigin::Flag);
        // The flag is found like --checkpoint.
        assert_eq!(
            got.checkpoint,
            crate::eval_checkpoint(Some("b"), &paths).unwrap()
        );
        let got = eval_baseline(None, false, &cfg, &paths).unwrap().unwrap();
        assert_eq!(got.checkpoint, t.path().join("start.pt"));
        assert_eq!(
            (got.origin, got.spec.as_str()),
            (BaselineOrigin::Config, "start.pt")
        );
        assert_eq!(eval_baseline(Some("b"), true, &cfg, &paths).unwrap(), None);
        assert_eq!(eval_baseline(None, true, &cfg, &paths).unwrap(), None);
        cfg.model.checkpoint = None;
        assert_eq!(eval_baseline(None, false, &cfg, &paths).unwrap(), None);
    }

    #[test]
    fn a_missing_baseline_names_itself_and_the_fix() {
        let t = tempfile::tempdir().unwrap();
        let mut cfg = minimal_config();
        cfg.model.checkpoint = Some("gone/start.pt".into());
        let paths = RunPaths::new(t.path(), &cfg);
        let err = eval_baseline(Some("no_such_model"), false, &cfg, &paths).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("--baseline `no_such_model` cannot be found; ")
                && msg.contains("leave out --baseline"),
            "{msg}"
        );
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            source.contains("no_such_model") && source.contains("final_models"),
            "{source}"
        );
        let msg = eval_baseline(None, false, &cfg, &paths)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("model.checkpoint")
                && msg.contains("`gone/start.pt`")
                && msg.contains("--no-baseline"),
            "{msg}"
        );
    }
}
