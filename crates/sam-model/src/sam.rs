//! `segment_anything/modeling/sam.py`: the whole model, its input normalisation and mask
//! postprocessing.

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::common::AttentionMode;
use crate::error::{shape_error, ModelError};
use crate::image_encoder::{ImageEncoderViT, ImageEncoderViTConfig};
use crate::mask_decoder::{MaskDecoder, MaskDecoderConfig};
use crate::prompt_encoder::{PromptEncoder, PromptEncoderConfig};
use crate::tiny_vit::{TinyViT, TinyViTConfig};

/// Pixel mean of SAM's input normalisation (RGB, 0..255 scale), `Sam.pixel_mean`.
pub const PIXEL_MEAN: [f64; 3] = [123.675, 116.28, 103.53];
/// Pixel standard deviation of SAM's input normalisation, `Sam.pixel_std`.
pub const PIXEL_STD: [f64; 3] = [58.395, 57.12, 57.375];

/// Which image encoder a model has.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageEncoderConfig {
    /// SAM's ViT (vit_b, vit_l, vit_h).
    Vit(ImageEncoderViTConfig),
    /// MobileSAM's TinyViT (vit_t).
    TinyVit(TinyViTConfig),
}

impl ImageEncoderConfig {
    /// Side of the square model input.
    pub fn img_size(&self) -> i64 {
        match self {
            Self::Vit(c) => c.img_size,
            Self::TinyVit(c) => c.img_size,
        }
    }

    /// Side of the image embedding grid: `img_size / patch_size` for the ViT (16 in SAM's
    /// models), `img_size / 16` for TinyViT.
    pub fn embedding_size(&self) -> i64 {
        match self {
            Self::Vit(c) => c.embedding_size(),
            Self::TinyVit(c) => c.img_size / 16,
        }
    }

    /// Channels of the image embedding.
    pub fn out_chans(&self) -> i64 {
        match self {
            Self::Vit(c) => c.out_chans,
            Self::TinyVit(c) => c.out_chans,
        }
    }

    /// Sets the attention kernel of the encoder.
    pub fn set_attention(&mut self, mode: AttentionMode) {
        match self {
            Self::Vit(c) => c.attention = mode,
            Self::TinyVit(c) => c.attention = mode,
        }
    }
}

/// Configuration of a whole [`Sam`] model.
#[derive(Debug, Clone, PartialEq)]
pub struct SamConfig {
    /// The image encoder.
    pub image_encoder: ImageEncoderConfig,
    /// The prompt encoder.
    pub prompt_encoder: PromptEncoderConfig,
    /// The mask decoder.
    pub mask_decoder: MaskDecoderConfig,
    /// Input normalisation mean (0..255 scale).
    pub pixel_mean: [f64; 3],
    /// Input normalisation standard deviation (0..255 scale).
    pub pixel_std: [f64; 3],
}

impl SamConfig {
    fn with_encoder(image_encoder: ImageEncoderConfig) -> Self {
        Self {
            image_encoder,
            prompt_encoder: PromptEncoderConfig::sam(),
            mask_decoder: MaskDecoderConfig::sam(),
            pixel_mean: PIXEL_MEAN,
            pixel_std: PIXEL_STD,
        }
    }

    /// SAM ViT-B (`sam_model_registry["vit_b"]`).
    pub fn vit_b() -> Self {
        Self::with_encoder(ImageEncoderConfig::Vit(ImageEncoderViTConfig::vit_b()))
    }

    /// SAM ViT-L.
    pub fn vit_l() -> Self {
        Self::with_encoder(ImageEncoderConfig::Vit(ImageEncoderViTConfig::vit_l()))
    }

    /// SAM ViT-H.
    pub fn vit_h() -> Self {
        Self::with_encoder(ImageEncoderConfig::Vit(ImageEncoderViTConfig::vit_h()))
    }

    /// MobileSAM (vit_t).
    pub fn vit_t() -> Self {
        Self::with_encoder(ImageEncoderConfig::TinyVit(TinyViTConfig::vit_t()))
    }

    /// The preset for a micro_sam model type name (`vit_b`, `vit_l`, `vit_h`, `vit_t`, also with
    /// a suffix such as `vit_b_lm`).
    pub fn from_model_type(name: &str) -> Option<Self> {
        let base = name.get(..5).unwrap_or(name);
        match base {
            "vit_b" => Some(Self::vit_b()),
            "vit_l" => Some(Self::vit_l()),
            "vit_h" => Some(Self::vit_h()),
            "vit_t" => Some(Self::vit_t()),
            _ => None,
        }
    }

    /// A tiny model for tests: 256 px input, 2-block 64-d ViT, 32-d prompt encoder and decoder.
    pub fn tiny() -> Self {
        Self {
            image_encoder: ImageEncoderConfig::Vit(ImageEncoderViTConfig::tiny()),
            prompt_encoder: PromptEncoderConfig::tiny(),
            mask_decoder: MaskDecoderConfig::tiny(),
            pixel_mean: PIXEL_MEAN,
            pixel_std: PIXEL_STD,
        }
    }

    /// Sets the attention kernel of every module.
    pub fn with_attention(mut self, mode: AttentionMode) -> Self {
        self.image_encoder.set_attention(mode);
        self.mask_decoder.transformer.attention = mode;
        self
    }

    fn validate(&self) -> Result<(), ModelError> {
        let pe = &self.prompt_encoder;
        let enc = &self.image_encoder;
        let grid = enc.embedding_size();
        let checks = [
            (
                "prompt_encoder.embed_dim",
                pe.embed_dim,
                enc.out_chans(),
                "image_encoder.out_chans",
            ),
            (
                "prompt_encoder.input_image_size",
                pe.input_image_size,
                enc.img_size(),
                "image_encoder.img_size",
            ),
            (
                "prompt_encoder.image_embedding_size",
                pe.image_embedding_size,
                grid,
                "image_encoder.img_size / patch_size",
            ),
            (
                "mask_decoder.transformer_dim",
                self.mask_decoder.transformer_dim,
                pe.embed_dim,
                "prompt_encoder.embed_dim",
            ),
        ];
        for (field, found, expected, what) in checks {
            if found != expected {
                return Err(ModelError::Config {
                    field: field.into(),
                    expected: format!("{expected} ({what})"),
                    found: found.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// The image encoder of a [`Sam`].
// One encoder per model: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ImageEncoder {
    /// SAM's ViT.
    Vit(ImageEncoderViT),
    /// MobileSAM's TinyViT.
    TinyVit(TinyViT),
}

impl ImageEncoder {
    /// Builds the configured encoder under `p`.
    pub fn new(p: &nn::Path, cfg: &ImageEncoderConfig) -> Result<Self, ModelError> {
        Ok(match cfg {
            ImageEncoderConfig::Vit(c) => Self::Vit(ImageEncoderViT::new(p, c)?),
            ImageEncoderConfig::TinyVit(c) => Self::TinyVit(TinyViT::new(p, c)?),
        })
    }

    /// Inference forward (batch norms use running statistics).
    ///
    /// # Shapes
    /// `x`: `[b, 3, s, s]` normalised and padded → `[b, 256, s / 16, s / 16]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    /// The forward of a training step: adapter dropout (FacT) active, batch norms (TinyViT)
    /// on their running statistics as in [`ImageEncoder::forward`].
    pub fn forward_training(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Vit(e) => e.forward_t(x, true),
            Self::TinyVit(e) => e.forward_t(x, false),
        }
    }

    /// The first block in the autograd graph of a training forward
    /// ([`ImageEncoderViT::first_graph_block`]); 0 for TinyViT.
    pub fn first_graph_block(&self) -> usize {
        match self {
            Self::Vit(e) => e.first_graph_block(),
            Self::TinyVit(_) => 0,
        }
    }
}

impl ModuleT for ImageEncoder {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Self::Vit(e) => e.forward_t(x, train),
            Self::TinyVit(e) => e.forward_t(x, train),
        }
    }
}

/// Segment Anything: image encoder, prompt encoder and mask decoder.
#[derive(Debug)]
pub struct Sam {
    /// Encodes images once; its output is reused for every prompt.
    pub image_encoder: ImageEncoder,
    /// Embeds points, boxes and mask inputs.
    pub prompt_encoder: PromptEncoder,
    /// Predicts masks and IoU from embeddings.
    pub mask_decoder: MaskDecoder,
    pixel_mean: Tensor,
    pixel_std: Tensor,
    cfg: SamConfig,
    /// Side of the square model input; `image_encoder.img_size` unless set otherwise
    /// ([`Sam::set_input_size`]).
    input_size: i64,
}

/// Output of a prompted forward: `[n, k, 4h, 4w]` low-resolution mask logits (256×256 for SAM)
/// and `[n, k]` IoU predictions, k = 3 with multimask output, else 1.
pub type MaskPrediction = (Tensor, Tensor);

impl Sam {
    /// Builds the model under `p` (the root of a SAM state_dict: `image_encoder.*`,
    /// `prompt_encoder.*`, `mask_decoder.*`). Weights are randomly initialised; load a
    /// checkpoint to use it.
    pub fn new(p: &nn::Path, cfg: &SamConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let device = p.device();
        // Non-persistent buffers in Python: not part of the state_dict.
        let pixel_mean = Tensor::from_slice(&cfg.pixel_mean)
            .to_kind(Kind::Float)
            .view([1, 3, 1, 1]);
        let pixel_std = Tensor::from_slice(&cfg.pixel_std)
            .to_kind(Kind::Float)
            .view([1, 3, 1, 1]);
        Ok(Self {
            image_encoder: ImageEncoder::new(&(p / "image_encoder"), &cfg.image_encoder)?,
            prompt_encoder: PromptEncoder::new(&(p / "prompt_encoder"), &cfg.prompt_encoder)?,
            mask_decoder: MaskDecoder::new(&(p / "mask_decoder"), &cfg.mask_decoder)?,
            pixel_mean: pixel_mean.to_device(device),
            pixel_std: pixel_std.to_device(device),
            cfg: cfg.clone(),
            input_size: cfg.image_encoder.img_size(),
        })
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> &SamConfig {
        &self.cfg
    }

    /// Side of the square model input: `image_encoder.img_size` (1024 for SAM), or the side
    /// set with [`Sam::set_input_size`]. Preprocessing pads to it, prompts are given in its
    /// pixels and masks are postprocessed from it.
    pub fn img_size(&self) -> i64 {
        self.input_size
    }

    /// Whether the model runs at an input side other than the one it was built for
    /// (`image_encoder.img_size`).
    pub fn is_native_input(&self) -> bool {
        self.input_size != self.cfg.image_encoder.img_size()
    }

    /// Runs the model at another square input side, e.g. a 512 px patch at its own size
    /// instead of resized to 1024 px (4× fewer tokens). The weights stay as they are: the ViT
    /// interpolates its absolute position embedding (bicubic) and its relative position tables
    /// (linear) to the smaller grid, the prompt encoder normalises coordinates by the new side
    /// and encodes the new grid, and mask inputs and outputs are `4 × side / 16` pixels.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `side` is not a positive multiple of the ViT's patch size,
    /// or the encoder is TinyViT (whose attention biases are tied to its built size) and `side`
    /// differs from its `img_size`.
    pub fn set_input_size(&mut self, side: i64) -> Result<(), ModelError> {
        let bad = |expected: String| ModelError::Config {
            field: "input_size".into(),
            expected,
            found: side.to_string(),
        };
        match &self.cfg.image_encoder {
            ImageEncoderConfig::Vit(c) => {
                if side <= 0 || side % c.patch_size != 0 {
                    return Err(bad(format!(
                        "a positive multiple of the patch size {}",
                        c.patch_size
                    )));
                }
            }
            ImageEncoderConfig::TinyVit(c) => {
                if side != c.img_size {
                    return Err(bad(format!(
                        "{} (TinyViT runs at its built input size only)",
                        c.img_size
                    )));
                }
            }
        }
        self.input_size = side;
        Ok(())
    }

    /// Side of the image embedding grid at the current input side.
    pub fn embedding_size(&self) -> i64 {
        let cfg = &self.cfg.image_encoder;
        self.input_size * cfg.embedding_size() / cfg.img_size()
    }

    /// Normalises pixel values and pads to a square input (`preprocess`).
    ///
    /// # Shapes
    /// `x`: `[b, 3, h, w]`, 0..255, long side ≤ `img_size` → `[b, 3, img_size, img_size]`.
    pub fn preprocess(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let s = x.size();
        let size = self.img_size();
        if s.len() != 4 || s[1] != 3 || s[2] > size || s[3] > size {
            return Err(shape_error(
                "x",
                &format!("[b, 3, h ≤ {size}, w ≤ {size}]"),
                x,
            ));
        }
        let x = (x - self.pixel_mean.to_kind(x.kind())) / self.pixel_std.to_kind(x.kind());
        Ok(x.constant_pad_nd([0, size - s[3], 0, size - s[2]]))
    }

    /// Predicts masks for a batch of prompts on image embeddings (the body of `Sam.forward`
    /// after the encoder). Coordinates are in model-input pixels (after
    /// [`crate::ResizeLongestSide`]).
    ///
    /// # Shapes
    /// `image_embeddings`: `[1, c, h, w]` (one image, shared by all prompts) or `[n, c, h, w]`
    /// (one per prompt); `points`: (coords `[n, p, 2]` (x, y), labels `[n, p]`: 1 positive,
    /// 0 negative, -1 ignored); `boxes`: `[n, 4]` (x0, y0, x1, y1); `mask_input`:
    /// `[n, 1, 4h, 4w]` low-resolution logits → (low_res_masks `[n, k, 4h, 4w]` logits,
    /// iou_predictions `[n, k]`).
    pub fn forward_prompts(
        &self,
        image_embeddings: &Tensor,
        points: Option<(&Tensor, &Tensor)>,
        boxes: Option<&Tensor>,
        mask_input: Option<&Tensor>,
        multimask_output: bool,
    ) -> Result<MaskPrediction, ModelError> {
        let grid = self.embedding_size();
        let (sparse, dense) =
            self.prompt_encoder
                .forward_sized(points, boxes, mask_input, self.input_size, grid)?;
        let kind = image_embeddings.kind();
        let image_pe = self.prompt_encoder.dense_pe_sized(grid).to_kind(kind);
        self.mask_decoder.forward(
            image_embeddings,
            &image_pe,
            &sparse.to_kind(kind),
            &dense.to_kind(kind),
            multimask_output,
        )
    }

    /// Removes padding and upscales masks to the original image size (`postprocess_masks`).
    /// Sizes are (h, w); `input_size` is the image size after resizing, before padding.
    ///
    /// # Shapes
    /// `masks`: `[n, k, 4h, 4w]` → `[n, k, original_h, original_w]`.
    pub fn postprocess_masks(
        &self,
        masks: &Tensor,
        input_size: (i64, i64),
        original_size: (i64, i64),
    ) -> Tensor {
        postprocess_masks(masks, self.img_size(), input_size, original_size)
    }
}

/// Bilinear to `img_size`², crop to `input_size`, bilinear to `original_size`.
///
/// A resize to the size the masks already have is skipped: bilinear resampling to the same size
/// (`align_corners=False`) is the identity, and skipping it saves a full-size copy and its
/// backward pass in training.
pub(crate) fn postprocess_masks(
    masks: &Tensor,
    img_size: i64,
    input_size: (i64, i64),
    original_size: (i64, i64),
) -> Tensor {
    let masks = resize_planes(masks, (img_size, img_size));
    let masks = masks.narrow(2, 0, input_size.0).narrow(3, 0, input_size.1);
    resize_planes(&masks, original_size)
}

/// `F.interpolate(x, size, mode="bilinear", align_corners=False)` of a `[b, c, h, w]` tensor.
///
/// Every plane is resized on its own, so the planes are laid out as the channels of one image
/// (same result). With a single channel (one mask per prompt) libtorch would take
/// `[b, 1, h, w]` for a channels-last tensor and run its channels-last kernels, whose backward
/// pass is several times slower on such tensors.
fn resize_planes(x: &Tensor, size: (i64, i64)) -> Tensor {
    match x.size()[..] {
        // bilinear resampling to the same size is the identity
        [_, _, h, w] if (h, w) == size => x.shallow_clone(),
        [b, c, h, w] if b > 1 => x
            .reshape([1, b * c, h, w])
            .upsample_bilinear2d([size.0, size.1], false, None, None)
            .view([b, c, size.0, size.1]),
        _ => x.upsample_bilinear2d([size.0, size.1], false, None, None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn model_type_names_resolve_to_presets() {
        assert_eq!(
            SamConfig::from_model_type("vit_b_lm"),
            Some(SamConfig::vit_b())
        );
        assert_eq!(
            SamConfig::from_model_type("vit_t"),
            Some(SamConfig::vit_t())
        );
        assert_eq!(SamConfig::from_model_type("vit_x"), None);
    }

    /// segment_anything's two `F.interpolate` calls, done literally.
    fn postprocess_reference(m: &Tensor, img: i64, input: (i64, i64), orig: (i64, i64)) -> Tensor {
        m.upsample_bilinear2d([img, img], false, None, None)
            .narrow(2, 0, input.0)
            .narrow(3, 0, input.1)
            .upsample_bilinear2d([orig.0, orig.1], false, None, None)
    }

    #[test]
    fn postprocess_masks_equals_both_interpolations_in_every_layout() {
        tch::manual_seed(3);
        let cases = [
            // one mask per prompt, crop and resize
            ([5, 1, 16, 16], 64, (64, 48), (80, 60)),
            // several masks, nothing to crop: the second resize is the identity
            ([3, 4, 16, 16], 64, (64, 64), (64, 64)),
            // one prompt, already at the input size (UNETR output)
            ([1, 3, 64, 64], 64, (64, 64), (64, 64)),
            // two prompts, one mask each, no crop
            ([2, 1, 16, 16], 64, (64, 64), (64, 64)),
        ];
        for (shape, img, input, orig) in cases {
            let m = Tensor::randn(shape, (tch::Kind::Float, Device::Cpu));
            let got = postprocess_masks(&m, img, input, orig);
            let want = postprocess_reference(&m, img, input, orig);
            assert_eq!(got.size(), want.size());
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 1e-6, "{shape:?}: max error {err}");
        }
        // a sliced (non-contiguous) multimask output too
        let m = Tensor::randn([3, 4, 16, 16], (tch::Kind::Float, Device::Cpu)).narrow(1, 1, 3);
        let err = (postprocess_masks(&m, 64, (64, 40), (90, 56))
            - postprocess_reference(&m, 64, (64, 40), (90, 56)))
        .abs()
        .max()
        .double_value(&[]);
        assert!(err < 1e-6, "sliced: max error {err}");
    }

    #[test]
    fn inconsistent_sizes_are_config_errors() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = SamConfig::tiny();
        cfg.prompt_encoder.embed_dim = 48;
        let err = Sam::new(&vs.root(), &cfg).unwrap_err().to_string();
        assert!(
            err.contains("prompt_encoder.embed_dim") && err.contains("48"),
            "{err}"
        );
    }

    #[test]
    fn preprocess_normalises_and_pads_bottom_right() {
        let vs = nn::VarStore::new(Device::Cpu);
        let sam = Sam::new(&vs.root(), &SamConfig::tiny()).unwrap();
        let x = Tensor::full([1, 3, 10, 20], 123.675, (Kind::Float, Device::Cpu));
        let y = sam.preprocess(&x).unwrap();
        assert_eq!(y.size(), [1, 3, 256, 256]);
        // Channel 0 equals its mean → 0; channel 1: (123.675 - 116.28) / 57.12.
        assert!(y.get(0).get(0).get(5).get(5).double_value(&[]).abs() < 1e-6);
        let c1 = y.get(0).get(1).get(5).get(5).double_value(&[]);
        assert!((c1 - (123.675 - 116.28) / 57.12).abs() < 1e-5, "{c1}");
        assert_eq!(y.get(0).get(1).get(10).get(5).double_value(&[]), 0.0);
        assert!(sam
            .preprocess(&Tensor::zeros([1, 3, 300, 10], (Kind::Float, Device::Cpu)))
            .is_err());
    }
}
