//! Training throughput for the log: images per second, seconds per step, achieved TFLOP/s and,
//! on a GPU whose peak is known, its share of the dense bf16 tensor-core peak.
//!
//! The FLOPs of a step are model FLOPs counted from the architecture ([`sam_model::flops`]):
//! the image encoder once per image, the prompt encoder and mask decoder once per prompting
//! round per object, the UNETR decoder once per image; each trained part ×3 (forward and
//! backward: the gradients of the inputs and of the weights), a frozen part that gradients pass
//! through on their way to a trained part ×2, any other frozen part ×1 (forward only). The
//! image encoder is weighed piece by piece (patch embedding, each block, neck): with adapters
//! (`model.peft`) its own weights are frozen, so the blocks from the first adapted one on
//! count ×2 and those before it ×1. The adapters' own small matrices are not counted.

use sam_model::flops::{self, PromptShape};
use sam_model::{SamConfig, UnetrConfig};

/// Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, by a part
/// of the name the driver reports. The first match counts: the more specific names first.
const DENSE_BF16_PEAKS: [(&[&str], f64); 8] = [
    (&["H100", "PCIe"], 756.0),
    (&["H100", "HBM3"], 989.0), // H100 SXM5 reports "NVIDIA H100 80GB HBM3"
    (&["H100", "SXM"], 989.0),
    (&["H200"], 989.0),
    (&["A100"], 312.0),
    (&["L40S"], 362.0),
    (&["RTX A6000"], 154.8),
    (&["A40"], 149.7),
];

/// The dense bf16 peak in TFLOP/s of a GPU named as the NVIDIA driver names it (e.g.
/// `NVIDIA A100-SXM4-80GB`); `None` for a GPU not in the table (no share is logged then).
pub fn dense_bf16_peak_tflops(device_name: &str) -> Option<f64> {
    let words: Vec<&str> = device_name
        .split(|c: char| c.is_whitespace() || c == '-')
        .collect();
    // "A40" must not match "A400"; "H200 NVL" is a different (lower-power) part.
    let has = |part: &str| {
        if part.contains(' ') {
            device_name.contains(part)
        } else {
            words.contains(&part)
        }
    };
    if device_name.contains("NVL") {
        return None;
    }
    DENSE_BF16_PEAKS
        .iter()
        .find(|(parts, _)| parts.iter().all(|p| has(p)))
        .map(|&(_, peak)| peak)
}

/// How one piece of the image encoder (the patch embedding, a block, the neck) trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncoderPiece {
    /// Some of its own weights get gradients.
    pub weights: bool,
    /// Adapters inside it (`model.peft`) get gradients, its own weights frozen or not.
    pub adapters: bool,
}

impl EncoderPiece {
    /// Something in the piece trains: gradients must reach it.
    fn trains(self) -> bool {
        self.weights || self.adapters
    }
}

/// Which parts of the model a run trains (any of their parameters not frozen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainedParts {
    /// The image encoder's pieces in forward order: the patch embedding (with the position
    /// embedding), each block, the neck ([`sam_model::flops::image_encoder_vit_pieces`]'s
    /// order). Pieces missing at the end count as frozen.
    pub image_encoder: Vec<EncoderPiece>,
    /// `prompt_encoder.*` or `mask_decoder.*`.
    pub prompt_path: bool,
    /// `decoder.*` (the UNETR), when the model has one.
    pub decoder: bool,
}

impl TrainedParts {
    /// `pieces` encoder pieces whose own weights all train (`trained`) or none do, no adapters.
    pub fn whole_encoder(pieces: usize, trained: bool, prompt_path: bool, decoder: bool) -> Self {
        let piece = EncoderPiece {
            weights: trained,
            adapters: false,
        };
        Self {
            image_encoder: vec![piece; pieces],
            prompt_path,
            decoder,
        }
    }

    /// Whether anything in the image encoder trains (gradients then pass through the heads).
    pub fn encoder_trains(&self) -> bool {
        self.image_encoder.iter().any(|p| p.trains())
    }
}

/// What one training step runs, for one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    /// Images (patches) per step.
    pub images: u64,
    /// Objects prompted per image (`training.n_objects_per_batch`; patches with fewer objects
    /// do less).
    pub objects: i64,
    /// Prompting rounds per image (`training.n_sub_iteration`).
    pub rounds: i64,
}

/// ×3 for a trained part, ×2 for a frozen one that gradients pass through, ×1 otherwise.
fn pass_factor(trained: bool, gradient_passes: bool) -> u64 {
    match (trained, gradient_passes) {
        (true, _) => 3,
        (false, true) => 2,
        (false, false) => 1,
    }
}

/// Model FLOPs of one training step of `shape` (forward and backward), or `None` when the
/// encoder's count is not implemented (TinyViT). Round `r` (from 0) is counted with `1 + 2r`
/// points (a point start and a positive and a negative point per round after it) and, after the
/// first round, a mask input: a box start and rounds without a mask input differ by well under
/// 1 %.
pub fn training_step_flops(
    sam: &SamConfig,
    unetr: Option<&UnetrConfig>,
    shape: StepShape,
    trained: &TrainedParts,
) -> Option<u64> {
    let pieces = flops::image_encoder_pieces(&sam.image_encoder)?;
    // A piece computes its forward, the gradient of its input once something at or before it
    // trains, and the gradient of its weights when they train.
    let mut reached = false;
    let encoder: u64 = pieces
        .iter()
        .enumerate()
        .map(|(k, &f)| {
            let piece = trained.image_encoder.get(k).copied().unwrap_or_default();
            reached |= piece.trains();
            f * (1 + u64::from(reached) + u64::from(piece.weights))
        })
        .sum();
    let through_encoder = trained.encoder_trains();
    let rounds: u64 = (0..shape.rounds.max(1))
        .map(|r| {
            let prompt = PromptShape {
                points: 1 + 2 * r,
                boxes: false,
                mask_input: r > 0,
            };
            flops::prompt_round(sam, shape.objects, prompt)
        })
        .sum();
    let mut per_image = encoder + rounds * pass_factor(trained.prompt_path, through_encoder);
    if let Some(u) = unetr {
        per_image += flops::unetr(u) * pass_factor(trained.decoder, through_encoder);
    }
    Some(shape.images * per_image)
}

/// Throughput over a stretch of training steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Mean seconds per step.
    pub seconds_per_step: f64,
    /// Images (patches) of the global batch per second.
    pub images_per_second: f64,
    /// Achieved model TFLOP/s of one process (its share of the global batch).
    pub tflops: Option<f64>,
    /// `tflops` over the GPU's dense bf16 peak, 0..1 (a GPU of the peak table only).
    pub peak_share: Option<f64>,
}

impl Throughput {
    /// The throughput of `steps` steps that took `seconds` together, `global_batch` images per
    /// step over all processes and `flops_per_step` model FLOPs per step in each process, on a
    /// device with a dense bf16 peak of `peak_tflops`. `None` before any step has taken time.
    ///
    /// images/s = global_batch · steps / seconds; TFLOP/s = flops_per_step · steps / seconds /
    /// 10¹²; share = TFLOP/s / peak.
    pub fn new(
        steps: u64,
        seconds: f64,
        global_batch: u64,
        flops_per_step: Option<u64>,
        peak_tflops: Option<f64>,
    ) -> Option<Self> {
        if steps == 0 || seconds <= 0.0 || !seconds.is_finite() {
            return None;
        }
        let per_second = steps as f64 / seconds;
        let tflops = flops_per_step.map(|f| f as f64 * per_second / 1e12);
        Some(Self {
            seconds_per_step: seconds / steps as f64,
            images_per_second: global_batch as f64 * per_second,
            tflops,
            peak_share: tflops
                .zip(peak_tflops.filter(|p| *p > 0.0))
                .map(|(t, p)| t / p),
        })
    }

    /// `12.3 images/s, 0.325 s/step, 45.6 TFLOP/s (14.6 % of the dense bf16 peak)`; TFLOP/s
    /// with three significant digits (a tiny model on a CPU does well under one).
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{:.1} images/s, {:.3} s/step",
            self.images_per_second, self.seconds_per_step
        );
        if let Some(t) = self.tflops {
            s += &format!(", {} TFLOP/s", significant(t, 3));
            if let Some(share) = self.peak_share {
                s += &format!(" ({:.1} % of the dense bf16 peak)", 100.0 * share);
            }
        }
        s
    }
}

/// `x` with `digits` significant digits (at most 9 decimals).
fn significant(x: f64, digits: i32) -> String {
    let magnitude = if x > 0.0 && x.is_finite() {
        x.abs().log10().floor() as i32
    } else {
        0
    };
    let decimals = (digits - 1 - magnitude).clamp(0, 9) as usize;
    format!("{x:.decimals$}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn peaks_by_driver_name() {
        for (name, peak) in [
            ("NVIDIA A100-SXM4-80GB", Some(312.0)),
            ("NVIDIA A100 80GB PCIe", Some(312.0)),
            ("NVIDIA A40", Some(149.7)),
            ("NVIDIA H100 80GB HBM3", Some(989.0)),
            ("NVIDIA H100 PCIe", Some(756.0)),
            ("NVIDIA H200", Some(989.0)),
            ("NVIDIA L40S", Some(362.0)),
            ("NVIDIA RTX A6000", Some(154.8)),
            // Not in the table: no share rather than a wrong one.
            ("NVIDIA L40", None),
            ("NVIDIA RTX A4000", None),
            ("NVIDIA H100 NVL", None),
            ("NVIDIA H200 NVL", None),
            ("Tesla V100-SXM2-32GB", None),
        ] {
            assert_eq!(dense_bf16_peak_tflops(name), peak, "{name}");
        }
    }

    #[test]
    fn throughput_arithmetic_by_hand() {
        // 10 steps in 4 s, 8 images per step: 20 images/s, 0.4 s/step; 62.4 TFLOP per step
        // in this process: 156 TFLOP/s, half of an A100's 312.
        let t = Throughput::new(10, 4.0, 8, Some(62_400_000_000_000), Some(312.0)).unwrap();
        assert!((t.images_per_second - 20.0).abs() < 1e-12);
        assert!((t.seconds_per_step - 0.4).abs() < 1e-12);
        assert!((t.tflops.unwrap() - 156.0).abs() < 1e-9);
        assert!((t.peak_share.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(
            t.describe(),
            "20.0 images/s, 0.400 s/step, 156 TFLOP/s (50.0 % of the dense bf16 peak)"
        );
        // The CPU, or an unknown GPU: TFLOP/s without a share.
        let cpu = Throughput::new(3, 6.0, 2, Some(3_000_000_000_000), None).unwrap();
        assert_eq!(cpu.describe(), "1.0 images/s, 2.000 s/step, 1.50 TFLOP/s");
        // No count (TinyViT): images/s only; no step yet: nothing.
        let t = Throughput::new(1, 0.5, 4, None, Some(312.0)).unwrap();
        assert_eq!(t.describe(), "8.0 images/s, 0.500 s/step");
        assert_eq!(Throughput::new(0, 0.0, 4, None, None), None);
        assert_eq!(significant(0.000_452_1, 3), "0.000452");
        assert_eq!(significant(45.64, 3), "45.6");
        assert_eq!(significant(989.4, 3), "989");
    }

    #[test]
    fn a_vit_b_step_at_the_a100_preset() {
        // Batch 4, 25 objects, 8 rounds, UNETR, everything trained: per image 3 × (0.972
        // encoder + 8 rounds × 25 objects × ~3.7 G + 0.822 UNETR) TFLOP.
        let all = TrainedParts::whole_encoder(14, true, true, true);
        let shape = StepShape {
            images: 4,
            objects: 25,
            rounds: 8,
        };
        let f = training_step_flops(&SamConfig::vit_b(), Some(&UnetrConfig::sam()), shape, &all)
            .unwrap();
        let tflop = f as f64 / 1e12;
        eprintln!("vit_b A100 preset step: {tflop} TFLOP");
        assert!((29.0..31.0).contains(&tflop), "{tflop}");
    }

    #[test]
    fn step_flops_weigh_trained_and_frozen_parts() {
        let sam = SamConfig::tiny();
        let unetr = UnetrConfig::tiny();
        let shape = StepShape {
            images: 2,
            objects: 3,
            rounds: 2,
        };
        let enc = flops::image_encoder(&sam.image_encoder).unwrap();
        let p = |points, mask_input| PromptShape {
            points,
            boxes: false,
            mask_input,
        };
        let rounds =
            flops::prompt_round(&sam, 3, p(1, false)) + flops::prompt_round(&sam, 3, p(3, true));
        let dec = flops::unetr(&unetr);
        let pieces = match &sam.image_encoder {
            sam_model::ImageEncoderConfig::Vit(c) => c.depth as usize + 2,
            sam_model::ImageEncoderConfig::TinyVit(_) => unreachable!("tiny is a ViT"),
        };
        let all = TrainedParts::whole_encoder(pieces, true, true, true);
        assert_eq!(
            training_step_flops(&sam, Some(&unetr), shape, &all),
            Some(2 * 3 * (enc + rounds + dec))
        );
        // Frozen encoder: forward only, the heads trained.
        let frozen_encoder = TrainedParts::whole_encoder(pieces, false, true, true);
        assert_eq!(
            training_step_flops(&sam, None, shape, &frozen_encoder),
            Some(2 * (enc + 3 * rounds))
        );
        // Frozen heads over a trained encoder: gradients pass through them (×2).
        let encoder_only = TrainedParts::whole_encoder(pieces, true, false, false);
        assert_eq!(
            training_step_flops(&sam, Some(&unetr), shape, &encoder_only),
            Some(2 * (3 * enc + 2 * rounds + 2 * dec))
        );
        assert_eq!(
            training_step_flops(&SamConfig::vit_t(), None, shape, &all),
            None
        );
    }

    /// LoRA on blocks 2 and 3 of the tiny encoder (4 blocks), its own weights frozen, the heads
    /// trained: what the trainer reads off the built model, and the FLOPs it gives.
    #[test]
    fn adapters_count_the_blocks_gradients_pass_through() {
        use sam_model::{PeftMethod, PeftSpec, SamModel};
        let mut sam = SamConfig::tiny();
        let depth = match &mut sam.image_encoder {
            sam_model::ImageEncoderConfig::Vit(c) => {
                c.depth = 4;
                c.global_attn_indexes = vec![1, 3];
                4
            }
            sam_model::ImageEncoderConfig::TinyVit(_) => unreachable!("tiny is a ViT"),
        };
        let model = SamModel::new(&sam, None, tch::Device::Cpu)
            .unwrap()
            .with_peft(&PeftSpec::new(PeftMethod::Lora, 2, vec![2, 3]))
            .unwrap();
        let parts = trained_parts(&model);
        let adapted = EncoderPiece {
            weights: false,
            adapters: true,
        };
        let mut want = TrainedParts::whole_encoder(depth + 2, false, true, false);
        want.image_encoder[3] = adapted; // block 2
        want.image_encoder[4] = adapted; // block 3
        assert_eq!(parts, want);

        let shape = StepShape {
            images: 1,
            objects: 2,
            rounds: 1,
        };
        let pieces = flops::image_encoder_pieces(&sam.image_encoder).unwrap();
        let round = flops::prompt_round(
            &sam,
            2,
            PromptShape {
                points: 1,
                boxes: false,
                mask_input: false,
            },
        );
        // Patch embedding, blocks 0 and 1: forward only. Blocks 2, 3 and the neck: forward
        // and the gradient of their input (their weights are frozen).
        let encoder = pieces[0] + pieces[1] + pieces[2] + 2 * (pieces[3] + pieces[4] + pieces[5]);
        assert_eq!(
            training_step_flops(&sam, None, shape, &parts),
            Some(encoder + 3 * round)
        );
    }
}

/// What `model` trains, from the parameters that require gradients: the image encoder piece by
/// piece (its own weights, and adapters under [`sam_model::PEFT_PREFIX`]), the prompt path and
/// the UNETR decoder.
pub(crate) fn trained_parts(model: &sam_model::SamModel) -> TrainedParts {
    let depth = match &model.sam().config().image_encoder {
        sam_model::ImageEncoderConfig::Vit(c) => c.depth.max(0) as usize,
        sam_model::ImageEncoderConfig::TinyVit(_) => 0,
    };
    // `image_encoder.` keys → piece: 0 the patch and position embeddings, 1 + i block i,
    // depth + 1 the neck.
    let piece_of = |key: &str| -> Option<usize> {
        let rest = key.strip_prefix("image_encoder.")?;
        if let Some(block) = rest.strip_prefix("blocks.") {
            let i: usize = block.split('.').next()?.parse().ok()?;
            Some((1 + i).min(depth + 1))
        } else if rest.starts_with("neck.") {
            Some(depth + 1)
        } else {
            Some(0)
        }
    };
    let mut parts = TrainedParts::whole_encoder(depth + 2, false, false, false);
    for (name, v) in model.named_variables() {
        if !v.requires_grad() {
            continue;
        }
        if let Some(adapter) = name.strip_prefix(sam_model::PEFT_PREFIX) {
            if let Some(k) = piece_of(adapter) {
                parts.image_encoder[k].adapters = true;
            }
        } else if let Some(k) = piece_of(&name) {
            parts.image_encoder[k].weights = true;
        } else if name.starts_with(sam_model::DECODER_PREFIX) {
            parts.decoder = true;
        } else if name.starts_with("prompt_encoder.") || name.starts_with("mask_decoder.") {
            parts.prompt_path = true;
        }
    }
    parts
}

/// The throughput bookkeeping of a run: what a step computes, the device's peak, and where
/// the last log line left the step timing.
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    global_batch: u64,
    flops_per_step: Option<u64>,
    device_name: Option<String>,
    peak_tflops: Option<f64>,
    cuda_index: Option<usize>,
    /// (iterations, step seconds) at the last log line.
    logged: (u64, f64),
}

impl Meter {
    /// The meter of a run of `cfg` on `device` with the model as built (frozen parameters do
    /// not require gradients), `per_rank` images per step in this process.
    pub(crate) fn new(
        cfg: &sam_config::ExperimentConfig,
        model: &sam_model::SamModel,
        device: tch::Device,
        per_rank: u64,
        global_batch: u64,
    ) -> Self {
        let parts = trained_parts(model);
        let t = &cfg.training;
        let shape = StepShape {
            images: per_rank,
            objects: i64::from(t.n_objects_per_batch),
            rounds: i64::from(t.n_sub_iteration),
        };
        let unetr = model.has_decoder().then(|| crate::unetr_config(&cfg.model));
        let flops_per_step = training_step_flops(
            &crate::sam_config(&cfg.model),
            unetr.as_ref(),
            shape,
            &parts,
        );
        let cuda_index = match device {
            tch::Device::Cuda(i) => Some(i),
            _ => None,
        };
        let device_name = cuda_index.and_then(sam_torch::cuda_device_name);
        let peak_tflops = device_name.as_deref().and_then(dense_bf16_peak_tflops);
        Self {
            global_batch,
            flops_per_step,
            device_name,
            peak_tflops,
            cuda_index,
            logged: (0, 0.0),
        }
    }

    /// A line for the start of the run: the model FLOPs of a step and the device's peak.
    pub(crate) fn describe(&self) -> String {
        let flops = self.flops_per_step.map_or_else(
            || "not counted for this encoder".to_string(),
            |f| {
                let tflop = significant(f as f64 / 1e12, 3);
                format!("{tflop} TFLOP per step in each process")
            },
        );
        let device = match (&self.device_name, self.peak_tflops) {
            (Some(name), Some(peak)) => format!("{name}, dense bf16 peak {peak} TFLOP/s"),
            (Some(name), None) => format!("{name}, peak not in the table"),
            (None, _) => "no GPU".to_string(),
        };
        format!("model FLOPs: {flops} ({device})")
    }

    /// The throughput since the previous call (or the start), given the run's step timing so
    /// far; the next call starts from here.
    pub(crate) fn since_last_line(&mut self, iterations: u64, seconds: f64) -> Option<Throughput> {
        let (i0, s0) = self.logged;
        self.logged = (iterations, seconds);
        self.throughput(iterations.saturating_sub(i0), seconds - s0)
    }

    /// The throughput of `iterations` steps that took `seconds`.
    pub(crate) fn throughput(&self, iterations: u64, seconds: f64) -> Option<Throughput> {
        Throughput::new(
            iterations,
            seconds,
            self.global_batch,
            self.flops_per_step,
            self.peak_tflops,
        )
    }

    /// `peak device memory N MiB` on a GPU (the allocator's peak of tensor memory so far).
    pub(crate) fn peak_memory(&self) -> Option<String> {
        let bytes = self.peak_memory_bytes()?;
        Some(format!("peak device memory {} MiB", bytes >> 20))
    }

    /// The allocator's peak of tensor memory so far on the GPU, in bytes (`None` on the CPU).
    pub(crate) fn peak_memory_bytes(&self) -> Option<u64> {
        let m = sam_torch::cuda_memory_stats(self.cuda_index?).ok()?;
        Some(m.peak_allocated)
    }
}
