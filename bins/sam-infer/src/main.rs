//! The `sam-infer` executable: segment new images with a (fine-tuned) SAM checkpoint.
//!
//! A thin shell over the `sam-infer` crate: parse flags, merge them with an optional experiment
//! config, load the model, run, print a summary. Exit codes: 0 ok, 1 failure, 2 usage or config
//! error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sam_infer::{
    file_sha256, list_inputs, read_prompts, resolve_model_path, run_auto, run_prompts, AisParams,
    AmgParams, AutoMode, AutoOptions, ImageReport, InferenceModel, Outcome, Progress, TileSpec,
};
use sam_torch::DeviceRequest;

/// Segment brightfield images with a SAM checkpoint: automatic instance segmentation (AIS,
/// AMG) or prompted segmentation.
///
/// Outputs per image, under OUTPUT: labels/<stem>.tif (u32 label TIFF, deflate, 0 =
/// background, ids 1..N), overlays/<stem>.png (outlines on the image) and objects/<stem>.csv
/// (id, area, centroid, bbox, score).
#[derive(Debug, Parser)]
#[command(name = "sam-infer", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Automatic segmentation without prompts (AIS with the decoder, else AMG).
    Auto(AutoArgs),
    /// Segment objects given by points and boxes in a CSV or JSON file.
    ///
    /// CSV columns: image,object,kind,x,y,x2,y2,label (kind = point or box; points use x,y
    /// and label 1 = positive / 0 = negative; boxes use x,y,x2,y2). JSON: a list of
    /// {"image", "object", "points": [[x, y], ...], "labels": [1, 0, ...], "box": [x0, y0, x1, y1]}.
    /// Each object becomes one label; overlaps go to the mask with the higher predicted IoU.
    Prompts(PromptArgs),
}

#[derive(Debug, Args)]
struct ModelArgs {
    /// Checkpoint: a file, a name under final_models/, or a micro_sam model name in the cache
    /// ($MICROSAM_CACHEDIR or ~/.cache/micro_sam/models).
    #[arg(long, value_name = "CHECKPOINT")]
    checkpoint: String,
    /// Device: auto (a GPU when libtorch sees one, else the CPU), cpu, cuda or cuda:N.
    ///
    /// cuda (or cuda:N) without a usable GPU stops with exit status 2 before any work, saying
    /// why (libtorch build, NVIDIA driver, CUDA_VISIBLE_DEVICES). The device used is printed.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: String,
    /// Folder of named models.
    #[arg(long, default_value = "final_models", value_name = "DIR")]
    final_models: PathBuf,
    /// Lower normalisation percentile (the training preprocessing).
    #[arg(long, value_name = "P")]
    lower_percentile: Option<f64>,
    /// Upper normalisation percentile.
    #[arg(long, value_name = "P")]
    upper_percentile: Option<f64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// AIS when the checkpoint has a decoder, else AMG.
    Auto,
    /// UNETR decoder + seeded watershed.
    Ais,
    /// Point grid + IoU/stability filtering + NMS.
    Amg,
}

#[derive(Debug, Args)]
struct AutoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// An image file or a folder of images.
    #[arg(long, value_name = "FILE|DIR")]
    input: PathBuf,
    /// Output folder (created; never the input folder).
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// Experiment config (YAML); its `inference` section and `data.normalization` give the
    /// defaults that the flags below override.
    #[arg(long, value_name = "YAML")]
    config: Option<PathBuf>,
    /// Segmentation mode [default: from config, else auto].
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Glob for images inside a folder input.
    #[arg(long, default_value = "*", value_name = "GLOB")]
    pattern: String,
    /// Recompute images whose outputs exist (otherwise they are skipped).
    #[arg(long)]
    overwrite: bool,
    /// Inner tile size H W for images larger than the model input [default: config, else 768 768].
    #[arg(long, num_args = 2, value_names = ["H", "W"], help_heading = "Tiling")]
    tile_shape: Option<Vec<usize>>,
    /// Halo H W added around each tile [default: config, else 128 128].
    #[arg(long, num_args = 2, value_names = ["H", "W"], help_heading = "Tiling")]
    halo: Option<Vec<usize>>,
    /// Process the whole image at once (resized to the model input) even when it is larger.
    #[arg(long, help_heading = "Tiling", conflicts_with = "tile_shape")]
    no_tiling: bool,
    /// Tiles per encoder/decoder pass [default: config, else 1].
    #[arg(long, value_name = "N", help_heading = "Tiling")]
    batch_size: Option<usize>,
    /// Cache image embeddings in DIR, keyed by image and model hashes.
    #[arg(long, value_name = "DIR")]
    embedding_cache: Option<PathBuf>,
    /// AIS: seeds where the centre distance is below this [default 0.5].
    #[arg(long, value_name = "T", help_heading = "AIS")]
    center_distance_threshold: Option<f32>,
    /// AIS: seeds where the boundary distance is below this [default 0.5].
    #[arg(long, value_name = "T", help_heading = "AIS")]
    boundary_distance_threshold: Option<f32>,
    /// AIS: foreground where the probability is above this [default 0.5].
    #[arg(long, value_name = "T", help_heading = "AIS")]
    foreground_threshold: Option<f32>,
    /// AIS: Gaussian sigma for the foreground map [default 1.0].
    #[arg(long, value_name = "SIGMA", help_heading = "AIS")]
    foreground_smoothing: Option<f32>,
    /// AIS: Gaussian sigma for the distance maps [default 1.6].
    #[arg(long, value_name = "SIGMA", help_heading = "AIS")]
    distance_smoothing: Option<f32>,
    /// AIS: remove objects smaller than this many pixels [default 0].
    #[arg(long, value_name = "PX", help_heading = "AIS")]
    min_size: Option<u64>,
    /// AMG: points per side of the grid [default 32].
    #[arg(long, value_name = "N", help_heading = "AMG")]
    points_per_side: Option<usize>,
    /// AMG: prompts per mask-decoder pass [default 64].
    #[arg(long, value_name = "N", help_heading = "AMG")]
    points_per_batch: Option<usize>,
    /// AMG: keep masks with predicted IoU above this [default 0.88].
    #[arg(long, value_name = "T", help_heading = "AMG")]
    pred_iou_thresh: Option<f32>,
    /// AMG: keep masks with stability score at least this [default 0.95].
    #[arg(long, value_name = "T", help_heading = "AMG")]
    stability_score_thresh: Option<f32>,
    /// AMG: box IoU for non-maximum suppression [default 0.7].
    #[arg(long, value_name = "T", help_heading = "AMG")]
    box_nms_thresh: Option<f32>,
    /// AMG: remove holes and islands smaller than this [default 0].
    #[arg(long, value_name = "PX", help_heading = "AMG")]
    min_mask_region_area: Option<u64>,
}

#[derive(Debug, Args)]
struct PromptArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// An image file or a folder of images named in the prompt file.
    #[arg(long, value_name = "FILE|DIR")]
    input: PathBuf,
    /// Prompt file (.csv or .json).
    #[arg(long, value_name = "FILE")]
    prompts: PathBuf,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// Glob for images inside a folder input.
    #[arg(long, default_value = "*", value_name = "GLOB")]
    pattern: String,
    /// Recompute images whose outputs exist.
    #[arg(long)]
    overwrite: bool,
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: e.into(),
    }
}

fn failure(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: e.into(),
    }
}

fn parse_device(s: &str) -> Result<DeviceRequest, Failure> {
    s.parse()
        .map_err(|e| usage(anyhow::anyhow!("--device: {e}")))
}

/// The device of `--device`, logged; a GPU that cannot be had is a usage error, before any
/// input is read.
fn select_device(name: &str) -> Result<tch::Device, Failure> {
    let choice = sam_torch::select_device(parse_device(name)?, 0)
        .map_err(|e| usage(anyhow::anyhow!("--device: {e}")))?;
    eprintln!("device: {choice}");
    Ok(choice.device)
}

fn load_model(args: &ModelArgs, device: tch::Device) -> Result<(InferenceModel, PathBuf), Failure> {
    let path = resolve_model_path(&args.checkpoint, &args.final_models).map_err(usage)?;
    let model = InferenceModel::load(&path, device).map_err(failure)?;
    eprintln!("model: {}", model.description());
    Ok((model, path))
}

fn normalization(
    args: &ModelArgs,
    base: sam_data::Normalization,
) -> Result<sam_data::Normalization, Failure> {
    let n = sam_data::Normalization {
        lower_percentile: args.lower_percentile.unwrap_or(base.lower_percentile),
        upper_percentile: args.upper_percentile.unwrap_or(base.upper_percentile),
    };
    n.validate().map_err(usage)?;
    Ok(n)
}

fn pair(v: &Option<Vec<usize>>, flag: &str) -> Result<Option<(usize, usize)>, Failure> {
    match v.as_deref() {
        None => Ok(None),
        Some([h, w]) => Ok(Some((*h, *w))),
        Some(other) => Err(usage(anyhow::anyhow!(
            "{flag}: expected two numbers H W, found {other:?}"
        ))),
    }
}

/// Flags over config over defaults.
fn auto_options(a: &AutoArgs) -> Result<AutoOptions, Failure> {
    let (inf, norm) = match &a.config {
        Some(path) => {
            let loaded = sam_config::load_config_with(
                path,
                &sam_config::ValidateOptions::without_path_checks(),
            )
            .map_err(|e| usage(anyhow::anyhow!("{e}")))?;
            let c = loaded.config;
            let n = sam_data::Normalization {
                lower_percentile: c.data.normalization.lower_percentile,
                upper_percentile: c.data.normalization.upper_percentile,
            };
            (c.inference, n)
        }
        None => (
            sam_config::InferenceConfig::default(),
            sam_data::Normalization::default(),
        ),
    };
    if inf.amg.crop_n_layers != 0 {
        return Err(usage(anyhow::anyhow!(
            "inference.amg.crop_n_layers = {}: only 0 is supported (tiling replaces crops)",
            inf.amg.crop_n_layers
        )));
    }
    let mode = match a.mode {
        Some(ModeArg::Auto) => AutoMode::Auto,
        Some(ModeArg::Ais) => AutoMode::Ais,
        Some(ModeArg::Amg) => AutoMode::Amg,
        None => match inf.mode {
            sam_config::InferenceMode::Auto => AutoMode::Auto,
            sam_config::InferenceMode::Ais => AutoMode::Ais,
            sam_config::InferenceMode::Amg => AutoMode::Amg,
        },
    };
    let cfg_tile = inf.tile_shape.map(|[h, w]| (h as usize, w as usize));
    let tile_shape = if a.no_tiling {
        None
    } else {
        pair(&a.tile_shape, "--tile-shape")?.or(cfg_tile)
    };
    let halo = pair(&a.halo, "--halo")?.unwrap_or((inf.halo[0] as usize, inf.halo[1] as usize));
    let ca = &inf.ais;
    let ais = AisParams {
        center_distance_threshold: a
            .center_distance_threshold
            .unwrap_or(ca.center_distance_threshold as f32),
        boundary_distance_threshold: a
            .boundary_distance_threshold
            .unwrap_or(ca.boundary_distance_threshold as f32),
        foreground_threshold: a
            .foreground_threshold
            .unwrap_or(ca.foreground_threshold as f32),
        foreground_smoothing: a
            .foreground_smoothing
            .unwrap_or(ca.foreground_smoothing as f32),
        distance_smoothing: a.distance_smoothing.unwrap_or(ca.distance_smoothing as f32),
        min_size: a.min_size.unwrap_or(u64::from(ca.min_size)),
    };
    let cm = &inf.amg;
    let amg = AmgParams {
        points_per_side: a.points_per_side.unwrap_or(cm.points_per_side as usize),
        points_per_batch: a.points_per_batch.unwrap_or(cm.points_per_batch as usize),
        pred_iou_thresh: a.pred_iou_thresh.unwrap_or(cm.pred_iou_thresh as f32),
        stability_score_thresh: a
            .stability_score_thresh
            .unwrap_or(cm.stability_score_thresh as f32),
        stability_score_offset: cm.stability_score_offset as f32,
        box_nms_thresh: a.box_nms_thresh.unwrap_or(cm.box_nms_thresh as f32),
        crop_nms_thresh: cm.crop_nms_thresh as f32,
        min_mask_region_area: a
            .min_mask_region_area
            .unwrap_or(u64::from(cm.min_mask_region_area)),
        with_background: true,
    };
    ais.validate().map_err(usage)?;
    amg.validate().map_err(usage)?;
    Ok(AutoOptions {
        mode,
        tiles: TileSpec { tile_shape, halo },
        batch_size: a.batch_size.unwrap_or(inf.batch_size as usize).max(1),
        ais,
        amg,
        normalization: normalization(&a.model, norm)?,
        overwrite: a.overwrite,
        write_overlay: inf.write_overlay,
        write_csv: inf.write_csv,
        embedding_cache: None,
    })
}

fn progress_bar(total: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} images {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn on_progress(bar: &ProgressBar) -> impl FnMut(Progress) + '_ {
    let mut tiles = 0usize;
    move |p| match p {
        Progress::Image { index, path, .. } => {
            bar.set_position(index as u64);
            tiles = 0;
            bar.set_message(
                path.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default(),
            );
        }
        Progress::Tile { stage } => {
            tiles += 1;
            bar.set_message(format!("{stage} tile {tiles}"));
        }
    }
}

/// Print the per-image lines and the totals; returns whether any image failed. `mode` names
/// the mode in the per-image lines when the report's own mode does not apply (prompts).
fn summary(reports: &[ImageReport], started: Instant, mode: Option<&str>) -> bool {
    let (mut done, mut skipped, mut failed, mut objects) = (0, 0, 0, 0);
    for r in reports {
        let name = r.input.display();
        match &r.outcome {
            Outcome::Done {
                objects: n,
                mode: run_mode,
                timings,
                tiles,
            } => {
                done += 1;
                objects += n;
                let mode_name = mode.unwrap_or_else(|| run_mode.name());
                eprintln!(
                    "{name}: {n} objects ({mode_name}, {tiles} tile(s); embed {:.1} s, decode {:.1} s, post-process {:.2} s)",
                    timings.embed_s,
                    timings.decode_s,
                    timings.postprocess_s
                );
            }
            Outcome::Skipped => {
                skipped += 1;
                eprintln!("{name}: skipped (outputs exist; --overwrite to redo)");
            }
            Outcome::Failed(e) => {
                failed += 1;
                eprintln!("{name}: FAILED: {e}");
            }
        }
    }
    eprintln!(
        "summary: {done} segmented, {skipped} skipped, {failed} failed, {objects} objects, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    failed > 0
}

fn run(cli: Cli) -> Result<(), Failure> {
    let started = Instant::now();
    match cli.command {
        Command::Auto(a) => {
            let device = select_device(&a.model.device)?;
            let mut opts = auto_options(&a)?;
            let inputs = list_inputs(&a.input, &a.pattern).map_err(usage)?;
            let (model, path) = load_model(&a.model, device)?;
            if let Some(dir) = &a.embedding_cache {
                let key = file_sha256(&path).map_err(failure)?;
                opts.embedding_cache = Some((dir.clone(), key));
            }
            std::fs::create_dir_all(&a.output)
                .with_context(|| format!("creating {}", a.output.display()))
                .map_err(failure)?;
            let bar = progress_bar(inputs.len());
            let reports = run_auto(&model, &inputs, &a.output, &opts, &mut on_progress(&bar))
                .map_err(usage)?;
            bar.finish_and_clear();
            if summary(&reports, started, None) {
                return Err(failure(anyhow::anyhow!("some images failed")));
            }
        }
        Command::Prompts(a) => {
            let device = select_device(&a.model.device)?;
            let inputs = list_inputs(&a.input, &a.pattern).map_err(usage)?;
            let prompts = read_prompts(&a.prompts).map_err(usage)?;
            prompts.check_images(&inputs).map_err(usage)?;
            let norm = normalization(&a.model, sam_data::Normalization::default())?;
            let (model, _) = load_model(&a.model, device)?;
            std::fs::create_dir_all(&a.output)
                .with_context(|| format!("creating {}", a.output.display()))
                .map_err(failure)?;
            let bar = progress_bar(inputs.len());
            let reports = run_prompts(
                &model,
                &inputs,
                &prompts,
                &a.output,
                &norm,
                a.overwrite,
                &mut on_progress(&bar),
            )
            .map_err(|e| match e {
                sam_infer::InferError::Prompt { .. } => usage(e),
                other => failure(other),
            })?;
            bar.finish_and_clear();
            if summary(&reports, started, Some("prompts")) {
                return Err(failure(anyhow::anyhow!("some images failed")));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // jemalloc (linked in) serves every allocation, libtorch's included; keep freed memory
    // for reuse (see sam_data::memory).
    sam_data::use_linked_jemalloc!();
    sam_data::memory::retain_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.error);
            for cause in f.error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn auto_flags_parse_and_override_defaults() {
        let cli = Cli::try_parse_from([
            "sam-infer",
            "auto",
            "--checkpoint",
            "m.pt",
            "--input",
            "in",
            "--output",
            "out",
            "--mode",
            "ais",
            "--tile-shape",
            "512",
            "640",
            "--halo",
            "64",
            "32",
            "--min-size",
            "25",
            "--foreground-threshold",
            "0.6",
        ])
        .unwrap();
        let Command::Auto(a) = cli.command else {
            panic!("not auto")
        };
        let o = auto_options(&a).ok().unwrap();
        assert_eq!(o.mode, AutoMode::Ais);
        assert_eq!(
            o.tiles,
            TileSpec {
                tile_shape: Some((512, 640)),
                halo: (64, 32)
            }
        );
        assert_eq!(o.ais.min_size, 25);
        assert_eq!(o.ais.foreground_threshold, 0.6);
        assert_eq!(o.ais.distance_smoothing, 1.6); // micro_sam default
        assert_eq!(o.amg.pred_iou_thresh, 0.88);
    }

    #[test]
    fn no_tiling_and_bad_values() {
        let cli = Cli::try_parse_from([
            "sam-infer",
            "auto",
            "--checkpoint",
            "m",
            "--input",
            "i",
            "--output",
            "o",
            "--no-tiling",
        ])
        .unwrap();
        let Command::Auto(a) = cli.command else {
            panic!("not auto")
        };
        assert_eq!(auto_options(&a).ok().unwrap().tiles.tile_shape, None);
        assert!(Cli::try_parse_from([
            "sam-infer",
            "auto",
            "--checkpoint",
            "m",
            "--input",
            "i",
            "--output",
            "o",
            "--tile-shape",
            "5"
        ])
        .is_err());
        let cli = Cli::try_parse_from([
            "sam-infer",
            "auto",
            "--checkpoint",
            "m",
            "--input",
            "i",
            "--output",
            "o",
            "--pred-iou-thresh",
            "1.5",
        ])
        .unwrap();
        let Command::Auto(a) = cli.command else {
            panic!("not auto")
        };
        let err = auto_options(&a).err().unwrap();
        assert_eq!(err.code, 2);
        assert!(err.error.to_string().contains("pred_iou_thresh"));
    }

    #[test]
    fn device_names() {
        assert!(matches!(parse_device("cpu"), Ok(DeviceRequest::Cpu)));
        assert!(matches!(parse_device("auto"), Ok(DeviceRequest::Auto)));
        assert!(matches!(parse_device("cuda"), Ok(DeviceRequest::Cuda)));
        assert!(matches!(
            parse_device("cuda:1"),
            Ok(DeviceRequest::CudaIndex(1))
        ));
        let err = parse_device("gpu").err().unwrap();
        assert_eq!(err.code, 2);
        assert!(
            err.error
                .to_string()
                .contains("--device: unknown device `gpu`"),
            "{}",
            err.error
        );
        assert!(matches!(select_device("cpu"), Ok(tch::Device::Cpu)));
    }
}
