//! Rough estimates of a training run from its size: wall time ([`WallTimeEstimate`]) and peak
//! memory of a training step ([`MemoryEstimate`]).

use crate::cluster::MAX_WALL_TIME_SECONDS;
use crate::experiment::ExperimentConfig;
use crate::model::Architecture;
use crate::training::{ActivationCheckpointing, Device, Precision};

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

/// Where a step's memory is counted, as `sam-train fit` measures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// A GPU: bytes the CUDA caching allocator reserves (the CUDA context, some hundreds of
    /// MiB, comes on top).
    Gpu,
    /// The CPU: the process's resident set, libtorch's runtime included.
    Cpu,
}

/// The most entries (batch × heads × query rows × keys) one attention call of SAM's image
/// encoder computes at once: larger attentions run over chunks of query rows (vit_b's global
/// blocks at 1024 px). The memory estimate counts the transient attention tensors of one
/// chunk; sam-model's encoder uses the same value (a test of sam-train checks that they agree).
pub const ATTENTION_CHUNK_ENTRIES: i64 = 1 << 25;

/// An analytic estimate of the peak memory of one training step of a config (one process),
/// from the architecture, precision, batch size, objects per image and patch shape. The
/// constants are calibrated against the peaks `sam-train fit` measures (docs/fit.md gives the
/// calibration and the error to expect).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEstimate {
    /// Estimated peak bytes: the sum of the parts below.
    pub peak_bytes: u64,
    /// Where the bytes are counted.
    pub kind: MemoryKind,
    /// Parameter values of the model (SAM and the instance decoder).
    pub parameters: u64,
    /// Parameter values that are trained (not in `model.freeze`).
    pub trainable: u64,
    /// fp32 weights of every parameter, fp32 gradients and AdamW's two fp32 moments of the
    /// trained ones.
    pub model_bytes: u64,
    /// What the image encoder's forward keeps for its backward, for the whole batch.
    pub encoder_activation_bytes: u64,
    /// One prompting round of one image (the step back-propagates round by round and image by
    /// image): mask decoder and the masks brought to the input size.
    pub prompt_activation_bytes: u64,
    /// The instance decoder's activations for the batch (0 without decoder).
    pub decoder_activation_bytes: u64,
    /// Fixed cost: on the CPU libtorch's runtime in the process; 0 on a GPU.
    pub runtime_bytes: u64,
}

/// Calibrated constants of [`MemoryEstimate`] (docs/fit.md: measured with `sam-train fit` on
/// the CPU in fp32).
mod calibration {
    /// Values the encoder keeps per token, per channel and per block for the backward (the
    /// linear layers' inputs and outputs, norms, MLP, window padding).
    pub const ENCODER_VALUES_PER_TOKEN_CHANNEL: f64 = 30.0;
    /// With adapters (`model.peft`): values kept per token, channel and block in the graph,
    /// whose own weights are frozen (a frozen linear layer's backward needs its weights, not
    /// its input). Fitted to vit_b at 1024 px with LoRA on every block.
    pub const ENCODER_VALUES_PER_TOKEN_CHANNEL_FROZEN_WEIGHTS: f64 = 24.0;
    /// Values kept per attention-matrix entry of every block (the softmax's output, for part
    /// of the attention calls). Fitted to vit_b at 1024 px, full fine-tuning and
    /// `activation_checkpointing: all` together (docs/fit.md).
    pub const ATTENTION_SAVED_PER_ENTRY: f64 = 0.72;
    /// Attention matrices alive at once on top, per entry of the largest block's attention
    /// call (scores with the relative positions, and their gradient in the backward).
    pub const ATTENTION_TRANSIENT_PER_ENTRY: f64 = 2.0;
    /// Values per object of one round: per low-resolution mask pixel and channel of the
    /// mask decoder (its image-token stream), and per mask pixel at the input size and at
    /// the patch size (the three masks brought to the model's input size, then to the patch).
    pub const PROMPT_VALUES_PER_TOKEN_CHANNEL: f64 = 12.0;
    /// See [`PROMPT_VALUES_PER_TOKEN_CHANNEL`].
    pub const PROMPT_VALUES_PER_INPUT_PIXEL: f64 = 9.0;
    /// Values the instance decoder keeps per pixel and channel of its levels.
    pub const DECODER_VALUES_PER_PIXEL_CHANNEL: f64 = 10.0;
    /// The CPU runtime: libtorch, oneDNN and the allocator's retained memory, in bytes.
    pub const CPU_RUNTIME_BYTES: f64 = 420.0 * 1024.0 * 1024.0;
}

/// Parameter values of the parts of a ViT SAM of architecture `a`: image encoder (with its
/// neck), prompt encoder, mask decoder, and the UNETR decoder (weights of its convolutions).
pub fn parameter_counts(a: &Architecture) -> [u64; 4] {
    let d = u64::from(a.encoder_embed_dim);
    let p = u64::from(a.prompt_embed_dim);
    let patch = u64::from(a.patch_size.max(1));
    let side = u64::from(a.image_size) / patch;
    let head_dim = d / u64::from(a.encoder_num_heads.max(1));
    let mut encoder = 3 * patch * patch * d + d + side * side * d;
    for block in 0..a.encoder_depth {
        let global = a.encoder_global_attn_indexes.contains(&block);
        let window = if global {
            side
        } else {
            u64::from(a.window_size)
        };
        // Norms, qkv, projection, MLP (4×), and the relative positions along h and w.
        encoder += 12 * d * d + 13 * d + 2 * (2 * window).saturating_sub(1) * head_dim;
    }
    encoder += d * p + 9 * p * p + 4 * p; // neck: 1×1 and 3×3 convolutions, two norms
    let prompt = 23 * p + 332;
    // Two-way transformer (MLP 8×), tokens, upscaling, hypernetworks and IoU head: SAM's
    // 4 058 340 at p = 256.
    let mask = (61.625 * (p * p) as f64 + 76.875 * p as f64 + 4.0) as u64;
    let f = u64::from(a.decoder_features);
    let lv = [8 * f, 4 * f, 2 * f, f];
    let deconv = |c_in: u64, c_out: u64| c_in * c_out + 9 * c_out * c_out;
    let block = |c_in: u64, c_out: u64| 9 * c_in * c_out + 9 * c_out * c_out;
    let mut unetr = deconv(p, lv[0]) + deconv(lv[0], lv[1]) + deconv(lv[1], lv[2]);
    unetr += deconv(lv[2], lv[3]) + block(p, lv[0]);
    for i in 0..3 {
        unetr += lv[i] * lv[i + 1] + block(lv[i], lv[i + 1]);
    }
    unetr += f * f + block(2 * f, f) + 3 * f;
    [encoder, prompt, mask, unetr]
}

impl ExperimentConfig {
    /// Where this config's steps run, for [`MemoryEstimate::kind`]: the CPU when
    /// `training.device` is `cpu`, or `auto` with the CPU accelerator preset.
    pub fn memory_kind(&self) -> MemoryKind {
        match self.training.device {
            Device::Cpu => MemoryKind::Cpu,
            Device::Cuda => MemoryKind::Gpu,
            Device::Auto if self.hardware.accelerator == crate::Accelerator::Cpu => MemoryKind::Cpu,
            Device::Auto => MemoryKind::Gpu,
        }
    }

    /// Estimates the peak memory of one training step at the config's batch size and objects
    /// per image ([`Self::estimate_peak_memory_for`]).
    pub fn estimate_peak_memory(&self) -> MemoryEstimate {
        self.estimate_peak_memory_for(
            self.training.batch_size.max(1),
            self.training.n_objects_per_batch.max(1),
        )
    }

    /// Estimates the peak memory of one training step of `batch_size` images with `objects`
    /// objects each: model state (weights, gradients, AdamW), the encoder's activations for
    /// the batch, one prompting round of one image, the instance decoder and, on the CPU, the
    /// runtime.
    pub fn estimate_peak_memory_for(&self, batch_size: u32, objects: u32) -> MemoryEstimate {
        use calibration::*;
        let a = self.model.resolved_architecture();
        let [encoder, prompt, mask, unetr] = parameter_counts(&a);
        let unetr = if self.model.with_segmentation_decoder {
            unetr
        } else {
            0
        };
        let frozen = |prefix: &str| {
            self.model
                .freeze
                .iter()
                .any(|f| prefix.starts_with(f.as_str()))
        };
        let trained = |prefix: &str, n: u64| if frozen(prefix) { 0 } else { n };
        // With adapters (`model.peft`) the encoder's own weights are frozen, the adapters train,
        // and the blocks before the first adapted one run outside the autograd graph.
        let peft = self.model.active_peft();
        let adapted = peft.map_or_else(Vec::new, |p| p.blocks.resolve(a.encoder_depth));
        let adapters = peft.map_or(0, |p| adapter_parameters(p, &a, adapted.len() as u64));
        // Without adapters a frozen encoder records no graph (neither its weights nor its input
        // need gradients): it keeps nothing for a backward.
        let first_in_graph = if peft.is_some() {
            adapted.first().copied().unwrap_or(a.encoder_depth)
        } else if frozen("image_encoder") {
            a.encoder_depth
        } else {
            0
        };
        let encoder_trained = if peft.is_some() {
            adapters
        } else {
            trained("image_encoder", encoder)
        };
        let trainable = encoder_trained
            + trained("prompt_encoder", prompt)
            + trained("mask_decoder", mask)
            + trained("decoder", unetr);
        let parameters = encoder + adapters + prompt + mask + unetr;
        let model_bytes = 4 * parameters + (4 + 8) * trainable;

        // Activations: fp32 values, or a mix of 2-byte and fp32 ones under autocast.
        let bytes_per_value = match self.training.precision {
            Precision::Fp32 | Precision::Tf32 => 4.0,
            Precision::Bf16 | Precision::Fp16 => 3.0,
        };
        let d = f64::from(a.encoder_embed_dim);
        // The side the encoder is fed: the model's input, or the patch's own
        // (`model.encoder_input: native`).
        let input_side =
            self.model
                .encoder_input
                .input_side(self.data.patch_shape, a.image_size, a.patch_size);
        let side = f64::from(input_side) / f64::from(a.patch_size.max(1));
        let tokens = side * side;
        let heads = f64::from(a.encoder_num_heads.max(1));
        let window = f64::from(a.window_size.max(1));
        let windows = (side / window).ceil().powi(2);
        // Global blocks from block `first` on; the ones in the graph keep activations.
        let globals_from = |first: u32| {
            a.encoder_global_attn_indexes
                .iter()
                .filter(|&&i| i < a.encoder_depth && i >= first)
                .count() as f64
        };
        let global_block = heads * tokens * tokens;
        let windowed_block = heads * windows * window.powi(4);
        // The largest attention of `n` blocks of which `g` are global.
        let largest_of = |g: f64, n: f64| {
            if g > 0.0 {
                global_block
            } else if n > 0.0 {
                windowed_block
            } else {
                0.0
            }
        };
        // The blocks whose activations the backward needs.
        let depth = f64::from(a.encoder_depth.saturating_sub(first_in_graph));
        let global = globals_from(first_in_graph);
        let attention = global * global_block + (depth - global) * windowed_block;
        let largest = largest_of(global, depth);
        // The forward runs every block, in the graph or not: the largest attention call of the
        // whole encoder is alive once.
        let largest_forward = largest_of(globals_from(0), f64::from(a.encoder_depth));
        let block_values = if peft.is_some() {
            ENCODER_VALUES_PER_TOKEN_CHANNEL_FROZEN_WEIGHTS
        } else {
            ENCODER_VALUES_PER_TOKEN_CHANNEL
        } * tokens
            * d;
        let per_image = match self.training.activation_checkpointing {
            ActivationCheckpointing::None => {
                block_values * depth + ATTENTION_SAVED_PER_ENTRY * attention
            }
            // Recomputed blocks keep only their input (one value per token and channel); the
            // backward holds one of them at a time, recomputed.
            ActivationCheckpointing::Global => {
                let kept = depth - global;
                let recompute = if global > 0.0 {
                    block_values + ATTENTION_SAVED_PER_ENTRY * global_block
                } else {
                    0.0
                };
                block_values * kept
                    + ATTENTION_SAVED_PER_ENTRY * kept * windowed_block
                    + global * tokens * d
                    + recompute
            }
            ActivationCheckpointing::All => {
                depth * tokens * d + block_values + ATTENTION_SAVED_PER_ENTRY * largest
            }
        };
        let batch = f64::from(batch_size);
        // The largest attention of the whole batch is one call, or chunks of query
        // rows of at most ATTENTION_CHUNK_ENTRIES entries each when larger (sam-model): its
        // transient scores, bias and their gradients exist one chunk at a time.
        let transient = ATTENTION_TRANSIENT_PER_ENTRY
            * (batch * largest_forward).min(crate::ATTENTION_CHUNK_ENTRIES as f64);
        let encoder_activation = (batch * per_image + transient) * bytes_per_value;

        let p = f64::from(a.prompt_embed_dim);
        let input = f64::from(input_side).powi(2);
        let [ph, pw] = self.data.patch_shape;
        let patch = f64::from(ph) * f64::from(pw);
        let prompt_activation = f64::from(objects)
            * (PROMPT_VALUES_PER_TOKEN_CHANNEL * tokens * p
                + PROMPT_VALUES_PER_INPUT_PIXEL * (input + patch))
            * bytes_per_value;

        let decoder_activation = if unetr > 0 {
            let f = f64::from(a.decoder_features);
            // Levels at 2, 4, 8 and 16 times the token grid with 8f, 4f, 2f and f channels.
            let values: f64 = [(2.0, 8.0), (4.0, 4.0), (8.0, 2.0), (16.0, 1.0)]
                .iter()
                .map(|(scale, c)| tokens * scale * scale * c * f)
                .sum();
            batch * DECODER_VALUES_PER_PIXEL_CHANNEL * values * bytes_per_value
        } else {
            0.0
        };
        let kind = self.memory_kind();
        let runtime = match kind {
            MemoryKind::Cpu => CPU_RUNTIME_BYTES,
            MemoryKind::Gpu => 0.0,
        };
        let [e, r, dec, rt] = [
            encoder_activation,
            prompt_activation,
            decoder_activation,
            runtime,
        ]
        .map(|v| v.max(0.0) as u64);
        MemoryEstimate {
            peak_bytes: model_bytes + e + r + dec + rt,
            kind,
            parameters,
            trainable,
            model_bytes,
            encoder_activation_bytes: e,
            prompt_activation_bytes: r,
            decoder_activation_bytes: dec,
            runtime_bytes: rt,
        }
    }
}

/// Parameters of the adapters `peft` puts on `blocks` blocks of an encoder of `a` (micro_sam's
/// `peft_sam.py`): LoRA's A and B for q and v (4 × width × rank per block), FacT's shared
/// projections and q/v cores (2 × width × rank + 2 × rank² per block), SSF's scale and shift
/// after qkv, proj, both MLP layers and both norms (2 × 11 × width per block).
fn adapter_parameters(peft: &crate::model::PeftConfig, a: &Architecture, blocks: u64) -> u64 {
    let d = u64::from(a.encoder_embed_dim);
    let r = u64::from(peft.rank.unwrap_or(0));
    let per_block = match peft.method {
        crate::model::PeftMethod::None => 0,
        crate::model::PeftMethod::Lora => 4 * d * r,
        crate::model::PeftMethod::Fact => 2 * d * r + 2 * r * r,
        crate::model::PeftMethod::Ssf => 2 * (3 * d + d + 4 * d + d + d + d),
    };
    per_block * blocks
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

    #[test]
    fn checkpointing_and_a_native_input_lower_the_encoder_activations() {
        let mut c = minimal();
        c.training.device = crate::Device::Cuda;
        let plain = c.estimate_peak_memory_for(1, 1);
        c.training.activation_checkpointing = crate::ActivationCheckpointing::Global;
        let global = c.estimate_peak_memory_for(1, 1);
        c.training.activation_checkpointing = crate::ActivationCheckpointing::All;
        let all = c.estimate_peak_memory_for(1, 1);
        assert!(all.encoder_activation_bytes < global.encoder_activation_bytes);
        assert!(global.encoder_activation_bytes < plain.encoder_activation_bytes);
        // vit_b at 1024 px: recomputing every block keeps well under half the activations.
        assert!(2 * all.encoder_activation_bytes < plain.encoder_activation_bytes);
        assert_eq!(all.model_bytes, plain.model_bytes);
        c.training.activation_checkpointing = crate::ActivationCheckpointing::None;
        c.model.encoder_input = crate::EncoderInput::Native;
        c.data.patch_shape = [512, 512];
        let native = c.estimate_peak_memory_for(1, 1);
        // A quarter of the tokens: under a quarter of the activations (attention shrinks by 16).
        assert!(4 * native.encoder_activation_bytes <= plain.encoder_activation_bytes);
    }

    #[test]
    fn adapters_train_few_parameters_and_a_frozen_prefix_keeps_no_activations() {
        use crate::model::{PeftBlocks, PeftConfig, PeftMethod};
        let mut c = minimal();
        c.training.device = crate::Device::Cuda;
        let full = c.estimate_peak_memory_for(1, 1);
        let lora = |blocks| PeftConfig {
            method: PeftMethod::Lora,
            rank: Some(4),
            alpha: 1.0,
            blocks,
        };
        c.model.peft = Some(lora(PeftBlocks::All(crate::model::AllBlocks::All)));
        let all = c.estimate_peak_memory_for(1, 1);
        // vit_b, rank 4 on 12 blocks: 4 × 768 × 4 × 12 adapter values.
        assert_eq!(all.parameters, full.parameters + 147_456);
        // The encoder's 89 670 912 weights are frozen; the adapters train instead.
        assert_eq!(all.trainable, full.trainable - 89_670_912 + 147_456);
        // Every block is in the graph, with its own weights frozen: 24 instead of 30 values per
        // token, channel and block (a frozen linear layer keeps no input); attention the same.
        let per_value = 4 * 64 * 64 * 768 * 12; // fp32 × tokens × channels × blocks
        assert_eq!(
            full.encoder_activation_bytes - all.encoder_activation_bytes,
            (30 - 24) * per_value
        );
        c.model.peft = Some(lora(PeftBlocks::Last { last: 2 }));
        let last2 = c.estimate_peak_memory_for(1, 1);
        // Blocks 10 and 11 of 12 (one of the four global ones) keep activations; the backward's
        // transient attention of a global block stays.
        assert!(2 * last2.encoder_activation_bytes < full.encoder_activation_bytes);
        assert!(last2.peak_bytes < full.peak_bytes);
    }

    #[test]
    fn parameter_counts_match_sam_vit_b() {
        // segment_anything's vit_b: image encoder 89 670 912, prompt encoder 6 220, mask
        // decoder 4 058 340 parameter values.
        let [encoder, prompt, mask, _] =
            super::parameter_counts(&crate::Backbone::VitB.architecture());
        assert_eq!((encoder, prompt, mask), (89_670_912, 6_220, 4_058_340));
    }

    #[test]
    fn memory_estimate_grows_with_the_step_and_shrinks_with_frozen_parts() {
        let mut c = minimal();
        c.training.device = crate::Device::Cuda;
        c.training.precision = crate::Precision::Bf16;
        let one = c.estimate_peak_memory_for(1, 1);
        assert_eq!(one.kind, super::MemoryKind::Gpu);
        assert_eq!(one.runtime_bytes, 0);
        // fp32 weights of everything, gradients and AdamW moments of everything trained.
        assert_eq!(one.model_bytes, 16 * one.parameters);
        assert_eq!(
            one.peak_bytes,
            one.model_bytes
                + one.encoder_activation_bytes
                + one.prompt_activation_bytes
                + one.decoder_activation_bytes
        );
        let two = c.estimate_peak_memory_for(2, 1);
        // vit_b at 1024 px (the default model): a global block's attention is larger than one
        // chunk, so the transient part (2 values per entry of one chunk, 3 bytes a value under
        // bf16) is there once; what the blocks keep doubles with the batch.
        let transient = 2 * super::ATTENTION_CHUNK_ENTRIES as u64 * 3;
        let kept = |e: &super::MemoryEstimate| e.encoder_activation_bytes - transient;
        assert!(kept(&two).abs_diff(2 * kept(&one)) <= 2, "{two:?} {one:?}");
        assert_eq!(two.prompt_activation_bytes, one.prompt_activation_bytes);
        let many = c.estimate_peak_memory_for(1, 10);
        assert!(many.prompt_activation_bytes > 9 * one.prompt_activation_bytes);
        c.model.freeze = vec!["image_encoder".into()];
        let frozen = c.estimate_peak_memory_for(1, 1);
        let [encoder, ..] = super::parameter_counts(&c.model.resolved_architecture());
        assert_eq!(frozen.trainable, one.trainable - encoder);
        assert_eq!(frozen.parameters, one.parameters);
        assert_eq!(
            frozen.model_bytes,
            4 * one.parameters + 12 * frozen.trainable
        );
        // A frozen encoder without adapters records no graph: nothing kept for a backward, only
        // the forward's largest attention call (one chunk of a global block).
        assert_eq!(frozen.encoder_activation_bytes, transient);
        assert!(one.encoder_activation_bytes > 0);
        c.training.device = crate::Device::Cpu;
        assert!(c.estimate_peak_memory_for(1, 1).runtime_bytes > 0);
    }
}
