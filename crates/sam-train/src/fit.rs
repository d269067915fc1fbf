//! How large a training step fits in memory: the probe that runs real steps of a config at a
//! given batch size and objects per image ([`FitProbe`]), and the search over those settings
//! ([`search`]) that `sam-train fit` runs, one probe per child process.
//!
//! The search is independent of how a try is measured: it calls a measuring function with a
//! [`FitSetting`] and classifies the answer against the budget, so that it can be tested with
//! a fake measurer.

use std::collections::BTreeMap;
use std::time::Instant;

use sam_config::{ExperimentConfig, Precision};
use sam_data::{ais_targets, LabelImage, Plane, TrainingSample};
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::optim::AdamW;
use crate::scaler::{LossScaler, ScalerState};
use crate::setup::{native_input_size, new_model};
use crate::step::{autocast_kind, step_backward, RecipeConfig, StepInputs, StepPrecision};
use crate::trainer::optimizer_for;
use crate::TrainError;
use sam_model::SamModel;

/// What a step holds in memory besides the model: images per step and objects per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FitSetting {
    /// Images (patches) per step (`training.batch_size`).
    pub batch_size: u32,
    /// Objects prompted per image (`training.n_objects_per_batch`).
    pub objects: u32,
}

impl std::fmt::Display for FitSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch_size {} × {} objects",
            self.batch_size, self.objects
        )
    }
}

/// The settings a config trains with.
pub fn config_setting(cfg: &ExperimentConfig) -> FitSetting {
    FitSetting {
        batch_size: cfg.training.batch_size.max(1),
        objects: cfg.training.n_objects_per_batch.max(1),
    }
}

/// What measuring one setting found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Measurement {
    /// The steps ran; the peak memory they needed, in bytes.
    Ran {
        /// Peak bytes (CPU: resident set of the process; CUDA: the caching allocator's peak
        /// reservation).
        peak_bytes: u64,
    },
    /// The steps ran out of memory (the allocator refused, or the try was stopped when it
    /// passed the budget); the peak seen before, when known.
    OutOfMemory {
        /// Peak bytes seen before the try stopped, when known.
        peak_bytes: Option<u64>,
    },
    /// The try failed for another reason (the message says which).
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// How a try compares with the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It ran within the budget.
    Fits,
    /// It ran out of memory or needed more than the budget.
    Exceeds,
    /// It failed for another reason (counted as not fitting).
    Failed,
}

/// One measured setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitTry {
    /// What was tried.
    pub setting: FitSetting,
    /// What the measurement found.
    pub measurement: Measurement,
    /// Against the budget.
    pub verdict: Verdict,
    /// Wall time of the try in seconds.
    pub seconds: f64,
}

impl FitTry {
    /// The measured peak in bytes, when known.
    pub fn peak_bytes(&self) -> Option<u64> {
        match self.measurement {
            Measurement::Ran { peak_bytes } => Some(peak_bytes),
            Measurement::OutOfMemory { peak_bytes } => peak_bytes,
            Measurement::Failed { .. } => None,
        }
    }
}

/// A setting that [`search`] varies, the other staying at the config's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Objects per image, at the config's batch size.
    Objects,
    /// Images per step, at the config's objects per image.
    BatchSize,
}

impl std::fmt::Display for Dimension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dimension::Objects => "objects per image",
            Dimension::BatchSize => "batch size",
        })
    }
}

/// Bounds of a [`search`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchLimits {
    /// Bytes a try may use.
    pub budget_bytes: u64,
    /// Most tries in all (each try is one measurement; repeated settings are not measured
    /// twice).
    pub max_tries: usize,
    /// Largest batch size tried.
    pub max_batch_size: u32,
    /// Largest objects per image tried.
    pub max_objects: u32,
    /// The dimensions searched, in this order.
    pub dimensions: Vec<Dimension>,
}

/// The answer along one dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DimensionResult {
    /// What was varied.
    pub dimension: Dimension,
    /// The largest value that fits (the other setting at the config's value); `None` when not
    /// even 1 fits.
    pub largest: Option<u32>,
    /// Whether `largest` is the value's upper limit (`--max-batch-size`, `--max-objects`):
    /// larger values may fit too.
    pub at_limit: bool,
    /// Whether the search stopped at `--max-tries` before it was settled: `largest` is then a
    /// lower bound.
    pub unsettled: bool,
}

/// What [`search`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// The setting the search started from (the config's).
    pub start: FitSetting,
    /// The budget in bytes.
    pub budget_bytes: u64,
    /// Every try in the order they ran.
    pub tries: Vec<FitTry>,
    /// One answer per searched dimension.
    pub results: Vec<DimensionResult>,
}

impl FitReport {
    /// The try of `setting`, when it was measured.
    pub fn try_of(&self, setting: FitSetting) -> Option<&FitTry> {
        self.tries.iter().find(|t| t.setting == setting)
    }
}

/// Classifies a measurement against the budget.
pub fn verdict(measurement: &Measurement, budget_bytes: u64) -> Verdict {
    match measurement {
        Measurement::Ran { peak_bytes } if *peak_bytes <= budget_bytes => Verdict::Fits,
        Measurement::Ran { .. } | Measurement::OutOfMemory { .. } => Verdict::Exceeds,
        Measurement::Failed { .. } => Verdict::Failed,
    }
}

/// Searches, for each of `limits.dimensions` in turn, the largest value that fits in the
/// budget while the other setting stays at `start`'s: from `start`'s value it doubles until a
/// try exceeds the budget or fails (or halves while they do), then bisects between the largest
/// fitting and the smallest failing value. Memory is taken to grow with both settings, so a
/// failure ends the growth. `measure` runs one try (wall time is taken around it);
/// `on_try` sees each try as it ends (progress output). Settings already measured are not
/// measured again; after `limits.max_tries` tries the search stops and marks the open
/// dimensions unsettled.
pub fn search(
    start: FitSetting,
    limits: &SearchLimits,
    mut measure: impl FnMut(FitSetting) -> Measurement,
    mut on_try: impl FnMut(&FitTry),
) -> FitReport {
    let mut tries: Vec<FitTry> = Vec::new();
    let mut known: BTreeMap<FitSetting, Verdict> = BTreeMap::new();
    let mut results = Vec::new();
    for &dimension in &limits.dimensions {
        let (first, limit) = match dimension {
            Dimension::Objects => (start.objects, limits.max_objects),
            Dimension::BatchSize => (start.batch_size, limits.max_batch_size),
        };
        let limit = limit.max(1);
        let setting_of = |v: u32| match dimension {
            Dimension::Objects => FitSetting {
                objects: v,
                ..start
            },
            Dimension::BatchSize => FitSetting {
                batch_size: v,
                ..start
            },
        };
        // `fits(v)`: None when the tries are used up.
        let mut fits = |v: u32| -> Option<bool> {
            let setting = setting_of(v);
            if let Some(&v) = known.get(&setting) {
                return Some(v == Verdict::Fits);
            }
            if tries.len() >= limits.max_tries {
                return None;
            }
            let started = Instant::now();
            let measurement = measure(setting);
            let verdict = verdict(&measurement, limits.budget_bytes);
            let t = FitTry {
                setting,
                measurement,
                verdict,
                seconds: started.elapsed().as_secs_f64(),
            };
            on_try(&t);
            tries.push(t);
            known.insert(setting, verdict);
            Some(verdict == Verdict::Fits)
        };
        // Invariant: `lo` fits (0: nothing known to fit), `hi` does not (None: none known).
        let mut lo = 0u32;
        let mut hi: Option<u32> = None;
        let mut unsettled = false;
        let mut v = first.clamp(1, limit);
        // Grow (or shrink) until the boundary is bracketed.
        loop {
            match fits(v) {
                None => {
                    unsettled = true;
                    break;
                }
                Some(true) => {
                    lo = v;
                    if hi.is_some() || v >= limit {
                        break;
                    }
                    v = v.saturating_mul(2).min(limit);
                }
                Some(false) => {
                    hi = Some(v);
                    if lo > 0 || v <= 1 {
                        break;
                    }
                    v /= 2;
                }
            }
        }
        // Bisect.
        while let (false, Some(h)) = (unsettled, hi) {
            if h - lo <= 1 {
                break;
            }
            let mid = lo + (h - lo) / 2;
            match fits(mid.max(1)) {
                None => unsettled = true,
                Some(true) => lo = mid,
                Some(false) => hi = Some(mid),
            }
        }
        results.push(DimensionResult {
            dimension,
            largest: (lo > 0).then_some(lo),
            at_limit: lo >= limit,
            unsettled,
        });
    }
    FitReport {
        start,
        budget_bytes: limits.budget_bytes,
        tries,
        results,
    }
}

/// A config's model, optimiser and a synthetic batch of its patch shape, ready to run
/// training steps of one [`FitSetting`]: the measurement behind `sam-train fit`.
///
/// The model is built from the config's architecture with random weights (the initial
/// checkpoint is not read: the weights take the same memory); `model.freeze`, the precision,
/// the prompting recipe and gradient clipping are the config's. The batch is `batch_size`
/// patches of `data.patch_shape`, each with exactly `objects` objects (a grid of squares), and
/// the instance decoder's targets when the model has one.
pub struct FitProbe {
    cfg: ExperimentConfig,
    device: Device,
    model: SamModel,
    optim: AdamW,
    samples: Vec<TrainingSample>,
    recipe: RecipeConfig,
    precision: StepPrecision,
    trainable: i64,
}

impl std::fmt::Debug for FitProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FitProbe")
            .field("device", &self.device)
            .field("samples", &self.samples.len())
            .field("recipe", &self.recipe)
            .field("trainable", &self.trainable)
            .finish()
    }
}

/// The most objects a synthetic patch of `rows × cols` holds (squares of at least 3 px with a
/// 1 px gap, on a 4 px grid).
pub fn max_synthetic_objects(rows: u32, cols: u32) -> u32 {
    (rows / 4).saturating_mul(cols / 4)
}

/// A `rows × cols` label image with exactly `objects` square objects (ids 1..=objects) on a
/// grid, each as large as its cell allows with a 1 px gap; `None` when they do not fit
/// ([`max_synthetic_objects`]).
pub fn synthetic_labels(rows: usize, cols: usize, objects: usize) -> Option<LabelImage> {
    if objects == 0 || objects > (rows / 4) * (cols / 4) {
        return None;
    }
    // The fewest grid columns whose rows fit the patch, with cells as square as can be.
    let mut per_row =
        ((objects as f64 * cols as f64 / rows as f64).sqrt().ceil() as usize).clamp(1, objects);
    while objects.div_ceil(per_row) > rows / 4 || cols / per_row < 4 {
        per_row += 1;
        if per_row > cols / 4 {
            return None;
        }
    }
    let n_rows = objects.div_ceil(per_row);
    let (ch, cw) = (rows / n_rows, cols / per_row);
    let mut data = vec![0u32; rows * cols];
    for k in 0..objects {
        let (r0, c0) = ((k / per_row) * ch, (k % per_row) * cw);
        for r in r0 + 1..r0 + ch.max(2) - 1 {
            for c in c0 + 1..c0 + cw.max(2) - 1 {
                data[r * cols + c] = k as u32 + 1;
            }
        }
    }
    Plane::from_vec(rows, cols, data).ok()
}

impl FitProbe {
    /// Builds the model, its optimiser and the batch of `setting` on `device`.
    ///
    /// # Errors
    /// [`TrainError::Usage`] when `setting.objects` do not fit in a patch of the config's
    /// shape (see [`max_synthetic_objects`]); model errors.
    pub fn new(
        cfg: &ExperimentConfig,
        setting: FitSetting,
        device: Device,
    ) -> Result<Self, TrainError> {
        let [rows, cols] = cfg.data.patch_shape;
        let labels = synthetic_labels(rows as usize, cols as usize, setting.objects as usize)
            .ok_or_else(|| {
                TrainError::Usage(format!(
                    "{} objects do not fit in a synthetic {rows}×{cols} patch (at most {})",
                    setting.objects,
                    max_synthetic_objects(rows, cols)
                ))
            })?;
        let mut model =
            sam_model::seeded(cfg.seed as i64 & i64::MAX, || new_model(&cfg.model, device))?;
        if let Some(side) = native_input_size(cfg) {
            model.set_input_size(side)?;
        }
        let (optim, trainable) = optimizer_for(cfg, &model);
        let with_targets = model.has_decoder();
        let samples = (0..setting.batch_size as usize)
            .map(|i| {
                // A smooth image: objects brighter than the background, a ramp across.
                let image = labels
                    .as_slice()
                    .iter()
                    .enumerate()
                    .map(|(j, &l)| {
                        let ramp = (j % cols as usize) as f32 / cols as f32;
                        0.2 + 0.1 * ramp + if l > 0 { 0.5 } else { 0.0 }
                    })
                    .collect();
                TrainingSample {
                    image_name: format!("synthetic-{i}"),
                    origin: (0, 0),
                    image,
                    labels: labels.clone(),
                    targets: with_targets
                        .then(|| ais_targets(&labels, cfg.data.min_object_size as usize)),
                }
            })
            .collect();
        let t = &cfg.training;
        let recipe = RecipeConfig {
            n_objects_per_batch: setting.objects as usize,
            ..RecipeConfig::from_training(t)
        };
        let precision = StepPrecision {
            autocast: autocast_kind(t.precision),
            loss_scale: LossScaler::new(t.precision == Precision::Fp16, ScalerState::default())
                .scale(),
            activation_checkpointing: t.activation_checkpointing,
        };
        Ok(Self {
            cfg: cfg.clone(),
            device,
            model,
            optim,
            samples,
            recipe,
            precision,
            trainable,
        })
    }

    /// Trainable parameter values of the model.
    pub fn trainable_parameters(&self) -> i64 {
        self.trainable
    }

    /// Runs `steps` training steps as the trainer does (zero the gradients, forward and
    /// backward round by round, clip, AdamW update); step `i` is iteration `i`, so two steps
    /// run both start prompts (points, then boxes) and the second runs with the optimiser's
    /// state allocated. Returns the last step's loss.
    pub fn run(&mut self, steps: usize) -> Result<f64, TrainError> {
        let refs: Vec<&TrainingSample> = self.samples.iter().collect();
        let index: Vec<u64> = (0..refs.len() as u64).collect();
        let mut last = f64::NAN;
        for iteration in 0..steps as u64 {
            self.optim.zero_grad()?;
            let inputs = StepInputs {
                sam: self.model.sam(),
                decoder: self.model.decoder(),
                samples: &refs,
                recipe: &self.recipe,
                seed: self.cfg.seed,
                iteration,
                global_index: &index,
                device: self.device,
                before_encoder_backward: None,
            };
            let loss = step_backward(&inputs, self.precision)?;
            if self.precision.loss_scale != 1.0 {
                self.optim.scale_grads(1.0 / self.precision.loss_scale)?;
            }
            if let Some(max) = self.cfg.training.grad_clip_norm {
                let _norm = self.optim.clip_grad_norm(max)?;
            }
            self.optim.step()?;
            last = loss.read()?.total;
        }
        if let Device::Cuda(index) = self.device {
            sam_torch::cuda_synchronize(index)?;
        }
        Ok(last)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::Tensor;

    /// The memory estimate (sam-config) counts the transient attention of one chunk of the
    /// size the encoder (sam-model) really runs.
    #[test]
    fn the_estimate_and_the_encoder_chunk_attention_alike() {
        assert_eq!(
            sam_config::ATTENTION_CHUNK_ENTRIES,
            sam_model::ATTENTION_CHUNK_ENTRIES
        );
    }

    fn limits(budget: u64, dimensions: Vec<Dimension>) -> SearchLimits {
        SearchLimits {
            budget_bytes: budget,
            max_tries: 40,
            max_batch_size: 64,
            max_objects: 64,
            dimensions,
        }
    }

    /// Peak = 100 + 10 × batch × objects bytes.
    fn linear(s: FitSetting) -> Measurement {
        Measurement::Ran {
            peak_bytes: 100 + 10 * u64::from(s.batch_size) * u64::from(s.objects),
        }
    }

    #[test]
    fn search_finds_the_largest_setting_that_fits() {
        let start = FitSetting {
            batch_size: 2,
            objects: 3,
        };
        // Budget 100 + 10 × 2 × 11 = 320: objects ≤ 11 at batch 2; batch ≤ 7 at 3 objects.
        let mut seen = Vec::new();
        let r = search(
            start,
            &limits(320, vec![Dimension::Objects, Dimension::BatchSize]),
            linear,
            |t| seen.push(t.setting),
        );
        assert_eq!(r.results.len(), 2);
        assert_eq!(r.results[0].largest, Some(11));
        assert_eq!(r.results[1].largest, Some(7));
        assert!(r.results.iter().all(|d| !d.at_limit && !d.unsettled));
        // Every try was reported, none twice, and the start was measured once.
        assert_eq!(seen, r.tries.iter().map(|t| t.setting).collect::<Vec<_>>());
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len());
        // Objects: 3, 6, 12 (too many), 9, 10, 11; batch: 4, 8 (too many), 6, 7.
        let objects: Vec<u32> = r.tries[..6].iter().map(|t| t.setting.objects).collect();
        assert_eq!(objects, [3, 6, 12, 9, 10, 11]);
        let batches: Vec<u32> = r.tries[6..].iter().map(|t| t.setting.batch_size).collect();
        assert_eq!(batches, [4, 8, 6, 7]);
        for t in &r.tries {
            let want = if t.peak_bytes().unwrap() <= 320 {
                Verdict::Fits
            } else {
                Verdict::Exceeds
            };
            assert_eq!(t.verdict, want, "{}", t.setting);
        }
    }

    #[test]
    fn search_shrinks_below_a_start_that_does_not_fit() {
        let start = FitSetting {
            batch_size: 8,
            objects: 4,
        };
        // 100 + 10 × b × 4 ≤ 230: b ≤ 3.
        let r = search(
            start,
            &limits(230, vec![Dimension::BatchSize]),
            linear,
            |_| {},
        );
        assert_eq!(r.results[0].largest, Some(3));
        let b: Vec<u32> = r.tries.iter().map(|t| t.setting.batch_size).collect();
        assert_eq!(b, [8, 4, 2, 3]);
        // Nothing fits: not even batch 1.
        let r = search(
            start,
            &limits(50, vec![Dimension::BatchSize]),
            linear,
            |_| {},
        );
        assert_eq!(r.results[0].largest, None);
        let b: Vec<u32> = r.tries.iter().map(|t| t.setting.batch_size).collect();
        assert_eq!(b, [8, 4, 2, 1]);
    }

    #[test]
    fn failed_and_out_of_memory_tries_count_as_not_fitting() {
        let start = FitSetting {
            batch_size: 1,
            objects: 1,
        };
        // Batch 5 and more fail (a crash), 3 and 4 run out of memory, 1 and 2 fit.
        let measure = |s: FitSetting| match s.batch_size {
            1 | 2 => Measurement::Ran { peak_bytes: 10 },
            3 | 4 => Measurement::OutOfMemory { peak_bytes: None },
            _ => Measurement::Failed {
                reason: "killed".into(),
            },
        };
        let r = search(
            start,
            &limits(1000, vec![Dimension::BatchSize]),
            measure,
            |_| {},
        );
        assert_eq!(r.results[0].largest, Some(2));
        let verdicts: Vec<(u32, Verdict)> = r
            .tries
            .iter()
            .map(|t| (t.setting.batch_size, t.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                (1, Verdict::Fits),
                (2, Verdict::Fits),
                (4, Verdict::Exceeds),
                (3, Verdict::Exceeds)
            ]
        );
        let measure = |s: FitSetting| {
            if s.batch_size >= 8 {
                Measurement::Failed {
                    reason: "crash".into(),
                }
            } else {
                Measurement::Ran { peak_bytes: 10 }
            }
        };
        let r = search(
            start,
            &limits(1000, vec![Dimension::BatchSize]),
            measure,
            |_| {},
        );
        assert_eq!(r.results[0].largest, Some(7));
        assert_eq!(
            r.try_of(FitSetting {
                batch_size: 8,
                objects: 1
            })
            .unwrap()
            .verdict,
            Verdict::Failed
        );
    }

    #[test]
    fn search_stops_at_the_limits_and_the_tries() {
        let start = FitSetting {
            batch_size: 1,
            objects: 1,
        };
        // Everything fits: batch grows to the limit, which is reported as such.
        let mut l = limits(u64::MAX, vec![Dimension::BatchSize]);
        l.max_batch_size = 12;
        let r = search(start, &l, linear, |_| {});
        assert_eq!(r.results[0].largest, Some(12));
        assert!(r.results[0].at_limit && !r.results[0].unsettled);
        let b: Vec<u32> = r.tries.iter().map(|t| t.setting.batch_size).collect();
        assert_eq!(b, [1, 2, 4, 8, 12]);
        // Three tries only: 1, 2, 4 fit, the answer 4 is a lower bound.
        l.max_tries = 3;
        let r = search(start, &l, linear, |_| {});
        assert_eq!(r.tries.len(), 3);
        assert_eq!(r.results[0].largest, Some(4));
        assert!(r.results[0].unsettled && !r.results[0].at_limit);
    }

    #[test]
    fn synthetic_labels_hold_exactly_the_objects_asked_for() {
        for (rows, cols, n) in [
            (64, 64, 1),
            (64, 64, 3),
            (64, 64, 256),
            (512, 512, 25),
            (40, 96, 17),
        ] {
            let labels = synthetic_labels(rows, cols, n).unwrap();
            let sizes = sam_data::label_sizes(&labels);
            // Index 0 is the background; every id 1..=n is present with at least 4 pixels.
            assert_eq!(sizes.len(), n + 1, "{rows}×{cols} {n}");
            assert!(
                sizes[1..].iter().all(|&s| s >= 4),
                "{rows}×{cols} {n}: {sizes:?}"
            );
        }
        assert_eq!(max_synthetic_objects(64, 64), 256);
        assert!(synthetic_labels(64, 64, 257).is_none());
        assert!(synthetic_labels(64, 64, 0).is_none());
    }

    /// The analytic parameter counts of `sam_config::parameter_counts` (behind the memory
    /// estimate of `validate`) against the models this crate builds.
    #[test]
    fn analytic_parameter_counts_match_the_built_models() {
        let mut cfg: ExperimentConfig = sam_testkit::ConfigBuilder::named("count")
            .tiny_cpu_training()
            .parse()
            .unwrap();
        for (decoder, dim) in [(false, 32), (true, 32), (true, 64)] {
            cfg.model.with_segmentation_decoder = decoder;
            if let Some(a) = cfg.model.architecture.as_mut() {
                a.prompt_embed_dim = Some(dim);
                a.encoder_embed_dim = Some(48);
            }
            let model = new_model(&cfg.model, Device::Cpu).unwrap();
            let mut built = [0u64; 4];
            for (name, var) in model.named_variables() {
                if !var.requires_grad() {
                    continue;
                }
                let part = ["image_encoder", "prompt_encoder", "mask_decoder", "decoder"]
                    .iter()
                    .position(|p| name.starts_with(&format!("{p}.")))
                    .unwrap();
                built[part] += var.numel() as u64;
            }
            let want = sam_config::parameter_counts(&cfg.model.resolved_architecture());
            assert_eq!(built[..3], want[..3], "decoder {decoder}, width {dim}");
            if decoder {
                // Convolution weights only: biases and norms add a few per cent.
                let ratio = built[3] as f64 / want[3] as f64;
                assert!(
                    (1.0..1.1).contains(&ratio),
                    "UNETR: built {} vs {}",
                    built[3],
                    want[3]
                );
            } else {
                assert_eq!(built[3], 0);
            }
        }
    }

    #[test]
    fn probe_runs_training_steps_and_refuses_objects_that_do_not_fit() {
        let cfg: ExperimentConfig = sam_testkit::ConfigBuilder::named("probe")
            .tiny_cpu_training()
            .with_decoder(true)
            .parse()
            .unwrap();
        let setting = FitSetting {
            batch_size: 2,
            objects: 5,
        };
        let mut probe = FitProbe::new(&cfg, setting, Device::Cpu).unwrap();
        assert_eq!(probe.samples.len(), 2);
        assert_eq!(probe.recipe.n_objects_per_batch, 5);
        assert!(probe.samples.iter().all(|s| s.targets.is_some()));
        let before: Vec<Tensor> = probe
            .optim
            .variables()
            .map(|(_, v)| v.detach().copy())
            .collect();
        let loss = probe.run(2).unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{loss}");
        // The optimiser stepped: every trained tensor moved.
        let moved = probe
            .optim
            .variables()
            .zip(&before)
            .filter(|((_, v), b)| v.detach().ne_tensor(b).any().int64_value(&[]) == 1)
            .count();
        assert_eq!(moved, before.len());
        // A 64² patch holds at most 256 objects.
        let err = FitProbe::new(
            &cfg,
            FitSetting {
                batch_size: 1,
                objects: 257,
            },
            Device::Cpu,
        )
        .unwrap_err();
        assert!(err.to_string().contains("at most 256"), "{err}");
    }
}
