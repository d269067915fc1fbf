//! Validation on held-out images: every object of a fixed set of patches is prompted with its
//! tight box; the masks give the box-prompted Dice and IoU, and, merged into one label image
//! (each pixel to the object with the highest positive logit), the instance metrics (mSA, SA50)
//! of sam-eval.

use sam_data::{PromptSampler, TrainingSample};
use sam_model::{ResizeLongestSide, Sam};
use tch::{Device, Kind, Tensor};

use crate::distributed::Collective;
use crate::step::model_input;
use crate::TrainError;

/// Validation scores, means over objects (Dice, IoU) and over patches (mSA, SA50).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ValidationScores {
    /// Dice of the box-prompted masks.
    pub dice: f64,
    /// IoU of the box-prompted masks.
    pub box_iou: f64,
    /// Mean segmentation accuracy of the merged label images.
    pub msa: f64,
    /// SA at IoU 0.5 of the merged label images.
    pub sa50: f64,
}

/// Objects prompted together in one decoder call.
const OBJECT_CHUNK: usize = 32;

/// Sums over validation patches from which [`ValidationScores`] are made. Sums of disjoint
/// sets of patches add up ([`ValidationTotals::add`]), so ranks can each score a share of the
/// patches and combine their totals into the scores of the whole set.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ValidationTotals {
    /// Sum of the box-prompted Dice over objects.
    pub dice_sum: f64,
    /// Sum of the box-prompted IoU over objects.
    pub iou_sum: f64,
    /// Objects scored.
    pub objects: f64,
    /// Sum of mSA over patches.
    pub msa_sum: f64,
    /// Sum of SA50 over patches.
    pub sa50_sum: f64,
    /// Patches scored.
    pub patches: f64,
}

impl ValidationTotals {
    /// The totals as a flat array (for collectives), in field order.
    pub fn to_array(&self) -> [f64; 6] {
        [
            self.dice_sum,
            self.iou_sum,
            self.objects,
            self.msa_sum,
            self.sa50_sum,
            self.patches,
        ]
    }

    /// The inverse of [`ValidationTotals::to_array`].
    pub fn from_array(a: [f64; 6]) -> Self {
        Self {
            dice_sum: a[0],
            iou_sum: a[1],
            objects: a[2],
            msa_sum: a[3],
            sa50_sum: a[4],
            patches: a[5],
        }
    }

    /// The totals of both sets of patches.
    pub fn add(&self, other: &Self) -> Self {
        let (a, b) = (self.to_array(), other.to_array());
        Self::from_array(std::array::from_fn(|i| a[i] + b[i]))
    }

    /// Means over objects (Dice, IoU) and over patches (mSA, SA50).
    pub fn scores(&self) -> ValidationScores {
        let no = self.objects.max(1.0);
        let np = self.patches.max(1.0);
        ValidationScores {
            dice: self.dice_sum / no,
            box_iou: self.iou_sum / no,
            msa: self.msa_sum / np,
            sa50: self.sa50_sum / np,
        }
    }
}

/// Scores the model on validation patches (no gradients).
pub fn validate(
    sam: &Sam,
    patches: &[TrainingSample],
    device: Device,
) -> Result<ValidationScores, TrainError> {
    validation_totals(sam, patches, device).map(|t| t.scores())
}

/// The sums behind [`validate`] for these patches.
pub fn validation_totals(
    sam: &Sam,
    patches: &[TrainingSample],
    device: Device,
) -> Result<ValidationTotals, TrainError> {
    let _guard = tch::no_grad_guard();
    let sampler = PromptSampler {
        box_distortion: 0.0,
    };
    let transform = ResizeLongestSide {
        target_length: sam.img_size(),
    };
    let (mut dice_sum, mut iou_sum, mut n_objects) = (0.0, 0.0, 0usize);
    let (mut msa_sum, mut sa50_sum) = (0.0, 0.0);
    for sample in patches {
        let (x, input_size) = model_input(sam, &[sample], device)?;
        let emb = sam.image_encoder.forward(&x);
        let (h, w) = (sample.labels.rows(), sample.labels.cols());
        let max = sample.labels.as_slice().iter().copied().max().unwrap_or(0);
        let mut present = vec![false; max as usize + 1];
        for &v in sample.labels.as_slice() {
            present[v as usize] = true;
        }
        let ids: Vec<u32> = (1..=max).filter(|&i| present[i as usize]).collect();
        // Best logit and its object per pixel, for the merged label image.
        let mut best_logit = vec![0f32; h * w];
        let mut merged = vec![0u32; h * w];
        for chunk in ids.chunks(OBJECT_CHUNK) {
            let mut boxes = Vec::with_capacity(chunk.len() * 4);
            for &id in chunk {
                let b = sampler
                    .jittered_box(
                        &sample.labels,
                        id,
                        &mut rand::rngs::mock::StepRng::new(0, 0),
                    )
                    .ok_or_else(|| TrainError::Samples(format!("object {id} vanished")))?;
                boxes.extend(b.iter().map(|&c| c as f32));
            }
            let n = chunk.len() as i64;
            let boxes = Tensor::from_slice(&boxes).view([n, 4]).to_device(device);
            let boxes = transform.apply_boxes(&boxes, (h as i64, w as i64));
            let (low_res_masks, _iou) =
                sam.forward_prompts(&emb, None, Some(&boxes), None, false)?;
            let logits = sam
                .postprocess_masks(&low_res_masks, input_size, (h as i64, w as i64))
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
                .contiguous();
            let logits: Vec<f32> = Vec::<f32>::try_from(logits.flatten(0, -1))?;
            for (k, &id) in chunk.iter().enumerate() {
                let plane = &logits[k * h * w..(k + 1) * h * w];
                let (mut inter, mut pred_n, mut true_n) = (0u64, 0u64, 0u64);
                for ((&l, &t), (best, m)) in plane
                    .iter()
                    .zip(sample.labels.as_slice())
                    .zip(best_logit.iter_mut().zip(merged.iter_mut()))
                {
                    let p = l > 0.0;
                    let t = t == id;
                    inter += u64::from(p && t);
                    pred_n += u64::from(p);
                    true_n += u64::from(t);
                    if l > *best {
                        *best = l;
                        *m = id;
                    }
                }
                let union = pred_n + true_n - inter;
                dice_sum += if pred_n + true_n == 0 {
                    1.0
                } else {
                    2.0 * inter as f64 / (pred_n + true_n) as f64
                };
                iou_sum += if union == 0 {
                    1.0
                } else {
                    inter as f64 / union as f64
                };
                n_objects += 1;
            }
        }
        let scores =
            sam_eval::score_image(sample.labels.as_slice(), &merged).map_err(|source| {
                TrainError::Scoring {
                    image: sample.image_name.clone(),
                    source,
                }
            })?;
        msa_sum += scores.msa;
        sa50_sum += scores.sa50;
    }
    Ok(ValidationTotals {
        dice_sum,
        iou_sum,
        objects: n_objects as f64,
        msa_sum,
        sa50_sum,
        patches: patches.len() as f64,
    })
}

/// Validation scores that every rank holds identically: each rank scores its share of the
/// patches, the totals are summed over ranks, and rank 0's resulting scores are broadcast, so
/// the scheduler, early stopping and the best-checkpoint choice see the same bits everywhere.
/// `offset` is added to this rank's mSA and Dice totals (fault injection in tests).
pub(crate) fn shared_validation(
    sam: &sam_model::Sam,
    patches: &[TrainingSample],
    device: tch::Device,
    collective: Option<&Collective>,
    offset: f64,
) -> Result<ValidationScores, TrainError> {
    let mut mine = validation_totals(sam, patches, device)?;
    mine.msa_sum += offset * mine.patches;
    mine.dice_sum += offset * mine.objects;
    let Some(c) = collective else {
        return Ok(mine.scores());
    };
    let total = ValidationTotals::from_array(
        c.sum_f64(&mine.to_array())?
            .try_into()
            .map_err(|_| TrainError::Distributed("validation totals: wrong length".into()))?,
    );
    let s = total.scores();
    let shared = c.broadcast_f64(&[s.dice, s.box_iou, s.msa, s.sa50])?;
    Ok(ValidationScores {
        dice: shared[0],
        box_iou: shared[1],
        msa: shared[2],
        sa50: shared[3],
    })
}
