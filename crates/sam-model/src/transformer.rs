//! `segment_anything/modeling/transformer.py`: the two-way transformer of the mask decoder.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::common::{attention, layer_norm, linear, Activation, AttentionMode, MLPBlock};
use crate::error::ModelError;

/// Configuration of [`TwoWayTransformer`] (`_build_sam`: depth 2, 256-d, 8 heads, MLP 2048).
#[derive(Debug, Clone, PartialEq)]
pub struct TwoWayTransformerConfig {
    /// Number of two-way attention blocks, 2.
    pub depth: i64,
    /// Token and image embedding width, 256.
    pub embedding_dim: i64,
    /// Attention heads, 8.
    pub num_heads: i64,
    /// Hidden width of the token MLP, 2048.
    pub mlp_dim: i64,
    /// Internal width divisor of the cross attentions, 2.
    pub attention_downsample_rate: i64,
    /// Attention kernel.
    pub attention: AttentionMode,
}

impl TwoWayTransformerConfig {
    /// SAM's transformer (identical for vit_b, vit_l, vit_h and vit_t).
    pub fn sam() -> Self {
        Self {
            depth: 2,
            embedding_dim: 256,
            num_heads: 8,
            mlp_dim: 2048,
            attention_downsample_rate: 2,
            attention: AttentionMode::Sdpa,
        }
    }

    /// A tiny transformer for tests: 32-d, 2 heads, MLP 64.
    pub fn tiny() -> Self {
        Self {
            embedding_dim: 32,
            num_heads: 2,
            mlp_dim: 64,
            ..Self::sam()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        let internal = self.embedding_dim / self.attention_downsample_rate.max(1);
        if self.num_heads <= 0 || internal % self.num_heads != 0 {
            return Err(ModelError::Config {
                field: "mask_decoder.transformer.num_heads".into(),
                expected: "a divisor of embedding_dim / attention_downsample_rate".into(),
                found: format!("{} (internal dim {internal})", self.num_heads),
            });
        }
        Ok(())
    }
}

/// Attention with optional down-projection of the internal width (`Attention`).
#[derive(Debug)]
pub struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    num_heads: i64,
    mode: AttentionMode,
}

impl Attention {
    fn new(p: nn::Path, cfg: &TwoWayTransformerConfig, downsample_rate: i64) -> Self {
        let dim = cfg.embedding_dim;
        let internal_dim = dim / downsample_rate;
        Self {
            q_proj: linear(&p / "q_proj", dim, internal_dim, true),
            k_proj: linear(&p / "k_proj", dim, internal_dim, true),
            v_proj: linear(&p / "v_proj", dim, internal_dim, true),
            out_proj: linear(&p / "out_proj", internal_dim, dim, true),
            num_heads: cfg.num_heads,
            mode: cfg.attention,
        }
    }

    /// `[b, n, c]` → `[b, heads, n, c / heads]`.
    fn separate_heads(&self, x: &Tensor) -> Tensor {
        let (b, n, c) = x.size3().unwrap_or_default();
        x.reshape([b, n, self.num_heads, c / self.num_heads])
            .transpose(1, 2)
    }

    /// # Shapes
    /// `q`: `[b, n_q, c]`, `k`, `v`: `[b, n_k, c]` → `[b, n_q, c]`. An input with batch 1 is
    /// shared by the whole batch: it is projected once and broadcast (no copy).
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let q = self.separate_heads(&self.q_proj.forward(q));
        let k = self.separate_heads(&self.k_proj.forward(k));
        let v = self.separate_heads(&self.v_proj.forward(v));
        let b = q.size()[0].max(k.size()[0]).max(v.size()[0]);
        let batch = |x: Tensor| {
            if x.size()[0] == b {
                x
            } else {
                x.expand([b, -1, -1, -1], false)
            }
        };
        let (q, k, v) = (batch(q), batch(k), batch(v));
        let c_per_head = q.size()[3];
        let scale = 1.0 / (c_per_head as f64).sqrt();
        let out = attention(&q, &k, &v, None, scale, self.mode);
        // _recombine_heads: [b, h, n, c] -> [b, n, h * c]
        let (b, h, n, c) = out.size4().unwrap_or_default();
        let out = out.transpose(1, 2).reshape([b, n, h * c]);
        self.out_proj.forward(&out)
    }
}

/// One block of sparse self-attention, token→image and image→token cross attention
/// (`TwoWayAttentionBlock`).
#[derive(Debug)]
struct TwoWayAttentionBlock {
    self_attn: Attention,
    norm1: nn::LayerNorm,
    cross_attn_token_to_image: Attention,
    norm2: nn::LayerNorm,
    mlp: MLPBlock,
    norm3: nn::LayerNorm,
    norm4: nn::LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    fn new(p: nn::Path, cfg: &TwoWayTransformerConfig, skip_first_layer_pe: bool) -> Self {
        let dim = cfg.embedding_dim;
        let rate = cfg.attention_downsample_rate;
        Self {
            self_attn: Attention::new(&p / "self_attn", cfg, 1),
            norm1: layer_norm(&p / "norm1", dim, 1e-5),
            cross_attn_token_to_image: Attention::new(&p / "cross_attn_token_to_image", cfg, rate),
            norm2: layer_norm(&p / "norm2", dim, 1e-5),
            mlp: MLPBlock::new(&p / "mlp", dim, cfg.mlp_dim, Activation::Relu),
            norm3: layer_norm(&p / "norm3", dim, 1e-5),
            norm4: layer_norm(&p / "norm4", dim, 1e-5),
            cross_attn_image_to_token: Attention::new(&p / "cross_attn_image_to_token", cfg, rate),
            skip_first_layer_pe,
        }
    }

    fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> (Tensor, Tensor) {
        // Self attention block
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)
        } else {
            let q = queries + query_pe;
            queries + self.self_attn.forward(&q, &q, queries)
        };
        let queries = self.norm1.forward(&queries);

        // Cross attention block, tokens attending to image embedding
        let q = &queries + query_pe;
        let k = keys + key_pe;
        let queries = queries + self.cross_attn_token_to_image.forward(&q, &k, keys);
        let queries = self.norm2.forward(&queries);

        // MLP block
        let queries = &queries + self.mlp.forward(&queries);
        let queries = self.norm3.forward(&queries);

        // Cross attention block, image embedding attending to tokens
        let q = &queries + query_pe;
        let k = keys + key_pe;
        let keys = keys + self.cross_attn_image_to_token.forward(&k, &q, &queries);
        let keys = self.norm4.forward(&keys);
        (queries, keys)
    }
}

/// `TwoWayTransformer`: tokens attend to the image and the image attends to the tokens.
#[derive(Debug)]
pub struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: nn::LayerNorm,
}

impl TwoWayTransformer {
    /// Builds the transformer under `p` (`mask_decoder.transformer`).
    pub fn new(p: &nn::Path, cfg: &TwoWayTransformerConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let layers = (0..cfg.depth)
            .map(|i| TwoWayAttentionBlock::new(p / "layers" / i, cfg, i == 0))
            .collect();
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(
                p / "final_attn_token_to_image",
                cfg,
                cfg.attention_downsample_rate,
            ),
            norm_final_attn: layer_norm(p / "norm_final_attn", cfg.embedding_dim, 1e-5),
        })
    }

    /// # Shapes
    /// `image_embedding`, `image_pe`: `[b, c, h, w]`; `point_embedding`: `[b, n, c]` →
    /// (queries `[b, n, c]`, keys `[b, h * w, c]`).
    ///
    /// `image_embedding` and `image_pe` may have batch 1 when every prompt sees the same image
    /// tokens: the first layer then projects them once for the whole batch (the image tokens
    /// only start to differ per prompt when they attend to the prompt tokens).
    pub fn forward(
        &self,
        image_embedding: &Tensor,
        image_pe: &Tensor,
        point_embedding: &Tensor,
    ) -> (Tensor, Tensor) {
        // BxCxHxW -> BxHWxC == B x N_image_tokens x C
        let image_embedding = image_embedding.flatten(2, -1).permute([0, 2, 1]);
        let image_pe = image_pe.flatten(2, -1).permute([0, 2, 1]);
        let mut queries = point_embedding.shallow_clone();
        let mut keys = image_embedding;
        for layer in &self.layers {
            let (q, k) = layer.forward(&queries, &keys, point_embedding, &image_pe);
            queries = q;
            keys = k;
        }
        // Apply the final attention layer from the points to the image
        let q = &queries + point_embedding;
        let k = &keys + &image_pe;
        let attn_out = self.final_attn_token_to_image.forward(&q, &k, &keys);
        let queries = self.norm_final_attn.forward(&(queries + attn_out));
        (queries, keys)
    }
}
