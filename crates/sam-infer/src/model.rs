//! The model side of inference: checkpoint resolution and loading, tiled embeddings, the UNETR
//! decoder maps, point-grid masks for AMG and prompted masks.

use std::path::{Path, PathBuf};

use sam_data::Plane;
use sam_model::{ImageEmbedding, Precision, Prompts, Sam, SamModel, SamPredictor, UnetrDecoder};
use tch::{nn, Device, Kind, Tensor};

use crate::ais::DecoderMaps;
use crate::amg::{build_point_grid, AmgParams, CropMasks, MaskRecord};
use crate::apg::{apg_box_prompts, apg_point_prompts, ApgParams};
use crate::error::InferError;
use crate::prompts::PromptSet;
use crate::tiling::{crop_outer, paste_inner, Tile, Tiling};

/// `Sam.mask_threshold` of segment_anything.
const MASK_THRESHOLD: f32 = 0.0;

/// The stability-score offset of micro_sam's `batched_inference` (`_process_masks_for_batch`).
const STABILITY_OFFSET: f32 = 1.0;

/// The prompts of one APG round ([`InferenceModel::apg_masks`]), in image coordinates.
#[derive(Debug, Clone, Copy)]
pub enum ApgPrompts<'a> {
    /// Positive points `(x, y)`.
    Points(&'a [[f32; 2]]),
    /// Boxes `[x0, y0, x1, y1]`.
    Boxes(&'a [[f32; 4]]),
}

impl ApgPrompts<'_> {
    /// Number of prompts.
    pub fn len(&self) -> usize {
        match self {
            ApgPrompts::Points(p) => p.len(),
            ApgPrompts::Boxes(b) => b.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn model_err(e: impl std::fmt::Display) -> InferError {
    InferError::Model(e.to_string())
}

/// A loaded SAM with its optional UNETR instance-segmentation decoder (a [`SamModel`]), and
/// the inference built on it: tiled embeddings, decoder maps, AMG masks, prompted masks.
///
/// Every forward pass runs in the model's [`Precision`] (fp32 unless
/// [`InferenceModel::with_precision`] says otherwise); what the post-processing receives is fp32.
pub struct InferenceModel {
    model: SamModel,
    description: String,
    /// The checkpoint file, for a model loaded from one.
    path: Option<PathBuf>,
    precision: Precision,
}

impl std::fmt::Debug for InferenceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceModel")
            .field("description", &self.description)
            .field("precision", &self.precision)
            .finish()
    }
}

impl InferenceModel {
    /// Waits until the device has finished the work queued so far (a no-op on the CPU), so that
    /// a stage timing taken after it covers the stage's GPU time and not just its launches.
    pub fn synchronize(&self) {
        if let Device::Cuda(index) = self.model.device() {
            tch::Cuda::synchronize(index as i64);
        }
    }

    /// Load a checkpoint (plain SAM state_dict, micro_sam `{model_state, decoder_state}`, or our
    /// safetensors) onto `device`. Both architectures are inferred from the weights; loading is
    /// strict ([`SamModel::load`]).
    pub fn load(path: &Path, device: Device) -> Result<Self, InferError> {
        let model = SamModel::load(path, device).map_err(model_err)?;
        let description = format!("{} ({})", path.display(), model.describe());
        Ok(Self {
            model,
            description,
            path: Some(path.to_path_buf()),
            precision: Precision::Fp32,
        })
    }

    /// Wrap a model built in code (tests, benchmarks).
    pub fn from_parts(
        vs: nn::VarStore,
        sam: Sam,
        decoder: Option<(nn::VarStore, UnetrDecoder)>,
    ) -> Self {
        Self::from_model(SamModel::from_parts(vs, sam, decoder))
    }

    /// Wrap a model built or loaded elsewhere.
    pub fn from_model(model: SamModel) -> Self {
        Self {
            model,
            description: "in-memory model".into(),
            path: None,
            precision: Precision::Fp32,
        }
    }

    /// The same model running its forward passes in `precision` (the weights stay fp32).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The precision of the forward passes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// A predictor on the SAM model in the model's precision.
    pub fn predictor(&self) -> SamPredictor<'_> {
        SamPredictor::new(self.sam()).with_precision(self.precision)
    }

    /// The model: SAM, the optional decoder and their variables.
    pub fn model(&self) -> &SamModel {
        &self.model
    }

    /// The checkpoint file the model was loaded from (`None` for a model built in code).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What was loaded, for logs.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether the checkpoint had an instance-segmentation decoder (AIS possible).
    pub fn has_decoder(&self) -> bool {
        self.model.has_decoder()
    }

    /// The SAM model, for prompted work beyond [`InferenceModel::segment_prompts`] (e.g. the
    /// iterative-prompting evaluation, which needs per-object logits); see also
    /// [`InferenceModel::predictor`], which keeps the model's precision.
    pub fn sam(&self) -> &Sam {
        self.model.sam()
    }

    /// Side of the model input (1024 for SAM).
    pub fn input_size(&self) -> usize {
        self.sam().img_size() as usize
    }

    /// Embed the outer blocks of `tiles` in batches of `batch_size`; `on_tile` is called once per
    /// embedded tile (progress).
    pub fn embed_tiles(
        &self,
        image: &Plane<f32>,
        tiles: &[Tile],
        batch_size: usize,
        on_tile: &mut dyn FnMut(),
    ) -> Result<Vec<ImageEmbedding>, InferError> {
        let predictor = self.predictor();
        let mut out = Vec::with_capacity(tiles.len());
        for chunk in tiles.chunks(batch_size.max(1)) {
            let crops: Vec<Plane<f32>> = chunk.iter().map(|t| crop_outer(image, t)).collect();
            let greys: Vec<sam_model::ImageView<'_>> = crops
                .iter()
                .map(|c| sam_model::ImageView {
                    pixels: c.as_slice(),
                    rows: c.rows(),
                    cols: c.cols(),
                })
                .collect();
            out.extend(predictor.embed_images(&greys).map_err(model_err)?);
            for _ in chunk {
                on_tile();
            }
        }
        Ok(out)
    }

    /// The UNETR decoder maps of the whole image from per-tile embeddings: each tile decoded
    /// (in batches), resized to its outer block, and its inner block pasted into the image.
    pub fn decoder_maps(
        &self,
        tiling: &Tiling,
        embeddings: &[ImageEmbedding],
        batch_size: usize,
        on_tile: &mut dyn FnMut(),
    ) -> Result<DecoderMaps, InferError> {
        let decoder = self.model.decoder().ok_or_else(|| {
            InferError::Model(
                "the checkpoint has no instance-segmentation decoder_state; use AMG".into(),
            )
        })?;
        let tiles = tiles_of(tiling, embeddings)?;
        let (h, w) = tiling.shape();
        let mut maps = DecoderMaps {
            foreground: Plane::zeros(h, w),
            center_distances: Plane::zeros(h, w),
            boundary_distances: Plane::zeros(h, w),
        };
        let bs = batch_size.max(1);
        for (chunk_tiles, chunk_emb) in tiles.chunks(bs).zip(embeddings.chunks(bs)) {
            let feats: Vec<&Tensor> = chunk_emb.iter().map(|e| &e.features).collect();
            let batch = Tensor::cat(&feats, 0);
            let out = self
                .precision
                .run(batch.device(), || {
                    tch::no_grad(|| decoder.forward_t(&batch, false))
                })
                .map_err(model_err)?
                .map_err(model_err)?
                .to_kind(Kind::Float);
            for (i, (tile, emb)) in chunk_tiles.iter().zip(chunk_emb).enumerate() {
                let y = tch::no_grad(|| {
                    decoder.postprocess_masks(
                        &out.narrow(0, i as i64, 1),
                        emb.input_size,
                        emb.original_size,
                    )
                });
                let (th, tw) = (tile.outer.height(), tile.outer.width());
                let v = tensor_to_f32(&y)?;
                if v.len() != 3 * th * tw {
                    return Err(InferError::Shape {
                        what: format!("decoder output of tile {}", tile.index),
                        expected: format!("3×{th}×{tw}"),
                        found: format!("{:?}", y.size()),
                    });
                }
                let n = th * tw;
                for (c, dst) in [
                    &mut maps.foreground,
                    &mut maps.center_distances,
                    &mut maps.boundary_distances,
                ]
                .into_iter()
                .enumerate()
                {
                    let p = Plane::from_vec(th, tw, v[c * n..(c + 1) * n].to_vec())?;
                    paste_inner(dst, &p, tile)?;
                }
                on_tile();
            }
        }
        Ok(maps)
    }

    /// AMG masks of every tile: the point grid of each tile's outer block through the mask
    /// decoder (multimask, `points_per_batch` at once), thresholded, with stability scores.
    pub fn amg_masks(
        &self,
        tiling: &Tiling,
        embeddings: Vec<ImageEmbedding>,
        params: &AmgParams,
        on_tile: &mut dyn FnMut(),
    ) -> Result<Vec<CropMasks>, InferError> {
        let grid = build_point_grid(params.points_per_side);
        let mut predictor = self.predictor();
        let mut crops = Vec::new();
        for (tile, emb) in tiling.tiles().into_iter().zip(embeddings) {
            predictor.set_embedding(emb);
            let (th, tw) = (tile.outer.height(), tile.outer.width());
            let mut masks = Vec::new();
            for chunk in grid.chunks(params.points_per_batch.max(1)) {
                let coords: Vec<f32> = chunk
                    .iter()
                    .flat_map(|p| [p[0] * tw as f32, p[1] * th as f32])
                    .collect();
                let n = chunk.len() as i64;
                let prompts = Prompts {
                    point_coords: Some(Tensor::from_slice(&coords).view([n, 1, 2])),
                    point_labels: Some(Tensor::ones([n, 1], (Kind::Int64, Device::Cpu))),
                    ..Default::default()
                };
                let pred = predictor.predict(&prompts, true).map_err(model_err)?;
                masks.extend(mask_records(
                    &pred.masks,
                    &pred.iou_predictions,
                    &tile,
                    MASK_THRESHOLD,
                    params.stability_score_offset,
                )?);
            }
            let o = tile.outer;
            crops.push(CropMasks {
                crop_box: [o.x0, o.y0, o.x1, o.y1],
                masks,
            });
            on_tile();
        }
        Ok(crops)
    }

    /// The APG masks of an image from its decoder maps: [`apg_point_prompts`] through
    /// [`InferenceModel::apg_masks`], and with `params.refine_with_box_prompts` a second round
    /// on the boxes of those masks ([`apg_box_prompts`]). `on_tile` is called per tile and round.
    pub fn apg_masks_from_maps(
        &self,
        tiling: &Tiling,
        embeddings: &[ImageEmbedding],
        maps: &DecoderMaps,
        params: &ApgParams,
        on_tile: &mut dyn FnMut(),
    ) -> Result<Vec<MaskRecord>, InferError> {
        let points = apg_point_prompts(maps, params)?;
        let masks = self.apg_masks(
            tiling,
            embeddings,
            ApgPrompts::Points(&points),
            params,
            on_tile,
        )?;
        if !params.refine_with_box_prompts || masks.is_empty() {
            return Ok(masks);
        }
        let boxes = apg_box_prompts(&masks, tiling.shape());
        self.apg_masks(
            tiling,
            embeddings,
            ApgPrompts::Boxes(&boxes),
            params,
            on_tile,
        )
    }

    /// APG masks: each prompt (image coordinates) through the mask decoder on the embedding of
    /// the tile whose inner block holds it (a box by its centre, rounded half to even as
    /// numpy), `params.batch_size` prompts at a time, tiles in index order; with
    /// `params.multimasking` the mask with the best predicted IoU of the three. Logits are
    /// thresholded at `params.mask_threshold`, the stability score taken at ± 1 (micro_sam's
    /// `batched_inference` / `batched_tiled_inference`). Empty masks are left out.
    pub fn apg_masks(
        &self,
        tiling: &Tiling,
        embeddings: &[ImageEmbedding],
        prompts: ApgPrompts<'_>,
        params: &ApgParams,
        on_tile: &mut dyn FnMut(),
    ) -> Result<Vec<MaskRecord>, InferError> {
        let tiles = tiles_of(tiling, embeddings)?;
        let (h, w) = tiling.shape();
        let centre = |k: usize| -> (f64, f64) {
            match prompts {
                ApgPrompts::Points(p) => (f64::from(p[k][1]), f64::from(p[k][0])),
                ApgPrompts::Boxes(b) => (
                    (f64::from(b[k][1]) + f64::from(b[k][3])) / 2.0,
                    (f64::from(b[k][0]) + f64::from(b[k][2])) / 2.0,
                ),
            }
        };
        let mut per_tile: Vec<Vec<usize>> = vec![Vec::new(); tiles.len()];
        for k in 0..prompts.len() {
            let (y, x) = centre(k);
            let clamp = |v: f64, n: usize| (v.round_ties_even().max(0.0) as usize).min(n - 1);
            per_tile[tiling.tile_at(clamp(y, h), clamp(x, w))].push(k);
        }
        let mut predictor = self.predictor();
        let mut out = Vec::new();
        for (tile, ids) in tiles.iter().zip(&per_tile) {
            if ids.is_empty() {
                continue;
            }
            let emb = &embeddings[tile.index];
            predictor.set_embedding(ImageEmbedding {
                features: emb.features.shallow_clone(),
                original_size: emb.original_size,
                input_size: emb.input_size,
            });
            let (oy, ox) = (tile.outer.y0 as f32, tile.outer.x0 as f32);
            for chunk in ids.chunks(params.batch_size.max(1)) {
                let n = chunk.len() as i64;
                let p = match prompts {
                    ApgPrompts::Points(p) => {
                        let coords: Vec<f32> = chunk
                            .iter()
                            .flat_map(|&k| [p[k][0] - ox, p[k][1] - oy])
                            .collect();
                        Prompts {
                            point_coords: Some(Tensor::from_slice(&coords).view([n, 1, 2])),
                            point_labels: Some(Tensor::ones([n, 1], (Kind::Int64, Device::Cpu))),
                            ..Default::default()
                        }
                    }
                    ApgPrompts::Boxes(b) => {
                        let (th, tw) = (tile.outer.height() as f32, tile.outer.width() as f32);
                        let boxes: Vec<f32> = chunk
                            .iter()
                            .flat_map(|&k| {
                                let [x0, y0, x1, y1] = b[k];
                                [
                                    (x0 - ox).max(0.0),
                                    (y0 - oy).max(0.0),
                                    (x1 - ox).min(tw),
                                    (y1 - oy).min(th),
                                ]
                            })
                            .collect();
                        Prompts {
                            boxes: Some(Tensor::from_slice(&boxes).view([n, 4])),
                            ..Default::default()
                        }
                    }
                };
                let pred = predictor
                    .predict(&p, params.multimasking)
                    .map_err(model_err)?;
                let (masks, iou) = if params.multimasking {
                    // micro_sam's reduce_multimasking: the mask with the best predicted IoU.
                    let best = pred.iou_predictions.argmax(1, true); // [n, 1]
                    let s = pred.masks.size();
                    let idx = best.view([n, 1, 1, 1]).expand([n, 1, s[2], s[3]], false);
                    (
                        pred.masks.gather(1, &idx, false),
                        pred.iou_predictions.gather(1, &best, false),
                    )
                } else {
                    (pred.masks, pred.iou_predictions)
                };
                out.extend(mask_records(
                    &masks,
                    &iou,
                    tile,
                    params.mask_threshold,
                    STABILITY_OFFSET,
                )?);
            }
            on_tile();
        }
        Ok(out)
    }

    /// One mask per prompt set on the whole image: a single point without a box uses multimask
    /// output and keeps the best predicted IoU. Overlaps go to the set with the higher predicted
    /// IoU. Returns labels (id = 1-based position of the set; a set whose mask is empty or fully
    /// overlapped is absent) and the predicted IoU per set.
    pub fn segment_prompts(
        &self,
        image: &Plane<f32>,
        sets: &[PromptSet],
    ) -> Result<(Plane<u32>, Vec<f32>), InferError> {
        let (h, w) = image.shape();
        let mut predictor = self.predictor();
        predictor
            .set_image(sam_model::ImageView {
                pixels: image.as_slice(),
                rows: h,
                cols: w,
            })
            .map_err(model_err)?;
        let mut masks: Vec<(Vec<u8>, f32)> = Vec::with_capacity(sets.len());
        for s in sets {
            let p = s.points.len() as i64;
            let coords: Vec<f32> = s.points.iter().flat_map(|q| [q[0], q[1]]).collect();
            let prompts = Prompts {
                point_coords: (p > 0).then(|| Tensor::from_slice(&coords).view([1, p, 2])),
                point_labels: (p > 0).then(|| Tensor::from_slice(&s.labels).view([1, p])),
                boxes: s.bbox.map(|b| Tensor::from_slice(&b).view([1, 4])),
                mask_input: None,
            };
            let multimask = p == 1 && s.bbox.is_none();
            let pred = predictor.predict(&prompts, multimask).map_err(model_err)?;
            let iou = tensor_to_f32(&pred.iou_predictions)?;
            let best = iou
                .iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > iou[b] { i } else { b });
            let m = pred
                .masks
                .get(0)
                .get(best as i64)
                .gt(f64::from(MASK_THRESHOLD));
            masks.push((tensor_to_u8(&m)?, iou[best]));
        }
        // Paint by ascending predicted IoU so that the most confident mask wins overlaps.
        let mut order: Vec<usize> = (0..masks.len()).collect();
        order.sort_by(|&a, &b| masks[a].1.total_cmp(&masks[b].1).then(a.cmp(&b)));
        let mut labels = Plane::<u32>::zeros(h, w);
        for i in order {
            for (dst, &m) in labels.as_mut_slice().iter_mut().zip(&masks[i].0) {
                if m != 0 {
                    *dst = i as u32 + 1;
                }
            }
        }
        Ok((labels, masks.iter().map(|m| m.1).collect()))
    }
}

/// The tiles of `tiling`; fails unless `embeddings` holds one embedding per tile.
fn tiles_of(tiling: &Tiling, embeddings: &[ImageEmbedding]) -> Result<Vec<Tile>, InferError> {
    let tiles = tiling.tiles();
    if tiles.len() != embeddings.len() {
        return Err(InferError::Shape {
            what: "tile embeddings".into(),
            expected: format!("{} tiles", tiles.len()),
            found: format!("{} embeddings", embeddings.len()),
        });
    }
    Ok(tiles)
}

/// The non-empty masks of `[n, k, h, w]` logits over `tile`'s outer block, thresholded at
/// `threshold`, with their predicted IoU (`[n, k]`) and segment_anything's stability score
/// (IoU of the masks at `threshold ± offset`), placed in image coordinates.
fn mask_records(
    logits: &Tensor,
    iou: &Tensor,
    tile: &Tile,
    threshold: f32,
    offset: f32,
) -> Result<Vec<MaskRecord>, InferError> {
    let (th, tw) = (tile.outer.height(), tile.outer.width());
    let s = logits.size();
    if s.len() != 4 || s[2] as usize != th || s[3] as usize != tw {
        return Err(InferError::Shape {
            what: format!("mask logits of tile {}", tile.index),
            expected: format!("[n, k, {th}, {tw}]"),
            found: format!("{s:?}"),
        });
    }
    let (t, off) = (f64::from(threshold), f64::from(offset));
    let dims = [2i64, 3];
    let inter = logits
        .gt(t + off)
        .sum_dim_intlist(dims.as_slice(), false, Kind::Int64);
    let union = logits
        .gt(t - off)
        .sum_dim_intlist(dims.as_slice(), false, Kind::Int64);
    let inter = tensor_to_i64(&inter)?;
    let union = tensor_to_i64(&union)?;
    let iou = tensor_to_f32(iou)?;
    let binary = tensor_to_u8(&logits.gt(t))?;
    let px = th * tw;
    let mut out = Vec::new();
    for j in 0..inter.len() {
        let stability = inter[j] as f32 / union[j] as f32;
        let m = Plane::from_vec(
            th,
            tw,
            binary[j * px..(j + 1) * px]
                .iter()
                .map(|&b| b != 0)
                .collect(),
        )?;
        if let Some(r) = MaskRecord::from_mask(&m, tile.outer.y0, tile.outer.x0, iou[j], stability)
        {
            out.push(r);
        }
    }
    Ok(out)
}

fn tensor_to_f32(t: &Tensor) -> Result<Vec<f32>, InferError> {
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&flat).map_err(model_err)
}

fn tensor_to_i64(t: &Tensor) -> Result<Vec<i64>, InferError> {
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Int64)
        .contiguous()
        .view([-1]);
    Vec::<i64>::try_from(&flat).map_err(model_err)
}

fn tensor_to_u8(t: &Tensor) -> Result<Vec<u8>, InferError> {
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Uint8)
        .contiguous()
        .view([-1]);
    Vec::<u8>::try_from(&flat).map_err(model_err)
}
