//! The model section: backbone, initial weights, decoder, frozen parts, architecture override.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The SAM image-encoder family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backbone {
    /// MobileSAM's TinyViT (5.7 M parameters in the encoder).
    VitT,
    /// ViT-B: 768-d, 12 blocks, 12 heads (91 M parameters in total).
    VitB,
    /// ViT-L: 1024-d, 24 blocks, 16 heads (308 M).
    VitL,
    /// ViT-H: 1280-d, 32 blocks, 16 heads (636 M).
    VitH,
}

impl Backbone {
    /// All backbones, smallest first.
    pub const ALL: [Backbone; 4] = [
        Backbone::VitT,
        Backbone::VitB,
        Backbone::VitL,
        Backbone::VitH,
    ];

    /// The name used in configs and by micro_sam (`vit_b`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Backbone::VitT => "vit_t",
            Backbone::VitB => "vit_b",
            Backbone::VitL => "vit_l",
            Backbone::VitH => "vit_h",
        }
    }

    /// The architecture of the original checkpoints (segment_anything `build_sam.py`).
    /// TinyViT (`vit_t`) is not a plain ViT: its encoder fields describe the last stage only
    /// and are not used to build it.
    pub fn architecture(self) -> Architecture {
        let vit = |dim, depth, heads, global: &[u32]| Architecture {
            image_size: 1024,
            patch_size: 16,
            encoder_embed_dim: dim,
            encoder_depth: depth,
            encoder_num_heads: heads,
            encoder_global_attn_indexes: global.to_vec(),
            window_size: 14,
            prompt_embed_dim: 256,
            decoder_features: 64,
        };
        match self {
            // MobileSAM: TinyViT-5M, last stage 320-d, 10 heads; no global-attention indexes.
            Backbone::VitT => vit(320, 12, 10, &[]),
            Backbone::VitB => vit(768, 12, 12, &[2, 5, 8, 11]),
            Backbone::VitL => vit(1024, 24, 16, &[5, 11, 17, 23]),
            Backbone::VitH => vit(1280, 32, 16, &[7, 15, 23, 31]),
        }
    }
}

impl fmt::Display for Backbone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SAM model to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Image-encoder family.
    pub backbone: Backbone,
    /// Initial weights: a micro_sam model name (`vit_b`, `vit_b_lm`, … looked up in
    /// `$MICROSAM_CACHEDIR` or `~/.cache/micro_sam/models/`), a path to a `.pth`/`.pt` file,
    /// or `null` for random initialisation.
    pub checkpoint: Option<String>,
    /// Train micro_sam's UNETR instance-segmentation decoder jointly (needed for AIS).
    pub with_segmentation_decoder: bool,
    /// State-dict prefixes whose parameters are not trained, e.g. `image_encoder`,
    /// `prompt_encoder`, `mask_decoder` or a deeper prefix such as `image_encoder.blocks.0`.
    pub freeze: Vec<String>,
    /// Architecture changes against the backbone's original one, e.g. a tiny model trained
    /// from random weights for tests and demos. `null`: the backbone's architecture.
    pub architecture: Option<ArchitectureOverride>,
    /// How a training patch enters the image encoder: `1024` resizes it to the model's input
    /// side (micro_sam's way: a 512² patch costs a full 1024² image), `native` feeds it at its
    /// own size (rounded up to a multiple of 16) with the position embeddings interpolated:
    /// 4× fewer tokens for a 512² patch. Experimental. Checkpoints record the input side, and
    /// inference runs such a model at that side, tiling larger images.
    pub encoder_input: EncoderInput,
    /// Parameter-efficient fine-tuning of the image encoder (micro_sam's `peft_kwargs`): its
    /// weights are frozen and small adapters on the chosen blocks are trained with the prompt
    /// encoder, the mask decoder and the instance decoder. `null` or `method: none`: the
    /// whole model trains (minus `freeze`).
    pub peft: Option<PeftConfig>,
}

/// How a patch enters the image encoder ([`ModelConfig::encoder_input`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderInput {
    /// Resized (longest side) to the model's input side, 1024 for SAM: `1024` in YAML.
    #[default]
    Resized,
    /// At the patch's own size: `native` in YAML.
    Native,
}

impl EncoderInput {
    /// The side of the square model input for patches of `patch_shape` `[h, w]` on a model
    /// built for `image_size`: `image_size` when resized, else the longer patch side rounded up
    /// to a multiple of `patch_size` (capped at `image_size`).
    pub fn input_side(self, patch_shape: [u32; 2], image_size: u32, patch_size: u32) -> u32 {
        match self {
            EncoderInput::Resized => image_size,
            EncoderInput::Native => {
                let long = patch_shape[0].max(patch_shape[1]).max(1);
                let step = patch_size.max(1);
                (long.div_ceil(step) * step).min(image_size)
            }
        }
    }
}

impl fmt::Display for EncoderInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncoderInput::Resized => f.write_str("1024"),
            EncoderInput::Native => f.write_str("native"),
        }
    }
}

impl Serialize for EncoderInput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EncoderInput::Resized => s.serialize_u64(1024),
            EncoderInput::Native => s.serialize_str("native"),
        }
    }
}

impl<'de> Deserialize<'de> for EncoderInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EncoderInput;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("1024 or native")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<EncoderInput, E> {
                match v {
                    1024 => Ok(EncoderInput::Resized),
                    _ => Err(E::custom(format!(
                        "encoder_input {v} is not supported: use 1024 (resize to the model \
                         input) or native (the patch at its own size)"
                    ))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<EncoderInput, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => self.visit_str(&v.to_string()),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EncoderInput, E> {
                match v {
                    "1024" => Ok(EncoderInput::Resized),
                    "native" => Ok(EncoderInput::Native),
                    _ => Err(E::custom(format!(
                        "encoder_input `{v}` is not supported: use 1024 (resize to the model \
                         input) or native (the patch at its own size)"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for EncoderInput {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EncoderInput".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "How a patch enters the image encoder: 1024 (resized to the model input) or native (at its own size).",
            "enum": [1024, "native"]
        })
    }
}

/// The parameter-efficient fine-tuning method (micro_sam's `peft_sam.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeftMethod {
    /// No adapters: the image encoder trains as a whole.
    #[default]
    None,
    /// LoRA on the q and v projections of each chosen block (`LoRASurgery`).
    Lora,
    /// FacT on the q and v projections (`FacTSurgery`, dropout 0.1 while training).
    Fact,
    /// A learned scale and shift after qkv, proj, the MLP's linear layers and both norms of
    /// each chosen block (`SSFSurgery`).
    Ssf,
}

/// Which image-encoder blocks get adapters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PeftBlocks {
    /// `all`: every block.
    All(AllBlocks),
    /// Block indexes, 0-based, e.g. `[8, 9, 10, 11]`.
    List(Vec<u32>),
    /// `{last: K}`: the last K blocks.
    Last {
        /// How many of the last blocks.
        last: u32,
    },
}

/// The word `all` of [`PeftBlocks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllBlocks {
    /// Every block.
    All,
}

impl Default for PeftBlocks {
    fn default() -> Self {
        PeftBlocks::All(AllBlocks::All)
    }
}

impl PeftBlocks {
    /// The chosen block indexes of an encoder with `depth` blocks, ascending and distinct
    /// (indexes out of range are kept, for validation to report).
    pub fn resolve(&self, depth: u32) -> Vec<u32> {
        let mut v = match self {
            PeftBlocks::All(_) => (0..depth).collect(),
            PeftBlocks::List(l) => l.clone(),
            PeftBlocks::Last { last } => (depth.saturating_sub(*last)..depth).collect(),
        };
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// `model.peft`: adapters on the image encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PeftConfig {
    /// `lora`, `fact`, `ssf` or `none`.
    pub method: PeftMethod,
    /// Rank of the LoRA / FacT factors (≥ 1; micro_sam's examples use 4). SSF ignores it.
    pub rank: Option<u32>,
    /// Factor on the LoRA update (micro_sam fixes it at 1). FacT and SSF ignore it.
    pub alpha: f64,
    /// The adapted blocks: `all`, a list of 0-based indexes, or `{last: K}`. The blocks before
    /// the first adapted one run without gradients, which is where the memory is saved.
    pub blocks: PeftBlocks,
}

impl Default for PeftConfig {
    fn default() -> Self {
        Self {
            method: PeftMethod::None,
            rank: None,
            alpha: 1.0,
            blocks: PeftBlocks::default(),
        }
    }
}

impl ModelConfig {
    /// The adapters to build: `None` without `model.peft` or with `method: none`.
    pub fn active_peft(&self) -> Option<&PeftConfig> {
        self.peft.as_ref().filter(|p| p.method != PeftMethod::None)
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::VitB,
            checkpoint: Some("vit_b".to_owned()),
            with_segmentation_decoder: true,
            freeze: Vec::new(),
            architecture: None,
            encoder_input: EncoderInput::Resized,
            peft: None,
        }
    }
}

/// Where the initial weights come from, as read from [`ModelConfig::checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointSource {
    /// Random initialisation.
    Random,
    /// A micro_sam model name such as `vit_b` or `vit_b_lm`.
    ModelName(String),
    /// A file path (relative to the repository root unless absolute).
    Path(std::path::PathBuf),
}

impl ModelConfig {
    /// Classify the `checkpoint` value. A value is a model name when it looks like
    /// `vit_<t|b|l|h>[_suffix]` with only lower-case letters, digits and `_`; otherwise a path.
    pub fn checkpoint_source(&self) -> CheckpointSource {
        match &self.checkpoint {
            None => CheckpointSource::Random,
            Some(c) if is_model_name(c) => CheckpointSource::ModelName(c.clone()),
            Some(c) => CheckpointSource::Path(c.into()),
        }
    }

    /// The architecture to build: the backbone's, with the override applied.
    pub fn resolved_architecture(&self) -> Architecture {
        let mut a = self.backbone.architecture();
        if let Some(o) = &self.architecture {
            if let Some(v) = o.image_size {
                a.image_size = v;
            }
            if let Some(v) = o.patch_size {
                a.patch_size = v;
            }
            if let Some(v) = o.encoder_embed_dim {
                a.encoder_embed_dim = v;
            }
            if let Some(v) = o.encoder_depth {
                a.encoder_depth = v;
            }
            if let Some(v) = o.encoder_num_heads {
                a.encoder_num_heads = v;
            }
            if let Some(v) = &o.encoder_global_attn_indexes {
                a.encoder_global_attn_indexes = v.clone();
            }
            if let Some(v) = o.window_size {
                a.window_size = v;
            }
            if let Some(v) = o.prompt_embed_dim {
                a.prompt_embed_dim = v;
            }
            a.decoder_features = match o.decoder_features {
                Some(v) => v,
                // A narrow neck gets a proportionally narrow decoder.
                None if a.prompt_embed_dim != 256 => (a.prompt_embed_dim / 4).max(8),
                None => a.decoder_features,
            };
        }
        a
    }
}

/// True when `s` names a micro_sam model (`vit_b`, `vit_l_lm`, `vit_b_em_organelles`, …).
pub(crate) fn is_model_name(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("vit_") else {
        return false;
    };
    let mut chars = rest.chars();
    let size_ok = matches!(chars.next(), Some('t' | 'b' | 'l' | 'h'));
    let tail: String = chars.collect();
    size_ok
        && (tail.is_empty()
            || (tail.starts_with('_')
                && tail.len() > 1
                && tail
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')))
}

/// Fields of the architecture that differ from the backbone's; each `null` field keeps the
/// backbone's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ArchitectureOverride {
    /// Side of the square model input in pixels (original: 1024).
    pub image_size: Option<u32>,
    /// Side of the encoder's patch embedding in pixels (original: 16).
    pub patch_size: Option<u32>,
    /// Encoder width (vit_b 768, vit_l 1024, vit_h 1280).
    pub encoder_embed_dim: Option<u32>,
    /// Number of encoder blocks (vit_b 12, vit_l 24, vit_h 32).
    pub encoder_depth: Option<u32>,
    /// Attention heads per block (vit_b 12, vit_l 16, vit_h 16).
    pub encoder_num_heads: Option<u32>,
    /// Blocks with global instead of windowed attention, 0-based (vit_b `[2, 5, 8, 11]`).
    pub encoder_global_attn_indexes: Option<Vec<u32>>,
    /// Window side of windowed attention in patches (original: 14).
    pub window_size: Option<u32>,
    /// Width of the prompt embeddings and the encoder neck (original: 256).
    pub prompt_embed_dim: Option<u32>,
    /// Features of the finest level of the UNETR instance decoder; its levels have 1, 2, 4 and 8
    /// times as many (micro_sam: 64). Default: 64 with a 256-wide neck, otherwise a quarter of
    /// `prompt_embed_dim` (at least 8). The decoder's cost grows with its square.
    pub decoder_features: Option<u32>,
}

/// A complete ViT-SAM architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Architecture {
    /// Side of the square model input in pixels.
    pub image_size: u32,
    /// Side of the patch embedding in pixels.
    pub patch_size: u32,
    /// Encoder width.
    pub encoder_embed_dim: u32,
    /// Number of encoder blocks.
    pub encoder_depth: u32,
    /// Attention heads per block.
    pub encoder_num_heads: u32,
    /// Blocks with global attention.
    pub encoder_global_attn_indexes: Vec<u32>,
    /// Window side of windowed attention in patches.
    pub window_size: u32,
    /// Width of the prompt embeddings and the encoder neck.
    pub prompt_embed_dim: u32,
    /// Features of the finest level of the UNETR instance decoder.
    pub decoder_features: u32,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_told_from_paths() {
        for name in ["vit_b", "vit_t", "vit_l_lm", "vit_b_em_organelles", "vit_h"] {
            assert!(is_model_name(name), "{name}");
        }
        for path in [
            "vit_x",
            "vit_",
            "vit_b_",
            "models/vit_b.pth",
            "vit_b.pth",
            "sam",
            "VIT_B",
        ] {
            assert!(!is_model_name(path), "{path}");
        }
    }

    #[test]
    fn encoder_input_reads_1024_or_native_and_nothing_else() {
        let read = |yaml: &str| serde_yaml::from_str::<ModelConfig>(yaml).map(|m| m.encoder_input);
        assert_eq!(read("backbone: vit_b").unwrap(), EncoderInput::Resized);
        assert_eq!(read("encoder_input: 1024").unwrap(), EncoderInput::Resized);
        assert_eq!(read("encoder_input: native").unwrap(), EncoderInput::Native);
        for bad in [
            "encoder_input: 512",
            "encoder_input: full",
            "encoder_input: -1",
        ] {
            let err = read(bad).unwrap_err().to_string();
            assert!(
                err.contains("1024") && err.contains("native"),
                "{bad}: {err}"
            );
        }
        // It writes back as it reads.
        for v in [EncoderInput::Resized, EncoderInput::Native] {
            let m = ModelConfig {
                encoder_input: v,
                ..Default::default()
            };
            let back: ModelConfig =
                serde_yaml::from_str(&serde_yaml::to_string(&m).unwrap()).unwrap();
            assert_eq!(back.encoder_input, v);
        }
    }

    #[test]
    fn the_native_input_side_is_the_long_patch_side_in_whole_patches() {
        assert_eq!(EncoderInput::Resized.input_side([512, 512], 1024, 16), 1024);
        assert_eq!(EncoderInput::Native.input_side([512, 512], 1024, 16), 512);
        assert_eq!(EncoderInput::Native.input_side([300, 200], 1024, 16), 304);
        assert_eq!(
            EncoderInput::Native.input_side([2048, 2048], 1024, 16),
            1024
        );
    }

    #[test]
    fn override_replaces_only_given_fields() {
        let m = ModelConfig {
            architecture: Some(ArchitectureOverride {
                encoder_embed_dim: Some(64),
                encoder_global_attn_indexes: Some(vec![1]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = m.resolved_architecture();
        assert_eq!(a.encoder_embed_dim, 64);
        assert_eq!(a.encoder_global_attn_indexes, vec![1]);
        assert_eq!(a.encoder_depth, 12);
        assert_eq!(a.image_size, 1024);
    }
}
