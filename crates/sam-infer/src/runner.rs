//! Whole-image jobs: read, normalise, tile, segment, write labels / overlay / CSV, per image.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sam_data::Plane;
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use crate::ais::{ais_segment, AisParams};
use crate::amg::{amg_segment, AmgParams};
use crate::apg::{apg_segment, ApgParams};
use crate::error::InferError;
use crate::model::InferenceModel;
use crate::objects::{mean_per_object, write_objects_csv};
use crate::prompts::PromptFile;
use crate::tiling::Tiling;

/// Which automatic segmentation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoMode {
    /// AIS when the model has a decoder, else AMG.
    Auto,
    /// UNETR decoder + seeded watershed.
    Ais,
    /// Point grid + filtering + NMS.
    Amg,
    /// Point prompts from the UNETR decoder maps → SAM masks → mask NMS.
    Apg,
}

impl AutoMode {
    /// The mode actually run for `model`; AIS without a decoder is an error.
    pub fn resolve(self, model: &InferenceModel) -> Result<AutoMode, InferError> {
        match self {
            AutoMode::Auto if model.has_decoder() => Ok(AutoMode::Ais),
            AutoMode::Auto => Ok(AutoMode::Amg),
            AutoMode::Ais | AutoMode::Apg if !model.has_decoder() => {
                Err(InferError::Model(format!(
                    "mode {} needs an instance-segmentation decoder, but {} has none; use --mode \
                     amg",
                    self.name(),
                    model.description()
                )))
            }
            m => Ok(m),
        }
    }

    /// `"ais"`, `"amg"`, `"apg"` or `"auto"`.
    pub fn name(self) -> &'static str {
        match self {
            AutoMode::Auto => "auto",
            AutoMode::Ais => "ais",
            AutoMode::Amg => "amg",
            AutoMode::Apg => "apg",
        }
    }
}

/// How images are tiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileSpec {
    /// Inner block `(h, w)`; `None` = the whole image at once (resized to the model input).
    pub tile_shape: Option<(usize, usize)>,
    /// Halo `(h, w)` added on each side of a tile.
    pub halo: (usize, usize),
}

impl TileSpec {
    /// The tiling for an image of `shape`: one tile when the image fits the model input
    /// (`input_size` on both sides) or no tile shape is set, else `tile_shape` with `halo`.
    pub fn tiling_for(
        &self,
        shape: (usize, usize),
        input_size: usize,
    ) -> Result<Tiling, InferError> {
        match self.tile_shape {
            Some(t) if shape.0 > input_size || shape.1 > input_size => {
                Tiling::new(shape, t, self.halo)
            }
            _ => Tiling::single(shape),
        }
    }
}

impl TileSpec {
    /// The tiling for a model that was trained on patches fed at their own size
    /// (`model.encoder_input: native`, [`sam_model::Sam::is_native_input`]): images larger than
    /// its `input_size` are cut into tiles whose side plus halo is the input, so that the model
    /// sees pixels at the scale it was trained at. A tiling that already fits (tile + 2 × halo
    /// ≤ input on both axes) is kept; otherwise the halo is kept when it leaves room for a tile,
    /// else it is an eighth of the input, and the tile fills the rest.
    pub fn fitting_native_input(self, input_size: usize) -> TileSpec {
        if let Some((th, tw)) = self.tile_shape {
            if th + 2 * self.halo.0 <= input_size && tw + 2 * self.halo.1 <= input_size {
                return self;
            }
        }
        let current = self.halo.0.max(self.halo.1);
        let halo = if current > 0 && 4 * current <= input_size {
            current
        } else {
            input_size / 8
        };
        let tile = input_size.saturating_sub(2 * halo).max(1);
        TileSpec {
            tile_shape: Some((tile, tile)),
            halo: (halo, halo),
        }
    }
}

/// How much an image is shrunk on its way into the model, and a tiling that would not shrink
/// it ([`TileSpec::downscale`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Downscale {
    /// Side of the block the model sees (a whole image or a tile with its halo), over the
    /// model input.
    pub factor: f64,
    /// The block's side in pixels.
    pub block: usize,
    /// The model input side in pixels.
    pub input_size: usize,
    /// A tile side that fits the model input with [`Downscale::halo`]: `tile + 2 × halo = input`.
    pub tile: usize,
    /// The halo to go with [`Downscale::tile`].
    pub halo: usize,
}

impl std::fmt::Display for Downscale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shrunk {:.1}× ({} px blocks into the model's {} px input), so small objects lose \
             detail; tiles of {t}×{t} with a halo of {h} (tile + 2 × halo = {}) match the model",
            self.factor,
            self.block,
            self.input_size,
            self.input_size,
            t = self.tile,
            h = self.halo
        )
    }
}

impl TileSpec {
    /// The shrink an image of `shape` undergoes with this tiling on a model with
    /// `input_size`, when it is large enough to lose detail (more than 1.5×): no tiling (or one
    /// tile) on an image larger than the input, or tiles whose side plus halo exceeds it.
    pub fn downscale(&self, shape: (usize, usize), input_size: usize) -> Option<Downscale> {
        let tiling = self.tiling_for(shape, input_size).ok()?;
        let block = tiling
            .tiles()
            .iter()
            .map(|t| t.outer.height().max(t.outer.width()))
            .max()?;
        let factor = block as f64 / input_size.max(1) as f64;
        if factor <= 1.5 {
            return None;
        }
        // Keep the halo when it leaves room for a tile, else an eighth of the input.
        let current = self.halo.0.max(self.halo.1);
        let halo = if current > 0 && 4 * current <= input_size {
            current
        } else {
            input_size / 8
        };
        Some(Downscale {
            factor,
            block,
            input_size,
            tile: input_size.saturating_sub(2 * halo).max(1),
            halo,
        })
    }
}

/// Settings of [`run_auto`].
#[derive(Debug, Clone)]
pub struct AutoOptions {
    /// The mode.
    pub mode: AutoMode,
    /// Tiling.
    pub tiles: TileSpec,
    /// Tiles per encoder / decoder forward pass.
    pub batch_size: usize,
    /// AIS thresholds.
    pub ais: AisParams,
    /// AMG settings.
    pub amg: AmgParams,
    /// APG settings.
    pub apg: ApgParams,
    /// Percentile normalisation (as in training).
    pub normalization: sam_data::Normalization,
    /// Recompute images whose label file exists.
    pub overwrite: bool,
    /// Write `overlays/<stem>.png`.
    pub write_overlay: bool,
    /// Write `objects/<stem>.csv`.
    pub write_csv: bool,
    /// Cache embeddings in this folder, keyed by the image, `model_key` and the model's
    /// precision (an fp32 run never reads embeddings that a bf16 run computed).
    pub embedding_cache: Option<(PathBuf, String)>,
}

/// Seconds spent per stage of one image.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Image encoder (or cache load).
    pub embed_s: f64,
    /// UNETR decoder (AIS), mask decoder over the point grid (AMG), or UNETR decoder, prompt
    /// derivation and mask decoder (APG).
    pub decode_s: f64,
    /// Smoothing + watershed (AIS) or filtering + NMS + merging (AMG, APG).
    pub postprocess_s: f64,
}

/// A progress event.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Starting image `index` (0-based) of `total`.
    Image {
        /// 0-based position.
        index: usize,
        /// Number of images.
        total: usize,
        /// The file.
        path: PathBuf,
    },
    /// One tile went through a stage.
    Tile {
        /// `"embed"`, `"decode"` or `"masks"`.
        stage: &'static str,
    },
}

/// What happened to one image.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Segmented and written.
    Done {
        /// Objects found.
        objects: usize,
        /// The mode run.
        mode: AutoMode,
        /// Seconds per stage.
        timings: Timings,
        /// Tiles.
        tiles: usize,
    },
    /// The label file existed and overwrite was off.
    Skipped,
    /// Failed; the message names the file and the reason.
    Failed(String),
}

/// The result for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageReport {
    /// The input image.
    pub input: PathBuf,
    /// What happened.
    pub outcome: Outcome,
}

/// Where the outputs of `image` go under `out_dir`: `labels/<stem>.tif`,
/// `overlays/<stem>.png`, `objects/<stem>.csv`.
pub fn output_paths(out_dir: &Path, image: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    (
        out_dir.join("labels").join(format!("{stem}.tif")),
        out_dir.join("overlays").join(format!("{stem}.png")),
        out_dir.join("objects").join(format!("{stem}.csv")),
    )
}

/// Extensions of image formats sam-infer does not read: reported, never skipped silently.
const UNREAD_IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "bmp", "gif", "webp", "czi", "nd2", "lif", "jp2",
];

fn extension_of(p: &Path) -> String {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn is_read(p: &Path) -> bool {
    matches!(extension_of(p).as_str(), "tif" | "tiff" | "png")
}

/// The inputs found by [`scan_inputs`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The images to segment (`.tif`, `.tiff`, `.png`), sorted.
    pub images: Vec<PathBuf>,
    /// Image files matched by the pattern in a format that is not read (JPEG, BMP, ...),
    /// sorted: for a warning.
    pub unread: Vec<PathBuf>,
}

/// The images to process: `input` itself if it is a file, else the files in the folder `input`
/// matching `pattern` (e.g. `*.tif`) with a `.tif`, `.tiff` or `.png` extension, sorted; and
/// the image files of other formats the pattern matched.
///
/// Errors: a missing input; an input file of a format not read; a folder with no image read;
/// two images with one stem (`a.png` and `a.tif`), whose outputs (`labels/a.tif`, ...) would
/// collide — as sam-augment refuses them.
pub fn scan_inputs(input: &Path, pattern: &str) -> Result<Inputs, InferError> {
    if input.is_file() {
        if !is_read(input) {
            return Err(InferError::Image {
                path: input.to_path_buf(),
                message: format!(
                    "`.{}` images are not read: save it as TIFF or PNG{}",
                    extension_of(input),
                    if matches!(extension_of(input).as_str(), "jpg" | "jpeg") {
                        " (JPEG's lossy compression alters intensities)"
                    } else {
                        ""
                    }
                ),
            });
        }
        return Ok(Inputs {
            images: vec![input.to_path_buf()],
            unread: Vec::new(),
        });
    }
    if !input.is_dir() {
        return Err(InferError::io(
            input,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    let full = input.join(pattern);
    let paths = glob::glob(&full.to_string_lossy()).map_err(|e| {
        InferError::param(
            "pattern",
            "a glob such as `*.tif`",
            format!("`{pattern}`: {e}"),
        )
    })?;
    let mut found = Inputs::default();
    for p in paths.filter_map(Result::ok).filter(|p| p.is_file()) {
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if is_read(&p) {
            found.images.push(p);
        } else if UNREAD_IMAGE_EXTENSIONS.contains(&extension_of(&p).as_str()) {
            found.unread.push(p);
        }
    }
    found.images.sort();
    found.unread.sort();
    let mut by_stem: std::collections::BTreeMap<String, &PathBuf> = Default::default();
    for p in &found.images {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if let Some(first) = by_stem.insert(stem.clone(), p) {
            return Err(InferError::Image {
                path: input.to_path_buf(),
                message: format!(
                    "{} and {} share the stem {stem:?}: their outputs (labels/{stem}.tif, ...) \
                     would be the same files; keep one file per stem, or narrow --pattern",
                    first.display(),
                    p.display()
                ),
            });
        }
    }
    if found.images.is_empty() {
        let unread = if found.unread.is_empty() {
            String::new()
        } else {
            format!(
                " ({} file(s) in formats that are not read, e.g. {}: save them as TIFF or PNG)",
                found.unread.len(),
                found.unread[0].display()
            )
        };
        return Err(InferError::Image {
            path: input.to_path_buf(),
            message: format!("no .tif/.tiff/.png images match `{pattern}`{unread}"),
        });
    }
    Ok(found)
}

/// The images of [`scan_inputs`] alone (files in formats that are not read are left out).
pub fn list_inputs(input: &Path, pattern: &str) -> Result<Vec<PathBuf>, InferError> {
    scan_inputs(input, pattern).map(|i| i.images)
}

/// Read and normalise an image: the original (for the overlay) and the [0, 1] plane.
pub fn load_image(
    path: &Path,
    norm: &sam_data::Normalization,
) -> Result<(sam_data::GreyImage, Plane<f32>), InferError> {
    let img_err = |e: sam_data::DataError| InferError::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let grey = sam_data::read_image(path).map_err(img_err)?;
    let norm = sam_data::preprocess(&grey, norm).map_err(img_err)?;
    let plane = Plane::from_vec(grey.rows(), grey.cols(), norm)?;
    Ok((grey, plane))
}

/// The sha256 of a file, hex (the model part of the embedding-cache key).
pub fn file_sha256(path: &Path) -> Result<String, InferError> {
    let mut f = std::fs::File::open(path).map_err(|e| InferError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| InferError::io(path, e))?;
    Ok(format!("{:x}", h.finalize()))
}

fn cache_file(
    dir: &Path,
    model_key: &str,
    precision: sam_model::Precision,
    image: &Plane<f32>,
    tiling: &Tiling,
    tiles: &TileSpec,
) -> PathBuf {
    let mut h = Sha256::new();
    for v in image.as_slice() {
        h.update(v.to_le_bytes());
    }
    h.update(format!("{:?}{:?}{:?}", image.shape(), tiles.tile_shape, tiles.halo).as_bytes());
    // bf16 embeddings differ from fp32 ones in the third digit: never mixed up.
    h.update(precision.name().as_bytes());
    let key = format!("{:x}", h.finalize());
    let _ = tiling;
    dir.join(&model_key[..model_key.len().min(16)])
        .join(format!("{}.ot", &key[..32]))
}

fn load_cached(path: &Path, n: usize) -> Option<Vec<sam_model::ImageEmbedding>> {
    let named = Tensor::load_multi_with_device(path, Device::Cpu).ok()?;
    let sizes = named.iter().find(|(k, _)| k == "sizes")?.1.shallow_clone();
    let sizes: Vec<i64> = Vec::<i64>::try_from(&sizes.view([-1])).ok()?;
    if sizes.len() != 4 * n {
        return None;
    }
    (0..n)
        .map(|i| {
            let f = named
                .iter()
                .find(|(k, _)| *k == format!("features_{i}"))?
                .1
                .shallow_clone();
            Some(sam_model::ImageEmbedding {
                features: f,
                original_size: (sizes[4 * i], sizes[4 * i + 1]),
                input_size: (sizes[4 * i + 2], sizes[4 * i + 3]),
            })
        })
        .collect()
}

fn store_cached(path: &Path, embs: &[sam_model::ImageEmbedding]) -> Result<(), InferError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| InferError::io(dir, e))?;
    }
    let sizes: Vec<i64> = embs
        .iter()
        .flat_map(|e| {
            [
                e.original_size.0,
                e.original_size.1,
                e.input_size.0,
                e.input_size.1,
            ]
        })
        .collect();
    let mut named: Vec<(String, Tensor)> = embs
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("features_{i}"), e.features.to_device(Device::Cpu)))
        .collect();
    named.push(("sizes".into(), Tensor::from_slice(&sizes)));
    let tmp = path.with_extension("ot.tmp");
    Tensor::save_multi(&named, &tmp)
        .map_err(|e| InferError::Model(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| InferError::io(path, e))
}

/// The result of [`segment_auto`].
#[derive(Debug, Clone)]
pub struct AutoSegmentation {
    /// Instance labels, 0 = background, 1..=n.
    pub labels: Plane<u32>,
    /// Per-object score (index = id - 1): AIS mean foreground probability, AMG / APG predicted
    /// IoU.
    pub scores: Vec<f32>,
    /// The mode run.
    pub mode: AutoMode,
    /// Seconds per stage.
    pub timings: Timings,
    /// Number of tiles.
    pub tiles: usize,
}

/// Segment one normalised image automatically.
pub fn segment_auto(
    model: &InferenceModel,
    image: &Plane<f32>,
    opts: &AutoOptions,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<AutoSegmentation, InferError> {
    let mode = opts.mode.resolve(model)?;
    let tiling = opts.tiles.tiling_for(image.shape(), model.input_size())?;
    let tiles = tiling.tiles();
    let mut t = Timings::default();

    let start = Instant::now();
    let cache = opts
        .embedding_cache
        .as_ref()
        .map(|(dir, key)| cache_file(dir, key, model.precision(), image, &tiling, &opts.tiles));
    let cached = cache
        .as_deref()
        .filter(|p| p.is_file())
        .and_then(|p| load_cached(p, tiles.len()));
    let embeddings = match cached {
        Some(e) => e,
        None => {
            let e = model.embed_tiles(image, &tiles, opts.batch_size, &mut || {
                on_progress(Progress::Tile { stage: "embed" })
            })?;
            if let Some(p) = &cache {
                store_cached(p, &e)?;
            }
            e
        }
    };
    model.synchronize();
    t.embed_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let (labels, scores) = match mode {
        AutoMode::Ais => {
            let maps = model.decoder_maps(&tiling, &embeddings, opts.batch_size, &mut || {
                on_progress(Progress::Tile { stage: "decode" })
            })?;
            model.synchronize();
            t.decode_s = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let labels = ais_segment(&maps, &opts.ais)?;
            let scores = mean_per_object(&labels, &maps.foreground)?;
            t.postprocess_s = start.elapsed().as_secs_f64();
            (labels, scores)
        }
        AutoMode::Apg => {
            let maps = model.decoder_maps(&tiling, &embeddings, opts.batch_size, &mut || {
                on_progress(Progress::Tile { stage: "decode" })
            })?;
            let masks =
                model.apg_masks_from_maps(&tiling, &embeddings, &maps, &opts.apg, &mut || {
                    on_progress(Progress::Tile { stage: "masks" })
                })?;
            drop(maps);
            model.synchronize();
            t.decode_s = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let out = apg_segment(&masks, image.shape(), &opts.apg)?;
            t.postprocess_s = start.elapsed().as_secs_f64();
            (out.labels, out.scores)
        }
        AutoMode::Amg | AutoMode::Auto => {
            let crops = model.amg_masks(&tiling, embeddings, &opts.amg, &mut || {
                on_progress(Progress::Tile { stage: "masks" })
            })?;
            model.synchronize();
            t.decode_s = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let out = amg_segment(&crops, image.shape(), &opts.amg)?;
            t.postprocess_s = start.elapsed().as_secs_f64();
            (out.labels, out.scores)
        }
    };
    Ok(AutoSegmentation {
        labels,
        scores,
        mode,
        timings: t,
        tiles: tiles.len(),
    })
}

fn write_outputs(
    out_dir: &Path,
    input: &Path,
    grey: &sam_data::GreyImage,
    labels: &Plane<u32>,
    scores: &[f32],
    write_overlay: bool,
    write_csv: bool,
) -> Result<usize, InferError> {
    let (label_path, overlay_path, csv_path) = output_paths(out_dir, input);
    for p in [&label_path, &overlay_path, &csv_path] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| InferError::io(d, e))?;
        }
    }
    let n = labels.max_id() as usize;
    if write_csv {
        write_objects_csv(&csv_path, labels, scores)?;
    }
    if write_overlay {
        sam_data::write_overlay_png(&overlay_path, grey, &[(labels, [255, 48, 48])]).map_err(
            |e| InferError::Image {
                path: overlay_path.clone(),
                message: e.to_string(),
            },
        )?;
    }
    // Labels last: their presence marks the image as done.
    sam_data::write_labels(&label_path, labels).map_err(|e| InferError::Image {
        path: label_path.clone(),
        message: e.to_string(),
    })?;
    Ok(n)
}

/// The file in an output folder that records which model wrote the outputs.
pub const MODEL_RECORD: &str = "model.json";

/// Which checkpoint wrote an output folder (`<out>/model.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ModelRecord {
    /// The checkpoint file, absolute (or the description of a model built in code).
    checkpoint: String,
    /// Its size in bytes.
    bytes: u64,
    /// Its modification time, seconds since the Unix epoch.
    modified: u64,
    /// Its sha256 (hex); empty for a model built in code.
    sha256: String,
}

impl ModelRecord {
    fn of(model: &InferenceModel, hash: bool) -> Result<Self, InferError> {
        let Some(path) = model.path() else {
            return Ok(Self {
                checkpoint: model.description().to_string(),
                bytes: 0,
                modified: 0,
                sha256: String::new(),
            });
        };
        let meta = std::fs::metadata(path).map_err(|e| InferError::io(path, e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            checkpoint: std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_path_buf())
                .display()
                .to_string(),
            bytes: meta.len(),
            modified,
            sha256: if hash {
                file_sha256(path)?
            } else {
                String::new()
            },
        })
    }

    /// Same file, unchanged (no hashing needed).
    fn same_file(&self, other: &Self) -> bool {
        (&self.checkpoint, self.bytes, self.modified)
            == (&other.checkpoint, other.bytes, other.modified)
    }
}

/// Checks that the outputs already in `out_dir` were written by `model` (recorded in
/// [`MODEL_RECORD`]), and records it for a new or overwritten folder: a re-run with another
/// checkpoint would otherwise keep the old model's outputs beside the new ones.
fn check_model_record(
    out_dir: &Path,
    model: &InferenceModel,
    overwrite: bool,
) -> Result<(), InferError> {
    let record_path = out_dir.join(MODEL_RECORD);
    let current = ModelRecord::of(model, false)?;
    let has_outputs = std::fs::read_dir(out_dir.join("labels"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if !overwrite && has_outputs {
        let refuse = |found: &str| InferError::Output {
            path: out_dir.to_path_buf(),
            message: format!(
                "holds the outputs of {found}, not of {}: the folder would mix two models' \
                 results; pass --overwrite to redo every image with this model, or choose \
                 another output folder",
                current.checkpoint
            ),
        };
        let recorded: Option<ModelRecord> = std::fs::read_to_string(&record_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let Some(recorded) = recorded else {
            return Err(refuse(&format!(
                "an unrecorded model (no readable {MODEL_RECORD})"
            )));
        };
        if recorded.same_file(&current) {
            return Ok(());
        }
        // Moved, copied or touched: the same model if the bytes are the same.
        let hashed = ModelRecord::of(model, true)?;
        if recorded.sha256.is_empty() || recorded.sha256 != hashed.sha256 {
            return Err(refuse(&format!(
                "{} (sha256 {})",
                recorded.checkpoint,
                if recorded.sha256.is_empty() {
                    "unknown"
                } else {
                    &recorded.sha256
                }
            )));
        }
        return Ok(());
    }
    std::fs::create_dir_all(out_dir).map_err(|e| InferError::io(out_dir, e))?;
    let record = ModelRecord::of(model, true)?;
    let text = serde_json::to_string_pretty(&record).map_err(|e| InferError::Image {
        path: record_path.clone(),
        message: e.to_string(),
    })?;
    let tmp = out_dir.join(format!(".{MODEL_RECORD}.partial"));
    std::fs::write(&tmp, text + "\n").map_err(|e| InferError::io(&tmp, e))?;
    std::fs::rename(&tmp, &record_path).map_err(|e| InferError::io(&record_path, e))
}

fn check_output_dir(out_dir: &Path, inputs: &[PathBuf]) -> Result<(), InferError> {
    if out_dir.exists() && !out_dir.is_dir() {
        return Err(InferError::Output {
            path: out_dir.to_path_buf(),
            message: "is a file, but the output is a folder (created when missing): choose a \
                      folder name"
                .into(),
        });
    }
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    let Some(out) = canon(out_dir) else {
        return Ok(());
    };
    for i in inputs {
        let dir = i.parent().and_then(canon);
        let parent = dir.as_ref().and_then(|d| d.parent().map(Path::to_path_buf));
        if dir.as_ref() == Some(&out) || parent.as_ref() == Some(&out) {
            return Err(InferError::Output {
                path: out_dir.to_path_buf(),
                message: format!(
                    "is the folder of the input {} or its parent: outputs never go beside raw \
                     data; choose another output folder",
                    i.display()
                ),
            });
        }
    }
    Ok(())
}

/// Segment every image of `inputs` into `out_dir` (see [`output_paths`]). One image failing does
/// not stop the others; its report says why.
pub fn run_auto(
    model: &InferenceModel,
    inputs: &[PathBuf],
    out_dir: &Path,
    opts: &AutoOptions,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Vec<ImageReport>, InferError> {
    opts.ais.validate()?;
    opts.amg.validate()?;
    opts.apg.validate()?;
    opts.mode.resolve(model)?;
    check_output_dir(out_dir, inputs)?;
    check_model_record(out_dir, model, opts.overwrite)?;
    let mut reports = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        on_progress(Progress::Image {
            index,
            total: inputs.len(),
            path: input.clone(),
        });
        let (label_path, _, _) = output_paths(out_dir, input);
        if label_path.is_file() && !opts.overwrite {
            reports.push(ImageReport {
                input: input.clone(),
                outcome: Outcome::Skipped,
            });
            continue;
        }
        let result = load_image(input, &opts.normalization).and_then(|(grey, plane)| {
            let s = segment_auto(model, &plane, opts, on_progress)?;
            let objects = write_outputs(
                out_dir,
                input,
                &grey,
                &s.labels,
                &s.scores,
                opts.write_overlay,
                opts.write_csv,
            )?;
            Ok(Outcome::Done {
                objects,
                mode: s.mode,
                timings: s.timings,
                tiles: s.tiles,
            })
        });
        let outcome = result.unwrap_or_else(|e| Outcome::Failed(e.to_string()));
        reports.push(ImageReport {
            input: input.clone(),
            outcome,
        });
    }
    Ok(reports)
}

/// Segment the prompt sets of `prompts` on each image of `inputs` into `out_dir`. Image names
/// in the file must match the inputs; coordinates must lie inside each image.
pub fn run_prompts(
    model: &InferenceModel,
    inputs: &[PathBuf],
    prompts: &PromptFile,
    out_dir: &Path,
    normalization: &sam_data::Normalization,
    overwrite: bool,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Vec<ImageReport>, InferError> {
    prompts.check_images(inputs)?;
    check_output_dir(out_dir, inputs)?;
    check_model_record(out_dir, model, overwrite)?;
    let mut reports = Vec::new();
    for (index, input) in inputs.iter().enumerate() {
        on_progress(Progress::Image {
            index,
            total: inputs.len(),
            path: input.clone(),
        });
        let (label_path, _, _) = output_paths(out_dir, input);
        if label_path.is_file() && !overwrite {
            reports.push(ImageReport {
                input: input.clone(),
                outcome: Outcome::Skipped,
            });
            continue;
        }
        let (grey, plane) = load_image(input, normalization)?;
        // Bad coordinates are an error for the whole run: the file needs fixing.
        let sets = prompts.for_image(input, plane.shape())?;
        if sets.is_empty() {
            continue;
        }
        let start = Instant::now();
        let (labels, scores) = model.segment_prompts(&plane, &sets)?;
        model.synchronize();
        let timings = Timings {
            decode_s: start.elapsed().as_secs_f64(),
            ..Timings::default()
        };
        let objects = write_outputs(out_dir, input, &grey, &labels, &scores, true, true)?;
        reports.push(ImageReport {
            input: input.clone(),
            outcome: Outcome::Done {
                objects,
                mode: AutoMode::Auto,
                timings,
                tiles: 1,
            },
        });
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_16_downscale_names_the_shrink_and_a_tiling_that_fits() {
        let whole = TileSpec {
            tile_shape: None,
            halo: (0, 0),
        };
        // A 2048² image into a 256 px model: 8×, tiles of 192 + 2 × 32 fit.
        let d = whole.downscale((2048, 2048), 256).unwrap();
        assert_eq!((d.factor, d.block, d.tile, d.halo), (8.0, 2048, 192, 32));
        assert!(
            d.to_string()
                .starts_with("shrunk 8.0× (2048 px blocks into the model's 256 px input)"),
            "{d}"
        );
        // SAM's 1024 px input and the default tiling (768 + 2 × 128): no shrink.
        let default = TileSpec {
            tile_shape: Some((768, 768)),
            halo: (128, 128),
        };
        assert_eq!(default.downscale((2048, 2048), 1024), None);
        // The default tiling on a 256 px model: blocks of 1024, the halo kept small.
        let d = default.downscale((2048, 2048), 256).unwrap();
        assert_eq!((d.block, d.tile, d.halo), (1024, 192, 32));
        // A slight shrink (1.3×) is not worth a warning.
        assert_eq!(whole.downscale((1300, 1300), 1024), None);
    }

    #[test]
    fn a_native_input_model_gets_tiles_that_fit_its_input() {
        let spec = |tile: Option<usize>, halo: usize| TileSpec {
            tile_shape: tile.map(|t| (t, t)),
            halo: (halo, halo),
        };
        // No tiling, or the default 768 + 2 × 128 on a model trained on 512² patches: tiles of
        // 384 + 2 × 64 = 512.
        assert_eq!(spec(None, 0).fitting_native_input(512), spec(Some(384), 64));
        assert_eq!(
            spec(Some(768), 128).fitting_native_input(512),
            spec(Some(256), 128)
        );
        // A tiling that fits is kept as given.
        assert_eq!(
            spec(Some(400), 50).fitting_native_input(512),
            spec(Some(400), 50)
        );
        // Whatever the result, nothing is shrunk on the way in.
        for s in [spec(None, 0), spec(Some(768), 128), spec(Some(1000), 300)] {
            let fitted = s.fitting_native_input(512);
            assert_eq!(
                fitted.downscale((2048, 2048), 512),
                None,
                "{s:?} → {fitted:?}"
            );
        }
    }

    #[test]
    fn the_embedding_cache_key_holds_the_precision() {
        use sam_model::Precision;
        let image = Plane::from_vec(2, 3, vec![0.0f32, 0.1, 0.2, 0.3, 0.4, 0.5]).unwrap();
        let tiles = TileSpec {
            tile_shape: None,
            halo: (0, 0),
        };
        let tiling = tiles.tiling_for(image.shape(), 256).unwrap();
        let file = |p| {
            cache_file(
                Path::new("c"),
                "0123456789abcdef0123",
                p,
                &image,
                &tiling,
                &tiles,
            )
        };
        assert_eq!(file(Precision::Fp32), file(Precision::Fp32));
        assert_ne!(file(Precision::Fp32), file(Precision::Bf16));
        // The same model folder: one model's embeddings stay together.
        assert_eq!(
            file(Precision::Fp32).parent(),
            file(Precision::Bf16).parent()
        );
    }
}
