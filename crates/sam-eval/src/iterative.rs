//! Iterative-prompting evaluation, as micro_sam's `run_inference_with_iterative_prompting`:
//! every ground-truth object is prompted with its tight box or one random positive point; each
//! following round adds one positive point in the region the object's mask missed and one
//! negative point in the region it wrongly included (sam-data's
//! [`PromptSampler::iterative_points`], the step sam-train uses). The masks of a round are merged
//! into one label image (each pixel to the object with the highest positive logit, as sam-train's
//! validation) and scored against the ground truth: one row of metrics per round.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sam_data::{derive_seed, object_stats, LabelImage, Plane, PromptSampler};
use sam_infer::InferenceModel;
use sam_model::{ImageView, Prompts};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::EvalError;
use crate::metrics::{score_image, ImageScores};

/// The first prompt of every object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptStart {
    /// One random positive point inside the object (multimask output, best predicted IoU).
    Point,
    /// The object's tight bounding box.
    Box,
}

impl PromptStart {
    /// `"point"` or `"box"` (used in file names).
    pub fn name(self) -> &'static str {
        match self {
            PromptStart::Point => "point",
            PromptStart::Box => "box",
        }
    }

    fn code(self) -> u64 {
        match self {
            PromptStart::Point => 1,
            PromptStart::Box => 2,
        }
    }
}

/// Settings of the iterative-prompting evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct IterativeOptions {
    /// The starts to run, each reported separately.
    pub starts: Vec<PromptStart>,
    /// Rounds, one row each; round 0 is the start prompt alone (micro_sam: 8).
    pub n_iterations: usize,
    /// Give the previous round's low-resolution logits as mask input.
    pub use_masks: bool,
    /// Seed of the random points (per image, start, object and round).
    pub seed: u64,
    /// Objects per mask-decoder call (memory: each needs a full-size logit plane).
    pub objects_per_batch: usize,
}

impl IterativeOptions {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), EvalError> {
        if self.starts.is_empty() {
            return Err(EvalError::Setting {
                name: "evaluation.iterative_prompting.start_with".into(),
                message: "no start prompt: use point, box or both".into(),
            });
        }
        if self.n_iterations == 0 {
            return Err(EvalError::Setting {
                name: "evaluation.iterative_prompting.n_iterations".into(),
                message: "must be at least 1 (micro_sam: 8)".into(),
            });
        }
        Ok(())
    }
}

fn model_err(e: impl std::fmt::Display) -> EvalError {
    EvalError::Infer(sam_infer::InferError::Model(e.to_string()))
}

/// One ground-truth object and its prompts so far.
struct Object {
    id: u32,
    /// `[x0, y0, x1, y1]`, max exclusive.
    bbox: [usize; 4],
    points: Vec<[f32; 2]>,
    labels: Vec<i64>,
    /// `[1, 256, 256]` low-resolution logits of the last round (with `use_masks`).
    logits: Option<Tensor>,
}

/// Tight boxes of every object, sorted by id.
fn objects_of(gt: &LabelImage) -> Vec<Object> {
    object_stats(gt)
        .into_iter()
        .map(|s| Object {
            id: s.id,
            bbox: s.bbox,
            points: Vec::new(),
            labels: Vec::new(),
            logits: None,
        })
        .collect()
}

/// The crop of `plane` to the box `[x0, y0, x1, y1]` (SAM's box order: x is the column).
fn crop_box<T: Copy>(plane: &Plane<T>, r: [usize; 4]) -> Plane<T> {
    plane.crop(r[1], r[0], r[3] - r[1], r[2] - r[0])
}

fn rng(seed: u64, image: u64, start: PromptStart, id: u32, round: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(
        seed,
        &[image, start.code(), u64::from(id), round as u64],
    ))
}

/// Where the corrective points of an object are searched: its box grown by 3 pixels (the
/// negative fallback ring) together with the box of its predicted mask, which holds every
/// candidate of the first two rules of [`PromptSampler::iterative_points`]. `[x0, y0, x1, y1]`.
fn search_region(bbox: [usize; 4], pred_box: Option<[usize; 4]>, w: usize, h: usize) -> [usize; 4] {
    let r = [
        bbox[0].saturating_sub(3),
        bbox[1].saturating_sub(3),
        (bbox[2] + 3).min(w),
        (bbox[3] + 3).min(h),
    ];
    match pred_box {
        Some(p) => [
            r[0].min(p[0]),
            r[1].min(p[1]),
            r[2].max(p[2]),
            r[3].max(p[3]),
        ],
        None => r,
    }
}

/// The box `[x0, y0, x1, y1]` of a mask from its per-row and per-column "any" flags.
fn box_from_flags(rows: &[u8], cols: &[u8]) -> Option<[usize; 4]> {
    let y0 = rows.iter().position(|&v| v != 0)?;
    let y1 = rows.iter().rposition(|&v| v != 0)? + 1;
    let x0 = cols.iter().position(|&v| v != 0)?;
    let x1 = cols.iter().rposition(|&v| v != 0)? + 1;
    Some([x0, y0, x1, y1])
}

/// The corrective points of one object: positive in the missed region, negative in the
/// wrongly included one (see [`PromptSampler::iterative_points`]), searched in `region` (see
/// [`search_region`]; `pred` is the predicted mask there). Only when no negative is found there
/// does the whole image count (micro_sam's last fallback: any background pixel). Returns
/// `(positive, label, negative, label)`; a missing point is SAM's padding point (label -1).
fn corrections(
    gt: &LabelImage,
    id: u32,
    region: [usize; 4],
    pred: &[bool],
    rng: &mut ChaCha8Rng,
) -> ([f32; 2], i64, [f32; 2], i64) {
    let w = gt.cols();
    let r = region;
    let truth: Vec<bool> = crop_box(gt, r)
        .as_slice()
        .iter()
        .map(|&v| v == id)
        .collect();
    let sampler = PromptSampler::default();
    let (pos, neg) = sampler.iterative_points(&truth, pred, r[2] - r[0], rng);
    let offset = |p: (usize, usize)| [(p.0 + r[0]) as f32, (p.1 + r[1]) as f32];
    let neg = match neg {
        Some(q) => Some(offset(q)),
        None => {
            // Nothing wrongly included and no background around the object: the prediction
            // plays no part any more, only the background of the whole image.
            let truth: Vec<bool> = gt.as_slice().iter().map(|&v| v == id).collect();
            let none = vec![false; truth.len()];
            let (_, q) = sampler.iterative_points(&truth, &none, w, rng);
            q.map(|q| [q.0 as f32, q.1 as f32])
        }
    };
    let (p, pl) = pos.map_or(([0.0, 0.0], -1), |p| (offset(p), 1));
    let (n, nl) = neg.map_or(([0.0, 0.0], -1), |q| (q, 0));
    (p, pl, n, nl)
}

fn to_vec<T>(t: &Tensor, kind: Kind) -> Result<Vec<T>, EvalError>
where
    Vec<T>: for<'a> TryFrom<&'a Tensor, Error = tch::TchError>,
{
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(kind)
        .contiguous()
        .view([-1]);
    Vec::<T>::try_from(&flat).map_err(model_err)
}

/// Runs the iterative prompting on one normalised image with ground truth `gt`; returns the
/// scores of each round (`opts.n_iterations` of them). `image_index` seeds the random points.
///
/// # Errors
/// A ground truth of another size than the image, or a model failure.
pub fn iterative_prompting_image(
    model: &InferenceModel,
    image: &Plane<f32>,
    gt: &LabelImage,
    start: PromptStart,
    opts: &IterativeOptions,
    image_index: u64,
) -> Result<Vec<ImageScores>, EvalError> {
    let (h, w) = image.shape();
    if (gt.rows(), gt.cols()) != (h, w) {
        return Err(EvalError::Setting {
            name: "labels".into(),
            message: format!(
                "the label image is {}×{} but its image is {w}×{h} (width×height)",
                gt.cols(),
                gt.rows()
            ),
        });
    }
    let mut objects = objects_of(gt);
    if objects.is_empty() {
        let s = score_image(gt.as_slice(), &vec![0; h * w])?;
        return Ok(vec![s; opts.n_iterations]);
    }
    let _guard = tch::no_grad_guard();
    let mut predictor = model.predictor();
    predictor
        .set_image(ImageView {
            pixels: image.as_slice(),
            rows: h,
            cols: w,
        })
        .map_err(model_err)?;
    if start == PromptStart::Point {
        let sampler = PromptSampler::default();
        for o in &mut objects {
            let [x0, y0, _, _] = o.bbox;
            let local = crop_box(gt, o.bbox);
            let mut r = rng(opts.seed, image_index, start, o.id, 0);
            let (x, y) = sampler
                .positive_point(&local, o.id, &mut r)
                .ok_or_else(|| model_err(format!("object {} has no pixel", o.id)))?;
            o.points.push([(x + x0) as f32, (y + y0) as f32]);
            o.labels.push(1);
        }
    }

    let (hi, wi) = (h as i64, w as i64);
    let mut rounds = Vec::with_capacity(opts.n_iterations);
    for round in 0..opts.n_iterations {
        let last = round + 1 == opts.n_iterations;
        let mut best_logit = vec![0f32; h * w];
        let mut merged = vec![0u32; h * w];
        for chunk in objects.chunks_mut(opts.objects_per_batch.max(1)) {
            let n = chunk.len() as i64;
            let p = chunk[0].points.len() as i64;
            let coords: Vec<f32> = chunk.iter().flat_map(|o| o.points.concat()).collect();
            let labels: Vec<i64> = chunk.iter().flat_map(|o| o.labels.clone()).collect();
            let boxes: Vec<f32> = chunk
                .iter()
                .flat_map(|o| o.bbox.map(|v| v as f32))
                .collect();
            let mask_input = if opts.use_masks && round > 0 {
                let l: Option<Vec<Tensor>> = chunk
                    .iter()
                    .map(|o| o.logits.as_ref().map(Tensor::shallow_clone))
                    .collect();
                l.map(|l| Tensor::stack(&l, 0))
            } else {
                None
            };
            let prompts = Prompts {
                point_coords: (p > 0).then(|| Tensor::from_slice(&coords).view([n, p, 2])),
                point_labels: (p > 0).then(|| Tensor::from_slice(&labels).view([n, p])),
                boxes: (start == PromptStart::Box).then(|| Tensor::from_slice(&boxes).view([n, 4])),
                mask_input,
            };
            // micro_sam: multimask output only for the single starting point.
            let multimask = round == 0 && start == PromptStart::Point;
            let pred = predictor.predict(&prompts, multimask).map_err(model_err)?;
            let best: Vec<i64> = if multimask {
                to_vec(&pred.iou_predictions.argmax(1, false), Kind::Int64)?
            } else {
                vec![0; chunk.len()]
            };
            let planes = if multimask {
                let chosen: Vec<Tensor> = best
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| pred.masks.get(i as i64).get(k))
                    .collect();
                Tensor::stack(&chosen, 0)
            } else {
                pred.masks.select(1, 0)
            }; // [n, h, w] logits
            if planes.size() != [n, hi, wi] {
                return Err(model_err(format!(
                    "expected {n} masks of {h}×{w}, found {:?}",
                    planes.size()
                )));
            }
            // Only the box of each object's positive logits matters for merging, and that box
            // grown to the search region for the corrective points: just that comes back from
            // the device, not n full-size planes.
            let positive = planes.gt(0.0);
            let rows: Vec<u8> = to_vec(&positive.any_dim(2, false), Kind::Uint8)?;
            let cols: Vec<u8> = to_vec(&positive.any_dim(1, false), Kind::Uint8)?;
            let mut work = Vec::with_capacity(chunk.len());
            for (i, o) in chunk.iter().enumerate() {
                let pred_box = box_from_flags(&rows[i * h..(i + 1) * h], &cols[i * w..(i + 1) * w]);
                let r = if last {
                    match pred_box {
                        Some(b) => b,
                        None => continue, // nothing predicted: nothing to merge
                    }
                } else {
                    search_region(o.bbox, pred_box, w, h)
                };
                let (rw, rh) = (r[2] - r[0], r[3] - r[1]);
                let part = planes
                    .get(i as i64)
                    .narrow(0, r[1] as i64, rh as i64)
                    .narrow(1, r[0] as i64, rw as i64);
                let part: Vec<f32> = to_vec(&part, Kind::Float)?;
                // Each pixel to the object with the highest positive logit (the first of
                // equals, as sam-train's validation).
                for (y, row) in part.chunks(rw).enumerate() {
                    let at = (r[1] + y) * w + r[0];
                    for ((&l, b), m) in row
                        .iter()
                        .zip(&mut best_logit[at..at + rw])
                        .zip(&mut merged[at..at + rw])
                    {
                        if l > *b {
                            *b = l;
                            *m = o.id;
                        }
                    }
                }
                work.push((
                    o.id,
                    r,
                    part.into_iter().map(|l| l > 0.0).collect::<Vec<_>>(),
                ));
            }
            if last {
                continue;
            }
            if opts.use_masks {
                for (i, (o, &k)) in chunk.iter_mut().zip(&best).enumerate() {
                    o.logits = Some(pred.low_res_logits.get(i as i64).get(k).unsqueeze(0));
                }
            }
            let next: Vec<_> = work
                .par_iter()
                .map(|(id, r, part)| {
                    let mut g = rng(opts.seed, image_index, start, *id, round + 1);
                    corrections(gt, *id, *r, part, &mut g)
                })
                .collect();
            for (o, (p, pl, q, ql)) in chunk.iter_mut().zip(next) {
                o.points.extend([p, q]);
                o.labels.extend([pl, ql]);
            }
        }
        rounds.push(score_image(gt.as_slice(), &merged)?);
    }
    Ok(rounds)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn boxes_and_crops() {
        let gt =
            LabelImage::from_vec(3, 5, vec![0, 7, 7, 0, 0, 0, 7, 0, 0, 2, 0, 0, 0, 0, 2]).unwrap();
        let o = objects_of(&gt);
        assert_eq!(o.len(), 2);
        assert_eq!((o[0].id, o[0].bbox), (2, [4, 1, 5, 3]));
        assert_eq!((o[1].id, o[1].bbox), (7, [1, 0, 3, 2]));
        assert_eq!(crop_box(&gt, [1, 0, 3, 2]).as_slice(), &[7, 7, 7, 0]);
    }

    /// The cropped merge equals a plain merge of the full-size masks of every object.
    #[test]
    fn first_round_merges_like_the_full_masks() {
        tch::manual_seed(11);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let sam = sam_model::Sam::new(&vs.root(), &sam_model::SamConfig::tiny()).unwrap();
        let model = InferenceModel::from_parts(vs, sam, None);
        let s = sam_data::synthesize(
            &sam_data::SynthConfig {
                size: 64,
                ..Default::default()
            },
            9,
        );
        let norm = sam_data::preprocess(&s.image, &sam_data::Normalization::default()).unwrap();
        let image = Plane::from_vec(64, 64, norm).unwrap();
        let opts = IterativeOptions {
            starts: vec![PromptStart::Box],
            n_iterations: 2,
            use_masks: true,
            seed: 0,
            objects_per_batch: 3,
        };
        let got = iterative_prompting_image(&model, &image, &s.labels, PromptStart::Box, &opts, 0)
            .unwrap();
        assert_eq!(got.len(), 2);

        let mut predictor = sam_model::SamPredictor::new(model.sam());
        predictor
            .set_image(ImageView {
                pixels: image.as_slice(),
                rows: 64,
                cols: 64,
            })
            .unwrap();
        let objects = objects_of(&s.labels);
        let boxes: Vec<f32> = objects
            .iter()
            .flat_map(|o| o.bbox.map(|v| v as f32))
            .collect();
        let n = objects.len() as i64;
        let pred = predictor
            .predict(
                &Prompts {
                    boxes: Some(Tensor::from_slice(&boxes).view([n, 4])),
                    ..Default::default()
                },
                false,
            )
            .unwrap();
        let logits: Vec<f32> = to_vec(&pred.masks, Kind::Float).unwrap();
        let (mut best, mut merged) = (vec![0f32; 64 * 64], vec![0u32; 64 * 64]);
        for (o, plane) in objects.iter().zip(logits.chunks(64 * 64)) {
            for ((&l, b), m) in plane.iter().zip(&mut best).zip(&mut merged) {
                if l > *b {
                    *b = l;
                    *m = o.id;
                }
            }
        }
        assert!(
            merged.iter().any(|&m| m != 0),
            "the random model predicts something"
        );
        let want = score_image(s.labels.as_slice(), &merged).unwrap();
        assert_eq!(got[0], want);
    }

    #[test]
    fn corrections_fall_in_the_missed_and_wrong_regions() {
        // Object 1: columns 2..6 of rows 2..6 in a 12×12 image. Prediction: columns 4..9.
        let (w, h) = (12, 12);
        let mut data = vec![0u32; w * h];
        let mut logits = vec![-1f32; w * h];
        for y in 2..6 {
            for x in 2..6 {
                data[y * w + x] = 1;
            }
            for x in 4..9 {
                logits[y * w + x] = 1.0;
            }
        }
        let gt = LabelImage::from_vec(h, w, data).unwrap();
        let region = |logits: &[f32]| {
            let rows: Vec<u8> = (0..h)
                .map(|y| u8::from(logits[y * w..(y + 1) * w].iter().any(|&l| l > 0.0)))
                .collect();
            let cols: Vec<u8> = (0..w)
                .map(|x| u8::from((0..h).any(|y| logits[y * w + x] > 0.0)))
                .collect();
            let r = search_region([2, 2, 6, 6], box_from_flags(&rows, &cols), w, h);
            let logits = Plane::from_vec(h, w, logits.to_vec()).unwrap();
            let pred: Vec<bool> = crop_box(&logits, r)
                .as_slice()
                .iter()
                .map(|&l| l > 0.0)
                .collect();
            (r, pred)
        };
        let (r0, pred) = region(&logits);
        assert_eq!(r0, [0, 0, 9, 9]);
        for seed in 0..20 {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            let (p, pl, n, nl) = corrections(&gt, 1, r0, &pred, &mut r);
            assert_eq!((pl, nl), (1, 0));
            let (px, py) = (p[0] as usize, p[1] as usize);
            let (nx, ny) = (n[0] as usize, n[1] as usize);
            assert!(
                (2..4).contains(&px) && (2..6).contains(&py),
                "positive {p:?}"
            );
            assert!(
                (6..9).contains(&nx) && (2..6).contains(&ny),
                "negative {n:?}"
            );
        }
        // A perfect prediction: the negative point goes to the background ring around the box.
        let perfect: Vec<f32> = gt
            .as_slice()
            .iter()
            .map(|&v| if v == 1 { 1.0 } else { -1.0 })
            .collect();
        let mut r = ChaCha8Rng::seed_from_u64(1);
        let (r1, pred) = region(&perfect);
        assert_eq!(r1, [0, 0, 9, 9]);
        let (p, _, n, nl) = corrections(&gt, 1, r1, &pred, &mut r);
        assert_eq!(gt.as_slice()[p[1] as usize * w + p[0] as usize], 1);
        assert_eq!(nl, 0);
        assert_eq!(gt.as_slice()[n[1] as usize * w + n[0] as usize], 0);
        assert!(n[0] < 9.0 && n[1] < 9.0);
    }
}
