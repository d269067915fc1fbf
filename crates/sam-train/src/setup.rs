//! Maps the experiment config onto the model crate's own config structs, builds the model
//! ([`sam_model::SamModel`]) and loads its initial or resumed weights, explaining a mismatch
//! in the config's terms.

use std::path::Path;

use sam_config::{Backbone, ExperimentConfig, ModelConfig, PeftMethod as PeftMethodConfig};
use sam_model::{
    infer_architecture, read_checkpoint, resolve_checkpoint, ImageEncoderArchitecture,
    ImageEncoderConfig, ImageEncoderViTConfig, LoadError, LoadMode, LoadReport, MaskDecoderConfig,
    ModelPart, PeftMethod, PeftSpec, PromptEncoderConfig, SamConfig, SamModel, SamModelError,
    TwoWayTransformerConfig, UnetrConfig,
};
use tch::{Device, Tensor};

use crate::TrainError;

/// The SAM architecture a model section describes: the backbone preset with the optional
/// size overrides applied (overrides only apply to the ViT backbones).
pub fn sam_config(model: &ModelConfig) -> SamConfig {
    if model.backbone == Backbone::VitT {
        return SamConfig::vit_t();
    }
    let a = model.resolved_architecture();
    let mut cfg = match model.backbone {
        Backbone::VitL => SamConfig::vit_l(),
        Backbone::VitH => SamConfig::vit_h(),
        _ => SamConfig::vit_b(),
    };
    let img = i64::from(a.image_size);
    let dim = i64::from(a.prompt_embed_dim);
    let mut enc = match &cfg.image_encoder {
        ImageEncoderConfig::Vit(v) => v.clone(),
        ImageEncoderConfig::TinyVit(_) => ImageEncoderViTConfig::vit_b(),
    };
    enc.img_size = img;
    enc.patch_size = i64::from(a.patch_size);
    enc.embed_dim = i64::from(a.encoder_embed_dim);
    enc.depth = i64::from(a.encoder_depth);
    enc.num_heads = i64::from(a.encoder_num_heads);
    enc.global_attn_indexes = a
        .encoder_global_attn_indexes
        .iter()
        .map(|&i| i64::from(i))
        .collect();
    enc.window_size = i64::from(a.window_size);
    enc.out_chans = dim;
    cfg.image_encoder = ImageEncoderConfig::Vit(enc);
    cfg.prompt_encoder = PromptEncoderConfig {
        embed_dim: dim,
        image_embedding_size: cfg.image_encoder.embedding_size(),
        input_image_size: img,
        ..PromptEncoderConfig::sam()
    };
    if dim != 256 {
        // Narrow prompt dimensions (tiny models): SAM's mlp proportion (8×), the heads of
        // `sam_model::mask_decoder_heads` (which inference assumes, since weights do not say).
        cfg.mask_decoder = MaskDecoderConfig {
            transformer_dim: dim,
            transformer: TwoWayTransformerConfig {
                embedding_dim: dim,
                num_heads: sam_model::mask_decoder_heads(dim),
                mlp_dim: 8 * dim,
                ..TwoWayTransformerConfig::sam()
            },
            iou_head_hidden_dim: dim,
            ..MaskDecoderConfig::sam()
        };
    }
    cfg
}

/// The UNETR decoder a model section describes, on top of the SAM it builds.
pub fn unetr_config(model: &ModelConfig) -> UnetrConfig {
    let sam = sam_config(model);
    UnetrConfig {
        embed_dim: sam.image_encoder.out_chans(),
        img_size: sam.image_encoder.img_size(),
        initial_features: i64::from(model.resolved_architecture().decoder_features),
        ..UnetrConfig::sam()
    }
}

/// The input side at which a config feeds its patches to the model when it is not the model's
/// built side: `Some(side)` for `model.encoder_input: native` (the longer patch side, rounded
/// up to whole ViT patches), `None` for `1024` (patches resized to the model input, micro_sam's
/// way) or when the patch is as large as the input anyway.
pub fn native_input_size(cfg: &ExperimentConfig) -> Option<i64> {
    let a = cfg.model.resolved_architecture();
    let side = cfg
        .model
        .encoder_input
        .input_side(cfg.data.patch_shape, a.image_size, a.patch_size);
    (side != a.image_size).then_some(i64::from(side))
}

/// Builds the model a model section describes, with random weights (seeded by the caller
/// through `tch::manual_seed`): SAM, and the UNETR decoder when
/// `model.with_segmentation_decoder` is set.
pub fn new_model(model: &ModelConfig, device: Device) -> Result<SamModel, TrainError> {
    let decoder = model.with_segmentation_decoder.then(|| unetr_config(model));
    let built = SamModel::new(&sam_config(model), decoder.as_ref(), device)?;
    Ok(match peft_spec(model) {
        Some(spec) => built.with_peft(&spec)?,
        None => built,
    })
}

/// The image-encoder adapters of `model.peft`; `None` without them (`null`, `method: none`).
pub fn peft_spec(model: &ModelConfig) -> Option<PeftSpec> {
    let p = model.active_peft()?;
    let method = match p.method {
        PeftMethodConfig::None => return None,
        PeftMethodConfig::Lora => PeftMethod::Lora,
        PeftMethodConfig::Fact => PeftMethod::Fact,
        PeftMethodConfig::Ssf => PeftMethod::Ssf,
    };
    let depth = model.resolved_architecture().encoder_depth;
    let blocks = p.blocks.resolve(depth).into_iter().map(i64::from).collect();
    let rank = if method == PeftMethod::Ssf {
        0
    } else {
        i64::from(p.rank.unwrap_or(0))
    };
    Some(PeftSpec {
        alpha: p.alpha,
        ..PeftSpec::new(method, rank, blocks)
    })
}

/// The identity of the frozen base image encoder of a model with adapters: the SHA-256 of its
/// weights (names, shapes and fp32 values in key order), as hex. A run with adapters keeps
/// only the trainable weights in its checkpoints and names its base by this digest.
pub fn base_digest(model: &SamModel) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, t) in model.image_encoder_base() {
        h.update(name.as_bytes());
        h.update(format!("{:?}", t.size()).as_bytes());
        let t = t
            .detach()
            .to_device(Device::Cpu)
            .to_kind(tch::Kind::Float)
            .contiguous();
        let n = t.numel();
        let mut bytes = vec![0u8; n * 4];
        t.copy_data_u8(&mut bytes, n);
        h.update(&bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads the initial weights named by `spec` (`model.checkpoint`: a file or a micro_sam model
/// name in the cache) into `model`, built from `config`; the decoder loads too when both the
/// model and the file have one. Returns warnings.
pub fn load_initial(
    model: &SamModel,
    config: &ModelConfig,
    spec: &str,
) -> Result<Vec<String>, TrainError> {
    let path = resolve_checkpoint(spec).map_err(|e| TrainError::Model(e.to_string()))?;
    let ck = read_checkpoint(&path)?;
    let mut warnings = ck.warnings.clone();
    let source = Weights::Initial(&path);
    model
        .load_state(
            &ck.model_state,
            ck.decoder_state.as_deref(),
            LoadMode::Strict,
        )
        .map_err(|e| {
            let part_tensors = |part| match part {
                ModelPart::Sam => ck.model_state.as_slice(),
                ModelPart::Decoder => ck.decoder_state.as_deref().unwrap_or_default(),
            };
            TrainError::Model(load_error(e, source, config, part_tensors))
        })?;
    if model.has_decoder() && ck.decoder_state.is_none() {
        warnings.push(format!(
            "{} has no decoder_state: the instance decoder starts from random weights",
            path.display()
        ));
    }
    Ok(warnings)
}

/// Copies weights saved from [`SamModel::named_variables`] back (strict) into `model`, built
/// from `config`; `source` is the checkpoint folder they come from (named in errors).
pub fn load_resumed(
    model: &SamModel,
    config: &ModelConfig,
    tensors: &[(String, Tensor)],
    source: &Path,
) -> Result<(), TrainError> {
    match model.load_named(tensors, LoadMode::Strict) {
        Ok(_) => Ok(()),
        Err(SamModelError::UnexpectedDecoder { .. }) => Err(TrainError::State(format!(
            "{}: the checkpoint has instance-decoder weights but the config has \
             model.with_segmentation_decoder: false. {}",
            source.display(),
            RESUME_FIX
        ))),
        Err(e) => {
            let (sam, decoder) = SamModel::split_named(tensors);
            let part_tensors = |part| match part {
                ModelPart::Sam => sam.as_slice(),
                ModelPart::Decoder => decoder.as_slice(),
            };
            Err(TrainError::State(load_error(
                e,
                Weights::Resumed(source),
                config,
                part_tensors,
            )))
        }
    }
}

/// The message for weights that [`SamModel`] refused: for a key mismatch a short summary
/// (counts, a few example keys, what the weights are and what the config builds) and the fix,
/// instead of every key. `part_tensors` gives the weights of the part that was loaded.
fn load_error<'t>(
    e: SamModelError,
    weights: Weights<'_>,
    config: &ModelConfig,
    part_tensors: impl Fn(ModelPart) -> &'t [(String, Tensor)],
) -> String {
    let path = match weights {
        Weights::Initial(p) | Weights::Resumed(p) => p,
    };
    match e {
        SamModelError::Weights {
            part,
            source: LoadError::Mismatch(report),
            ..
        } => mismatch_summary(&report, weights, part, part_tensors(part), config),
        SamModelError::Weights { source, .. } => format!("{}: {source}", path.display()),
        other => format!("{}: {other}", path.display()),
    }
}

/// Where weights being loaded come from.
#[derive(Debug, Clone, Copy)]
enum Weights<'a> {
    /// `model.checkpoint`.
    Initial(&'a Path),
    /// The run's own checkpoint folder (`--resume`).
    Resumed(&'a Path),
}

/// The fix when a run's own checkpoint does not fit the config given to resume it.
const RESUME_FIX: &str = "The run was started with another model config: resume with the \
     config it was started with (runs/<experiment>/config.yaml holds it), or start a new run \
     (--overwrite, or another experiment_name)";

/// Examples of each kind of mismatch in the summary.
const EXAMPLES: usize = 2;

/// A few lines on weights that do not fit the configured model: how many keys differ and how,
/// two examples of each kind, what the weights are (inferred from their shapes) against what
/// the config builds, and what to set.
fn mismatch_summary(
    report: &LoadReport,
    weights: Weights<'_>,
    part: ModelPart,
    tensors: &[(String, Tensor)],
    config: &ModelConfig,
) -> String {
    let (path, what) = match (weights, part) {
        (Weights::Initial(p), ModelPart::Sam) => (p, "model.checkpoint"),
        (Weights::Initial(p), ModelPart::Decoder) => (p, "model.checkpoint (decoder_state)"),
        (Weights::Resumed(p), ModelPart::Sam) => (p, "the run's checkpoint"),
        (Weights::Resumed(p), ModelPart::Decoder) => (p, "the run's checkpoint (decoder weights)"),
    };
    let (shape, missing, unexpected) = (
        report.shape_mismatches.len(),
        report.missing.len(),
        report.unexpected.len(),
    );
    let mut out = format!(
        "{}: {what} does not fit the model the config describes: {} of {} keys differ ({shape} \
         with another shape, {missing} missing from the file, {unexpected} not in the model); \
         for example:",
        path.display(),
        shape + missing + unexpected,
        tensors.len() + missing,
    );
    for s in report.shape_mismatches.iter().take(EXAMPLES) {
        out += &format!(
            "\n  {}: the model has {:?}, the file {:?}",
            s.key, s.expected, s.found
        );
    }
    for m in report.missing.iter().take(EXAMPLES) {
        out += &format!("\n  missing from the file: {m}");
    }
    for u in report.unexpected.iter().take(EXAMPLES) {
        out += &format!("\n  not in the model: {u}");
    }
    let a = config.resolved_architecture();
    let overrides = if config.architecture.is_some() {
        " with model.architecture's sizes"
    } else {
        ""
    };
    let builds = format!(
        "{}{overrides} (embed_dim {}, depth {}, {} heads, {} px input, prompt dim {}{})",
        config.backbone.as_str(),
        a.encoder_embed_dim,
        a.encoder_depth,
        a.encoder_num_heads,
        a.image_size,
        a.prompt_embed_dim,
        if config.with_segmentation_decoder {
            format!(", decoder_features {}", a.decoder_features)
        } else {
            String::new()
        }
    );
    out += &format!("\nThe config builds {builds}.");
    if part == ModelPart::Decoder {
        out += "\nThe instance decoder's size follows the encoder's prompt dim and \
                model.architecture.decoder_features: set them to those of the file's model.";
    } else {
        match infer_architecture(tensors) {
            Ok(found) => {
                out += &format!("\nThe file holds {}.", found.describe());
                out += &format!("\nFix: {}.", architecture_fix(&found, config));
            }
            Err(_) => {
                out += "\nFix: set model.backbone (vit_t, vit_b, vit_l, vit_h) and, for other \
                        sizes, model.architecture to the model this file was trained as.";
            }
        }
    }
    if matches!(weights, Weights::Resumed(_)) {
        out += &format!("\n{RESUME_FIX}.");
    }
    out
}

/// What to set in the config to build the model of `found`.
fn architecture_fix(found: &sam_model::InferredArchitecture, config: &ModelConfig) -> String {
    let drop_overrides = if config.architecture.is_some() {
        " and remove model.architecture (it overrides the backbone's sizes)"
    } else {
        ""
    };
    match &found.image_encoder {
        ImageEncoderArchitecture::TinyVit(_) => {
            format!("set model.backbone: vit_t{drop_overrides}")
        }
        ImageEncoderArchitecture::Vit(v) => {
            let standard = Backbone::ALL
                .into_iter()
                .filter(|b| *b != Backbone::VitT)
                .find(|b| {
                    let s = b.architecture();
                    i64::from(s.encoder_embed_dim) == v.embed_dim
                        && i64::from(s.encoder_depth) == v.depth
                        && i64::from(s.image_size) == v.img_size
                        && i64::from(s.patch_size) == v.patch_size
                        && i64::from(s.prompt_embed_dim) == found.prompt_embed_dim
                });
            match standard {
                Some(b) => format!("set model.backbone: {}{drop_overrides}", b.as_str()),
                None => format!(
                    "set model.architecture to the file's sizes: image_size: {}, patch_size: \
                     {}, encoder_embed_dim: {}, encoder_depth: {}, encoder_num_heads: {}, \
                     encoder_global_attn_indexes: {:?}, window_size: {}, prompt_embed_dim: {}",
                    v.img_size,
                    v.patch_size,
                    v.embed_dim,
                    v.depth,
                    v.num_heads,
                    v.global_attn_indexes,
                    v.window_size,
                    found.prompt_embed_dim
                ),
            }
        }
    }
}

/// The device of the process of `local_rank` for `training.device`: `cuda` and `auto` take GPU
/// `local_rank % device_count` (SLURM binding one GPU per task shows every task its GPU as
/// device 0), `auto` falls back to the CPU. Logs the choice.
///
/// # Errors
/// [`TrainError::Usage`] when `cuda` is asked for and libtorch sees no GPU; the message names
/// the libtorch build, the NVIDIA driver, `CUDA_VISIBLE_DEVICES` and `nvidia-smi`.
pub fn device_for(name: sam_config::Device, local_rank: usize) -> Result<Device, TrainError> {
    let choice = sam_torch::select_device(device_request(name), local_rank)
        .map_err(|e| TrainError::Usage(format!("training.device: {e}")))?;
    tracing::info!("device: {choice}");
    Ok(choice.device)
}

/// The config's device name as sam-torch's request.
fn device_request(name: sam_config::Device) -> sam_torch::DeviceRequest {
    match name {
        sam_config::Device::Auto => sam_torch::DeviceRequest::Auto,
        sam_config::Device::Cpu => sam_torch::DeviceRequest::Cpu,
        sam_config::Device::Cuda => sam_torch::DeviceRequest::Cuda,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_device_names_map_onto_requests() {
        use sam_torch::DeviceRequest;
        assert_eq!(
            device_request(sam_config::Device::Auto),
            DeviceRequest::Auto
        );
        assert_eq!(device_request(sam_config::Device::Cpu), DeviceRequest::Cpu);
        assert_eq!(
            device_request(sam_config::Device::Cuda),
            DeviceRequest::Cuda
        );
    }

    #[test]
    fn device_for_follows_the_gpus_this_process_sees() {
        assert_eq!(device_for(sam_config::Device::Cpu, 3).unwrap(), Device::Cpu);
        match sam_torch::cuda_device_count() {
            0 => {
                assert_eq!(
                    device_for(sam_config::Device::Auto, 1).unwrap(),
                    Device::Cpu
                );
                let err = device_for(sam_config::Device::Cuda, 0).unwrap_err();
                assert!(matches!(err, TrainError::Usage(_)), "{err:?}");
                let msg = err.to_string();
                assert!(
                    msg.starts_with("training.device: `cuda` needs a GPU"),
                    "{msg}"
                );
                for part in ["NVIDIA driver", "CUDA_VISIBLE_DEVICES", "nvidia-smi"] {
                    assert!(msg.contains(part), "missing `{part}` in: {msg}");
                }
            }
            n => {
                assert_eq!(
                    device_for(sam_config::Device::Cuda, n + 1).unwrap(),
                    Device::Cuda(1 % n)
                );
                assert_eq!(
                    device_for(sam_config::Device::Auto, 0).unwrap(),
                    Device::Cuda(0)
                );
            }
        }
    }
}
