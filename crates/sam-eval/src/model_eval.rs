//! Scoring a model on test images: automatic instance segmentation (AIS, AMG or APG, optionally with
//! parameters chosen by a grid search on validation images) and iterative prompting.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sam_data::{hold_out, pair_by_stem, read_labels, write_labels, ImagePair, LabelImage};
use sam_infer::{
    load_image, segment_auto, AisParams, AmgParams, ApgParams, AutoMode, AutoOptions,
    InferenceModel, MaskRecord,
};
use serde::Serialize;

use crate::error::EvalError;
use crate::grid::{
    choose, score_ais_grid, score_amg_grid, score_apg_grid, GridParams, GridSearchReport,
    GridValues,
};
use crate::io::is_label_file;
use crate::iterative::{iterative_prompting_image, IterativeOptions, PromptStart};
use crate::labels::{evaluate_label_dirs, LabelEvalOptions, LabelReport, SUMMARY_COLUMNS};
use crate::metrics::ImageScores;
use crate::summary::Summary;

/// Where a set of images with labels comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// Every image of `images` with the label image of the same stem in `labels`.
    Dirs {
        /// Image folder.
        images: PathBuf,
        /// Label folder.
        labels: PathBuf,
    },
    /// The images that training held out for validation: the pairs of `images`/`labels`
    /// split by `sam_data::hold_out(pairs, fraction, seed)`, the rule of sam-train.
    HeldOut {
        /// Training image folder.
        images: PathBuf,
        /// Training label folder.
        labels: PathBuf,
        /// Validation fraction.
        fraction: f64,
        /// The experiment seed.
        seed: u64,
    },
}

impl ImageSource {
    /// The image/label pairs, sorted by stem. `what` names the set in errors (e.g.
    /// `evaluation.test_images_dir`).
    ///
    /// # Errors
    /// A folder that is missing, empty, or holds files without a partner.
    pub fn pairs(&self, what: (&'static str, &'static str)) -> Result<Vec<ImagePair>, EvalError> {
        let (images, labels) = match self {
            ImageSource::Dirs { images, labels } | ImageSource::HeldOut { images, labels, .. } => {
                (images, labels)
            }
        };
        check_dir(what.0, images)?;
        check_dir(what.1, labels)?;
        let pairs = pair_by_stem(images, labels)?;
        match self {
            ImageSource::Dirs { .. } => Ok(pairs),
            ImageSource::HeldOut { fraction, seed, .. } => {
                Ok(hold_out(&pairs, *fraction, *seed)?.1)
            }
        }
    }
}

fn check_dir(what: &'static str, path: &Path) -> Result<(), EvalError> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(EvalError::NotADir {
            what,
            path: path.to_path_buf(),
        })
    }
}

/// The grid search of [`ModelEvalOptions`].
#[derive(Debug, Clone, PartialEq)]
pub struct GridSearchOptions {
    /// The validation images.
    pub validation: ImageSource,
    /// The values to try.
    pub values: GridValues,
}

/// What [`evaluate_model`] reads, runs and writes.
#[derive(Debug, Clone)]
pub struct ModelEvalOptions {
    /// The checkpoint file (for the report).
    pub checkpoint: PathBuf,
    /// Test images.
    pub test_images: PathBuf,
    /// Test labels, paired with the images by stem.
    pub test_labels: PathBuf,
    /// Output folder (created).
    pub out_dir: PathBuf,
    /// Replace an evaluation already in `out_dir`.
    pub overwrite: bool,
    /// Automatic segmentation: mode, tiling, AIS / AMG parameters, normalisation. The
    /// `overwrite` / `write_*` fields are not used.
    pub segmentation: AutoOptions,
    /// Choose the AIS (or AMG) thresholds on validation images first.
    pub grid_search: Option<GridSearchOptions>,
    /// Also run the iterative-prompting evaluation.
    pub iterative: Option<IterativeOptions>,
    /// Overlay pictures of this many lowest-mSA test images (0 = none).
    pub overlays: usize,
}

/// The files of an evaluation, in the output folder.
pub const MODEL_EVAL_FILES: [&str; 7] = [
    "per_image.csv",
    "summary.csv",
    "summary_pooled.csv",
    "report.json",
    "report.html",
    "iterative_prompting_box.csv",
    "iterative_prompting_point.csv",
];

/// The evaluation files already in `out_dir` (names; `predictions/` when it holds labels).
pub fn existing_evaluation(out_dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = MODEL_EVAL_FILES
        .iter()
        .filter(|f| out_dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    let pred = out_dir.join("predictions");
    if fs::read_dir(&pred).is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| is_label_file(&e.path())))) {
        found.push("predictions/".into());
    }
    found
}

impl ModelEvalOptions {
    /// Checks everything that can be checked before the model runs: the output folder (no
    /// evaluation there unless `overwrite`), the test and validation pairs, the grid and the
    /// iterative-prompting settings.
    ///
    /// # Errors
    /// The first problem found; usage errors ([`EvalError::is_usage`]) for missing folders,
    /// an existing evaluation and bad settings.
    pub fn check(&self) -> Result<(), EvalError> {
        let existing = existing_evaluation(&self.out_dir);
        if !existing.is_empty() && !self.overwrite {
            return Err(EvalError::OutputExists {
                dir: self.out_dir.clone(),
                files: existing,
            });
        }
        check_sizes(&self.test_pairs()?)?;
        if let Some(g) = &self.grid_search {
            check_sizes(&g.validation.pairs(VALIDATION_NAMES)?)?;
            g.values.ais_grid()?;
            g.values.amg_grid()?;
        }
        if let Some(it) = &self.iterative {
            it.check()?;
        }
        Ok(())
    }

    fn test_pairs(&self) -> Result<Vec<ImagePair>, EvalError> {
        ImageSource::Dirs {
            images: self.test_images.clone(),
            labels: self.test_labels.clone(),
        }
        .pairs((
            "test image (evaluation.test_images_dir)",
            "test label (evaluation.test_labels_dir)",
        ))
    }
}

/// Every image has the size of its labels, from the file headers (and is a single 2-D
/// image): checked before the model runs, so that a bad pair does not stop an evaluation
/// half-way, leaving predictions behind.
fn check_sizes(pairs: &[ImagePair]) -> Result<(), EvalError> {
    for pair in pairs {
        let image = sam_data::image_dimensions(&pair.image)?;
        let labels = sam_data::image_dimensions(&pair.labels)?;
        if image != labels {
            return Err(EvalError::SizeMismatch {
                a: pair.labels.clone(),
                a_shape: labels,
                b: pair.image.clone(),
                b_shape: image,
            });
        }
    }
    Ok(())
}

const VALIDATION_NAMES: (&str, &str) = (
    "validation image (data.validation.images_dir or data.train_images_dir)",
    "validation label (data.validation.labels_dir or data.train_labels_dir)",
);

/// Progress of [`evaluate_model`].
#[derive(Debug, Clone, PartialEq)]
pub enum ModelProgress {
    /// A stage over `total` images starts (`"grid search"`, `"test images"`,
    /// `"iterative prompting (box)"`, ...).
    Stage {
        /// What is done.
        name: String,
        /// Number of images.
        total: usize,
    },
    /// One image of the stage is done.
    Image,
}

/// One iterative-prompting run.
#[derive(Debug, Clone, Serialize)]
pub struct IterativeReport {
    /// The start prompt.
    pub start: PromptStart,
    /// Whether the previous logits were given as mask input.
    pub use_masks: bool,
    /// The CSV written (one row per round).
    pub csv: PathBuf,
    /// Scores per round (round 0 = the start prompt alone).
    pub rounds: Vec<Summary>,
}

/// Everything [`evaluate_model`] found; also written as `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// The checkpoint.
    pub checkpoint: PathBuf,
    /// What was loaded.
    pub model: String,
    /// `"ais"` or `"amg"`.
    pub mode: &'static str,
    /// Precision of the forward passes, `"fp32"` or `"bf16"` (see `sam_model::Precision`).
    pub precision: &'static str,
    /// The AIS parameters used on the test images (AIS only; after the grid search).
    pub ais: Option<AisParams>,
    /// The AMG parameters used on the test images (AMG only; after the grid search).
    pub amg: Option<AmgParams>,
    /// The APG parameters used on the test images (APG only; after the grid search).
    pub apg: Option<ApgParams>,
    /// Percentile normalisation.
    pub normalization: sam_data::Normalization,
    /// Tile inner block `(h, w)`, `None` = whole images.
    pub tile_shape: Option<(usize, usize)>,
    /// Tile halo `(h, w)`.
    pub halo: (usize, usize),
    /// The grid search, if run.
    pub grid_search: Option<GridSearchReport>,
    /// Scores of the automatic segmentation on the test images (`predictions/<stem>.tif`).
    pub test: LabelReport,
    /// Iterative-prompting runs, if any.
    pub iterative_prompting: Vec<IterativeReport>,
    /// Wall-clock seconds of the whole evaluation.
    pub seconds: f64,
}

fn read_pair(
    pair: &ImagePair,
    norm: &sam_data::Normalization,
) -> Result<(sam_data::Plane<f32>, LabelImage), EvalError> {
    let (_, plane) = load_image(&pair.image, norm)?;
    let gt = read_labels(&pair.labels)?;
    if gt.shape() != plane.shape() {
        return Err(EvalError::SizeMismatch {
            a: pair.labels.clone(),
            a_shape: gt.shape(),
            b: pair.image.clone(),
            b_shape: plane.shape(),
        });
    }
    Ok((plane, gt))
}

fn remove_stale(out_dir: &Path) -> Result<(), EvalError> {
    let rm = |p: &Path| {
        fs::remove_file(p).map_err(|source| EvalError::Io {
            action: "cannot remove",
            path: p.to_path_buf(),
            source,
        })
    };
    for f in MODEL_EVAL_FILES {
        let p = out_dir.join(f);
        if p.is_file() {
            rm(&p)?;
        }
    }
    for (dir, keep) in [("predictions", "tif"), ("overlays", "png")] {
        if let Ok(entries) = fs::read_dir(out_dir.join(dir)) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_file() && p.extension().is_some_and(|x| x == keep) {
                    rm(&p)?;
                }
            }
        }
    }
    Ok(())
}

/// Runs the grid search; returns the report and `auto` with the chosen parameters.
fn grid_search(
    model: &InferenceModel,
    mode: AutoMode,
    g: &GridSearchOptions,
    auto: &AutoOptions,
    progress: &mut dyn FnMut(ModelProgress),
) -> Result<(GridSearchReport, AutoOptions), EvalError> {
    let pairs = g.validation.pairs(VALIDATION_NAMES)?;
    let (ais_grid, amg_grid, apg_grid) = match mode {
        AutoMode::Ais => (g.values.ais_grid()?, Vec::new(), Vec::new()),
        AutoMode::Apg => (Vec::new(), Vec::new(), g.values.apg_grid()?),
        _ => (Vec::new(), g.values.amg_grid()?, Vec::new()),
    };
    progress(ModelProgress::Stage {
        name: format!(
            "grid search ({} combinations)",
            ais_grid.len() + amg_grid.len() + apg_grid.len()
        ),
        total: pairs.len(),
    });
    let mut per_image = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let (plane, gt) = read_pair(pair, &auto.normalization)?;
        let tiling = auto.tiles.tiling_for(plane.shape(), model.input_size())?;
        let embeddings = model.embed_tiles(&plane, &tiling.tiles(), auto.batch_size, &mut || {})?;
        let scores = if mode == AutoMode::Ais {
            let maps = model.decoder_maps(&tiling, &embeddings, auto.batch_size, &mut || {})?;
            score_ais_grid(&maps, gt.as_slice(), &auto.ais, &ais_grid)?
        } else if mode == AutoMode::Apg {
            let maps = model.decoder_maps(&tiling, &embeddings, auto.batch_size, &mut || {})?;
            let mut masks_for = |p: &ApgParams| -> Result<Vec<MaskRecord>, EvalError> {
                Ok(model.apg_masks_from_maps(&tiling, &embeddings, &maps, p, &mut || {})?)
            };
            score_apg_grid(
                &mut masks_for,
                plane.shape(),
                gt.as_slice(),
                &auto.apg,
                &apg_grid,
            )?
        } else {
            let crops = model.amg_masks(&tiling, embeddings, &auto.amg, &mut || {})?;
            score_amg_grid(&crops, plane.shape(), gt.as_slice(), &auto.amg, &amg_grid)?
        };
        per_image.push(scores);
        progress(ModelProgress::Image);
    }
    let params: Vec<GridParams> = match mode {
        AutoMode::Ais => ais_grid.into_iter().map(GridParams::Ais).collect(),
        AutoMode::Apg => apg_grid.into_iter().map(GridParams::Apg).collect(),
        _ => amg_grid.into_iter().map(GridParams::Amg).collect(),
    };
    let names = pairs.iter().map(|p| p.stem.clone()).collect();
    let report = choose(params, &per_image, names, g.values.clone())?;
    let mut tuned = auto.clone();
    match report.chosen().params {
        GridParams::Ais(p) => tuned.ais = p.apply(&auto.ais),
        GridParams::Amg(p) => tuned.amg = p.apply(&auto.amg),
        GridParams::Apg(p) => tuned.apg = p.apply(&auto.apg),
    }
    Ok((report, tuned))
}

fn write_rounds_csv(path: &Path, rounds: &[Summary]) -> Result<(), EvalError> {
    let err = |e: csv::Error| EvalError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut w = csv::Writer::from_path(path).map_err(err)?;
    let mut header = vec!["iteration"];
    header.extend(SUMMARY_COLUMNS);
    w.write_record(&header).map_err(err)?;
    for (i, r) in rounds.iter().enumerate() {
        let s = &r.mean_per_image;
        let mut row = vec![i.to_string()];
        row.extend([s.msa, s.sa50, s.sa75, s.precision, s.recall, s.f1].map(|v| v.to_string()));
        w.write_record(&row).map_err(err)?;
    }
    w.flush().map_err(|e| EvalError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Scores `model` on the test images of `opts` and writes into `opts.out_dir`:
///
/// - `predictions/<stem>.tif`: the automatic segmentation (AIS with the decoder, else AMG, as
///   `opts.segmentation.mode` says) of every test image;
/// - `per_image.csv`, `summary.csv` (micro_sam's columns [`SUMMARY_COLUMNS`]),
///   `summary_pooled.csv`, `overlays/` as [`evaluate_label_dirs`] writes them;
/// - with iterative prompting, `iterative_prompting_<box|point>.csv`: `iteration` and
///   micro_sam's columns, one row per round, means over the test images;
/// - `report.json`: the whole [`ModelReport`] (with the grid search's every combination and
///   its validation scores);
/// - `report.html`: the page a person reads ([`crate::write_html_report`]), with the model,
///   the mode and its parameters at the top.
///
/// With a grid search the chosen parameters replace those of `opts.segmentation` on the
/// test images.
///
/// # Errors
/// See [`ModelEvalOptions::check`]; model and file failures name the file.
pub fn evaluate_model(
    model: &InferenceModel,
    opts: &ModelEvalOptions,
    progress: &mut dyn FnMut(ModelProgress),
) -> Result<ModelReport, EvalError> {
    let started = Instant::now();
    opts.check()?;
    let mode = opts.segmentation.mode.resolve(model)?;
    let test_pairs = opts.test_pairs()?;

    let (grid_report, auto) = match &opts.grid_search {
        Some(g) => {
            let (r, a) = grid_search(model, mode, g, &opts.segmentation, progress)?;
            (Some(r), a)
        }
        None => (None, opts.segmentation.clone()),
    };

    fs::create_dir_all(&opts.out_dir).map_err(|source| EvalError::Io {
        action: "cannot create output folder",
        path: opts.out_dir.clone(),
        source,
    })?;
    if opts.overwrite {
        remove_stale(&opts.out_dir)?;
    }
    let pred_dir = opts.out_dir.join("predictions");
    fs::create_dir_all(&pred_dir).map_err(|source| EvalError::Io {
        action: "cannot create output folder",
        path: pred_dir.clone(),
        source,
    })?;

    progress(ModelProgress::Stage {
        name: format!("test images ({})", mode.name()),
        total: test_pairs.len(),
    });
    for pair in &test_pairs {
        let (plane, _) = read_pair(pair, &auto.normalization)?;
        let seg = segment_auto(model, &plane, &auto, &mut |_| {})?;
        write_labels(pred_dir.join(format!("{}.tif", pair.stem)), &seg.labels)?;
        progress(ModelProgress::Image);
    }
    let test = evaluate_label_dirs(
        &LabelEvalOptions {
            gt_dir: opts.test_labels.clone(),
            pred_dir,
            out_dir: opts.out_dir.clone(),
            image_dir: (opts.overlays > 0).then(|| opts.test_images.clone()),
            missing_as_empty: false,
            relabel_gt: false,
            worst: opts.overlays,
        },
        &|_| {},
    )?;

    let mut iterative_reports = Vec::new();
    if let Some(it) = &opts.iterative {
        for &start in &it.starts {
            progress(ModelProgress::Stage {
                name: format!("iterative prompting ({})", start.name()),
                total: test_pairs.len(),
            });
            let mut per_image: Vec<Vec<ImageScores>> = Vec::with_capacity(test_pairs.len());
            for (i, pair) in test_pairs.iter().enumerate() {
                let (plane, gt) = read_pair(pair, &auto.normalization)?;
                per_image.push(iterative_prompting_image(
                    model, &plane, &gt, start, it, i as u64,
                )?);
                progress(ModelProgress::Image);
            }
            let rounds = (0..it.n_iterations)
                .map(|r| {
                    let s: Vec<ImageScores> = per_image.iter().map(|v| v[r].clone()).collect();
                    Summary::from_images(&s)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let csv = opts
                .out_dir
                .join(format!("iterative_prompting_{}.csv", start.name()));
            write_rounds_csv(&csv, &rounds)?;
            iterative_reports.push(IterativeReport {
                start,
                use_masks: it.use_masks,
                csv,
                rounds,
            });
        }
    }

    let report = ModelReport {
        checkpoint: opts.checkpoint.clone(),
        model: model.description().to_string(),
        mode: mode.name(),
        precision: model.precision().name(),
        ais: (mode == AutoMode::Ais).then_some(auto.ais),
        amg: (mode == AutoMode::Amg).then_some(auto.amg),
        apg: (mode == AutoMode::Apg).then_some(auto.apg),
        normalization: auto.normalization,
        tile_shape: auto.tiles.tile_shape,
        halo: auto.tiles.halo,
        grid_search: grid_report,
        test,
        iterative_prompting: iterative_reports,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json_path = opts.out_dir.join("report.json");
    let json = serde_json::to_string_pretty(&report).map_err(|e| EvalError::Write {
        path: json_path.clone(),
        reason: e.to_string(),
    })?;
    fs::write(&json_path, json).map_err(|source| EvalError::Io {
        action: "cannot write",
        path: json_path.clone(),
        source,
    })?;
    crate::html::write_html_report(
        &opts.out_dir.join("report.html"),
        &report.test,
        &html_context(&report, None),
    )?;
    Ok(report)
}

/// The page's title and facts for a model evaluation, with `comparison` when a baseline was
/// scored too.
pub(crate) fn html_context(
    report: &ModelReport,
    comparison: Option<crate::html::Comparison>,
) -> crate::html::HtmlContext {
    let mut facts = vec![
        (
            "checkpoint".to_string(),
            report.checkpoint.display().to_string(),
        ),
        ("model".to_string(), report.model.clone()),
        (
            "mode".to_string(),
            format!("{} ({})", report.mode, report.precision),
        ),
    ];
    if let Some(p) = &report.ais {
        facts.push(("AIS parameters".into(), compact(p)));
    }
    if let Some(p) = &report.amg {
        facts.push(("AMG parameters".into(), compact(p)));
    }
    if let Some(p) = &report.apg {
        facts.push(("APG parameters".into(), compact(p)));
    }
    if let Some(g) = &report.grid_search {
        facts.push((
            "grid search".into(),
            format!(
                "{} combinations on {} validation images, the best used",
                g.tried.len(),
                g.validation_images.len()
            ),
        ));
    }
    facts.push(("normalisation".into(), compact(&report.normalization)));
    facts.push((
        "tiles".into(),
        match report.tile_shape {
            Some((h, w)) => format!("{h}×{w}, halo {}×{}", report.halo.0, report.halo.1),
            None => "whole images".into(),
        },
    ));
    for it in &report.iterative_prompting {
        if let (Some(first), Some(last)) = (it.rounds.first(), it.rounds.last()) {
            facts.push((
                format!("iterative prompting ({})", it.start.name()),
                format!(
                    "mSA {:.3} after the first round, {:.3} after {} rounds",
                    first.mean_per_image.msa,
                    last.mean_per_image.msa,
                    it.rounds.len()
                ),
            ));
        }
    }
    facts.push(("seconds".into(), format!("{:.1}", report.seconds)));
    crate::html::HtmlContext {
        title: format!("Evaluation of {}", report.checkpoint.display()),
        facts,
        comparison,
    }
}

/// Compact JSON of a parameter set, for the report's facts.
fn compact<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
