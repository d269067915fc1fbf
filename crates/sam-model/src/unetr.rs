//! The UNETR instance-segmentation decoder of micro_sam: torch_em's `UNETR`
//! (`torch_em/model/unetr.py`, with `Decoder`, `ConvBlock2d`, `Upsampler2d` from
//! `torch_em/model/unet.py`) as micro_sam's `get_unetr` builds it (`use_skip_connection=False`,
//! `out_channels=3`, `final_activation="Sigmoid"`), applied to precomputed image embeddings like
//! micro_sam's `DecoderAdapter`.
//!
//! Variable names equal the keys of micro_sam's `decoder_state` (the UNETR state_dict without
//! the `encoder.` entries), e.g. `base.block.1.weight`, `decoder.samplers.0.conv.weight`,
//! `deconv1.block.2.running_mean`.

use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use crate::common::{conv2d, conv_cfg, conv_transpose2x2, BatchNorm2d};
use crate::error::{shape_error, ModelError};

/// Configuration of [`UnetrDecoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct UnetrConfig {
    /// Channels of the image embedding (the encoder neck), 256.
    pub embed_dim: i64,
    /// Output maps: foreground, centre distance, boundary distance.
    pub out_channels: i64,
    /// Features of the finest decoder level (`initial_features`), 64; the levels have
    /// 64 · 2^i features.
    pub initial_features: i64,
    /// Transposed convolutions instead of bilinear upsampling + 1×1 convolution. micro_sam
    /// decides this from the checkpoint (`.block.` in `decoder.samplers` keys); its default
    /// for new decoders is false.
    pub use_conv_transpose: bool,
    /// Sigmoid on the output (`final_activation="Sigmoid"`).
    pub sigmoid_output: bool,
    /// Side of the encoder input (`encoder.img_size`), 1024; used by [`UnetrDecoder::postprocess_masks`].
    pub img_size: i64,
}

impl UnetrConfig {
    /// micro_sam's decoder for a SAM encoder with a 1024 px input.
    pub fn sam() -> Self {
        Self {
            embed_dim: 256,
            out_channels: 3,
            initial_features: 64,
            use_conv_transpose: false,
            sigmoid_output: true,
            img_size: 1024,
        }
    }

    /// A tiny decoder for tests: 32-d embedding of a 256 px input, 8 initial features.
    pub fn tiny() -> Self {
        Self {
            embed_dim: 32,
            initial_features: 8,
            img_size: 256,
            ..Self::sam()
        }
    }

    /// Decoder level widths `[8f, 4f, 2f, f]` (`features_decoder`).
    fn features(&self) -> [i64; 4] {
        let f = self.initial_features;
        [8 * f, 4 * f, 2 * f, f]
    }
}

/// `nn.InstanceNorm2d(c)` (no affine parameters, no running statistics, eps 1e-5).
fn instance_norm(x: &Tensor) -> Tensor {
    x.instance_norm(
        None::<Tensor>,
        None::<Tensor>,
        None::<Tensor>,
        None::<Tensor>,
        true,
        0.1,
        1e-5,
        true,
    )
}

/// `ConvBlock2d` with `norm="InstanceNorm"`: (norm, conv3×3, ReLU) twice.
#[derive(Debug)]
struct ConvBlock2d {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
}

impl ConvBlock2d {
    fn new(p: nn::Path, in_channels: i64, out_channels: i64) -> Self {
        let block = p / "block";
        Self {
            // 0: InstanceNorm2d
            conv1: conv2d(
                &block / 1,
                in_channels,
                out_channels,
                3,
                conv_cfg(1, 1, 1, true),
            ),
            // 2: ReLU, 3: InstanceNorm2d
            conv2: conv2d(
                &block / 4,
                out_channels,
                out_channels,
                3,
                conv_cfg(1, 1, 1, true),
            ),
            // 5: ReLU
        }
    }
}

impl Module for ConvBlock2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = self.conv1.forward(&instance_norm(x)).relu();
        self.conv2.forward(&instance_norm(&x)).relu()
    }
}

/// `Upsampler2d` (bilinear ×2, then a 1×1 convolution in `.conv`) or `SingleDeconv2DBlock`
/// (a 2×2 transposed convolution in `.block`).
#[derive(Debug)]
enum Upsampler {
    Interpolate(nn::Conv2D),
    Transpose(nn::ConvTranspose2D),
}

impl Upsampler {
    fn new(p: nn::Path, in_channels: i64, out_channels: i64, conv_transpose: bool) -> Self {
        if conv_transpose {
            Self::Transpose(conv_transpose2x2(&p / "block", in_channels, out_channels))
        } else {
            let conv = conv2d(
                &p / "conv",
                in_channels,
                out_channels,
                1,
                conv_cfg(1, 0, 1, true),
            );
            Self::Interpolate(conv)
        }
    }
}

impl Module for Upsampler {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Interpolate(conv) => {
                // torch_em: conv1x1(F.interpolate(x, scale_factor=2, mode="bilinear",
                // align_corners=False)). Both are linear, the convolution over channels and the
                // interpolation over space, and the interpolation weights of every output pixel
                // sum to 1 (so the bias passes through unchanged): the convolution is applied
                // first, at a quarter of the pixels, and the full-size tensor with the input's
                // channels is never made. Same result up to float rounding.
                let y = conv.forward(x);
                let s = y.size();
                y.upsample_bilinear2d([s[2] * 2, s[3] * 2], false, 2.0, 2.0)
            }
            Self::Transpose(deconv) => deconv.forward(x),
        }
    }
}

/// `Deconv2DBlock`: upsample, 3×3 convolution, batch norm, ReLU.
#[derive(Debug)]
struct Deconv2DBlock {
    up: Upsampler,
    conv: nn::Conv2D,
    bn: BatchNorm2d,
}

impl Deconv2DBlock {
    fn new(p: nn::Path, in_channels: i64, out_channels: i64, conv_transpose: bool) -> Self {
        let block = p / "block";
        Self {
            up: Upsampler::new(&block / 0, in_channels, out_channels, conv_transpose),
            // SingleConv2DBlock keeps its convolution in `.block`.
            conv: conv2d(
                &block / 1 / "block",
                out_channels,
                out_channels,
                3,
                conv_cfg(1, 1, 1, true),
            ),
            bn: BatchNorm2d::new(&block / 2, out_channels),
            // 3: ReLU
        }
    }
}

impl ModuleT for Deconv2DBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = self.conv.forward(&self.up.forward(x));
        self.bn.forward_t(&x, train).relu()
    }
}

/// torch_em's `_crop`: centre-crop `x` to `shape` along every axis after the batch axis.
/// With more channels from the encoder path than from the decoder path, this keeps the middle
/// channels, as torch_em does.
fn center_crop(x: &Tensor, shape: &[i64]) -> Tensor {
    let mut x = x.shallow_clone();
    for (dim, (&xs, &s)) in x.size().iter().zip(shape).enumerate().skip(1) {
        if xs != s {
            x = x.narrow(dim as i64, (xs - s) / 2, s);
        }
    }
    x
}

/// micro_sam's UNETR decoder on top of SAM image embeddings.
///
/// Outputs (after the sigmoid) the foreground probability, the normalised distance to the object
/// centre and the normalised distance to the boundary, at the encoder's input resolution
/// (16× the embedding grid). Its batch norms make it a [`ModuleT`]: `train = true` uses and
/// updates batch statistics.
#[derive(Debug)]
pub struct UnetrDecoder {
    base: ConvBlock2d,
    decoder_blocks: Vec<ConvBlock2d>,
    decoder_samplers: Vec<Upsampler>,
    deconv1: Deconv2DBlock,
    deconv2: Deconv2DBlock,
    deconv3: Deconv2DBlock,
    deconv4: Deconv2DBlock,
    deconv_out: Upsampler,
    decoder_head: ConvBlock2d,
    out_conv: nn::Conv2D,
    cfg: UnetrConfig,
    /// Side of the model input the decoder's output covers: `cfg.img_size`, or the side of a
    /// model run at its native patch size ([`UnetrDecoder::set_input_size`]).
    input_side: i64,
}

impl UnetrDecoder {
    /// The decoder of a model run at another square input side ([`crate::Sam::set_input_size`]):
    /// [`UnetrDecoder::postprocess_masks`] then brings its output to that side.
    pub fn set_input_size(&mut self, side: i64) {
        self.input_side = side;
    }

    /// Builds the decoder under `p` (the root of micro_sam's `decoder_state` names).
    pub fn new(p: &nn::Path, cfg: &UnetrConfig) -> Result<Self, ModelError> {
        if cfg.initial_features <= 0 || cfg.out_channels <= 0 || cfg.embed_dim <= 0 {
            return Err(ModelError::Config {
                field: "unetr".into(),
                expected: "positive embed_dim, out_channels and initial_features".into(),
                found: format!("{cfg:?}"),
            });
        }
        let f = cfg.features();
        let ct = cfg.use_conv_transpose;
        let dec = p / "decoder";
        Ok(Self {
            base: ConvBlock2d::new(p / "base", cfg.embed_dim, f[0]),
            decoder_blocks: (0..3)
                .map(|i| ConvBlock2d::new(&dec / "blocks" / i as i64, f[i], f[i + 1]))
                .collect(),
            decoder_samplers: (0..3)
                .map(|i| Upsampler::new(&dec / "samplers" / i as i64, f[i], f[i + 1], ct))
                .collect(),
            deconv1: Deconv2DBlock::new(p / "deconv1", cfg.embed_dim, f[0], ct),
            deconv2: Deconv2DBlock::new(p / "deconv2", f[0], f[1], ct),
            deconv3: Deconv2DBlock::new(p / "deconv3", f[1], f[2], ct),
            deconv4: Deconv2DBlock::new(p / "deconv4", f[2], f[3], ct),
            deconv_out: Upsampler::new(p / "deconv_out", f[3], f[3], ct),
            decoder_head: ConvBlock2d::new(p / "decoder_head", 2 * f[3], f[3]),
            out_conv: conv2d(
                p / "out_conv",
                f[3],
                cfg.out_channels,
                1,
                conv_cfg(1, 0, 1, true),
            ),
            cfg: cfg.clone(),
            input_side: cfg.img_size,
        })
    }

    /// The configuration this decoder was built with.
    pub fn config(&self) -> &UnetrConfig {
        &self.cfg
    }

    /// Decoder output at the encoder's input resolution (`DecoderAdapter._forward_impl`).
    ///
    /// # Shapes
    /// `image_embeddings`: `[b, embed_dim, h, w]` → `[b, out_channels, 16h, 16w]`.
    pub fn forward_t(&self, image_embeddings: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let s = image_embeddings.size();
        if s.len() != 4 || s[1] != self.cfg.embed_dim {
            let expected = format!("[b, {}, h, w]", self.cfg.embed_dim);
            return Err(shape_error("image_embeddings", &expected, image_embeddings));
        }
        let z12 = image_embeddings;
        let z9 = self.deconv1.forward_t(z12, train);
        let z6 = self.deconv2.forward_t(&z9, train);
        let z3 = self.deconv3.forward_t(&z6, train);
        let z0 = self.deconv4.forward_t(&z3, train);

        let mut x = self.base.forward(z12);
        for ((sampler, block), from_encoder) in self
            .decoder_samplers
            .iter()
            .zip(&self.decoder_blocks)
            .zip([&z9, &z6, &z3])
        {
            x = sampler.forward(&x);
            let skip = center_crop(from_encoder, &x.size());
            x = block.forward(&Tensor::cat(&[&x, &skip], 1));
        }
        let x = self.deconv_out.forward(&x);
        let x = self.decoder_head.forward(&Tensor::cat(&[x, z0], 1));
        let x = self.out_conv.forward(&x);
        Ok(if self.cfg.sigmoid_output {
            x.sigmoid()
        } else {
            x
        })
    }

    /// Removes the padding and resizes decoder output to the original image
    /// (`UNETRBase.postprocess_masks`): bilinear to the model input side (`img_size`, or the side
    /// set with [`UnetrDecoder::set_input_size`]), crop to `input_size`, bilinear to
    /// `original_size`. Sizes are (h, w).
    pub fn postprocess_masks(
        &self,
        masks: &Tensor,
        input_size: (i64, i64),
        original_size: (i64, i64),
    ) -> Tensor {
        crate::sam::postprocess_masks(masks, self.input_side, input_size, original_size)
    }
}
