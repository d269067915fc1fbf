//! A model beside a baseline (the model fine-tuning started from): both scored on the same test
//! images with the same automatic-segmentation mode and parameters, the summaries side by side
//! and the per-image differences, worst first.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sam_data::{read_image, read_labels, write_overlay_png};
use sam_infer::{InferenceModel, TileSpec};
use serde::Serialize;

use crate::error::EvalError;
use crate::iterative::PromptStart;
use crate::labels::{ImageRecord, GT_COLOUR, PRED_COLOUR, SUMMARY_COLUMNS};
use crate::metrics::ImageScores;
use crate::model_eval::{evaluate_model, existing_evaluation, ModelEvalOptions, ModelProgress};
use crate::summary::SummaryScores;
use crate::ModelReport;

/// The files a comparison writes into the evaluation folder, besides the folders
/// [`BASELINE_DIR`] and [`COMPARISON_OVERLAY_DIR`]: the last one only with iterative
/// prompting.
pub const COMPARISON_FILES: [&str; 3] = [
    "comparison.csv",
    "per_image_deltas.csv",
    "iterative_prompting_deltas.csv",
];

/// The sub-folder of the evaluation folder that holds the baseline's own evaluation
/// (`predictions/`, `per_image.csv`, `summary.csv`, `report.json`, ...).
pub const BASELINE_DIR: &str = "baseline";

/// The sub-folder of the evaluation folder with the overlay pictures of the comparison:
/// `<rank>_<stem>_baseline.png` and `<rank>_<stem>_model.png`, rank 1 for the image whose mSA
/// dropped most, so that a file listing shows the images where the model got worse first.
pub const COMPARISON_OVERLAY_DIR: &str = "comparison_overlays";

/// The baseline of [`compare_to_baseline`].
#[derive(Debug)]
pub struct Baseline<'a> {
    /// The loaded baseline model.
    pub model: &'a InferenceModel,
    /// Its checkpoint file (for the reports).
    pub checkpoint: PathBuf,
    /// Its tiling: the config's, adjusted to the baseline's input size as for the model (see
    /// `sam_cli_torch::tiles_for_model`).
    pub tiles: TileSpec,
}

/// One metric of one image for both models.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MetricDelta {
    /// The baseline's score.
    pub baseline: f64,
    /// The model's score.
    pub model: f64,
    /// `model - baseline`: negative where the model got worse.
    pub delta: f64,
}

impl MetricDelta {
    fn new(baseline: f64, model: f64) -> Self {
        Self {
            baseline,
            model,
            delta: model - baseline,
        }
    }
}

/// The scores of one test image for both models, in the order of [`SUMMARY_COLUMNS`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerImageDelta {
    /// The image's stem.
    pub image: String,
    /// mSA, SA50, SA75, Precision, Recall, F1 Score.
    pub metrics: [MetricDelta; 6],
}

impl PerImageDelta {
    /// The mSA of both models and its change.
    pub fn msa(&self) -> MetricDelta {
        self.metrics[0]
    }
}

/// The six summary columns of one image's scores.
fn columns(s: &ImageScores) -> [f64; 6] {
    [s.msa, s.sa50, s.sa75, s.precision, s.recall, s.f1]
}

/// The six summary columns of aggregate scores.
fn summary_columns(s: &SummaryScores) -> [f64; 6] {
    [s.msa, s.sa50, s.sa75, s.precision, s.recall, s.f1]
}

/// Each of micro_sam's columns of `baseline` and `model` (in [`SUMMARY_COLUMNS`] order) with
/// its change.
fn metric_deltas(baseline: [f64; 6], model: [f64; 6]) -> [MetricDelta; 6] {
    std::array::from_fn(|i| MetricDelta::new(baseline[i], model[i]))
}

/// One start prompt's iterative-prompting rounds for both models.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IterativeDelta {
    /// The start prompt.
    pub start: PromptStart,
    /// Per round (round 0 = the start prompt alone), micro_sam's columns of the baseline's and
    /// the model's mean scores, in the order of [`SUMMARY_COLUMNS`].
    pub rounds: Vec<[MetricDelta; 6]>,
}

/// The iterative-prompting rounds of `model` beside the baseline's, per start prompt the model
/// ran; the start the baseline did not run as the error.
fn iterative_deltas(
    baseline: &ModelReport,
    model: &ModelReport,
) -> Result<Vec<IterativeDelta>, PromptStart> {
    model
        .iterative_prompting
        .iter()
        .map(|m| {
            let b = baseline
                .iterative_prompting
                .iter()
                .find(|b| b.start == m.start)
                .ok_or(m.start)?;
            let rounds = m
                .rounds
                .iter()
                .zip(&b.rounds)
                .map(|(mr, br)| {
                    metric_deltas(
                        summary_columns(&br.mean_per_image),
                        summary_columns(&mr.mean_per_image),
                    )
                })
                .collect();
            Ok(IterativeDelta {
                start: m.start,
                rounds,
            })
        })
        .collect()
}

/// The per-image changes from `baseline` to `model`, the images where the model got worse
/// first: sorted by the mSA change, most negative first, ties by name.
///
/// # Errors
/// [`EvalError::Folders`] when the two sets of images differ (they are scored on the same
/// test folder, so this means a file changed in between).
pub fn image_deltas(
    baseline: &[ImageRecord],
    model: &[ImageRecord],
) -> Result<Vec<PerImageDelta>, EvalError> {
    let mut deltas = Vec::with_capacity(model.len());
    for m in model {
        let b = baseline.iter().find(|b| b.name == m.name).ok_or_else(|| {
            EvalError::Folders(format!(
                "test image {} was scored for the model but not for the baseline",
                m.name
            ))
        })?;
        deltas.push(PerImageDelta {
            image: m.name.clone(),
            metrics: metric_deltas(columns(&b.scores), columns(&m.scores)),
        });
    }
    if baseline.len() != model.len() {
        return Err(EvalError::Folders(format!(
            "the baseline was scored on {} test images, the model on {}",
            baseline.len(),
            model.len()
        )));
    }
    deltas.sort_by(|a, b| {
        a.msa()
            .delta
            .total_cmp(&b.msa().delta)
            .then_with(|| a.image.cmp(&b.image))
    });
    Ok(deltas)
}

/// What [`compare_to_baseline`] found.
#[derive(Debug, Clone, Serialize)]
pub struct ComparisonReport {
    /// The model's evaluation (also in the evaluation folder's `report.json`).
    pub model: ModelReport,
    /// The baseline's evaluation (also in `baseline/report.json`).
    pub baseline: ModelReport,
    /// Per-image changes, the images where the model got worse first (see [`image_deltas`]).
    pub images: Vec<PerImageDelta>,
    /// The overlay pictures written, in the order of `images`.
    pub overlays: Vec<PathBuf>,
    /// With iterative prompting, each start prompt's rounds for both models (else empty).
    pub iterative: Vec<IterativeDelta>,
}

impl ComparisonReport {
    /// The images whose mSA dropped from the baseline to the model, the largest drop first.
    pub fn worse(&self) -> impl Iterator<Item = &PerImageDelta> {
        self.images.iter().filter(|d| d.msa().delta < 0.0)
    }
}

/// The comparison files and folders already in `out_dir` (names).
pub fn existing_comparison(out_dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = COMPARISON_FILES
        .iter()
        .filter(|f| out_dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    found.extend(
        existing_evaluation(&out_dir.join(BASELINE_DIR))
            .into_iter()
            .map(|f| format!("{BASELINE_DIR}/{f}")),
    );
    let overlays = out_dir.join(COMPARISON_OVERLAY_DIR);
    if fs::read_dir(&overlays).is_ok_and(|mut d| d.next().is_some()) {
        found.push(format!("{COMPARISON_OVERLAY_DIR}/"));
    }
    found
}

/// Removes the comparison files of an earlier evaluation in `out_dir`: [`COMPARISON_FILES`]
/// and the PNG files of [`COMPARISON_OVERLAY_DIR`] (the baseline's own evaluation is replaced
/// by its next evaluation). An evaluation without a baseline calls it when it overwrites, so
/// that no comparison is left beside scores it does not belong to.
///
/// # Errors
/// A file that cannot be removed.
pub fn remove_comparison(out_dir: &Path) -> Result<(), EvalError> {
    let rm = |p: &Path| {
        fs::remove_file(p).map_err(|source| EvalError::Io {
            action: "cannot remove",
            path: p.to_path_buf(),
            source,
        })
    };
    for f in COMPARISON_FILES {
        let p = out_dir.join(f);
        if p.is_file() {
            rm(&p)?;
        }
    }
    if let Ok(entries) = fs::read_dir(out_dir.join(COMPARISON_OVERLAY_DIR)) {
        for p in entries.flatten().map(|e| e.path()) {
            if p.is_file() && p.extension().is_some_and(|x| x == "png") {
                rm(&p)?;
            }
        }
    }
    Ok(())
}

/// The options of the baseline's evaluation: those of the model with the baseline's checkpoint,
/// tiling and folder, the mode the model ran, the same iterative prompting, and no grid search
/// (the parameters come from the model's evaluation) or overlays of its own.
fn baseline_options(opts: &ModelEvalOptions, baseline: &Baseline<'_>) -> ModelEvalOptions {
    let mut b = opts.clone();
    b.checkpoint = baseline.checkpoint.clone();
    b.out_dir = opts.out_dir.join(BASELINE_DIR);
    b.segmentation.tiles = baseline.tiles;
    b.grid_search = None;
    b.overlays = 0;
    b
}

/// Checks what [`compare_to_baseline`] can check before any model runs: the model's
/// evaluation ([`ModelEvalOptions::check`]), an earlier comparison in the output folder
/// (refused unless `opts.overwrite`), and that the baseline can run the mode the model runs.
///
/// # Errors
/// [`EvalError::OutputExists`] for an earlier comparison, [`EvalError::Setting`] when the
/// baseline cannot run the model's mode (AIS or APG without a decoder), and those of
/// [`ModelEvalOptions::check`].
pub fn check_comparison(
    model: &InferenceModel,
    opts: &ModelEvalOptions,
    baseline: &Baseline<'_>,
) -> Result<(), EvalError> {
    opts.check()?;
    let existing = existing_comparison(&opts.out_dir);
    if !existing.is_empty() && !opts.overwrite {
        return Err(EvalError::OutputExists {
            dir: opts.out_dir.clone(),
            files: existing,
        });
    }
    let mode = opts.segmentation.mode.resolve(model)?;
    if let Err(e) = mode.resolve(baseline.model) {
        return Err(EvalError::Setting {
            name: "inference.mode".into(),
            message: format!(
                "the model runs {}, but the baseline {} cannot ({e}); set inference.mode: amg \
                 to compare both with AMG",
                mode.name(),
                baseline.checkpoint.display()
            ),
        });
    }
    Ok(())
}

/// Scores `model` as [`evaluate_model`] does (into `opts.out_dir`), then the baseline on the
/// same test images with the same mode and the same parameters (those a grid search chose
/// for the model, if one ran) into `opts.out_dir/baseline/`, and writes into `opts.out_dir`:
///
/// - `comparison.csv`: `model` (`baseline` or `model`), `checkpoint`, `mode`, `images` and
///   micro_sam's columns [`SUMMARY_COLUMNS`] (means of the per-image scores, as in
///   `summary.csv`), one row per model, the baseline first;
/// - `per_image_deltas.csv`: `image`, then for each of micro_sam's columns the baseline's
///   score, the model's and the change (`<column> baseline`, `<column> model`,
///   `<column> delta`), the images where the model got worse first ([`image_deltas`]);
/// - `comparison_overlays/<rank>_<stem>_{baseline,model}.png` for the first `opts.overlays`
///   images of that order: ground truth (green) and each model's prediction (magenta);
/// - with iterative prompting (which then runs for both models, the baseline's CSV files in
///   `baseline/`), `iterative_prompting_deltas.csv`: `start`, `iteration`, then the baseline's
///   score, the model's and the change for each of micro_sam's columns, one row per start
///   prompt and round;
/// - `report.html` again, with the section comparing the two models.
///
/// # Errors
/// Those of [`check_comparison`] (before any model runs) and of [`evaluate_model`].
pub fn compare_to_baseline(
    model: &InferenceModel,
    opts: &ModelEvalOptions,
    baseline: &Baseline<'_>,
    progress: &mut dyn FnMut(ModelProgress),
) -> Result<ComparisonReport, EvalError> {
    check_comparison(model, opts, baseline)?;
    let mut base_opts = baseline_options(opts, baseline);
    base_opts.check()?;
    if opts.overwrite {
        remove_comparison(&opts.out_dir)?;
    }
    let model_report = evaluate_model(model, opts, progress)?;
    // The same mode and parameters as the model's evaluation used.
    base_opts.segmentation.mode = opts.segmentation.mode.resolve(model)?;
    if let Some(ais) = model_report.ais {
        base_opts.segmentation.ais = ais;
    }
    if let Some(amg) = model_report.amg {
        base_opts.segmentation.amg = amg;
    }
    if let Some(apg) = model_report.apg {
        base_opts.segmentation.apg = apg;
    }
    let baseline_report = evaluate_model(baseline.model, &base_opts, &mut |p| {
        progress(match p {
            ModelProgress::Stage { name, total } => ModelProgress::Stage {
                name: format!("baseline: {name}"),
                total,
            },
            other => other,
        })
    })?;
    let images = image_deltas(&baseline_report.test.images, &model_report.test.images)?;
    write_comparison_csv(
        &opts.out_dir.join(COMPARISON_FILES[0]),
        &[("baseline", &baseline_report), ("model", &model_report)],
    )?;
    write_deltas_csv(
        &opts.out_dir.join(COMPARISON_FILES[1]),
        &["image"],
        images.iter().map(|d| (vec![d.image.clone()], &d.metrics)),
    )?;
    let iterative_csv = opts.out_dir.join(COMPARISON_FILES[2]);
    let iterative = iterative_deltas(&baseline_report, &model_report).map_err(|start| {
        csv_error(
            &iterative_csv,
            format!("the baseline ran no {} start", start.name()),
        )
    })?;
    if !iterative.is_empty() {
        write_deltas_csv(
            &iterative_csv,
            &["start", "iteration"],
            iterative.iter().flat_map(|it| {
                it.rounds
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (vec![it.start.name().to_string(), i.to_string()], r))
            }),
        )?;
    }
    // The model's page gets the comparison section.
    crate::html::write_html_report(
        &opts.out_dir.join("report.html"),
        &model_report.test,
        &crate::model_eval::html_context(
            &model_report,
            Some(html_comparison(&model_report, &baseline_report, &images)),
        ),
    )?;
    let overlays = draw_comparison_overlays(
        &images[..opts.overlays.min(images.len())],
        &baseline_report,
        &model_report,
        opts,
    )?;
    Ok(ComparisonReport {
        model: model_report,
        baseline: baseline_report,
        images,
        overlays,
        iterative,
    })
}

/// The comparison section of `report.html`: the model's and the baseline's summaries, and the
/// per-image mSA of both.
fn html_comparison(
    model: &ModelReport,
    baseline: &ModelReport,
    images: &[PerImageDelta],
) -> crate::html::Comparison {
    let label = |what: &str, r: &ModelReport| {
        let name = r
            .checkpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.checkpoint.display().to_string());
        format!("{what}: {name}")
    };
    crate::html::Comparison {
        models: [("model", model), ("baseline", baseline)]
            .into_iter()
            .map(|(what, r)| crate::html::ComparedModel {
                label: label(what, r),
                scores: r.test.summary.mean_per_image.clone(),
            })
            .collect(),
        deltas: images
            .iter()
            .map(|d| crate::html::ImageDelta {
                name: d.image.clone(),
                baseline_msa: d.msa().baseline,
                msa: d.msa().model,
            })
            .collect(),
    }
}

fn csv_error(path: &Path, e: impl std::fmt::Display) -> EvalError {
    EvalError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn write_comparison_csv(path: &Path, rows: &[(&str, &ModelReport)]) -> Result<(), EvalError> {
    let mut w = csv::Writer::from_path(path).map_err(|e| csv_error(path, e))?;
    let mut header = vec!["model", "checkpoint", "mode", "images"];
    header.extend(SUMMARY_COLUMNS);
    w.write_record(&header).map_err(|e| csv_error(path, e))?;
    for (name, r) in rows {
        let s = &r.test.summary;
        let mut row = vec![
            name.to_string(),
            r.checkpoint.display().to_string(),
            r.mode.to_string(),
            s.images.to_string(),
        ];
        row.extend(summary_columns(&s.mean_per_image).map(|v| v.to_string()));
        w.write_record(&row).map_err(|e| csv_error(path, e))?;
    }
    w.flush().map_err(|e| csv_error(path, e))
}

/// A CSV of changes: the `keys` columns, then for each of micro_sam's columns the baseline's
/// score, the model's and the change (`<column> baseline`, `<column> model`, `<column> delta`);
/// one row per `(key values, metrics)` of `rows`.
fn write_deltas_csv<'a>(
    path: &Path,
    keys: &[&str],
    rows: impl IntoIterator<Item = (Vec<String>, &'a [MetricDelta; 6])>,
) -> Result<(), EvalError> {
    let mut w = csv::Writer::from_path(path).map_err(|e| csv_error(path, e))?;
    let mut header: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    for c in SUMMARY_COLUMNS {
        header.extend(["baseline", "model", "delta"].map(|k| format!("{c} {k}")));
    }
    w.write_record(&header).map_err(|e| csv_error(path, e))?;
    for (mut row, metrics) in rows {
        for m in metrics {
            row.extend([m.baseline, m.model, m.delta].map(|v| v.to_string()));
        }
        w.write_record(&row).map_err(|e| csv_error(path, e))?;
    }
    w.flush().map_err(|e| csv_error(path, e))
}

/// The overlay pictures of `images` (in their order) for both models.
fn draw_comparison_overlays(
    images: &[PerImageDelta],
    baseline: &ModelReport,
    model: &ModelReport,
    opts: &ModelEvalOptions,
) -> Result<Vec<PathBuf>, EvalError> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let dir = opts.out_dir.join(COMPARISON_OVERLAY_DIR);
    fs::create_dir_all(&dir).map_err(|source| EvalError::Io {
        action: "cannot create output folder",
        path: dir.clone(),
        source,
    })?;
    let width = images.len().to_string().len().max(2);
    let record = |r: &ModelReport, stem: &str| -> Result<ImageRecord, EvalError> {
        r.test
            .images
            .iter()
            .find(|i| i.name == stem)
            .cloned()
            .ok_or_else(|| EvalError::Folders(format!("no scores for test image {stem}")))
    };
    let jobs: Vec<(PathBuf, ImageRecord)> = images
        .iter()
        .enumerate()
        .map(|(rank, d)| {
            let prefix = format!("{:0width$}_{}", rank + 1, d.image);
            Ok([
                (
                    dir.join(format!("{prefix}_baseline.png")),
                    record(baseline, &d.image)?,
                ),
                (
                    dir.join(format!("{prefix}_model.png")),
                    record(model, &d.image)?,
                ),
            ])
        })
        .collect::<Result<Vec<_>, EvalError>>()?
        .into_iter()
        .flatten()
        .collect();
    jobs.par_iter()
        .map(|(out, r)| {
            let image_path =
                crate::io::find_by_stem(&opts.test_images, &r.name).ok_or_else(|| {
                    EvalError::MissingImage {
                        gt: r.gt.clone(),
                        stem: r.name.clone(),
                        image_dir: opts.test_images.clone(),
                    }
                })?;
            let gt = read_labels(&r.gt)?;
            let pred = match &r.pred {
                Some(p) => read_labels(p)?,
                None => sam_data::LabelImage::zeros(gt.rows(), gt.cols()),
            };
            let grey = read_image(&image_path)?;
            write_overlay_png(out, &grey, &[(&gt, GT_COLOUR), (&pred, PRED_COLOUR)])?;
            Ok(out.clone())
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(name: &str, gt: &[u32], pred: &[u32]) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            gt: PathBuf::from(format!("{name}.tif")),
            pred: None,
            width: gt.len(),
            height: 1,
            scores: crate::score_image(gt, pred).unwrap(),
        }
    }

    #[test]
    fn deltas_put_the_largest_msa_drop_first() {
        let gt = [1, 1, 0, 2, 2, 0];
        let perfect = [5, 5, 0, 6, 6, 0];
        let half = [5, 5, 0, 0, 0, 0];
        let none = [0, 0, 0, 0, 0, 0];
        // a: perfect -> half (drop), b: half -> perfect (gain), c: perfect -> none (larger
        // drop), d: half -> half (no change).
        let baseline = [
            record("a", &gt, &perfect),
            record("b", &gt, &half),
            record("c", &gt, &perfect),
            record("d", &gt, &half),
        ];
        let model = [
            record("a", &gt, &half),
            record("b", &gt, &perfect),
            record("c", &gt, &none),
            record("d", &gt, &half),
        ];
        let d = image_deltas(&baseline, &model).unwrap();
        let order: Vec<&str> = d.iter().map(|d| d.image.as_str()).collect();
        assert_eq!(order, ["c", "a", "d", "b"]);
        for x in &d {
            let b = baseline.iter().find(|r| r.name == x.image).unwrap();
            let m = model.iter().find(|r| r.name == x.image).unwrap();
            assert_eq!(x.msa().baseline, b.scores.msa);
            assert_eq!(x.msa().model, m.scores.msa);
            assert_eq!(x.msa().delta, m.scores.msa - b.scores.msa);
            assert_eq!(x.metrics[5].delta, m.scores.f1 - b.scores.f1);
        }
        assert!(d[0].msa().delta < d[1].msa().delta && d[1].msa().delta < 0.0);
        assert!(image_deltas(&baseline[..3], &model).is_err());
    }
}
