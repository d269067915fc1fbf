//! `sam-eval model`: score a checkpoint on the experiment's test images.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::ProgressBar;
use sam_config::{ExperimentConfig, RunPaths, ValidateOptions, ValidationSource};
use sam_eval::{
    evaluate_model, GridSearchOptions, GridValues, ImageSource, IterativeOptions, ModelEvalOptions,
    ModelProgress, ModelReport, PromptStart,
};
use sam_infer::{
    resolve_model_path_in, AisParams, AmgParams, AutoMode, AutoOptions, InferenceModel, TileSpec,
};
use sam_torch::DeviceRequest;

use crate::{eval_failure, new_bar, Failure};

/// Objects per mask-decoder call in iterative prompting.
const OBJECTS_PER_BATCH: usize = 16;

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

    /// Choose the automatic-segmentation thresholds on the validation images first.
    ///
    /// AIS: every combination of evaluation.grid_search.center_distance_threshold,
    /// boundary_distance_threshold, distance_smoothing and min_size; AMG: pred_iou_thresh and
    /// stability_score_thresh. The combination with the highest mean validation mSA is
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

fn usage(e: impl std::fmt::Display) -> Failure {
    Failure::usage(e.to_string())
}

fn parse_device(s: &str) -> Result<DeviceRequest, Failure> {
    s.parse().map_err(|e| usage(format!("--device: {e}")))
}

/// The device of `--device`, printed; a GPU that cannot be had is a usage error, before the
/// config's folders or the checkpoint are looked at.
fn select_device(name: &str) -> Result<tch::Device, Failure> {
    let choice = sam_torch::select_device(parse_device(name)?, 0)
        .map_err(|e| usage(format!("--device: {e}")))?;
    eprintln!("device: {choice}");
    Ok(choice.device)
}

fn find_root(args: &ModelArgs) -> Result<PathBuf, Failure> {
    sam_config::find_root_for(args.root.as_deref(), Some(&args.config)).map_err(|e| {
        usage(format!(
            "{e}; (also searched above the config {}) or pass --root",
            args.config.display()
        ))
    })
}

/// The checkpoint file: `--checkpoint` (a file, relative to the working directory or the
/// root; a name under the root's final_models/; a micro_sam name) or the config's export path.
fn resolve_checkpoint(args: &ModelArgs, paths: &RunPaths) -> Result<PathBuf, Failure> {
    let final_models = paths.root.join("final_models");
    match &args.checkpoint {
        Some(spec) => resolve_model_path_in(spec, Some(&paths.root), &final_models).map_err(usage),
        None if paths.export_path.is_file() => Ok(paths.export_path.clone()),
        None => Err(usage(format!(
            "no checkpoint at {} (the config's export_path, written when training ends): \
             train and export the model first, or pass --checkpoint FILE|NAME",
            paths.export_path.display()
        ))),
    }
}

/// The automatic-segmentation options of the config (`inference`, `data.normalization`).
fn auto_options(cfg: &ExperimentConfig) -> Result<AutoOptions, Failure> {
    // The values passed the config's rules when it was loaded.
    let inf = &cfg.inference;
    let mode = match inf.mode {
        sam_config::InferenceMode::Auto => AutoMode::Auto,
        sam_config::InferenceMode::Ais => AutoMode::Ais,
        sam_config::InferenceMode::Amg => AutoMode::Amg,
    };
    let a = &inf.ais;
    let ais = AisParams {
        center_distance_threshold: a.center_distance_threshold as f32,
        boundary_distance_threshold: a.boundary_distance_threshold as f32,
        foreground_threshold: a.foreground_threshold as f32,
        foreground_smoothing: a.foreground_smoothing as f32,
        distance_smoothing: a.distance_smoothing as f32,
        min_size: u64::from(a.min_size),
    };
    let m = &inf.amg;
    let amg = AmgParams {
        points_per_side: m.points_per_side as usize,
        points_per_batch: m.points_per_batch as usize,
        pred_iou_thresh: m.pred_iou_thresh as f32,
        stability_score_thresh: m.stability_score_thresh as f32,
        stability_score_offset: m.stability_score_offset as f32,
        box_nms_thresh: m.box_nms_thresh as f32,
        crop_nms_thresh: m.crop_nms_thresh as f32,
        min_mask_region_area: u64::from(m.min_mask_region_area),
        with_background: true,
    };
    ais.validate().map_err(usage)?;
    amg.validate().map_err(usage)?;
    let normalization = sam_data::Normalization {
        lower_percentile: cfg.data.normalization.lower_percentile,
        upper_percentile: cfg.data.normalization.upper_percentile,
    };
    normalization.validate().map_err(usage)?;
    Ok(AutoOptions {
        mode,
        tiles: TileSpec {
            tile_shape: inf.tile_shape.map(|[h, w]| (h as usize, w as usize)),
            halo: (inf.halo[0] as usize, inf.halo[1] as usize),
        },
        batch_size: (inf.batch_size as usize).max(1),
        ais,
        amg,
        normalization,
        overwrite: true,
        write_overlay: false,
        write_csv: false,
        embedding_cache: None,
    })
}

fn grid_values(cfg: &ExperimentConfig) -> GridValues {
    let g = &cfg.evaluation.grid_search;
    let f = |r: &sam_config::GridRange| r.values().into_iter().map(|v| v as f32).collect();
    GridValues {
        center_distance_threshold: f(&g.center_distance_threshold),
        boundary_distance_threshold: f(&g.boundary_distance_threshold),
        distance_smoothing: f(&g.distance_smoothing),
        min_size: g.min_size.iter().map(|&m| u64::from(m)).collect(),
        pred_iou_thresh: f(&g.pred_iou_thresh),
        stability_score_thresh: f(&g.stability_score_thresh),
    }
}

fn validation_source(cfg: &ExperimentConfig, paths: &RunPaths) -> Result<ImageSource, Failure> {
    match cfg.data.validation.source() {
        Some(ValidationSource::Dirs { images, labels }) => Ok(ImageSource::Dirs {
            images: paths.resolve(&images),
            labels: paths.resolve(&labels),
        }),
        Some(ValidationSource::Fraction(fraction)) => Ok(ImageSource::HeldOut {
            images: paths.resolve(&cfg.data.train_images_dir),
            labels: paths.resolve(&cfg.data.train_labels_dir),
            fraction,
            seed: cfg.seed,
        }),
        None => Err(usage(
            "data.validation: give images_dir and labels_dir, or a fraction, for --grid-search",
        )),
    }
}

/// The evaluation options of the config and the flags.
fn eval_options(
    args: &ModelArgs,
    cfg: &ExperimentConfig,
    paths: &RunPaths,
    checkpoint: PathBuf,
) -> Result<ModelEvalOptions, Failure> {
    let e = &cfg.evaluation;
    let grid_search = if args.grid_search {
        Some(GridSearchOptions {
            validation: validation_source(cfg, paths)?,
            values: grid_values(cfg),
        })
    } else {
        None
    };
    let iterative = args.iterative_prompting.then(|| {
        let it = &e.iterative_prompting;
        IterativeOptions {
            starts: match it.start_with {
                sam_config::PromptStart::Point => vec![PromptStart::Point],
                sam_config::PromptStart::Box => vec![PromptStart::Box],
                sam_config::PromptStart::Both => vec![PromptStart::Box, PromptStart::Point],
            },
            n_iterations: it.n_iterations as usize,
            use_masks: it.use_masks,
            seed: cfg.seed,
            objects_per_batch: OBJECTS_PER_BATCH,
        }
    });
    Ok(ModelEvalOptions {
        checkpoint,
        test_images: paths.resolve(&e.test_images_dir),
        test_labels: paths.resolve(&e.test_labels_dir),
        out_dir: paths.evaluation_dir.clone(),
        overwrite: args.overwrite,
        segmentation: auto_options(cfg)?,
        grid_search,
        iterative,
        overlays: args.worst.unwrap_or(if e.write_overlays { 10 } else { 0 }),
    })
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
            }
        );
    }
    let m = &r.test.summary.mean_per_image;
    println!(
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
    );
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
    let mut seen = std::collections::BTreeSet::new();
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Ok((w, h)) = sam_data::image_dimensions(&path) else {
            continue;
        };
        if !seen.insert((h, w)) {
            continue;
        }
        if let Some(d) = tiles.downscale((h, w), input_size) {
            eprintln!(
                "warning: {} ({w}x{h}) is {d}: set inference.tile_shape: [{t}, {t}] and \
                 inference.halo: [{hl}, {hl}] in the config",
                path.display(),
                t = d.tile,
                hl = d.halo
            );
        }
    }
}

/// Runs `sam-eval model`.
pub fn run_model(args: ModelArgs) -> Result<(), Failure> {
    let device = select_device(&args.device)?;
    let loaded =
        sam_config::load_config_with(&args.config, &ValidateOptions::without_path_checks())
            .map_err(usage)?;
    let cfg = loaded.config;
    let root = find_root(&args)?;
    let paths = RunPaths::new(root, &cfg);
    let checkpoint = resolve_checkpoint(&args, &paths)?;
    // Absolute in the report, whatever the working directory was.
    let checkpoint = std::fs::canonicalize(&checkpoint).unwrap_or(checkpoint);
    let opts = eval_options(&args, &cfg, &paths, checkpoint.clone())?;
    // Fail on folders, settings and an existing evaluation before the model is loaded.
    opts.check().map_err(eval_failure)?;
    let model = InferenceModel::load(&checkpoint, device).map_err(Failure::failed)?;
    eprintln!("model: {}", model.description());
    warn_downscale(
        &opts.test_images,
        &opts.segmentation.tiles,
        model.input_size(),
    );
    opts.segmentation.mode.resolve(&model).map_err(|e| {
        usage(format!(
            "{e} (set inference.mode to amg or auto in {})",
            args.config.display()
        ))
    })?;

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
    fn device_names_parse() {
        assert!(matches!(parse_device("auto"), Ok(DeviceRequest::Auto)));
        assert!(matches!(parse_device("cpu"), Ok(DeviceRequest::Cpu)));
        assert!(matches!(parse_device("cuda"), Ok(DeviceRequest::Cuda)));
        assert!(matches!(
            parse_device("cuda:2"),
            Ok(DeviceRequest::CudaIndex(2))
        ));
        let err = parse_device("gpu:0").err().unwrap();
        assert_eq!(err.code, 2);
        assert!(
            err.error
                .to_string()
                .contains("--device: unknown device `gpu:0`"),
            "{}",
            err.error
        );
        assert!(matches!(select_device("cpu"), Ok(tch::Device::Cpu)));
    }

    #[test]
    fn config_sections_map_onto_the_options() {
        let mut cfg: ExperimentConfig = minimal_config();
        cfg.evaluation.iterative_prompting.start_with = sam_config::PromptStart::Both;
        cfg.inference.ais.min_size = 30;
        cfg.inference.tile_shape = None;
        let paths = RunPaths::new("/repo", &cfg);
        let w = Wrap::try_parse_from([
            "x",
            "--config",
            "c.yaml",
            "--grid-search",
            "--iterative-prompting",
        ])
        .unwrap();
        let o = eval_options(&w.args, &cfg, &paths, PathBuf::from("m.pt"))
            .ok()
            .unwrap();
        assert_eq!(o.out_dir, PathBuf::from("/repo/runs/exp/evaluation"));
        assert_eq!(o.test_images, PathBuf::from("/repo/dat/test_data/images"));
        assert_eq!(o.segmentation.ais.min_size, 30);
        assert_eq!(o.segmentation.tiles.tile_shape, None);
        let it = o.iterative.unwrap();
        assert_eq!(it.starts, vec![PromptStart::Box, PromptStart::Point]);
        assert_eq!(it.n_iterations, 8);
        let g = o.grid_search.unwrap();
        assert_eq!(
            g.values.center_distance_threshold,
            vec![0.3, 0.4, 0.5, 0.6, 0.7]
        );
        assert_eq!(g.values.min_size, vec![50, 100, 200]);
        // Default validation: 10 % of the training images, held out as training does.
        assert!(matches!(
            g.validation,
            ImageSource::HeldOut { fraction, seed: 42, .. } if fraction == 0.1
        ));
        assert_eq!(o.overlays, 10);
    }

    fn minimal_config() -> ExperimentConfig {
        sam_config::parse_config(
            "experiment_name: exp\noutput_base_dir: runs\ncheckpoint_name: c\n\
             export_path: final_models/exp.pt\n",
            None,
            &ValidateOptions::without_path_checks(),
        )
        .unwrap()
        .config
    }
}
