//! One training step of the micro_sam recipe, on a batch already in memory.
//!
//! Image embeddings are computed once per batch; then, per image, `n_sub_iteration` prompting
//! rounds run on those embeddings: the first round starts from one positive point per object
//! (multimask output) or from a box per object, alternating by iteration; every later round adds
//! a positive point in the missed region and a negative point in the wrongly included region of
//! each object's best mask, and feeds the previous best low-resolution logits as mask input with
//! probability `mask_prob`. The loss is the mean over rounds of Dice (best of the k masks) +
//! IoU-MSE, averaged over images; with the UNETR decoder, its distance loss is added.

// `+=` on a Tensor is an in-place op; the losses build new autograd nodes instead.
#![allow(clippy::assign_op_pattern)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sam_config::ActivationCheckpointing;
use sam_data::{derive_seed, PromptSampler, TrainingSample};
use sam_model::{ImageEncoder, ImageEncoderViT, ResizeLongestSide, Sam, UnetrDecoder};
use tch::{Device, Kind, Tensor};

use crate::corrective::corrective_points;
use crate::losses::{distance_loss, round_loss};
use crate::TrainError;

/// Settings of the prompting recipe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecipeConfig {
    /// Objects per image and step (micro_sam's `n_objects_per_batch`).
    pub n_objects_per_batch: usize,
    /// Prompting rounds per step (micro_sam's `n_sub_iteration`), at least 1.
    pub n_sub_iteration: usize,
    /// Probability of feeding the previous logits as mask input.
    pub mask_prob: f64,
    /// Random box enlargement (fraction of the box size per side).
    pub box_distortion: f64,
    /// Weight of the focal term (0: off).
    pub focal_weight: f64,
}

impl RecipeConfig {
    /// The recipe a training config sets.
    pub fn from_training(t: &sam_config::TrainingConfig) -> Self {
        Self {
            n_objects_per_batch: t.n_objects_per_batch as usize,
            n_sub_iteration: t.n_sub_iteration as usize,
            mask_prob: t.mask_prob,
            box_distortion: t.box_distortion_factor,
            focal_weight: t.focal_loss_weight,
        }
    }
}

/// The autocast kind of a training precision: bf16 and fp16 autocast the forward passes, fp32
/// and tf32 run as the weights are.
pub fn autocast_kind(precision: sam_config::Precision) -> Option<Kind> {
    match precision {
        sam_config::Precision::Bf16 => Some(Kind::BFloat16),
        sam_config::Precision::Fp16 => Some(Kind::Half),
        sam_config::Precision::Fp32 | sam_config::Precision::Tf32 => None,
    }
}

/// The loss of one step: a tensor to back-propagate (or its value) and its parts, all on the
/// device; [`StepLoss::read`] brings the numbers to the host in one read.
pub struct StepLoss {
    /// What to back-propagate ([`step_loss`]), or the value that was back-propagated
    /// ([`step_backward`], no graph).
    pub total: Tensor,
    /// `[3]` float, no graph: the mean Dice loss over images and rounds, the mean IoU-MSE, and
    /// the decoder's distance loss (0 without decoder).
    pub parts: Tensor,
}

impl std::fmt::Debug for StepLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepLoss")
            .field("total", &self.total.size())
            .field("parts", &self.parts.size())
            .finish()
    }
}

/// The numbers of a [`StepLoss`] on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossValues {
    /// The step's loss.
    pub total: f64,
    /// Mean Dice loss over images and rounds.
    pub dice: f64,
    /// Mean IoU-MSE over images and rounds.
    pub iou_mse: f64,
    /// The decoder's distance loss (0 without decoder).
    pub decoder: f64,
}

impl StepLoss {
    /// The loss as a `[4]` float tensor on the device, without graph: total, Dice, IoU-MSE,
    /// decoder (to read together with other numbers of the step).
    pub fn numbers(&self) -> Tensor {
        Tensor::cat(
            &[
                self.total.detach().to_kind(Kind::Float).reshape([1]),
                self.parts.to_kind(Kind::Float),
            ],
            0,
        )
    }

    /// The numbers on the host: one device→host read.
    pub fn read(&self) -> Result<LossValues, TrainError> {
        LossValues::from_numbers(&sam_torch::read_f64s(&self.numbers())?)
    }
}

impl LossValues {
    /// From the first four values of [`StepLoss::numbers`] read to the host.
    pub fn from_numbers(values: &[f64]) -> Result<Self, TrainError> {
        match *values {
            [total, dice, iou_mse, decoder, ..] => Ok(Self {
                total,
                dice,
                iou_mse,
                decoder,
            }),
            _ => Err(TrainError::Samples(format!(
                "a step's loss has {} numbers, expected 4",
                values.len()
            ))),
        }
    }
}

/// Batched model input of grey patches: `[b, 3, img, img]` normalised and padded, plus the size
/// of each patch after resizing (before padding).
pub fn model_input(
    sam: &Sam,
    samples: &[&TrainingSample],
    device: Device,
) -> Result<(Tensor, (i64, i64)), TrainError> {
    let first = samples
        .first()
        .ok_or_else(|| TrainError::Samples("empty batch".into()))?;
    let (h, w) = (first.labels.rows() as i64, first.labels.cols() as i64);
    let mut images = Vec::with_capacity(samples.len());
    for s in samples {
        if s.labels.rows() as i64 != h || s.labels.cols() as i64 != w {
            return Err(TrainError::Samples(format!(
                "patches of one batch differ in size: {}×{} and {}×{}",
                h,
                w,
                s.labels.rows(),
                s.labels.cols()
            )));
        }
        images.push(Tensor::from_slice(&s.image).view([1, 1, h, w]));
    }
    let x = sam_torch::upload(&Tensor::cat(&images, 0), device).repeat([1, 3, 1, 1]) * 255.0;
    let (rh, rw) = ResizeLongestSide::get_preprocess_shape(h, w, sam.img_size());
    let x = if (rh, rw) != (h, w) {
        x.upsample_bilinear2d([rh, rw], false, None, None)
    } else {
        x
    };
    let x = sam.preprocess(&x)?;
    Ok((x, (rh, rw)))
}

/// Objects of a sample chosen for this step: up to `n` ids, drawn without replacement.
fn choose_objects(sample: &TrainingSample, n: usize, rng: &mut ChaCha8Rng) -> Vec<u32> {
    let max = sample.labels.as_slice().iter().copied().max().unwrap_or(0);
    let mut present = vec![false; max as usize + 1];
    for &v in sample.labels.as_slice() {
        present[v as usize] = true;
    }
    let mut ids: Vec<u32> = (1..=max).filter(|&i| present[i as usize]).collect();
    // Partial Fisher–Yates: the first n entries become a uniform sample.
    let k = n.min(ids.len());
    for i in 0..k {
        let j = rng.gen_range(i..ids.len());
        ids.swap(i, j);
    }
    ids.truncate(k);
    ids.sort_unstable();
    ids
}

/// Per-object binary masks `[n, 1, h, w]` (float) of `ids`, built on the device from the label
/// image (sent once, without blocking) and the ids.
fn object_masks(sample: &TrainingSample, ids: &[u32], device: Device) -> Tensor {
    let (h, w) = (sample.labels.rows() as i64, sample.labels.cols() as i64);
    let labels: Vec<i64> = sample
        .labels
        .as_slice()
        .iter()
        .map(|&v| i64::from(v))
        .collect();
    let labels = sam_torch::upload(&Tensor::from_slice(&labels).view([1, h, w]), device);
    let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
    let ids = sam_torch::upload(&Tensor::from_slice(&ids).view([-1, 1, 1]), device);
    labels.eq_tensor(&ids).unsqueeze(1).to_kind(Kind::Float)
}

/// Everything a step reads besides the weights: the model, the batch, the recipe, and the
/// numbers that decide its random draws. `iteration` picks the start prompt (even: point, odd:
/// box) and, with `seed` and each sample's `global_index`, every random draw, so that a step is
/// a pure function of its inputs.
#[derive(Clone, Copy)]
pub struct StepInputs<'a> {
    /// The model whose prompt and mask heads are trained (and its image encoder).
    pub sam: &'a Sam,
    /// The UNETR decoder trained jointly, if any.
    pub decoder: Option<&'a UnetrDecoder>,
    /// The batch: patches of one size.
    pub samples: &'a [&'a TrainingSample],
    /// The prompting recipe.
    pub recipe: &'a RecipeConfig,
    /// The run's seed.
    pub seed: u64,
    /// Completed iterations before this step (0-based index of the step).
    pub iteration: u64,
    /// Each sample's index `k` in the global batch of the iteration (its random draws derive
    /// from `(seed, iteration, k)`, the same on whichever rank it is computed).
    pub global_index: &'a [u64],
    /// Where the step computes.
    pub device: Device,
    /// Called by [`step_backward`] once the heads' gradients are final: right before the image
    /// encoder's backward with the encoder's output (the root of that backward), or with `None`
    /// when nothing is back-propagated through the encoder. With activation checkpointing the
    /// encoder's backward runs segment by segment and the tensor given is a stand-in whose graph
    /// reaches the same parameters in the same order (the encoder applied to a two-patch image):
    /// it is only walked, never back-propagated. Distributed training starts
    /// averaging gradients there ([`crate::GradientReducer::arm`]).
    pub before_encoder_backward: Option<BeforeEncoderBackward<'a>>,
}

/// See [`StepInputs::before_encoder_backward`].
pub type BeforeEncoderBackward<'a> = &'a dyn Fn(Option<&Tensor>) -> Result<(), TrainError>;

impl std::fmt::Debug for StepInputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepInputs")
            .field("decoder", &self.decoder.is_some())
            .field("samples", &self.samples.len())
            .field("recipe", self.recipe)
            .field("seed", &self.seed)
            .field("iteration", &self.iteration)
            .field("global_index", &self.global_index)
            .field("device", &self.device)
            .field(
                "before_encoder_backward",
                &self.before_encoder_backward.is_some(),
            )
            .finish()
    }
}

/// Computes the loss of one step as one autograd graph. Training uses [`step_backward`], which
/// computes the same loss and gradients while keeping only one prompting round's graph alive.
pub fn step_loss(inputs: &StepInputs<'_>) -> Result<StepLoss, TrainError> {
    let sink = Sink::Graph {
        total: Tensor::zeros([], (Kind::Float, inputs.device)),
    };
    run_step(inputs, sink)
}

/// How a step's forward passes run and its gradients are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPrecision {
    /// Autocast to this kind (`BFloat16`, `Half`) for the forward passes; `None`: as the
    /// weights are.
    pub autocast: Option<Kind>,
    /// The factor the loss is multiplied by before back-propagation (fp16 loss scaling, and
    /// `1 / micro-batches` with gradient accumulation; 1 otherwise).
    pub loss_scale: f64,
    /// Image-encoder blocks run without keeping their activations and recomputed, one at a
    /// time, in the encoder's backward (ViT encoders; [`step_loss`] ignores it).
    pub activation_checkpointing: ActivationCheckpointing,
}

impl Default for StepPrecision {
    fn default() -> Self {
        Self {
            autocast: None,
            loss_scale: 1.0,
            activation_checkpointing: ActivationCheckpointing::None,
        }
    }
}

/// Runs one step and back-propagates it: the gradient of `loss_scale ×` the step's loss is
/// added to every trainable parameter's `.grad`. The loss, its parts and the random draws are
/// those of [`step_loss`] with the same inputs; the returned `total` is a number without a
/// graph.
///
/// Each prompting round is back-propagated through the mask decoder as soon as its loss is
/// known, into the gradient of a detached copy of the image embeddings; the image encoder is
/// back-propagated once at the end with the sum of those gradients. Only one round's graph is
/// alive at a time (micro_sam keeps all `n_sub_iteration` of them until the end), which lowers
/// peak memory; the gradients equal `step_loss(..).total.backward()` up to the order of the
/// floating-point sums. Backward passes run outside autocast, as Python's advice has it.
///
/// With `activation_checkpointing`, the chosen ViT blocks run without keeping their
/// activations; the encoder's backward then walks its segments from the last: a checkpointed
/// block is run again from its saved input (under the forward's autocast) and back-propagated
/// at once, the gradient of its input feeding the segment before it. The gradients are those
/// of the plain backward.
pub fn step_backward(
    inputs: &StepInputs<'_>,
    precision: StepPrecision,
) -> Result<StepLoss, TrainError> {
    let _autocast = match precision.autocast {
        Some(kind) => Some(sam_torch::AutocastGuard::new(inputs.device, kind)?),
        None => None,
    };
    let sink = Sink::Eager {
        scale: precision.loss_scale,
        autocast_device: precision.autocast.map(|_| inputs.device),
        checkpointing: precision.activation_checkpointing,
        total: Tensor::zeros([], (Kind::Float, inputs.device)),
    };
    run_step(inputs, sink)
}

/// The image encoder's forward of a step: one graph, or ViT segments of which some are
/// recomputed in the backward.
enum Encoded<'a> {
    /// The encoder's output, with its whole graph (if any).
    Whole(Tensor),
    /// The output of the last segment, the segments in forward order, and the encoder.
    Segmented {
        output: Tensor,
        segments: Vec<Segment>,
        encoder: &'a ImageEncoderViT,
    },
}

/// A part of a segmented encoder forward.
enum Segment {
    /// Kept with its graph from `input` (a leaf cut from the segment before; `None`: the
    /// encoder's input) to `output`.
    Graph {
        input: Option<Tensor>,
        output: Tensor,
    },
    /// Block `index`, run without a graph from `input` (no graph), to run again in the
    /// backward; `input_requires_grad`: whether a gradient flows to what came before.
    Recompute {
        index: usize,
        input: Tensor,
        input_requires_grad: bool,
    },
}

impl Encoded<'_> {
    /// The encoder's output.
    fn output(&self) -> &Tensor {
        match self {
            Encoded::Whole(t) => t,
            Encoded::Segmented { output, .. } => output,
        }
    }
}

/// Runs the encoder on `x`, keeping the activations of the blocks `mode` does not checkpoint.
fn encode<'a>(sam: &'a Sam, x: &Tensor, mode: ActivationCheckpointing) -> Encoded<'a> {
    let ImageEncoder::Vit(enc) = &sam.image_encoder else {
        return Encoded::Whole(sam.image_encoder.forward_training(x));
    };
    let checkpointed = |i: usize| match mode {
        ActivationCheckpointing::None => false,
        ActivationCheckpointing::Global => enc.is_global_block(i),
        ActivationCheckpointing::All => true,
    };
    if !(0..enc.depth()).any(checkpointed) {
        return Encoded::Whole(enc.forward_t(x, true));
    }
    let mut segments = Vec::new();
    // The running activation, the leaf its graph segment starts from, and whether anything
    // ran since that leaf.
    // With adapters, the patch embedding and the blocks before the first adapted one hold
    // only frozen weights: they run outside the graph, as in `forward_t`.
    let first = enc.first_graph_block().min(enc.depth());
    let mut h = if enc.peft().is_some() {
        tch::no_grad(|| {
            let mut h = enc.embed(x);
            for i in 0..first {
                h = enc.block_t(i, &h, true);
            }
            h
        })
    } else {
        enc.embed(x)
    };
    let mut start: Option<Tensor> = None;
    let mut ran = true;
    for i in first..enc.depth() {
        if !checkpointed(i) {
            h = enc.block_t(i, &h, true);
            ran = true;
            continue;
        }
        let input_requires_grad = h.requires_grad();
        if ran {
            segments.push(Segment::Graph {
                input: start.take(),
                output: h.shallow_clone(),
            });
        }
        let input = h.detach();
        // With the caller's grad mode, as the plain forward and the recompute run: the same
        // kernels, the same values. Its graph (one block's activations) goes at once; whether
        // it had one says whether the block has trainable weights.
        let out = enc.block_t(i, &input, true);
        let trainable = out.requires_grad();
        let out = out.detach();
        segments.push(Segment::Recompute {
            index: i,
            input,
            input_requires_grad,
        });
        h = out.set_requires_grad(input_requires_grad || trainable);
        start = Some(h.shallow_clone());
        ran = false;
    }
    let output = enc.neck(&h);
    segments.push(Segment::Graph {
        input: start,
        output: output.shallow_clone(),
    });
    Encoded::Segmented {
        output,
        segments,
        encoder: enc,
    }
}

/// Where the weighted loss terms of a step go.
enum Sink {
    /// Into one graph ([`step_loss`]).
    Graph { total: Tensor },
    /// Back-propagated one by one ([`step_backward`]), outside autocast when
    /// `autocast_device` is set; `total` sums their values.
    Eager {
        scale: f64,
        autocast_device: Option<Device>,
        checkpointing: ActivationCheckpointing,
        total: Tensor,
    },
}

impl Sink {
    /// The embeddings the heads (mask decoder, UNETR) read: the encoder's output itself for
    /// one graph, a detached copy collecting the heads' gradients otherwise.
    fn heads_input(&self, embeddings: &Tensor) -> Tensor {
        match self {
            Sink::Graph { .. } => embeddings.shallow_clone(),
            Sink::Eager { .. } => embeddings
                .detach()
                .set_requires_grad(embeddings.requires_grad()),
        }
    }

    /// Adds `weight × term` to the step's loss.
    fn add(&mut self, term: &Tensor, weight: f64) -> Result<(), TrainError> {
        match self {
            Sink::Graph { total } => {
                *total = &*total + term * weight;
                Ok(())
            }
            Sink::Eager {
                scale,
                autocast_device,
                total,
                ..
            } => {
                *total = &*total + term.detach().to_kind(Kind::Float) * weight;
                if term.requires_grad() {
                    let _pause = pause_autocast(*autocast_device)?;
                    (term * (weight * *scale)).backward();
                }
                Ok(())
            }
        }
    }

    /// How the encoder runs: whole for one graph, as `checkpointing` says otherwise.
    fn encode<'a>(&self, sam: &'a Sam, x: &Tensor) -> Encoded<'a> {
        match self {
            Sink::Graph { .. } => Encoded::Whole(sam.image_encoder.forward_training(x)),
            Sink::Eager { checkpointing, .. } => encode(sam, x, *checkpointing),
        }
    }

    /// Back-propagates the heads' gradient, collected on `heads_input`, through the encoder,
    /// calling `before` first.
    fn finish(
        &self,
        encoded: &Encoded<'_>,
        heads_input: &Tensor,
        before: Option<BeforeEncoderBackward<'_>>,
    ) -> Result<(), TrainError> {
        let Sink::Eager {
            autocast_device, ..
        } = self
        else {
            return Ok(());
        };
        let embeddings = encoded.output();
        if !embeddings.requires_grad() {
            return before.map_or(Ok(()), |f| f(None));
        }
        let grad = heads_input.grad();
        if !grad.defined() {
            return before.map_or(Ok(()), |f| f(None));
        }
        let (segments, enc) = match encoded {
            Encoded::Whole(_) => {
                if let Some(f) = before {
                    f(Some(embeddings))?;
                }
                let _pause = pause_autocast(*autocast_device)?;
                // d/dE Σ(E ⊙ G) = G exactly: the encoder receives the summed gradient of the
                // heads.
                (embeddings * grad).sum(Kind::Float).backward();
                return Ok(());
            }
            Encoded::Segmented {
                segments, encoder, ..
            } => (segments, *encoder),
        };
        if let Some(f) = before {
            // A graph over the same parameters in the forward's order, never back-propagated.
            let p = enc.config().patch_size;
            let probe = Tensor::zeros([1, 3, 2 * p, 2 * p], (Kind::Float, embeddings.device()));
            f(Some(&enc.forward(&probe)))?;
        }
        let mut grad = grad;
        for segment in segments.iter().rev() {
            let input = match segment {
                Segment::Graph { input, output } => {
                    if output.requires_grad() {
                        let _pause = pause_autocast(*autocast_device)?;
                        (output * &grad).sum(Kind::Float).backward();
                    }
                    match input {
                        Some(input) if input.requires_grad() => input.shallow_clone(),
                        _ => return Ok(()),
                    }
                }
                Segment::Recompute {
                    index,
                    input,
                    input_requires_grad,
                } => {
                    // Under the forward's autocast (still on here); no graph before `x`.
                    let x = input.detach().set_requires_grad(*input_requires_grad);
                    // FacT's dropout draws a new mask here: with FacT, a checkpointed
                    // block's gradient is that of another dropout draw than its forward's.
                    let y = enc.block_t(*index, &x, true);
                    if y.requires_grad() {
                        let _pause = pause_autocast(*autocast_device)?;
                        (&y * &grad).sum(Kind::Float).backward();
                    }
                    if !*input_requires_grad {
                        return Ok(());
                    }
                    x
                }
            };
            grad = input.grad();
            if !grad.defined() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The step's loss: the graph's root, or the sum of the values back-propagated.
    fn into_total(self) -> Tensor {
        match self {
            Sink::Graph { total } => total,
            Sink::Eager { total, .. } => total,
        }
    }
}

/// Autocast lifted for `device` while the guard lives; nothing without a device.
fn pause_autocast(device: Option<Device>) -> Result<Option<sam_torch::AutocastPause>, TrainError> {
    Ok(device.map(sam_torch::AutocastPause::new).transpose()?)
}

/// The recipe of one step; the weighted loss terms go to `sink`. Nothing is read back from
/// the device: prompts drawn on the host (from the label images) are sent without blocking,
/// corrective points are computed on the device, and the loss parts stay tensors.
fn run_step(inputs: &StepInputs<'_>, mut sink: Sink) -> Result<StepLoss, TrainError> {
    let StepInputs {
        sam,
        decoder,
        samples,
        recipe,
        seed,
        iteration,
        global_index,
        device,
        before_encoder_backward,
    } = *inputs;
    let (x, input_size) = model_input(sam, samples, device)?;
    let encoded = sink.encode(sam, &x);
    let heads = sink.heads_input(encoded.output());
    let (ph, pw) = (
        samples[0].labels.rows() as i64,
        samples[0].labels.cols() as i64,
    );
    let zero = || Tensor::zeros([], (Kind::Float, device));
    let (mut dice_sum, mut iou_sum) = (zero(), zero());
    let mut decoder_value = zero();
    let point_start = iteration % 2 == 0;
    let sampler = PromptSampler {
        box_distortion: recipe.box_distortion,
    };
    let transform = ResizeLongestSide {
        target_length: sam.img_size(),
    };
    let rounds = recipe.n_sub_iteration.max(1);
    let nb = samples.len() as f64;
    for (b, sample) in samples.iter().enumerate() {
        let mut rng =
            ChaCha8Rng::seed_from_u64(derive_seed(seed, &[1, iteration, global_index[b]]));
        let ids = choose_objects(sample, recipe.n_objects_per_batch, &mut rng);
        if ids.is_empty() {
            return Err(TrainError::Samples(format!(
                "a patch of {} at (top, left) {:?} has no objects (min_objects_per_patch must be ≥ 1)",
                sample.image_name, sample.origin
            )));
        }
        let n = ids.len() as i64;
        let target = object_masks(sample, &ids, device);
        let truth = target.squeeze_dim(1).gt(0.5);
        let emb = heads.narrow(0, b as i64, 1);
        // Point prompts in patch pixels: `[n, points, 2]` (x, y) and `[n, points]` labels.
        let mut points: Option<(Tensor, Tensor)> = None;
        let mut boxes: Option<Tensor> = None;
        if point_start {
            let mut coords = Vec::with_capacity(ids.len() * 2);
            for &id in &ids {
                let (px, py) = sampler
                    .positive_point(&sample.labels, id, &mut rng)
                    .ok_or_else(|| TrainError::Samples(format!("object {id} vanished")))?;
                coords.extend([px as f32, py as f32]);
            }
            let coords = sam_torch::upload(&Tensor::from_slice(&coords).view([n, 1, 2]), device);
            points = Some((coords, Tensor::ones([n, 1], (Kind::Int64, device))));
        } else {
            let mut v = Vec::with_capacity(ids.len() * 4);
            for &id in &ids {
                let bx = sampler
                    .jittered_box(&sample.labels, id, &mut rng)
                    .ok_or_else(|| TrainError::Samples(format!("object {id} vanished")))?;
                v.extend(bx.iter().map(|&c| c as f32));
            }
            let t = sam_torch::upload(&Tensor::from_slice(&v).view([n, 4]), device);
            boxes = Some(transform.apply_boxes(&t, (ph, pw)));
        }
        let mut mask_input: Option<Tensor> = None;
        for round in 0..rounds {
            let prompt = points
                .as_ref()
                .map(|(c, l)| (transform.apply_coords(c, (ph, pw)), l.shallow_clone()));
            let multimask = round == 0 && point_start;
            let (low_res_masks, iou_predictions) = sam.forward_prompts(
                &emb,
                prompt.as_ref().map(|(c, l)| (c, l)),
                boxes.as_ref(),
                mask_input.as_ref(),
                multimask,
            )?;
            let masks = sam.postprocess_masks(&low_res_masks, input_size, (ph, pw));
            let rl = round_loss(
                &masks.to_kind(Kind::Float),
                &iou_predictions,
                &target,
                recipe.focal_weight,
            );
            dice_sum = dice_sum + &rl.dice;
            iou_sum = iou_sum + &rl.iou_mse;
            // The step's loss is the mean over images of the mean over rounds.
            sink.add(&rl.total, 1.0 / (rounds as f64 * nb))?;
            if round + 1 == rounds {
                break;
            }
            // The corrective points come from each object's best mask.
            let best_idx = rl.best.unsqueeze(1);
            let best_masks = tch::no_grad(|| {
                masks
                    .gather(
                        1,
                        &best_idx.view([n, 1, 1, 1]).expand([n, 1, ph, pw], false),
                        false,
                    )
                    .squeeze_dim(1)
                    .gt(0.0)
            });
            let draws: Vec<f64> = (0..2 * ids.len()).map(|_| rng.gen::<f64>()).collect();
            let draws = sam_torch::upload(&Tensor::from_slice(&draws).view([n, 2]), device);
            let new = corrective_points(&truth, &best_masks, &draws);
            points = Some(match points.take() {
                Some((c, l)) => (
                    Tensor::cat(&[c, new.coords], 1),
                    Tensor::cat(&[l, new.labels], 1),
                ),
                None => (new.coords, new.labels),
            });
            // Mask input decision: the same for every rank (derived from the iteration).
            let mut mask_rng =
                ChaCha8Rng::seed_from_u64(derive_seed(seed, &[2, iteration, round as u64]));
            mask_input = (mask_rng.gen::<f64>() < recipe.mask_prob).then(|| {
                let k = low_res_masks.size();
                low_res_masks
                    .gather(
                        1,
                        &best_idx
                            .view([n, 1, 1, 1])
                            .expand([n, 1, k[2], k[3]], false),
                        false,
                    )
                    .detach()
            });
        }
    }
    if let Some(dec) = decoder {
        let mut targets = Vec::with_capacity(samples.len());
        for s in samples {
            let t = s.targets.as_ref().ok_or_else(|| {
                TrainError::Samples("the decoder is on but samples carry no AIS targets".into())
            })?;
            targets.push(Tensor::from_slice(&t.data).view([1, 3, ph, pw]));
        }
        let target = sam_torch::upload(&Tensor::cat(&targets, 0), device);
        let out = dec.forward_t(&heads, true)?;
        let out = dec
            .postprocess_masks(&out, input_size, (ph, pw))
            .to_kind(Kind::Float);
        // Per image, then the mean: a distributed run averages the same quantity.
        let mut dl = zero();
        for b in 0..samples.len() as i64 {
            dl = dl + distance_loss(&out.narrow(0, b, 1), &target.narrow(0, b, 1));
        }
        let dl = dl / nb;
        decoder_value = dl.detach();
        sink.add(&dl, 1.0)?;
    }
    sink.finish(&encoded, &heads, before_encoder_backward)?;
    let denom = nb * rounds as f64;
    let parts = Tensor::stack(&[dice_sum / denom, iou_sum / denom, decoder_value], 0);
    Ok(StepLoss {
        total: sink.into_total(),
        parts,
    })
}
