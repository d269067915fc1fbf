//! The `sam-eval` executable: scores instance segmentations with micro_sam's metrics.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage or config error.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;
use sam_cli::Failure;
use sam_eval::{evaluate_label_dirs, EvalError, LabelEvalOptions, Progress};

#[cfg(feature = "model")]
mod compare_cmd;
#[cfg(feature = "model")]
mod model_cmd;

/// Score instance segmentations of brightfield images (mSA, SA50, SA75, precision, recall, F1).
///
/// `labels` scores label images that exist; `model` segments the experiment's test images with
/// a checkpoint and scores the result. Exit codes: 0 ok, 1 failure, 2 usage or config error.
#[derive(Debug, Parser)]
#[command(name = "sam-eval", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Score a folder of predicted label images against a folder of ground-truth labels.
    ///
    /// Files are paired by stem (`img01.tif` with `img01.png`). Writes per_image.csv,
    /// summary.csv (micro_sam's columns: mSA, SA50, SA75, Precision, Recall, F1 Score; mean of
    /// the per-image scores), summary_pooled.csv (the same columns from counts pooled over all
    /// images), report.json, report.html (summary, SA curve, sortable per-image table, overlays:
    /// open it in a browser) and, with --images, overlay pictures of the worst images.
    Labels(LabelsArgs),
    /// Score a checkpoint on the experiment's test images (automatic segmentation, with
    /// optional grid search and iterative prompting).
    ///
    /// Runs automatic instance segmentation (AIS when the checkpoint has the
    /// instance-segmentation decoder, else AMG; the config's `inference` section decides, with
    /// its tiling and thresholds, and `data.normalization`) on `evaluation.test_images_dir` and
    /// scores it against `evaluation.test_labels_dir` (paired by file stem). Writes into
    /// runs/<experiment>/evaluation/: predictions/<stem>.tif, per_image.csv, summary.csv
    /// (mSA, SA50, SA75, Precision, Recall, F1 Score: mean of the per-image scores),
    /// summary_pooled.csv, report.json, report.html, overlays/ of the worst images and, with
    /// --iterative-prompting, iterative_prompting_box.csv / iterative_prompting_point.csv.
    /// With a baseline (--baseline, by default the config's model.checkpoint: the model
    /// training started from) the baseline is scored the same way into baseline/, and
    /// comparison.csv, per_image_deltas.csv (the images that got worse first) and
    /// comparison_overlays/ are written beside. An existing evaluation is kept unless
    /// --overwrite.
    #[cfg(feature = "model")]
    Model(model_cmd::ModelArgs),
}

#[derive(Debug, Args)]
struct LabelsArgs {
    /// Folder of ground-truth label images (.tif, .tiff, .png; 0 = background).
    #[arg(long, value_name = "DIR")]
    gt: PathBuf,

    /// Folder of predicted label images, paired with the ground truth by file stem.
    #[arg(long, value_name = "DIR")]
    pred: PathBuf,

    /// Output folder for the CSV files, report.json, report.html and overlays/ (created if
    /// missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Folder of brightfield images (paired by stem); enables overlay pictures of the worst
    /// images with ground-truth (green) and predicted (magenta) outlines.
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,

    /// Score a ground-truth image without a prediction as an empty prediction instead of
    /// failing.
    #[arg(long)]
    missing_as_empty: bool,

    /// Relabel the ground truth into connected components before scoring, as micro_sam's
    /// run_evaluation does; an id painted in separate pieces then counts as several objects.
    #[arg(long)]
    relabel_gt: bool,

    /// Number of lowest-mSA images that get an overlay picture (needs --images).
    #[arg(long, value_name = "N", default_value_t = 10)]
    worst: usize,

    /// Do not show a progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Errors of the evaluation library: usage or config (2) or failures while running (1).
fn eval_failure(e: EvalError) -> Failure {
    if e.is_usage() {
        Failure::usage(e)
    } else {
        Failure::failed(e)
    }
}

fn main() -> ExitCode {
    // jemalloc (linked in) serves every allocation, libtorch's included; keep freed memory
    // for reuse (see sam_cli::memory).
    sam_cli::use_linked_jemalloc!();
    sam_cli::memory::retain_freed_memory();
    let cli = Cli::parse(); // clap exits with 2 on usage errors
    sam_cli::exit(match cli.command {
        Command::Labels(args) => run_labels(args).map_err(eval_failure),
        #[cfg(feature = "model")]
        Command::Model(args) => model_cmd::run_model(args),
    })
}

fn run_labels(args: LabelsArgs) -> Result<(), EvalError> {
    let opts = LabelEvalOptions {
        gt_dir: args.gt,
        pred_dir: args.pred,
        out_dir: args.out,
        image_dir: args.images,
        missing_as_empty: args.missing_as_empty,
        relabel_gt: args.relabel_gt,
        worst: args.worst,
    };
    let bar = Mutex::new(None::<ProgressBar>);
    let quiet = args.quiet;
    let on_progress = |p: Progress| {
        if quiet {
            return;
        }
        let Ok(mut bar) = bar.lock() else { return };
        match p {
            Progress::Scoring { total } => *bar = Some(new_bar(total, "scoring")),
            Progress::Drawing { total } => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                *bar = Some(new_bar(total, "overlays"));
            }
            Progress::Scored | Progress::Drawn => {
                if let Some(b) = bar.as_ref() {
                    b.inc(1);
                }
            }
        }
    };
    let report = evaluate_label_dirs(&opts, &on_progress)?;
    if let Ok(mut bar) = bar.lock() {
        if let Some(b) = bar.take() {
            b.finish();
        }
    }
    let m = &report.summary.mean_per_image;
    let p = &report.summary.pooled;
    println!(
        "{} images: mSA {:.4}  SA50 {:.4}  SA75 {:.4}  Precision {:.4}  Recall {:.4}  F1 {:.4}",
        report.summary.images, m.msa, m.sa50, m.sa75, m.precision, m.recall, m.f1
    );
    println!(
        "pooled:    mSA {:.4}  SA50 {:.4}  SA75 {:.4}  Precision {:.4}  Recall {:.4}  F1 {:.4}",
        p.msa, p.sa50, p.sa75, p.precision, p.recall, p.f1
    );
    for stem in &report.missing_predictions {
        eprintln!("warning: no prediction for {stem}; scored as empty");
    }
    for path in &report.unpaired_predictions {
        eprintln!(
            "warning: prediction {} has no ground truth; ignored",
            path.display()
        );
    }
    println!("reports written to {}", opts.out_dir.display());
    Ok(())
}

pub(crate) fn new_bar(total: usize, what: &str) -> ProgressBar {
    let bar = sam_cli::progress_bar(
        total as u64,
        "{msg:>9} [{bar:40}] {pos}/{len} images ({eta} left)",
    );
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
#[allow(irrefutable_let_patterns)] // `labels` is the only subcommand without the model feature
mod tests {
    use super::*;

    #[test]
    fn labels_flags_parse() {
        let cli = Cli::try_parse_from([
            "sam-eval",
            "labels",
            "--gt",
            "g",
            "--pred",
            "p",
            "--out",
            "o",
            "--images",
            "i",
            "--missing-as-empty",
            "--relabel-gt",
            "--worst",
            "3",
        ])
        .unwrap();
        let Command::Labels(a) = cli.command else {
            panic!("not labels")
        };
        assert_eq!(a.gt, PathBuf::from("g"));
        assert_eq!(a.pred, PathBuf::from("p"));
        assert_eq!(a.out, PathBuf::from("o"));
        assert_eq!(a.images, Some(PathBuf::from("i")));
        assert!(a.missing_as_empty);
        assert!(a.relabel_gt);
        assert_eq!(a.worst, 3);
    }

    #[test]
    fn labels_defaults_and_required_flags() {
        let cli = Cli::try_parse_from([
            "sam-eval", "labels", "--gt", "g", "--pred", "p", "--out", "o",
        ])
        .unwrap();
        let Command::Labels(a) = cli.command else {
            panic!("not labels")
        };
        assert_eq!(a.worst, 10);
        assert!(!a.missing_as_empty);
        assert!(a.images.is_none());
        let err = Cli::try_parse_from(["sam-eval", "labels", "--gt", "g"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
