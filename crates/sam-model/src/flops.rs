//! Floating-point operations of a forward pass, counted from the architecture: what a
//! throughput log divides by the step time to give achieved TFLOP/s.
//!
//! What is counted is what `torch.utils.flop_counter.FlopCounterMode` counts in the Python
//! reference modules (segment_anything, torch_em's UNETR as micro_sam builds it): matrix
//! products (linear layers, `@`, the `einsum`s of the relative positions) and convolutions
//! (transposed ones too), 2 FLOPs per multiply-add. Element-wise work (norms, activations,
//! softmax, additions, interpolation) is left out, as it is there; it is a few per cent of the
//! total. The counts follow the reference modules, not the shortcuts of this crate's port (the
//! mask decoder projecting a shared image embedding once for all prompts, the UNETR's 1×1
//! convolution applied before upsampling): they are model FLOPs, the numerator of the usual
//! "model FLOPs utilisation", not the operations the kernels ran.
//!
//! ```
//! use sam_model::{flops, SamConfig};
//! let sam = SamConfig::vit_b();
//! let encoder = flops::image_encoder(&sam.image_encoder).unwrap();
//! // About 0.49 T multiply-adds per 1024² image.
//! assert!((encoder as f64 / 1e12 - 0.97).abs() < 0.05);
//! let prompt = flops::PromptShape { points: 1, boxes: false, mask_input: false };
//! let per_object = flops::prompt_round(&sam, 1, prompt);
//! assert!(per_object < encoder / 100);
//! ```

use crate::image_encoder::ImageEncoderViTConfig;
use crate::sam::{ImageEncoderConfig, SamConfig};
use crate::unetr::UnetrConfig;

/// FLOPs of `[m, k] @ [k, n]`: 2·m·k·n.
fn matmul(m: i64, k: i64, n: i64) -> u64 {
    2 * (m.max(0) as u64) * (k.max(0) as u64) * (n.max(0) as u64)
}

/// FLOPs of a convolution (or transposed convolution) as FlopCounterMode counts them:
/// 2 · (spatial positions of the output, of the input when transposed) · c_in · c_out · k².
fn conv(positions: i64, c_in: i64, c_out: i64, kernel: i64) -> u64 {
    matmul(positions, c_in * kernel * kernel, c_out)
}

/// One forward pass of SAM's ViT image encoder on one image (`ImageEncoderViT.forward`):
/// the patch embedding, per block the qkv and output projections, `q @ kᵀ`, `attn @ v`, the two
/// relative-position `einsum`s (when `use_rel_pos`) and the MLP, over the padded windows of a
/// windowed block, then the neck's 1×1 and 3×3 convolutions.
pub fn image_encoder_vit(cfg: &ImageEncoderViTConfig) -> u64 {
    image_encoder_vit_pieces(cfg).iter().sum()
}

/// [`image_encoder_vit`] by piece, in forward order: the patch embedding, each of the `depth`
/// blocks, the neck (`depth + 2` entries). What a step computes for a piece depends on whether
/// it trains and whether gradients pass through it; the trainer's throughput weighs each.
pub fn image_encoder_vit_pieces(cfg: &ImageEncoderViTConfig) -> Vec<u64> {
    let grid = cfg.embedding_size();
    let dim = cfg.embed_dim;
    let head_dim = dim / cfg.num_heads.max(1);
    let mlp_dim = (dim as f64 * cfg.mlp_ratio) as i64;
    let tokens = grid * grid;
    // PatchEmbed: a patch_size-strided convolution.
    let mut pieces = vec![conv(tokens, cfg.in_chans, dim, cfg.patch_size)];
    for i in 0..cfg.depth {
        let global = cfg.global_attn_indexes.contains(&i) || cfg.window_size == 0;
        // Windows of ws × ws over the grid padded to a multiple of ws; global: one window.
        let (windows, side) = if global {
            (1, grid)
        } else {
            let ws = cfg.window_size;
            let n = (grid + ws - 1) / ws;
            (n * n, ws)
        };
        let n = side * side; // tokens per window
        let rows = windows * n; // tokens the linear layers see, padding included
        let mut block = matmul(rows, dim, 3 * dim); // qkv
        let per_head_window = matmul(n, head_dim, n) + matmul(n, n, head_dim); // q@kᵀ, attn@v
        let mut attention = per_head_window;
        if cfg.use_rel_pos {
            // einsum("bhwc,hkc->bhwk") and ("bhwc,wkc->bhwk"): each query row against the
            // `side` keys of its row and of its column.
            attention += 2 * matmul(n, head_dim, side);
        }
        block += (windows * cfg.num_heads) as u64 * attention;
        block += matmul(rows, dim, dim); // proj
        block += matmul(tokens, dim, mlp_dim) + matmul(tokens, mlp_dim, dim); // mlp
        pieces.push(block);
    }
    // Neck: 1×1 convolution (no bias), LayerNorm2d, 3×3 convolution, LayerNorm2d.
    pieces
        .push(conv(tokens, dim, cfg.out_chans, 1) + conv(tokens, cfg.out_chans, cfg.out_chans, 3));
    pieces
}

/// One forward pass of the image encoder on one image; `None` for MobileSAM's TinyViT, whose
/// count is not implemented.
pub fn image_encoder(cfg: &ImageEncoderConfig) -> Option<u64> {
    image_encoder_pieces(cfg).map(|p| p.iter().sum())
}

/// [`image_encoder`] by piece ([`image_encoder_vit_pieces`]); `None` for TinyViT.
pub fn image_encoder_pieces(cfg: &ImageEncoderConfig) -> Option<Vec<u64>> {
    match cfg {
        ImageEncoderConfig::Vit(c) => Some(image_encoder_vit_pieces(c)),
        ImageEncoderConfig::TinyVit(_) => None,
    }
}

/// The prompts of one object in one prompting round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptShape {
    /// Point prompts.
    pub points: i64,
    /// A box prompt.
    pub boxes: bool,
    /// A low-resolution mask input (the previous round's logits).
    pub mask_input: bool,
}

impl PromptShape {
    /// Sparse prompt tokens: the points, plus a padding point when there is no box
    /// (`_embed_points(pad=boxes is None)`), plus the box's two corners.
    pub fn sparse_tokens(&self) -> i64 {
        let pad = i64::from(self.points > 0 && !self.boxes);
        self.points + pad + 2 * i64::from(self.boxes)
    }
}

/// Attention of the two-way transformer (`transformer.py`'s `Attention`) with `n_q` queries
/// and `n_k` keys of width `dim`, internal width `internal`.
fn two_way_attention(n_q: i64, n_k: i64, dim: i64, internal: i64) -> u64 {
    matmul(n_q, dim, internal) // q_proj
        + 2 * matmul(n_k, dim, internal) // k_proj, v_proj
        + matmul(n_q, internal, n_k) // q @ kᵀ, summed over heads
        + matmul(n_q, n_k, internal) // attn @ v
        + matmul(n_q, internal, dim) // out_proj
}

/// One prompting round for `objects` objects of one image: the prompt encoder
/// (`PromptEncoder.forward` and `get_dense_pe`) and the mask decoder (`MaskDecoder.forward`:
/// the two-way transformer on the image embedding repeated per object, the output upscaling,
/// the hypernetwork MLPs, the mask product and the IoU head). All mask tokens are computed
/// whether one or three masks are returned.
pub fn prompt_round(cfg: &SamConfig, objects: i64, prompt: PromptShape) -> u64 {
    let pe = &cfg.prompt_encoder;
    let md = &cfg.mask_decoder;
    let t = &md.transformer;
    let c = md.transformer_dim;
    let grid = pe.image_embedding_size;
    let pixels = grid * grid;
    let sparse = prompt.sparse_tokens();
    // Prompt encoder: random-Fourier position encodings (coords @ gaussian matrix) of the
    // sparse points per object and of the whole grid once (get_dense_pe).
    let mut per_object = matmul(sparse, 2, pe.embed_dim / 2);
    let shared = matmul(pixels, 2, pe.embed_dim / 2);
    if prompt.mask_input {
        // mask_downscaling: 2×2/2 conv to mask_in_chans/4, 2×2/2 conv, 1×1 conv to embed_dim.
        let (m4, m) = (pe.mask_in_chans / 4, pe.mask_in_chans);
        per_object += conv(4 * pixels, 1, m4, 2) + conv(pixels, m4, m, 2) + conv(pixels, m, c, 1);
    }
    // Mask decoder: IoU token + mask tokens, then the sparse prompt tokens.
    let mask_tokens = md.num_multimask_outputs + 1;
    let tokens = 1 + mask_tokens + sparse;
    let internal = c / t.attention_downsample_rate.max(1);
    for _ in 0..t.depth {
        per_object += two_way_attention(tokens, tokens, c, c); // self_attn
        per_object += two_way_attention(tokens, pixels, c, internal); // token → image
        per_object += matmul(tokens, c, t.mlp_dim) + matmul(tokens, t.mlp_dim, c); // mlp
        per_object += two_way_attention(pixels, tokens, c, internal); // image → token
    }
    per_object += two_way_attention(tokens, pixels, c, internal); // final_attn_token_to_image
                                                                  // output_upscaling: two 2×2 stride-2 transposed convolutions (counted at their inputs).
    per_object += conv(pixels, c, c / 4, 2) + conv(4 * pixels, c / 4, c / 8, 2);
    // output_hypernetworks_mlps: per mask token, c → c → c → c/8.
    per_object += mask_tokens as u64 * (2 * matmul(1, c, c) + matmul(1, c, c / 8));
    // masks = hyper_in @ upscaled_embedding.view(b, c/8, 16·h·w)
    per_object += matmul(mask_tokens, c / 8, 16 * pixels);
    // iou_prediction_head: c → hidden (depth - 2 times hidden → hidden) → mask tokens.
    let hidden = md.iou_head_hidden_dim;
    let depth = md.iou_head_depth.max(1);
    per_object += if depth == 1 {
        matmul(1, c, mask_tokens)
    } else {
        matmul(1, c, hidden)
            + (depth - 2) as u64 * matmul(1, hidden, hidden)
            + matmul(1, hidden, mask_tokens)
    };
    objects.max(0) as u64 * per_object + shared
}

/// One forward pass of micro_sam's UNETR decoder on one image embedding (torch_em's `UNETR`
/// without the encoder, `use_skip_connection=False`): the four `Deconv2DBlock`s of the encoder
/// path, the base block, three upsampling steps with their `ConvBlock2d`s, the output
/// upsampler, the decoder head and the 1×1 output convolution. An `Upsampler2d` (bilinear ×2,
/// then a 1×1 convolution) and a 2×2 stride-2 transposed convolution count the same.
pub fn unetr(cfg: &UnetrConfig) -> u64 {
    let f0 = cfg.initial_features;
    let f = [8 * f0, 4 * f0, 2 * f0, f0];
    let grid = cfg.img_size / 16;
    let px = |scale: i64| (grid * scale) * (grid * scale);
    // Upsampler to `scale` from c_in to c_out, then its 3×3 SingleConv2DBlock.
    let deconv = |scale: i64, c_in: i64, c_out: i64| {
        conv(px(scale), c_in, c_out, 1) + conv(px(scale), c_out, c_out, 3)
    };
    // ConvBlock2d: two 3×3 convolutions.
    let block = |scale: i64, c_in: i64, c_out: i64| {
        conv(px(scale), c_in, c_out, 3) + conv(px(scale), c_out, c_out, 3)
    };
    let mut total = deconv(2, cfg.embed_dim, f[0])
        + deconv(4, f[0], f[1])
        + deconv(8, f[1], f[2])
        + deconv(16, f[2], f[3]);
    total += block(1, cfg.embed_dim, f[0]);
    for i in 0..3 {
        let scale = 2 << i;
        total += conv(px(scale), f[i], f[i + 1], 1); // sampler
        total += block(scale, f[i], f[i + 1]); // [x, skip] has f[i] = 2·f[i+1] channels
    }
    total += conv(px(16), f[3], f[3], 1); // deconv_out
    total += block(16, 2 * f[3], f[3]); // decoder_head
    total += conv(px(16), f[3], cfg.out_channels, 1); // out_conv
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_b_encoder_and_prompt_round_by_hand() {
        // vit_b: 64² tokens, 768-d, 12 heads of 64, MLP 3072; 8 windowed blocks over 5×5
        // windows of 14² (70² padded), 4 global ones.
        let (t, d, m) = (4096u64, 768u64, 3072u64);
        let patch = 2 * t * (3 * 256) * d;
        let linear = 2 * 25 * 196 * d * (3 * d) + 2 * 25 * 196 * d * d + 2 * 2 * t * d * m;
        let windowed = linear + 25 * 12 * (2 * 2 * 196 * 64 * 196 + 2 * 2 * 196 * 64 * 14);
        let linear_g = 2 * t * d * (3 * d) + 2 * t * d * d + 2 * 2 * t * d * m;
        let global = linear_g + 12 * (2 * 2 * t * 64 * t + 2 * 2 * t * 64 * 64);
        let neck = 2 * t * d * 256 + 2 * t * 256 * 256 * 9;
        let want = patch + 8 * windowed + 4 * global + neck;
        assert_eq!(image_encoder_vit(&ImageEncoderViTConfig::vit_b()), want);
        assert_eq!(want, 972_077_334_528);
        // By piece: the patch embedding, blocks 0..12 (global at 2, 5, 8, 11), the neck.
        let mut pieces = vec![patch];
        pieces.extend((0..12).map(|i| if i % 3 == 2 { global } else { windowed }));
        pieces.push(neck);
        assert_eq!(
            image_encoder_vit_pieces(&ImageEncoderViTConfig::vit_b()),
            pieces
        );

        // One object with one point: 2 sparse tokens (point + padding), 7 tokens in all.
        let sam = SamConfig::vit_b();
        let p = PromptShape {
            points: 1,
            boxes: false,
            mask_input: false,
        };
        let one = prompt_round(&sam, 1, p);
        let two = prompt_round(&sam, 2, p);
        let shared = 2 * 4096 * 2 * 128;
        assert_eq!(two - one, one - shared);
        assert!((3.0e9..5.0e9).contains(&((one - shared) as f64)), "{one}");
        let with_mask = prompt_round(
            &sam,
            1,
            PromptShape {
                mask_input: true,
                ..p
            },
        );
        assert_eq!(
            with_mask - one,
            2 * 16384 * 4 * 4 + 2 * 4096 * 16 * 16 + 2 * 4096 * 16 * 256
        );
    }

    #[test]
    fn sparse_tokens_follow_the_padding_rule() {
        let s = |points, boxes| PromptShape {
            points,
            boxes,
            mask_input: false,
        };
        assert_eq!(s(1, false).sparse_tokens(), 2);
        assert_eq!(s(3, false).sparse_tokens(), 4);
        assert_eq!(s(0, true).sparse_tokens(), 2);
        assert_eq!(s(2, true).sparse_tokens(), 4);
    }

    #[test]
    fn unetr_upsamplers_count_as_transposed_convolutions() {
        let a = unetr(&UnetrConfig::sam());
        let b = unetr(&UnetrConfig {
            use_conv_transpose: true,
            ..UnetrConfig::sam()
        });
        assert_eq!(a, b);
        // The 1024² decoder head dominates: 2·1024²·9·(128·64 + 64·64).
        assert!(a > 2 * 1024 * 1024 * 9 * (128 * 64 + 64 * 64));
    }
}
