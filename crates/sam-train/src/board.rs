//! What a training run shows in TensorBoard (`runs/<experiment>/logs/tensorboard/`, rank 0
//! only): the metrics rows, the numbers of the log lines, and an image panel every
//! `training.tensorboard_images_every` iterations. The event file format is in
//! [`crate::tensorboard`].
//!
//! Tags, each at the step (iteration) of the row or line it comes from:
//!
//! | source | tags |
//! | --- | --- |
//! | `metrics.csv` row (`iteration` is the step) | `train/epoch`, `train/lr`, `train/loss`, `train/dice_loss`, `train/decoder_loss`, `validation/dice`, `validation/box_iou`, `validation/msa`, `validation/sa50`, `time/epoch_seconds` |
//! | log line (`training.log_every_iterations`) | `step/loss`, `step/dice_loss`, `step/iou_mse_loss`, `step/decoder_loss`, `step/lr`, `throughput/images_per_second`, `throughput/seconds_per_step`, `throughput/model_tflops` and `throughput/peak_share` (when counted), `memory/peak_allocated_mib` (GPU) |
//! | image panel | `train/panel` |

use std::path::Path;

use sam_data::{outline_overlay, LabelImage, Plane, PromptSampler, TrainingSample};
use sam_model::{ResizeLongestSide, Sam};
use tch::{Device, Kind, Tensor};

use crate::report::EpochRecord;
use crate::step::{model_input, LossValues};
use crate::tensorboard::{discard_after, EventWriter};
use crate::throughput::Throughput;
use crate::TrainError;

/// The folder of the event files inside the run's `logs/`.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// The tag of the image panel.
pub const PANEL_TAG: &str = "train/panel";

/// Objects shown in the image panel at most (the first ids of the patch).
pub const PANEL_OBJECTS: usize = 4;

/// Black columns between the panel's tiles.
pub const PANEL_GAP: usize = 4;

/// The colour of the k-th object of the panel (red, green, blue, orange: visible on grey).
const OBJECT_COLOURS: [[u8; 3]; PANEL_OBJECTS] =
    [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48]];

/// The metrics-row scalars: (tag, value).
pub(crate) fn epoch_scalars(r: &EpochRecord) -> [(&'static str, f64); 10] {
    [
        ("train/epoch", r.epoch as f64),
        ("train/lr", r.lr),
        ("train/loss", r.train_loss),
        ("train/dice_loss", r.train_dice_loss),
        ("train/decoder_loss", r.train_decoder_loss),
        ("validation/dice", r.val_dice),
        ("validation/box_iou", r.val_box_iou),
        ("validation/msa", r.val_msa),
        ("validation/sa50", r.val_sa50),
        ("time/epoch_seconds", r.seconds),
    ]
}

/// The TensorBoard log of one run (rank 0).
#[derive(Debug)]
pub(crate) struct Board {
    writer: EventWriter,
    images_every: u32,
}

impl Board {
    /// Opens the log in `logs_dir/tensorboard/` for a run that continues after `done`
    /// iterations (0 for a new run): events of later steps left by a killed run are removed
    /// first (the run logs those steps again), then a new event file is started. Returns the
    /// board and how many events were removed.
    pub(crate) fn open(
        logs_dir: &Path,
        done: u64,
        images_every: u32,
    ) -> Result<(Self, usize), TrainError> {
        let dir = logs_dir.join(TENSORBOARD_DIR);
        let removed = discard_after(&dir, done)?;
        let writer = EventWriter::create(&dir)?;
        Ok((
            Self {
                writer,
                images_every,
            },
            removed,
        ))
    }

    /// The scalars of a metrics row, at its iteration.
    pub(crate) fn epoch_row(&mut self, r: &EpochRecord) -> Result<(), TrainError> {
        self.writer.add_scalars(r.iteration, &epoch_scalars(r))
    }

    /// The numbers of a log line: the step's loss parts and learning rate, the throughput since
    /// the previous line, the peak device memory in MiB.
    pub(crate) fn log_line(
        &mut self,
        iteration: u64,
        loss: &LossValues,
        lr: f64,
        speed: Option<&Throughput>,
        peak_memory_bytes: Option<u64>,
    ) -> Result<(), TrainError> {
        let mut scalars = vec![
            ("step/loss", loss.total),
            ("step/dice_loss", loss.dice),
            ("step/iou_mse_loss", loss.iou_mse),
            ("step/decoder_loss", loss.decoder),
            ("step/lr", lr),
        ];
        if let Some(t) = speed {
            scalars.push(("throughput/images_per_second", t.images_per_second));
            scalars.push(("throughput/seconds_per_step", t.seconds_per_step));
            if let Some(tflops) = t.tflops {
                scalars.push(("throughput/model_tflops", tflops));
            }
            if let Some(share) = t.peak_share {
                scalars.push(("throughput/peak_share", share));
            }
        }
        if let Some(bytes) = peak_memory_bytes {
            scalars.push((
                "memory/peak_allocated_mib",
                bytes as f64 / (1u64 << 20) as f64,
            ));
        }
        self.writer.add_scalars(iteration, &scalars)
    }

    /// Whether the image panel is due after `iteration` completed steps.
    pub(crate) fn panel_due(&self, iteration: u64) -> bool {
        self.images_every > 0 && iteration % u64::from(self.images_every) == 0
    }

    /// The image panel of `sample` (the first patch of the step's batch) at `iteration`: see
    /// [`panel`].
    pub(crate) fn add_panel(
        &mut self,
        iteration: u64,
        sam: &Sam,
        sample: &TrainingSample,
        device: Device,
    ) -> Result<(), TrainError> {
        let (rgb, width, height) = panel(sam, sample, device)?;
        self.writer
            .add_rgb_image(PANEL_TAG, iteration, rgb, width as u32, height as u32)
    }
}

/// The image panel of a patch, as micro_sam's logger shows a training batch (input, targets,
/// predictions), side by side with [`PANEL_GAP`] black columns between them:
///
/// 1. the patch (normalised grey, objects dark) with the box prompts of up to
///    [`PANEL_OBJECTS`] objects (their first ids), one colour per object;
/// 2. the outlines of those objects' true masks;
/// 3. the outlines of the masks the model predicts from those boxes now (no gradients).
///
/// Returns the RGB pixels (row-major, 3 bytes each), the width (`3 × patch width + 2 ×
/// PANEL_GAP`) and the height (the patch's).
pub fn panel(
    sam: &Sam,
    sample: &TrainingSample,
    device: Device,
) -> Result<(Vec<u8>, usize, usize), TrainError> {
    let (h, w) = sample.labels.shape();
    let ids: Vec<u32> = sample
        .labels
        .ids()
        .into_iter()
        .filter(|&i| i != 0)
        .take(PANEL_OBJECTS)
        .collect();
    let sampler = PromptSampler {
        box_distortion: 0.0,
    };
    let mut boxes = Vec::with_capacity(ids.len());
    for &id in &ids {
        let b = sampler
            .jittered_box(
                &sample.labels,
                id,
                &mut rand::rngs::mock::StepRng::new(0, 0),
            )
            .ok_or_else(|| TrainError::Samples(format!("panel: object {id} vanished")))?;
        boxes.push(b);
    }
    let predicted = predict_from_boxes(sam, sample, &boxes, device)?;
    let image = Plane::from_vec(h, w, sample.image.clone())?;

    // Tile 1: the boxes drawn on the patch.
    let mut input = outline_overlay(&image, &[])?;
    for (b, colour) in boxes.iter().zip(OBJECT_COLOURS) {
        draw_box(&mut input, w, *b, colour);
    }
    // Tiles 2 and 3: one outline layer per object, true and predicted.
    let truth: Vec<LabelImage> = ids
        .iter()
        .map(|&id| sample.labels.map(|&v| u32::from(v == id)))
        .collect();
    fn layers(masks: &[LabelImage]) -> Vec<(&LabelImage, [u8; 3])> {
        masks.iter().zip(OBJECT_COLOURS).collect()
    }
    let target = outline_overlay(&image, &layers(&truth))?;
    let prediction = outline_overlay(&image, &layers(&predicted))?;

    let width = 3 * w + 2 * PANEL_GAP;
    let mut rgb = vec![0u8; width * h * 3];
    for (k, tile) in [input, target, prediction].iter().enumerate() {
        let x0 = k * (w + PANEL_GAP);
        for y in 0..h {
            let dst = 3 * (y * width + x0);
            rgb[dst..dst + 3 * w].copy_from_slice(&tile[3 * y * w..3 * (y + 1) * w]);
        }
    }
    Ok((rgb, width, h))
}

/// The masks (logit > 0) the model predicts for each box `[x0, y0, x1, y1]` (ends exclusive,
/// patch pixels), as 0/1 label images of the patch's size.
fn predict_from_boxes(
    sam: &Sam,
    sample: &TrainingSample,
    boxes: &[[usize; 4]],
    device: Device,
) -> Result<Vec<LabelImage>, TrainError> {
    if boxes.is_empty() {
        return Ok(Vec::new());
    }
    let _guard = tch::no_grad_guard();
    let (h, w) = sample.labels.shape();
    let (x, input_size) = model_input(sam, &[sample], device)?;
    let embedding = sam.image_encoder.forward(&x);
    let flat: Vec<f32> = boxes.iter().flatten().map(|&c| c as f32).collect();
    let boxes_t = Tensor::from_slice(&flat)
        .view([boxes.len() as i64, 4])
        .to_device(device);
    let transform = ResizeLongestSide {
        target_length: sam.img_size(),
    };
    let boxes_t = transform.apply_boxes(&boxes_t, (h as i64, w as i64));
    let (low_res, _iou) = sam.forward_prompts(&embedding, None, Some(&boxes_t), None, false)?;
    let logits = sam
        .postprocess_masks(&low_res, input_size, (h as i64, w as i64))
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .contiguous();
    let logits: Vec<f32> = Vec::try_from(logits.flatten(0, -1))?;
    logits
        .chunks(h * w)
        .map(|plane| {
            LabelImage::from_vec(h, w, plane.iter().map(|&l| u32::from(l > 0.0)).collect())
                .map_err(TrainError::from)
        })
        .collect()
}

/// Draws the outline of the box `[x0, y0, x1, y1]` (ends exclusive) into an RGB buffer of
/// `width` columns.
fn draw_box(rgb: &mut [u8], width: usize, [x0, y0, x1, y1]: [usize; 4], colour: [u8; 3]) {
    if x1 <= x0 || y1 <= y0 {
        return;
    }
    let mut put = |x: usize, y: usize| {
        let i = 3 * (y * width + x);
        if let Some(px) = rgb.get_mut(i..i + 3) {
            px.copy_from_slice(&colour);
        }
    };
    for x in x0..x1 {
        put(x, y0);
        put(x, y1 - 1);
    }
    for y in y0..y1 {
        put(x0, y);
        put(x1 - 1, y);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A 32 px patch: background 0.8, object 1 at rows 4..12, cols 6..16 (0.2), object 2 at
    /// rows 20..28, cols 20..30 (0.3).
    fn patch() -> TrainingSample {
        let (h, w) = (32, 32);
        let mut image = vec![0.8f32; h * w];
        let mut labels = LabelImage::zeros(h, w);
        for (id, rows, cols, v) in [(1, 4..12, 6..16, 0.2), (2, 20..28, 20..30, 0.3)] {
            for y in rows {
                for x in cols.clone() {
                    image[y * w + x] = v;
                    labels.set(y, x, id);
                }
            }
        }
        TrainingSample {
            image_name: "p".into(),
            origin: (0, 0),
            image,
            labels,
            targets: None,
        }
    }

    #[test]
    fn panel_shows_boxes_true_outlines_and_predictions_side_by_side() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let sam = Sam::new(&vs.root(), &sam_model::SamConfig::tiny()).unwrap();
        let (rgb, width, height) = panel(&sam, &patch(), Device::Cpu).unwrap();
        assert_eq!((width, height), (3 * 32 + 2 * PANEL_GAP, 32));
        assert_eq!(rgb.len(), width * height * 3);
        let px = |tile: usize, y: usize, x: usize| {
            let i = 3 * (y * width + tile * (32 + PANEL_GAP) + x);
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        let [red, green, ..] = OBJECT_COLOURS;
        // Tile 1: each object's tight box, its inside untouched; background grey 0.8.
        assert_eq!(px(0, 4, 6), red);
        assert_eq!(px(0, 11, 15), red);
        assert_eq!(px(0, 8, 10), [51; 3]);
        assert_eq!(px(0, 20, 29), green);
        assert_eq!(px(0, 0, 0), [204; 3]);
        // Tile 2: the true outlines, same colours.
        assert_eq!(px(1, 4, 10), red);
        assert_eq!(px(1, 8, 10), [51; 3]);
        assert_eq!(px(1, 27, 25), green);
        // Tile 3: grey or an object's colour only; the gaps are black.
        for y in 0..32 {
            for x in 0..32 {
                let p = px(2, y, x);
                assert!(
                    (p[0] == p[1] && p[1] == p[2]) || OBJECT_COLOURS[..2].contains(&p),
                    "{p:?} at ({y}, {x})"
                );
            }
            for g in 0..PANEL_GAP {
                let i = 3 * (y * width + 32 + g);
                assert_eq!(&rgb[i..i + 3], &[0, 0, 0]);
            }
        }
    }

    #[test]
    fn draw_box_outlines_the_exclusive_box() {
        let mut rgb = vec![0u8; 5 * 4 * 3];
        draw_box(&mut rgb, 5, [1, 1, 4, 3], [9, 8, 7]);
        let lit: Vec<(usize, usize)> = (0..4)
            .flat_map(|y| (0..5).map(move |x| (x, y)))
            .filter(|&(x, y)| rgb[3 * (y * 5 + x)] == 9)
            .collect();
        assert_eq!(
            lit,
            [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)],
            "a 3×2 box has no interior"
        );
    }
}
