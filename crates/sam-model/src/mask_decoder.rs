//! `segment_anything/modeling/mask_decoder.py`: predicts masks and their IoU from image and
//! prompt embeddings.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::common::{conv_transpose2x2, gelu, linear, LayerNorm2d};
use crate::error::{shape_error, ModelError};
use crate::transformer::{TwoWayTransformer, TwoWayTransformerConfig};

/// Configuration of [`MaskDecoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct MaskDecoderConfig {
    /// Channel width of the transformer and the image embedding, 256.
    pub transformer_dim: i64,
    /// The two-way transformer.
    pub transformer: TwoWayTransformerConfig,
    /// Masks predicted in multimask mode, 3.
    pub num_multimask_outputs: i64,
    /// Layers of the IoU head, 3.
    pub iou_head_depth: i64,
    /// Hidden width of the IoU head, 256.
    pub iou_head_hidden_dim: i64,
}

impl MaskDecoderConfig {
    /// SAM's mask decoder (`_build_sam`).
    pub fn sam() -> Self {
        Self {
            transformer_dim: 256,
            transformer: TwoWayTransformerConfig::sam(),
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
        }
    }

    /// A tiny mask decoder for tests (32-d).
    pub fn tiny() -> Self {
        Self {
            transformer_dim: 32,
            transformer: TwoWayTransformerConfig::tiny(),
            iou_head_hidden_dim: 32,
            ..Self::sam()
        }
    }
}

/// `MLP` of the mask decoder: linear layers with ReLU between them.
#[derive(Debug)]
struct Mlp {
    layers: Vec<nn::Linear>,
}

impl Mlp {
    fn new(p: nn::Path, input_dim: i64, hidden_dim: i64, output_dim: i64, num_layers: i64) -> Self {
        let layers = (0..num_layers)
            .map(|i| {
                let n = if i == 0 { input_dim } else { hidden_dim };
                let k = if i == num_layers - 1 {
                    output_dim
                } else {
                    hidden_dim
                };
                linear(&p / "layers" / i, n, k, true)
            })
            .collect();
        Self { layers }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let last = self.layers.len().saturating_sub(1);
        let mut x = x.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x);
            if i < last {
                x = x.relu();
            }
        }
        x
    }
}

/// `MaskDecoder`: the two-way transformer, an upscaling head and per-mask hypernetworks.
#[derive(Debug)]
pub struct MaskDecoder {
    transformer: TwoWayTransformer,
    iou_token: Tensor,
    mask_tokens: Tensor,
    output_upscaling: (nn::ConvTranspose2D, LayerNorm2d, nn::ConvTranspose2D),
    output_hypernetworks_mlps: Vec<Mlp>,
    iou_prediction_head: Mlp,
    num_mask_tokens: i64,
}

impl MaskDecoder {
    /// Builds the decoder under `p` (`mask_decoder`).
    pub fn new(p: &nn::Path, cfg: &MaskDecoderConfig) -> Result<Self, ModelError> {
        let d = cfg.transformer_dim;
        if cfg.transformer.embedding_dim != d || d % 8 != 0 {
            return Err(ModelError::Config {
                field: "mask_decoder.transformer_dim".into(),
                expected: "a multiple of 8 equal to transformer.embedding_dim".into(),
                found: format!(
                    "{d} (transformer.embedding_dim {})",
                    cfg.transformer.embedding_dim
                ),
            });
        }
        let num_mask_tokens = cfg.num_multimask_outputs + 1;
        let randn = nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        let up = p / "output_upscaling";
        Ok(Self {
            transformer: TwoWayTransformer::new(&(p / "transformer"), &cfg.transformer)?,
            iou_token: (p / "iou_token").var("weight", &[1, d], randn),
            mask_tokens: (p / "mask_tokens").var("weight", &[num_mask_tokens, d], randn),
            output_upscaling: (
                conv_transpose2x2(&up / 0, d, d / 4),
                LayerNorm2d::new(&up / 1, d / 4),
                // 2: GELU
                conv_transpose2x2(&up / 3, d / 4, d / 8),
                // 4: GELU
            ),
            output_hypernetworks_mlps: (0..num_mask_tokens)
                .map(|i| Mlp::new(p / "output_hypernetworks_mlps" / i, d, d, d / 8, 3))
                .collect(),
            iou_prediction_head: Mlp::new(
                p / "iou_prediction_head",
                d,
                cfg.iou_head_hidden_dim,
                num_mask_tokens,
                cfg.iou_head_depth,
            ),
            num_mask_tokens,
        })
    }

    /// Predicts masks (`forward`).
    ///
    /// `image_embeddings` holds either one image (shared by all `n` prompts, as in Python) or
    /// one embedding per prompt (several images in one call).
    ///
    /// # Shapes
    /// `image_embeddings`: `[1 or n, c, h, w]`; `image_pe`: `[1, c, h, w]`;
    /// `sparse_prompt_embeddings`: `[n, p, c]`; `dense_prompt_embeddings`: `[n, c, h, w]` →
    /// (masks `[n, k, 4h, 4w]` logits, iou_pred `[n, k]`), k = 3 with `multimask_output`, else 1.
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse_prompt_embeddings: &Tensor,
        dense_prompt_embeddings: &Tensor,
        multimask_output: bool,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let (masks, iou_pred) = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
        )?;
        // Select the correct mask or masks for output
        let (start, len) = if multimask_output {
            (1, self.num_mask_tokens - 1)
        } else {
            (0, 1)
        };
        Ok((masks.narrow(1, start, len), iou_pred.narrow(1, start, len)))
    }

    /// All `num_mask_tokens` masks and IoU predictions (`predict_masks`).
    pub fn predict_masks(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse_prompt_embeddings: &Tensor,
        dense_prompt_embeddings: &Tensor,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let n = sparse_prompt_embeddings.size()[0];
        // Concatenate output tokens
        let output_tokens = Tensor::cat(&[&self.iou_token, &self.mask_tokens], 0);
        let output_tokens = output_tokens
            .to_kind(sparse_prompt_embeddings.kind())
            .unsqueeze(0)
            .expand([n, -1, -1], false);
        let tokens = Tensor::cat(
            &[output_tokens, sparse_prompt_embeddings.shallow_clone()],
            1,
        );

        // Per-image data expanded in batch direction to be per-mask. Python repeats the image
        // embedding n times; when the dense embedding is the same for every prompt too (no mask
        // input: `no_mask_embed` broadcast), the image tokens are identical until they attend
        // to the prompts, so they stay one batch entry and the transformer broadcasts them.
        let (b_img, c, h, w) = image_embeddings.size4()?;
        if b_img != 1 && b_img != n {
            return Err(shape_error(
                "image_embeddings",
                &format!("[1 or {n} (one per prompt), c, h, w]"),
                image_embeddings,
            ));
        }
        if dense_prompt_embeddings.size() != [n, c, h, w] {
            return Err(shape_error(
                "dense_prompt_embeddings",
                &format!("[{n}, {c}, {h}, {w}]"),
                dense_prompt_embeddings,
            ));
        }
        let shared_dense = n == 1 || dense_prompt_embeddings.stride()[0] == 0;
        let src = if b_img == 1 && shared_dense {
            image_embeddings + dense_prompt_embeddings.narrow(0, 0, 1)
        } else {
            image_embeddings + dense_prompt_embeddings
        };

        // Run the transformer
        let (hs, src) = self.transformer.forward(&src, image_pe, &tokens);
        let iou_token_out = hs.select(1, 0);
        let mask_tokens_out = hs.narrow(1, 1, self.num_mask_tokens);

        // Upscale mask embeddings and predict masks using the mask tokens
        let src = src
            .expand([n, -1, -1], false)
            .transpose(1, 2)
            .reshape([n, c, h, w]);
        let (u0, n1, u3) = &self.output_upscaling;
        let upscaled = gelu(&u3.forward(&gelu(&n1.forward(&u0.forward(&src)))));
        let hyper_in: Vec<Tensor> = self
            .output_hypernetworks_mlps
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(&mask_tokens_out.select(1, i as i64)))
            .collect();
        let hyper_in = Tensor::stack(&hyper_in, 1);
        let (b, c, h, w) = upscaled.size4()?;
        let masks = hyper_in
            .matmul(&upscaled.view([b, c, h * w]))
            .view([b, -1, h, w]);

        // Generate mask quality predictions
        let iou_pred = self.iou_prediction_head.forward(&iou_token_out);
        Ok((masks, iou_pred))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Outputs and weight gradients of one `predict_masks` call.
    fn run(
        vs: &nn::VarStore,
        dec: &MaskDecoder,
        image: &Tensor,
        pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
    ) -> (Tensor, Tensor, Vec<Tensor>) {
        let mut vars = vs.trainable_variables();
        for v in &mut vars {
            v.zero_grad();
        }
        let (masks, iou) = dec.predict_masks(image, pe, sparse, dense).unwrap();
        (masks.square().sum(Kind::Float) + iou.sum(Kind::Float)).backward();
        let grads = vars.iter().map(|v| v.grad().copy()).collect();
        (masks.detach(), iou.detach(), grads)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// With one image and no mask input, the image tokens are shared by all prompts in the first
    /// layer instead of being repeated per prompt as segment_anything does; outputs and
    /// gradients must equal the repeated computation.
    #[test]
    fn shared_image_tokens_equal_repeated_ones_forward_and_backward() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let dec = MaskDecoder::new(&vs.root(), &MaskDecoderConfig::tiny()).unwrap();
        let opts = (Kind::Float, Device::Cpu);
        let (n, c, s) = (3, 32, 8);
        let image = Tensor::randn([1, c, s, s], opts);
        let pe = Tensor::randn([1, c, s, s], opts);
        let sparse = Tensor::randn([n, 4, c], opts);
        // what the prompt encoder returns without mask input: one embedding, broadcast
        let dense = Tensor::randn([1, c, 1, 1], opts).expand([n, c, s, s], false);
        assert_eq!(dense.stride()[0], 0);

        let (m1, i1, g1) = run(&vs, &dec, &image, &pe, &sparse, &dense);
        let repeated = image.repeat([n, 1, 1, 1]);
        let (m2, i2, g2) = run(&vs, &dec, &repeated, &pe, &sparse, &dense.contiguous());
        assert_eq!(m1.size(), vec![n, 4, 4 * s, 4 * s]);
        assert!(max_diff(&m1, &m2) < 1e-5, "masks {}", max_diff(&m1, &m2));
        assert!(max_diff(&i1, &i2) < 1e-5, "iou {}", max_diff(&i1, &i2));
        for (a, b) in g1.iter().zip(&g2) {
            let scale = b.abs().max().double_value(&[]).max(1.0);
            assert!(max_diff(a, b) / scale < 1e-4, "gradient {}", max_diff(a, b));
        }
        // a mask input differs per prompt: no sharing, same result as repeating
        let dense_per_prompt = Tensor::randn([n, c, s, s], opts);
        let (m3, _, _) = run(&vs, &dec, &image, &pe, &sparse, &dense_per_prompt);
        let (m4, _, _) = run(&vs, &dec, &repeated, &pe, &sparse, &dense_per_prompt);
        assert!(max_diff(&m3, &m4) < 1e-5);
    }
}
