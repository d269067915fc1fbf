//! The `sam-augment` executable: offline augmentation of annotated brightfield data, the
//! synthetic brightfield generator, and the dataset check. A thin shell over `sam-data` (and
//! `sam-config` / `sam-cli` for `--config`).
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;
use rayon::prelude::*;
use sam_cli::Failure;
use sam_data::{
    augment_folder, synthesize, write_image, write_labels, AugmentJob, BitDepth, DataError,
    Progress, SynthConfig,
};

/// Offline augmentation and synthetic data for sam_trainer.
///
/// `run` reads annotated images and labels (paired by file stem), writes augmented copies
/// plus a manifest, and never writes into the source folders. `synth` writes a synthetic
/// brightfield dataset with exact instance labels. `check` reports everything about a dataset
/// that can be known before training.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Augment a dataset (from a config or from flags).
    Run(RunArgs),
    /// Write synthetic brightfield images and their instance labels.
    Synth(SynthArgs),
    // The help text is `CheckArgs`'s doc comment.
    Check(CheckArgs),
}

/// Augment `images/` + `labels/` into a destination, with a manifest.
///
/// Either `--config CONFIG` (the `augmentation` section of an experiment config: folders,
/// copies, operations; the experiment seed) or `--input DIR --output DIR` with the built-in
/// operations. Same seed, same bytes, whatever the thread count.
#[derive(Debug, Args)]
struct RunArgs {
    /// Experiment config (YAML); its `augmentation` section drives the run.
    #[arg(long, value_name = "CONFIG", conflicts_with_all = ["input", "output"], required_unless_present_all = ["input", "output"])]
    config: Option<PathBuf>,
    /// Folder holding `images/` and `labels/` (read only).
    #[arg(long, value_name = "DIR", requires = "output")]
    input: Option<PathBuf>,
    /// Destination folder: `images/`, `labels/` and `manifest.json` are written there.
    #[arg(long, value_name = "DIR", requires = "input")]
    output: Option<PathBuf>,
    /// Augmented copies per source image [default: 8, or the config's copies_per_image]; 0
    /// only copies the originals (refused with --no-originals: nothing would be written).
    #[arg(long, value_name = "N")]
    copies: Option<u32>,
    /// Base seed [default: 0, or the config's seed].
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Replace the files of a non-empty destination instead of refusing.
    #[arg(long)]
    overwrite: bool,
    /// Do not copy the unchanged originals into the destination.
    #[arg(long)]
    no_originals: bool,
    /// Worker threads [default: all cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

/// Write `OUT/images/synth_NNN.tif` and `OUT/labels/synth_NNN.tif`.
///
/// Grey images with cells darker than the background (textured ellipses and irregular blobs,
/// bright halos, touching and overlapping neighbours, uneven illumination, noise) and their
/// exact instance labels (u32 TIFF). Deterministic per seed.
#[derive(Debug, Args)]
struct SynthArgs {
    /// Destination folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number of images.
    #[arg(long, value_name = "N", default_value_t = 8)]
    count: usize,
    /// Width and height in pixels.
    #[arg(long, value_name = "PX", default_value_t = 2048)]
    size: usize,
    /// Seed; image i uses a seed derived from (seed, i).
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Bits per image pixel: 8 or 16.
    #[arg(long, value_name = "BITS", default_value_t = 16, value_parser = parse_bits)]
    bits: u8,
    /// Mean number of cells per 512x512 area.
    #[arg(long, value_name = "N", default_value_t = 110.0)]
    cells_per_512: f64,
    /// Replace the files of a non-empty destination instead of refusing.
    #[arg(long)]
    overwrite: bool,
}

/// Check a dataset before training: every problem of every file at once.
///
/// Reads each image/label pair once and reports: files without a partner, duplicate stems,
/// unreadable or multi-page files, unsupported pixel types, size mismatches, images smaller
/// than a patch; bit depths, sizes and value ranges; whether the objects are darker than a
/// ring of background around them (brightfield) or brighter (inverted or fluorescence); per
/// label image the objects, their sizes against `data.min_object_size`, ids in several
/// pieces, objects on the border, empty label images; how many patch positions of
/// `data.patch_shape` hold `data.min_objects_per_patch` objects (the training sampler's rule,
/// counted exactly) and the images that never give one; the normalisation percentiles'
/// spread. With `--config`, also the training cost on the configured cluster and the peak
/// memory estimate, as `sam-train validate` prints them.
///
/// Writes the whole report as JSON (`--json`). Exits 1 when an error was found (training would
/// refuse or fail on the data), 0 with warnings only (unless `--deny-warnings`), 2 for usage
/// and config errors.
#[derive(Debug, Args)]
struct CheckArgs {
    /// Experiment config (YAML): checks its training (and validation) folders with its
    /// `data` settings, and estimates its cost. The config must validate (`sam-train
    /// validate`).
    #[arg(long, value_name = "CONFIG", required_unless_present_all = ["images", "labels"])]
    config: Option<PathBuf>,
    /// Image folder to check instead of the config's (e.g. the raw data before augmenting).
    #[arg(long, value_name = "DIR", requires = "labels")]
    images: Option<PathBuf>,
    /// Label folder to check instead of the config's.
    #[arg(long, value_name = "DIR", requires = "images")]
    labels: Option<PathBuf>,
    /// Where to write the JSON report [default: <output_base_dir>/<experiment>.data_check.json
    /// with --config, else data_check.json in the working directory].
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Patch size `H W` [default: the config's data.patch_shape, else 512 512].
    #[arg(long, num_args = 2, value_names = ["H", "W"], conflicts_with = "config", help_heading = "Settings without --config")]
    patch_shape: Option<Vec<usize>>,
    /// Objects a patch must hold [default: the config's data.min_objects_per_patch, else 2].
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "config",
        help_heading = "Settings without --config"
    )]
    min_objects: Option<usize>,
    /// Pixels an object needs to count, and below which it is small [default: the config's
    /// data.min_object_size, else 25].
    #[arg(
        long,
        value_name = "PX",
        conflicts_with = "config",
        help_heading = "Settings without --config"
    )]
    min_object_size: Option<usize>,
    /// Normalisation percentiles `LOWER UPPER` [default: the config's data.normalization, else
    /// 1 99.8].
    #[arg(long, num_args = 2, value_names = ["LOWER", "UPPER"], conflicts_with = "config", help_heading = "Settings without --config")]
    percentiles: Option<Vec<f64>>,
    /// Expected image size `H W` [default: the config's data.image_shape, else none].
    #[arg(long, num_args = 2, value_names = ["H", "W"], conflicts_with = "config", help_heading = "Settings without --config")]
    image_shape: Option<Vec<usize>>,
    /// Width in pixels of the background ring around the objects that their intensity is
    /// compared with.
    #[arg(long, value_name = "PX", default_value_t = 3)]
    ring_width: usize,
    /// Messages shown per kind of finding on the console (the JSON report has all).
    #[arg(long, value_name = "N", default_value_t = 10)]
    show: usize,
    /// Exit 1 on warnings too.
    #[arg(long)]
    deny_warnings: bool,
    /// Worker threads [default: all cores].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn parse_bits(s: &str) -> Result<u8, String> {
    match s {
        "8" => Ok(8),
        "16" => Ok(16),
        other => Err(format!("expected 8 or 16, found {other}")),
    }
}

/// sam-data's errors: those of the command line or the folders given are usage errors (2).
fn classify(e: DataError) -> Failure {
    match e {
        DataError::Destination { .. }
        | DataError::InvalidParameter { .. }
        | DataError::EmptyFolder { .. }
        | DataError::Unpaired { .. }
        | DataError::DuplicateStem { .. } => Failure::usage(e),
        other => Failure::failed(other),
    }
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self) {
        self.0.inc(1);
    }
}

fn bar(what: &str) -> ProgressBar {
    let pb = sam_cli::progress_bar(0, "{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})");
    pb.set_message(what.to_string());
    pb
}

/// The flags' values, checked by the rules of the config's `augmentation` section (one rule
/// set for both): every problem, named by its flag and the config key.
fn check_section(section: &sam_config::AugmentationConfig) -> Result<(), Failure> {
    let flag = |key: &str| {
        match key {
            "augmentation.copies_per_image" => "--copies / --no-originals",
            k if k.starts_with("augmentation.output_") => "--output",
            k if k.starts_with("augmentation.source_") => "--input",
            _ => "--config",
        }
        .to_owned()
    };
    Ok(sam_cli::check_rules(section.validate()).map_err(|e| e.name_flags(flag))?)
}

fn job_from_config(path: &Path, args: &RunArgs) -> Result<AugmentJob, Failure> {
    // No file-system checks: the training folders are what this command writes; its own source
    // folders are checked when they are read.
    let loaded =
        sam_config::load_config_with(path, &sam_config::ValidateOptions::without_path_checks())
            .map_err(|e| {
                Failure::usage(anyhow::Error::new(e).context(format!("config {}", path.display())))
            })?;
    let cfg = loaded.config;
    let root = match loaded.root {
        Some(r) => r,
        None => sam_config::find_root_for(None, Some(path)).map_err(Failure::usage)?,
    };
    let mut section = cfg.augmentation.clone();
    if let Some(n) = args.copies {
        section.copies_per_image = n;
    }
    section.include_original &= !args.no_originals;
    check_section(&section)?;
    let mut job = sam_cli::augment_job(&cfg, &section, &root);
    job.seed = args.seed.unwrap_or(cfg.seed);
    job.overwrite = args.overwrite;
    Ok(job)
}

/// A destination folder (created when missing) whose first existing ancestor is a file
/// cannot be created: say so instead of the operating system's "Not a directory".
fn check_folder(dir: &Path, what: &str) -> Result<(), Failure> {
    match dir.ancestors().find(|a| a.exists()) {
        Some(existing) if !existing.is_dir() => Err(Failure::usage_msg(format!(
            "{what} {}: {} is a file, but this must be a folder (created when missing); choose \
             another path",
            dir.display(),
            existing.display()
        ))),
        _ => Ok(()),
    }
}

fn set_threads(threads: Option<usize>) -> Result<(), Failure> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(Failure::failed)?;
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<(), Failure> {
    set_threads(args.threads)?;
    let job = match (&args.config, &args.input, &args.output) {
        (Some(c), _, _) => job_from_config(c, &args)?,
        (None, Some(i), Some(o)) => {
            let copies = args.copies.unwrap_or(8);
            check_section(&sam_config::AugmentationConfig {
                source_images_dir: i.join("images"),
                source_labels_dir: i.join("labels"),
                output_images_dir: o.join("images"),
                output_labels_dir: o.join("labels"),
                copies_per_image: copies,
                include_original: !args.no_originals,
                ..Default::default()
            })?;
            let mut job = AugmentJob::from_folders(i, o, copies as usize, args.seed.unwrap_or(0));
            job.overwrite = args.overwrite;
            job.keep_originals = !args.no_originals;
            job
        }
        _ => {
            return Err(Failure::usage_msg(
                "give --config CONFIG or --input DIR --output DIR",
            ))
        }
    };
    check_folder(&job.output_images, "the output image folder")?;
    check_folder(&job.output_labels, "the output label folder")?;
    let started = Instant::now();
    let pb = bar("augmenting");
    let summary = augment_folder(&job, &Bar(pb.clone())).map_err(classify)?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sam-augment: {} source pairs -> {} pairs ({} objects in, {} out) in {:.1} s ({:.2} pairs/s)",
        summary.sources,
        summary.outputs,
        summary.source_objects,
        summary.output_objects,
        secs,
        summary.outputs as f64 / secs.max(1e-9)
    );
    println!("  images:   {}", job.output_images.display());
    println!("  labels:   {}", job.output_labels.display());
    println!("  manifest: {}", summary.manifest.display());
    Ok(())
}

/// The options, folders, estimate, config warnings and default JSON path of a check.
type CheckPlan = (
    sam_data::CheckOptions,
    Vec<(String, PathBuf, PathBuf)>,
    Option<sam_cli::CostEstimate>,
    Vec<String>,
    PathBuf,
);

fn check_plan(args: &CheckArgs) -> Result<CheckPlan, Failure> {
    let explicit = match (&args.images, &args.labels) {
        (Some(i), Some(l)) => Some(("folders".to_string(), i.clone(), l.clone())),
        _ => None,
    };
    let Some(path) = &args.config else {
        let defaults = sam_config::DataConfig::default();
        let patch = args
            .patch_shape
            .clone()
            .unwrap_or_else(|| defaults.patch_shape.iter().map(|&v| v as usize).collect());
        let pct = args.percentiles.clone().unwrap_or_else(|| {
            vec![
                defaults.normalization.lower_percentile,
                defaults.normalization.upper_percentile,
            ]
        });
        let options = sam_data::CheckOptions {
            patch: sam_data::PatchConfig {
                height: patch[0],
                width: patch[1],
                min_objects: args
                    .min_objects
                    .unwrap_or(defaults.min_objects_per_patch as usize),
                min_object_size: args
                    .min_object_size
                    .unwrap_or(defaults.min_object_size as usize),
                ..sam_data::PatchConfig::default()
            },
            normalization: sam_data::Normalization {
                lower_percentile: pct[0],
                upper_percentile: pct[1],
            },
            ring_width: args.ring_width,
            expected_shape: args.image_shape.as_ref().map(|s| (s[0], s[1])),
        };
        let sets = explicit.into_iter().collect();
        return Ok((
            options,
            sets,
            None,
            Vec::new(),
            PathBuf::from("data_check.json"),
        ));
    };
    // With folders of its own the check does not need the config's data folders to exist
    // (e.g. the raw data before augmenting).
    let validate = if explicit.is_some() {
        sam_config::ValidateOptions::without_path_checks()
    } else {
        sam_config::ValidateOptions::default()
    };
    let loaded = sam_config::load_config_with(path, &validate).map_err(|e| {
        Failure::usage(anyhow::Error::new(e).context(format!("config {}", path.display())))
    })?;
    let root = match &loaded.root {
        Some(r) => r.clone(),
        None => sam_config::find_root_for(None, Some(path)).map_err(Failure::usage)?,
    };
    let cfg = &loaded.config;
    let mut options = sam_cli::check_options(cfg);
    options.ring_width = args.ring_width;
    let sets = match explicit {
        Some(set) => vec![set],
        None => sam_cli::config_folders(cfg, &root),
    };
    let estimate = sam_cli::CostEstimate::new(cfg, loaded.wall_time.as_ref());
    let warnings = loaded.warnings.iter().map(ToString::to_string).collect();
    let json = sam_config::RunPaths::new(&root, cfg)
        .run_dir
        .with_file_name(format!("{}.data_check.json", cfg.experiment_name));
    Ok((options, sets, Some(estimate), warnings, json))
}

/// A path inside (or equal to) a folder, compared after resolving what exists of it.
fn lies_inside(path: &Path, dir: &Path) -> bool {
    let resolve = |p: &Path| {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        // The file itself may not exist yet: resolve its folder.
        match (abs.parent(), abs.file_name()) {
            (Some(parent), Some(name)) => parent
                .canonicalize()
                .map(|p| p.join(name))
                .unwrap_or(abs.clone()),
            _ => abs,
        }
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    resolve(path).starts_with(dir)
}

fn check(args: CheckArgs) -> Result<ExitCode, Failure> {
    set_threads(args.threads)?;
    let (options, sets, estimate, config_warnings, default_json) = check_plan(&args)?;
    let json = args.json.clone().unwrap_or(default_json);
    for (_, images, labels) in &sets {
        for dir in [images, labels] {
            if !dir.is_dir() {
                return Err(Failure::usage_msg(format!(
                    "{}: not a folder; give an existing image or label folder",
                    dir.display()
                )));
            }
            if lies_inside(&json, dir) {
                return Err(Failure::usage_msg(format!(
                    "--json {}: the report would be written into the checked folder {};                      choose a path outside the data",
                    json.display(),
                    dir.display()
                )));
            }
        }
    }
    let started = Instant::now();
    let mut checked = Vec::new();
    for (name, images, labels) in sets {
        let pb = bar(&format!("checking {name} data"));
        let result = sam_data::check_folders(&images, &labels, &options, &Bar(pb.clone()));
        pb.finish_and_clear();
        let data = result.map_err(|e| match e {
            DataError::InvalidParameter { .. } | DataError::Io { .. } => Failure::usage(e),
            other => Failure::failed(other),
        })?;
        checked.push(sam_cli::CheckedSet { name, check: data });
    }
    let report = sam_cli::CheckReport::new(args.config.clone(), checked, estimate, config_warnings);
    for line in report.lines(args.show) {
        println!("{line}");
    }
    if let Some(parent) = json.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            Failure::failed(anyhow::Error::new(e).context(format!("create {}", parent.display())))
        })?;
    }
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| Failure::failed_msg(format!("cannot render the report: {e}")))?;
    std::fs::write(&json, text + "\n").map_err(|e| {
        Failure::failed(anyhow::Error::new(e).context(format!("write {}", json.display())))
    })?;
    println!(
        "report: {} ({:.1} s)",
        json.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(
        if report.errors > 0 || (args.deny_warnings && report.warnings > 0) {
            ExitCode::from(sam_cli::EXIT_FAILURE)
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn synth(args: SynthArgs) -> Result<(), Failure> {
    let (images, labels) = (args.out.join("images"), args.out.join("labels"));
    check_folder(&args.out, "--out")?;
    for d in [&images, &labels] {
        let non_empty = std::fs::read_dir(d)
            .map(|mut it| it.next().is_some())
            .unwrap_or(false);
        if non_empty && !args.overwrite {
            return Err(Failure::usage_msg(format!(
                "{}: destination is not empty; pass --overwrite or choose an empty folder",
                d.display()
            )));
        }
        std::fs::create_dir_all(d).map_err(|e| {
            Failure::failed(anyhow::Error::new(e).context(format!("create {}", d.display())))
        })?;
    }
    if args.size < 16 {
        return Err(Failure::usage_msg(format!(
            "--size must be at least 16, found {}",
            args.size
        )));
    }
    let cfg = SynthConfig {
        size: args.size,
        depth: if args.bits == 8 {
            BitDepth::U8
        } else {
            BitDepth::U16
        },
        cells_per_512: args.cells_per_512,
        ..SynthConfig::default()
    };
    let started = Instant::now();
    let pb = bar("synthesising");
    pb.set_length(args.count as u64);
    let objects: Vec<usize> = (0..args.count)
        .into_par_iter()
        .map(|i| -> Result<usize, DataError> {
            let s = synthesize(&cfg, sam_data::derive_seed(args.seed, &[i as u64]));
            write_image(images.join(format!("synth_{i:03}.tif")), &s.image)?;
            write_labels(labels.join(format!("synth_{i:03}.tif")), &s.labels)?;
            pb.inc(1);
            Ok(s.labels.max_id() as usize)
        })
        .collect::<Result<_, _>>()
        .map_err(classify)?;
    pb.finish_and_clear();
    println!(
        "sam-augment synth: {} images of {}x{} ({} objects) in {:.2} s -> {}",
        args.count,
        args.size,
        args.size,
        objects.iter().sum::<usize>(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    // Large tensors and images: keep freed memory for reuse (see sam_cli::memory).
    sam_cli::memory::retain_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::Synth(a) => synth(a),
        Command::Check(a) => match check(a) {
            Ok(code) => return code,
            Err(f) => Err(f),
        },
    };
    sam_cli::exit_with_prefix("sam-augment: ", result)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "sam-augment",
            "run",
            "--input",
            "a",
            "--output",
            "b",
            "--copies",
            "3",
            "--seed",
            "9",
            "--overwrite",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!((r.copies, r.seed, r.overwrite), (Some(3), Some(9), true));
        // --config excludes --input/--output, and one of them is required
        assert!(Cli::try_parse_from([
            "sam-augment",
            "run",
            "--config",
            "c.yaml",
            "--input",
            "a",
            "--output",
            "b"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["sam-augment", "run", "--input", "a"]).is_err());
        assert!(Cli::try_parse_from(["sam-augment", "run"]).is_err());
        assert!(Cli::try_parse_from(["sam-augment", "run", "--config", "c.yaml"]).is_ok());
    }

    #[test]
    fn synth_flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["sam-augment", "synth", "--out", "d"]).unwrap();
        let Command::Synth(s) = cli.command else {
            panic!("not synth")
        };
        assert_eq!((s.count, s.size, s.seed, s.bits), (8, 2048, 0, 16));
        assert!(
            Cli::try_parse_from(["sam-augment", "synth", "--out", "d", "--bits", "12"]).is_err()
        );
    }
}
