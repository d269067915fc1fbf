//! `sam-eval model`: score a checkpoint on the experiment's test images.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::ProgressBar;
use sam_cli::Failure;
use sam_cli_torch::{eval_checkpoint, model_eval_options, ModelEvalFlags};
use sam_config::{RunPaths, ValidateOptions};
use sam_eval::{evaluate_model, ModelProgress, ModelReport};
use sam_infer::{InferenceModel, Precision, TileSpec};

use crate::{eval_failure, new_bar};

/// The flags of `sam-eval model` (the help text is on the subcommand).
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Experiment config (YAML).
    #[arg(long, value_name = "YAML")]
    pub config: PathBuf,

    /// Checkpoint: a file, a name under final_models/, or a micro_sam model name in the model
    /// cache ($MICROSAM_CACHEDIR or ~/.cache/micro_sam/models) [default: the config's
    /// export_path].
    #[arg(long, value_name = "CHECKPOINT")]
    pub checkpoint: Option<String>,

    /// Compare with this model (a file, a name under final_models/, or a micro_sam model name
    /// in the model cache, found as --checkpoint is) [default: the config's model.checkpoint,
    /// the model training started from, unless it is null].
    ///
    /// Both are scored on the same test images with the same mode and parameters (with
    /// --grid-search, those chosen for the checkpoint). Writes, beside the checkpoint's
    /// evaluation, baseline/ (the baseline's evaluation), comparison.csv (one row per model,
    /// micro_sam's columns), per_image_deltas.csv (each image's scores for both and the change,
    /// the images that got worse first) and comparison_overlays/ (<rank>_<image>_baseline.png
    /// and _model.png for the first --worst N images of that order, rank 01 for the largest
    /// mSA drop), and lists the images that got worse.
    #[arg(long, value_name = "CHECKPOINT", help_heading = "Comparison")]
    pub baseline: Option<String>,

    /// Evaluate the checkpoint alone, without the default baseline (the config's
    /// model.checkpoint).
    #[arg(long, conflicts_with = "baseline", help_heading = "Comparison")]
    pub no_baseline: bool,

    /// Choose the automatic-segmentation thresholds on the validation images first.
    ///
    /// AIS: every combination of evaluation.grid_search.center_distance_threshold,
    /// boundary_distance_threshold, distance_smoothing and min_size; AMG: pred_iou_thresh and
    /// stability_score_thresh; APG: center_distance_threshold, boundary_distance_threshold,
    /// min_size, nms_threshold and intersection_over_min. The combination with the highest mean validation mSA is
    /// recorded in report.json (with every combination tried) and used on the test images.
    /// Validation images: data.validation.images_dir / labels_dir, or the fraction of the
    /// training images that training held out.
    #[arg(long, help_heading = "Modes")]
    pub grid_search: bool,

    /// Also evaluate iterative prompting.
    ///
    /// Every test object is prompted with its box or one point (evaluation.iterative_prompting
    /// .start_with: point, box or both); each of the n_iterations rounds adds a positive point
    /// in the missed region and a negative point in the wrongly included one. One row of
    /// metrics per round in iterative_prompting_<box|point>.csv.
    #[arg(long, help_heading = "Modes")]
    pub iterative_prompting: bool,

    /// Replace an existing evaluation of this experiment.
    #[arg(long)]
    pub overwrite: bool,

    /// Device: auto (a GPU when libtorch sees one, else the CPU), cpu, cuda or cuda:N.
    ///
    /// cuda (or cuda:N) without a usable GPU stops with exit status 2 before any work, saying
    /// why (libtorch build, NVIDIA driver, CUDA_VISIBLE_DEVICES). The device used is printed.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: String,

    /// Precision of the forward passes: fp32, or bf16 (bf16 autocast).
    ///
    /// bf16 runs the encoder and decoders under bf16 autocast (meant for GPUs with bf16
    /// tensor cores: A100, H100); the weights stay fp32 and the logits, IoU
    /// predictions and decoder maps are cast back to fp32 before thresholding. The config's
    /// training.precision does not change this default, so that scores of checkpoints trained
    /// in different precisions stay comparable. Printed with the device and recorded in
    /// report.json.
    #[arg(
        long,
        default_value = "fp32",
        value_name = "PRECISION",
        value_parser = sam_cli_torch::parse_precision
    )]
    pub precision: sam_infer::Precision,

    /// Overlay pictures of the N lowest-mSA test images [default: 10, 0 when
    /// evaluation.write_overlays is false].
    #[arg(long, value_name = "N")]
    pub worst: Option<usize>,

    /// Repository root [default: $SAM_TRAINER_ROOT, else the nearest folder above the working
    /// directory, or above the config, that holds configs/ and dat/].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Do not show a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The device of `--device`, printed with the precision; a GPU that cannot be had is a usage
/// error, before the config's folders or the checkpoint are looked at.
fn select_device(args: &ModelArgs) -> Result<tch::Device, Failure> {
    let choice = sam_cli_torch::select_device(&args.device)?;
    eprintln!("{}", sam_cli_torch::device_line(&choice, args.precision));
    Ok(choice.device)
}

fn find_root(args: &ModelArgs) -> Result<PathBuf, Failure> {
    sam_config::find_root_for(args.root.as_deref(), Some(&args.config)).map_err(|e| {
        Failure::usage_msg(format!(
            "{e}; (also searched above the config {}) or pass --root",
            args.config.display()
        ))
    })
}

/// Loads `checkpoint` at `precision`, names it on stderr as `role` (`model`, `baseline`) with
/// its description, and returns it with the tiling to run it with
/// ([`sam_cli_torch::tiles_for_model`] of `tiles`) and that function's note.
pub fn load_model(
    checkpoint: &Path,
    device: tch::Device,
    precision: Precision,
    role: &str,
    tiles: TileSpec,
) -> Result<(InferenceModel, TileSpec, Option<String>), Failure> {
    let model = InferenceModel::load(checkpoint, device)
        .map_err(Failure::failed)?
        .with_precision(precision);
    eprintln!("{role}: {}", model.description());
    let (tiles, note) =
        sam_cli_torch::tiles_for_model(tiles, model.sam().is_native_input(), model.input_size());
    Ok((model, tiles, note))
}

/// `<checkpoint> (<mode>), <n> test images: mSA … F1 …`: the evaluation's summary line, also
/// the baseline's in a comparison.
pub fn summary_line(r: &ModelReport) -> String {
    let m = &r.test.summary.mean_per_image;
    format!(
        "{} ({}), {} test images: mSA {:.4}  SA50 {:.4}  SA75 {:.4}  Precision {:.4}  Recall {:.4}  F1 {:.4}",
        r.checkpoint.display(),
        r.mode,
        r.test.summary.images,
        m.msa,
        m.sa50,
        m.sa75,
        m.precision,
        m.recall,
        m.f1
    )
}

fn print_report(r: &ModelReport, out_dir: &Path) {
    if let Some(g) = &r.grid_search {
        let best = g.chosen();
        println!(
            "grid search: {} combinations on {} validation images; best mSA {:.4}: {}",
            g.tried.len(),
            g.validation_images.len(),
            best.msa,
            match best.params {
                sam_eval::GridParams::Ais(p) => format!(
                    "center_distance_threshold {}, boundary_distance_threshold {}, \
                     distance_smoothing {}, min_size {}",
                    p.center_distance_threshold,
                    p.boundary_distance_threshold,
                    p.distance_smoothing,
                    p.min_size
                ),
                sam_eval::GridParams::Amg(p) => format!(
                    "pred_iou_thresh {}, stability_score_thresh {}",
                    p.pred_iou_thresh, p.stability_score_thresh
                ),
                sam_eval::GridParams::Apg(p) => format!(
                    "center_distance_threshold {}, boundary_distance_threshold {}, min_size {}, \
                     nms_threshold {}, intersection_over_min {}",
                    p.center_distance_threshold,
                    p.boundary_distance_threshold,
                    p.min_size,
                    p.nms_threshold,
                    p.intersection_over_min
                ),
            }
        );
    }
    println!("{}", summary_line(r));
    for it in &r.iterative_prompting {
        let line: Vec<String> = it
            .rounds
            .iter()
            .map(|s| format!("{:.3}", s.mean_per_image.msa))
            .collect();
        println!(
            "iterative prompting ({}): mSA per round {}",
            it.start.name(),
            line.join(" ")
        );
    }
    println!("reports written to {}", out_dir.display());
}

/// Warns once per image size that the model would see shrunk, with the tiling that fits.
fn warn_downscale(test_images: &Path, tiles: &TileSpec, input_size: usize) {
    let Ok(entries) = std::fs::read_dir(test_images) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for s in sam_cli_torch::shrunk_images(paths.iter().map(PathBuf::as_path), tiles, input_size) {
        eprintln!(
            "warning: {} ({}x{}) is {}: set inference.tile_shape: [{t}, {t}] and \
             inference.halo: [{h}, {h}] in the config",
            s.path.display(),
            s.width,
            s.height,
            s.downscale,
            t = s.downscale.tile,
            h = s.downscale.halo
        );
    }
}

/// Runs `sam-eval model`.
pub fn run_model(args: ModelArgs) -> Result<(), Failure> {
    let device = select_device(&args)?;
    let loaded =
        sam_config::load_config_with(&args.config, &ValidateOptions::without_path_checks())
            .map_err(Failure::usage_msg)?;
    let cfg = loaded.config;
    sam_cli_torch::apply_tf32(device, cfg.hardware.tf32)?;
    let root = find_root(&args)?;
    let paths = RunPaths::new(root, &cfg);
    let checkpoint = eval_checkpoint(args.checkpoint.as_deref(), &paths)?;
    // Absolute in the report, whatever the working directory was.
    let checkpoint = std::fs::canonicalize(&checkpoint).unwrap_or(checkpoint);
    let baseline =
        sam_cli_torch::eval_baseline(args.baseline.as_deref(), args.no_baseline, &cfg, &paths)?;
    let flags = ModelEvalFlags {
        grid_search: args.grid_search,
        iterative_prompting: args.iterative_prompting,
        overwrite: args.overwrite,
        worst: args.worst,
    };
    let mut opts = model_eval_options(&cfg, &paths, checkpoint.clone(), flags)?;
    // Fail on folders, settings and an existing evaluation before the model is loaded.
    opts.check().map_err(eval_failure)?;
    let config_tiles = opts.segmentation.tiles;
    let (model, tiles, note) =
        load_model(&checkpoint, device, args.precision, "model", config_tiles)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    opts.segmentation.tiles = tiles;
    warn_downscale(
        &opts.test_images,
        &opts.segmentation.tiles,
        model.input_size(),
    );
    opts.segmentation.mode.resolve(&model).map_err(|e| {
        Failure::usage_msg(format!(
            "{e} (set inference.mode to amg or auto in {})",
            args.config.display()
        ))
    })?;
    let baseline = crate::compare_cmd::load_baseline(
        baseline,
        &model,
        &opts,
        config_tiles,
        device,
        args.precision,
    )?;

    let mut bar: Option<ProgressBar> = None;
    let quiet = args.quiet;
    let mut on_progress = |p: ModelProgress| {
        if quiet {
            return;
        }
        match p {
            ModelProgress::Stage { name, total } => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                bar = Some(new_bar(total, &name));
            }
            ModelProgress::Image => {
                if let Some(b) = &bar {
                    b.inc(1);
                }
            }
        }
    };
    if let Some(baseline) = &baseline {
        let c =
            sam_eval::compare_to_baseline(&model, &opts, &baseline.as_baseline(), &mut on_progress)
                .map_err(eval_failure)?;
        if let Some(b) = bar.take() {
            b.finish();
        }
        print_report(&c.model, &opts.out_dir);
        crate::compare_cmd::print_comparison(&c, &opts.out_dir);
        return Ok(());
    }
    if opts.overwrite {
        // No comparison is left beside scores it does not belong to.
        sam_eval::remove_comparison(&opts.out_dir).map_err(eval_failure)?;
    }
    let report = evaluate_model(&model, &opts, &mut on_progress).map_err(eval_failure)?;
    if let Some(b) = bar.take() {
        b.finish();
    }
    print_report(&report, &opts.out_dir);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ModelArgs,
    }

    #[test]
    fn model_flags_parse() {
        let w = Wrap::try_parse_from([
            "x",
            "--config",
            "configs/a.yaml",
            "--checkpoint",
            "vit_b_lm",
            "--grid-search",
            "--iterative-prompting",
            "--overwrite",
            "--device",
            "cpu",
            "--worst",
            "3",
        ])
        .unwrap();
        let a = w.args;
        assert_eq!(a.config, PathBuf::from("configs/a.yaml"));
        assert_eq!(a.checkpoint.as_deref(), Some("vit_b_lm"));
        assert!(a.grid_search && a.iterative_prompting && a.overwrite);
        assert_eq!(a.worst, Some(3));
        let w = Wrap::try_parse_from(["x", "--config", "c.yaml"]).unwrap();
        assert_eq!(w.args.device, "auto");
        assert!(w.args.checkpoint.is_none() && !w.args.grid_search);
        assert!(Wrap::try_parse_from(["x"]).is_err());
    }

    #[test]
    fn baseline_flags_parse_and_exclude_each_other() {
        let w =
            Wrap::try_parse_from(["x", "--config", "c.yaml", "--baseline", "vit_b_lm"]).unwrap();
        assert_eq!(w.args.baseline.as_deref(), Some("vit_b_lm"));
        assert!(!w.args.no_baseline);
        let w = Wrap::try_parse_from(["x", "--config", "c.yaml", "--no-baseline"]).unwrap();
        assert!(w.args.no_baseline && w.args.baseline.is_none());
        let w = Wrap::try_parse_from(["x", "--config", "c.yaml"]).unwrap();
        assert!(!w.args.no_baseline && w.args.baseline.is_none());
        let err = Wrap::try_parse_from([
            "x",
            "--config",
            "c.yaml",
            "--baseline",
            "b",
            "--no-baseline",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
