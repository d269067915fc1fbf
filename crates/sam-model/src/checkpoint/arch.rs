//! Inferring the model architecture from the weights alone, so that any checkpoint (the
//! original SAM sizes, MobileSAM, or a tiny custom model) is built with the right shapes.

use super::error::CheckpointError;
use crate::{
    ImageEncoderConfig, ImageEncoderViTConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig,
    TwoWayTransformerConfig, UnetrConfig,
};
use std::collections::BTreeMap;
use tch::Tensor;

/// Attention heads of the mask decoder's two-way transformer for a prompt width. The weights
/// do not record them: SAM's 8 at width 256 (and wider), 2 for narrower custom models (the
/// convention of [`SamConfig::tiny`] and of custom sizes trained with sam-train).
pub fn mask_decoder_heads(prompt_embed_dim: i64) -> i64 {
    if prompt_embed_dim >= 256 {
        8
    } else {
        2
    }
}

/// The backbone family of an image encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backbone {
    /// ViT-B (embed_dim 768).
    VitB,
    /// ViT-L (embed_dim 1024).
    VitL,
    /// ViT-H (embed_dim 1280).
    VitH,
    /// MobileSAM's TinyViT.
    VitT,
    /// A ViT image encoder of another width (e.g. a tiny test model).
    CustomVit,
}

impl Backbone {
    /// micro_sam's name for the backbone (`vit_b`, `vit_l`, `vit_h`, `vit_t`), `custom_vit`
    /// otherwise.
    pub fn name(self) -> &'static str {
        match self {
            Backbone::VitB => "vit_b",
            Backbone::VitL => "vit_l",
            Backbone::VitH => "vit_h",
            Backbone::VitT => "vit_t",
            Backbone::CustomVit => "custom_vit",
        }
    }
}

/// segment_anything's `ImageEncoderViT` hyper-parameters, as found in the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct VitArchitecture {
    /// Token width (`patch_embed.proj.weight` dim 0): 768 / 1024 / 1280 for vit_b / l / h.
    pub embed_dim: i64,
    /// Number of transformer blocks.
    pub depth: i64,
    /// Attention heads, from the width of the relative-position tables (`embed_dim / head_dim`).
    pub num_heads: i64,
    /// Patch size (`patch_embed.proj.weight` kernel).
    pub patch_size: i64,
    /// Input channels (3).
    pub in_chans: i64,
    /// Input image size: the `pos_embed` grid × patch size (1024 for the SAM models).
    pub img_size: i64,
    /// Window size of the windowed blocks (14 for SAM), 0 if every block is global.
    pub window_size: i64,
    /// Indices of the global-attention blocks (`[2, 5, 8, 11]` for vit_b). When the window
    /// equals the token grid, windowed and global blocks compute the same thing and cannot be
    /// told apart; they are then all reported global.
    pub global_attn_indexes: Vec<i64>,
    /// Hidden width of the MLPs (`mlp_ratio × embed_dim`).
    pub mlp_dim: i64,
    /// Output channels of the neck (256).
    pub out_chans: i64,
    /// Whether an absolute position embedding (`pos_embed`) is present.
    pub use_abs_pos: bool,
}

/// MobileSAM's `TinyViT` hyper-parameters, as found in the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyVitArchitecture {
    /// Width of each stage (`[64, 128, 160, 320]` for vit_t).
    pub embed_dims: Vec<i64>,
    /// Blocks per stage (`[2, 2, 6, 2]`).
    pub depths: Vec<i64>,
    /// Attention heads per stage; stage 0 is convolutional and has none (0): `[0, 4, 5, 10]`.
    pub num_heads: Vec<i64>,
    /// Attention window per stage, 0 for the convolutional stage: `[0, 7, 14, 7]`.
    pub window_sizes: Vec<i64>,
    /// MLP ratio of the attention stages (4).
    pub mlp_ratio: i64,
    /// Output channels of the neck (256).
    pub out_chans: i64,
    /// Input image size. TinyViT does not store it in its weights; MobileSAM always uses 1024.
    pub img_size: i64,
}

/// The image encoder found in the weights.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageEncoderArchitecture {
    /// segment_anything's ViT (vit_b / vit_l / vit_h or a custom size).
    Vit(VitArchitecture),
    /// MobileSAM's TinyViT (vit_t).
    TinyVit(TinyVitArchitecture),
}

/// Everything about the model's shape that the weights reveal.
#[derive(Debug, Clone, PartialEq)]
pub struct InferredArchitecture {
    /// The backbone family.
    pub backbone: Backbone,
    /// The image encoder's hyper-parameters.
    pub image_encoder: ImageEncoderArchitecture,
    /// Width of the prompt embeddings and of the mask decoder (256).
    pub prompt_embed_dim: i64,
    /// Number of multimask outputs of the mask decoder (3).
    pub num_multimask_outputs: i64,
    /// Layers of the mask decoder's two-way transformer (2).
    pub decoder_depth: i64,
}

impl InferredArchitecture {
    /// A human description, e.g. `vit_b (embed_dim 768, depth 12, 1024 px)`.
    pub fn describe(&self) -> String {
        match &self.image_encoder {
            ImageEncoderArchitecture::Vit(v) => format!(
                "{} (embed_dim {}, depth {}, {} heads, global attention at {:?}, {} px input)",
                self.backbone.name(),
                v.embed_dim,
                v.depth,
                v.num_heads,
                v.global_attn_indexes,
                v.img_size
            ),
            ImageEncoderArchitecture::TinyVit(t) => format!(
                "{} (TinyViT, embed_dims {:?}, depths {:?})",
                self.backbone.name(),
                t.embed_dims,
                t.depths
            ),
        }
    }

    /// The model configuration that builds exactly these weights: every size is read from the
    /// tensors (`tensors` are the ones the architecture was inferred from), except the mask
    /// decoder's attention heads, which follow [`mask_decoder_heads`].
    pub fn sam_config(&self, tensors: &[(String, Tensor)]) -> Result<SamConfig, CheckpointError> {
        let w = Weights {
            by_name: tensors.iter().map(|(k, t)| (k.as_str(), t)).collect(),
        };
        let mut cfg = match &self.image_encoder {
            ImageEncoderArchitecture::TinyVit(_) => SamConfig::vit_t(),
            ImageEncoderArchitecture::Vit(v) => {
                let base = ImageEncoderViTConfig::vit_b();
                SamConfig {
                    image_encoder: ImageEncoderConfig::Vit(ImageEncoderViTConfig {
                        img_size: v.img_size,
                        patch_size: v.patch_size,
                        in_chans: v.in_chans,
                        embed_dim: v.embed_dim,
                        depth: v.depth,
                        num_heads: v.num_heads,
                        mlp_ratio: v.mlp_dim as f64 / v.embed_dim as f64,
                        out_chans: v.out_chans,
                        use_abs_pos: v.use_abs_pos,
                        window_size: v.window_size,
                        global_attn_indexes: v.global_attn_indexes.clone(),
                        ..base
                    }),
                    ..SamConfig::vit_b()
                }
            }
        };
        let dim = self.prompt_embed_dim;
        let img = cfg.image_encoder.img_size();
        cfg.prompt_encoder = PromptEncoderConfig {
            embed_dim: dim,
            image_embedding_size: cfg.image_encoder.embedding_size(),
            input_image_size: img,
            mask_in_chans: w.dim("prompt_encoder.mask_downscaling.3.weight", 0)?,
        };
        cfg.mask_decoder = MaskDecoderConfig {
            transformer_dim: dim,
            transformer: TwoWayTransformerConfig {
                depth: self.decoder_depth,
                embedding_dim: dim,
                num_heads: mask_decoder_heads(dim),
                mlp_dim: w.dim("mask_decoder.transformer.layers.0.mlp.lin1.weight", 0)?,
                ..TwoWayTransformerConfig::sam()
            },
            num_multimask_outputs: self.num_multimask_outputs,
            iou_head_depth: w.count("mask_decoder.iou_prediction_head.layers.")?,
            iou_head_hidden_dim: w.dim("mask_decoder.iou_prediction_head.layers.0.weight", 0)?,
        };
        Ok(cfg)
    }

    /// Checks the weights against the backbone a configuration names.
    ///
    /// `configured` is a micro_sam model or backbone name: `vit_b`, `vit_b_lm`,
    /// `vit_l_em_organelles`, ... (the first five characters name the backbone, as in
    /// micro_sam). A mismatch is an error naming both.
    pub fn ensure_backbone(&self, configured: &str) -> Result<(), CheckpointError> {
        let wanted = configured.get(..5).unwrap_or(configured);
        if wanted == self.backbone.name() {
            Ok(())
        } else {
            Err(CheckpointError::BackboneMismatch {
                configured: configured.to_string(),
                found: self.describe(),
                found_name: self.backbone.name().to_string(),
            })
        }
    }
}

/// Looks tensors up by key and reports missing ones helpfully.
struct Weights<'a> {
    by_name: BTreeMap<&'a str, &'a Tensor>,
}

impl<'a> Weights<'a> {
    fn shape(&self, key: &str) -> Result<Vec<i64>, CheckpointError> {
        self.by_name
            .get(key)
            .map(|t| t.size())
            .ok_or_else(|| CheckpointError::Architecture {
                reason: format!("the weights have no `{key}`"),
            })
    }

    fn dim(&self, key: &str, index: usize) -> Result<i64, CheckpointError> {
        let shape = self.shape(key)?;
        shape
            .get(index)
            .copied()
            .ok_or_else(|| CheckpointError::Architecture {
                reason: format!(
                    "`{key}` has shape {shape:?}, expected at least {} dimensions",
                    index + 1
                ),
            })
    }

    /// The distinct values of the numeric path segment after `prefix`, e.g. the block indices
    /// of `image_encoder.blocks.<i>.…`.
    fn indices(&self, prefix: &str) -> Vec<i64> {
        let mut out: Vec<i64> = self
            .by_name
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|rest| rest.split('.').next())
            .filter_map(|i| i.parse().ok())
            .collect();
        out.dedup();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn count(&self, prefix: &str) -> Result<i64, CheckpointError> {
        let idx = self.indices(prefix);
        // Indices must be 0..n without gaps.
        if idx.iter().enumerate().any(|(i, &v)| i as i64 != v) {
            return Err(CheckpointError::Architecture {
                reason: format!("the indices under `{prefix}` are not 0..n: {idx:?}"),
            });
        }
        Ok(idx.len() as i64)
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.by_name
            .range(prefix..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }
}

/// Infers the architecture from a SAM state_dict (segment_anything's keys, as in
/// [`TorchCheckpoint::model_state`](crate::TorchCheckpoint)).
///
/// The image encoder: TinyViT keys (`image_encoder.layers.*`) mean vit_t; otherwise the ViT
/// width (`image_encoder.patch_embed.proj.weight`, 768 / 1024 / 1280 → vit_b / vit_l / vit_h),
/// depth (block count), heads (relative-position table width), global-attention layout
/// (blocks whose relative-position tables span the whole token grid), and input size
/// (`pos_embed` grid × patch size) are all read from the shapes, so custom sizes work too.
pub fn infer_architecture(
    tensors: &[(String, Tensor)],
) -> Result<InferredArchitecture, CheckpointError> {
    let w = Weights {
        by_name: tensors.iter().map(|(k, t)| (k.as_str(), t)).collect(),
    };
    let (backbone, image_encoder) = if w.has_prefix("image_encoder.layers.") {
        (
            Backbone::VitT,
            ImageEncoderArchitecture::TinyVit(tiny_vit(&w)?),
        )
    } else if w.has_prefix("image_encoder.") {
        let vit = vit(&w)?;
        let backbone = match vit.embed_dim {
            768 => Backbone::VitB,
            1024 => Backbone::VitL,
            1280 => Backbone::VitH,
            _ => Backbone::CustomVit,
        };
        (backbone, ImageEncoderArchitecture::Vit(vit))
    } else {
        return Err(CheckpointError::Architecture {
            reason: "no `image_encoder.*` weights (is this a decoder-only file?)".into(),
        });
    };
    let prompt_embed_dim = w.dim("mask_decoder.iou_token.weight", 1)?;
    let num_multimask_outputs = w.dim("mask_decoder.mask_tokens.weight", 0)? - 1;
    let decoder_depth = w.count("mask_decoder.transformer.layers.")?;
    Ok(InferredArchitecture {
        backbone,
        image_encoder,
        prompt_embed_dim,
        num_multimask_outputs,
        decoder_depth,
    })
}

/// Infers micro_sam's UNETR decoder from its weights (a `decoder_state`, as in
/// [`TorchCheckpoint::decoder_state`](crate::TorchCheckpoint)) on top of the SAM built from `sam`.
///
/// The output maps and the finest level's features come from `out_conv.weight`
/// (`[out_channels, initial_features, 1, 1]`); transposed-convolution upsampling from `.block.`
/// in the `decoder.samplers` keys, as micro_sam's `get_unetr` decides it; the embedding width
/// and input size from the SAM encoder.
pub fn infer_unetr_config(
    decoder_state: &[(String, Tensor)],
    sam: &SamConfig,
) -> Result<UnetrConfig, CheckpointError> {
    let out = decoder_state
        .iter()
        .find(|(k, _)| k == "out_conv.weight")
        .map(|(_, t)| t.size())
        .ok_or_else(|| CheckpointError::Architecture {
            reason: "decoder_state has no `out_conv.weight`: not a micro_sam UNETR decoder".into(),
        })?;
    if out.len() != 4 {
        return Err(CheckpointError::Architecture {
            reason: format!(
                "decoder_state `out_conv.weight` has shape {out:?}, expected \
                 [out_channels, initial_features, 1, 1]"
            ),
        });
    }
    let use_conv_transpose = decoder_state
        .iter()
        .any(|(k, _)| k.starts_with("decoder.samplers") && k.contains(".block."));
    let enc = &sam.image_encoder;
    Ok(UnetrConfig {
        embed_dim: enc.out_chans(),
        out_channels: out[0],
        initial_features: out[1],
        use_conv_transpose,
        img_size: enc.img_size(),
        ..UnetrConfig::sam()
    })
}

/// segment_anything's ImageEncoderViT (segment_anything/modeling/image_encoder.py).
fn vit(w: &Weights) -> Result<VitArchitecture, CheckpointError> {
    let p = "image_encoder.";
    let patch = w.shape(&format!("{p}patch_embed.proj.weight"))?; // [embed_dim, in_chans, k, k]
    if patch.len() != 4 {
        return Err(CheckpointError::Architecture {
            reason: format!(
                "`{p}patch_embed.proj.weight` has shape {patch:?}, expected 4 dimensions"
            ),
        });
    }
    let (embed_dim, in_chans, patch_size) = (patch[0], patch[1], patch[2]);
    let depth = w.count(&format!("{p}blocks."))?;
    if depth == 0 {
        return Err(CheckpointError::Architecture {
            reason: format!("no `{p}blocks.*` weights"),
        });
    }
    let use_abs_pos = w.by_name.contains_key(format!("{p}pos_embed").as_str());
    // pos_embed: [1, img_size / patch, img_size / patch, embed_dim].
    let grid = if use_abs_pos {
        w.dim(&format!("{p}pos_embed"), 1)?
    } else {
        return Err(CheckpointError::Architecture {
            reason: format!("no `{p}pos_embed`, so the input size is unknown"),
        });
    };
    let mut num_heads = None;
    let mut window_size = 0;
    let mut global_attn_indexes = Vec::new();
    for i in 0..depth {
        // rel_pos_h: [2 * attended_size - 1, head_dim]; attended_size is the window for windowed
        // blocks and the token grid for global ones.
        let key = format!("{p}blocks.{i}.attn.rel_pos_h");
        let rel = w.shape(&key).map_err(|_| CheckpointError::Architecture {
            reason: format!(
                "no `{key}`: without relative-position tables the attention heads cannot be \
                 inferred (segment_anything always builds with use_rel_pos=True)"
            ),
        })?;
        if rel.len() != 2 || rel[1] <= 0 || embed_dim % rel[1] != 0 {
            return Err(CheckpointError::Architecture {
                reason: format!(
                    "`{key}` has shape {rel:?}, expected [2*size-1, head_dim dividing {embed_dim}]"
                ),
            });
        }
        let heads = embed_dim / rel[1];
        if *num_heads.get_or_insert(heads) != heads {
            return Err(CheckpointError::Architecture {
                reason: format!("block {i} has {heads} attention heads, block 0 has {num_heads:?}"),
            });
        }
        let size = (rel[0] + 1) / 2;
        if size == grid {
            global_attn_indexes.push(i);
        } else if window_size == 0 || window_size == size {
            window_size = size;
        } else {
            return Err(CheckpointError::Architecture {
                reason: format!("block {i} has window {size}, earlier blocks {window_size}"),
            });
        }
    }
    Ok(VitArchitecture {
        embed_dim,
        depth,
        num_heads: num_heads.unwrap_or(1),
        patch_size,
        in_chans,
        img_size: grid * patch_size,
        window_size,
        global_attn_indexes,
        mlp_dim: w.dim(&format!("{p}blocks.0.mlp.lin1.weight"), 0)?,
        out_chans: w.dim(&format!("{p}neck.0.weight"), 0)?,
        use_abs_pos,
    })
}

/// MobileSAM's TinyViT (mobile_sam/modeling/tiny_vit_sam.py).
fn tiny_vit(w: &Weights) -> Result<TinyVitArchitecture, CheckpointError> {
    let p = "image_encoder.layers.";
    let stages = w.count(p)?;
    let mut embed_dims = Vec::new();
    let mut depths = Vec::new();
    let mut num_heads = Vec::new();
    let mut window_sizes = Vec::new();
    let mut mlp_ratio = 0;
    for s in 0..stages {
        let blocks = w.count(&format!("{p}{s}.blocks."))?;
        depths.push(blocks);
        if s == 0 {
            // ConvLayer of MBConv blocks: conv1 is [hidden, dim, 1, 1].
            embed_dims.push(w.dim(&format!("{p}0.blocks.0.conv1.c.weight"), 1)?);
            num_heads.push(0);
            window_sizes.push(0);
        } else {
            let b = format!("{p}{s}.blocks.0.");
            let dim = w.dim(&format!("{b}attn.norm.weight"), 0)?;
            embed_dims.push(dim);
            // attention_biases: [num_heads, window * window].
            let biases = w.shape(&format!("{b}attn.attention_biases"))?;
            let (heads, points) = match biases[..] {
                [h, n] => (h, n),
                _ => {
                    return Err(CheckpointError::Architecture {
                        reason: format!("`{b}attn.attention_biases` has shape {biases:?}"),
                    })
                }
            };
            num_heads.push(heads);
            window_sizes.push((points as f64).sqrt().round() as i64);
            mlp_ratio = w.dim(&format!("{b}mlp.fc1.weight"), 0)? / dim.max(1);
        }
    }
    Ok(TinyVitArchitecture {
        embed_dims,
        depths,
        num_heads,
        window_sizes,
        mlp_ratio,
        out_chans: w.dim("image_encoder.neck.0.weight", 0)?,
        img_size: 1024,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{apply_state_dict, named_tensors, LoadMode, Sam};
    use tch::{nn, Device};

    /// Builds `cfg`, infers the configuration back from its weights, and loads them strictly.
    fn round_trip(cfg: &SamConfig) -> SamConfig {
        let vs = nn::VarStore::new(Device::Cpu);
        let _sam = Sam::new(&vs.root(), cfg).unwrap();
        let tensors = named_tensors(&vs);
        let inferred = infer_architecture(&tensors)
            .unwrap()
            .sam_config(&tensors)
            .unwrap();
        let vs2 = nn::VarStore::new(Device::Cpu);
        let _sam2 = Sam::new(&vs2.root(), &inferred).unwrap();
        apply_state_dict(&vs2, &tensors, LoadMode::Strict).unwrap();
        inferred
    }

    #[test]
    fn sam_config_from_weights_rebuilds_tiny_and_custom_models() {
        let tiny = round_trip(&SamConfig::tiny());
        assert_eq!(tiny.mask_decoder.transformer.num_heads, 2);
        assert_eq!(tiny.prompt_encoder.mask_in_chans, 8);
        // A custom size unlike any preset: 128 px input, 48-wide prompts, 4× MLP.
        let mut custom = SamConfig::tiny();
        if let ImageEncoderConfig::Vit(v) = &mut custom.image_encoder {
            v.img_size = 128;
            v.out_chans = 48;
            v.window_size = 4;
        }
        custom.prompt_encoder = PromptEncoderConfig {
            embed_dim: 48,
            image_embedding_size: 8,
            input_image_size: 128,
            mask_in_chans: 16,
        };
        custom.mask_decoder.transformer_dim = 48;
        custom.mask_decoder.transformer.embedding_dim = 48;
        custom.mask_decoder.transformer.mlp_dim = 192;
        custom.mask_decoder.iou_head_hidden_dim = 24;
        let back = round_trip(&custom);
        assert_eq!(back.image_encoder.img_size(), 128);
        assert_eq!(back.mask_decoder.transformer.mlp_dim, 192);
        assert_eq!(back.mask_decoder.iou_head_hidden_dim, 24);
        assert_eq!(back.prompt_encoder.mask_in_chans, 16);
        // 8 px patches: a 16×16 embedding grid for a 128 px input.
        let mut fine = custom.clone();
        if let ImageEncoderConfig::Vit(v) = &mut fine.image_encoder {
            v.patch_size = 8;
        }
        fine.prompt_encoder.image_embedding_size = 16;
        let back = round_trip(&fine);
        assert_eq!(back.image_encoder.embedding_size(), 16);
        assert_eq!(back.prompt_encoder.image_embedding_size, 16);
        let vs = nn::VarStore::new(Device::Cpu);
        let sam = Sam::new(&vs.root(), &back).unwrap();
        let emb = sam
            .image_encoder
            .forward(&tch::Tensor::zeros([1, 3, 128, 128], tch::kind::FLOAT_CPU));
        assert_eq!(emb.size(), [1, 48, 16, 16]);
    }

    #[test]
    fn unetr_config_is_read_from_out_conv_and_a_bad_out_conv_is_an_error() {
        let t = |shape: &[i64]| tch::Tensor::zeros(shape, tch::kind::FLOAT_CPU);
        let sam = SamConfig::tiny();
        let state = vec![
            ("out_conv.weight".to_string(), t(&[3, 4, 1, 1])),
            ("decoder.samplers.0.block.weight".to_string(), t(&[1])),
        ];
        let cfg = infer_unetr_config(&state, &sam).unwrap();
        assert_eq!(
            (
                cfg.out_channels,
                cfg.initial_features,
                cfg.use_conv_transpose
            ),
            (3, 4, true)
        );
        assert_eq!((cfg.embed_dim, cfg.img_size), (32, 256));
        // A one-dimensional `out_conv.weight` is refused, not indexed out of bounds.
        let bad = vec![("out_conv.weight".to_string(), t(&[3]))];
        let msg = infer_unetr_config(&bad, &sam).unwrap_err().to_string();
        assert!(
            msg.contains("out_conv.weight") && msg.contains("[3]"),
            "{msg}"
        );
    }
}
