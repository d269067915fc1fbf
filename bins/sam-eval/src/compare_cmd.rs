//! `sam-eval model --baseline`: the checkpoint beside the model it was fine-tuned from.

use std::path::{Path, PathBuf};

use sam_cli::Failure;
use sam_cli_torch::{BaselineChoice, BaselineOrigin};
use sam_eval::{Baseline, ComparisonReport, ModelEvalOptions};
use sam_infer::{InferenceModel, Precision, TileSpec};

use crate::eval_failure;
use crate::model_cmd::{load_model, summary_line};

/// Images listed in the console summary of a comparison (all are in per_image_deltas.csv).
const LISTED_IMAGES: usize = 20;

/// The baseline, loaded, with its tiling.
pub struct LoadedBaseline {
    model: InferenceModel,
    checkpoint: PathBuf,
    tiles: TileSpec,
}

impl LoadedBaseline {
    /// As sam-eval's comparison takes it.
    pub fn as_baseline(&self) -> Baseline<'_> {
        Baseline {
            model: &self.model,
            checkpoint: self.checkpoint.clone(),
            tiles: self.tiles,
        }
    }
}

/// Loads the baseline, after the model: none when it is the evaluated checkpoint itself.
/// `config_tiles` is the config's tiling before it was adjusted to the model. A baseline that
/// cannot run the model's mode, or a comparison already in the output folder, stops here
/// (usage error) when `--baseline` named it; the default baseline (the config's
/// `model.checkpoint`) is then left out with a warning that says how to compare.
pub fn load_baseline(
    choice: Option<BaselineChoice>,
    model: &InferenceModel,
    opts: &ModelEvalOptions,
    config_tiles: TileSpec,
    device: tch::Device,
    precision: Precision,
) -> Result<Option<LoadedBaseline>, Failure> {
    let Some(choice) = choice else {
        return Ok(None);
    };
    let checkpoint = std::fs::canonicalize(&choice.checkpoint).unwrap_or(choice.checkpoint);
    if checkpoint == opts.checkpoint {
        eprintln!(
            "note: the baseline {} is the evaluated checkpoint: no comparison",
            checkpoint.display()
        );
        return Ok(None);
    }
    let (baseline, tiles, _) =
        load_model(&checkpoint, device, precision, "baseline", config_tiles)?;
    let loaded = LoadedBaseline {
        model: baseline,
        checkpoint,
        tiles,
    };
    match sam_eval::check_comparison(model, opts, &loaded.as_baseline()) {
        Ok(()) => Ok(Some(loaded)),
        Err(e @ sam_eval::EvalError::Setting { .. }) if choice.origin == BaselineOrigin::Config => {
            eprintln!(
                "warning: not compared with the config's model.checkpoint `{}`: {e} (or pass \
                 --baseline FILE|NAME; --no-baseline silences this)",
                choice.spec
            );
            Ok(None)
        }
        Err(e) => Err(eval_failure(e)),
    }
}

/// The console summary of a comparison: the baseline's line, the change of mean mSA, and the
/// images where the model got worse, the largest drop first.
pub fn print_comparison(c: &ComparisonReport, out_dir: &Path) {
    println!("baseline {}", summary_line(&c.baseline));
    let (b, m) = (
        c.baseline.test.summary.mean_per_image.msa,
        c.model.test.summary.mean_per_image.msa,
    );
    println!("mSA {b:.4} (baseline) -> {m:.4} (model), {:+.4}", m - b);
    let worse: Vec<_> = c.worse().collect();
    if worse.is_empty() {
        println!("no test image got worse than with the baseline (mSA)");
    } else {
        println!(
            "{} of {} test images got worse than with the baseline (mSA), worst first:",
            worse.len(),
            c.images.len()
        );
        for d in worse.iter().take(LISTED_IMAGES) {
            let s = d.msa();
            println!(
                "  {}: {:.4} -> {:.4} ({:+.4})",
                d.image, s.baseline, s.model, s.delta
            );
        }
        if worse.len() > LISTED_IMAGES {
            println!("  … and {} more", worse.len() - LISTED_IMAGES);
        }
    }
    for it in &c.iterative {
        if let Some(last) = it.rounds.last() {
            let msa = last[0];
            println!(
                "iterative prompting ({}), round {}: mSA {:.4} (baseline) -> {:.4} (model), {:+.4}",
                it.start.name(),
                it.rounds.len() - 1,
                msa.baseline,
                msa.model,
                msa.delta
            );
        }
    }
    let written: Vec<&str> = sam_eval::COMPARISON_FILES
        .into_iter()
        .filter(|f| out_dir.join(f).is_file())
        .collect();
    println!(
        "comparison written to {} ({}, {}{})",
        out_dir.display(),
        written.join(", "),
        sam_eval::BASELINE_DIR,
        if c.overlays.is_empty() {
            "/".to_string()
        } else {
            format!("/, {}/", sam_eval::COMPARISON_OVERLAY_DIR)
        }
    );
}
