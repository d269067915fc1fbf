//! The `sam-infer` executable: segment new images with a (fine-tuned) SAM checkpoint.
//!
//! A thin shell over the `sam-infer` crate: parse flags, merge them with an optional experiment
//! config, load the model, run, print a summary. Exit codes: 0 ok, 1 failure, 2 usage or config
//! error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::ProgressBar;
use sam_cli::{flag_of, Failure};
use sam_cli_torch::resolve_checkpoint;
use sam_infer::{
    file_sha256, read_prompts, run_auto, run_prompts, scan_inputs, AutoOptions, ImageReport,
    InferenceModel, Outcome, Progress, TileSpec,
};
use sam_model::Precision;

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
    /// Checkpoint: a file (relative to the working directory, else to the repository root), a
    /// name under the repository's final_models/ (with or without .pt/.pth/.safetensors), or a
    /// micro_sam model name in the cache ($MICROSAM_CACHEDIR or ~/.cache/micro_sam/models).
    #[arg(long, value_name = "CHECKPOINT")]
    checkpoint: String,
    /// Device: auto (a GPU when libtorch sees one, else the CPU), cpu, cuda or cuda:N.
    ///
    /// cuda (or cuda:N) without a usable GPU stops with exit status 2 before any work, saying
    /// why (libtorch build, NVIDIA driver, CUDA_VISIBLE_DEVICES). The device used is printed.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: String,
    /// Precision of the forward passes: fp32, or bf16 (bf16 autocast).
    ///
    /// bf16 runs the encoder and decoders under bf16 autocast (meant for GPUs with bf16
    /// tensor cores: A100, H100); the weights stay fp32 and the logits, IoU
    /// predictions and decoder maps are cast back to fp32 before thresholding, so masks differ
    /// from fp32 ones at their edges. A config's training.precision does not change this
    /// default: scores and outputs of one checkpoint stay comparable however it was trained.
    /// Cached embeddings (--embedding-cache) are kept apart per precision. The precision is
    /// printed with the device.
    #[arg(
        long,
        default_value = "fp32",
        value_name = "PRECISION",
        value_parser = sam_cli_torch::parse_precision
    )]
    precision: Precision,
    /// Folder of named models [default: final_models/ of the repository root].
    #[arg(long, value_name = "DIR")]
    final_models: Option<PathBuf>,
    /// Repository root [default: $SAM_TRAINER_ROOT, else the nearest folder above the working
    /// directory, or above --config, that holds configs/ and dat/].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Lower normalisation percentile, 0–100 (the training preprocessing) [default: config,
    /// else 1].
    #[arg(long, value_name = "P")]
    lower_percentile: Option<f64>,
    /// Upper normalisation percentile, 0–100, above the lower one [default: config, else
    /// 99.8].
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
    /// Point prompts from the UNETR decoder's maps → SAM masks → mask NMS (micro_sam's
    /// automatic prompt generation).
    Apg,
}

#[derive(Debug, Args)]
struct AutoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// An image file or a folder of images.
    #[arg(long, value_name = "FILE|DIR")]
    input: PathBuf,
    /// Output folder (created; never the input folder). OUTPUT/model.json records the
    /// checkpoint that wrote it; another checkpoint needs --overwrite.
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
    /// Recompute images whose outputs exist (otherwise they are skipped); needed to reuse an
    /// output folder written with another checkpoint.
    #[arg(long)]
    overwrite: bool,
    /// Inner tile size H W for images larger than the model input [default: config, else 768 768].
    #[arg(long, num_args = 2, value_names = ["H", "W"], help_heading = "Tiling")]
    tile_shape: Option<Vec<u32>>,
    /// Halo H W added around each tile [default: config, else 128 128].
    #[arg(long, num_args = 2, value_names = ["H", "W"], help_heading = "Tiling")]
    halo: Option<Vec<u32>>,
    /// Process the whole image at once (resized to the model input) even when it is larger.
    #[arg(long, help_heading = "Tiling", conflicts_with = "tile_shape")]
    no_tiling: bool,
    /// Tiles per encoder/decoder pass [default: config, else 1].
    #[arg(long, value_name = "N", help_heading = "Tiling")]
    batch_size: Option<u32>,
    /// Cache image embeddings in DIR, keyed by image and model hashes.
    #[arg(long, value_name = "DIR")]
    embedding_cache: Option<PathBuf>,
    /// AIS (APG with --mode apg): seeds where the centre distance is below this, 0–1
    /// [default 0.5].
    #[arg(long, value_name = "T", help_heading = "AIS")]
    center_distance_threshold: Option<f64>,
    /// AIS (APG with --mode apg): seeds where the boundary distance is below this, 0–1
    /// [default 0.5].
    #[arg(long, value_name = "T", help_heading = "AIS")]
    boundary_distance_threshold: Option<f64>,
    /// AIS (APG with --mode apg): foreground where the probability is above (APG: at least)
    /// this, 0–1 [default 0.5].
    #[arg(long, value_name = "T", help_heading = "AIS")]
    foreground_threshold: Option<f64>,
    /// AIS: Gaussian sigma for the foreground map, ≥ 0 [default 1.0].
    #[arg(long, value_name = "SIGMA", help_heading = "AIS")]
    foreground_smoothing: Option<f64>,
    /// AIS: Gaussian sigma for the distance maps, ≥ 0 [default 1.6].
    #[arg(long, value_name = "SIGMA", help_heading = "AIS")]
    distance_smoothing: Option<f64>,
    /// AIS (APG with --mode apg): remove objects smaller than this many pixels [default 0;
    /// APG 25].
    #[arg(long, value_name = "PX", help_heading = "AIS")]
    min_size: Option<u32>,
    /// APG: drop the lower-scored of two masks overlapping more than this, 0–1 [default 0.9].
    #[arg(long, value_name = "T", help_heading = "APG")]
    nms_threshold: Option<f64>,
    /// APG: measure NMS overlaps as intersection over the smaller mask, not IoU.
    #[arg(long, help_heading = "APG")]
    intersection_over_min: bool,
    /// APG: three masks per prompt, keep the best predicted IoU [default: one mask].
    #[arg(long, help_heading = "APG")]
    multimasking: bool,
    /// APG: predict again with the first masks' boxes as prompts.
    #[arg(long, help_heading = "APG")]
    refine_with_box_prompts: bool,
    /// APG: logit threshold of the masks [default 0.0].
    #[arg(
        long,
        value_name = "LOGIT",
        help_heading = "APG",
        allow_negative_numbers = true
    )]
    mask_threshold: Option<f64>,
    /// AMG: points per side of the grid, ≥ 1 [default 32].
    #[arg(long, value_name = "N", help_heading = "AMG")]
    points_per_side: Option<u32>,
    /// AMG: prompts per mask-decoder pass, ≥ 1 [default 64].
    #[arg(long, value_name = "N", help_heading = "AMG")]
    points_per_batch: Option<u32>,
    /// AMG: keep masks with predicted IoU above this, 0–1 [default 0.88].
    #[arg(long, value_name = "T", help_heading = "AMG")]
    pred_iou_thresh: Option<f64>,
    /// AMG: keep masks with stability score at least this, 0–1 [default 0.95].
    #[arg(long, value_name = "T", help_heading = "AMG")]
    stability_score_thresh: Option<f64>,
    /// AMG: box IoU for non-maximum suppression, 0–1 [default 0.7].
    #[arg(long, value_name = "T", help_heading = "AMG")]
    box_nms_thresh: Option<f64>,
    /// AMG: remove holes and islands smaller than this [default 0].
    #[arg(long, value_name = "PX", help_heading = "AMG")]
    min_mask_region_area: Option<u32>,
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
    /// Output folder (created; never the input folder). OUTPUT/model.json records the
    /// checkpoint that wrote it; another checkpoint needs --overwrite.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// Glob for images inside a folder input.
    #[arg(long, default_value = "*", value_name = "GLOB")]
    pattern: String,
    /// Recompute images whose outputs exist; needed to reuse an output folder written with
    /// another checkpoint.
    #[arg(long)]
    overwrite: bool,
}

/// The device of `--device`, printed with the precision; a GPU that cannot be had is a usage
/// error, before any input is read.
fn select_device(args: &ModelArgs) -> Result<tch::Device, Failure> {
    let choice = sam_cli_torch::select_device(&args.device)?;
    eprintln!("{}", sam_cli_torch::device_line(&choice, args.precision));
    Ok(choice.device)
}

/// The repository root: `--root`, else found from the working directory or the config.
fn root(args: &ModelArgs, config: Option<&Path>) -> Option<PathBuf> {
    sam_config::find_root_for(args.root.as_deref(), config).ok()
}

fn load_model(
    args: &ModelArgs,
    root: Option<&Path>,
    device: tch::Device,
) -> Result<(InferenceModel, PathBuf), Failure> {
    let path = resolve_checkpoint(&args.checkpoint, root, args.final_models.as_deref())?;
    let model = InferenceModel::load(&path, device)
        .map_err(Failure::failed)?
        .with_precision(args.precision);
    eprintln!("model: {}", model.description());
    Ok((model, path))
}

/// The percentile flags over `base` (the config's `data.normalization`, or the default).
fn apply_percentile_flags(args: &ModelArgs, base: &mut sam_config::NormalizationConfig) {
    base.lower_percentile = args.lower_percentile.unwrap_or(base.lower_percentile);
    base.upper_percentile = args.upper_percentile.unwrap_or(base.upper_percentile);
}

/// The percentile flags over `base`, after the config's rules.
fn normalization(
    args: &ModelArgs,
    mut base: sam_config::NormalizationConfig,
) -> Result<sam_data::Normalization, Failure> {
    apply_percentile_flags(args, &mut base);
    Ok(sam_cli_torch::normalization(&base).map_err(|e| e.name_flags(flag_of))?)
}

fn pair(v: &Option<Vec<u32>>, flag: &str) -> Result<Option<[u32; 2]>, Failure> {
    match v.as_deref() {
        None => Ok(None),
        Some([h, w]) => Ok(Some([*h, *w])),
        Some(other) => Err(Failure::usage_msg(format!(
            "{flag}: expected two numbers H W, found {other:?}"
        ))),
    }
}

/// The config's `inference` and `data.normalization` sections (defaults without `--config`).
fn config_sections(
    config: Option<&Path>,
) -> Result<(sam_config::InferenceConfig, sam_config::NormalizationConfig), Failure> {
    let (inference, normalization, _) = config_parts(config)?;
    Ok((inference, normalization))
}

/// The sections sam-infer reads from `--config` (inference, normalisation, hardware), or
/// their defaults without one.
fn config_parts(
    config: Option<&Path>,
) -> Result<
    (
        sam_config::InferenceConfig,
        sam_config::NormalizationConfig,
        sam_config::HardwareConfig,
    ),
    Failure,
> {
    match config {
        Some(path) => {
            let loaded = sam_config::load_config_with(
                path,
                &sam_config::ValidateOptions::without_path_checks(),
            )
            .map_err(Failure::usage_msg)?;
            let c = loaded.config;
            Ok((c.inference, c.data.normalization, c.hardware))
        }
        None => Ok(Default::default()),
    }
}

/// Flags over config over defaults; the result goes through the config's rules, each
/// problem named by its flag.
fn auto_options(a: &AutoArgs) -> Result<AutoOptions, Failure> {
    let (mut inf, mut norm) = config_sections(a.config.as_deref())?;
    if let Some(mode) = a.mode {
        inf.mode = match mode {
            ModeArg::Auto => sam_config::InferenceMode::Auto,
            ModeArg::Ais => sam_config::InferenceMode::Ais,
            ModeArg::Amg => sam_config::InferenceMode::Amg,
            ModeArg::Apg => sam_config::InferenceMode::Apg,
        };
    }
    if a.no_tiling {
        inf.tile_shape = None;
    } else if let Some(t) = pair(&a.tile_shape, "--tile-shape")? {
        inf.tile_shape = Some(t);
    }
    if let Some(h) = pair(&a.halo, "--halo")? {
        inf.halo = h;
    }
    fn set<T: Copy>(slot: &mut T, flag: Option<T>) {
        if let Some(v) = flag {
            *slot = v;
        }
    }
    set(&mut inf.batch_size, a.batch_size);
    // The seed flags are shared: they set the section of the mode that runs (APG's with
    // `apg`, else AIS's), so that a wrong value is reported once, under the key that is used.
    let (center, boundary, foreground, min_size) = if inf.mode == sam_config::InferenceMode::Apg {
        let apg = &mut inf.apg;
        (
            &mut apg.center_distance_threshold,
            &mut apg.boundary_distance_threshold,
            &mut apg.foreground_threshold,
            &mut apg.min_size,
        )
    } else {
        let ais = &mut inf.ais;
        (
            &mut ais.center_distance_threshold,
            &mut ais.boundary_distance_threshold,
            &mut ais.foreground_threshold,
            &mut ais.min_size,
        )
    };
    set(center, a.center_distance_threshold);
    set(boundary, a.boundary_distance_threshold);
    set(foreground, a.foreground_threshold);
    set(min_size, a.min_size);
    let ais = &mut inf.ais;
    set(&mut ais.foreground_smoothing, a.foreground_smoothing);
    set(&mut ais.distance_smoothing, a.distance_smoothing);
    let apg = &mut inf.apg;
    set(&mut apg.nms_threshold, a.nms_threshold);
    set(&mut apg.mask_threshold, a.mask_threshold);
    apg.intersection_over_min |= a.intersection_over_min;
    apg.multimasking |= a.multimasking;
    apg.refine_with_box_prompts |= a.refine_with_box_prompts;
    let amg = &mut inf.amg;
    set(&mut amg.points_per_side, a.points_per_side);
    set(&mut amg.points_per_batch, a.points_per_batch);
    set(&mut amg.pred_iou_thresh, a.pred_iou_thresh);
    set(&mut amg.stability_score_thresh, a.stability_score_thresh);
    set(&mut amg.box_nms_thresh, a.box_nms_thresh);
    set(&mut amg.min_mask_region_area, a.min_mask_region_area);
    apply_percentile_flags(&a.model, &mut norm);
    let mut opts = sam_cli_torch::auto_options(&inf, &norm).map_err(|e| e.name_flags(flag_of))?;
    opts.overwrite = a.overwrite;
    Ok(opts)
}

/// The images of `--input`, with a warning for image files in formats that are not read.
fn inputs(input: &Path, pattern: &str) -> Result<Vec<PathBuf>, Failure> {
    let found = scan_inputs(input, pattern).map_err(Failure::usage)?;
    if let Some(first) = found.unread.first() {
        eprintln!(
            "warning: {} image file(s) in formats that are not read are left out (e.g. {}): \
             save them as TIFF or PNG to segment them",
            found.unread.len(),
            first.display()
        );
    }
    Ok(found.images)
}

/// Warns once per image size that the model would see shrunk, with the tiling that fits it.
fn warn_downscale(inputs: &[PathBuf], tiles: &TileSpec, input_size: usize) {
    for s in sam_cli_torch::shrunk_images(inputs.iter().map(PathBuf::as_path), tiles, input_size) {
        eprintln!(
            "warning: {} ({}x{}) is {}: use --tile-shape {t} {t} --halo {h} {h} (or \
             inference.tile_shape / inference.halo in the config)",
            s.path.display(),
            s.width,
            s.height,
            s.downscale,
            t = s.downscale.tile,
            h = s.downscale.halo
        );
    }
}

fn progress_bar(total: usize) -> ProgressBar {
    sam_cli::progress_bar(
        total as u64,
        "{elapsed_precise} [{bar:30}] {pos}/{len} images {msg}",
    )
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
            let device = select_device(&a.model)?;
            let tf32 = config_parts(a.config.as_deref())?.2.tf32;
            sam_cli_torch::apply_tf32(device, tf32)?;
            let mut opts = auto_options(&a)?;
            let inputs = inputs(&a.input, &a.pattern)?;
            let root = root(&a.model, a.config.as_deref());
            let (model, path) = load_model(&a.model, root.as_deref(), device)?;
            let native = model.sam().is_native_input();
            let (tiles, note) =
                sam_cli_torch::tiles_for_model(opts.tiles, native, model.input_size());
            if let Some(note) = note {
                eprintln!("note: {note}");
            }
            opts.tiles = tiles;
            warn_downscale(&inputs, &opts.tiles, model.input_size());
            if let Some(dir) = &a.embedding_cache {
                let key = file_sha256(&path).map_err(Failure::failed)?;
                opts.embedding_cache = Some((dir.clone(), key));
            }
            let bar = progress_bar(inputs.len());
            let reports = run_auto(&model, &inputs, &a.output, &opts, &mut on_progress(&bar))
                .map_err(Failure::usage)?;
            bar.finish_and_clear();
            if summary(&reports, started, None) {
                return Err(Failure::failed_msg("some images failed"));
            }
        }
        Command::Prompts(a) => {
            let device = select_device(&a.model)?;
            sam_cli_torch::apply_tf32(device, sam_config::HardwareConfig::default().tf32)?;
            let inputs = inputs(&a.input, &a.pattern)?;
            let prompts = read_prompts(&a.prompts).map_err(Failure::usage)?;
            prompts.check_images(&inputs).map_err(Failure::usage)?;
            let norm = normalization(&a.model, sam_config::NormalizationConfig::default())?;
            let root = root(&a.model, None);
            let (model, _) = load_model(&a.model, root.as_deref(), device)?;
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
                sam_infer::InferError::Prompt { .. }
                | sam_infer::InferError::Param { .. }
                | sam_infer::InferError::Output { .. } => Failure::usage(e),
                other => Failure::failed(other),
            })?;
            bar.finish_and_clear();
            if summary(&reports, started, Some("prompts")) {
                return Err(Failure::failed_msg("some images failed"));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // jemalloc (linked in) serves every allocation, libtorch's included; keep freed memory
    // for reuse (see sam_cli::memory).
    sam_cli::use_linked_jemalloc!();
    sam_cli::memory::retain_freed_memory();
    sam_cli::exit(run(Cli::parse()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sam_infer::AutoMode;

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
    fn apg_flags_parse_and_share_the_seed_flags() {
        let a = auto_args(&[
            "--mode",
            "apg",
            "--center-distance-threshold",
            "0.4",
            "--nms-threshold",
            "0.7",
            "--intersection-over-min",
            "--mask-threshold",
            "-0.5",
        ]);
        let o = auto_options(&a).ok().unwrap();
        assert_eq!(o.mode, AutoMode::Apg);
        assert_eq!(o.apg.center_distance_threshold, 0.4);
        assert_eq!(o.ais.center_distance_threshold, 0.5); // the AIS section is left alone
        assert_eq!((o.apg.nms_threshold, o.apg.mask_threshold), (0.7, -0.5));
        assert!(o.apg.intersection_over_min && !o.apg.multimasking);
        assert_eq!((o.apg.min_size, o.apg.batch_size), (25, 32)); // micro_sam defaults
        let err = auto_options(&auto_args(&["--mode", "apg", "--nms-threshold", "2"]))
            .err()
            .unwrap();
        assert_eq!(err.code(), 2);
        assert!(err.to_string().contains("--nms-threshold"), "{err}");
    }

    #[test]
    fn precision_flag_parses_with_an_fp32_default() {
        assert_eq!(auto_args(&[]).model.precision, Precision::Fp32);
        assert_eq!(
            auto_args(&["--precision", "bf16"]).model.precision,
            Precision::Bf16
        );
        let err = Cli::try_parse_from([
            "sam-infer",
            "auto",
            "--checkpoint",
            "m",
            "--input",
            "i",
            "--output",
            "o",
            "--precision",
            "tf32",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--precision"), "{err}");
    }

    #[test]
    fn no_tiling_and_bad_values() {
        let a = auto_args(&["--no-tiling"]);
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
        let err = auto_options(&auto_args(&["--pred-iou-thresh", "1.5"]))
            .err()
            .unwrap();
        assert_eq!(err.code(), 2);
        assert!(err.to_string().contains("pred_iou_thresh"));
    }

    fn auto_args(extra: &[&str]) -> AutoArgs {
        let mut args = vec![
            "sam-infer",
            "auto",
            "--checkpoint",
            "m",
            "--input",
            "i",
            "--output",
            "o",
        ];
        args.extend_from_slice(extra);
        let Command::Auto(a) = Cli::try_parse_from(args).unwrap().command else {
            panic!("not auto")
        };
        a
    }

    #[test]
    fn issue_16_flags_go_through_the_config_rules() {
        let err = auto_options(&auto_args(&["--foreground-threshold", "5"]))
            .err()
            .unwrap();
        assert_eq!(err.code(), 2);
        assert_eq!(
            err.to_string(),
            "--foreground-threshold: must be between 0 and 1, found 5 (the rule of \
             inference.ais.foreground_threshold in a config)"
        );
        // Every bad flag at once, each with its flag.
        let err = auto_options(&auto_args(&[
            "--tile-shape",
            "0",
            "64",
            "--points-per-side",
            "0",
            "--distance-smoothing=-1",
            "--batch-size",
            "0",
        ]))
        .err()
        .unwrap()
        .to_string();
        for part in [
            "--tile-shape: must be at least 1, found 0 (the rule of inference.tile_shape[0]",
            "--batch-size: must be at least 1, found 0",
            "--distance-smoothing: must be 0 or more, found -1",
            "--points-per-side: must be at least 1, found 0",
        ] {
            assert!(err.contains(part), "missing `{part}` in:\n{err}");
        }
        let err = auto_options(&auto_args(&[
            "--lower-percentile",
            "50",
            "--upper-percentile",
            "40",
        ]))
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.starts_with(
                "--upper-percentile: must be greater than lower_percentile (50), found 40"
            ),
            "{err}"
        );
        assert_eq!(
            flag_of("inference.amg.min_mask_region_area"),
            "--min-mask-region-area"
        );
    }
}
