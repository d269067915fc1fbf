//! A rough wall-time estimate of a training run from its size.

use crate::cluster::MAX_WALL_TIME_SECONDS;
use crate::experiment::ExperimentConfig;
use crate::training::ActivationCheckpointing;

/// Raw annotated images assumed when the training folder cannot be counted ("a few dozen").
pub const ASSUMED_RAW_IMAGES: u64 = 40;

/// A rough estimate of a run's wall time. The per-patch speeds are order-of-magnitude values
/// of the accelerator presets; the estimate exists to catch runs that cannot finish in a
/// SLURM job, not to plan to the minute.
#[derive(Debug, Clone, PartialEq)]
pub struct WallTimeEstimate {
    /// Estimated hours from start to the last epoch, validation included.
    pub hours: f64,
    /// Training patches each process handles.
    pub samples_per_process: u64,
    /// Seconds per patch assumed.
    pub seconds_per_sample: f64,
    /// Training images the estimate is based on.
    pub train_images: u64,
    /// Whether `train_images` was counted in the folder (else assumed).
    pub images_counted: bool,
}

impl WallTimeEstimate {
    /// Whether the run may not finish within the 56 h SLURM limit.
    pub fn exceeds_limit(&self) -> bool {
        self.hours * 3600.0 > MAX_WALL_TIME_SECONDS as f64
    }
}

/// Fraction of a training step spent in the image encoder (the rest scales with the prompt
/// sub-iterations).
const ENCODER_SHARE: f64 = 0.6;
/// Validation overhead on top of training.
const VALIDATION_OVERHEAD: f64 = 0.1;

impl ExperimentConfig {
    /// Estimate the wall time. `train_images` is the number of images in the training folder
    /// when known; else it is assumed from `augmentation` (40 raw images × copies).
    pub fn estimate_wall_time(&self, train_images: Option<u64>) -> WallTimeEstimate {
        let preset = self.hardware.accelerator.preset();
        let t = &self.training;
        let world = u64::from(self.distributed.world_size().max(1));
        let aug = &self.augmentation;
        let assumed = ASSUMED_RAW_IMAGES
            * (u64::from(aug.copies_per_image) + u64::from(aug.include_original));
        let images = train_images.unwrap_or(assumed);

        let samples_per_process = match (t.iterations, t.epochs) {
            (Some(it), _) => it
                .saturating_mul(u64::from(t.batch_size))
                .saturating_mul(u64::from(t.gradient_accumulation.max(1))),
            (None, epochs) => {
                let per_epoch = self.data.samples_per_epoch.unwrap_or(images.max(100));
                let total = per_epoch.saturating_mul(u64::from(epochs.unwrap_or(0)));
                total.div_ceil(world)
            }
        };

        // A patch fed at its own size (`model.encoder_input: native`) costs the encoder its
        // share of tokens.
        let arch = self.model.resolved_architecture();
        let side = self.model.encoder_input.input_side(
            self.data.patch_shape,
            arch.image_size,
            arch.patch_size,
        );
        let token_share = (f64::from(side) / f64::from(arch.image_size.max(1))).powi(2);
        let mut seconds = preset.seconds_per_sample(self.model.backbone)
            * (ENCODER_SHARE * token_share
                + (1.0 - ENCODER_SHARE) * f64::from(t.n_sub_iteration) / 8.0);
        // Recomputing checkpointed blocks adds their forward (a third of forward + backward)
        // to the encoder's share.
        let recomputed = match t.activation_checkpointing {
            ActivationCheckpointing::None => 0.0,
            ActivationCheckpointing::Global => {
                arch.encoder_global_attn_indexes.len() as f64 / f64::from(arch.encoder_depth.max(1))
            }
            ActivationCheckpointing::All => 1.0,
        };
        seconds *= 1.0 + ENCODER_SHARE * token_share * recomputed / 3.0;
        if self.model.architecture.is_some() {
            // Encoder cost scales with width² × depth × tokens.
            let base = self.model.backbone.architecture();
            let arch = self.model.resolved_architecture();
            let cost = |a: &crate::model::Architecture| {
                let tokens = (f64::from(a.image_size) / f64::from(a.patch_size.max(1))).powi(2);
                f64::from(a.encoder_embed_dim).powi(2) * f64::from(a.encoder_depth) * tokens
            };
            let ratio = cost(&arch) / cost(&base).max(1.0);
            if ratio.is_finite() {
                seconds *= ratio.max(1e-3);
            }
        }
        let hours = samples_per_process as f64 * seconds * (1.0 + VALIDATION_OVERHEAD) / 3600.0;
        WallTimeEstimate {
            hours,
            samples_per_process,
            seconds_per_sample: seconds,
            train_images: images,
            images_counted: train_images.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::minimal;

    #[test]
    fn a_native_encoder_input_costs_the_encoder_its_share_of_tokens() {
        let mut c = minimal();
        c.training.iterations = Some(1000);
        let full = c.estimate_wall_time(Some(400)).seconds_per_sample;
        c.model.encoder_input = crate::EncoderInput::Native;
        c.data.patch_shape = [512, 512];
        let native = c.estimate_wall_time(Some(400)).seconds_per_sample;
        let want = full * (super::ENCODER_SHARE / 4.0 + (1.0 - super::ENCODER_SHARE));
        assert!((native - want).abs() < 1e-12, "{native} vs {want}");
    }

    #[test]
    fn estimate_follows_the_run_size() {
        let mut c = minimal();
        c.training.iterations = Some(10_000);
        c.training.batch_size = 2;
        // A100 vit_b: 0.30 s per patch at 8 sub-iterations, +10 % validation.
        let e = c.estimate_wall_time(Some(400));
        assert_eq!(e.samples_per_process, 20_000);
        let want = 20_000.0 * 0.30 * 1.1 / 3600.0;
        assert!((e.hours - want).abs() < 1e-9, "{} vs {want}", e.hours);
        assert!(!e.exceeds_limit());

        // Epochs: 400 images × 1000 epochs over 8 processes.
        c.training.iterations = None;
        c.training.epochs = Some(1000);
        c.distributed.nodes = 2;
        c.distributed.gpus_per_node = 4;
        let e = c.estimate_wall_time(Some(400));
        assert_eq!(e.samples_per_process, 50_000);
        let want = 50_000.0 * 0.30 * 1.1 / 3600.0;
        assert!((e.hours - want).abs() < 1e-9);
        assert!(!e.exceeds_limit());

        // One process, 2000 epochs: 800 000 patches × 0.33 s ≈ 73 h.
        c.distributed.nodes = 1;
        c.distributed.gpus_per_node = 1;
        c.training.epochs = Some(2000);
        let e = c.estimate_wall_time(Some(400));
        assert!((e.hours - 800_000.0 * 0.30 * 1.1 / 3600.0).abs() < 1e-9);
        assert!(e.exceeds_limit());
    }

    #[test]
    fn estimate_counts_micro_batches_and_recomputation() {
        let mut c = minimal();
        c.training.iterations = Some(1_000);
        c.training.batch_size = 2;
        c.training.gradient_accumulation = 4;
        // Each optimiser step trains 2 × 4 patches per process.
        let e = c.estimate_wall_time(Some(400));
        assert_eq!(e.samples_per_process, 8_000);
        assert!((e.seconds_per_sample - 0.30).abs() < 1e-12);
        // Recomputing every block adds one encoder forward: a third of its 60 %.
        c.training.activation_checkpointing = crate::ActivationCheckpointing::All;
        let all = c.estimate_wall_time(Some(400)).seconds_per_sample;
        assert!((all - 0.30 * 1.2).abs() < 1e-12, "{all}");
        // vit_b has 4 global blocks of 12.
        c.training.activation_checkpointing = crate::ActivationCheckpointing::Global;
        let global = c.estimate_wall_time(Some(400)).seconds_per_sample;
        assert!(
            (global - 0.30 * (1.0 + 0.6 / 9.0)).abs() < 1e-12,
            "{global}"
        );
    }
}
